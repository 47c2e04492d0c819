//! Scenario files (`chaos-scenarios/*.yaml`): the cluster shape, the fault phase's length, a
//! workload, a fault timeline and/or swarm fault rates drawn per seed, the checks to run, and
//! the healing phase's liveness budget. Parsed with serde-saphyr; a bad file gets an error
//! naming the field and the line. See `chaos-scenarios/README.md` for the format.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub cluster: Shape,
    /// Length of the fault phase in simulated seconds (after the grid is up and initialised).
    pub duration_s: f64,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub timeline: Vec<Step>,
    #[serde(default)]
    pub swarm: Option<Swarm>,
    pub checks: Vec<Check>,
    pub heal: Heal,
    /// Turn on the grid's buggify points (failure-handling branches made to run on purpose).
    #[serde(default)]
    pub buggify: bool,
    /// Fail the seed if writes to a shard whose primary was killed (its agent reporting the
    /// exit) took longer than this to be acknowledged again: recovery must not wait for the
    /// killed process to restart.
    #[serde(default)]
    pub rto_exit_max_ms: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub agents: u8,
    pub processes_per_agent: u8,
    pub shards: u32,
    #[serde(default = "three")]
    pub replication: u32,
    /// The master replaces a replica whose node has been Down this long (default: the
    /// production setting, 300 s, so only scenarios that lower it see replacements).
    #[serde(default)]
    pub replace_down_after_s: Option<f64>,
    /// The last this many agents are off at boot (the grid is initialised without them) until
    /// a `restart-agent` step boots them: machines joining a running grid.
    #[serde(default)]
    pub joining_agents: u8,
    /// Each disk's fsync takes a latency drawn once per disk from `[lo, hi]` ms (default 0:
    /// a write and its fsync are one step). Non-zero opens the window where a crash lands
    /// between a group's write and its fsync while peers' answers keep arriving.
    #[serde(default)]
    pub fsync_latency_ms: Option<[f64; 2]>,
    /// The master's split policy, scaled down to simulation loads (default: the production
    /// thresholds, which simulated loads never reach): split a shard whose primary serves this
    /// many requests per second for `split_after_s`, not within `split_cooldown_s` of a split.
    #[serde(default)]
    pub split_requests_per_s: Option<f64>,
    #[serde(default)]
    pub split_after_s: Option<f64>,
    #[serde(default)]
    pub split_cooldown_s: Option<f64>,
    /// The master's merge policy, scaled down likewise (default: the production 200/s for
    /// 60 s): two neighbours serving under this many requests per second together, each under
    /// half of it for `merge_after_s`, merge. It never goes below the shards `init` made.
    #[serde(default)]
    pub merge_requests_per_s: Option<f64>,
    #[serde(default)]
    pub merge_after_s: Option<f64>,
}

fn three() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Concurrent writers routing batches through the master's shard map.
    #[serde(default)]
    pub writers: u32,
    /// Concepts per batch.
    #[serde(default = "three")]
    pub batch_concepts: u32,
    /// Pause between one writer's batches.
    #[serde(default = "default_pause")]
    pub pause_ms: u64,
    /// Register clients: each writes unique values to, and strongly reads, a few shared keys;
    /// the history feeds the `linearizable` check.
    #[serde(default)]
    pub registers: u32,
    /// Hot clients: each writes concepts whose keys all fall in the first shard's initial
    /// range and reads them back strongly, a skewed load on one shard (`hot-split` check).
    #[serde(default)]
    pub hot_clients: u32,
}

fn default_pause() -> u64 {
    20
}

impl Default for Workload {
    fn default() -> Self {
        Workload { writers: 0, batch_concepts: 3, pause_ms: default_pause(), registers: 0, hot_clients: 0 }
    }
}

/// One timeline entry: at `at_s` (plus a per-seed draw from `[0, jitter_s]`), do `action`.
#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub at_s: f64,
    #[serde(default)]
    pub jitter_s: f64,
    #[serde(flatten)]
    pub action: Action,
}

/// A storage process: `"A.S"` (agent A, slot S), `"random"` (drawn per seed), `"primary"`
/// (when the step runs: the current primary of a shard drawn per seed), `"primary:N"` (when the
/// step runs: the current primary of shard N, so repeated kills chase one shard), `"last-primary"` (the
/// process the last `primary` named), `"follower-1"` / `"follower-2"` (when the step runs: the
/// first / second voter other than the primary of the shard the last `primary` drew), or
/// `"same"` (the process the previous step named).
pub type NodeRef = String;
/// A machine: `"A"`, `"random"`, `"same"`, or `"last-primary"` (when the step runs: the machine
/// of the process the last `primary` named).
pub type AgentRef = String;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Crash one storage process; its agent reports the exit and restarts it.
    KillProcess {
        node: NodeRef,
    },
    /// The agent process dies and its children with it; nobody reports anything.
    KillAgent {
        agent: AgentRef,
    },
    /// The whole machine vanishes: agent and processes, and unsynced disk data is lost or torn.
    KillMachine {
        agent: AgentRef,
    },
    /// Every machine loses power at once (unsynced disk data lost or torn everywhere) and
    /// boots again after `down_s`.
    PowerLoss {
        #[serde(default)]
        down_s: f64,
    },
    /// Boot the machine's agent again (it restarts its processes).
    RestartAgent {
        agent: AgentRef,
    },
    /// Crash the master (its unsynced metadata is lost) and boot it again after `down_s`.
    RestartMaster {
        #[serde(default)]
        down_s: f64,
    },
    Pause {
        node: NodeRef,
    },
    Resume {
        node: NodeRef,
    },
    /// Cut a process off from every other storage process, both ways; the master still reaches it.
    IsolateFromPeers {
        node: NodeRef,
    },
    /// Cut a process off from everything, the master included.
    Isolate {
        node: NodeRef,
    },
    /// Cut a process off from the master and every other storage process, both ways; clients
    /// still reach it. A deposed primary clients can read from: its lease is all that stops it.
    IsolateFromServers {
        node: NodeRef,
    },
    /// Split the storage processes into two halves that cannot reach each other.
    PartitionHalves,
    /// Drop everything `from` sends to `to`.
    CutOneWay {
        from: NodeRef,
        to: NodeRef,
    },
    /// Drop this fraction of all packets.
    PacketLoss {
        rate: f64,
    },
    /// Every message takes between `min_ms` and `max_ms`.
    SlowLinks {
        min_ms: u64,
        max_ms: u64,
    },
    /// Make a process's disk misbehave; `clear` ends it (a restart is still needed to recover).
    DiskFault {
        node: NodeRef,
        fault: DiskFaultKind,
    },
    /// From now on `node`'s lease clock (or the master's, with `node: master`) runs at `rate`
    /// seconds per real second (0.1 to 10). Leases tolerate 10% between two clocks; the heal
    /// sets every rate back to 1.
    ClockSkew {
        node: NodeRef,
        rate: f64,
    },
    /// An operator drains every process on the machine (`sutra drain`): its replicas must move
    /// to other machines. Retried for 10 s across master restarts; no answer fails the seed.
    Drain {
        agent: AgentRef,
    },
    /// The operator takes the machine's processes back into service.
    Undrain {
        agent: AgentRef,
    },
    /// An operator splits a shard at the middle of its range (`sutra split`): `shard: k` is
    /// the k-th shard of the latest map (mod the shard count), since a split's new ids are
    /// not known in advance. Retried for 10 s while the master is away; a refusal (the shard
    /// is busy moving a replica) is noted, not a failure. Every split started must finish
    /// by the end of the run.
    Split {
        #[serde(default)]
        shard: u32,
    },
    /// An operator merges a shard with its neighbour (`sutra merge`): `shard: k` is the k-th
    /// shard of the latest map (mod the shard count), merged with the one after it (the one
    /// before it for the last). Retried for 10 s while the master is away; a refusal (a shard
    /// of the pair is busy) is noted, not a failure. Every merge started must finish by the
    /// end of the run.
    Merge {
        #[serde(default)]
        shard: u32,
    },
    /// Undo every network fault and resume every paused process.
    Heal,
    /// The master's status must show `node` in `state` within `within_s` of this step.
    Expect {
        node: NodeRef,
        state: ExpectState,
        within_s: f64,
    },
    /// Within `within_s`, no shard may keep a replica on the machine's processes: each has
    /// `replication` voters elsewhere and no membership change in progress.
    ExpectReplaced {
        agent: AgentRef,
        within_s: f64,
    },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFaultKind {
    /// The next fsync fails with EIO (fatal for the shard that sees it).
    FsyncError,
    /// The disk fills up a few KiB from now.
    Full,
    /// One read in five comes back with a bit flipped (half of them in its last 256 bytes).
    ReadBitflips,
    /// Every fsync takes `SLOW_FSYNC` (40 ms): a failing or contended disk, slower than a
    /// network round trip, so peers acknowledge before this replica's own fsync ends.
    SlowFsync,
    /// Back to a healthy disk.
    Clear,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ExpectState {
    Up,
    Degraded,
    Down,
}

/// Random faults drawn per seed (FoundationDB/TigerBeetle style), each repaired after a while.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swarm {
    /// How many faults, drawn from `[min, max]` per seed.
    pub faults: [u32; 2],
    pub kinds: Vec<SwarmKind>,
    /// A fault is repaired (restart, resume, heal) this long after it starts, drawn per fault.
    #[serde(default = "default_repair")]
    pub repair_after_s: [f64; 2],
}

fn default_repair() -> [f64; 2] {
    [1.0, 6.0]
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SwarmKind {
    KillProcess,
    KillAgent,
    KillMachine,
    PowerLoss,
    RestartMaster,
    Pause,
    IsolateFromPeers,
    Isolate,
    PartitionHalves,
    CutOneWay,
    PacketLoss,
    SlowLinks,
    DiskFault,
    /// One process's (or the master's) lease clock runs up to 4% fast or slow.
    ClockSkew,
    /// A process cut off from the master and its peers while clients still reach it (a deposed
    /// primary whose lease is all that keeps its strong reads honest).
    IsolateFromServers,
    /// An operator drains a machine, and takes it back into service at the repair.
    Drain,
    /// An operator splits a shard (no repair: the split is permanent).
    Split,
    /// An operator merges two neighbouring shards (no repair).
    Merge,
}

impl SwarmKind {
    pub const ALL: &'static [SwarmKind] = &[
        SwarmKind::KillProcess,
        SwarmKind::KillAgent,
        SwarmKind::KillMachine,
        SwarmKind::PowerLoss,
        SwarmKind::RestartMaster,
        SwarmKind::Pause,
        SwarmKind::IsolateFromPeers,
        SwarmKind::Isolate,
        SwarmKind::PartitionHalves,
        SwarmKind::CutOneWay,
        SwarmKind::PacketLoss,
        SwarmKind::SlowLinks,
        SwarmKind::DiskFault,
        SwarmKind::ClockSkew,
        SwarmKind::IsolateFromServers,
        SwarmKind::Drain,
        SwarmKind::Split,
        SwarmKind::Merge,
    ];
}

impl Action {
    /// The swarm kind that draws this step, or why none does. The match is exhaustive so that
    /// a new step cannot be added without deciding how the swarm covers it; a test requires
    /// `chaos-scenarios/swarm.yaml` to list every kind.
    pub fn swarm_kind(&self) -> Result<SwarmKind, &'static str> {
        Ok(match self {
            Action::KillProcess { .. } => SwarmKind::KillProcess,
            Action::KillAgent { .. } => SwarmKind::KillAgent,
            Action::KillMachine { .. } => SwarmKind::KillMachine,
            Action::PowerLoss { .. } => SwarmKind::PowerLoss,
            Action::RestartMaster { .. } => SwarmKind::RestartMaster,
            Action::Pause { .. } => SwarmKind::Pause,
            Action::IsolateFromPeers { .. } => SwarmKind::IsolateFromPeers,
            Action::Isolate { .. } => SwarmKind::Isolate,
            Action::IsolateFromServers { .. } => SwarmKind::IsolateFromServers,
            Action::PartitionHalves => SwarmKind::PartitionHalves,
            Action::CutOneWay { .. } => SwarmKind::CutOneWay,
            Action::PacketLoss { .. } => SwarmKind::PacketLoss,
            Action::SlowLinks { .. } => SwarmKind::SlowLinks,
            Action::DiskFault { .. } => SwarmKind::DiskFault,
            Action::ClockSkew { .. } => SwarmKind::ClockSkew,
            Action::Drain { .. } => SwarmKind::Drain,
            Action::Split { .. } => SwarmKind::Split,
            Action::Merge { .. } => SwarmKind::Merge,
            Action::RestartAgent { .. } => return Err("the repair of kill-agent and kill-machine"),
            Action::Resume { .. } => return Err("the repair of pause"),
            Action::Undrain { .. } => return Err("the repair of drain"),
            Action::Heal => return Err("the repair of every network fault"),
            Action::Expect { .. } | Action::ExpectReplaced { .. } => return Err("an assertion, not a fault"),
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Every poll: the map is valid (each key range owned exactly once, replicas on distinct
    /// registered nodes), ranges are as `init` made them, and only elections and one-member
    /// membership changes moved it (version and epochs never go back; one epoch never names
    /// two primaries; a voter set changes by at most one member per epoch).
    ShardMap,
    /// No node is Down or Degraded while it has been healthy and fully connected for a while,
    /// and `expect` steps hold.
    NodeStates,
    /// A killed process is Down within 100 ms (its agent's report) and Up again within 5 s.
    AgentRestarts,
    /// A silently vanished machine's processes are Down within 3 heartbeat intervals.
    SilentDetection,
    /// After a master restart its node registry is what it was before, and its map too or
    /// moved on only by elections.
    MasterMetadata,
    /// After the heal the rebalancer evens the load: every Up node holds between `min` and
    /// 1.25 × `min` replicas and leads at most one shard more than an even share, with no
    /// membership change under way, within the heal budget.
    Balance,
    /// The hot clients' skewed load makes the split policy split the first shard within 15 s
    /// of the fault phase's start, and after the heal its initial range is covered by at
    /// least two shards led by two different nodes (the load spread).
    HotSplit,
    /// Every acknowledged write is readable after the heal.
    AckedWrites,
    /// Replication (architecture.md §5): one primary per (shard, epoch); no replica's commit LSN goes
    /// back; at quiescence every replica of a shard has the same commit LSN and state digest.
    Replication,
    /// Strong reads and writes on a register workload are linearizable per key (Wing–Gong).
    Linearizable,
    /// Both sides of every edge (architecture.md §5 rule 7): at quiescence each out-edge has its
    /// in-edge on the target's shard with the same confidence and vice versa, every
    /// acknowledged association is stored, and none that was never attempted appears.
    Edges,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heal {
    /// After the fault phase everything is repaired; the grid must be healthy within this.
    pub budget_s: f64,
}

/// Parses and checks a scenario. Errors name the field and the line.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, String> {
    let s: Scenario = serde_saphyr::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    validate(&s).map_err(|e| format!("{origin}: {e}"))?;
    Ok(s)
}

/// Machines a scenario may run (the scale scenarios' size; addresses allow up to 250).
const AGENTS_MAX: u8 = 128;
/// Shards a scenario may create.
const SHARDS_MAX: u32 = 4096;

fn validate(s: &Scenario) -> Result<(), String> {
    let c = &s.cluster;
    if !(1..=AGENTS_MAX).contains(&c.agents) {
        return Err(format!("cluster.agents must be 1 to {AGENTS_MAX}; got {}", c.agents));
    }
    if !(1..=8).contains(&c.processes_per_agent) {
        return Err(format!("cluster.processes_per_agent must be 1 to 8; got {}", c.processes_per_agent));
    }
    if s.checks.contains(&Check::Linearizable) && s.workload.registers == 0 {
        return Err("the linearizable check needs workload.registers > 0 (register clients)".into());
    }
    if s.workload.registers > 16 {
        return Err(format!("workload.registers must be at most 16; got {}", s.workload.registers));
    }
    if c.joining_agents >= c.agents {
        return Err(format!("cluster.joining_agents must be below agents ({}); got {}", c.agents, c.joining_agents));
    }
    let nodes = (c.agents - c.joining_agents) as u32 * c.processes_per_agent as u32;
    if c.replication == 0 || c.replication > nodes {
        return Err(format!("cluster.replication must be 1 to the node count ({nodes}); got {}", c.replication));
    }
    if c.fsync_latency_ms
        .is_some_and(|[lo, hi]| !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 100.0))
    {
        return Err("cluster.fsync_latency_ms must be [lo, hi] with 0 <= lo <= hi <= 100".into());
    }
    if c.split_requests_per_s.is_some_and(|r| !(1.0..=1e6).contains(&r))
        || c.split_after_s.is_some_and(|t| !(0.1..=600.0).contains(&t))
        || c.split_cooldown_s.is_some_and(|t| !(0.0..=600.0).contains(&t))
    {
        return Err(
            "cluster.split_requests_per_s must be 1 to 1e6, split_after_s 0.1 to 600, split_cooldown_s 0 to 600".into(),
        );
    }
    if c.merge_requests_per_s.is_some_and(|r| !(0.1..=1e5).contains(&r))
        || c.merge_after_s.is_some_and(|t| !(0.1..=600.0).contains(&t))
    {
        return Err("cluster.merge_requests_per_s must be 0.1 to 1e5, merge_after_s 0.1 to 600".into());
    }
    if c.replace_down_after_s.is_some_and(|t| !(0.5..=600.0).contains(&t)) {
        return Err("cluster.replace_down_after_s must be 0.5 to 600".into());
    }
    if c.shards == 0 || c.shards > SHARDS_MAX {
        return Err(format!("cluster.shards must be 1 to {SHARDS_MAX}; got {}", c.shards));
    }
    if !(s.duration_s > 0.0 && s.duration_s <= 600.0) {
        return Err(format!("duration_s must be in (0, 600]; got {}", s.duration_s));
    }
    if !(s.heal.budget_s > 0.0 && s.heal.budget_s <= 300.0) {
        return Err(format!("heal.budget_s must be in (0, 300]; got {}", s.heal.budget_s));
    }
    if s.workload.writers > 64 || !(1..=100).contains(&s.workload.batch_concepts) {
        return Err("workload: writers must be at most 64 and batch_concepts 1 to 100".into());
    }
    for (i, st) in s.timeline.iter().enumerate() {
        let at = |m: String| Err(format!("timeline[{i}]: {m}"));
        if !(st.at_s >= 0.0 && st.at_s + st.jitter_s <= s.duration_s && st.jitter_s >= 0.0) {
            return at(format!("at_s + jitter_s must lie within the fault phase (0 to {} s)", s.duration_s));
        }
        let nodes_named: Vec<&String> = match &st.action {
            Action::KillProcess { node }
            | Action::Pause { node }
            | Action::Resume { node }
            | Action::IsolateFromPeers { node }
            | Action::Isolate { node }
            | Action::IsolateFromServers { node }
            | Action::DiskFault { node, .. }
            | Action::Expect { node, .. } => vec![node],
            Action::CutOneWay { from, to } => vec![from, to],
            Action::ClockSkew { node, .. } if node != "master" => vec![node],
            _ => vec![],
        };
        for n in nodes_named {
            check_node_ref(n, c).or_else(&at)?;
        }
        match &st.action {
            Action::KillAgent { agent }
            | Action::KillMachine { agent }
            | Action::RestartAgent { agent }
            | Action::Drain { agent }
            | Action::Undrain { agent } => check_agent_ref(agent, c).or_else(&at)?,
            Action::PacketLoss { rate } if !(0.0..=0.5).contains(rate) => {
                return at(format!("packet-loss rate must be 0 to 0.5; got {rate}"))
            }
            Action::SlowLinks { min_ms, max_ms } if min_ms > max_ms || *max_ms > 5_000 => {
                return at("slow-links needs min_ms <= max_ms <= 5000".into())
            }
            Action::ExpectReplaced { agent, .. } if check_agent_ref(agent, c).is_err() => {
                check_agent_ref(agent, c).or_else(&at)?
            }
            Action::Expect { within_s, .. } | Action::ExpectReplaced { within_s, .. }
                if !(*within_s > 0.0 && *within_s <= 120.0) =>
            {
                return at(format!("expect within_s must be in (0, 120]; got {within_s}"))
            }
            Action::ClockSkew { rate, .. } if !(0.1..=10.0).contains(rate) => {
                return at(format!("clock-skew rate must be 0.1 to 10; got {rate}"))
            }
            Action::RestartMaster { down_s } if !(0.0..=60.0).contains(down_s) => {
                return at(format!("restart-master down_s must be 0 to 60; got {down_s}"))
            }
            _ => {}
        }
    }
    if let Some(w) = &s.swarm {
        if w.faults[0] > w.faults[1] || w.faults[1] > 100 {
            return Err("swarm.faults must be [min, max] with min <= max <= 100".into());
        }
        if w.kinds.is_empty() {
            return Err("swarm.kinds must name at least one fault".into());
        }
        if !(w.repair_after_s[0] >= 0.0 && w.repair_after_s[0] <= w.repair_after_s[1]) {
            return Err("swarm.repair_after_s must be [min, max] with 0 <= min <= max".into());
        }
    }
    Ok(())
}

fn check_node_ref(r: &str, c: &Shape) -> Result<(), String> {
    if ["random", "same", "primary", "last-primary", "follower-1", "follower-2"].contains(&r) {
        return Ok(());
    }
    if let Some(n) = r.strip_prefix("primary:") {
        return match n.parse::<u32>() {
            Ok(n) if n < c.shards && n < 250 => Ok(()),
            _ => Err(format!("node {r:?}: shard {n} is not one of 0..{}", c.shards)),
        };
    }
    let (a, s) = r.split_once('.').ok_or_else(|| {
        format!(
            "node {r:?} must be \"A.S\", \"random\", \"same\", \"primary\", \"primary:N\", \"last-primary\", \"follower-1\" or \"follower-2\""
        )
    })?;
    match (a.parse::<u8>(), s.parse::<u8>()) {
        (Ok(a), Ok(s)) if a < c.agents && s < c.processes_per_agent => Ok(()),
        _ => Err(format!(
            "node {r:?} is not in the cluster (agents 0..{}, slots 0..{})",
            c.agents, c.processes_per_agent
        )),
    }
}

fn check_agent_ref(r: &str, c: &Shape) -> Result<(), String> {
    if r == "random" || r == "same" || r == "last-primary" {
        return Ok(());
    }
    match r.parse::<u8>() {
        Ok(a) if a < c.agents => Ok(()),
        _ => Err(format!("agent {r:?} must be 0..{}, \"random\", \"same\" or \"last-primary\"", c.agents)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "name: t\ncluster: {agents: 3, processes_per_agent: 2, shards: 6}\nduration_s: 10\n\
        timeline:\n  - {at_s: 1, do: kill-process, node: random}\n  - {at_s: 1, do: expect, node: same, state: Down, within_s: 0.1}\n\
        checks: [shard-map]\nheal: {budget_s: 10}\n";

    /// Every fault step the harness knows is drawn by the swarm scenario.
    #[test]
    fn swarm_draws_every_fault_step() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../chaos-scenarios/swarm.yaml");
        let text = std::fs::read_to_string(dir).unwrap();
        let sc = parse(&text, dir).unwrap();
        let kinds = sc.swarm.expect("swarm.yaml has a swarm section").kinds;
        for k in SwarmKind::ALL {
            assert!(kinds.contains(k), "swarm.yaml does not draw {k:?}; add it to swarm.kinds");
        }
        // ALL lists every variant: this match fails to compile when one is added.
        for k in SwarmKind::ALL {
            match k {
                SwarmKind::KillProcess
                | SwarmKind::KillAgent
                | SwarmKind::KillMachine
                | SwarmKind::PowerLoss
                | SwarmKind::RestartMaster
                | SwarmKind::Pause
                | SwarmKind::IsolateFromPeers
                | SwarmKind::Isolate
                | SwarmKind::PartitionHalves
                | SwarmKind::CutOneWay
                | SwarmKind::PacketLoss
                | SwarmKind::SlowLinks
                | SwarmKind::DiskFault
                | SwarmKind::ClockSkew
                | SwarmKind::IsolateFromServers
                | SwarmKind::Drain
                | SwarmKind::Split
                | SwarmKind::Merge => {}
            }
        }
        assert_eq!(SwarmKind::ALL.len(), 18, "a kind added to ALL must be added to the match above");
    }

    #[test]
    fn every_scenario_file_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../chaos-scenarios");
        let mut n = 0;
        for f in std::fs::read_dir(dir).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                parse(&text, &path.display().to_string()).unwrap();
                n += 1;
            }
        }
        assert!(n >= 10, "only {n} scenario files in {dir}");
    }

    #[test]
    fn a_good_file_parses() {
        let s = parse(OK, "t.yaml").unwrap();
        assert_eq!(s.timeline.len(), 2);
        assert_eq!(s.timeline[0].action, Action::KillProcess { node: "random".into() });
        assert_eq!(s.cluster.replication, 3);
    }

    #[test]
    fn errors_name_the_field_and_the_line() {
        let bad = OK.replace("node: random}", "nod: random}");
        let e = parse(&bad, "t.yaml").unwrap_err();
        assert!(e.contains("line 5") && e.contains("nod"), "{e}");
        let bad = OK.replace("kill-process", "kill-proces");
        let e = parse(&bad, "t.yaml").unwrap_err();
        assert!(e.contains("line 5") && e.contains("kill-proces"), "{e}");
        let bad = OK.replace("duration_s: 10", "duration_s: 10\nbogus: 1");
        let e = parse(&bad, "t.yaml").unwrap_err();
        assert!(e.contains("line 4") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_step() {
        let bad = OK.replace("node: random}", "node: \"7.0\"}");
        let e = parse(&bad, "t.yaml").unwrap_err();
        assert!(e.contains("timeline[0]") && e.contains("7.0"), "{e}");
        let bad = OK.replace("at_s: 1, do: kill", "at_s: 11, do: kill");
        assert!(parse(&bad, "t.yaml").unwrap_err().contains("timeline[0]"));
        let bad = OK.replace("agents: 3", "agents: 1");
        assert!(parse(&bad, "t.yaml").unwrap_err().contains("replication"));
        // Joining machines do not count towards what init needs, and one must be there at boot.
        let bad = OK.replace("agents: 3,", "agents: 3, joining_agents: 3,");
        assert!(parse(&bad, "t.yaml").unwrap_err().contains("joining_agents"));
        let bad = OK.replace("agents: 3,", "agents: 3, joining_agents: 2,");
        assert!(parse(&bad, "t.yaml").unwrap_err().contains("replication"));
        let ok = OK.replace("agents: 3,", "agents: 5, joining_agents: 2,");
        assert_eq!(parse(&ok, "t.yaml").unwrap().cluster.joining_agents, 2);
        // Machine targets resolved when the step runs, and the slow disk.
        let ok = OK.replace("checks:", "  - {at_s: 2, do: kill-machine, agent: last-primary}\n  - {at_s: 3, do: disk-fault, node: primary, fault: slow-fsync}\nchecks:");
        assert_eq!(parse(&ok, "t.yaml").unwrap().timeline.len(), 4);
    }
}
