//! `sutra bench …`: measurements printed as one JSON object each. They measure; they assert
//! nothing. Run them on an otherwise idle machine and compare medians.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::json;
use sutra_grid::ids::ConceptId;
use sutra_grid::io::{Disk, RealDisk};
use sutra_grid::model::{AssocKind, Concept, ConceptWrite, Direction, EdgeFilter, WriteBatch};
use sutra_grid::node::{NodeConfig, StorageNode};
use sutra_grid::store::checkpoint::{self, CheckpointMeta, EdgeRec, VertexData};
use sutra_grid::store::{Checkpoint, KeyRange, ShardStore};

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Durable upserts through one shard's write path (validate, WAL group commit, fsync, apply).
    Wal(WalArgs),
    /// Full single-thread BFS over a generated checkpointed graph.
    Bfs(GraphArgs),
    /// Reopen a shard: map and verify its checkpoint, then replay a WAL tail.
    Reopen(ReopenArgs),
    /// Replicated upserts through the router on a real local grid: a master, an agent and 3
    /// storage processes on 127.0.0.1, replication 3.
    ClusterWrite(ClusterWriteArgs),
    /// The HTTP API on a running grid with WordNet imported: GET latency and throughput, and
    /// /reason latency between synsets (hop counts checked against a BFS of the files).
    Api(crate::bench_api::ApiArgs),
    /// Vector search on a running grid with WordNet imported: recall@k of the shards' indexes
    /// against an exact scan, the latency of both, and the indexes' size.
    Search(crate::bench_search::SearchArgs),
    /// Failover as a user sees it: a local grid under writes to shard 0 while its primary
    /// process is killed (SIGKILL) or hung (SIGSTOP), trial after trial; recovery times.
    Failover(crate::bench_failover::FailoverArgs),
    /// The master's control plane at size, in one process without network or storage
    /// (`master::scale`): machines heartbeat their replicas, one machine is lost, one joins,
    /// the master restarts; the master's CPU per heartbeat round and the time to converge.
    Master(MasterArgs),
}

#[derive(clap::Args)]
pub struct MasterArgs {
    #[arg(long, default_value_t = 100)]
    machines: u32,
    /// Storage processes per machine.
    #[arg(long, default_value_t = 3)]
    per_machine: u32,
    #[arg(long, default_value_t = 3000)]
    shards: u32,
    /// Print only the JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ClusterWriteArgs {
    /// Concurrent writer tasks, each with one routed batch in flight.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Upserts (concepts) per routed batch; the router splits it per shard.
    #[arg(long, default_value_t = 200)]
    items_per_write: usize,
    #[arg(long, default_value_t = 3)]
    shards: u32,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Split shard 0 (`sutra split`) this many seconds in, and report the throughput before,
    /// during and after it.
    #[arg(long)]
    split_at_s: Option<f64>,
    /// Merge the split back (`sutra merge`) this many seconds in (after --split-at-s).
    #[arg(long)]
    merge_at_s: Option<f64>,
    #[command(flatten)]
    common: Common,
}

/// Flags every bench takes.
#[derive(clap::Args)]
pub struct Common {
    /// Directory on the disk to measure; a fresh subdirectory is created and removed after.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print only the JSON object (no progress lines).
    #[arg(long)]
    json: bool,
}

impl Common {
    fn progress(&self, msg: &str) {
        if !self.json {
            eprintln!("  {msg}");
        }
    }
}

#[derive(clap::Args)]
pub struct WalArgs {
    /// Concurrent writer tasks, each with one write in flight.
    #[arg(long, default_value_t = 512)]
    writers: usize,
    /// Upserts (concepts) per write call.
    #[arg(long, default_value_t = 1)]
    items_per_write: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct GraphArgs {
    #[arg(long, default_value_t = 1_000_000)]
    concepts: u32,
    #[arg(long, default_value_t = 10_000_000)]
    associations: u64,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct ReopenArgs {
    #[arg(long, default_value_t = 1_000_000)]
    concepts: u32,
    #[arg(long, default_value_t = 5_000_000)]
    associations: u64,
    /// Upserts written after the checkpoint, replayed from the WAL on reopen.
    #[arg(long, default_value_t = 100_000)]
    tail_upserts: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Empty the page cache before each reopen (Linux, root): a cold-cache figure.
    #[arg(long)]
    drop_caches: bool,
    #[command(flatten)]
    common: Common,
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    let (out, quiet) = match cmd {
        BenchCmd::Wal(a) => (bench_wal(&a).await?, a.common.json),
        BenchCmd::Bfs(a) => (bench_bfs(&a)?, a.common.json),
        BenchCmd::Reopen(a) => (bench_reopen(&a).await?, a.common.json),
        BenchCmd::ClusterWrite(a) => (bench_cluster_write(&a).await?, a.common.json),
        BenchCmd::Api(a) => (crate::bench_api::bench_api(&a).await?, a.json),
        BenchCmd::Search(a) => (crate::bench_search::bench_search(&a).await?, a.json),
        BenchCmd::Failover(a) => (crate::bench_failover::bench_failover(&a).await?, a.json),
        BenchCmd::Master(a) => (bench_master(&a)?, a.json),
    };
    if !quiet {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        eprintln!("({cores} cores; disks and neighbours are noisy: run a bench several times and compare medians)");
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: &Path, what: &str) -> Result<Scratch> {
        let p = base.join(format!(".sutra-bench-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}

fn padded(prefix: String, len: usize) -> String {
    let mut s = prefix;
    while s.len() < len {
        s.push('x');
    }
    s
}

async fn bench_wal(a: &WalArgs) -> Result<serde_json::Value> {
    let scratch = Scratch::new(&a.common.dir, "wal")?;
    a.common.progress(&format!("{} writers for {} s on {}", a.writers, a.seconds, scratch.0.display()));
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(&scratch.0)?);
    let node = StorageNode::open(disk, bench_config()).await?;
    let shard = node.create_shard(0, KeyRange::ALL, false).await?;
    let content = "c".repeat(200);
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let (shard, content, items) = (shard.clone(), content.clone(), a.items_per_write.max(1));
        tasks.push(tokio::spawn(async move {
            let mut lat_us = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let concepts = (0..items)
                    .map(|_| {
                        seq += 1;
                        ConceptWrite {
                            label: padded(format!("w{w:05}-{seq:012}-"), 64),
                            content: content.clone(),
                            vector: vec![],
                            confidence: 1.0,
                        }
                    })
                    .collect();
                let t = Instant::now();
                shard.write(WriteBatch { concepts, associations: vec![], forget: vec![] }, vec![]).await?;
                lat_us.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat_us)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let upserts = lat.len() * a.items_per_write.max(1);
    Ok(json!({
        "bench": "wal",
        "durable_upserts_per_s": (upserts as f64 / secs).round(),
        "commit_latency_ms_p50": percentile(&lat, 0.50) / 1e3,
        "commit_latency_ms_p99": percentile(&lat, 0.99) / 1e3,
        "fsyncs_per_s": (shard.wal_syncs() as f64 / secs).round(),
        "upserts": upserts,
        "writers": a.writers,
        "items_per_write": a.items_per_write,
        "label_bytes": 64,
        "content_bytes": 200,
        "seconds": secs,
    }))
}

/// `sutra split` of shard 0 at `split_at` s after `start`, then `sutra merge` of the two halves
/// at `merge_at`: when each was asked and when the map showed it done, in seconds from `start`.
#[allow(clippy::type_complexity)]
async fn split_then_merge(
    mc: &sutra_grid::client::MasterClient,
    start: Instant,
    split_at: Option<f64>,
    merge_at: Option<f64>,
) -> Result<(Option<(f64, f64)>, Option<(f64, f64)>)> {
    let Some(split_at) = split_at else { return Ok((None, None)) };
    let at = |s: f64| tokio::time::sleep_until(tokio::time::Instant::from_std(start + Duration::from_secs_f64(s)));
    let now = || start.elapsed().as_secs_f64();
    // Until the map shows the new shard (`present`) or no longer does.
    let until = async |child: u32, present: bool| -> Result<f64> {
        loop {
            if mc.shard_map().await?.shards.iter().any(|e| e.shard == child) == present {
                return Ok(now());
            }
            anyhow::ensure!(now() < 600.0, "the split or merge did not finish in 600 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    at(split_at).await;
    let s0 = now();
    let r = mc.split_shard(0, None).await?;
    let s1 = until(r.child, true).await?;
    let Some(merge_at) = merge_at else { return Ok((Some((s0, s1)), None)) };
    at(merge_at).await;
    let m0 = now();
    mc.merge_shard(0, Some(r.child)).await?;
    let m1 = until(r.child, false).await?;
    Ok((Some((s0, s1)), Some((m0, m1))))
}

/// A random graph over `n` concepts, as checkpoint input (sorted by id).
fn generate(n: u32, m: u64, seed: u64) -> Vec<VertexData> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut vs: Vec<VertexData> = (0..n)
        .map(|i| {
            let label = format!("c{i}");
            let id = ConceptId::from_label(&label);
            VertexData {
                id,
                concept: Some(Concept {
                    id,
                    label,
                    content: "generated concept".into(),
                    vector: vec![],
                    confidence: 1.0,
                    created_ms: 0,
                    updated_ms: 0,
                }),
                out: Vec::new(),
                inn: Vec::new(),
            }
        })
        .collect();
    vs.sort_unstable_by_key(|v| v.id);
    for _ in 0..m {
        let (s, t) = (rng.random_range(0..n) as usize, rng.random_range(0..n) as usize);
        let (sid, tid) = (vs[s].id, vs[t].id);
        let conf = rng.random_range(0.5f32..1.0);
        vs[s].out.push(EdgeRec { other: tid, kind: AssocKind::Semantic, rel: 0, confidence: conf, evidence: None });
        vs[t].inn.push(EdgeRec { other: sid, kind: AssocKind::Semantic, rel: 0, confidence: conf, evidence: None });
    }
    vs
}

/// Writes a checkpoint of a generated graph into `disk` at `dir`; returns its size.
fn write_generated(disk: &dyn Disk, dir: &str, n: u32, m: u64, seed: u64, lsn: u64) -> Result<u64> {
    let vs = generate(n, m, seed);
    let meta = CheckpointMeta { lsn, epoch: 1, key_start: 0, key_end: u64::MAX };
    let image = checkpoint::build_image(&meta, &["related_to".to_string()], &vs, &Default::default());
    drop(vs);
    disk.create_dir_all(dir)?;
    Ok(checkpoint::write(disk, dir, &image)?)
}

fn bench_bfs(a: &GraphArgs) -> Result<serde_json::Value> {
    let scratch = Scratch::new(&a.common.dir, "bfs")?;
    let disk = RealDisk::new(&scratch.0)?;
    let t = Instant::now();
    a.common.progress(&format!(
        "generating {} concepts / {} associations and writing the checkpoint",
        a.concepts, a.associations
    ));
    let bytes = write_generated(&disk, "shard", a.concepts, a.associations, a.seed, 1)?;
    let build_s = t.elapsed().as_secs_f64();
    a.common.progress(&format!(
        "checkpoint written ({} MB) in {build_s:.1} s; running {} BFS",
        bytes >> 20,
        a.runs.max(1)
    ));
    let cp = Checkpoint::open(disk.map("shard/storage.dat")?)?;
    let store = ShardStore::new(KeyRange::ALL, Some(cp));
    let filter = EdgeFilter { direction: Direction::Out, ..Default::default() };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ 1);
    let mut runs = Vec::new();
    let (mut reached, mut scanned) = (0, 0);
    for _ in 0..a.runs.max(1) {
        let start = ConceptId::from_label(&format!("c{}", rng.random_range(0..a.concepts)));
        let t = Instant::now();
        (reached, scanned) = store.bfs_reach(start, &filter, usize::MAX);
        let s = t.elapsed().as_secs_f64();
        runs.push((scanned as f64 / s, s));
    }
    runs.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (eps, secs) = runs[runs.len() / 2];
    Ok(json!({
        "bench": "bfs",
        "vertices": a.concepts,
        "edges": a.associations,
        "edges_per_s": eps.round(),
        "bfs_ms_median": secs * 1e3,
        "edges_scanned": scanned,
        "vertices_reached": reached,
        "bytes_per_edge": (bytes as f64 / a.associations.max(1) as f64 * 10.0).round() / 10.0,
        "checkpoint_bytes": bytes,
        "runs": runs.len(),
        "build_s": build_s,
        "note": "bytes_per_edge = storage.dat bytes / associations; each association is stored as an out-edge and an in-edge",
    }))
}

async fn bench_reopen(a: &ReopenArgs) -> Result<serde_json::Value> {
    let scratch = Scratch::new(&a.common.dir, "reopen")?;
    a.common.progress(&format!("generating {} concepts / {} associations", a.concepts, a.associations));
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(&scratch.0)?);
    {
        let node = StorageNode::open(disk.clone(), bench_config()).await?;
        node.create_shard(0, KeyRange::ALL, false).await?;
    }
    let bytes = write_generated(&*disk, "shards/000000", a.concepts, a.associations, a.seed, 0)?;
    {
        let node = StorageNode::open(disk.clone(), bench_config()).await?;
        let shard = node.shard(0)?;
        let content = "t".repeat(200);
        for chunk in 0..a.tail_upserts.div_ceil(100) {
            let concepts = (0..100)
                .map(|i| ConceptWrite {
                    label: padded(format!("tail-{chunk}-{i}-"), 64),
                    content: content.clone(),
                    vector: vec![],
                    confidence: 1.0,
                })
                .collect();
            shard.write(WriteBatch { concepts, associations: vec![], forget: vec![] }, vec![]).await?;
        }
    }
    a.common.progress(&format!(
        "checkpoint + {} tail upserts written; reopening {} times",
        a.tail_upserts,
        a.runs.max(1)
    ));
    let mut times = Vec::new();
    let mut replayed = 0;
    for _ in 0..a.runs.max(1) {
        if a.drop_caches {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            std::fs::write("/proc/sys/vm/drop_caches", "3").context("--drop-caches needs Linux and root")?;
        }
        let t = Instant::now();
        let node = StorageNode::open(disk.clone(), bench_config()).await?;
        let shard = node.shard(0)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        replayed = shard.recovery.records_replayed;
    }
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "reopen",
        "reopen_ms_p50": times[times.len() / 2],
        "reopen_ms_max": times[times.len() - 1],
        "concepts": a.concepts,
        "associations": a.associations,
        "checkpoint_bytes": bytes,
        "tail_upserts": a.tail_upserts,
        "wal_records_replayed": replayed,
        "runs": times.len(),
        "page_cache": if a.drop_caches { "cold (dropped before each reopen)" } else { "warm (the files were just written)" },
        "note": "reopen verifies both checksums and every structural bound of storage.dat, then replays the WAL tail",
    }))
}

/// Automatic checkpoints off: the benches measure one path at a time.
fn bench_config() -> NodeConfig {
    NodeConfig { vector_dim: 8, checkpoint_overlay_items: u64::MAX, ..NodeConfig::default() }
}

/// A local port range with `n` free TCP ports and, 1000 above, `n` free UDP ports.
fn free_base_port(n: u16) -> Result<u16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    for _ in 0..200 {
        let base: u16 = rng.random_range(20_000..40_000);
        let ok = (0..n).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", base + 1000 + i)).is_ok()
        });
        if ok {
            return Ok(base);
        }
    }
    anyhow::bail!("no free port range for the storage processes")
}

async fn bench_cluster_write(a: &ClusterWriteArgs) -> Result<serde_json::Value> {
    use sutra_grid::agent::{run_agent, AgentConfig};
    use sutra_grid::client::MasterClient;
    use sutra_grid::io::{ProcessSpawner, ProcessSpec};
    use sutra_grid::master::Master;
    use sutra_grid::query::Router;

    let scratch = Scratch::new(&a.common.dir, "cluster")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let master_addr = listener.local_addr()?.to_string();
    let mdisk: Arc<dyn Disk> = Arc::new(RealDisk::new(scratch.0.join("master"))?);
    let master = Master::open(mdisk, "master").await?;
    let (stop_master, stopped) = tokio::sync::oneshot::channel::<()>();
    let master_task = tokio::spawn(sutra_grid::master::service::serve_listener(master, listener, async move {
        let _ = stopped.await;
    }));
    let base = free_base_port(3)?;
    let processes = (0..3u32)
        .map(|i| ProcessSpec {
            slot: i,
            master: master_addr.clone(),
            agent: "bench".into(),
            storage_addr: std::net::SocketAddr::from(([127, 0, 0, 1], base + i as u16)),
            gossip_addr: std::net::SocketAddr::from(([127, 0, 0, 1], base + 1000 + i as u16)),
            data_dir: scratch.0.join(format!("node-{i}")).display().to_string(),
            vector_dim: 8,
            generation: 0,
        })
        .collect();
    let exe = std::env::current_exe().context("cannot find the sutra executable to spawn")?;
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = AgentConfig { name: "bench".into(), master: master_addr.clone(), processes };
    let agent_task = tokio::spawn(run_agent(Arc::new(ProcessSpawner { exe }), cfg, async move {
        let _ = agent_stopped.await;
    }));
    a.common.progress(&format!("grid: master {master_addr}, 3 storage processes from port {base}"));
    let mc = MasterClient::connect(&master_addr).await?;
    let boot = Instant::now();
    loop {
        let st = mc.status().await?;
        if st.nodes.len() == 3 && st.nodes.iter().all(|n| n.state == sutra_proto::NodeState::Up as i32) {
            break;
        }
        anyhow::ensure!(boot.elapsed() < Duration::from_secs(30), "storage processes did not come up in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mc.init(a.shards, 3).await?;
    loop {
        if mc.status().await?.healthy {
            break;
        }
        anyhow::ensure!(boot.elapsed() < Duration::from_secs(60), "the grid did not become healthy in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.common.progress(&format!(
        "healthy after {:.2} s; {} writers for {} s",
        boot.elapsed().as_secs_f64(),
        a.writers,
        a.seconds
    ));
    let router = Router::new(mc.clone(), Duration::from_secs(10)).await?;
    let content = "c".repeat(200);
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    // The split and merge, timed from `start`: (started, done) of each.
    let changes = {
        let (mc, split_at, merge_at) = (mc.clone(), a.split_at_s, a.merge_at_s);
        tokio::spawn(async move { split_then_merge(&mc, start, split_at, merge_at).await })
    };
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let (router, content, items) = (router.clone(), content.clone(), a.items_per_write.max(1));
        tasks.push(tokio::spawn(async move {
            let (mut lat_us, mut failed) = (Vec::new(), 0u64);
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let concepts = (0..items)
                    .map(|_| {
                        seq += 1;
                        ConceptWrite {
                            label: padded(format!("w{w:05}-{seq:012}-"), 64),
                            content: content.clone(),
                            vector: vec![],
                            confidence: 1.0,
                        }
                    })
                    .collect();
                let t = Instant::now();
                match router.write(&WriteBatch { concepts, associations: vec![], forget: vec![] }).await {
                    Ok(_) => lat_us.push((t.elapsed().as_micros() as u64, start.elapsed().as_secs_f64())),
                    Err(_) => failed += 1,
                }
            }
            (lat_us, failed)
        }));
    }
    let (mut acked, mut failed) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, f) = t.await?;
        acked.extend(l);
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    let (split, merge) = changes.await??;
    // Acknowledged upserts per second in each phase, and as a ratio of the rate before.
    let per_write = a.items_per_write.max(1) as f64;
    let rate = |from: f64, to: f64| {
        let n = acked.iter().filter(|(_, t)| *t >= from && *t < to).count() as f64;
        (to > from).then(|| (n * per_write / (to - from)).round())
    };
    let mut phases = serde_json::Map::new();
    if let Some((s0, s1)) = split {
        let before = rate(0.0, s0);
        let m0 = merge.map_or(secs, |m| m.0);
        let mut put = |name: &str, r: Option<f64>| {
            let ratio = r.zip(before).map(|(r, b)| ((r / b.max(1.0)) * 100.0).round() / 100.0);
            phases.insert(name.into(), json!({"upserts_per_s": r, "ratio_to_before": ratio}));
        };
        put("before_split", before);
        put("during_split", rate(s0, s1));
        put("after_split", rate(s1, m0));
        if let Some((m0, m1)) = merge {
            put("during_merge", rate(m0, m1));
            put("after_merge", rate(m1, secs));
        }
    }
    // Acknowledged upserts in each whole second, to tell a split's or merge's effect from the
    // store growing (checkpoints get longer as it does): compare with a run without them.
    let per_second: Vec<f64> =
        (0..secs.floor() as usize).map(|i| rate(i as f64, i as f64 + 1.0).unwrap_or(0.0)).collect();
    let mut lat: Vec<u64> = acked.iter().map(|(l, _)| *l).collect();
    lat.sort_unstable();
    let upserts = lat.len() * a.items_per_write.max(1);
    let _ = stop_agent.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), agent_task).await;
    let _ = stop_master.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), master_task).await;
    Ok(json!({
        "bench": "cluster-write",
        "acked_upserts_per_s": (upserts as f64 / secs).round(),
        "latency_ms_p50": percentile(&lat, 0.50) / 1e3,
        "latency_ms_p99": percentile(&lat, 0.99) / 1e3,
        "upserts": upserts,
        "failed_writes": failed,
        "writers": a.writers,
        "items_per_write": a.items_per_write,
        "shards": a.shards,
        "replication": 3,
        "storage_processes": 3,
        "label_bytes": 64,
        "content_bytes": 200,
        "seconds": secs,
        "split_s": split.map(|(a, b)| [a, b]),
        "merge_s": merge.map(|(a, b)| [a, b]),
        "phases": phases,
        "upserts_per_second": per_second,
    }))
}

fn bench_master(a: &MasterArgs) -> Result<serde_json::Value> {
    use sutra_grid::master::scale;
    anyhow::ensure!(
        a.machines >= 4 && a.per_machine >= 1 && a.shards >= 1,
        "need 4+ machines, 1+ process each, 1+ shard"
    );
    let plan = scale::Plan::new(a.machines, a.per_machine, a.shards);
    if !a.json {
        eprintln!(
            "  {} machines x {} processes, {} shards x 3: machine lost at {} s, one joins at {} s, master restart at {} s",
            a.machines,
            a.per_machine,
            a.shards,
            plan.lose_round * sutra_grid::limits::HEARTBEAT_INTERVAL_MS / 1000,
            plan.join_round * sutra_grid::limits::HEARTBEAT_INTERVAL_MS / 1000,
            plan.restart_round * sutra_grid::limits::HEARTBEAT_INTERVAL_MS / 1000
        );
    }
    let wall = Instant::now();
    let out = scale::run(&plan).map_err(anyhow::Error::msg)?;
    let round_s = sutra_grid::limits::HEARTBEAT_INTERVAL_MS as f64 / 1000.0;
    let mut us = out.round_us.clone();
    us.sort_unstable();
    let pct = |p: f64| us.get(((us.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0) as f64 / 1000.0;
    let nodes = (a.machines * a.per_machine) as f64;
    Ok(json!({
        "bench": "master",
        "machines": a.machines,
        "processes": a.machines * a.per_machine,
        "shards": a.shards,
        "rounds": out.rounds,
        "round_interval_s": round_s,
        "converged": out.converged_round.is_some(),
        "converged_after_s": out.converged_round.map(|r| r as f64 * round_s),
        "converged_after_restart_s": out.converged_round.map(|r| r.saturating_sub(plan.restart_round) as f64 * round_s),
        "unsettled": out.unsettled,
        "round_cpu_ms": {"median": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "heartbeat_us_median": pct(0.5) * 1000.0 / nodes,
        "round_cpu_share_of_interval_median": pct(0.5) / (round_s * 1000.0),
        "elections": out.elections,
        "map_bytes": out.map_bytes,
        "election_logged_bytes": out.election_logged_bytes,
        "replica_moves": out.moves,
        "leader_transfers": out.transfers,
        "max_in_flight": out.max_in_flight,
        "in_flight_bound": plan.membership.changes_max,
        "replicas_per_up_node": [out.replicas.0, out.replicas.1],
        "primaries_per_up_node": [out.primaries.0, out.primaries.1],
        "wall_s": wall.elapsed().as_secs_f64(),
    }))
}
