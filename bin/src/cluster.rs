//! Control-plane verbs: `master`, `agent`, `init`, `status`, `drain`, and the grid mode of
//! `storage`. Each parses flags and calls the library function the simulator also boots.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;
use sutra_grid::agent::{run_agent, AgentConfig};
use sutra_grid::client::MasterClient;
use sutra_grid::io::{Disk, ProcessSpawner, ProcessSpec, RealDisk};
use sutra_grid::limits;
use sutra_grid::master::{Master, MembershipConfig, NodeState};
use sutra_grid::node::cluster::{run_storage_process, Membership};
use sutra_grid::node::NodeConfig;
use sutra_proto as pb;

use crate::shutdown_signal;

/// Where the master serves gRPC unless told otherwise.
pub const MASTER_DEFAULT: &str = "127.0.0.1:7001";
/// Where the master serves the HTTP API, and where the CLI verbs look for it.
pub const API_DEFAULT: &str = "127.0.0.1:7000";

#[derive(clap::Args)]
pub struct MasterArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    listen: SocketAddr,
    /// Directory for the master's metadata (log + snapshot).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address of the HTTP/JSON API.
    #[arg(long, default_value = API_DEFAULT)]
    http: SocketAddr,
    /// Do not serve the HTTP API.
    #[arg(long)]
    no_http: bool,
    /// Width of concept vectors (the storage processes' --vector-dim).
    #[arg(long, default_value_t = limits::VECTOR_DIM_DEFAULT)]
    vector_dim: usize,
    /// Replace a shard replica whose storage process has been Down this long: a new replica
    /// on a healthy process catches up, joins, and the lost one is removed.
    #[arg(long, default_value_t = limits::REPLACE_DOWN_AFTER_MS / 1000)]
    replace_down_after_s: u64,
    /// Do not move replicas to even the load across nodes (by default the master moves a
    /// replica, learner first, whenever two nodes differ by 2 or more replicas, at most
    /// 8 shards at a time grid-wide).
    #[arg(long)]
    no_rebalance: bool,
    /// Do not split shards on their own (by size or load); `sutra split` still works.
    #[arg(long)]
    no_auto_split: bool,
    /// Split a shard whose primary holds this many MiB.
    #[arg(long, default_value_t = limits::SPLIT_BYTES_DEFAULT >> 20)]
    split_size_mib: u64,
    /// Or one whose primary serves this many requests per second (write batches, deliveries,
    /// reads) for --split-after-s.
    #[arg(long, default_value_t = limits::SPLIT_REQUESTS_PER_S_DEFAULT)]
    split_requests_per_s: f64,
    #[arg(long, default_value_t = limits::SPLIT_LOAD_SUSTAIN_MS / 1000)]
    split_after_s: u64,
    /// A shard whose range just changed (a split or merge) is neither split nor merged by the
    /// policies for this long: its load is measured afresh first.
    #[arg(long, default_value_t = limits::SPLIT_COOLDOWN_MS / 1000)]
    split_cooldown_s: u64,
    /// Do not merge shards on their own (small and cold); `sutra merge` still works. The
    /// policy never goes below the shard count `sutra init` made.
    #[arg(long)]
    no_auto_merge: bool,
    /// Merge two neighbouring shards that together hold under this many MiB...
    #[arg(long, default_value_t = limits::MERGE_BYTES_DEFAULT >> 20)]
    merge_size_mib: u64,
    /// ...and serve under this many requests per second, each under half of it for
    /// --merge-after-s.
    #[arg(long, default_value_t = limits::MERGE_REQUESTS_PER_S_DEFAULT)]
    merge_requests_per_s: f64,
    #[arg(long, default_value_t = limits::MERGE_COLD_MS / 1000)]
    merge_after_s: u64,
}

pub async fn master(a: MasterArgs) -> Result<()> {
    let (stop, _tx) = crate::http::Stop::on_signal();
    let http = if a.no_http { None } else { Some(a.http) };
    if a.replace_down_after_s == 0 || a.replace_down_after_s > 7 * 24 * 3600 {
        anyhow::bail!("--replace-down-after-s must be between 1 and 604800 (a week)");
    }
    if a.split_size_mib == 0 || a.split_size_mib > 1 << 20 {
        anyhow::bail!("--split-size-mib must be between 1 and 1048576 (1 TiB)");
    }
    if !(a.split_requests_per_s.is_finite() && a.split_requests_per_s >= 1.0) {
        anyhow::bail!("--split-requests-per-s must be at least 1");
    }
    if a.split_after_s == 0 || a.split_after_s > 3600 {
        anyhow::bail!("--split-after-s must be between 1 and 3600");
    }
    // Hysteresis: a merged shard must be far from splitting again.
    if a.merge_size_mib == 0 || a.merge_size_mib * 2 > a.split_size_mib {
        anyhow::bail!("--merge-size-mib must be between 1 and half of --split-size-mib ({})", a.split_size_mib / 2);
    }
    if !(a.merge_requests_per_s.is_finite() && a.merge_requests_per_s > 0.0)
        || a.merge_requests_per_s * 2.0 > a.split_requests_per_s
    {
        anyhow::bail!(
            "--merge-requests-per-s must be above 0 and at most half of --split-requests-per-s ({})",
            a.split_requests_per_s / 2.0
        );
    }
    if a.split_cooldown_s > 24 * 3600 {
        anyhow::bail!("--split-cooldown-s must be at most 86400 (a day)");
    }
    if a.merge_after_s == 0 || a.merge_after_s > 24 * 3600 {
        anyhow::bail!("--merge-after-s must be between 1 and 86400 (a day)");
    }
    let membership = MembershipConfig {
        replace_after_ms: a.replace_down_after_s * 1000,
        rebalance: !a.no_rebalance,
        auto_split: !a.no_auto_split,
        split_bytes: a.split_size_mib << 20,
        split_requests_per_s: a.split_requests_per_s,
        split_after_ms: a.split_after_s * 1000,
        split_cooldown_ms: a.split_cooldown_s * 1000,
        auto_merge: !a.no_auto_merge,
        merge_bytes: a.merge_size_mib << 20,
        merge_requests_per_s: a.merge_requests_per_s,
        merge_after_ms: a.merge_after_s * 1000,
        ..MembershipConfig::default()
    };
    let running = start_master(&a.data_dir, a.listen, http, a.vector_dim, membership, stop).await?;
    running.wait().await
}

/// A master serving gRPC (and the HTTP API when `http` is set) until `stop` fires.
pub struct RunningMaster {
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl RunningMaster {
    pub async fn wait(self) -> Result<()> {
        for t in self.tasks {
            t.await.map_err(|e| anyhow::anyhow!("master task: {e}"))??;
        }
        Ok(())
    }
}

pub async fn start_master(
    data_dir: &std::path::Path,
    listen: SocketAddr,
    http: Option<SocketAddr>,
    vector_dim: usize,
    membership: MembershipConfig,
    stop: crate::http::Stop,
) -> Result<RunningMaster> {
    if vector_dim == 0 || vector_dim > limits::VECTOR_DIM_MAX {
        anyhow::bail!("--vector-dim must be between 1 and {}", limits::VECTOR_DIM_MAX);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; is another grid running? pick other ports"))?;
    // Bind the API's port before anything starts, so a taken port fails clearly and early.
    let http_listener = match http {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot serve the HTTP API on {addr}; is another grid running? pick another address")
        })?),
        None => None,
    };
    let disk: Arc<dyn Disk> =
        Arc::new(RealDisk::new(data_dir).with_context(|| format!("cannot use data dir {}", data_dir.display()))?);
    let m = Master::open_with(disk, "master", membership).await.context("cannot open the master's metadata")?;
    println!("master listening on {listen}");
    let s = stop.clone();
    let mut tasks = vec![tokio::spawn(async move {
        sutra_grid::master::service::serve_listener(m, listener, s.wait()).await?;
        Ok(())
    })];
    if let Some(l) = http_listener {
        let api = crate::http::connect(&listen.to_string(), vector_dim).await?;
        println!("HTTP API at http://{}", l.local_addr()?);
        tasks.push(tokio::spawn(crate::http::serve(api, l, stop.wait())));
    }
    Ok(RunningMaster { tasks })
}

#[derive(clap::Args)]
pub struct AgentArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    master: String,
    /// Each storage process gets `DATA_ROOT/node-SLOT`.
    #[arg(long)]
    data_root: PathBuf,
    /// This machine's name in the grid; must be stable across restarts.
    #[arg(long)]
    name: Option<String>,
    /// Storage processes to run on this machine.
    #[arg(long, default_value_t = 1)]
    processes: u32,
    /// Address the storage processes serve and gossip on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Process `i` serves Storage on TCP `base-port + i` and gossips on UDP `base-port + 1000 + i`.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    #[arg(long, default_value_t = limits::VECTOR_DIM_DEFAULT)]
    vector_dim: usize,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub async fn agent(a: AgentArgs) -> Result<()> {
    if a.processes == 0 || a.processes > limits::AGENT_PROCESSES_MAX {
        anyhow::bail!("--processes must be between 1 and {}", limits::AGENT_PROCESSES_MAX);
    }
    if a.base_port as u32 + 1000 + a.processes > u16::MAX as u32 {
        anyhow::bail!("--base-port {} leaves no room for {} processes' gossip ports", a.base_port, a.processes);
    }
    let name = a.name.clone().unwrap_or_else(hostname);
    std::fs::create_dir_all(&a.data_root).with_context(|| format!("cannot create {}", a.data_root.display()))?;
    let processes = (0..a.processes)
        .map(|i| ProcessSpec {
            slot: i,
            master: a.master.clone(),
            agent: name.clone(),
            storage_addr: SocketAddr::new(a.host, a.base_port + i as u16),
            gossip_addr: SocketAddr::new(a.host, a.base_port + 1000 + i as u16),
            data_dir: a.data_root.join(format!("node-{i}")).display().to_string(),
            vector_dim: a.vector_dim,
            generation: 0,
        })
        .collect();
    let exe = std::env::current_exe().context("cannot find the sutra executable to spawn")?;
    println!("agent {name}: supervising {} storage process(es), master {}", a.processes, a.master);
    run_agent(Arc::new(ProcessSpawner { exe }), AgentConfig { name, master: a.master, processes }, shutdown_signal())
        .await
        .map_err(anyhow::Error::msg)
}

/// `sutra storage --master …`: a storage process that is part of a grid.
pub async fn storage_in_grid(data_dir: &std::path::Path, vector_dim: usize, membership: Membership) -> Result<()> {
    let disk: Arc<dyn Disk> =
        Arc::new(RealDisk::new(data_dir).with_context(|| format!("cannot use data dir {}", data_dir.display()))?);
    println!("storage node listening on {} (gossip {})", membership.storage_addr, membership.gossip_addr);
    run_storage_process(disk, NodeConfig::with_vector_dim(vector_dim), membership, shutdown_signal())
        .await
        .map_err(anyhow::Error::msg)
}

#[derive(clap::Args)]
pub struct InitArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    master: String,
    #[arg(long)]
    shards: u32,
    #[arg(long, default_value_t = 3)]
    replication: u32,
}

pub async fn init(a: InitArgs) -> Result<()> {
    let c = MasterClient::connect(&a.master).await?;
    let map = c.init(a.shards, a.replication).await?;
    println!(
        "grid initialised: {} shards × {} replicas (map version {})",
        map.shards.len(),
        a.replication,
        map.version
    );
    print_map(&map);
    Ok(())
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    master: String,
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

fn state_name(s: i32) -> &'static str {
    NodeState::from_pb(s).map_or("?", |s| s.name())
}

pub fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    let map = s.map.clone().unwrap_or_default();
    json!({
        "healthy": s.healthy,
        "fault_tolerance": s.fault_tolerance,
        "problems": s.problems,
        "in_edges_pending": s.in_edges_pending,
        "map_version": map.version,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.node_id, "agent": n.agent, "slot": n.slot, "storage_addr": n.storage_addr,
            "gossip_addr": n.gossip_addr, "state": state_name(n.state), "reason": n.reason,
            "unreachable_from": n.unreachable_from, "heartbeat_age_ms": n.heartbeat_age_ms,
            "replicas": n.replicas, "primaries": n.primaries,
        })).collect::<Vec<_>>(),
        "agents": s.agents.iter().map(|a| json!({
            "id": a.agent_id, "name": a.name, "up": a.up, "heartbeat_age_ms": a.heartbeat_age_ms,
            "processes": a.processes.iter().map(|p| json!({
                "slot": p.slot, "running": p.running, "restarts": p.restarts, "last_exit": p.last_exit,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "shards": map.shards.iter().map(|e| json!({
            "id": e.shard, "key_start": format!("{:016x}", e.key_start), "key_end": format!("{:016x}", e.key_end),
            "replicas": e.replicas, "primary": e.primary, "epoch": e.epoch,
            "splitting": e.splitting.then(|| json!({"at": format!("{:016x}", e.split_at), "into": e.split_child})),
            "merging": e.merging.then(|| json!({"absorbs": e.merge_from})),
            "bytes": e.bytes, "concepts": e.concepts, "requests_per_s": e.requests_per_s, "lag_entries": e.lag_entries,
            "moving": (e.replacing != 0).then(|| json!({"learner": e.learner, "replacing": e.replacing})),
        })).collect::<Vec<_>>(),
    })
}

fn print_map(map: &pb::ShardMap) {
    for e in &map.shards {
        let replicas: Vec<String> = e.replicas.iter().map(|r| r.to_string()).collect();
        let mut change = if e.splitting {
            format!("  splitting at {:016x} into shard {}", e.split_at, e.split_child)
        } else if e.merging {
            format!("  absorbing shard {} (merging)", e.merge_from)
        } else {
            String::new()
        };
        if e.replacing != 0 {
            change += &format!("  moving: node {} replacing node {}", e.learner, e.replacing);
        }
        // Load figures come with status answers only (the master's view of its primary).
        let load = if e.bytes > 0 || e.concepts > 0 || e.requests_per_s > 0.0 || e.lag_entries > 0 {
            format!(
                "  {:.1} MiB, {} concepts, {:.0} req/s, lag {}",
                e.bytes as f64 / (1 << 20) as f64,
                e.concepts,
                e.requests_per_s,
                e.lag_entries
            )
        } else {
            String::new()
        };
        println!(
            "  shard {:>3}  [{:016x} .. {:016x}]  epoch {}  primary {}  replicas {}{load}{change}",
            e.shard,
            e.key_start,
            e.key_end,
            e.epoch,
            e.primary,
            replicas.join(",")
        );
    }
}

pub async fn status(a: StatusArgs) -> Result<()> {
    let c = MasterClient::connect(&a.master).await?;
    let s = c.status().await?;
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
    } else {
        let map = s.map.clone().unwrap_or_default();
        println!(
            "grid: {}  (map version {}, {} shards, fault tolerance {})",
            if s.healthy { "healthy" } else { "NOT HEALTHY" },
            map.version,
            map.shards.len(),
            if s.fault_tolerance < 0 {
                "none: a shard lost its majority".into()
            } else {
                s.fault_tolerance.to_string()
            }
        );
        println!("agents:");
        for ag in &s.agents {
            let restarts: u32 = ag.processes.iter().map(|p| p.restarts).sum();
            println!(
                "  {:<16} {}  {} process(es), {} restart(s)",
                ag.name,
                if ag.up { "up  " } else { "DOWN" },
                ag.processes.len(),
                restarts
            );
        }
        println!("nodes:");
        for n in &s.nodes {
            println!(
                "  {:>4}  {:<9} {:<22} {}/{}  replicas {} (primary {})  {}",
                n.node_id,
                state_name(n.state),
                n.storage_addr,
                n.agent,
                n.slot,
                n.replicas,
                n.primaries,
                n.reason
            );
        }
        println!("shards:  (in-edges awaiting delivery: {})", s.in_edges_pending);
        print_map(&map);
        for p in &s.problems {
            println!("problem: {p}");
        }
    }
    if !s.healthy {
        anyhow::bail!("the grid is not healthy ({} problem(s))", s.problems.len());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DrainArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    master: String,
    /// Node id, as `sutra status` lists it.
    #[arg(long)]
    node: u64,
    /// Undo a drain.
    #[arg(long)]
    undo: bool,
}

#[derive(clap::Args)]
pub struct RebalanceArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    master: String,
    /// Only print the moves the rebalancer would start now and those under way.
    #[arg(long)]
    dry_run: bool,
}

pub async fn rebalance(a: RebalanceArgs) -> Result<()> {
    let c = MasterClient::connect(&a.master).await?;
    let r = c.rebalance().await?;
    let list = |title: &str, v: &[String]| {
        println!("{title}: {}", if v.is_empty() { "none" } else { "" });
        for l in v {
            println!("  {l}");
        }
    };
    list("would start now", &r.planned);
    list("under way", &r.in_flight);
    if a.dry_run {
        return Ok(());
    }
    if !r.enabled {
        anyhow::bail!(
            "rebalancing is off on this master (--no-rebalance): nothing was started; restart it without the flag to let it run"
        );
    }
    println!(
        "the master rebalances on its own: it starts these moves itself, at most {} shards at a time",
        limits::MEMBERSHIP_CHANGES_MAX
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct SplitArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    master: String,
    /// Shard id, as `sutra status` lists it.
    #[arg(long)]
    shard: u32,
    /// Where the new shard starts: a placement key (`0x` and up to 16 hex digits) or a concept
    /// label (its placement key). Default: the key that halves the shard's concepts (the middle
    /// of its range if its primary cannot say).
    #[arg(long)]
    at: Option<String>,
    /// Return once the master has recorded the split, without waiting for it to finish.
    #[arg(long)]
    no_wait: bool,
}

/// `--at` as a placement key: hex with `0x`, else a label's key.
fn split_key(at: &str) -> Result<u64> {
    match at.strip_prefix("0x").or_else(|| at.strip_prefix("0X")) {
        Some(hex) => {
            u64::from_str_radix(hex, 16).map_err(|e| anyhow::anyhow!("--at {at:?} is not a hex placement key: {e}"))
        }
        None => Ok(sutra_grid::ids::ConceptId::from_label(at).placement_key()),
    }
}

pub async fn split(a: SplitArgs) -> Result<()> {
    let at = a.at.as_deref().map(split_key).transpose()?;
    let c = MasterClient::connect(&a.master).await?;
    let r = c.split_shard(a.shard, at).await?;
    let what = format!("shard {} at {:#018x} into shard {}", a.shard, r.at, r.child);
    println!("{} split of {what}", if r.started { "started the" } else { "already under way or done: the" });
    if a.no_wait {
        return Ok(());
    }
    let start = std::time::Instant::now();
    loop {
        let map = c.shard_map().await?;
        if let Some(child) = map.shards.iter().find(|s| s.shard == r.child) {
            println!(
                "done in {} ms: shard {} owns [{:#018x}, {:#018x}] on nodes {:?}",
                start.elapsed().as_millis(),
                r.child,
                child.key_start,
                child.key_end,
                child.replicas
            );
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            anyhow::bail!("the split of {what} has not finished after 30 s; `sutra status` shows why (is the shard's primary serving?)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[derive(clap::Args)]
pub struct MergeArgs {
    #[arg(long, default_value = MASTER_DEFAULT)]
    master: String,
    /// Shard id, as `sutra status` lists it.
    #[arg(long)]
    shard: u32,
    /// The neighbour to merge it with (default: the shard after it, or the one before it
    /// when it is the last). The lower of the two stays and absorbs the other.
    #[arg(long)]
    with: Option<u32>,
    /// Return once the master has recorded the merge, without waiting for it to finish.
    #[arg(long)]
    no_wait: bool,
}

pub async fn merge(a: MergeArgs) -> Result<()> {
    let c = MasterClient::connect(&a.master).await?;
    let r = c.merge_shard(a.shard, a.with).await?;
    let what = format!("shard {} into shard {}", r.from, r.into);
    println!("{} merge of {what}", if r.started { "started the" } else { "already under way or done: the" });
    if a.no_wait {
        return Ok(());
    }
    let start = std::time::Instant::now();
    loop {
        let map = c.shard_map().await?;
        if !map.shards.iter().any(|s| s.shard == r.from) {
            if let Some(into) = map.shards.iter().find(|s| s.shard == r.into) {
                println!(
                    "done in {} ms: shard {} owns [{:#018x}, {:#018x}] on nodes {:?}",
                    start.elapsed().as_millis(),
                    r.into,
                    into.key_start,
                    into.key_end,
                    into.replicas
                );
            }
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            anyhow::bail!(
                "the merge of {what} has not finished after 60 s; `sutra status` shows why (are both primaries serving? a frozen shard first delivers its outbox)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub async fn drain(a: DrainArgs) -> Result<()> {
    let c = MasterClient::connect(&a.master).await?;
    let n = c.drain(a.node, !a.undo).await?;
    println!("node {} is {}", n.node_id, state_name(n.state));
    Ok(())
}
