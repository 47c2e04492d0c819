//! The control plane as real processes on 127.0.0.1: `sutra master`, `sutra agent` spawning 3
//! `sutra storage` children, `sutra init` (twice: idempotent), `sutra status`, writes routed
//! through the shard map, a kill -9 of one child (reported by its agent, restarted), and the
//! agent stopping its children on SIGTERM. The same code the simulator runs, without madsim.

use crate::common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sutra_grid::client::{MasterClient, StorageClient};
use sutra_grid::ids::ConceptId;
use sutra_grid::master::NodeState;
use sutra_grid::model::Consistency;
use sutra_grid::model::{AssocKind, Association, EdgeFilter, WriteBatch};
use sutra_grid::query::paths;
use sutra_grid::query::router::GridExpander;
use sutra_grid::query::Router;

fn sutra(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sutra"));
    c.args(args).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sutra")).args(args).env("RUST_LOG", "warn").output().expect("running sutra")
}

/// Pids of live processes whose command line mentions `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| s.contains(") Z "));
        if cmd.contains(needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

async fn status(master: &str) -> Option<sutra_proto::StatusResponse> {
    MasterClient::connect(master).await.ok()?.with_deadline(Duration::from_millis(500)).status().await.ok()
}

async fn until<T>(what: &str, budget: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < budget, "{what}: not within {budget:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn state_of(st: &sutra_proto::StatusResponse, slot: u32) -> Option<NodeState> {
    st.nodes.iter().find(|n| n.slot == slot).and_then(|n| NodeState::from_pb(n.state))
}

struct Reap(Vec<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_agent_and_storage_processes_form_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let master = format!("127.0.0.1:{}", common::free_port());
    let base = common::free_base(3);
    let data_root = root.join("agent");
    let m = sutra(&["master", "--listen", &master, "--data-dir"]).arg(root.join("master")).spawn().unwrap();
    let a = sutra(&["agent", "--master", &master, "--name", "m1", "--processes", "3", "--vector-dim", "4"])
        .args(["--base-port", &base.to_string(), "--data-root"])
        .arg(&data_root)
        .spawn()
        .unwrap();
    let mut procs = Reap(vec![m, a]);

    until("3 storage processes registered and Up", Duration::from_secs(30), async || {
        let st = status(&master).await?;
        (st.nodes.len() == 3 && st.nodes.iter().all(|n| n.state == NodeState::Up.to_pb() as i32)).then_some(())
    })
    .await;

    for _ in 0..2 {
        let out = run(&["init", "--master", &master, "--shards", "3", "--replication", "3"]);
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = run(&["init", "--master", &master, "--shards", "4"]);
    assert!(!out.status.success(), "a different shape must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already initialised"));

    // Healthy once every node hosts its assigned replicas.
    until("status healthy", Duration::from_secs(10), async || {
        let out = run(&["status", "--master", &master, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (out.status.success() && v["healthy"] == true && v["fault_tolerance"] == 1).then_some(())
    })
    .await;

    // Writes routed through the map land on their shards' primaries.
    let router = Router::new(MasterClient::connect(&master).await.unwrap(), Duration::from_secs(5)).await.unwrap();
    for i in 0..20 {
        router.write(&common::batch(0, i)).await.unwrap();
    }
    let ids: Vec<ConceptId> = (0..20).flat_map(|i| common::ids(0, i)).collect();
    // Strong reads: the primaries under their leases see every acknowledged write.
    assert_eq!(router.get_concepts_at(&ids, Consistency::Strong).await.unwrap().len(), 60);
    // Each batch's association is logged on its source's shard; the outbox brings the in-edge
    // to the target's shard (most of them live on another shard).
    let mc = MasterClient::connect(&master).await.unwrap();
    let (_, took) = until("every in-edge delivered", Duration::from_secs(10), async || {
        let map = mc.shard_map().await.ok()?;
        for i in 0..20 {
            let target = common::ids(0, i)[1];
            let e = map.shards.iter().find(|e| (e.key_start..=e.key_end).contains(&target.placement_key()))?;
            let addr = &map.nodes.iter().find(|n| n.node_id == e.primary)?.storage_addr;
            let c = StorageClient::connect(addr).await.ok()?;
            let r = c.neighbors(e.shard, &[target], &EdgeFilter::default(), 0, false).await.ok()?;
            let incoming = r.lists.iter().flat_map(|l| &l.edges).filter(|e| !e.outgoing && e.relation == "causes");
            if incoming.count() != 1 {
                return None;
            }
        }
        Some(())
    })
    .await;
    println!("real mode: 20 in-edges visible on their targets' shards {took:?} after the writes");

    // Distributed path search: a 6-hop chain spread over the shards, found bidirectionally
    // with one batched expand call per shard per level.
    let chain: Vec<String> = (0..7).map(|i| format!("chain-{i}")).collect();
    let chain_batch = WriteBatch {
        forget: vec![],
        concepts: Vec::new(),
        associations: chain
            .windows(2)
            .map(|w| Association {
                source: ConceptId::from_label(&w[0]),
                target: ConceptId::from_label(&w[1]),
                kind: AssocKind::Causal,
                relation: "leads_to".into(),
                confidence: 0.9,
                evidence: String::new(),
            })
            .collect(),
    };
    router.write(&chain_batch).await.unwrap();
    let (start, end) = (ConceptId::from_label(&chain[0]), ConceptId::from_label(&chain[6]));
    let grid = GridExpander { router: router.clone(), consistency: Consistency::Eventual };
    let ((paths, stats), took) = until("the chain is found end to end", Duration::from_secs(10), async || {
        let r = paths::shortest_paths(&grid, start, end, &EdgeFilter::default(), &paths::Bounds::default()).await;
        r.ok().filter(|(p, _)| !p.is_empty())
    })
    .await;
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].hops(), 6);
    assert!((paths[0].confidence - 0.9f64.powi(6)).abs() < 1e-3);
    assert!(stats.shards.len() >= 2, "the chain crosses shards: {stats:?}");
    println!(
        "real mode: 6-hop path across {} shards in {} expand calls ({took:?} after the write)",
        stats.shards.len(),
        stats.rpcs
    );

    // kill -9 one child: its agent reports the exit at once, then restarts it.
    let victim = data_root.join("node-1").display().to_string();
    let pids = pids_with(&victim);
    assert_eq!(pids.len(), 1, "one storage process for slot 1: {pids:?}");
    // SAFETY: kill(2) on a process this test started (through its agent).
    unsafe {
        libc::kill(pids[0], libc::SIGKILL);
    }
    let (_, down_after) = until("killed node marked Down", Duration::from_secs(5), async || {
        (state_of(&status(&master).await?, 1)? == NodeState::Down).then_some(())
    })
    .await;
    let (_, up_after) = until("killed node Up again", Duration::from_secs(15), async || {
        (state_of(&status(&master).await?, 1)? == NodeState::Up).then_some(())
    })
    .await;
    println!("real mode: kill -9 → Down observed after {down_after:?}, Up again after a further {up_after:?}");
    // The agent's next heartbeat carries the restart count.
    until("the agent reports the restart", Duration::from_secs(3), async || {
        let st = status(&master).await?;
        let restarts: u32 = st.agents.iter().flat_map(|a| &a.processes).map(|p| p.restarts).sum();
        (restarts >= 1).then_some(())
    })
    .await;
    let after = router.get_concepts_at(&ids, Consistency::Strong).await.unwrap();
    assert_eq!(after.len(), 60, "acknowledged writes survive the kill");

    // SIGTERM the agent: it stops its children before it exits.
    signal(&procs.0[1], libc::SIGTERM);
    let agent = procs.0.remove(1);
    let mut agent = Reap(vec![agent]);
    let exited = agent.0[0].wait().unwrap();
    assert!(exited.success(), "agent exit: {exited:?}");
    let (_, gone) = until("storage children gone", Duration::from_secs(10), async || {
        pids_with(&data_root.display().to_string()).is_empty().then_some(())
    })
    .await;
    println!("agent stopped; children gone {gone:?} later");
    until("nodes Down after the agent stopped them", Duration::from_secs(5), async || {
        let st = status(&master).await?;
        st.nodes.iter().all(|n| n.state == NodeState::Down.to_pb() as i32).then_some(())
    })
    .await;
    let out = run(&["status", "--master", &master]);
    assert!(!out.status.success(), "status exits non-zero when the grid is not healthy");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Down"));
}

/// A machine lost for good: its replica is rebuilt on a spare process one member at a time
/// (learner, voter, old member removed), with `--replace-down-after-s 2`, and no acknowledged
/// write is lost. The real binaries running the code the `replace-node` scenario simulates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_machines_replica_is_rebuilt_on_a_spare_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let master = format!("127.0.0.1:{}", common::free_port());
    let m = sutra(&["master", "--listen", &master, "--no-http", "--replace-down-after-s", "2", "--data-dir"])
        .arg(root.join("master"))
        .spawn()
        .unwrap();
    let agent = |name: &str, n: u16| {
        let base = common::free_base(n);
        sutra(&["agent", "--master", &master, "--name", name, "--processes", &n.to_string(), "--vector-dim", "4"])
            .args(["--base-port", &base.to_string(), "--data-root"])
            .arg(root.join(name))
            .spawn()
            .unwrap()
    };
    let (big, small) = (agent("m1", 3), agent("m2", 1));
    let mut procs = Reap(vec![m, big, small]);
    until("4 storage processes Up", Duration::from_secs(30), async || {
        let st = status(&master).await?;
        (st.nodes.len() == 4 && st.nodes.iter().all(|n| n.state == NodeState::Up.to_pb() as i32)).then_some(())
    })
    .await;
    let out = run(&["init", "--master", &master, "--shards", "1", "--replication", "3"]);
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let (st, _) = until("healthy", Duration::from_secs(15), async || status(&master).await.filter(|s| s.healthy)).await;
    // Placement spreads over machines: m2's only process holds a replica.
    let lost = st.nodes.iter().find(|n| n.agent == "m2").unwrap().node_id;
    assert!(st.map.as_ref().unwrap().shards[0].replicas.contains(&lost));

    let router = Router::new(MasterClient::connect(&master).await.unwrap(), Duration::from_secs(5)).await.unwrap();
    for i in 0..20 {
        router.write(&common::batch(1, i)).await.unwrap();
    }
    // m2 stops for good (its agent takes its process down with it and nobody restarts them).
    signal(&procs.0[2], libc::SIGTERM);
    let small = procs.0.remove(2);
    Reap(vec![small]).0[0].wait().unwrap();
    let killed = Instant::now();
    let (st, took) = until("the lost replica replaced", Duration::from_secs(60), async || {
        let st = status(&master).await?;
        let e = &st.map.as_ref()?.shards[0];
        let done = !e.replicas.contains(&lost) && e.replicas.len() == 3 && e.learner == 0 && e.replacing == 0;
        done.then_some(st)
    })
    .await;
    println!("real mode: replica of a stopped machine replaced {:?} after the stop", killed.elapsed().min(took));
    assert!(st.map.unwrap().shards[0].epoch >= 4, "two epochs: the learner joins, then the lost node leaves");
    // Writes after the change commit on the new voter set, and nothing acknowledged is lost.
    for i in 20..30 {
        router.write(&common::batch(1, i)).await.unwrap();
    }
    let ids: Vec<ConceptId> = (0..30).flat_map(|i| common::ids(1, i)).collect();
    assert_eq!(router.get_concepts_at(&ids, Consistency::Strong).await.unwrap().len(), 90);
}

/// A machine joins a running grid: the master's rebalancer moves replicas onto its processes
/// (learner, voter, old member out) and spreads primaries by leadership transfer, while every
/// acknowledged write stays readable; `sutra rebalance` then has nothing left to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_machine_gets_its_share_of_replicas_and_primaries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let master = format!("127.0.0.1:{}", common::free_port());
    let m =
        sutra(&["master", "--listen", &master, "--no-http", "--data-dir"]).arg(root.join("master")).spawn().unwrap();
    let agent = |name: &str| {
        sutra(&["agent", "--master", &master, "--name", name, "--processes", "3", "--vector-dim", "4"])
            .args(["--base-port", &common::free_base(3).to_string(), "--data-root"])
            .arg(root.join(name))
            .spawn()
            .unwrap()
    };
    let mut procs = Reap(vec![m, agent("m1")]);
    let up = |n: usize| {
        let master = master.clone();
        async move || {
            let st = status(&master).await?;
            (st.nodes.len() == n && st.nodes.iter().all(|n| n.state == NodeState::Up.to_pb() as i32)).then_some(())
        }
    };
    until("m1's 3 processes Up", Duration::from_secs(30), up(3)).await;
    let out = run(&["init", "--master", &master, "--shards", "6", "--replication", "3"]);
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let router = Router::new(MasterClient::connect(&master).await.unwrap(), Duration::from_secs(10)).await.unwrap();
    until("writes accepted", Duration::from_secs(10), async || router.write(&common::batch(1, 0)).await.ok()).await;
    for i in 1..30 {
        router.write(&common::batch(1, i)).await.unwrap();
    }

    procs.0.push(agent("m2"));
    until("m2's processes Up", Duration::from_secs(30), up(6)).await;
    // Writes go on while replicas move.
    for i in 30..60 {
        router.write(&common::batch(1, i)).await.unwrap();
    }
    let last = std::sync::Mutex::new(None);
    let wait = until("3 replicas and 1 primary on each of 6 processes", Duration::from_secs(600), async || {
        let st = status(&master).await?;
        let even = st.nodes.iter().all(|n| n.replicas == 3 && n.primaries == 1);
        *last.lock().unwrap() = Some(st.clone());
        (st.healthy && even).then_some(st)
    });
    let (st, took) = match tokio::time::timeout(Duration::from_secs(90), wait).await {
        Ok(r) => r,
        Err(_) => panic!("no balance within 90 s; the last status: {:#?}", last.lock().unwrap()),
    };
    println!(
        "real mode: a joining machine holds its share (3 replicas, 1 primary per process) {took:?} after it was Up"
    );
    for e in &st.map.as_ref().unwrap().shards {
        let machines: std::collections::BTreeSet<&str> = e
            .replicas
            .iter()
            .filter_map(|r| st.nodes.iter().find(|n| n.node_id == *r).map(|n| n.agent.as_str()))
            .collect();
        assert_eq!(machines.len(), 2, "shard {} keeps voters on both machines", e.shard);
    }
    let ids: Vec<ConceptId> = (0..60).flat_map(|i| common::ids(1, i)).collect();
    assert_eq!(router.get_concepts_at(&ids, Consistency::Strong).await.unwrap().len(), 180);
    let out = run(&["rebalance", "--master", &master, "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("would start now: none"), "{text}");
}

/// A master (with `master_flags`) and one machine of 3 storage processes under `root`,
/// initialised with `shards` × 3 and taking writes: the master's address, the processes (killed
/// when dropped) and a router.
async fn one_machine_grid(
    root: &std::path::Path,
    master_flags: &[&str],
    shards: u32,
) -> (String, Reap, std::sync::Arc<Router>) {
    let master = format!("127.0.0.1:{}", common::free_port());
    let m = sutra(&["master", "--listen", &master, "--no-http"])
        .args(master_flags)
        .arg("--data-dir")
        .arg(root.join("master"))
        .spawn()
        .unwrap();
    let a = sutra(&["agent", "--master", &master, "--name", "m1", "--processes", "3", "--vector-dim", "4"])
        .args(["--base-port", &common::free_base(3).to_string(), "--data-root"])
        .arg(root.join("m1"))
        .spawn()
        .unwrap();
    let procs = Reap(vec![m, a]);
    until("3 processes Up", Duration::from_secs(30), async || {
        let st = status(&master).await?;
        (st.nodes.len() == 3 && st.nodes.iter().all(|n| n.state == NodeState::Up.to_pb() as i32)).then_some(())
    })
    .await;
    let out = run(&["init", "--master", &master, "--shards", &shards.to_string(), "--replication", "3"]);
    assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
    let router = Router::new(MasterClient::connect(&master).await.unwrap(), Duration::from_secs(10)).await.unwrap();
    until("writes accepted", Duration::from_secs(10), async || router.write(&common::batch(2, 0)).await.ok()).await;
    (master, procs, router)
}

/// `sutra split` on a running grid while a writer writes: the new shard appears on the same
/// replicas, no acknowledged write is lost or refused, associations across the new boundary
/// keep both sides, and asking for the same split again answers that it is done; then `sutra merge`
/// takes it back while the writer writes again. Prints the time each took and the longest write
/// meanwhile (the pause users see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_splits_while_it_serves_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (master, _procs, router) = one_machine_grid(dir.path(), &[], 2).await;
    // A writer runs through the split; each batch's concepts spread over both halves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let write_from = |first: u32| {
        let (router, stop) = (router.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut i, mut took) = (first, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < first + 60 {
                let t = Instant::now();
                router.write_idempotent(&common::batch(2, i)).await.unwrap_or_else(|e| panic!("batch {i}: {e}"));
                took.push(t.elapsed());
                i += 1;
            }
            took.sort();
            (i, took)
        })
    };
    let writer = write_from(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let out = run(&["split", "--master", &master, "--shard", "0"]);
    let split_took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("done in"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (batches, took) = writer.await.unwrap();
    println!(
        "real mode: `sutra split` took {split_took:?}; {} writes meanwhile: median {:?}, p99 {:?}, slowest {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    let st = status(&master).await.unwrap();
    let map = st.map.unwrap();
    assert_eq!(map.shards.len(), 3, "{map:?}");
    let (parent, child) = (&map.shards[0], &map.shards[1]);
    assert_eq!((parent.shard, child.shard), (0, 2));
    assert_eq!(parent.key_end + 1, child.key_start);
    assert_eq!(parent.replicas, child.replicas);
    let ids: Vec<ConceptId> = (0..batches).flat_map(|i| common::ids(2, i)).collect();
    let found = router.get_concepts_at(&ids, Consistency::Strong).await.unwrap();
    assert_eq!(found.len(), ids.len(), "every acknowledged concept, on whichever half owns it now");
    // Both sides of every association (the in-edge may still be on its way).
    let filter = EdgeFilter::default();
    for i in 0..batches {
        let [a, b, _] = common::ids(2, i)[..] else { unreachable!() };
        let has = async |v: ConceptId, other: ConceptId| {
            let list = router.neighbors(v, &filter, 0, Consistency::Strong).await.ok()??;
            list.edges.iter().any(|e| e.other.as_ref().map(sutra_grid::wire::id_from_pb) == Some(other)).then_some(())
        };
        until("the out-edge", Duration::from_secs(5), async || has(a, b).await).await;
        until("the in-edge", Duration::from_secs(5), async || has(b, a).await).await;
    }
    let again = run(&["split", "--master", &master, "--shard", "0", "--at", &format!("{:#x}", child.key_start)]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && text.contains("already under way or done"), "{text}");
    let bad = run(&["split", "--master", &master, "--shard", "9"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no shard 9"));

    // `sutra merge` takes the split back while the writer writes again: shard 0 absorbs the
    // new shard, every acknowledged write is still there, and the same merge asked again is
    // done.
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let writer = write_from(batches);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let out = run(&["merge", "--master", &master, "--shard", "0"]);
    let merge_took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("done in"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (batches, took) = writer.await.unwrap();
    println!(
        "real mode: `sutra merge` took {merge_took:?}; {} writes meanwhile: median {:?}, p99 {:?}, slowest {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    let map = status(&master).await.unwrap().map.unwrap();
    assert_eq!(map.shards.iter().map(|e| e.shard).collect::<Vec<_>>(), vec![0, 1], "{map:?}");
    assert_eq!((map.shards[0].key_start, map.shards[0].key_end + 1), (parent.key_start, map.shards[1].key_start));
    let ids: Vec<ConceptId> = (0..batches).flat_map(|i| common::ids(2, i)).collect();
    let found = router.get_concepts_at(&ids, Consistency::Strong).await.unwrap();
    assert_eq!(found.len(), ids.len(), "every acknowledged concept, after the merge");
    for i in (0..batches).step_by(7) {
        let [a, b, _] = common::ids(2, i)[..] else { unreachable!() };
        let has = async |v: ConceptId, other: ConceptId| {
            let list = router.neighbors(v, &filter, 0, Consistency::Strong).await.ok()??;
            list.edges.iter().any(|e| e.other.as_ref().map(sutra_grid::wire::id_from_pb) == Some(other)).then_some(())
        };
        until("the out-edge after the merge", Duration::from_secs(5), async || has(a, b).await).await;
        until("the in-edge after the merge", Duration::from_secs(5), async || has(b, a).await).await;
    }
    let again = run(&["merge", "--master", &master, "--shard", "0", "--with", &child.shard.to_string()]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && text.contains("already under way or done"), "{text}");
    // The merged-away shard's replicas are deleted; the grid is healthy.
    until("healthy after the merge", Duration::from_secs(15), async || {
        let st = status(&master).await?;
        (st.healthy && st.nodes.iter().all(|n| n.replicas == 2)).then_some(())
    })
    .await;
    let bad = run(&["merge", "--master", &master, "--shard", "0", "--with", "5"]);
    assert!(!bad.status.success(), "a shard that is not a neighbour: refused");
}

/// The policies on a real grid, thresholds scaled down: a writer keeps the only shard busy, so
/// the split policy splits it (over 40 requests/s for 2 s); once the writer stops both halves
/// are cold and small, and the merge policy merges them back (never below the one shard `init`
/// made). Every acknowledged write is read back and the grid is healthy at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_splits_a_busy_shard_and_merges_it_back_once_it_is_cold() {
    let dir = tempfile::tempdir().unwrap();
    let policy = [
        "--split-requests-per-s",
        "40",
        "--split-after-s",
        "2",
        "--split-cooldown-s",
        "2",
        "--merge-requests-per-s",
        "10",
        "--merge-after-s",
        "2",
    ];
    let (master, _procs, router) = one_machine_grid(dir.path(), &policy, 1).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (router, stop) = (router.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 1u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                router.write_idempotent(&common::batch(2, i)).await.unwrap_or_else(|e| panic!("batch {i}: {e}"));
                i += 1;
            }
            i
        })
    };
    let (_, split_after) = until("the policy splits the busy shard", Duration::from_secs(30), async || {
        let map = status(&master).await?.map?;
        (map.shards.len() == 2).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = writer.await.unwrap();
    let (_, merge_after) = until("the policy merges the cold halves back", Duration::from_secs(30), async || {
        let map = status(&master).await?.map?;
        (map.shards.len() == 1 && map.shards[0].shard == 0).then_some(())
    })
    .await;
    println!("real mode: the policy split the busy shard after {split_after:?} and merged it back {merge_after:?} after the load stopped ({batches} batches)");
    let ids: Vec<ConceptId> = (0..batches).flat_map(|i| common::ids(2, i)).collect();
    let found = router.get_concepts_at(&ids, Consistency::Strong).await.unwrap();
    assert_eq!(found.len(), ids.len(), "every acknowledged concept, after a split and a merge");
    until("healthy", Duration::from_secs(15), async || status(&master).await?.healthy.then_some(())).await;
}
