//! Runs a YAML scenario against a whole simulated grid: a master, agents that spawn their
//! storage processes through the simulated `Spawner`, a workload, a nemesis working through
//! the timeline and the swarm draw, an observer polling the master's status every 10 ms, the
//! checkers, and a healing phase with a liveness budget.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId as SimNodeId;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::json;
use sutra_grid::agent::{run_agent, AgentConfig};
use sutra_grid::client::MasterClient;
use sutra_grid::ids::{ConceptId, Epoch, NodeId, ShardId};
use sutra_grid::io::{seeded_rng, ProcessSpec, SimDisk, SimDiskFaults};
use sutra_grid::limits;
use sutra_grid::master::{Master, MembershipConfig, NodeState};
use sutra_grid::model::Consistency;
use sutra_grid::model::{AssocKind, Association, ConceptWrite, EdgeFilter, Forget, WriteBatch};
use sutra_grid::node::NodeConfig;
use sutra_grid::query::{Router, ShardWrite};
use sutra_grid::replication::witness::{self, Event};
use sutra_grid::shardmap::{ShardEntry, ShardMap};
use sutra_grid::store::KeyRange;
use sutra_proto as pb;
use tokio::time::Instant;

use crate::linear;
use crate::scenario::{Action, Check, DiskFaultKind, ExpectState, Scenario, SwarmKind};
use crate::scenarios::Report;
use crate::spawner::{Machine, SimSpawner};
use crate::{boot, plan};

const POLL: Duration = Duration::from_millis(10);
/// Targets resolved when the step runs: the primary of some shard, or the one picked last.
const PICK_PRIMARY: Proc = (254, 0);
const SAME_PRIMARY: Proc = (254, 1);
/// The first and second follower (voter other than the primary) of the last picked shard.
const FOLLOWER_1: Proc = (254, 2);
const FOLLOWER_2: Proc = (254, 3);
/// The primary of shard `.1` when the step runs.
const SHARD_PRIMARY: u8 = 253;
/// The master, as a clock-skew target.
const MASTER_PROC: Proc = (253, 0);
/// The machine of `last-primary`, resolved when the step runs.
const LAST_PRIMARY_AGENT: u8 = 254;
/// How long every fsync takes on a disk with the `slow-fsync` fault.
const SLOW_FSYNC: Duration = Duration::from_millis(40);
/// Quiescence: every replica of every shard at the same commit LSN and state, within this.
const CONVERGE_BUDGET: Duration = Duration::from_secs(15);
/// The `hot-split` check: the split policy must split the hot shard this soon into the run,
/// and the halves be led by two nodes this soon after.
const HOT_SPLIT_WITHIN_S: f64 = 15.0;
const HOT_SPREAD_WITHIN_S: f64 = 2.0;
const BOOT_BUDGET: Duration = Duration::from_secs(30);
/// A node healthy, running and fully connected this long must be Up (time for a restarted
/// process to register, refute its old Dead record in gossip, and for reports to clear).
const STABLE: Duration = Duration::from_secs(5);
/// Exit reported by the agent → Down.
const EXIT_DETECT_MS: f64 = 100.0;
/// A vanished machine → Down: 3 heartbeat intervals.
const SILENT_DETECT_MS: f64 = 3.0 * limits::HEARTBEAT_INTERVAL_MS as f64;
/// The observer polls status over RPC: a verdict can lag the master's by about two polls.
const POLL_SLACK_MS: f64 = 50.0;
const RESTART_BUDGET: Duration = Duration::from_secs(5);
/// Healthy this long on end counts as healed.
const HEALTHY_FOR: Duration = Duration::from_secs(1);
const WRITE_DEADLINE: Duration = Duration::from_millis(1000);
/// Events kept per run for the trace and the end-state hash.
const LOG_MAX: usize = 100_000;

type Proc = (u8, u8);

/// The ground truth the nemesis knows, for checkers to compare the master's view against.
struct Truth {
    paused: BTreeSet<Proc>,
    /// Processes a link fault cut off from a majority of their peers or from the master, until
    /// the next heal: the master may rightly show them Degraded or Down.
    cut: BTreeSet<Proc>,
    /// When each process was last touched by a fault (killed, booted, resumed, healed).
    calm_since: BTreeMap<Proc, Instant>,
    /// Faults that affect everyone (packet loss, slow links, halves, master down).
    global: BTreeSet<&'static str>,
    global_calm_since: Instant,
    master_up: bool,
    link_clogs: BTreeSet<(SimNodeId, SimNodeId)>,
    node_clogs: BTreeSet<SimNodeId>,
    /// Processes whose disk misbehaved: the heal clears the fault and restarts them.
    disk_faulted: BTreeSet<Proc>,
    /// Machines an operator drained; the heal takes them back into service.
    drained: BTreeSet<u8>,
}

struct Observed {
    last: Option<pb::StatusResponse>,
    last_at: Option<Instant>,
    /// Each process's state as last polled, and since when.
    states: BTreeMap<Proc, (NodeState, Instant)>,
    log: Vec<String>,
    /// Per process: (seconds, state, reason) as the master reported it.
    timeline: BTreeMap<Proc, Vec<(f64, NodeState, String)>>,
    violations: Vec<String>,
    initial_map: Option<pb::ShardMap>,
    polls_ok: u64,
    polls_failed: u64,
    /// Voter-set changes seen (a learner joining, a replaced voter leaving).
    voter_changes: u64,
    /// When a poll last saw a voter set change.
    last_voter_change: Option<Instant>,
}

struct Grid {
    sc: Arc<Scenario>,
    h: Handle,
    master: SimNodeId,
    master_disk: SimDisk,
    agents: Vec<SimNodeId>,
    machines: Vec<Arc<Machine>>,
    truth: Arc<Mutex<Truth>>,
    obs: Arc<Mutex<Observed>>,
    /// The node checker tasks run on (they need an address to talk to the master).
    checker: madsim::runtime::NodeHandle,
    t0: Instant,
    repl: Arc<Mutex<ReplWitness>>,
    /// The process the last `primary` step named, and its shard.
    last_primary: Mutex<Option<(Proc, u32)>>,
    /// Each disk's fsync latency as the scenario drew it, `[agent][slot]`; `clear` restores it.
    base_sync: Vec<Vec<Duration>>,
    /// Operator commands run one at a time, in step order: a drain still retrying across a
    /// master restart must not land after the undrain that followed it.
    operator: tokio::sync::Mutex<()>,
}

/// What the replication witness hook saw, and the write acknowledgements RTO is measured on.
#[derive(Default)]
struct ReplWitness {
    /// (shard, epoch) → the node that became primary in it.
    primaries: BTreeMap<(u32, u64), u64>,
    /// Replica instance → highest commit LSN it adopted.
    commits: BTreeMap<u64, u64>,
    violations: Vec<String>,
    /// (sent, acknowledged, shard) of every acknowledged per-shard write part.
    acks: Vec<(Instant, Instant, u32)>,
    /// (when, shard, exit reported) of faults that took a shard's primary away.
    primary_faults: Vec<(Instant, u32, bool)>,
}

impl ReplWitness {
    fn see(&mut self, e: Event) {
        let v = match e {
            Event::Primary { node, shard, epoch } => match self.primaries.insert((shard, epoch), node) {
                Some(other) if other != node => {
                    Some(format!("shard {shard} epoch {epoch} had two primaries: nodes {other} and {node}"))
                }
                _ => None,
            },
            Event::Commit { node, instance, shard, commit } => {
                let prev = self.commits.insert(instance, commit).unwrap_or(0);
                (commit < prev)
                    .then(|| format!("shard {shard} on node {node}: commit LSN went back from {prev} to {commit}"))
            }
        };
        if let Some(v) = v {
            if self.violations.len() < 20 {
                self.violations.push(v);
            }
        }
    }
}

fn proc_of(st: &pb::NodeStatus) -> Option<Proc> {
    let a = st.agent.strip_prefix("agent-")?.parse().ok()?;
    Some((a, u8::try_from(st.slot).ok()?))
}

fn name(p: Proc) -> String {
    format!("{}.{}", p.0, p.1)
}

fn state_name(s: i32) -> &'static str {
    NodeState::from_pb(s).map_or("?", |s| s.name())
}

fn map_from_pb(m: &pb::ShardMap) -> ShardMap {
    ShardMap {
        version: m.version,
        shards: m
            .shards
            .iter()
            .map(|e| ShardEntry {
                id: ShardId(e.shard),
                range: KeyRange { start: e.key_start, end: e.key_end },
                replicas: e.replicas.iter().map(|r| NodeId(*r)).collect(),
                primary: NodeId(e.primary),
                epoch: Epoch(e.epoch),
                learner: (e.learner != 0).then_some(NodeId(e.learner)),
                replacing: (e.replacing != 0).then_some(NodeId(e.replacing)),
                split: e
                    .splitting
                    .then_some(sutra_grid::shardmap::SplitIntent { at: e.split_at, child: ShardId(e.split_child) }),
                merge: e.merging.then_some(sutra_grid::shardmap::MergeIntent { from: ShardId(e.merge_from) }),
            })
            .collect(),
        next_id: 0,
        initial_shards: 0,
    }
}

impl Grid {
    /// The process leading shard `k % shards` in the master's latest map.
    /// The primary of the `k`-th shard (mod the shard count) in the latest map, and its shard.
    fn current_primary(&self, k: usize) -> Option<(Proc, u32)> {
        let o = self.obs.lock().unwrap();
        let st = o.last.as_ref()?;
        let map = st.map.as_ref()?;
        let e = map.shards.get(k % map.shards.len().max(1))?;
        st.nodes.iter().find(|n| n.node_id == e.primary).and_then(proc_of).map(|p| (p, e.shard))
    }

    /// The `i`-th voter other than the primary of `shard` in the latest map.
    fn follower(&self, shard: u32, i: usize) -> Option<Proc> {
        let o = self.obs.lock().unwrap();
        let st = o.last.as_ref()?;
        let e = st.map.as_ref()?.shards.iter().find(|e| e.shard == shard)?;
        let id = *e.replicas.iter().filter(|r| **r != e.primary).nth(i)?;
        st.nodes.iter().find(|n| n.node_id == id).and_then(proc_of)
    }

    /// Shards whose primary (in the master's latest map) is one of `procs`.
    fn primaries_of(&self, procs: &[Proc]) -> Vec<u32> {
        let o = self.obs.lock().unwrap();
        let Some(st) = o.last.as_ref() else { return Vec::new() };
        let ids: BTreeSet<u64> =
            st.nodes.iter().filter(|n| proc_of(n).is_some_and(|p| procs.contains(&p))).map(|n| n.node_id).collect();
        st.map.iter().flat_map(|m| &m.shards).filter(|e| ids.contains(&e.primary)).map(|e| e.shard).collect()
    }

    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn procs(&self) -> Vec<Proc> {
        let c = &self.sc.cluster;
        (0..c.agents).flat_map(|a| (0..c.processes_per_agent).map(move |s| (a, s))).collect()
    }

    fn sim_node(&self, p: Proc) -> Option<SimNodeId> {
        self.machines.get(p.0 as usize)?.node(p.1)
    }

    fn note(&self, what: String) {
        tracing::info!(t = format!("{:.3}", self.secs()), "{what}");
        let mut o = self.obs.lock().unwrap();
        if o.log.len() < LOG_MAX {
            o.log.push(format!("{:.3}s {what}", self.secs()));
        }
    }

    fn calm(&self, p: Proc) {
        self.truth.lock().unwrap().calm_since.insert(p, Instant::now());
    }

    fn clog_link(&self, a: SimNodeId, b: SimNodeId) {
        NetSim::current().clog_link(a, b);
        self.truth.lock().unwrap().link_clogs.insert((a, b));
    }

    fn kill_agent(&self, a: u8, lose_disk: bool) {
        self.h.kill(self.agents[a as usize]);
        for s in 0..self.sc.cluster.processes_per_agent {
            if let Some(id) = self.sim_node((a, s)) {
                self.h.kill(id);
            }
            if lose_disk {
                let disk = &self.machines[a as usize].slots[s as usize].disk;
                disk.crash();
            }
            self.calm((a, s));
        }
    }

    fn restart_agent(&self, a: u8) {
        let id = self.agents[a as usize];
        self.h.kill(id);
        self.h.restart(id);
    }

    fn kill_master(&self) {
        self.h.kill(self.master);
        self.master_disk.crash();
        let mut t = self.truth.lock().unwrap();
        t.master_up = false;
        t.global.insert("master-down");
    }

    fn start_master(&self) {
        self.h.kill(self.master);
        self.h.restart(self.master);
        let mut t = self.truth.lock().unwrap();
        t.master_up = true;
        if t.global.remove("master-down") {
            t.global_calm_since = Instant::now();
        }
    }

    fn disk_fault(&self, p: Proc, fault: DiskFaultKind) {
        let disk = &self.machines[p.0 as usize].slots[p.1 as usize].disk;
        match fault {
            DiskFaultKind::FsyncError => disk.fail_next_syncs(1),
            DiskFaultKind::Full => {
                disk.set_faults(SimDiskFaults { capacity_bytes: disk.used_bytes() + 4096, ..disk.faults() })
            }
            DiskFaultKind::ReadBitflips => {
                disk.set_faults(SimDiskFaults { read_bitflip_probability: 0.2, ..disk.faults() })
            }
            DiskFaultKind::SlowFsync => disk.set_faults(SimDiskFaults { sync_latency: SLOW_FSYNC, ..disk.faults() }),
            DiskFaultKind::Clear => {
                disk.fail_next_syncs(0);
                let sync_latency = self.base_sync[p.0 as usize][p.1 as usize];
                disk.set_faults(SimDiskFaults { sync_latency, ..SimDiskFaults::default() });
            }
        }
        let mut t = self.truth.lock().unwrap();
        if fault != DiskFaultKind::Clear {
            t.disk_faulted.insert(p);
        }
    }

    /// Undoes every network fault and resumes every paused process. With `boot_dead` (the
    /// final heal) it also boots dead agents and a dead master, and clears disk faults,
    /// restarting the processes that had them.
    fn heal_all(&self, boot_dead: bool) {
        let net = NetSim::current();
        let (links, nodes, paused, cut) = {
            let mut t = self.truth.lock().unwrap();
            let r = (
                std::mem::take(&mut t.link_clogs),
                std::mem::take(&mut t.node_clogs),
                std::mem::take(&mut t.paused),
                std::mem::take(&mut t.cut),
            );
            for g in ["packet-loss", "slow-links", "partition-halves"] {
                t.global.remove(g);
            }
            t.global_calm_since = Instant::now();
            r
        };
        for (a, b) in links {
            net.unclog_link(a, b);
        }
        for n in nodes {
            net.unclog_node(n);
        }
        let default = madsim::net::Config::default();
        net.update_config(|c| {
            c.packet_loss_rate = 0.0;
            c.send_latency = default.send_latency.clone();
        });
        for p in paused.iter().chain(cut.iter()) {
            if paused.contains(p) {
                if let Some(id) = self.sim_node(*p) {
                    self.h.resume(id);
                }
            }
            self.calm(*p);
        }
        if boot_dead {
            let faulted = std::mem::take(&mut self.truth.lock().unwrap().disk_faulted);
            for p in faulted {
                self.disk_fault(p, DiskFaultKind::Clear);
                if let Some(id) = self.sim_node(p) {
                    self.h.kill(id);
                }
                self.calm(p);
            }
            for (a, id) in self.agents.iter().enumerate() {
                if self.h.is_exit(*id) {
                    self.restart_agent(a as u8);
                }
            }
            if !self.truth.lock().unwrap().master_up {
                self.start_master();
            }
        }
    }

    /// Whether nothing but the fault under test touched `p` or the whole grid since `since`
    /// (no later fault on `p`, no global fault, the master up throughout).
    fn calm_throughout(&self, p: Proc, since: Instant) -> bool {
        let t = self.truth.lock().unwrap();
        t.master_up
            && t.global.is_empty()
            && t.global_calm_since <= since
            && t.calm_since.get(&p).is_none_or(|s| *s <= since)
            && !t.cut.contains(&p)
            && !t.paused.contains(&p)
    }

    /// Whether the master must show `p` Up now: running, unpaused, uncut and the master up,
    /// all for `STABLE`, with no global fault in that time.
    fn must_be_up(&self, p: Proc, now: Instant, running_since: Option<Instant>) -> bool {
        let t = self.truth.lock().unwrap();
        let Some(running) = running_since else { return false };
        let stable = |since: Instant| now.saturating_duration_since(since) >= STABLE;
        t.master_up
            && t.global.is_empty()
            && stable(t.global_calm_since)
            && !t.paused.contains(&p)
            && !t.cut.contains(&p)
            && t.calm_since.get(&p).is_none_or(|s| stable(*s))
            && stable(running)
    }
}

/// Polls the master's status every `POLL`, recording state changes and checking the map and
/// false Down/Degraded verdicts as it goes.
async fn observe(g: Arc<Grid>, stop: Arc<AtomicBool>) {
    let mut client: Option<MasterClient> = None;
    let mut running_since: BTreeMap<Proc, Instant> = BTreeMap::new();
    let checks: BTreeSet<Check> = g.sc.checks.iter().copied().collect();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(POLL).await;
        let now = Instant::now();
        for p in g.procs() {
            let alive = g.sim_node(p).is_some_and(|id| !g.h.is_exit(id));
            if alive {
                running_since.entry(p).or_insert(now);
            } else {
                running_since.remove(&p);
            }
        }
        let c = match &client {
            Some(c) => c.clone(),
            None => match MasterClient::connect(&plan::master_addr().to_string()).await {
                Ok(c) => {
                    let c = c.with_deadline(Duration::from_millis(200));
                    client = Some(c.clone());
                    c
                }
                Err(_) => {
                    g.obs.lock().unwrap().polls_failed += 1;
                    continue;
                }
            },
        };
        let st = match c.status().await {
            Ok(st) => st,
            Err(_) => {
                client = None;
                g.obs.lock().unwrap().polls_failed += 1;
                continue;
            }
        };
        let now = Instant::now();
        let mut o = g.obs.lock().unwrap();
        o.polls_ok += 1;
        let t = g.secs();
        for n in &st.nodes {
            let Some(p) = proc_of(n) else { continue };
            let state = NodeState::from_pb(n.state).unwrap_or(NodeState::Down);
            let changed = o.states.get(&p).is_none_or(|(s, _)| *s != state);
            if changed {
                o.states.insert(p, (state, now));
                if o.log.len() < LOG_MAX {
                    o.log.push(format!("{t:.3}s node {} (id {}) -> {} {}", name(p), n.node_id, state.name(), n.reason));
                    o.timeline.entry(p).or_default().push((t, state, n.reason.clone()));
                }
                tracing::info!(t = format!("{t:.3}"), node = name(p), id = n.node_id, state = state.name(), reason = %n.reason, "master view");
            }
            if checks.contains(&Check::NodeStates)
                && matches!(state, NodeState::Down | NodeState::Degraded)
                && g.must_be_up(p, now, running_since.get(&p).copied())
            {
                let v = format!(
                    "{t:.3}s: node {} is {} ({}) though it has run healthy and connected for {:?}",
                    name(p),
                    state.name(),
                    n.reason,
                    STABLE
                );
                if o.violations.len() < 20 {
                    o.violations.push(v);
                }
            }
        }
        if checks.contains(&Check::ShardMap) {
            if let Some(m) = &st.map {
                if m.version > 0 {
                    let registered: BTreeSet<u64> = st.nodes.iter().map(|n| n.node_id).collect();
                    let problem = match map_from_pb(m).validate() {
                        Err(e) => Some(e.to_string()),
                        Ok(()) if m.shards.iter().flat_map(|s| &s.replicas).any(|r| !registered.contains(r)) => {
                            Some("a replica sits on an unregistered node".into())
                        }
                        Ok(()) => {
                            let prev = o.last.as_ref().and_then(|l| l.map.as_ref());
                            map_change_problem(o.initial_map.as_ref(), prev, m, g.sc.cluster.replication as usize)
                        }
                    };
                    if let Some(p) = problem {
                        if o.violations.len() < 20 {
                            o.violations.push(format!("{t:.3}s: shard map: {p}"));
                        }
                    }
                }
            }
        }
        if let (Some(prev), Some(m)) = (o.last.as_ref().and_then(|l| l.map.as_ref()), st.map.as_ref()) {
            let changes = prev.shards.iter().zip(&m.shards).filter(|(a, b)| a.replicas != b.replicas).count();
            if changes > 0 && o.log.len() < LOG_MAX {
                o.log.push(format!("{t:.3}s map v{}: {changes} voter set(s) changed", m.version));
            }
            o.voter_changes += changes as u64;
            if changes > 0 {
                o.last_voter_change = Some(now);
            }
        }
        o.last = Some(st);
        o.last_at = Some(now);
    }
}

/// Waits until every Up node holds between `min` and 1.25 × `min` replicas, none leads more
/// than one shard above an even share, and no membership change is under way (the rebalancer
/// has evened the load); returns the seconds it took.
async fn wait_balanced(g: &Grid, budget: Duration) -> Result<f64, String> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        {
            let o = g.obs.lock().unwrap();
            if let Some(st) = o.last.as_ref() {
                let map = st.map.clone().unwrap_or_default();
                let up: Vec<u64> =
                    st.nodes.iter().filter(|n| n.state == pb::NodeState::Up as i32).map(|n| n.node_id).collect();
                let load: Vec<usize> = up
                    .iter()
                    .map(|n| map.shards.iter().filter(|s| s.replicas.contains(n) || s.learner == *n).count())
                    .collect();
                let (min, max) = (load.iter().copied().min().unwrap_or(0), load.iter().copied().max().unwrap_or(0));
                let settled = map.shards.iter().all(|s| s.replacing == 0 && s.learner == 0);
                // Primaries: none more than one above an even share.
                let leads: Vec<usize> =
                    up.iter().map(|n| map.shards.iter().filter(|s| s.primary == *n).count()).collect();
                let share = map.shards.len().div_ceil(up.len().max(1));
                let leads_ok = leads.iter().all(|l| *l <= share + 1);
                if settled && min > 0 && max * 4 <= min * 5 && leads_ok {
                    return Ok(start.elapsed().as_secs_f64());
                }
                last = format!("replicas per Up node {load:?}, primaries {leads:?}, changes under way: {}", !settled);
            }
        }
        if start.elapsed() > budget {
            return Err(format!("not even within {budget:?} (max/min must be ≤ 1.25): {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The map may change only by elections, one-member-at-a-time membership changes, splits and
/// merges: a shard keeps its start, gains keys only from shards that left the map (merged into
/// it), and a new shard takes an id above every one seen; `replication` voters, or one more
/// while a new one joins; the version never going back; each shard's epoch growing with a new
/// primary, never the same epoch naming two primaries; and the voter set changing by at most
/// one member per epoch.
fn map_change_problem(
    init: Option<&pb::ShardMap>,
    prev: Option<&pb::ShardMap>,
    m: &pb::ShardMap,
    replication: usize,
) -> Option<String> {
    let changing = m.shards.iter().filter(|s| s.replacing != 0).count();
    if changing > sutra_grid::limits::MEMBERSHIP_CHANGES_MAX {
        return Some(format!(
            "{changing} shards change membership at once (bound {})",
            sutra_grid::limits::MEMBERSHIP_CHANGES_MAX
        ));
    }
    let init = init?;
    // Ranges change only by splits and merges: a shard keeps its start, and new shards get new
    // ids (the map's validation, checked apart, makes sure every key is owned exactly once).
    let by_id =
        |map: &pb::ShardMap| map.shards.iter().map(|s| (s.shard, s.clone())).collect::<BTreeMap<u32, pb::ShardEntry>>();
    let now = by_id(m);
    let first = by_id(init);
    for (id, a) in &first {
        if now.get(id).is_some_and(|b| b.key_start != a.key_start) {
            return Some(format!("shard {id} moved its start"));
        }
    }
    for b in &m.shards {
        let joining = (b.replacing != 0) as usize;
        if b.replicas.len() != replication + joining && b.replicas.len() != replication {
            return Some(format!("shard {} has {} voters {:?}", b.shard, b.replicas.len(), b.replicas));
        }
    }
    let prev = prev?;
    if m.version < prev.version {
        return Some(format!("the map version went back from {} to {}", prev.version, m.version));
    }
    let before = by_id(prev);
    let seen = before.keys().chain(first.keys()).max().copied().unwrap_or(0);
    // Not new: in the last poll's map, or made by `init` when the last poll came before it.
    let known =
        |b: &&pb::ShardEntry| before.contains_key(&b.shard) || (prev.version <= 1 && first.contains_key(&b.shard));
    if let Some(b) = m.shards.iter().filter(|b| !known(b)).find(|b| b.shard <= seen) {
        return Some(format!("new shard {} reuses an id (ids up to {seen} were used)", b.shard));
    }
    for (a, b) in before.values().filter_map(|a| Some((a, now.get(&a.shard)?))) {
        if b.key_start != a.key_start {
            return Some(format!("shard {}'s range moved its start", b.shard));
        }
        // Keys a shard gained were owned by shards that left the map since: merged into it.
        if b.key_end > a.key_end {
            let from = prev.shards.iter().find(|o| {
                o.shard != a.shard && o.key_start <= b.key_end && a.key_end < o.key_end && now.contains_key(&o.shard)
            });
            if let Some(o) = from {
                return Some(format!("shard {} took keys from shard {}, which is still in the map", b.shard, o.shard));
            }
        }
        if b.epoch < a.epoch || (b.epoch == a.epoch && b.primary != a.primary) {
            return Some(format!(
                "shard {}: epoch {} primary {} became epoch {} primary {}",
                b.shard, a.epoch, a.primary, b.epoch, b.primary
            ));
        }
        let before: BTreeSet<u64> = a.replicas.iter().copied().collect();
        let after: BTreeSet<u64> = b.replicas.iter().copied().collect();
        let changed = before.symmetric_difference(&after).count() as u64;
        if changed > b.epoch - a.epoch {
            return Some(format!(
                "shard {}: voters {:?} became {:?} in {} epoch(s) (one member per epoch at most)",
                b.shard,
                a.replicas,
                b.replicas,
                b.epoch - a.epoch
            ));
        }
    }
    None
}

/// Ok when the latest map keeps no replica on machine `agent`, and every shard has
/// `replication` voters and no membership change in progress.
/// `sutra drain` (or undrain) for every process on machine `agent`, as an operator would: the
/// master's `Drain` RPC, retried for 10 s across master restarts and lost answers.
async fn drain_machine(g: &Grid, agent: u8, drain: bool) -> Result<(), String> {
    let start = Instant::now();
    let verb = if drain { "drain" } else { "undrain" };
    let mut last = String::from("no status yet");
    while start.elapsed() < Duration::from_secs(10) {
        let nodes: Vec<u64> = {
            let o = g.obs.lock().unwrap();
            o.last
                .as_ref()
                .map(|st| {
                    st.nodes.iter().filter(|n| proc_of(n).is_some_and(|p| p.0 == agent)).map(|n| n.node_id).collect()
                })
                .unwrap_or_default()
        };
        if !nodes.is_empty() {
            match MasterClient::connect(&plan::master_addr().to_string()).await {
                Ok(c) => {
                    let c = c.with_deadline(Duration::from_millis(500));
                    let mut all = true;
                    for n in &nodes {
                        if let Err(e) = c.drain(*n, drain).await {
                            last = e.to_string();
                            all = false;
                        }
                    }
                    if all {
                        return Ok(());
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{verb} of machine {agent} got no answer within 10 s: {last}"))
}

/// `sutra split` (or `sutra merge`) of the `k`-th shard of the latest map, as an operator
/// would: the master's `SplitShard` (`MergeShard`) RPC, retried for 10 s across master
/// restarts. A refusal (the shard is busy moving a replica, splitting or merging) is the
/// operator's answer, not a failure. The note, and the shard whose appearance (split) or
/// departure (merge) ends the change.
async fn split_or_merge(g: &Grid, k: usize, merge: bool) -> Result<(String, Option<u32>), String> {
    let verb = if merge { "merge" } else { "split" };
    let start = Instant::now();
    let mut last = String::from("no map yet");
    while start.elapsed() < Duration::from_secs(10) {
        let shard = {
            let o = g.obs.lock().unwrap();
            o.last
                .as_ref()
                .and_then(|st| st.map.as_ref())
                .and_then(|m| m.shards.get(k % m.shards.len().max(1)))
                .map(|e| e.shard)
        };
        if let Some(shard) = shard {
            let answer = match MasterClient::connect(&plan::master_addr().to_string()).await {
                Ok(c) if merge => c.with_deadline(Duration::from_millis(500)).merge_shard(shard, None).await.map(|r| {
                    let how = if r.started { "started" } else { "already under way" };
                    (format!("operator: merge of shard {} into shard {} {how}", r.from, r.into), r.from)
                }),
                Ok(c) => c.with_deadline(Duration::from_millis(500)).split_shard(shard, None).await.map(|r| {
                    let how = if r.started { "started" } else { "already under way" };
                    (
                        format!("operator: split of shard {shard} at {:#018x} into shard {} {how}", r.at, r.child),
                        r.child,
                    )
                }),
                Err(e) => Err(e),
            };
            match answer {
                Ok((note, target)) => return Ok((note, Some(target))),
                Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                    return Ok((format!("operator: {verb} of shard {shard} refused: {e}"), None));
                }
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("{verb} of shard #{k} got no answer within 10 s: {last}"))
}

fn replaced_off(g: &Grid, agent: u8) -> Result<(), String> {
    let o = g.obs.lock().unwrap();
    let st = o.last.as_ref().ok_or("no status yet")?;
    let map = st.map.as_ref().ok_or("no map yet")?;
    let on_agent: BTreeSet<u64> =
        st.nodes.iter().filter(|n| proc_of(n).is_some_and(|p| p.0 == agent)).map(|n| n.node_id).collect();
    for e in &map.shards {
        if let Some(r) = e.replicas.iter().find(|r| on_agent.contains(r)) {
            return Err(format!("shard {} still has a voter on node {r} (epoch {})", e.shard, e.epoch));
        }
        if e.learner != 0 || e.replacing != 0 || e.replicas.len() != g.sc.cluster.replication as usize {
            return Err(format!("shard {} is still changing its membership: voters {:?}", e.shard, e.replicas));
        }
    }
    Ok(())
}

/// Buggify for one run (`buggify: true` in the scenario), off again when the run ends.
struct Buggify;

impl Buggify {
    fn start(on: bool, seed: u64) -> Buggify {
        if on {
            sutra_grid::io::buggify::enable(seed);
        } else {
            sutra_grid::io::buggify::disable();
        }
        Buggify
    }
}

impl Drop for Buggify {
    fn drop(&mut self) {
        sutra_grid::io::buggify::disable();
    }
}

/// Waits until the observer shows `p` in `state`; returns the wait in ms.
async fn wait_state(g: &Grid, p: Proc, state: NodeState, budget: Duration) -> Option<f64> {
    let start = Instant::now();
    loop {
        if g.obs.lock().unwrap().states.get(&p).is_some_and(|(s, _)| *s == state) {
            return Some(start.elapsed().as_secs_f64() * 1000.0);
        }
        if start.elapsed() > budget {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn observed(g: &Grid, p: Proc) -> Option<NodeState> {
    g.obs.lock().unwrap().states.get(&p).map(|(s, _)| *s)
}

#[derive(Default)]
struct Measured {
    /// From an `expect-replaced` step to the map showing the machine's replicas replaced.
    replaced_ms: Vec<f64>,
    exit_detect_ms: Vec<f64>,
    silent_detect_ms: Vec<f64>,
    restart_ms: Vec<f64>,
    expects: Vec<serde_json::Value>,
    failures: Vec<String>,
    /// From a split's RPC answer to the master's status showing the new shard.
    split_ms: Vec<f64>,
    splits_refused: usize,
    /// From a merge's RPC answer to the master's status no longer showing the absorbed shard.
    merge_ms: Vec<f64>,
    merges_refused: usize,
}

/// A step with its time and targets resolved for this seed.
#[derive(Clone, Debug)]
struct Planned {
    at: Duration,
    action: Action,
    procs: Vec<Proc>,
    agent: Option<u8>,
}

fn resolve(sc: &Scenario, rng: &mut sutra_grid::io::Rng) -> Vec<Planned> {
    let c = &sc.cluster;
    let mut last_proc = (0u8, 0u8);
    let mut last_agent = 0u8;
    let mut out = Vec::new();
    let mut node = |r: &str, rng: &mut sutra_grid::io::Rng| -> Proc {
        let p = match r {
            "random" => (rng.random_range(0..c.agents), rng.random_range(0..c.processes_per_agent)),
            "same" => last_proc,
            "primary" => {
                last_proc = SAME_PRIMARY;
                return PICK_PRIMARY;
            }
            "last-primary" => SAME_PRIMARY,
            "follower-1" => FOLLOWER_1,
            "follower-2" => FOLLOWER_2,
            r if r.starts_with("primary:") => {
                last_proc = SAME_PRIMARY;
                return (SHARD_PRIMARY, r["primary:".len()..].parse().unwrap_or(0));
            }
            _ => {
                let (a, s) = r.split_once('.').unwrap_or(("0", "0"));
                (a.parse().unwrap_or(0), s.parse().unwrap_or(0))
            }
        };
        last_proc = p;
        p
    };
    for st in &sc.timeline {
        let at = Duration::from_secs_f64(st.at_s + rng.random_range(0.0..=st.jitter_s.max(0.0)));
        let (procs, agent) = match &st.action {
            Action::KillProcess { node: n }
            | Action::Pause { node: n }
            | Action::Resume { node: n }
            | Action::IsolateFromPeers { node: n }
            | Action::Isolate { node: n }
            | Action::IsolateFromServers { node: n }
            | Action::DiskFault { node: n, .. }
            | Action::Expect { node: n, .. } => (vec![node(n, rng)], None),
            Action::ClockSkew { node: n, .. } if n == "master" => (vec![MASTER_PROC], None),
            Action::ClockSkew { node: n, .. } => (vec![node(n, rng)], None),
            Action::CutOneWay { from, to } => {
                let f = node(from, rng);
                let mut t = node(to, rng);
                if t == f {
                    t = ((f.0 + 1) % c.agents, f.1);
                }
                (vec![f, t], None)
            }
            Action::KillAgent { agent }
            | Action::KillMachine { agent }
            | Action::RestartAgent { agent }
            | Action::Drain { agent }
            | Action::Undrain { agent }
            | Action::ExpectReplaced { agent, .. } => {
                let a = match agent.as_str() {
                    "random" => rng.random_range(0..c.agents),
                    "same" => last_agent,
                    "last-primary" => LAST_PRIMARY_AGENT,
                    s => s.parse().unwrap_or(0),
                };
                last_agent = a;
                (vec![], Some(a))
            }
            _ => (vec![], None),
        };
        out.push(Planned { at, action: st.action.clone(), procs, agent });
    }
    if let Some(sw) = &sc.swarm {
        let n = rng.random_range(sw.faults[0]..=sw.faults[1]);
        let horizon = (sc.duration_s - 1.0).max(0.5);
        for _ in 0..n {
            let kind = *sw.kinds.choose(rng).expect("validated non-empty");
            let at = rng.random_range(0.5..horizon);
            let repair = at + rng.random_range(sw.repair_after_s[0]..=sw.repair_after_s[1]);
            let repair = Duration::from_secs_f64(repair.min(sc.duration_s));
            let at = Duration::from_secs_f64(at);
            let p = (rng.random_range(0..c.agents), rng.random_range(0..c.processes_per_agent));
            let a = rng.random_range(0..c.agents);
            let mut push = |at, action, procs: Vec<Proc>, agent| out.push(Planned { at, action, procs, agent });
            let n = name(p);
            match kind {
                SwarmKind::KillProcess => push(at, Action::KillProcess { node: n }, vec![p], None),
                SwarmKind::KillAgent | SwarmKind::KillMachine => {
                    let kill = if kind == SwarmKind::KillAgent {
                        Action::KillAgent { agent: a.to_string() }
                    } else {
                        Action::KillMachine { agent: a.to_string() }
                    };
                    push(at, kill, vec![], Some(a));
                    push(repair, Action::RestartAgent { agent: a.to_string() }, vec![], Some(a));
                }
                SwarmKind::PowerLoss => {
                    let down_s = rng.random_range(0.2..3.0);
                    push(at, Action::PowerLoss { down_s }, vec![], None);
                }
                SwarmKind::RestartMaster => {
                    let down_s = rng.random_range(0.0..3.0);
                    push(at, Action::RestartMaster { down_s }, vec![], None);
                }
                SwarmKind::Pause => {
                    push(at, Action::Pause { node: n.clone() }, vec![p], None);
                    push(repair, Action::Resume { node: n }, vec![p], None);
                }
                SwarmKind::IsolateFromPeers | SwarmKind::Isolate => {
                    let act = if kind == SwarmKind::Isolate {
                        Action::Isolate { node: n }
                    } else {
                        Action::IsolateFromPeers { node: n }
                    };
                    push(at, act, vec![p], None);
                    push(repair, Action::Heal, vec![], None);
                }
                SwarmKind::PartitionHalves => {
                    push(at, Action::PartitionHalves, vec![], None);
                    push(repair, Action::Heal, vec![], None);
                }
                SwarmKind::CutOneWay => {
                    let q = ((p.0 + 1) % c.agents, p.1);
                    push(at, Action::CutOneWay { from: n, to: name(q) }, vec![p, q], None);
                    push(repair, Action::Heal, vec![], None);
                }
                SwarmKind::PacketLoss => {
                    push(at, Action::PacketLoss { rate: rng.random_range(0.01..0.2) }, vec![], None);
                    push(repair, Action::Heal, vec![], None);
                }
                SwarmKind::DiskFault => {
                    let fault = *[DiskFaultKind::FsyncError, DiskFaultKind::Full, DiskFaultKind::ReadBitflips]
                        .choose(rng)
                        .expect("non-empty");
                    push(at, Action::DiskFault { node: n.clone(), fault }, vec![p], None);
                    // A failed shard stays failed until its process restarts (fsync errors are
                    // fatal); the agent restarts it.
                    push(repair, Action::DiskFault { node: n.clone(), fault: DiskFaultKind::Clear }, vec![p], None);
                    push(repair, Action::KillProcess { node: n }, vec![p], None);
                }
                SwarmKind::ClockSkew => {
                    let (target, node) =
                        if rng.random_range(0..7) == 0 { (MASTER_PROC, "master".into()) } else { (p, n) };
                    let rate = rng.random_range(0.96..1.04);
                    push(at, Action::ClockSkew { node: node.clone(), rate }, vec![target], None);
                    push(repair, Action::ClockSkew { node, rate: 1.0 }, vec![target], None);
                }
                SwarmKind::IsolateFromServers => {
                    push(at, Action::IsolateFromServers { node: n }, vec![p], None);
                    push(repair, Action::Heal, vec![], None);
                }
                SwarmKind::Split => {
                    push(at, Action::Split { shard: rng.random_range(0..1024) }, vec![], None);
                }
                SwarmKind::Merge => {
                    push(at, Action::Merge { shard: rng.random_range(0..1024) }, vec![], None);
                }
                SwarmKind::Drain => {
                    push(at, Action::Drain { agent: a.to_string() }, vec![], Some(a));
                    push(repair, Action::Undrain { agent: a.to_string() }, vec![], Some(a));
                }
                SwarmKind::SlowLinks => {
                    let max_ms = rng.random_range(20..300);
                    push(at, Action::SlowLinks { min_ms: 1, max_ms }, vec![], None);
                    push(repair, Action::Heal, vec![], None);
                }
            }
        }
    }
    // Stable: simultaneous steps keep their file order.
    out.sort_by_key(|p| p.at);
    out
}

/// Carries out one step; detection measurements and expectations run as their own tasks.
fn perform(
    g: &Arc<Grid>,
    step: &Planned,
    measured: &Arc<Mutex<Measured>>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let checks: BTreeSet<Check> = g.sc.checks.iter().copied().collect();
    let checker = g.checker.clone();
    let resolved;
    let step = if step.procs.iter().any(|p| p.0 == PICK_PRIMARY.0 || p.0 == SHARD_PRIMARY)
        || step.agent == Some(LAST_PRIMARY_AGENT)
    {
        let mut st = step.clone();
        if st.agent == Some(LAST_PRIMARY_AGENT) {
            st.agent = Some(g.last_primary.lock().unwrap().map_or(0, |l| l.0 .0));
        }
        for p in st.procs.iter_mut() {
            if *p == PICK_PRIMARY || p.0 == SHARD_PRIMARY {
                let k = if p.0 == SHARD_PRIMARY { p.1 as usize } else { st.at.as_millis() as usize };
                let (picked, shard) = g.current_primary(k).unwrap_or(((0, 0), 0));
                *p = picked;
                *g.last_primary.lock().unwrap() = Some((picked, shard));
            } else if *p == SAME_PRIMARY {
                *p = g.last_primary.lock().unwrap().map_or((0, 0), |l| l.0);
            } else if *p == FOLLOWER_1 || *p == FOLLOWER_2 {
                let shard = g.last_primary.lock().unwrap().map_or(0, |l| l.1);
                *p = g.follower(shard, (p.1 - FOLLOWER_1.1) as usize).unwrap_or((0, 0));
            }
        }
        resolved = st;
        &resolved
    } else {
        step
    };
    // Faults that take primaries away start an RTO measurement for each of their shards.
    let lost: Vec<Proc> = match &step.action {
        Action::KillProcess { .. }
        | Action::Pause { .. }
        | Action::Isolate { .. }
        | Action::IsolateFromPeers { .. }
        | Action::IsolateFromServers { .. } => step.procs.clone(),
        Action::KillAgent { .. } | Action::KillMachine { .. } => {
            step.agent.map(|a| (0..g.sc.cluster.processes_per_agent).map(|s| (a, s)).collect()).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    if !lost.is_empty() {
        let reported = matches!(step.action, Action::KillProcess { .. });
        let shards = g.primaries_of(&lost);
        let mut w = g.repl.lock().unwrap();
        for s in shards {
            w.primary_faults.push((Instant::now(), s, reported));
        }
    }
    let calm_net = {
        let t = g.truth.lock().unwrap();
        t.global.is_empty() && t.master_up && Instant::now().saturating_duration_since(t.global_calm_since) >= STABLE
    };
    match &step.action {
        Action::KillProcess { .. } => {
            let p = step.procs[0];
            // Only a running process under a live agent has anyone to report its exit.
            let running = g.sim_node(p).is_some_and(|id| !g.h.is_exit(id)) && !g.h.is_exit(g.agents[p.0 as usize]);
            let was_up = running && observed(g, p) == Some(NodeState::Up);
            let cut = g.truth.lock().unwrap().cut.contains(&p);
            if let Some(id) = g.sim_node(p) {
                g.h.kill(id);
            }
            g.calm(p);
            g.note(format!("nemesis: kill process {}", name(p)));
            if checks.contains(&Check::AgentRestarts) && was_up && calm_net && !cut {
                let (g, m, killed) = (g.clone(), measured.clone(), Instant::now());
                tasks.push(checker.spawn(async move {
                    let down = wait_state(&g, p, NodeState::Down, Duration::from_secs(2)).await;
                    // Bounds hold only while nothing else disturbs the control plane.
                    let calm = g.calm_throughout(p, killed);
                    match down {
                        Some(ms) => {
                            m.lock().unwrap().exit_detect_ms.push(ms);
                            if ms > EXIT_DETECT_MS + POLL_SLACK_MS && calm {
                                m.lock().unwrap().failures.push(format!(
                                    "process {} killed: Down after {ms:.0} ms; the agent's report must make it ≤ {EXIT_DETECT_MS} ms",
                                    name(p)
                                ));
                            }
                        }
                        None if calm => {
                            m.lock().unwrap().failures.push(format!("process {} killed: never marked Down", name(p)))
                        }
                        None => {}
                    }
                    if wait_state(&g, p, NodeState::Up, RESTART_BUDGET).await.is_some() {
                        let ms = killed.elapsed().as_secs_f64() * 1000.0;
                        m.lock().unwrap().restart_ms.push(ms);
                    } else if g.calm_throughout(p, killed) {
                        m.lock().unwrap().failures.push(format!(
                            "process {} killed: its agent did not get it back Up within {RESTART_BUDGET:?}",
                            name(p)
                        ));
                    }
                }));
            }
        }
        Action::KillAgent { .. } | Action::KillMachine { .. } => {
            let a = step.agent.unwrap_or(0);
            let lose = matches!(step.action, Action::KillMachine { .. });
            let up: Vec<Proc> = (0..g.sc.cluster.processes_per_agent)
                .map(|s| (a, s))
                .filter(|p| observed(g, *p) == Some(NodeState::Up) && !g.truth.lock().unwrap().cut.contains(p))
                .collect();
            g.kill_agent(a, lose);
            g.note(format!("nemesis: kill {} {a} (silently)", if lose { "machine" } else { "agent" }));
            if checks.contains(&Check::SilentDetection) && calm_net {
                for p in up {
                    let (g, m, killed) = (g.clone(), measured.clone(), Instant::now());
                    tasks.push(checker.spawn(async move {
                        let down = wait_state(&g, p, NodeState::Down, Duration::from_secs(3)).await;
                        // Only while the machine stays dead and nothing else disturbs the
                        // control plane (a quick reboot may rightly go unnoticed).
                        let still_dead = g.h.is_exit(g.agents[p.0 as usize]);
                        let calm = g.calm_throughout(p, killed) && still_dead;
                        match down {
                            Some(ms) => {
                                m.lock().unwrap().silent_detect_ms.push(ms);
                                if ms > SILENT_DETECT_MS + POLL_SLACK_MS && calm {
                                    m.lock().unwrap().failures.push(format!(
                                        "machine {} vanished: process {} Down after {ms:.0} ms; must be ≤ {SILENT_DETECT_MS} ms (3 heartbeats)",
                                        p.0,
                                        name(p)
                                    ));
                                }
                            }
                            None if calm => m.lock().unwrap().failures.push(format!(
                                "machine {} vanished: process {} never marked Down",
                                p.0,
                                name(p)
                            )),
                            None => {}
                        }
                    }));
                }
            }
        }
        Action::RestartAgent { .. } => {
            let a = step.agent.unwrap_or(0);
            g.restart_agent(a);
            for s in 0..g.sc.cluster.processes_per_agent {
                g.calm((a, s));
            }
            g.note(format!("nemesis: boot agent {a}"));
        }
        Action::RestartMaster { down_s } => {
            let before = g.obs.lock().unwrap().last.clone();
            g.kill_master();
            g.note(format!("nemesis: crash master (down {down_s:.2} s)"));
            let (g2, m, down) = (g.clone(), measured.clone(), Duration::from_secs_f64(*down_s));
            let check = checks.contains(&Check::MasterMetadata);
            tasks.push(checker.spawn(async move {
                tokio::time::sleep(down).await;
                if g2.truth.lock().unwrap().master_up {
                    return;
                }
                g2.start_master();
                g2.note("nemesis: master booted".into());
                if !check {
                    return;
                }
                let Some(before) = before else { return };
                // The first status the restarted master gives must carry the same metadata.
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(10) {
                    if let Ok(c) = MasterClient::connect(&plan::master_addr().to_string()).await {
                        if let Ok(after) = c.with_deadline(Duration::from_millis(500)).status().await {
                            let reg = |s: &pb::StatusResponse| -> Vec<(u64, String, u32, String)> {
                                s.nodes.iter().map(|n| (n.node_id, n.agent.clone(), n.slot, n.storage_addr.clone())).collect()
                            };
                            // Node states are live, not metadata. The map may only have moved on by
                            // elections (one may land between the last poll and the crash).
                            let lost = match (before.map.as_ref(), after.map.as_ref()) {
                                (Some(b), Some(a)) => {
                                    map_change_problem(Some(b), Some(b), a, g2.sc.cluster.replication as usize).is_some()
                                }
                                (b, a) => b.is_some() != a.is_some(),
                            };
                            if lost || reg(&after) != reg(&before) {
                                m.lock().unwrap().failures.push(format!(
                                    "master restart lost metadata: map {:?} / {} nodes before, map {:?} / {} nodes after",
                                    before.map.as_ref().map(|m| m.version),
                                    before.nodes.len(),
                                    after.map.as_ref().map(|m| m.version),
                                    after.nodes.len()
                                ));
                            }
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                m.lock().unwrap().failures.push("the restarted master never answered status within 10 s".into());
            }));
        }
        Action::Pause { .. } => {
            let p = step.procs[0];
            if let Some(id) = g.sim_node(p) {
                g.h.pause(id);
                g.truth.lock().unwrap().paused.insert(p);
            }
            g.note(format!("nemesis: pause {}", name(p)));
        }
        Action::Resume { .. } => {
            let p = step.procs[0];
            if g.truth.lock().unwrap().paused.remove(&p) {
                if let Some(id) = g.sim_node(p) {
                    g.h.resume(id);
                }
            }
            g.calm(p);
            g.note(format!("nemesis: resume {}", name(p)));
        }
        Action::IsolateFromPeers { .. } => {
            let p = step.procs[0];
            if let Some(x) = g.sim_node(p) {
                for q in g.procs().into_iter().filter(|q| *q != p) {
                    if let Some(y) = g.sim_node(q) {
                        g.clog_link(x, y);
                        g.clog_link(y, x);
                    }
                }
            }
            // Only `p` loses a majority of its peers: every other node must stay Up (the
            // master's majority rule ignores `p` reporting everyone unreachable).
            g.truth.lock().unwrap().cut.insert(p);
            g.note(format!("nemesis: isolate {} from its peers (the master still reaches it)", name(p)));
        }
        Action::IsolateFromServers { .. } => {
            let p = step.procs[0];
            if let Some(x) = g.sim_node(p) {
                let servers = g.procs().into_iter().filter(|q| *q != p).filter_map(|q| g.sim_node(q));
                for y in servers.chain([g.master]) {
                    g.clog_link(x, y);
                    g.clog_link(y, x);
                }
            }
            g.truth.lock().unwrap().cut.insert(p);
            g.note(format!("nemesis: isolate {} from the master and its peers (clients still reach it)", name(p)));
        }
        Action::Isolate { .. } => {
            let p = step.procs[0];
            if let Some(x) = g.sim_node(p) {
                NetSim::current().clog_node(x);
                g.truth.lock().unwrap().node_clogs.insert(x);
            }
            g.truth.lock().unwrap().cut.insert(p);
            g.note(format!("nemesis: isolate {} from everything", name(p)));
        }
        Action::PartitionHalves => {
            let procs = g.procs();
            let (left, right) = procs.split_at(procs.len() / 2);
            for l in left {
                for r in right {
                    if let (Some(x), Some(y)) = (g.sim_node(*l), g.sim_node(*r)) {
                        g.clog_link(x, y);
                        g.clog_link(y, x);
                    }
                }
            }
            let mut t = g.truth.lock().unwrap();
            t.cut.extend(procs.iter().copied());
            t.global.insert("partition-halves");
            drop(t);
            g.note("nemesis: partition the storage processes into halves".into());
        }
        Action::CutOneWay { .. } => {
            let (p, q) = (step.procs[0], step.procs[1]);
            if let (Some(x), Some(y)) = (g.sim_node(p), g.sim_node(q)) {
                g.clog_link(x, y);
            }
            // Indirect probes route around a one-way cut, and one reporter is never a
            // majority: neither end may be shown Degraded or Down.
            g.note(format!("nemesis: cut {} -> {} one way", name(p), name(q)));
        }
        Action::PacketLoss { rate } => {
            NetSim::current().update_config(|c| c.packet_loss_rate = *rate);
            g.truth.lock().unwrap().global.insert("packet-loss");
            g.note(format!("nemesis: packet loss {rate:.3}"));
        }
        Action::SlowLinks { min_ms, max_ms } => {
            let (lo, hi) = (Duration::from_millis(*min_ms), Duration::from_millis(*max_ms));
            NetSim::current().update_config(|c| c.send_latency = lo..hi.max(lo + Duration::from_millis(1)));
            g.truth.lock().unwrap().global.insert("slow-links");
            g.note(format!("nemesis: slow links {min_ms}..{max_ms} ms"));
        }
        Action::DiskFault { fault, .. } => {
            let p = step.procs[0];
            g.disk_fault(p, *fault);
            g.note(format!("nemesis: disk fault {fault:?} on {}", name(p)));
        }
        Action::PowerLoss { down_s } => {
            for a in 0..g.sc.cluster.agents {
                g.kill_agent(a, true);
            }
            g.note(format!("nemesis: power loss on every machine (down {down_s:.2} s)"));
            let (g2, down) = (g.clone(), Duration::from_secs_f64(*down_s));
            tasks.push(checker.spawn(async move {
                tokio::time::sleep(down).await;
                for a in 0..g2.sc.cluster.agents {
                    g2.restart_agent(a);
                    for s in 0..g2.sc.cluster.processes_per_agent {
                        g2.calm((a, s));
                    }
                }
                g2.note("nemesis: every machine booted after the power loss".into());
            }));
        }
        Action::Heal => {
            g.heal_all(false);
            g.note("nemesis: heal the network, resume paused processes".into());
        }
        Action::ClockSkew { rate, .. } => {
            let p = step.procs[0];
            let id = if p == MASTER_PROC { Some(g.master) } else { g.sim_node(p) };
            if let Some(id) = id {
                sutra_grid::io::clock::set_rate(id, *rate);
            }
            let who = if p == MASTER_PROC { "the master".to_string() } else { name(p) };
            g.note(format!("nemesis: {who}'s lease clock runs at {rate:.3}x"));
        }
        Action::Drain { .. } | Action::Undrain { .. } => {
            let a = step.agent.unwrap_or(0);
            let drain = matches!(step.action, Action::Drain { .. });
            {
                let mut t = g.truth.lock().unwrap();
                if drain {
                    t.drained.insert(a);
                } else {
                    t.drained.remove(&a);
                }
            }
            g.note(format!("operator: {} machine {a}", if drain { "drain" } else { "undrain" }));
            let (g2, m) = (g.clone(), measured.clone());
            tasks.push(checker.spawn(async move {
                let _turn = g2.operator.lock().await;
                if let Err(e) = drain_machine(&g2, a, drain).await {
                    m.lock().unwrap().failures.push(e);
                }
            }));
        }
        Action::Split { shard } | Action::Merge { shard } => {
            let k = *shard as usize;
            let merge = matches!(step.action, Action::Merge { .. });
            g.note(format!("operator: {} shard #{k} of the latest map", if merge { "merge" } else { "split" }));
            let (g2, m) = (g.clone(), measured.clone());
            tasks.push(checker.spawn(async move {
                let _turn = g2.operator.lock().await;
                match split_or_merge(&g2, k, merge).await {
                    Ok((note, target)) => {
                        g2.note(note);
                        let Some(target) = target else {
                            let mut m = m.lock().unwrap();
                            *(if merge { &mut m.merges_refused } else { &mut m.splits_refused }) += 1;
                            return;
                        };
                        // Done when the status shows the new shard, or no longer shows the
                        // absorbed one (the end-of-run checks require every change to finish).
                        let t = Instant::now();
                        loop {
                            let done = {
                                let o = g2.obs.lock().unwrap();
                                o.last
                                    .as_ref()
                                    .and_then(|st| st.map.as_ref())
                                    .is_some_and(|m| m.shards.iter().any(|e| e.shard == target) != merge)
                            };
                            if done {
                                let ms = t.elapsed().as_secs_f64() * 1000.0;
                                let mut m = m.lock().unwrap();
                                (if merge { &mut m.merge_ms } else { &mut m.split_ms }).push(ms);
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Err(e) => m.lock().unwrap().failures.push(e),
                }
            }));
        }
        Action::ExpectReplaced { within_s, .. } => {
            let a = step.agent.unwrap_or(0);
            let (g, m, within) = (g.clone(), measured.clone(), Duration::from_secs_f64(*within_s));
            let at = step.at.as_secs_f64();
            tasks.push(checker.spawn(async move {
                let start = Instant::now();
                let mut left = String::from("no status yet");
                while start.elapsed() <= within {
                    match replaced_off(&g, a) {
                        Ok(()) => {
                            let ms = start.elapsed().as_secs_f64() * 1000.0;
                            m.lock().unwrap().replaced_ms.push(ms);
                            return;
                        }
                        Err(why) => left = why,
                    }
                    tokio::time::sleep(POLL).await;
                }
                m.lock().unwrap().failures.push(format!(
                    "expected every replica on machine {a} replaced within {within:?} of {at:.2}s: {left}"
                ));
            }));
        }
        Action::Expect { state, within_s, .. } => {
            let p = step.procs[0];
            let want = match state {
                ExpectState::Up => NodeState::Up,
                ExpectState::Degraded => NodeState::Degraded,
                ExpectState::Down => NodeState::Down,
            };
            let (g, m, within) = (g.clone(), measured.clone(), Duration::from_secs_f64(*within_s));
            let at = step.at.as_secs_f64();
            tasks.push(checker.spawn(async move {
                let r = wait_state(&g, p, want, within).await;
                let mut m = m.lock().unwrap();
                m.expects.push(json!({"at_s": at, "node": name(p), "state": want.name(), "reached_ms": r}));
                if r.is_none() {
                    let now = observed(&g, p).map_or("unknown", |s| s.name());
                    m.failures.push(format!(
                        "expected node {} {} within {within:?} of {at:.2}s; the master says {now}",
                        name(p),
                        want.name()
                    ));
                }
            }));
        }
    }
}

/// Associations the writers attempted, and what their acknowledged writes and retractions
/// say of each at the end, by (source, target); all of them are Semantic `next` edges, so
/// that pair is the upsert key.
#[derive(Default)]
struct EdgeLog {
    attempted: BTreeSet<(ConceptId, ConceptId)>,
    expect: BTreeMap<(ConceptId, ConceptId), Expect>,
    /// Concepts whose retraction was acknowledged: none may be found at the end.
    forgotten: Vec<String>,
    /// Read-your-writes checks made right after a write (or retraction) and its in-edge
    /// delivery, and the answers that missed the association (or still showed it).
    ryw_checked: usize,
    ryw_violations: Vec<String>,
}

/// What the end state must hold of one association.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Expect {
    /// An acknowledged write, no retraction since.
    Present,
    /// An acknowledged retraction, no write since.
    Absent,
    /// A retraction whose outcome is unknown came after (a write whose outcome is unknown
    /// cannot take an association away, so it only matters after a retraction).
    Unknown,
}

impl EdgeLog {
    /// One operation on `keys`, in the writer's order: a write (`present`) or a retraction,
    /// acknowledged (`ok`) or not.
    fn record(&mut self, keys: impl IntoIterator<Item = (ConceptId, ConceptId)>, present: bool, ok: bool) {
        for k in keys {
            let e = self.expect.get(&k).copied();
            let next = match (e, present, ok) {
                (Some(Expect::Unknown), _, _) => Expect::Unknown,
                (_, true, true) => Expect::Present,
                (_, false, true) => Expect::Absent,
                (Some(Expect::Present), true, false) => Expect::Present,
                (None, true, false) => continue,
                (_, _, false) => Expect::Unknown,
            };
            self.expect.insert(k, next);
        }
    }
}

fn next_edge(source: &str, target: &str, confidence: f32) -> Association {
    Association {
        source: ConceptId::from_label(source),
        target: ConceptId::from_label(target),
        kind: AssocKind::Semantic,
        relation: "next".into(),
        confidence,
        evidence: String::new(),
    }
}

/// The client's router, made on first use (and again after a failure to make one): `None`
/// after a 100 ms pause when the master cannot be reached yet.
async fn client_router(router: &mut Option<Arc<Router>>) -> Option<Arc<Router>> {
    if let Some(r) = router {
        return Some(r.clone());
    }
    let made = match MasterClient::connect(&plan::master_addr().to_string()).await {
        Ok(mc) => Router::new(mc.with_deadline(Duration::from_millis(500)), WRITE_DEADLINE).await.ok(),
        Err(_) => None,
    };
    if made.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    router.clone_from(&made);
    made
}

/// A writer routing batches through the master's map, recording what was acknowledged. Each
/// batch chains its concepts with `next` associations (mostly across shards; the first hop in
/// both directions, so one pair is joined by two edges), links its first
/// and last concepts to the batch before (a ladder, so some pairs have several shortest
/// paths), and re-weights one association of the batch before, so updates race their own
/// in-edge deliveries.
async fn writer(
    w: u32,
    concepts: u32,
    pause: Duration,
    acked: Arc<Mutex<Vec<String>>>,
    edges: Arc<Mutex<EdgeLog>>,
    repl: Arc<Mutex<ReplWitness>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut router = None;
    let mut failed = 0u64;
    let mut i = 0u32;
    let mut retracting = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(r) = client_router(&mut router).await else { continue };
        let labels: Vec<String> = (0..concepts).map(|j| format!("w{w}-b{i}-c{j}")).collect();
        let batch = WriteBatch {
            concepts: labels
                .iter()
                .map(|l| ConceptWrite {
                    label: l.clone(),
                    content: format!("{l} content"),
                    vector: writer_vector(l),
                    confidence: 0.9,
                })
                .collect(),
            associations: labels.windows(2).map(|p| next_edge(&p[0], &p[1], 0.5)).collect(),
            forget: vec![],
        };
        let mut batch = batch;
        if concepts > 1 {
            // The first hop is stored both ways: two edges join one pair of concepts, and a
            // path through it must still be answered once.
            batch.associations.push(next_edge(&labels[1], &labels[0], 0.4));
        }
        if i > 0 && concepts > 1 {
            let prev = |j: u32| format!("w{w}-b{}-c{j}", i - 1);
            batch.associations.push(next_edge(&prev(0), &prev(1), 0.05 + (i % 10) as f32 / 10.0));
            // Rungs to the batch before make a ladder: pairs with several shortest paths.
            batch.associations.push(next_edge(&labels[0], &prev(0), 0.6));
            batch.associations.push(next_edge(&labels[concepts as usize - 1], &prev(concepts - 1), 0.7));
        }
        edges.lock().unwrap().attempted.extend(batch.associations.iter().map(|a| (a.source, a.target)));
        let sent = Instant::now();
        let keys = || batch.associations.iter().map(|a| (a.source, a.target));
        match r.write_idempotent(&batch).await {
            Ok(parts) => {
                let now = Instant::now();
                repl.lock().unwrap().acks.extend(parts.iter().map(|p| (sent, now, p.shard)));
                acked.lock().unwrap().extend(labels.iter().cloned());
                edges.lock().unwrap().record(keys(), true, true);
                if i >= 2 && concepts >= 3 && i.is_multiple_of(2) {
                    // Beside the writes, not in their way: a retraction waits for every
                    // outbox, and the recovery checks time the writes (primary-restarts).
                    let (r, acked, edges) = (r.clone(), acked.clone(), edges.clone());
                    retracting.push(tokio::spawn(async move { retract(&r, w, i, concepts, &acked, &edges).await }));
                }
                // Every third batch reads its own write back, as `/learn` (wait_for: in_edges) does.
                if i % 3 == 1 {
                    let pending: Vec<_> = parts.into_iter().filter(|p| p.owes_in_edges).collect();
                    if let Ok(true) = r.wait_delivered(&pending, Duration::from_secs(2)).await {
                        let a = batch
                            .associations
                            .last()
                            .cloned()
                            .unwrap_or_else(|| next_edge(&labels[0], &labels[0], 1.0));
                        if let Some(problem) = read_your_write(&r, &a).await {
                            edges.lock().unwrap().ryw_violations.push(problem);
                        }
                        edges.lock().unwrap().ryw_checked += 1;
                    }
                }
            }
            Err(_) => {
                edges.lock().unwrap().record(keys(), true, false);
                failed += 1
            }
        }
        i += 1;
        tokio::time::sleep(pause).await;
    }
    // The checkers read the edge log once the writers return.
    for t in retracting {
        let _ = t.await;
    }
    failed
}

/// Retractions (architecture.md §12), after writer `w`'s batch `i`: the reverse first hop of
/// batch `i - 1`, then a middle concept of batch `i - 2` with every association it is an end
/// of (no later batch names either), each read back right after it was acknowledged and
/// delivered, as a user would: the in-edge is gone from the target's side, the concept from
/// lookups and from its neighbour's out-edges.
async fn retract(r: &Arc<Router>, w: u32, i: u32, concepts: u32, acked: &Mutex<Vec<String>>, edges: &Mutex<EdgeLog>) {
    let label = |b: u32, j: u32| format!("w{w}-b{b}-c{j}");
    let id = |b: u32, j: u32| ConceptId::from_label(&label(b, j));
    let (source, target) = (id(i - 1, 1), id(i - 1, 0));
    let forget = Forget::Association { source, target, relation: "next".into(), kind: None };
    let batch = WriteBatch { forget: vec![forget], ..Default::default() };
    let written = r.write_idempotent(&batch).await;
    edges.lock().unwrap().record([(source, target)], false, written.is_ok());
    if let Ok(parts) = written {
        read_your_retraction(r, parts, edges, || async {
            let filter = EdgeFilter { direction: sutra_grid::model::Direction::In, ..Default::default() };
            let list = r.neighbors(target, &filter, 1 << 16, Consistency::Strong).await.ok()?;
            let back = list
                .into_iter()
                .flat_map(|l| l.edges)
                .any(|e| e.other.as_ref().map(sutra_grid::wire::id_from_pb) == Some(source) && !e.outgoing);
            Some(back.then(|| format!("read-your-retractions: the in-edges of {target} still hold {source}")))
        })
        .await;
    }
    let mid = concepts / 2;
    let (gone, before) = (id(i - 2, mid), id(i - 2, mid - 1));
    let keys: Vec<_> =
        edges.lock().unwrap().attempted.iter().filter(|(a, b)| *a == gone || *b == gone).copied().collect();
    acked.lock().unwrap().retain(|l| *l != label(i - 2, mid));
    let written = r.forget_concept(gone).await;
    {
        let mut log = edges.lock().unwrap();
        log.record(keys, false, written.is_ok());
        if written.is_ok() {
            log.forgotten.push(label(i - 2, mid));
        }
    }
    if let Ok(parts) = written {
        read_your_retraction(r, parts, edges, || async {
            if !r.get_concepts_at(&[gone], Consistency::Strong).await.ok()?.is_empty() {
                return Some(Some(format!("read-your-retractions: concept {gone} still found")));
            }
            let filter = EdgeFilter { direction: sutra_grid::model::Direction::Out, ..Default::default() };
            let list = r.neighbors(before, &filter, 1 << 16, Consistency::Strong).await.ok()?;
            let back = list
                .into_iter()
                .flat_map(|l| l.edges)
                .any(|e| e.other.as_ref().map(sutra_grid::wire::id_from_pb) == Some(gone));
            Some(back.then(|| format!("read-your-retractions: the out-edges of {before} still hold {gone}")))
        })
        .await;
    }
}

/// Once the retraction's other sides are delivered, runs `read` (None: the read failed under
/// the faults and proves nothing) and records what it found wrong.
async fn read_your_retraction<F, Fut>(r: &Arc<Router>, parts: Vec<ShardWrite>, edges: &Mutex<EdgeLog>, read: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<Option<String>>>,
{
    let pending: Vec<_> = parts.into_iter().filter(|p| p.owes_in_edges).collect();
    if !matches!(r.wait_delivered(&pending, Duration::from_secs(2)).await, Ok(true)) {
        return;
    }
    if let Some(found) = read().await {
        let mut log = edges.lock().unwrap();
        log.ryw_checked += 1;
        log.ryw_violations.extend(found);
    };
}

/// Reads association `a` back from its target's end, as the writer's next requests would: the
/// target's in-edges (strong read) and a one-hop `/reason` from target to source walking both
/// directions. A read that fails (unavailable under the faults) proves nothing and is skipped;
/// an answer without the association is a violation.
async fn read_your_write(r: &Arc<Router>, a: &Association) -> Option<String> {
    if a.source == a.target {
        return None;
    }
    let filter = EdgeFilter { direction: sutra_grid::model::Direction::In, ..Default::default() };
    if let Ok(list) = r.neighbors(a.target, &filter, limits::NEIGHBORS_PER_VERTEX_MAX as u32, Consistency::Strong).await
    {
        let seen = list
            .into_iter()
            .flat_map(|l| l.edges)
            .any(|e| e.other.as_ref().map(sutra_grid::wire::id_from_pb) == Some(a.source) && !e.outgoing);
        if !seen {
            return Some(format!(
                "read-your-writes: the in-edges of {} lack {} right after delivery",
                a.target, a.source
            ));
        }
    }
    let e = sutra_grid::query::router::GridExpander { router: r.clone(), consistency: Consistency::Strong };
    let bounds = sutra_grid::query::paths::Bounds { max_depth: 1, max_paths: 1, ..Default::default() };
    if let Ok((paths, _)) =
        sutra_grid::query::paths::shortest_paths(&e, a.target, a.source, &EdgeFilter::default(), &bounds).await
    {
        if paths.is_empty() {
            return Some(format!("read-your-writes: no path {} -> {} right after delivery", a.target, a.source));
        }
    }
    None
}

/// Keys the register clients share, and how many operations each key's history may hold.
const REGISTER_KEYS: u32 = 8;
const REGISTER_OPS_PER_KEY: usize = 60;

type Histories = Arc<Mutex<BTreeMap<u32, Vec<linear::Event>>>>;

/// A register client: random writes of unique values and strong reads on shared keys,
/// recording each operation's invocation and completion (sim time) for the Wing–Gong check.
/// A hot client: writes concepts whose keys all fall in `hot` (the first shard's initial
/// range) and reads one of its earlier ones back strongly after each, so that shard carries
/// most of the load. Its acknowledged writes join the `acked-writes` check.
async fn hot_client(c: u32, hot: (u64, u64), acked: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>) {
    let mut router = None;
    let (mut k, mut mine) = (0u64, Vec::<ConceptId>::new());
    while !stop.load(Ordering::Relaxed) {
        let Some(r) = client_router(&mut router).await else { continue };
        let label = loop {
            k += 1;
            let l = format!("hot{c}-{k}");
            if (hot.0..=hot.1).contains(&ConceptId::from_label(&l).placement_key()) {
                break l;
            }
        };
        let batch = WriteBatch {
            concepts: vec![ConceptWrite {
                label: label.clone(),
                content: "hot".into(),
                vector: vec![],
                confidence: 1.0,
            }],
            associations: vec![],
            forget: vec![],
        };
        if r.write_idempotent(&batch).await.is_ok() {
            mine.push(ConceptId::from_label(&label));
            acked.lock().unwrap().push(label);
        }
        if let Some(id) = mine.get(madsim::rand::random::<u32>() as usize % mine.len().max(1)) {
            let _ = r.get_concepts_at(&[*id], Consistency::Strong).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether the hot range `hot` is covered by at least two shards led by two different nodes.
fn hot_spread(map: &pb::ShardMap, hot: (u64, u64)) -> bool {
    let covering: Vec<&pb::ShardEntry> =
        map.shards.iter().filter(|e| e.key_start <= hot.1 && hot.0 <= e.key_end).collect();
    covering.len() >= 2 && covering.iter().map(|e| e.primary).collect::<BTreeSet<u64>>().len() >= 2
}

/// What the `hot-split` watcher saw, in seconds from t0.
#[derive(Default)]
struct HotWatch {
    split: Option<f64>,
    spread: Option<f64>,
    spread_at_end: bool,
}

/// `hot-split`: the hot shard split within `HOT_SPLIT_WITHIN_S`, its range was led by two
/// nodes within `HOT_SPREAD_WITHIN_S` of that, and still was when the load stopped. Ok with
/// the two times.
fn check_hot_split(w: &HotWatch) -> Result<(f64, f64), String> {
    let split = w.split.filter(|t| *t <= HOT_SPLIT_WITHIN_S);
    let split = split.ok_or_else(|| format!("the hot shard did not split within {HOT_SPLIT_WITHIN_S} s"))?;
    let spread = w.spread.filter(|t| t - split <= HOT_SPREAD_WITHIN_S).ok_or_else(|| {
        format!(
            "the hot shard split at {split:.3} s but its range was not led by two nodes within {HOT_SPREAD_WITHIN_S} s"
        )
    })?;
    if !w.spread_at_end {
        return Err("when the load stopped, the hot range was no longer on two shards led by two nodes".into());
    }
    Ok((split, spread))
}

async fn register_client(c: u32, pause: Duration, t0: Instant, hist: Histories, stop: Arc<AtomicBool>) {
    let us = |t: Instant| t.saturating_duration_since(t0).as_micros() as u64;
    let mut router = None;
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(r) = client_router(&mut router).await else { continue };
        let key = madsim::rand::random::<u32>() % REGISTER_KEYS;
        if hist.lock().unwrap().get(&key).is_some_and(|h| h.len() >= REGISTER_OPS_PER_KEY) {
            if hist.lock().unwrap().values().filter(|h| h.len() >= REGISTER_OPS_PER_KEY).count()
                == REGISTER_KEYS as usize
            {
                return;
            }
            continue;
        }
        let label = format!("register-{key}");
        let invoke = Instant::now();
        let event = if madsim::rand::random::<bool>() {
            n += 1;
            let value = format!("c{c}-v{n}");
            let batch = WriteBatch {
                concepts: vec![ConceptWrite { label, content: value.clone(), vector: vec![], confidence: 1.0 }],
                associations: vec![],
                forget: vec![],
            };
            let complete = r.write(&batch).await.ok().map(|_| us(Instant::now()));
            Some(linear::Event { op: linear::Op::Write(value), invoke: us(invoke), complete })
        } else {
            match r.get_concepts_at(&[ConceptId::from_label(&label)], Consistency::Strong).await {
                Ok(found) => Some(linear::Event {
                    op: linear::Op::Read(found.into_iter().next().map(|c| c.content)),
                    invoke: us(invoke),
                    complete: Some(us(Instant::now())),
                }),
                // A failed read has no effect on the register.
                Err(_) => None,
            }
        };
        if let Some(e) = event {
            hist.lock().unwrap().entry(key).or_default().push(e);
        }
        tokio::time::sleep(pause).await;
    }
}

fn check_linearizable(hist: &BTreeMap<u32, Vec<linear::Event>>) -> Vec<String> {
    hist.iter().filter_map(|(k, h)| linear::check(h).err().map(|e| format!("register-{k}: {e}"))).take(5).collect()
}

/// Waits until the master has reported the grid healthy (`total` processes registered, every
/// one Up, every replica hosted) for `HEALTHY_FOR` on end, counting only polls made after this
/// call: a status polled just before a repair (say, a restart) must not pass for its outcome.
async fn wait_healthy(g: &Grid, budget: Duration, total: usize) -> Result<f64, String> {
    let start = Instant::now();
    let mut healthy_since: Option<Instant> = None;
    loop {
        let (healthy, problems, at) = {
            let o = g.obs.lock().unwrap();
            match &o.last {
                Some(st) => {
                    let up = st.nodes.iter().filter(|n| NodeState::from_pb(n.state) == Some(NodeState::Up)).count();
                    (st.healthy && up == total && st.nodes.len() == total, st.problems.clone(), o.last_at)
                }
                None => (false, vec!["no status from the master yet".into()], None),
            }
        };
        if at.is_some_and(|t| t > start) {
            if !healthy {
                healthy_since = None;
            } else if healthy_since.is_none() {
                healthy_since = at;
            }
        }
        if let Some(since) = healthy_since {
            if Instant::now().saturating_duration_since(since) >= HEALTHY_FOR {
                return Ok(since.saturating_duration_since(start).as_secs_f64());
            }
        }
        if start.elapsed() > budget {
            return Err(format!("not healthy within {budget:?}: {}", problems.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The vector a writer gives a concept: drawn from a hash of its label, so the checker can
/// search by it and expect that concept first.
fn writer_vector(label: &str) -> Vec<f32> {
    (0..boot::SIM_VECTOR_DIM as u64)
        .map(|i| {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(label.as_bytes(), i);
            (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Acknowledged concepts searched for by their own vector (architecture.md §11).
const VECTOR_CHECKS: usize = 8;

async fn check_writes(acked: &[String], forgotten: &[String]) -> Result<(), String> {
    let c = MasterClient::connect(&plan::master_addr().to_string()).await.map_err(|e| e.to_string())?;
    let router = Router::new(c, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let ids: Vec<ConceptId> = forgotten.iter().map(|l| ConceptId::from_label(l)).collect();
    for chunk in ids.chunks(2000) {
        let found = router.get_concepts(chunk).await.map_err(|e| format!("reading forgotten concepts: {e}"))?;
        if let Some(c) = found.first() {
            return Err(format!("concept {:?} is found after its retraction was acknowledged", c.label));
        }
    }
    let mut missing = Vec::new();
    for chunk in acked.chunks(2000) {
        let ids: Vec<ConceptId> = chunk.iter().map(|l| ConceptId::from_label(l)).collect();
        let found = router.get_concepts(&ids).await.map_err(|e| format!("reading acknowledged writes back: {e}"))?;
        let have: BTreeSet<String> = found.into_iter().map(|c| c.label).collect();
        missing.extend(chunk.iter().filter(|l| !have.contains(*l)).cloned());
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} acknowledged concepts lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    // Similarity search finds each by its vector (indexed or still pending, on whichever
    // replica leads now): evenly spaced writer concepts.
    let written: Vec<&String> = acked.iter().filter(|l| l.starts_with('w')).collect();
    for l in written.iter().step_by((written.len() / VECTOR_CHECKS).max(1)).take(VECTOR_CHECKS) {
        let found = router
            .search(&writer_vector(l), 1, Consistency::Strong, false)
            .await
            .map_err(|e| format!("searching for {l} by its vector: {e}"))?;
        let top = found.hits.first().and_then(|h| h.concept.as_ref()).map(|c| c.label.clone());
        if top.as_deref() != Some(l.as_str()) {
            return Err(format!("vector search: {l}'s own vector answers {top:?} first"));
        }
    }
    Ok(())
}

/// (source, target, confidence bits) of every edge, as its source's shard stores it (out) and
/// as its target's shard stores it (in), read from each shard's primary.
type EdgeSet = BTreeSet<(ConceptId, ConceptId, u32)>;

async fn read_edges(st: &pb::StatusResponse, ids: &BTreeSet<ConceptId>) -> Result<(EdgeSet, EdgeSet), String> {
    let map = st.map.clone().unwrap_or_default();
    let addrs: BTreeMap<u64, String> = st.nodes.iter().map(|n| (n.node_id, n.storage_addr.clone())).collect();
    let (mut out, mut inn) = (EdgeSet::new(), EdgeSet::new());
    for e in &map.shards {
        let mine: Vec<ConceptId> =
            ids.iter().filter(|id| (e.key_start..=e.key_end).contains(&id.placement_key())).copied().collect();
        if mine.is_empty() {
            continue;
        }
        let addr = addrs.get(&e.primary).ok_or_else(|| format!("shard {}: no address for its primary", e.shard))?;
        let c = sutra_grid::client::StorageClient::connect(addr)
            .await
            .map_err(|err| format!("shard {}: {err}", e.shard))?;
        for chunk in mine.chunks(limits::NEIGHBORS_IDS_MAX) {
            let r = c
                .neighbors(e.shard, chunk, &EdgeFilter::default(), 0, false)
                .await
                .map_err(|err| format!("shard {}: {err}", e.shard))?;
            for list in r.lists {
                let v = sutra_grid::wire::id_from_pb(&list.id.unwrap_or_default());
                for edge in list.edges {
                    let other = sutra_grid::wire::id_from_pb(&edge.other.unwrap_or_default());
                    let conf = edge.confidence.to_bits();
                    if edge.outgoing {
                        out.insert((v, other, conf));
                    } else {
                        inn.insert((other, v, conf));
                    }
                }
            }
        }
    }
    Ok((out, inn))
}

/// Waits (up to the convergence budget) for every shard's outbox to drain, then requires the
/// two sides of every edge to agree, every acknowledged association to be stored, and no
/// association that was never attempted.
async fn check_edges(st: &pb::StatusResponse, log: &EdgeLog) -> Result<usize, String> {
    if let Some(v) = log.ryw_violations.first() {
        return Err(format!("edges: {v} ({} of {} checks failed)", log.ryw_violations.len(), log.ryw_checked));
    }
    let ids: BTreeSet<ConceptId> = log.attempted.iter().flat_map(|(a, b)| [*a, *b]).collect();
    let start = Instant::now();
    loop {
        let problem = match read_edges(st, &ids).await {
            Err(e) => e,
            Ok((out, inn)) => {
                let keys: BTreeSet<(ConceptId, ConceptId)> = out.iter().map(|(a, b, _)| (*a, *b)).collect();
                let inn_keys: BTreeSet<(ConceptId, ConceptId)> = inn.iter().map(|(a, b, _)| (*a, *b)).collect();
                let expected = |want: Expect| log.expect.iter().filter(move |(_, e)| **e == want).map(|(k, _)| k);
                if let Some((a, b)) = expected(Expect::Present).find(|k| !keys.contains(k)) {
                    return Err(format!("edges: acknowledged association {a} -> {b} is not stored at its source"));
                }
                if let Some((a, b)) = expected(Expect::Absent).find(|k| keys.contains(k) || inn_keys.contains(k)) {
                    return Err(format!(
                        "edges: association {a} -> {b} is stored after its retraction was acknowledged"
                    ));
                }
                if let Some((a, b)) = keys.iter().find(|k| !log.attempted.contains(k)) {
                    return Err(format!("edges: association {a} -> {b} was never written"));
                }
                match (out.difference(&inn).next(), inn.difference(&out).next()) {
                    (None, None) => {
                        check_paths(&out).await?;
                        return Ok(out.len());
                    }
                    (Some((a, b, c)), _) => {
                        format!("out-edge {a} -> {b} ({}) has no matching in-edge", f32::from_bits(*c))
                    }
                    (_, Some((a, b, c))) => {
                        format!("in-edge {a} -> {b} ({}) has no matching out-edge", f32::from_bits(*c))
                    }
                }
            }
        };
        if start.elapsed() > CONVERGE_BUDGET {
            return Err(format!("edges: not consistent within {CONVERGE_BUDGET:?}: {problem}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Paths equal to a reference BFS over the final graph (architecture.md §7): the distributed search
/// (bidirectional, batched per shard, both directions) between the ends of some writers' chains
/// and between some unrelated concepts must find exactly the reference's shortest paths.
/// Asks the grid for shortest paths through the same API the HTTP server wraps
/// (`sutra_grid::api`), and compares them with a BFS over the final graph.
async fn check_paths(edges: &EdgeSet) -> Result<(), String> {
    use sutra_grid::api::{Api, ReasonRequest};
    let mut adj: BTreeMap<ConceptId, BTreeSet<ConceptId>> = BTreeMap::new();
    for (a, b, _) in edges {
        adj.entry(*a).or_default().insert(*b);
        adj.entry(*b).or_default().insert(*a);
    }
    let vertices: Vec<ConceptId> = adj.keys().copied().collect();
    if vertices.len() < 2 {
        return Ok(());
    }
    let c = MasterClient::connect(&plan::master_addr().to_string()).await.map_err(|e| e.to_string())?;
    let router = Router::new(c.clone(), Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let api = Api::new(router, c, sutra_grid::limits::VECTOR_DIM_DEFAULT);
    let (max_depth, max_paths) = (6, 32);
    let n = vertices.len();
    for k in 0..12 {
        let start = vertices[(k * 7919) % n];
        // Pairs a few hops apart along the ladder, and pairs anywhere.
        let mut end = start;
        if k % 2 == 0 {
            for _ in 0..(2 + k % 5) {
                end = adj[&end].iter().rev().find(|v| **v != start).copied().unwrap_or(end);
            }
        } else {
            end = vertices[(k * 104_729 + 1) % n];
        }
        let want = reference_paths(&adj, start, end, max_depth);
        let req = ReasonRequest {
            start: start.to_string(),
            end: end.to_string(),
            max_depth: Some(max_depth),
            max_paths: Some(max_paths),
            consistency: Some("eventual".into()),
            ..Default::default()
        };
        let r = api.reason(&req).await.map_err(|e| format!("paths: {start} -> {end}: {e}"))?;
        let got: BTreeSet<Vec<ConceptId>> = r
            .paths
            .iter()
            .map(|p| p.concepts.iter().map(|c| ConceptId::parse_hex(&c.id).unwrap_or_default()).collect())
            .collect();
        if got.len() != r.paths.len() {
            return Err(format!(
                "paths: {start} -> {end}: {} answers repeat a vertex sequence",
                r.paths.len() - got.len()
            ));
        }
        let ok = match &want {
            None => got.is_empty() && !r.found,
            Some(all) if all.len() <= max_paths => got == *all,
            Some(all) => got.len() == max_paths && got.is_subset(all),
        };
        if !ok {
            return Err(format!(
                "paths: {start} -> {end}: the grid found {} path(s) ({:?} hops), the reference {:?}",
                got.len(),
                got.iter().next().map(|p| p.len() - 1),
                want.as_ref().map(|w| (w.len(), w.iter().next().map(|p| p.len() - 1)))
            ));
        }
    }
    Ok(())
}

/// Every shortest vertex sequence from `s` to `t` of at most `max_depth` hops (None: none).
fn reference_paths(
    adj: &BTreeMap<ConceptId, BTreeSet<ConceptId>>,
    s: ConceptId,
    t: ConceptId,
    max_depth: usize,
) -> Option<BTreeSet<Vec<ConceptId>>> {
    let mut dist = BTreeMap::from([(s, 0usize)]);
    let mut queue = std::collections::VecDeque::from([s]);
    while let Some(u) = queue.pop_front() {
        for w in adj.get(&u).into_iter().flatten() {
            if !dist.contains_key(w) {
                dist.insert(*w, dist[&u] + 1);
                queue.push_back(*w);
            }
        }
    }
    let d = *dist.get(&t)?;
    if d > max_depth {
        return None;
    }
    let mut out = BTreeSet::new();
    let mut stack = vec![vec![s]];
    while let Some(p) = stack.pop() {
        let u = *p.last().unwrap_or(&s);
        if u == t {
            out.insert(p);
            if out.len() > 1000 {
                break;
            }
            continue;
        }
        for w in adj.get(&u).into_iter().flatten() {
            if dist.get(w) == Some(&(p.len())) && dist[w] <= d {
                let mut q = p.clone();
                q.push(*w);
                stack.push(q);
            }
        }
    }
    Some(out)
}

/// Quiescence: every replica of every shard reports the same commit LSN and state digest,
/// and the map's primary leads the map's epoch. Returns how long that took.
async fn check_replicas(st: &pb::StatusResponse) -> Result<f64, String> {
    let mut map = st.map.clone().unwrap_or_default();
    let addrs: BTreeMap<u64, String> = st.nodes.iter().map(|n| (n.node_id, n.storage_addr.clone())).collect();
    let start = Instant::now();
    let mut clients: BTreeMap<u64, sutra_grid::client::StorageClient> = BTreeMap::new();
    let master = MasterClient::connect(&plan::master_addr().to_string()).await.ok();
    loop {
        // The map may still move (the rebalancer transfers primaries after the heal): check
        // the latest one.
        if let Some(m) = &master {
            if let Ok(latest) = m.status().await {
                map = latest.map.unwrap_or(map);
            }
        }
        let mut problem = map.shards.iter().find(|e| e.splitting || e.merging).map(|e| {
            if e.splitting {
                format!("shard {} is still splitting into shard {}", e.shard, e.split_child)
            } else {
                format!("shard {} is still absorbing shard {}", e.shard, e.merge_from)
            }
        });
        'shards: for e in map.shards.iter().filter(|_| problem.is_none()) {
            let mut seen: Vec<(u64, u64, u64, u64)> = Vec::new();
            for r in &e.replicas {
                let c = match clients.get(r) {
                    Some(c) => c.clone(),
                    None => match sutra_grid::client::StorageClient::connect(addrs.get(r).map_or("", |a| a.as_str()))
                        .await
                    {
                        Ok(c) => {
                            clients.insert(*r, c.clone());
                            c
                        }
                        Err(err) => {
                            problem = Some(format!("shard {}: node {r}: {err}", e.shard));
                            break 'shards;
                        }
                    },
                };
                match c.shard_digest(e.shard).await {
                    Ok(i) if !i.serving => {
                        problem = Some(format!("shard {}: node {r} is not serving: {}", e.shard, i.fault));
                        break 'shards;
                    }
                    Ok(i) => seen.push((*r, i.commit_lsn, i.state_digest, i.primary_epoch)),
                    Err(err) => {
                        problem = Some(format!("shard {}: node {r}: {err}", e.shard));
                        break 'shards;
                    }
                }
            }
            if !seen.iter().any(|(n, _, _, led)| *n == e.primary && *led == e.epoch) {
                problem = Some(format!("shard {}: node {} does not lead epoch {}", e.shard, e.primary, e.epoch));
                break;
            }
            if seen.windows(2).any(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2)) {
                let v: Vec<String> =
                    seen.iter().map(|(n, c, d, _)| format!("node {n} commit {c} digest {d:016x}")).collect();
                problem = Some(format!("shard {}: replicas differ: {}", e.shard, v.join(", ")));
                break;
            }
        }
        match problem {
            None => return Ok(start.elapsed().as_secs_f64()),
            Some(p) if start.elapsed() > CONVERGE_BUDGET => {
                return Err(format!("replicas did not converge within {CONVERGE_BUDGET:?}: {p}"))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// With `--trace`: each process's roles (shards it is primary or replica for, with epochs)
/// and its states over time, as the master reported them.
fn trace_timeline(o: &Observed) {
    let Some(st) = &o.last else { return };
    let map = st.map.clone().unwrap_or_default();
    for n in &st.nodes {
        let Some(p) = proc_of(n) else { continue };
        let roles: Vec<String> = map
            .shards
            .iter()
            .filter(|e| e.replicas.contains(&n.node_id))
            .map(|e| {
                format!("shard {}{} @ epoch {}", e.shard, if e.primary == n.node_id { " primary" } else { "" }, e.epoch)
            })
            .collect();
        let states: Vec<String> = o
            .timeline
            .get(&p)
            .map(|v| {
                v.iter()
                    .map(|(t, s, r)| {
                        if r.is_empty() {
                            format!("{t:.3}s {}", s.name())
                        } else {
                            format!("{t:.3}s {} ({r})", s.name())
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        tracing::info!(
            "timeline {} (node {}): roles [{}]; states: {}",
            name(p),
            n.node_id,
            roles.join(", "),
            states.join(" → ")
        );
    }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied()
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

pub async fn run(sc: Arc<Scenario>) -> Result<Report, String> {
    let h = Handle::current();
    let run_seed = madsim::rand::random::<u64>();
    let mut rng = seeded_rng(run_seed);
    let c = sc.cluster.clone();
    // Derived, not drawn: drawing would shift every later choice of the run.
    let buggify_seed = run_seed ^ 0x6275_6767_6966_7921;
    let _buggify = Buggify::start(false, 0);
    sutra_grid::io::clock::clear();
    let master_addr = plan::master_addr();

    let master_disk = SimDisk::new(rng.random());
    let md = master_disk.clone();
    let membership = MembershipConfig {
        replace_after_ms: c
            .replace_down_after_s
            .map_or(MembershipConfig::default().replace_after_ms, |s| (s * 1000.0) as u64),
        learner_timeout_ms: 30_000,
        split_requests_per_s: c.split_requests_per_s.unwrap_or(limits::SPLIT_REQUESTS_PER_S_DEFAULT),
        split_after_ms: c.split_after_s.map_or(limits::SPLIT_LOAD_SUSTAIN_MS, |s| (s * 1000.0) as u64),
        split_cooldown_ms: c.split_cooldown_s.map_or(limits::SPLIT_COOLDOWN_MS, |s| (s * 1000.0) as u64),
        merge_requests_per_s: c.merge_requests_per_s.unwrap_or(limits::MERGE_REQUESTS_PER_S_DEFAULT),
        merge_after_ms: c.merge_after_s.map_or(limits::MERGE_COLD_MS, |s| (s * 1000.0) as u64),
        ..MembershipConfig::default()
    };
    let master = h
        .create_node()
        .name(plan::MASTER_NAME)
        .ip(master_addr.ip())
        .init(move || {
            let (disk, membership) = (md.clone(), membership.clone());
            async move {
                match Master::open_with(Arc::new(disk), "master", membership.clone()).await {
                    Ok(m) => {
                        if let Err(e) = sutra_grid::master::serve(m, master_addr, std::future::pending()).await {
                            tracing::error!(error = %e, "master stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "master failed to open its metadata"),
                }
            }
        })
        .build()
        .id();

    // Small, per-seed checkpoint triggers and WAL segments: checkpoints, trims, and snapshot
    // catch-up of lagging replicas happen in every seed. A checkpoint rebuilds the whole image,
    // so a trigger in the tens made seeds quadratic in their writes; a replica of a 30 s seed
    // holds about 5,000 items, so these still checkpoint it 2 to 50 times.
    let config = NodeConfig {
        vector_dim: boot::SIM_VECTOR_DIM,
        checkpoint_overlay_items: rng.random_range(100..2500),
        checkpoint_check_interval_ms: rng.random_range(20..400),
        wal_segment_bytes_max: rng.random_range(4096..256 * 1024),
        repl_retain_bytes: rng.random_range(1024..256 * 1024),
        ..NodeConfig::default()
    };
    let mut machines = Vec::new();
    let mut agents = Vec::new();
    for a in 0..c.agents {
        let seeds: Vec<u64> = (0..c.processes_per_agent).map(|_| rng.random()).collect();
        let machine = Machine::new(a, c.processes_per_agent, config.clone(), |s| seeds[s as usize]);
        if let Some([lo, hi]) = c.fsync_latency_ms {
            for slot in &machine.slots {
                let ms = if hi > lo { rng.random_range(lo..hi) } else { lo };
                let sync_latency = Duration::from_secs_f64(ms.max(0.0) / 1000.0);
                slot.disk.set_faults(SimDiskFaults { sync_latency, ..slot.disk.faults() });
            }
        }
        let processes: Vec<ProcessSpec> = (0..c.processes_per_agent)
            .map(|s| ProcessSpec {
                slot: s as u32,
                master: master_addr.to_string(),
                agent: plan::agent_name(a),
                storage_addr: SocketAddr::new(plan::process_ip(a, s), plan::STORAGE_PORT),
                gossip_addr: SocketAddr::new(plan::process_ip(a, s), plan::GOSSIP_PORT),
                data_dir: format!("node-{s}"),
                vector_dim: boot::SIM_VECTOR_DIM,
                generation: 0,
            })
            .collect();
        let cfg = AgentConfig { name: plan::agent_name(a), master: master_addr.to_string(), processes };
        let m = machine.clone();
        let id = h
            .create_node()
            .name(plan::agent_name(a))
            .ip(plan::agent_ip(a))
            .init(move || {
                let spawner = Arc::new(SimSpawner { machine: m.clone() });
                let cfg = cfg.clone();
                async move {
                    if let Err(e) = run_agent(spawner, cfg, std::future::pending()).await {
                        tracing::error!(error = %e, "agent stopped");
                    }
                }
            })
            .build()
            .id();
        machines.push(machine);
        agents.push(id);
    }
    let checker = h.create_node().name("checker").ip(plan::client_ip(0)).build();
    let clients = h.create_node().name("client-1").ip(plan::client_ip(1)).build();

    let base_sync = machines.iter().map(|m| m.slots.iter().map(|s| s.disk.faults().sync_latency).collect()).collect();
    let now = Instant::now();
    let g = Arc::new(Grid {
        sc: sc.clone(),
        h: h.clone(),
        master,
        master_disk,
        agents,
        machines,
        truth: Arc::new(Mutex::new(Truth {
            paused: BTreeSet::new(),
            cut: BTreeSet::new(),
            calm_since: BTreeMap::new(),
            global: BTreeSet::new(),
            global_calm_since: now,
            master_up: true,
            link_clogs: BTreeSet::new(),
            node_clogs: BTreeSet::new(),
            disk_faulted: BTreeSet::new(),
            drained: BTreeSet::new(),
        })),
        obs: Arc::new(Mutex::new(Observed {
            last: None,
            last_at: None,
            states: BTreeMap::new(),
            log: Vec::new(),
            timeline: BTreeMap::new(),
            violations: Vec::new(),
            initial_map: None,
            polls_ok: 0,
            polls_failed: 0,
            voter_changes: 0,
            last_voter_change: None,
        })),
        checker: checker.clone(),
        t0: now,
        repl: Arc::new(Mutex::new(ReplWitness::default())),
        last_primary: Mutex::new(None),
        base_sync,
        operator: tokio::sync::Mutex::new(()),
    });
    {
        let repl = g.repl.clone();
        witness::install(Some(Box::new(move |e| repl.lock().unwrap().see(e))));
    }
    let stop_obs = Arc::new(AtomicBool::new(false));
    let observer = checker.spawn(observe(g.clone(), stop_obs.clone()));

    // Machines that join later stay off until a step boots their agent.
    let first_joining = c.agents - c.joining_agents;
    for a in first_joining..c.agents {
        g.kill_agent(a, false);
    }
    // Boot: every process registered and Up, then `init`, then healthy.
    let total = g.procs().iter().filter(|p| p.0 < first_joining).count();
    let boot_start = Instant::now();
    loop {
        let up = g.obs.lock().unwrap().states.values().filter(|(s, _)| *s == NodeState::Up).count();
        if up == total {
            break;
        }
        if boot_start.elapsed() > BOOT_BUDGET {
            return Err(format!("boot: only {up} of {total} storage processes Up within {BOOT_BUDGET:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (shards, replication) = (c.shards, c.replication);
    let map = checker
        .spawn(async move {
            let mc = MasterClient::connect(&master_addr.to_string()).await.map_err(|e| e.to_string())?;
            let first = mc.init(shards, replication).await.map_err(|e| format!("init: {e}"))?;
            let again = mc.init(shards, replication).await.map_err(|e| format!("init again: {e}"))?;
            // Elections may have moved epochs and primaries in between (a big grid elects
            // its first primaries while the second call travels); ranges and voters may not.
            let layout = |m: &pb::ShardMap| -> Vec<_> {
                m.shards.iter().map(|e| (e.shard, e.key_start, e.key_end, e.replicas.clone())).collect()
            };
            if layout(&again) != layout(&first) {
                return Err("init is not idempotent: a second identical init changed the map".to_string());
            }
            Ok(first)
        })
        .await
        .map_err(|e| format!("init task: {e}"))??;
    g.obs.lock().unwrap().initial_map = Some(map.clone());
    wait_healthy(&g, BOOT_BUDGET, total).await.map_err(|e| format!("boot: {e}"))?;
    let boot_s = boot_start.elapsed().as_secs_f64();

    // Fault phase (buggify fires only here: the heal repairs everything).
    let _buggify = Buggify::start(sc.buggify, buggify_seed);
    let t0 = Instant::now();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let edge_log = Arc::new(Mutex::new(EdgeLog::default()));
    let stop_writers = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..sc.workload.writers)
        .map(|w| {
            clients.spawn(writer(
                w,
                sc.workload.batch_concepts,
                Duration::from_millis(sc.workload.pause_ms),
                acked.clone(),
                edge_log.clone(),
                g.repl.clone(),
                stop_writers.clone(),
            ))
        })
        .collect();
    let histories: Histories = Arc::new(Mutex::new(BTreeMap::new()));
    let registers: Vec<_> = (0..sc.workload.registers)
        .map(|c| {
            clients.spawn(register_client(c, Duration::from_millis(150), t0, histories.clone(), stop_writers.clone()))
        })
        .collect();
    let hot = map.shards.first().map_or((0, u64::MAX), |e| (e.key_start, e.key_end));
    let hots: Vec<_> = (0..sc.workload.hot_clients)
        .map(|c| clients.spawn(hot_client(c, hot, acked.clone(), stop_writers.clone())))
        .collect();
    // When the map first shows the hot shard split, when the hot range is first on two
    // shards led by two different nodes after that, and whether it still is when the load
    // stops (the `hot-split` check).
    let hot_watch = {
        let (g, stop) = (g.clone(), stop_writers.clone());
        checker.spawn(async move {
            let mut w = HotWatch::default();
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                let (narrowed, spread) = {
                    let o = g.obs.lock().unwrap();
                    let map = o.last.as_ref().and_then(|st| st.map.clone()).unwrap_or_default();
                    (map.shards.iter().any(|e| e.key_start == hot.0 && e.key_end < hot.1), hot_spread(&map, hot))
                };
                let now = t0.elapsed().as_secs_f64();
                if narrowed && w.split.is_none() {
                    w.split = Some(now);
                }
                if w.split.is_some() && spread && w.spread.is_none() {
                    w.spread = Some(now);
                }
                w.spread_at_end = spread;
                if stopping {
                    return w;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let steps = resolve(&sc, &mut rng);
    let measured = Arc::new(Mutex::new(Measured::default()));
    let mut tasks = Vec::new();
    for step in &steps {
        tokio::time::sleep_until(t0 + step.at).await;
        perform(&g, step, &measured, &mut tasks);
    }
    tokio::time::sleep_until(t0 + Duration::from_secs_f64(sc.duration_s)).await;
    stop_writers.store(true, Ordering::Relaxed);
    let mut write_failures = 0;
    for w in writers {
        write_failures += w.await.unwrap_or(0);
    }
    for r in registers {
        let _ = r.await;
    }
    for h in hots {
        let _ = h.await;
    }
    let hot_watch = hot_watch.await.unwrap_or_default();

    // Healing phase.
    let buggify_points = sutra_grid::io::buggify::enabled_points();
    sutra_grid::io::buggify::disable();
    g.heal_all(true);
    for id in g.procs().into_iter().filter_map(|p| g.sim_node(p)).chain([g.master]) {
        sutra_grid::io::clock::set_rate(id, 1.0);
    }
    g.note("heal: every fault undone, dead agents and master booted".into());
    let drained = std::mem::take(&mut g.truth.lock().unwrap().drained);
    for a in drained {
        let g2 = g.clone();
        let undone = clients.spawn(async move { drain_machine(&g2, a, false).await }).await;
        undone.map_err(|e| format!("{e}"))?.map_err(|e| format!("heal: {e}"))?;
        g.note(format!("heal: machine {a} back in service"));
    }
    let heal = wait_healthy(&g, Duration::from_secs_f64(sc.heal.budget_s), g.procs().len()).await;
    // Not healthy: report it now; an operator task waiting on what never finished would
    // otherwise hold the join below until the simulation's time limit.
    let heal_s = heal.map_err(|e| format!("liveness: {e}"))?;
    for t in tasks {
        let _ = t.await;
    }
    let hot_split_s = if sc.checks.contains(&Check::HotSplit) {
        let (split, spread) = check_hot_split(&hot_watch).map_err(|e| format!("hot-split: {e}"))?;
        Some(json!({"split_s": (split * 1000.0).round() / 1000.0, "spread_s": (spread * 1000.0).round() / 1000.0}))
    } else {
        None
    };
    let balance_s = if sc.checks.contains(&Check::Balance) {
        Some(wait_balanced(&g, Duration::from_secs_f64(sc.heal.budget_s)).await.map_err(|e| format!("balance: {e}"))?)
    } else {
        None
    };
    if sc.checks.contains(&Check::AckedWrites) {
        let acked = acked.lock().unwrap().clone();
        let forgotten = edge_log.lock().unwrap().forgotten.clone();
        clients.spawn(async move { check_writes(&acked, &forgotten).await }).await.map_err(|e| format!("{e}"))??;
    }
    let edges_checked = if sc.checks.contains(&Check::Edges) {
        let map = g.obs.lock().unwrap().last.clone().unwrap_or_default();
        let log = std::mem::take(&mut *edge_log.lock().unwrap());
        let ryw = log.ryw_checked;
        let n = clients.spawn(async move { check_edges(&map, &log).await }).await.map_err(|e| format!("{e}"))??;
        Some(json!({"edges": n, "read_your_writes": ryw}))
    } else {
        None
    };
    let converge_s = if sc.checks.contains(&Check::Replication) {
        let map = g.obs.lock().unwrap().last.clone().unwrap_or_default();
        Some(clients.spawn(async move { check_replicas(&map).await }).await.map_err(|e| format!("{e}"))??)
    } else {
        None
    };
    stop_obs.store(true, Ordering::Relaxed);
    let _ = observer.await;
    witness::install(None);
    let (rto_exit, rto_silent, rto_write_gap, repl_violations) = {
        let w = g.repl.lock().unwrap();
        let (mut exit, mut silent, mut gap) = (Vec::new(), Vec::new(), Vec::new());
        for (at, shard, reported) in &w.primary_faults {
            // The first write sent after the fault that committed on that shard.
            let first = w.acks.iter().filter(|(sent, _, s)| s == shard && sent > at).map(|(_, t, _)| *t).min();
            if let Some(t) = first {
                let ms = t.saturating_duration_since(*at).as_secs_f64() * 1000.0;
                if *reported {
                    exit.push(ms)
                } else {
                    silent.push(ms)
                }
            }
            // How long after a reported exit the first (eventually acknowledged) write to that
            // shard was sent: part of rto_exit_ms that is the workload's pace (its writers wait
            // for each batch before the next), not the failover.
            if let Some(s) = w.acks.iter().filter(|(sent, _, s)| s == shard && sent > at).map(|(s, _, _)| *s).min() {
                if *reported {
                    gap.push(s.saturating_duration_since(*at).as_secs_f64() * 1000.0);
                }
            }
        }
        (exit, silent, gap, w.violations.clone())
    };
    // Acknowledged per-shard write parts, sent to acknowledged (the pauses elections,
    // transfers and moves cost writers).
    let mut ack_ms: Vec<f64> = g
        .repl
        .lock()
        .unwrap()
        .acks
        .iter()
        .map(|(sent, acked, _)| acked.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
        .collect();
    ack_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| ack_ms.get(((ack_ms.len() as f64 * q) as usize).min(ack_ms.len().saturating_sub(1))).copied();

    let m = std::mem::take(&mut *measured.lock().unwrap());
    let o = g.obs.lock().unwrap();
    trace_timeline(&o);
    let mut failures = m.failures.clone();
    failures.extend(o.violations.iter().cloned());
    if let Some(max) = sc.rto_exit_max_ms {
        if let Some(worst) = rto_exit.iter().copied().max_by(f64::total_cmp).filter(|w| *w > max) {
            failures.push(format!(
                "recovery after a killed primary took {worst:.0} ms (bound {max:.0} ms; all: {:?})",
                rto_exit.iter().map(|v| v.round() as u64).collect::<Vec<_>>()
            ));
        }
    }
    if sc.checks.contains(&Check::Replication) {
        failures.extend(repl_violations);
    }
    let register_ops: usize = histories.lock().unwrap().values().map(|h| h.len()).sum();
    if sc.checks.contains(&Check::Linearizable) {
        failures.extend(check_linearizable(&histories.lock().unwrap()));
    }
    if !failures.is_empty() {
        let buggify = if buggify_points.is_empty() {
            String::new()
        } else {
            format!(" [buggify on: {}]", buggify_points.join(", "))
        };
        return Err(format!("{} check(s) failed: {}{buggify}", failures.len(), failures.join(" | ")));
    }
    let last = o.last.clone().unwrap_or_default();
    let end: Vec<(u64, &str)> = last.nodes.iter().map(|n| (n.node_id, state_name(n.state))).collect();
    let acked_n = acked.lock().unwrap().len();
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{:?}|{:?}|{acked_n}|{:?}", end, last.map, o.log).as_bytes());
    Ok(Report {
        json: json!({
            "scenario": sc.name,
            "boot_s": (boot_s * 1000.0).round() / 1000.0,
            "balance_s": balance_s,
            "hot_split": hot_split_s,
            "faults": steps.len(),
            "exit_detect_ms": {"median": median(&m.exit_detect_ms), "max": max(&m.exit_detect_ms), "n": m.exit_detect_ms.len()},
            "silent_detect_ms": {"median": median(&m.silent_detect_ms), "max": max(&m.silent_detect_ms), "n": m.silent_detect_ms.len()},
            "restart_ms": {"median": median(&m.restart_ms), "max": max(&m.restart_ms)},
            "expects": m.expects,
            "replaced_ms": {"median": median(&m.replaced_ms), "max": max(&m.replaced_ms), "n": m.replaced_ms.len()},
            "voter_changes": o.voter_changes,
            "shards_end": last.map.as_ref().map_or(0, |m| m.shards.len()),
            "split_ms": {"median": median(&m.split_ms), "max": max(&m.split_ms), "n": m.split_ms.len(), "refused": m.splits_refused},
            "merge_ms": {"median": median(&m.merge_ms), "max": max(&m.merge_ms), "n": m.merge_ms.len(), "refused": m.merges_refused},
            // Seconds into the fault phase (negative: during boot).
            "last_voter_change_s": o.last_voter_change.map(|t| {
                let s = if t >= t0 { t.duration_since(t0).as_secs_f64() } else { -t0.duration_since(t).as_secs_f64() };
                (s * 1000.0).round() / 1000.0
            }),
            "writes_acked": acked_n,
            "write_failures": write_failures,
            "heal_s": (heal_s * 1000.0).round() / 1000.0,
            "converge_s": converge_s,
            "write_ack_ms": {"median": pct(0.5), "p99": pct(0.99), "max": ack_ms.last().copied(), "n": ack_ms.len()},
            "rto_exit_ms": rto_exit,
            "rto_exit_write_gap_ms": rto_write_gap,
            "rto_silent_ms": rto_silent,
            "register_ops": register_ops,
            "edges_checked": edges_checked,
            "status_polls": o.polls_ok,
            "status_polls_failed": o.polls_failed,
            "buggify_points": buggify_points.len(),
        }),
        end_state_hash: hash,
    })
}
