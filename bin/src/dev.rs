//! `sutra dev`: a whole local grid on this machine with one command. A master (serving the HTTP
//! API), one agent spawning 3 storage-node processes, 3 shards × 3 replicas, the bundled sample
//! loaded on first run. Ctrl-C stops every process; the next run reuses the data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sutra_grid::agent::{run_agent, AgentConfig};
use sutra_grid::api::{Api, NeighborsQuery, ReasonRequest, SearchRequest};
use sutra_grid::client::MasterClient;
use sutra_grid::io::{ProcessSpawner, ProcessSpec};
use sutra_grid::limits;
use sutra_grid::model::Consistency;

use crate::cluster::{start_master, API_DEFAULT, MASTER_DEFAULT};
use crate::http::Stop;

const SHARDS: u32 = 3;
const REPLICATION: u32 = 3;
const PROCESSES: u32 = 3;
/// How long a fresh grid may take to elect primaries for every shard.
const READY_BUDGET: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the grid keeps its data; reused on the next run.
    #[arg(long, default_value = "./sutra-data")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = API_DEFAULT)]
    listen: SocketAddr,
    /// Address of the master's gRPC service.
    #[arg(long, default_value = MASTER_DEFAULT)]
    master_listen: SocketAddr,
    /// Storage process i serves on TCP base-port + i and gossips on UDP base-port + 1000 + i.
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    #[arg(long, default_value_t = limits::VECTOR_DIM_DEFAULT)]
    vector_dim: usize,
    /// Run the example queries, then stop (instead of serving until Ctrl-C).
    #[arg(long)]
    no_wait: bool,
}

fn check_ports(host: std::net::IpAddr, base: u16) -> Result<()> {
    if base as u32 + 1000 + PROCESSES > u16::MAX as u32 {
        bail!("--base-port {base} leaves no room for the gossip ports (base + 1000 + i)");
    }
    for i in 0..PROCESSES as u16 {
        let tcp = SocketAddr::new(host, base + i);
        let udp = SocketAddr::new(host, base + 1000 + i);
        std::net::TcpListener::bind(tcp)
            .with_context(|| format!("port {tcp} is taken; is another grid running? pick another --base-port"))?;
        std::net::UdpSocket::bind(udp)
            .with_context(|| format!("UDP port {udp} is taken; is another grid running? pick another --base-port"))?;
    }
    Ok(())
}

/// Waits until the grid is initialised and healthy (every replica in place, every primary
/// serving).
async fn until_ready(master: &str, api: &Api, t0: Instant) -> Result<()> {
    let mc = MasterClient::connect(master).await?.with_deadline(Duration::from_secs(2));
    let mut initialised = false;
    let mut last_note = Instant::now();
    loop {
        if !initialised {
            let st = mc.status().await?;
            let version = st.map.as_ref().map(|m| m.version).unwrap_or(0);
            let up = st
                .nodes
                .iter()
                .filter(|n| sutra_grid::master::NodeState::from_pb(n.state) == Some(sutra_grid::master::NodeState::Up))
                .count();
            if version > 0 {
                initialised = true;
            } else if up >= PROCESSES as usize {
                mc.init(SHARDS, REPLICATION).await.context("initialising the shard map")?;
                initialised = true;
            }
        }
        let healthy = initialised && mc.status().await.is_ok_and(|s| s.healthy);
        if healthy && api.ready().await.is_ok() {
            // A primary may still be taking its lease; one strong read proves it serves.
            let _ = api.router().refresh().await;
            if api
                .concept("Paris", Consistency::Strong)
                .await
                .map(|_| ())
                .or_else(|e| if e.status == 404 { Ok(()) } else { Err(e) })
                .is_ok()
            {
                return Ok(());
            }
        }
        if t0.elapsed() > READY_BUDGET {
            bail!(
                "the grid did not become ready within {} s; `sutra status --master {master}` shows why",
                READY_BUDGET.as_secs()
            );
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            println!("  waiting for the grid ({} s)…", t0.elapsed().as_secs());
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: DevArgs) -> Result<()> {
    let t0 = Instant::now();
    check_ports(args.master_listen.ip(), args.base_port)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let (stop, stop_tx) = Stop::on_signal();
    let master = start_master(
        &args.data_dir.join("master"),
        args.master_listen,
        Some(args.listen),
        args.vector_dim,
        sutra_grid::master::MembershipConfig::default(),
        stop.clone(),
    )
    .await?;
    let master_addr = args.master_listen.to_string();
    let exe = std::env::current_exe().context("cannot find the sutra executable to spawn")?;
    let processes = (0..PROCESSES)
        .map(|i| ProcessSpec {
            slot: i,
            master: master_addr.clone(),
            agent: "dev".into(),
            storage_addr: SocketAddr::new(args.master_listen.ip(), args.base_port + i as u16),
            gossip_addr: SocketAddr::new(args.master_listen.ip(), args.base_port + 1000 + i as u16),
            data_dir: args.data_dir.join("agent").join(format!("node-{i}")).display().to_string(),
            vector_dim: args.vector_dim,
            generation: 0,
        })
        .collect();
    let config = AgentConfig { name: "dev".into(), master: master_addr.clone(), processes };
    let agent = tokio::spawn(run_agent(Arc::new(ProcessSpawner { exe }), config, stop.clone().wait()));
    println!("starting a local grid: master + 1 agent + {PROCESSES} storage processes, {SHARDS} shards × {REPLICATION} replicas");

    let api = crate::http::connect(&master_addr, args.vector_dim).await?;
    let ready = until_ready(&master_addr, &api, t0).await;
    if let Err(e) = ready {
        let _ = stop_tx.send(true);
        let _ = agent.await;
        let _ = master.wait().await;
        return Err(e);
    }
    match api.concept("Paris", Consistency::Strong).await {
        Ok(_) => println!("reusing the data in {}", args.data_dir.display()),
        Err(e) if e.status == 404 => {
            let req = crate::sample::request()?;
            let r = api.learn(req).await.map_err(|e| anyhow::anyhow!("loading the sample: {e}"))?;
            println!(
                "loaded the sample: {} concepts, {} associations over shards {:?}",
                r.concepts.len(),
                r.associations_created,
                r.shards
            );
            // In-edges reach their shards through the outbox a moment after the write.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let q = NeighborsQuery { direction: Some("in".into()), ..Default::default() };
                let paris = api.neighbors("Paris", &q).await.is_ok_and(|n| n.neighbors.len() >= 6);
                let continent = api.neighbors("Continent", &q).await.is_ok_and(|n| n.neighbors.len() >= 6);
                if paris && continent {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(e) => bail!("reading the grid: {e}"),
    }
    println!("grid ready in {} ms; data in {}\n", t0.elapsed().as_millis(), args.data_dir.display());
    if let Err(e) = examples(&api, args.listen).await {
        println!("(an example query failed: {e})");
    }
    if !args.no_wait {
        println!("\nAPI at http://{}  (GET / lists the routes). Ctrl-C stops the grid.", args.listen);
    }
    if args.no_wait {
        let _ = stop_tx.send(true);
    }
    stop.wait().await;
    println!("stopping…");
    agent.await.map_err(|e| anyhow::anyhow!("agent task: {e}"))?.map_err(anyhow::Error::msg)?;
    master.wait().await?;
    println!("stopped; data kept in {}", args.data_dir.display());
    Ok(())
}

/// The README's tour: each example's CLI form and its answer.
async fn examples(api: &Api, listen: SocketAddr) -> Result<()> {
    let api_flag = if listen.to_string() == API_DEFAULT { String::new() } else { format!(" --api http://{listen}") };
    println!("$ sutra concept \"Eiffel Tower\"{api_flag}");
    let c = api.concept("Eiffel Tower", Consistency::Strong).await?;
    println!("  {}  ({})\n  {}", c.label, c.id, c.content);

    println!("\n$ sutra neighbors Paris{api_flag}");
    let n = api.neighbors("Paris", &NeighborsQuery { limit: Some(8), ..Default::default() }).await?;
    for e in &n.neighbors {
        let arrow = if e.direction == "out" { "-->" } else { "<--" };
        println!("  {arrow} {:<22} {:<14} {:<13} {:.2}", e.label, e.relation, e.kind, e.confidence);
    }

    println!("\n$ sutra reason Medical_Diagnosis Financial_Fraud{api_flag}");
    let req = ReasonRequest { start: "Medical_Diagnosis".into(), end: "Financial_Fraud".into(), ..Default::default() };
    let r = api.reason(&req).await?;
    for line in &r.reasoning {
        println!("  {line}");
    }
    println!(
        "  ({} path(s), combined confidence {:.3}; {} shards, {} RPCs, {} visited, {:.2} ms)",
        r.paths.len(),
        r.confidence,
        r.shards_accessed,
        r.rpcs,
        r.visited,
        r.latency_ms
    );

    println!("\n$ sutra search \"iron tower in Paris\"{api_flag}");
    let s = api
        .search(&SearchRequest { text: Some("iron tower in Paris".into()), k: Some(3), ..Default::default() })
        .await?;
    for h in &s.hits {
        println!("  {:.3}  {}", h.score, h.label);
    }
    println!("\nOver HTTP: curl -s http://{listen}/concepts?label=Paris");
    Ok(())
}
