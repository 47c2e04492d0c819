//! The master's state as a pure state machine: registrations, heartbeats, exit reports and
//! the shard map go in with the time; node states, assignments and status come out. The
//! persisted part ([`Meta`]) changes only through [`MetaOp`]s, which the caller logs before
//! acknowledging; the live part (heartbeats, reports) is rebuilt after a master restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use sutra_proto as pb;

use crate::ids::NodeId;
use crate::limits;
use crate::shardmap::{self, NodeInfo, ShardMap, ShardMapError};

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum NodeState {
    Up,
    Degraded,
    Down,
    Draining,
}

impl NodeState {
    pub fn to_pb(self) -> pb::NodeState {
        match self {
            NodeState::Up => pb::NodeState::Up,
            NodeState::Degraded => pb::NodeState::Degraded,
            NodeState::Down => pb::NodeState::Down,
            NodeState::Draining => pb::NodeState::Draining,
        }
    }

    pub fn from_pb(s: i32) -> Option<NodeState> {
        match pb::NodeState::try_from(s).ok()? {
            pb::NodeState::Up => Some(NodeState::Up),
            pb::NodeState::Degraded => Some(NodeState::Degraded),
            pb::NodeState::Down => Some(NodeState::Down),
            pb::NodeState::Draining => Some(NodeState::Draining),
            pb::NodeState::Unspecified => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeState::Up => "Up",
            NodeState::Degraded => "Degraded",
            NodeState::Down => "Down",
            NodeState::Draining => "Draining",
        }
    }
}

/// A registered storage node, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub agent: String,
    pub slot: u32,
    pub storage_addr: String,
    pub gossip_addr: String,
    pub draining: bool,
}

/// Everything the master must not lose across a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Agent name → agent id.
    pub agents: BTreeMap<String, u64>,
    pub nodes: BTreeMap<u64, NodeRecord>,
    /// Next agent or node id to hand out; ids are never reused.
    pub next_id: u64,
    /// Version 0: the grid has not been initialised.
    pub map: ShardMap,
    pub replication: u32,
}

/// One logged change to [`Meta`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaOp {
    Agent {
        name: String,
        id: u64,
    },
    Node {
        id: u64,
        record: NodeRecord,
    },
    Map {
        map: ShardMap,
        replication: u32,
    },
    Drain {
        id: u64,
        draining: bool,
    },
    /// A map change as it is logged: the entries that changed or appeared and the ids that
    /// left, not the whole map (at 3,000 shards a whole map is about 550 KB of JSON per
    /// election; this is a few hundred bytes). See [`MetaOp::logged_against`].
    MapChange {
        version: u64,
        replication: u32,
        next_id: u32,
        initial_shards: u32,
        changed: Vec<shardmap::ShardEntry>,
        removed: Vec<u32>,
    },
}

impl MetaOp {
    /// What to log for this op on top of `before`: a map change as a [`MetaOp::MapChange`]
    /// once there is a map, anything else as it is. Applying it to `before` gives what
    /// applying `self` does.
    pub fn logged_against(&self, before: &Meta) -> MetaOp {
        let MetaOp::Map { map, replication } = self else { return self.clone() };
        if before.map.version == 0 {
            return self.clone();
        }
        let old: BTreeMap<u32, &shardmap::ShardEntry> = before.map.shards.iter().map(|e| (e.id.0, e)).collect();
        let new: BTreeSet<u32> = map.shards.iter().map(|e| e.id.0).collect();
        MetaOp::MapChange {
            version: map.version,
            replication: *replication,
            next_id: map.next_id,
            initial_shards: map.initial_shards,
            changed: map.shards.iter().filter(|e| old.get(&e.id.0) != Some(e)).cloned().collect(),
            removed: old.keys().copied().filter(|id| !new.contains(id)).collect(),
        }
    }
}

impl Meta {
    pub fn apply(&mut self, op: &MetaOp) {
        match op {
            MetaOp::Agent { name, id } => {
                self.agents.insert(name.clone(), *id);
                self.next_id = self.next_id.max(id + 1);
            }
            MetaOp::Node { id, record } => {
                self.nodes.insert(*id, record.clone());
                self.next_id = self.next_id.max(id + 1);
            }
            MetaOp::Map { map, replication } => {
                self.map = map.clone();
                self.replication = *replication;
            }
            MetaOp::Drain { id, draining } => {
                if let Some(n) = self.nodes.get_mut(id) {
                    n.draining = *draining;
                }
            }
            MetaOp::MapChange { version, replication, next_id, initial_shards, changed, removed } => {
                let m = &mut self.map;
                m.shards.retain(|e| !removed.contains(&e.id.0) && !changed.iter().any(|c| c.id == e.id));
                m.shards.extend(changed.iter().cloned());
                m.shards.sort_by_key(|e| e.range.start);
                (m.version, m.next_id, m.initial_shards) = (*version, *next_id, *initial_shards);
                self.replication = *replication;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    #[error("unknown node {0}; it must register first")]
    UnknownNode(u64),
    #[error("unknown agent {0:?}; it must register first")]
    UnknownAgent(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the grid is already initialised with {shards} shards × {replication} replicas; asked for {asked_shards} × {asked_replication}")]
    AlreadyInitialised { shards: usize, replication: u32, asked_shards: u32, asked_replication: u32 },
    #[error("cannot initialise: {0}")]
    Placement(#[from] ShardMapError),
    #[error("too many registered nodes and agents (at most {0})")]
    Full(usize),
    /// Refused for now, for a reason that passes (a change already under way): retry later.
    #[error("{0}")]
    Busy(String),
}

/// What the master knows of a node only while it runs.
#[derive(Clone, Debug)]
struct NodeLive {
    last_heartbeat_ms: Option<u64>,
    /// The newest process generation heard from (registration or heartbeat).
    generation: u64,
    /// Set by the agent's exit report (with the exited process's generation); cleared by news
    /// from a newer generation.
    exited: Option<(u64, String)>,
    /// The node's latest report of peers it cannot reach.
    unreachable: BTreeSet<u64>,
    /// The node's latest report of the replicas it hosts.
    shards: BTreeMap<u32, ShardLive>,
    state: NodeState,
    reason: String,
    /// Since when the node has been Down (the master's clock), for replacing it.
    down_since_ms: Option<u64>,
    /// Since when the node has been Up after being Down or Degraded: a process back from a
    /// restart (or flapping) is not handed primaries until it has stayed Up a while.
    up_since_ms: Option<u64>,
}

/// One hosted replica, as the node's latest heartbeat reported it.
#[derive(Clone, Copy, Debug, Default)]
struct ShardLive {
    serving: bool,
    /// The epoch it leads (0: none).
    led: u64,
    /// Leads with a lease: its epoch-start entry committed.
    leading: bool,
    last_lsn: u64,
    commit_lsn: u64,
    outbox_items: u64,
    /// It may not vote yet (`pb::ShardStat::resyncing`).
    resyncing: bool,
}

/// A shard's size and load as its primary's heartbeats report them (the split policy's input).
#[derive(Clone, Debug, Default)]
struct ShardLoad {
    /// The range these figures are for, and since when: a split starts the shard afresh.
    range: (u64, u64),
    since_ms: u64,
    /// The primary that reported last and its request counter then (a new primary or a
    /// restarted process starts a new baseline).
    from: Option<(u64, u64, u64)>,
    /// Requests per second, smoothed over heartbeats.
    rate: f64,
    /// Since when the rate has been at or over the threshold.
    hot_since_ms: Option<u64>,
    /// Since when the rate has been under half the merge threshold (architecture.md §10).
    cold_since_ms: Option<u64>,
    bytes: u64,
    concepts: u64,
}

impl Default for NodeLive {
    fn default() -> Self {
        NodeLive {
            last_heartbeat_ms: None,
            generation: 0,
            exited: None,
            unreachable: BTreeSet::new(),
            shards: BTreeMap::new(),
            state: NodeState::Down,
            reason: "no heartbeat since the master started".into(),
            down_since_ms: Some(0),
            up_since_ms: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct AgentLive {
    last_heartbeat_ms: Option<u64>,
    processes: Vec<pb::ProcessStatus>,
}

/// When and how the master replaces replicas (architecture.md §5 rule 8).
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// A voter Down this long is replaced.
    pub replace_after_ms: u64,
    /// A learner not caught up this long after it was added is given up (another is tried).
    pub learner_timeout_ms: u64,
    /// A learner this many entries behind the primary's commit point counts as caught up.
    pub catch_up_lag: u64,
    /// Shards changing membership at once, grid-wide.
    pub changes_max: usize,
    /// Move replicas from the most to the least loaded nodes (a machine added, one back after
    /// a replacement or an undrain) while two nodes differ by 2 or more replicas.
    pub rebalance: bool,
    /// The split policy (architecture.md §9): split a shard whose primary holds `split_bytes`
    /// or serves `split_requests_per_s` for `split_after_ms`; not within `split_cooldown_ms`
    /// of the shard's range changing.
    pub auto_split: bool,
    pub split_bytes: u64,
    pub split_requests_per_s: f64,
    pub split_after_ms: u64,
    pub split_cooldown_ms: u64,
    /// The merge policy (architecture.md §10): merge two neighbours that together hold under
    /// `merge_bytes` and serve under `merge_requests_per_s`, each cold (under half of it) for
    /// `merge_after_ms`, never below the shard count `init` made.
    pub auto_merge: bool,
    pub merge_bytes: u64,
    pub merge_requests_per_s: f64,
    pub merge_after_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            replace_after_ms: limits::REPLACE_DOWN_AFTER_MS,
            learner_timeout_ms: limits::LEARNER_CATCH_UP_TIMEOUT_MS,
            catch_up_lag: limits::LEARNER_CATCH_UP_LAG_ENTRIES,
            changes_max: limits::MEMBERSHIP_CHANGES_MAX,
            rebalance: true,
            auto_split: true,
            split_bytes: limits::SPLIT_BYTES_DEFAULT,
            split_requests_per_s: limits::SPLIT_REQUESTS_PER_S_DEFAULT,
            split_after_ms: limits::SPLIT_LOAD_SUSTAIN_MS,
            split_cooldown_ms: limits::SPLIT_COOLDOWN_MS,
            auto_merge: true,
            merge_bytes: limits::MERGE_BYTES_DEFAULT,
            merge_requests_per_s: limits::MERGE_REQUESTS_PER_S_DEFAULT,
            merge_after_ms: limits::MERGE_COLD_MS,
        }
    }
}

/// One step of a shard's membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Start replacing voter `replacing`: `learner` receives the log without voting.
    AddLearner { shard: u32, learner: u64, replacing: u64 },
    /// Give the learner up.
    DropLearner { shard: u32, why: String },
    /// Fence the current voters and lead the next epoch with `voters`.
    Reconfigure { shard: u32, voters: Vec<u64> },
    /// Hand the primary role to voter `to` (caught up): an election with the same voters that
    /// picks `to` when its fenced log is as great as any (else the greatest, as always).
    TransferLeader { shard: u32, to: u64 },
}

impl MemberChange {
    pub fn shard(&self) -> u32 {
        match self {
            MemberChange::AddLearner { shard, .. }
            | MemberChange::DropLearner { shard, .. }
            | MemberChange::Reconfigure { shard, .. }
            | MemberChange::TransferLeader { shard, .. } => *shard,
        }
    }
}

/// A merge the failover loop carries on: freeze `from`, then have `into`'s primary copy it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeStep {
    pub into: u32,
    pub into_epoch: u64,
    pub into_addr: String,
    pub from: u32,
    pub from_epoch: u64,
    pub from_addr: String,
    pub from_range: crate::store::KeyRange,
}

/// A node state change, kept for `status`, traces and detection-time measurements.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub at_ms: u64,
    pub node: u64,
    pub from: NodeState,
    pub to: NodeState,
    pub reason: String,
}

pub struct MasterState {
    meta: Meta,
    nodes: BTreeMap<u64, NodeLive>,
    agents: BTreeMap<String, AgentLive>,
    transitions: VecDeque<Transition>,
    down_after_ms: u64,
    load: BTreeMap<u32, ShardLoad>,
    /// The rate at which the load counts as hot (from the membership config).
    split_requests_per_s: f64,
    /// Two neighbours serving less than this together may merge (from the membership config).
    merge_requests_per_s: f64,
    /// Each shard id's position in the map.
    position: BTreeMap<u32, usize>,
}

impl MasterState {
    pub fn new(meta: Meta) -> MasterState {
        let nodes = meta.nodes.keys().map(|id| (*id, NodeLive::default())).collect();
        let mut st = MasterState {
            meta,
            nodes,
            agents: BTreeMap::new(),
            transitions: VecDeque::new(),
            down_after_ms: limits::HEARTBEAT_DOWN_AFTER_MS,
            load: BTreeMap::new(),
            split_requests_per_s: limits::SPLIT_REQUESTS_PER_S_DEFAULT,
            merge_requests_per_s: limits::MERGE_REQUESTS_PER_S_DEFAULT,
            position: BTreeMap::new(),
        };
        st.index_map();
        st
    }

    /// The request rate the split policy calls hot (the master sets it from its config).
    pub fn set_split_threshold(&mut self, requests_per_s: f64) {
        self.split_requests_per_s = requests_per_s;
    }

    /// The request rate under which two neighbours may merge (the master sets it from its config).
    pub fn set_merge_threshold(&mut self, requests_per_s: f64) {
        self.merge_requests_per_s = requests_per_s;
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn map(&self) -> &ShardMap {
        &self.meta.map
    }

    /// Applies an op the caller has made durable.
    pub fn commit(&mut self, op: &MetaOp) {
        self.meta.apply(op);
        if let MetaOp::Node { id, .. } = op {
            self.nodes.entry(*id).or_default();
        }
        if let MetaOp::Map { .. } | MetaOp::MapChange { .. } = op {
            self.index_map();
        }
    }

    /// Rebuilds the shard id → map position index (heartbeats look shards up by id).
    fn index_map(&mut self) {
        self.position = self.meta.map.shards.iter().enumerate().map(|(i, e)| (e.id.0, i)).collect();
    }

    fn check_room(&self) -> Result<(), MasterError> {
        if self.meta.agents.len() + self.meta.nodes.len() >= limits::MASTER_NODES_MAX {
            return Err(MasterError::Full(limits::MASTER_NODES_MAX));
        }
        Ok(())
    }

    /// The agent's id, and the op to log first if it is new.
    pub fn register_agent(&mut self, name: &str, now_ms: u64) -> Result<(u64, Option<MetaOp>), MasterError> {
        if name.is_empty() || name.len() > limits::LABEL_BYTES_MAX {
            return Err(MasterError::Invalid(format!(
                "agent name must be 1 to {} bytes; got {}",
                limits::LABEL_BYTES_MAX,
                name.len()
            )));
        }
        self.agents.entry(name.to_string()).or_default().last_heartbeat_ms = Some(now_ms);
        if let Some(id) = self.meta.agents.get(name) {
            return Ok((*id, None));
        }
        self.check_room()?;
        let id = self.meta.next_id.max(1);
        Ok((id, Some(MetaOp::Agent { name: name.to_string(), id })))
    }

    pub fn agent_heartbeat(
        &mut self,
        name: &str,
        processes: Vec<pb::ProcessStatus>,
        now_ms: u64,
    ) -> Result<(), MasterError> {
        if !self.meta.agents.contains_key(name) {
            return Err(MasterError::UnknownAgent(name.into()));
        }
        let a = self.agents.entry(name.to_string()).or_default();
        a.last_heartbeat_ms = Some(now_ms);
        a.processes = processes.into_iter().take(limits::AGENT_PROCESSES_MAX as usize).collect();
        Ok(())
    }

    fn node_by_slot(&self, agent: &str, slot: u32) -> Option<u64> {
        self.meta.nodes.iter().find(|(_, r)| r.agent == agent && r.slot == slot).map(|(id, _)| *id)
    }

    /// The agent saw generation `generation` of the process in `slot` exit: the node is Down
    /// now, not after a timeout. A report older than what the master has since heard from a
    /// newer process (it can arrive late, after retries) is ignored.
    pub fn report_exit(&mut self, agent: &str, slot: u32, generation: u64, reason: &str, now_ms: u64) -> Option<u64> {
        let id = self.node_by_slot(agent, slot)?;
        let live = self.nodes.entry(id).or_default();
        if generation < live.generation {
            return Some(id);
        }
        live.generation = generation;
        live.exited = Some((generation, format!("exit reported by agent {agent}: {reason}")));
        self.evaluate(now_ms);
        Some(id)
    }

    fn hear_from(live: &mut NodeLive, generation: u64) {
        live.generation = live.generation.max(generation);
        if live.exited.as_ref().is_some_and(|(g, _)| *g < generation) {
            live.exited = None;
        }
    }

    /// A (re)started storage process announces itself. Its id is stable per (agent, slot).
    pub fn register_node(
        &mut self,
        agent: &str,
        slot: u32,
        storage_addr: &str,
        gossip_addr: &str,
        generation: u64,
        now_ms: u64,
    ) -> Result<(u64, Option<MetaOp>), MasterError> {
        if !self.meta.agents.contains_key(agent) {
            return Err(MasterError::UnknownAgent(agent.into()));
        }
        for (what, addr) in [("storage", storage_addr), ("gossip", gossip_addr)] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(MasterError::Invalid(format!("{what} address {addr:?} is not host:port")));
            }
        }
        let existing = self.node_by_slot(agent, slot);
        let (id, old) = match existing {
            Some(id) => (id, self.meta.nodes.get(&id).cloned()),
            None => {
                self.check_room()?;
                (self.meta.next_id.max(1), None)
            }
        };
        let record = NodeRecord {
            agent: agent.into(),
            slot,
            storage_addr: storage_addr.into(),
            gossip_addr: gossip_addr.into(),
            draining: old.as_ref().is_some_and(|o| o.draining),
        };
        let live = self.nodes.entry(id).or_default();
        Self::hear_from(live, generation);
        live.last_heartbeat_ms = Some(now_ms);
        live.unreachable.clear();
        live.shards.clear();
        let op = (old.as_ref() != Some(&record)).then_some(MetaOp::Node { id, record });
        Ok((id, op))
    }

    pub fn heartbeat(
        &mut self,
        node: u64,
        unreachable: &[u64],
        shards: &[pb::ShardStat],
        generation: u64,
        now_ms: u64,
    ) -> Result<(), MasterError> {
        let Some(live) = self.nodes.get_mut(&node).filter(|_| self.meta.nodes.contains_key(&node)) else {
            return Err(MasterError::UnknownNode(node));
        };
        Self::hear_from(live, generation);
        live.last_heartbeat_ms = Some(now_ms);
        live.unreachable = unreachable.iter().copied().filter(|p| *p != node).take(limits::MASTER_NODES_MAX).collect();
        live.shards = shards
            .iter()
            .take(limits::SHARDS_PER_NODE_MAX)
            .map(|s| {
                let live = ShardLive {
                    serving: s.serving,
                    led: s.primary_epoch,
                    leading: s.leading,
                    last_lsn: s.last_lsn,
                    commit_lsn: s.commit_lsn,
                    outbox_items: s.outbox_items,
                    resyncing: s.resyncing,
                };
                (s.shard, live)
            })
            .collect();
        for s in shards.iter().take(limits::SHARDS_PER_NODE_MAX) {
            self.measure_load(node, s, now_ms);
        }
        Ok(())
    }

    /// Folds a primary's report of `s` into the shard's load (architecture.md §9).
    fn measure_load(&mut self, node: u64, s: &pb::ShardStat, now_ms: u64) {
        if s.primary_epoch == 0 {
            return;
        }
        let Some(e) = self.position.get(&s.shard).and_then(|i| self.meta.map.shards.get(*i)) else { return };
        if e.primary.0 != node || s.primary_epoch != e.epoch.0 {
            return;
        }
        let range = (e.range.start, e.range.end);
        let threshold = self.split_requests_per_s;
        let load = self.load.entry(s.shard).or_default();
        if load.range != range || load.since_ms == 0 {
            *load = ShardLoad { range, since_ms: now_ms.max(1), ..ShardLoad::default() };
        }
        load.bytes = s.bytes;
        load.concepts = s.concepts;
        match load.from {
            Some((n, t, r)) if n == node && s.requests >= r && now_ms > t => {
                let inst = (s.requests - r) as f64 * 1000.0 / (now_ms - t) as f64;
                load.rate = if load.rate == 0.0 { inst } else { 0.5 * load.rate + 0.5 * inst };
            }
            _ => {}
        }
        load.from = Some((node, now_ms, s.requests));
        if load.rate >= threshold {
            load.hot_since_ms.get_or_insert(now_ms);
        } else if load.rate < threshold * limits::SPLIT_LOAD_COOL_FRACTION {
            load.hot_since_ms = None;
        }
        if load.rate * 2.0 < self.merge_requests_per_s {
            load.cold_since_ms.get_or_insert(now_ms);
        } else {
            load.cold_since_ms = None;
        }
    }

    /// Shards in a merge, either side.
    fn merging(&self) -> BTreeSet<u32> {
        let m = &self.meta.map.shards;
        m.iter().filter_map(|e| Some([e.id.0, e.merge?.from.0])).flatten().collect()
    }

    /// Shards changing membership, splitting or merging: each counts against the grid-wide
    /// bound of changes in flight.
    fn in_flight(&self) -> usize {
        let m = &self.meta.map.shards;
        m.iter().filter(|s| s.replacing.is_some() || s.split.is_some() || s.merge.is_some()).count()
    }

    /// The shard the split policy would split now, with why: its primary holds
    /// `cfg.split_bytes` or has served `cfg.split_requests_per_s` for `cfg.split_after_ms`, it
    /// changes nothing else, it was not split (or split off) within the cooldown, it is wide
    /// enough, and fewer than `cfg.changes_max` shards change at once. One at a time.
    /// The third element: the load decided it (split at the load's median, not the concepts').
    pub fn split_wanted(&self, now_ms: u64, cfg: &MembershipConfig) -> Option<(u32, String, bool)> {
        if !cfg.auto_split || self.meta.map.version == 0 || self.meta.map.shards.len() >= shardmap::SHARDS_MAX as usize
        {
            return None;
        }
        if self.in_flight() >= cfg.changes_max {
            return None;
        }
        let merging = self.merging();
        self.meta.map.shards.iter().find_map(|e| {
            let load = self.load.get(&e.id.0)?;
            let idle = e.learner.is_none() && e.replacing.is_none() && e.split.is_none() && !merging.contains(&e.id.0);
            let settled = now_ms.saturating_sub(load.since_ms) >= cfg.split_cooldown_ms;
            let wide = e.range.end - e.range.start >= limits::SPLIT_RANGE_MIN_KEYS;
            if !(idle && settled && wide && load.range == (e.range.start, e.range.end))
                || self.leading_primary(e).is_none()
            {
                return None;
            }
            if load.bytes >= cfg.split_bytes {
                return Some((
                    e.id.0,
                    format!("it holds {} MiB (threshold {} MiB)", load.bytes >> 20, cfg.split_bytes >> 20),
                    false,
                ));
            }
            let hot_for = load.hot_since_ms.map(|t| now_ms.saturating_sub(t))?;
            (hot_for >= cfg.split_after_ms).then(|| {
                (
                    e.id.0,
                    format!(
                        "it served {:.0} requests/s for {} ms (threshold {:.0}/s for {} ms)",
                        load.rate, hot_for, cfg.split_requests_per_s, cfg.split_after_ms
                    ),
                    true,
                )
            })
        })
    }

    /// The op that drains (or undrains) a node.
    pub fn drain(&self, node: u64, draining: bool) -> Result<MetaOp, MasterError> {
        if !self.meta.nodes.contains_key(&node) {
            return Err(MasterError::UnknownNode(node));
        }
        Ok(MetaOp::Drain { id: node, draining })
    }

    /// The op that initialises the shard map; `None` when it already is, identically
    /// (so `init` can be repeated).
    pub fn init(&self, shards: u32, replication: u32) -> Result<Option<MetaOp>, MasterError> {
        if self.meta.map.version > 0 {
            if self.meta.map.shards.len() == shards as usize && self.meta.replication == replication {
                return Ok(None);
            }
            return Err(MasterError::AlreadyInitialised {
                shards: self.meta.map.shards.len(),
                replication: self.meta.replication,
                asked_shards: shards,
                asked_replication: replication,
            });
        }
        if replication == 0 {
            return Err(ShardMapError::BadReplication.into());
        }
        let nodes: Vec<NodeInfo> = self
            .meta
            .nodes
            .iter()
            .filter(|(id, r)| self.state_of(**id) == NodeState::Up && !r.draining)
            .map(|(id, r)| NodeInfo { id: NodeId(*id), agent: self.meta.agents.get(&r.agent).copied().unwrap_or(0) })
            .collect();
        if nodes.len() < replication as usize {
            return Err(MasterError::Invalid(format!(
                "cannot initialise: replication {replication} needs {replication} Up nodes; {} of {} registered are Up (start more storage processes, or wait for their heartbeats)",
                nodes.len(),
                self.meta.nodes.len()
            )));
        }
        let map = shardmap::place(shards, replication as usize, &nodes)?;
        Ok(Some(MetaOp::Map { map, replication }))
    }

    pub fn state_of(&self, node: u64) -> NodeState {
        self.nodes.get(&node).map_or(NodeState::Down, |l| l.state)
    }

    fn fresh(&self, live: &NodeLive, now_ms: u64) -> bool {
        live.exited.is_none() && live.last_heartbeat_ms.is_some_and(|t| now_ms.saturating_sub(t) <= self.down_after_ms)
    }

    /// Recomputes every node's state. Down: the agent reported an exit, or no heartbeat for
    /// `HEARTBEAT_DOWN_AFTER_MS`. Degraded: heartbeating, but a strict majority of the other
    /// heartbeating nodes report it unreachable (a majority, so one isolated node that reports
    /// everyone cannot degrade the rest). Then Draining if an operator said so, else Up.
    pub fn evaluate(&mut self, now_ms: u64) {
        let fresh: BTreeSet<u64> =
            self.nodes.iter().filter(|(_, l)| self.fresh(l, now_ms)).map(|(id, _)| *id).collect();
        let mut reported: BTreeMap<u64, usize> = BTreeMap::new();
        for id in &fresh {
            for p in &self.nodes[id].unreachable {
                *reported.entry(*p).or_default() += 1;
            }
        }
        let mut changes = Vec::new();
        for (id, live) in &self.nodes {
            let (state, reason) = if let Some((_, why)) = &live.exited {
                (NodeState::Down, why.clone())
            } else if !fresh.contains(id) {
                match live.last_heartbeat_ms {
                    Some(t) => (NodeState::Down, format!("no heartbeat for {} ms", now_ms.saturating_sub(t))),
                    None => (NodeState::Down, "no heartbeat since the master started".into()),
                }
            } else {
                let by = reported.get(id).copied().unwrap_or(0);
                let others = fresh.len() - 1;
                if by > 0 && by * 2 > others {
                    (NodeState::Degraded, format!("{by} of {others} live peers cannot reach it"))
                } else if self.meta.nodes.get(id).is_some_and(|r| r.draining) {
                    (NodeState::Draining, "drained by an operator".into())
                } else {
                    (NodeState::Up, String::new())
                }
            };
            if state != live.state {
                changes.push(Transition {
                    at_ms: now_ms,
                    node: *id,
                    from: live.state,
                    to: state,
                    reason: reason.clone(),
                });
            }
        }
        for t in changes {
            let live = self.nodes.get_mut(&t.node).expect("node listed above");
            if t.to == NodeState::Down {
                live.down_since_ms = Some(now_ms);
            } else {
                live.down_since_ms = None;
            }
            match (t.from, t.to) {
                (NodeState::Down | NodeState::Degraded, NodeState::Up) => live.up_since_ms = Some(now_ms),
                (_, NodeState::Down | NodeState::Degraded) => live.up_since_ms = None,
                _ => {}
            }
            live.state = t.to;
            live.reason = t.reason.clone();
            tracing::info!(node = t.node, from = t.from.name(), to = t.to.name(), reason = %t.reason, "node state");
            if self.transitions.len() >= limits::MASTER_TRANSITIONS_KEPT {
                self.transitions.pop_front();
            }
            self.transitions.push_back(t);
        }
        // Reasons can change without a state change (a longer silence); keep them current.
        for (id, live) in self.nodes.iter_mut() {
            if live.state == NodeState::Down && live.exited.is_none() {
                if let Some(t) = live.last_heartbeat_ms {
                    if !fresh.contains(id) {
                        live.reason = format!("no heartbeat for {} ms", now_ms.saturating_sub(t));
                    }
                }
            }
        }
    }

    pub fn transitions(&self) -> impl Iterator<Item = &Transition> {
        self.transitions.iter()
    }

    /// The replicas `node` should host under the current map.
    pub fn assignments(&self, node: u64) -> Vec<pb::Assignment> {
        self.meta
            .map
            .shards
            .iter()
            .filter(|s| s.replicas.contains(&NodeId(node)) || s.learner == Some(NodeId(node)))
            .map(|s| pb::Assignment {
                shard: s.id.0,
                key_start: s.range.start,
                key_end: s.range.end,
                epoch: s.epoch.0,
                primary: s.primary == NodeId(node),
                replicas: s.replicas.iter().map(|r| r.0).collect(),
                replica_addrs: s.replicas.iter().map(|r| self.storage_addr(r.0)).collect(),
                learners: s.learner.iter().map(|r| r.0).collect(),
                learner_addrs: s.learner.iter().map(|r| self.storage_addr(r.0)).collect(),
            })
            .collect()
    }

    pub fn storage_addr(&self, node: u64) -> String {
        self.meta.nodes.get(&node).map(|r| r.storage_addr.clone()).unwrap_or_default()
    }

    /// Shards whose primary must be (re)elected: never elected (epoch 1, fresh from `init`);
    /// primary Down, or Degraded (an isolated primary cannot commit) while a healthy majority
    /// of the other replicas can take over; primary reports the shard
    /// not serving; or primary heartbeating without leading the map's epoch `grace_ms` after
    /// it was named (it restarted and lost its role, or never got the promotion).
    pub fn elections_due(&self, now_ms: u64, named_at: &BTreeMap<u32, u64>, grace_ms: u64) -> Vec<u32> {
        let mut due = Vec::new();
        for s in &self.meta.map.shards {
            let p = s.primary.0;
            let live = self.nodes.get(&p);
            let since_named = now_ms.saturating_sub(named_at.get(&s.id.0).copied().unwrap_or(0));
            let healthy_others = s
                .replicas
                .iter()
                .filter(|r| r.0 != p && matches!(self.state_of(r.0), NodeState::Up | NodeState::Draining))
                .count();
            // A Degraded primary is replaced only when a healthy majority can take over (else
            // every election would pick it again), and not again right after one.
            let degraded = self.state_of(p) == NodeState::Degraded
                && healthy_others > s.replicas.len() / 2
                && since_named > grace_ms;
            // A restarted master has heard from nobody yet: a primary it never heard from
            // (and whose exit nobody reported) gets the grace period to report in, instead of
            // an election that fences a serving primary only to pick it again. So does a new
            // grid's first election, until a majority of its replicas has the shard open (the
            // fence would find nobody to answer it). A heartbeat that arrived since the last
            // evaluation outranks the Down it left behind.
            let unheard = live.is_none_or(|l| l.last_heartbeat_ms.is_none() && l.exited.is_none());
            let waiting = since_named <= grace_ms;
            let open = s
                .replicas
                .iter()
                .filter(|r| {
                    matches!(self.state_of(r.0), NodeState::Up | NodeState::Draining)
                        && self.nodes.get(&r.0).and_then(|l| l.shards.get(&s.id.0)).is_some_and(|st| st.serving)
                })
                .count();
            let needs = (s.epoch.0 <= 1 && (open > s.replicas.len() / 2 || !waiting))
                || (self.state_of(p) == NodeState::Down
                    && !(unheard && waiting)
                    && !live.is_some_and(|l| self.fresh(l, now_ms)))
                || degraded
                || live.and_then(|l| l.shards.get(&s.id.0)).is_some_and(|r| !r.serving)
                || (live.and_then(|l| l.shards.get(&s.id.0)).is_none_or(|r| r.led != s.epoch.0)
                    && since_named > grace_ms);
            if needs {
                due.push(s.id.0);
            }
        }
        due
    }

    /// True when `node`'s agent reported its process exited (it holds no lease any more).
    pub fn exited(&self, node: u64) -> bool {
        self.nodes.get(&node).is_some_and(|l| l.exited.is_some())
    }

    /// The op that names `primary` for `shard` in `epoch`, if the shard is still at
    /// `epoch - 1` (compare-and-set on the shard's epoch: one primary per epoch).
    pub fn elect(&self, shard: u32, primary: u64, epoch: u64) -> Result<MetaOp, MasterError> {
        self.change_shard(shard, |e| {
            if e.epoch.0 + 1 != epoch {
                return Err(MasterError::Invalid(format!("shard {shard} moved to epoch {} meanwhile", e.epoch.0)));
            }
            if !e.replicas.contains(&NodeId(primary)) {
                return Err(MasterError::Invalid(format!("node {primary} is not a replica of shard {shard}")));
            }
            e.primary = NodeId(primary);
            e.epoch = crate::ids::Epoch(epoch);
            Ok(())
        })
    }

    /// The op that applies `edit` to `shard`'s entry through [`ShardMap::compare_and_set`]
    /// (the result must validate; the version moves by one). `edit`'s own refusal wins.
    fn change_shard(
        &self,
        shard: u32,
        edit: impl FnOnce(&mut crate::shardmap::ShardEntry) -> Result<(), MasterError>,
    ) -> Result<MetaOp, MasterError> {
        let mut map = self.meta.map.clone();
        let mut edited = Ok(());
        let cas = map.compare_and_set(self.meta.map.version, |m| {
            edited = match m.shards.iter_mut().find(|e| e.id.0 == shard) {
                Some(e) => edit(e),
                None => Err(MasterError::Invalid(format!("no shard {shard}"))),
            };
        });
        edited?;
        cas?;
        Ok(MetaOp::Map { map, replication: self.meta.replication })
    }

    /// Replicas `node` reported hosting that the map no longer gives it, with the shard's
    /// epoch (membership changes removed them).
    pub fn retired(&self, node: u64) -> Vec<pb::RetiredReplica> {
        let Some(live) = self.nodes.get(&node) else { return Vec::new() };
        if self.meta.map.version == 0 {
            return Vec::new();
        }
        let next = self.meta.map.next_shard_id();
        // A split's new shard is on its nodes before the map records it.
        let reserved: BTreeSet<u32> = self.meta.map.shards.iter().filter_map(|s| Some(s.split?.child.0)).collect();
        live.shards
            .keys()
            .filter_map(|id| match self.position.get(id).and_then(|i| self.meta.map.shards.get(*i)) {
                Some(s) => (!s.replicas.contains(&NodeId(node)) && s.learner != Some(NodeId(node)))
                    .then_some(pb::RetiredReplica { shard: s.id.0, epoch: s.epoch.0 }),
                // Merged away (an id handed out, no longer in the map nor a split's reserved
                // one): its data lives on in the shard that absorbed it, whatever it promised.
                None => {
                    (*id < next && !reserved.contains(id)).then_some(pb::RetiredReplica { shard: *id, epoch: u64::MAX })
                }
            })
            .collect()
    }

    /// Whether voter `node` should be replaced: Down for `replace_after_ms`, or drained by an
    /// operator.
    fn replaceable(&self, node: u64, now_ms: u64, replace_after_ms: u64) -> bool {
        let Some(live) = self.nodes.get(&node) else { return true };
        let down_long = live.state == NodeState::Down
            && live.down_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= replace_after_ms);
        down_long || self.meta.nodes.get(&node).is_some_and(|r| r.draining)
    }

    /// The next step of each shard's membership change (architecture.md §5 rule 8), one member at a
    /// time: a voter to replace gets a learner on a healthy node (preferring a machine the
    /// shard does not use); a caught-up learner joins the voters in a new epoch; then the
    /// replaced voter leaves in the next. Only shards whose primary leads the map's epoch with
    /// a lease move on (so each configuration committed its epoch-start entry before the next,
    /// and every majority of the next one holds every committed entry).
    pub fn membership_due(
        &self,
        now_ms: u64,
        cfg: &MembershipConfig,
        learner_since: &BTreeMap<u32, u64>,
    ) -> Vec<MemberChange> {
        let mut out = Vec::new();
        if self.meta.map.version == 0 {
            return out;
        }
        let mut in_flight = self.in_flight();
        let merging = self.merging();
        let mut load: BTreeMap<u64, usize> = BTreeMap::new();
        let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
        let mut led_rate: BTreeMap<u64, f64> = BTreeMap::new();
        for s in &self.meta.map.shards {
            for n in s.replicas.iter().chain(s.learner.iter()) {
                *load.entry(n.0).or_default() += 1;
            }
            *leads.entry(s.primary.0).or_default() += 1;
            *led_rate.entry(s.primary.0).or_default() += self.load.get(&s.id.0).map_or(0.0, |l| l.rate);
        }
        // Fullest minus emptiest healthy node: a relay (see `relay_move`) is worth finishing
        // while it is 2 or more.
        let healthy = self.healthy_nodes();
        let counts: Vec<usize> = healthy.iter().map(|n| load.get(n).copied().unwrap_or(0)).collect();
        let spread = counts.iter().max().copied().unwrap_or(0) - counts.iter().min().copied().unwrap_or(0);
        for s in &self.meta.map.shards {
            let shard = s.id.0;
            let Some(primary) = self.leading_primary(s) else { continue };
            let voters: Vec<u64> = s.replicas.iter().map(|r| r.0).collect();
            match (s.learner, s.replacing) {
                (Some(l), Some(old)) => {
                    let learner = self.nodes.get(&l.0).and_then(|n| n.shards.get(&shard));
                    let since = learner_since.get(&shard).copied().unwrap_or(now_ms);
                    // A move that still evens the load goes on once its node is back (or was
                    // a rebalancing move from the start): finishing it leaves the learner's
                    // node less full than the old one was (or as full, for a relay).
                    let (at_learner, at_old) = (load.get(&l.0).copied(), load.get(&old.0).copied());
                    let evens = cfg.rebalance && (at_learner < at_old || (at_learner <= at_old && spread >= 2));
                    let why = if !matches!(self.state_of(l.0), NodeState::Up) {
                        Some(format!("learner node {} is {}", l.0, self.state_of(l.0).name()))
                    } else if !self.replaceable(old.0, now_ms, cfg.replace_after_ms) && !evens {
                        Some(format!("node {} no longer needs replacing", old.0))
                    } else if now_ms.saturating_sub(since) > cfg.learner_timeout_ms {
                        Some(format!("learner node {} did not catch up within {} ms", l.0, cfg.learner_timeout_ms))
                    } else if crate::buggify!(0.02) {
                        Some("buggify: giving the learner up".to_string())
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        out.push(MemberChange::DropLearner { shard, why });
                    } else if learner.is_some_and(|r| {
                        // A learner that cannot vote yet would join as a voter that refuses
                        // fences: two of those in four voters left no majority to elect a
                        // primary that could catch them up (swarm seed 1000021).
                        r.serving && !r.resyncing && r.last_lsn + cfg.catch_up_lag >= primary.commit_lsn
                    }) {
                        let mut next = voters.clone();
                        next.push(l.0);
                        out.push(MemberChange::Reconfigure { shard, voters: next });
                    }
                }
                (None, Some(old)) => {
                    let next = voters.iter().copied().filter(|v| *v != old.0).collect();
                    out.push(MemberChange::Reconfigure { shard, voters: next });
                }
                (Some(_), None) => {}
                (None, None) => {
                    if in_flight >= cfg.changes_max
                        || s.replicas.len() != self.meta.replication as usize
                        || s.split.is_some()
                        || merging.contains(&shard)
                    {
                        continue;
                    }
                    let Some(old) = voters.iter().copied().find(|v| self.replaceable(*v, now_ms, cfg.replace_after_ms))
                    else {
                        if cfg.rebalance {
                            if let Some((learner, from)) = self.rebalance_move(&voters, &load) {
                                *load.entry(learner).or_default() += 1;
                                *load.entry(from).or_default() -= 1;
                                in_flight += 1;
                                out.push(MemberChange::AddLearner { shard, learner, replacing: from });
                            } else if let Some(to) = self.leader_move(
                                now_ms,
                                shard,
                                s.primary.0,
                                primary.commit_lsn,
                                &voters,
                                &leads,
                                &led_rate,
                            ) {
                                let moved = self.load.get(&shard).map_or(0.0, |l| l.rate);
                                *led_rate.entry(to).or_default() += moved;
                                *led_rate.entry(s.primary.0).or_default() -= moved;
                                *leads.entry(to).or_default() += 1;
                                *leads.entry(s.primary.0).or_default() -= 1;
                                in_flight += 1;
                                out.push(MemberChange::TransferLeader { shard, to });
                            }
                        }
                        continue;
                    };
                    let agent_of = |n: u64| self.meta.nodes.get(&n).map(|r| r.agent.as_str());
                    let used: BTreeSet<&str> =
                        voters.iter().filter(|v| **v != old).filter_map(|v| agent_of(*v)).collect();
                    let pick = self
                        .meta
                        .nodes
                        .iter()
                        .filter(|(id, r)| !voters.contains(id) && !r.draining && self.state_of(**id) == NodeState::Up)
                        .min_by_key(|(id, r)| {
                            (used.contains(r.agent.as_str()), load.get(id).copied().unwrap_or(0), **id)
                        })
                        .map(|(id, _)| *id);
                    if let Some(learner) = pick {
                        *load.entry(learner).or_default() += 1;
                        in_flight += 1;
                        out.push(MemberChange::AddLearner { shard, learner, replacing: old });
                    }
                }
            }
        }
        if cfg.rebalance && out.is_empty() && in_flight == 0 {
            if let Some((shard, learner, replacing)) = self.relay_move(&load, &healthy) {
                out.push(MemberChange::AddLearner { shard, learner, replacing });
            } else if let Some((shard, to)) = self.leader_relay(now_ms, &leads, &healthy) {
                out.push(MemberChange::TransferLeader { shard, to });
            }
        }
        out
    }

    /// When the nodes leading most and fewest shards differ by 2+ but no direct transfer
    /// evens them (no shard of a busiest node has an eligible voter on a node leading 2
    /// fewer), a relay: a shard moves from a node leading one fewer than the busiest to a node
    /// leading 2 fewer, chosen so a busiest node's shard can then move to the relaying node
    /// (a direct, evening transfer next round). (shard, new primary). Only while nothing else
    /// changes, so relays never pile up.
    fn leader_relay(&self, now_ms: u64, leads: &BTreeMap<u64, usize>, up: &[u64]) -> Option<(u32, u64)> {
        let count = |n: u64| leads.get(&n).copied().unwrap_or(0);
        let max = up.iter().map(|n| count(*n)).max()?;
        let min = up.iter().map(|n| count(*n)).min()?;
        if max < min + 2 {
            return None;
        }
        let movable: Vec<(u32, u64, u64, Vec<u64>)> = self
            .settled_shards()
            .map(|(e, p)| (e.id.0, e.primary.0, p.commit_lsn, e.replicas.iter().map(|r| r.0).collect()))
            .collect();
        let targets = |(shard, primary, commit, voters): &(u32, u64, u64, Vec<u64>)| -> Vec<u64> {
            self.transfer_targets(now_ms, *shard, *primary, *commit, voters).collect()
        };
        for first in movable.iter().filter(|m| count(m.1) == max) {
            for via in targets(first).into_iter().filter(|v| count(*v) + 1 == max) {
                for relayed in movable.iter().filter(|m| m.1 == via) {
                    if let Some(to) = targets(relayed).into_iter().find(|t| count(*t) + 2 <= max) {
                        return Some((relayed.0, to));
                    }
                }
            }
        }
        None
    }

    /// What `sutra rebalance` shows: the moves and transfers the rebalancer would start now
    /// (as if it were on), and the membership changes under way, one line each.
    pub fn rebalance_plan(&self, now_ms: u64, cfg: &MembershipConfig) -> (Vec<String>, Vec<String>) {
        let on = MembershipConfig { rebalance: true, ..cfg.clone() };
        let primary_of = |shard: u32| self.meta.map.shards.iter().find(|e| e.id.0 == shard).map_or(0, |e| e.primary.0);
        let planned = self
            .membership_due(now_ms, &on, &BTreeMap::new())
            .into_iter()
            .filter_map(|c| match c {
                MemberChange::AddLearner { shard, learner, replacing } => Some(format!(
                    "shard {shard}: move the replica on node {replacing} to node {learner} (learner first, then voter, then node {replacing} leaves)"
                )),
                MemberChange::TransferLeader { shard, to } => {
                    Some(format!("shard {shard}: transfer the primary from node {} to node {to}", primary_of(shard)))
                }
                _ => None,
            })
            .collect();
        let in_flight = self
            .meta
            .map
            .shards
            .iter()
            .filter_map(|e| match (e.learner, e.replacing) {
                (Some(l), Some(old)) => {
                    Some(format!("shard {}: node {} catching up as a learner to replace node {}", e.id.0, l.0, old.0))
                }
                (None, Some(old)) => Some(format!("shard {}: joined; node {} leaving the voters", e.id.0, old.0)),
                _ => None,
            })
            .collect();
        (planned, in_flight)
    }

    /// The rebalancing move for a shard with `voters`, if one evens the load: (learner node,
    /// voter it replaces), from the voter on the fullest node to the emptiest Up node that
    /// holds no replica of the shard, when the two differ by 2 or more replicas (so a move
    /// never just swaps which node is fuller), and never onto fewer machines than the shard
    /// uses now (with 2 machines a shard may keep two voters on one, but no move adds a pair).
    fn rebalance_move(&self, voters: &[u64], load: &BTreeMap<u64, usize>) -> Option<(u64, u64)> {
        let count = |n: u64| load.get(&n).copied().unwrap_or(0);
        let mut best: Option<(usize, u64, u64)> = None;
        for &from in voters {
            for &to in self.meta.nodes.keys() {
                if count(from) < count(to) + 2 || !self.can_move(voters, from, to) {
                    continue;
                }
                let gap = count(from) - count(to);
                if best.is_none_or(|(g, _, _)| gap > g) {
                    best = Some((gap, to, from));
                }
            }
        }
        best.map(|(_, to, from)| (to, from))
    }

    /// Up nodes that are not draining: where replicas may go.
    fn healthy_nodes(&self) -> Vec<u64> {
        self.meta
            .nodes
            .iter()
            .filter(|(id, r)| !r.draining && self.state_of(**id) == NodeState::Up)
            .map(|(id, _)| *id)
            .collect()
    }

    /// `e`'s primary as its latest heartbeat reported it, if it leads the map's epoch with a
    /// lease (only then may the shard's membership move on).
    fn leading_primary(&self, e: &shardmap::ShardEntry) -> Option<&ShardLive> {
        self.nodes.get(&e.primary.0).and_then(|l| l.shards.get(&e.id.0)).filter(|p| p.leading && p.led == e.epoch.0)
    }

    /// Whether a voter of a shard with `voters` may move from node `from` to node `to`: `to`
    /// is Up, not draining, holds none of the shard, and the shard keeps as many machines.
    fn can_move(&self, voters: &[u64], from: u64, to: u64) -> bool {
        let agent_of = |n: u64| self.meta.nodes.get(&n).map(|r| r.agent.as_str());
        let Some(r) = self.meta.nodes.get(&to) else { return false };
        let machines = voters.iter().filter_map(|v| agent_of(*v)).collect::<BTreeSet<_>>().len();
        let others: BTreeSet<&str> = voters.iter().filter(|v| **v != from).filter_map(|v| agent_of(*v)).collect();
        let after = others.len() + usize::from(!others.contains(r.agent.as_str()));
        !voters.contains(&to) && !r.draining && self.state_of(to) == NodeState::Up && after >= machines
    }

    /// Shards free to change now, with their primary's latest report: no learner, no voter
    /// leaving, no split or merge under way, a full set of voters, and a primary that leads
    /// the map's epoch with a lease.
    fn settled_shards(&self) -> impl Iterator<Item = (&shardmap::ShardEntry, &ShardLive)> {
        let merging = self.merging();
        self.meta
            .map
            .shards
            .iter()
            .filter(|e| e.learner.is_none() && e.replacing.is_none() && e.split.is_none())
            .filter(move |e| !merging.contains(&e.id.0) && e.replicas.len() == self.meta.replication as usize)
            .filter_map(|e| Some((e, self.leading_primary(e)?)))
    }

    /// When the fullest and emptiest nodes differ by 2+ but no direct move is allowed (every
    /// shard on the fullest node already has a replica on, or a voter on the machine of, the
    /// emptiest), a relay: one replica from a fullest node to a node one below it, chosen so
    /// that node then has a direct move to the emptiest. (shard, learner node, voter it
    /// replaces). Only while nothing else changes, so relays never pile up.
    fn relay_move(&self, load: &BTreeMap<u64, usize>, up: &[u64]) -> Option<(u32, u64, u64)> {
        let count = |n: u64| load.get(&n).copied().unwrap_or(0);
        let max = up.iter().map(|n| count(*n)).max()?;
        let min = up.iter().map(|n| count(*n)).min()?;
        if max < min + 2 {
            return None;
        }
        let movable: Vec<(u32, Vec<u64>)> =
            self.settled_shards().map(|(e, _)| (e.id.0, e.replicas.iter().map(|r| r.0).collect())).collect();
        for (shard, voters) in &movable {
            for &from in voters.iter().filter(|v| count(**v) == max) {
                for &via in up.iter().filter(|n| count(**n) + 1 == max) {
                    if !self.can_move(voters, from, via) {
                        continue;
                    }
                    // After the relay `via` is among the fullest: it needs a direct move on.
                    let onward = movable
                        .iter()
                        .filter(|(s, v)| s != shard && v.contains(&via))
                        .any(|(_, v)| up.iter().any(|to| count(*to) + 2 <= max && self.can_move(v, via, *to)));
                    if onward {
                        return Some((*shard, via, from));
                    }
                }
            }
        }
        None
    }

    /// The voters `shard`'s primary role may go to: Up for `LEADER_TRANSFER_SETTLE_MS` (a
    /// restarting or flapping process gets no primaries), not draining, and caught up
    /// (serving, within `LEARNER_CATCH_UP_LAG_ENTRIES` of the commit point).
    fn transfer_targets<'a>(
        &'a self,
        now_ms: u64,
        shard: u32,
        primary: u64,
        commit_lsn: u64,
        voters: &'a [u64],
    ) -> impl Iterator<Item = u64> + 'a {
        voters
            .iter()
            .copied()
            .filter(move |v| *v != primary && self.state_of(*v) == NodeState::Up)
            .filter(move |v| {
                self.nodes
                    .get(v)
                    .and_then(|l| l.up_since_ms)
                    .is_some_and(|t| now_ms.saturating_sub(t) >= limits::LEADER_TRANSFER_SETTLE_MS)
            })
            .filter(|v| !self.meta.nodes.get(v).is_some_and(|r| r.draining))
            .filter(move |v| {
                // Within a learner's catch-up lag: under write load a follower's report always
                // trails the primary's a little, and the handover waits for the rest.
                self.nodes
                    .get(v)
                    .and_then(|l| l.shards.get(&shard))
                    .is_some_and(|r| r.serving && r.last_lsn + limits::LEARNER_CATCH_UP_LAG_ENTRIES >= commit_lsn)
            })
    }

    /// The voter to hand `shard`'s primary role to, among the eligible ones
    /// (`transfer_targets`): first to even the primaries (the voter on the node leading
    /// fewest shards, when the primary's node leads 2 or more more, unless the shard's load is
    /// noticeable and the move would leave that node serving more requests than the
    /// primary's did: a hot shard stays and a cold one on the same node moves instead); else to move load off a busy node (the
    /// primary's node leads other shards too and serves at least half the split threshold,
    /// and moving this shard's requests lowers the busier of the two nodes by a quarter or
    /// more, so a move never just swaps which node is busy and nothing flaps).
    #[allow(clippy::too_many_arguments)]
    fn leader_move(
        &self,
        now_ms: u64,
        shard: u32,
        primary: u64,
        commit_lsn: u64,
        voters: &[u64],
        leads: &BTreeMap<u64, usize>,
        led_rate: &BTreeMap<u64, f64>,
    ) -> Option<u64> {
        let count = |n: u64| leads.get(&n).copied().unwrap_or(0);
        let rate = |n: u64| led_rate.get(&n).copied().unwrap_or(0.0);
        let mine = self.load.get(&shard).map_or(0.0, |l| l.rate);
        let busy = rate(primary);
        let noticed = self.split_requests_per_s * limits::LOAD_NOTICED_FRACTION;
        let targets: Vec<u64> = self.transfer_targets(now_ms, shard, primary, commit_lsn, voters).collect();
        let evens = targets
            .iter()
            .copied()
            .filter(|v| count(primary) >= count(*v) + 2)
            .filter(|v| mine < noticed || rate(*v) + mine <= busy)
            .min_by_key(|v| (count(*v), *v));
        if evens.is_some() || count(primary) < 2 || busy < self.split_requests_per_s / 2.0 || mine <= 0.0 {
            return evens;
        }
        targets
            .into_iter()
            .filter(|v| (busy - mine).max(rate(*v) + mine) <= 0.75 * busy)
            .min_by(|a, b| rate(*a).total_cmp(&rate(*b)).then(a.cmp(b)))
    }

    /// Records the decision to split `shard` at `at` (default: the middle of its range) into a
    /// new shard; the failover loop then has the primary log it (architecture.md §9). The same
    /// split asked again answers the one in flight; anything else in flight refuses it.
    pub fn start_split(
        &self,
        shard: u32,
        at: Option<u64>,
    ) -> Result<(shardmap::SplitIntent, Option<MetaOp>), MasterError> {
        if self.meta.map.version == 0 {
            return Err(MasterError::Invalid("the grid is not initialised; run `sutra init`".into()));
        }
        let e = self
            .meta
            .map
            .shards
            .iter()
            .find(|e| e.id.0 == shard)
            .ok_or_else(|| MasterError::Invalid(format!("no shard {shard}")))?;
        if let Some(sp) = e.split {
            if at.is_none_or(|a| a == sp.at) {
                return Ok((sp, None));
            }
            return Err(MasterError::Busy(format!(
                "shard {shard} is already splitting at {:#018x} into shard {}",
                sp.at, sp.child
            )));
        }
        if let (Some(l), Some(old)) = (e.learner, e.replacing) {
            return Err(MasterError::Busy(format!(
                "shard {shard} is moving a replica (node {} replacing node {}); retry once it is done",
                l.0, old.0
            )));
        }
        if e.replacing.is_some() {
            return Err(MasterError::Busy(format!("shard {shard} is finishing a membership change; retry shortly")));
        }
        if self.merging().contains(&shard) {
            return Err(MasterError::Busy(format!("shard {shard} is merging; retry once the merge is done")));
        }
        if e.range.start == e.range.end {
            return Err(MasterError::Invalid(format!("shard {shard} owns a single key and cannot split")));
        }
        let at = at.unwrap_or(e.range.start + (e.range.end - e.range.start) / 2 + 1);
        // Split there already: the shard that starts at `at` was split off this one.
        if e.range.end.checked_add(1) == Some(at) {
            if let Some(done) = self.meta.map.shards.iter().find(|s| s.range.start == at) {
                return Ok((shardmap::SplitIntent { at, child: done.id }, None));
            }
        }
        if at <= e.range.start || at > e.range.end {
            return Err(MasterError::Invalid(format!(
                "split point {at:#018x} is not inside shard {shard}'s range ({:#018x}, {:#018x}]",
                e.range.start, e.range.end
            )));
        }
        let child = Some(self.meta.map.next_shard_id()).filter(|c| *c < shardmap::SHARDS_MAX);
        let (Some(child), true) = (child, self.meta.map.shards.len() < shardmap::SHARDS_MAX as usize) else {
            return Err(MasterError::Invalid(format!(
                "the grid holds the most shards it may ({})",
                shardmap::SHARDS_MAX
            )));
        };
        let intent = shardmap::SplitIntent { at, child: crate::ids::ShardId(child) };
        let op = self.change_shard(shard, |e| {
            e.split = Some(intent);
            Ok(())
        })?;
        Ok((intent, Some(op)))
    }

    /// Records the decision to merge `shard` with its neighbour `with` (architecture.md §10);
    /// without one, the shard just after it, or the one before it when it is the last. The
    /// lower one stays and absorbs the other: (the one that stays, the one absorbed, the op).
    /// The same merge asked again answers the one in flight, or the one done when `with` was
    /// merged away already; a shard that moves a replica, splits or merges otherwise refuses,
    /// saying why.
    pub fn start_merge(&self, shard: u32, with: Option<u32>) -> Result<(u32, u32, Option<MetaOp>), MasterError> {
        let m = &self.meta.map;
        if m.version == 0 {
            return Err(MasterError::Invalid("the grid is not initialised; run `sutra init`".into()));
        }
        let at = |id: u32| m.shards.iter().position(|e| e.id.0 == id);
        let i = at(shard).ok_or_else(|| MasterError::Invalid(format!("no shard {shard}")))?;
        if let Some(w) = with.filter(|w| at(*w).is_none() && *w < m.next_shard_id()) {
            return Ok((shard.min(w), shard.max(w), None));
        }
        let (l, r) = match with.map(at) {
            None if i + 1 < m.shards.len() => (i, i + 1),
            None if i > 0 => (i - 1, i),
            None => {
                return Err(MasterError::Invalid("the grid has one shard: there is nothing to merge it with".into()))
            }
            Some(Some(j)) if j == i + 1 || j + 1 == i => (i.min(j), i.max(j)),
            Some(_) => {
                return Err(MasterError::Invalid(format!(
                    "shard {} is not a neighbour of shard {shard}: only adjacent ranges merge",
                    with.unwrap_or(0)
                )))
            }
        };
        if let Some(mg) = m.shards[l].merge.filter(|x| x.from == m.shards[r].id) {
            return Ok((m.shards[l].id.0, mg.from.0, None));
        }
        let merging = self.merging();
        for e in [&m.shards[l], &m.shards[r]] {
            if let Some(sp) = e.split {
                return Err(MasterError::Busy(format!(
                    "shard {} is splitting into shard {}; retry once it is done",
                    e.id, sp.child
                )));
            }
            if let (Some(n), Some(old)) = (e.learner, e.replacing) {
                return Err(MasterError::Busy(format!(
                    "shard {} is moving a replica (node {} replacing node {}); retry once it is done",
                    e.id, n.0, old.0
                )));
            }
            if e.replacing.is_some() {
                return Err(MasterError::Busy(format!(
                    "shard {} is finishing a membership change; retry shortly",
                    e.id
                )));
            }
            if merging.contains(&e.id.0) {
                return Err(MasterError::Busy(format!("shard {} is in another merge; retry once it is done", e.id)));
            }
        }
        // One merge at a time, grid-wide: two frozen shards could each owe the other in-edges
        // that neither accepts, and neither merge would ever finish (split-under-faults seeds
        // 400145 and 400151).
        if let Some(e) = m.shards.iter().find(|e| e.merge.is_some()) {
            let from = e.merge.map_or(0, |x| x.from.0);
            return Err(MasterError::Busy(format!(
                "shard {} is absorbing shard {from}; merges run one at a time, retry once it is done",
                e.id
            )));
        }
        let (into, from) = (m.shards[l].id, m.shards[r].id);
        let op = self.change_shard(into.0, |e| {
            e.merge = Some(shardmap::MergeIntent { from });
            Ok(())
        })?;
        Ok((into.0, from.0, Some(op)))
    }

    /// Merges to carry on now, for shards whose primaries (both sides) lead the map's epoch
    /// with a lease.
    pub fn merges_due(&self) -> Vec<MergeStep> {
        let m = &self.meta.map.shards;
        m.iter()
            .zip(m.iter().skip(1))
            .filter(|(l, r)| l.merge.is_some_and(|x| x.from == r.id))
            .filter(|(l, r)| self.leading_primary(l).is_some() && self.leading_primary(r).is_some())
            .map(|(l, r)| MergeStep {
                into: l.id.0,
                into_epoch: l.epoch.0,
                into_addr: self.storage_addr(l.primary.0),
                from: r.id.0,
                from_epoch: r.epoch.0,
                from_addr: self.storage_addr(r.primary.0),
                from_range: r.range,
            })
            .collect()
    }

    /// The op that records a merge the absorbing primary finished: `into` takes in `from`'s
    /// range, and `from` leaves the map (its replicas are then deleted, `retired`).
    pub fn finish_merge(&self, into: u32, from: u32) -> Result<MetaOp, MasterError> {
        let mut map = self.meta.map.clone();
        let mut found = Err(MasterError::Invalid(format!("shard {into} has no merge of shard {from} in flight")));
        let cas = map.compare_and_set(self.meta.map.version, |m| {
            let Some(i) = m.shards.iter().position(|e| e.id.0 == into && e.merge.is_some_and(|x| x.from.0 == from))
            else {
                return;
            };
            let Some(right) = m.shards.get(i + 1).filter(|r| r.id.0 == from).map(|r| r.range) else { return };
            m.next_id = m.next_shard_id();
            m.shards[i].range.end = right.end;
            m.shards[i].merge = None;
            m.shards.remove(i + 1);
            found = Ok(());
        });
        found?;
        cas?;
        Ok(MetaOp::Map { map, replication: self.meta.replication })
    }

    /// The neighbours the merge policy would merge now, with why (architecture.md §10): both
    /// lead with a lease and change nothing else, their ranges have not changed within the
    /// cooldown, together they hold under `cfg.merge_bytes` and each has served under half of
    /// `cfg.merge_requests_per_s` for `cfg.merge_after_ms`, the one to absorb has delivered its
    /// outbox (its writes pause only for the copy), the grid keeps more shards than `init`
    /// made, and fewer than `cfg.changes_max` shards change at once. One at a time.
    pub fn merge_wanted(&self, now_ms: u64, cfg: &MembershipConfig) -> Option<(u32, u32, String)> {
        let m = &self.meta.map;
        if !cfg.auto_merge || m.version == 0 || m.initial_shards == 0 || m.shards.len() <= m.initial_shards as usize {
            return None;
        }
        if self.in_flight() >= cfg.changes_max || !self.merging().is_empty() {
            return None;
        }
        let quiet = |e: &shardmap::ShardEntry| -> Option<&ShardLoad> {
            let load = self.load.get(&e.id.0)?;
            let idle = e.learner.is_none() && e.replacing.is_none() && e.split.is_none() && e.merge.is_none();
            let settled = now_ms.saturating_sub(load.since_ms) >= cfg.split_cooldown_ms;
            let cold = load.cold_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= cfg.merge_after_ms);
            (idle && settled && cold && load.range == (e.range.start, e.range.end) && self.leading_primary(e).is_some())
                .then_some(load)
        };
        m.shards.iter().zip(m.shards.iter().skip(1)).find_map(|(l, r)| {
            let (a, b) = (quiet(l)?, quiet(r)?);
            let drained = self.leading_primary(r).is_some_and(|p| p.outbox_items == 0);
            (drained && a.bytes + b.bytes < cfg.merge_bytes && a.rate + b.rate < cfg.merge_requests_per_s).then(|| {
                let why = format!(
                    "together they hold {} KiB and serve {:.0} requests/s (thresholds {} MiB, {:.0}/s), cold for {} ms",
                    (a.bytes + b.bytes) >> 10,
                    a.rate + b.rate,
                    cfg.merge_bytes >> 20,
                    cfg.merge_requests_per_s,
                    cfg.merge_after_ms
                );
                (l.id.0, r.id.0, why)
            })
        })
    }

    /// Splits the primary should log now: (shard, epoch, primary's address, intent), for
    /// shards whose primary leads the map's epoch with a lease.
    pub fn splits_due(&self) -> Vec<(u32, u64, String, shardmap::SplitIntent)> {
        self.meta
            .map
            .shards
            .iter()
            .filter_map(|e| Some((e, e.split?)))
            .filter(|(e, _)| self.leading_primary(e).is_some())
            .map(|(e, sp)| (e.id.0, e.epoch.0, self.storage_addr(e.primary.0), sp))
            .collect()
    }

    /// The voter of `e` on the node with the least load: the smallest sum of the request rates
    /// of the shards it leads, then the fewest primaries, then (a tie) not `e`'s primary.
    fn least_loaded(&self, e: &shardmap::ShardEntry) -> NodeId {
        let led = |n: NodeId| self.meta.map.shards.iter().filter(move |s| s.primary == n);
        let rate = |n: NodeId| led(n).map(|s| self.load.get(&s.id.0).map_or(0.0, |l| l.rate)).sum::<f64>();
        let healthy = |n: &&NodeId| self.state_of(n.0) == NodeState::Up;
        e.replicas
            .iter()
            .filter(healthy)
            .min_by(|a, b| {
                let key = |n: NodeId| (led(n).count(), n == e.primary, n);
                rate(**a).total_cmp(&rate(**b)).then_with(|| key(**a).cmp(&key(**b)))
            })
            .copied()
            .unwrap_or(e.primary)
    }

    /// The op that records a split the primary logged: the shard keeps `[start, at - 1]`; the
    /// new shard owns `[at, end]` on the same voters and epoch, placed to be led by the voter
    /// on the least-loaded node (`least_loaded`: the new shard's first election keeps it on a
    /// tie of logs, as their logs start equal). Its replicas start from the split entry's
    /// state; the failover loop elects its first primary.
    pub fn finish_split(&self, shard: u32, intent: shardmap::SplitIntent) -> Result<MetaOp, MasterError> {
        let mut map = self.meta.map.clone();
        let mut found = Err(MasterError::Invalid(format!("shard {shard} has no split in flight")));
        let cas = map.compare_and_set(self.meta.map.version, |m| {
            let Some(i) = m.shards.iter().position(|e| e.id.0 == shard && e.split == Some(intent)) else { return };
            let primary = self.least_loaded(&m.shards[i]);
            let parent = &mut m.shards[i];
            let child = shardmap::ShardEntry {
                id: intent.child,
                range: crate::store::KeyRange { start: intent.at, end: parent.range.end },
                replicas: parent.replicas.clone(),
                primary,
                epoch: parent.epoch,
                learner: None,
                replacing: None,
                split: None,
                merge: None,
            };
            parent.range.end = intent.at - 1;
            parent.split = None;
            m.shards.insert(i + 1, child);
            m.next_id = m.next_shard_id();
            found = Ok(());
        });
        found?;
        cas?;
        Ok(MetaOp::Map { map, replication: self.meta.replication })
    }

    /// The op that records (or, with `None`, abandons) a learner for `shard`, keeping its epoch.
    pub fn set_learner(&self, shard: u32, change: Option<(u64, u64)>, epoch: u64) -> Result<MetaOp, MasterError> {
        let merging = self.merging();
        self.change_shard(shard, |e| {
            if e.epoch.0 != epoch {
                return Err(MasterError::Invalid(format!("shard {shard} moved to epoch {} meanwhile", e.epoch.0)));
            }
            match change {
                Some((learner, replacing)) => {
                    if let Some(sp) = e.split {
                        return Err(MasterError::Busy(format!("shard {shard} is splitting into shard {}", sp.child)));
                    }
                    if merging.contains(&shard) {
                        return Err(MasterError::Busy(format!("shard {shard} is merging")));
                    }
                    if e.learner.is_some() || e.replacing.is_some() {
                        return Err(MasterError::Invalid(format!("shard {shard} is already changing its membership")));
                    }
                    if !self.meta.nodes.contains_key(&learner) {
                        return Err(MasterError::UnknownNode(learner));
                    }
                    e.learner = Some(NodeId(learner));
                    e.replacing = Some(NodeId(replacing));
                }
                None => {
                    if e.learner.is_none() {
                        return Err(MasterError::Invalid(format!("shard {shard} has no learner")));
                    }
                    e.learner = None;
                    e.replacing = None;
                }
            }
            Ok(())
        })
    }

    /// The op that moves `shard` into `epoch` led by `primary` with the voter set `voters`,
    /// which must differ from the current one by at most one member (compare-and-set on the
    /// shard's epoch, as [`Self::elect`]).
    pub fn reconfigure(&self, shard: u32, primary: u64, epoch: u64, voters: &[u64]) -> Result<MetaOp, MasterError> {
        self.change_shard(shard, |e| {
            if e.epoch.0 + 1 != epoch {
                return Err(MasterError::Invalid(format!("shard {shard} moved to epoch {} meanwhile", e.epoch.0)));
            }
            let old: BTreeSet<u64> = e.replicas.iter().map(|r| r.0).collect();
            let new: BTreeSet<u64> = voters.iter().copied().collect();
            if new.len() != voters.len() || old.symmetric_difference(&new).count() > 1 || !new.contains(&primary) {
                return Err(MasterError::Invalid(format!(
                    "shard {shard}: voters {old:?} cannot become {voters:?} led by {primary} in one step"
                )));
            }
            e.replicas = voters.iter().map(|v| NodeId(*v)).collect();
            if e.learner.is_some_and(|l| new.contains(&l.0)) {
                e.learner = None;
            }
            if e.replacing.is_some_and(|r| !new.contains(&r.0)) {
                e.replacing = None;
            }
            e.primary = NodeId(primary);
            e.epoch = crate::ids::Epoch(epoch);
            Ok(())
        })
    }

    /// Every registered node's gossip address: the seed list for SWIM.
    pub fn peers(&self) -> Vec<pb::Peer> {
        self.meta.nodes.iter().map(|(id, r)| pb::Peer { node_id: *id, gossip_addr: r.gossip_addr.clone() }).collect()
    }

    pub fn map_pb(&self) -> pb::ShardMap {
        let m = &self.meta.map;
        pb::ShardMap {
            version: m.version,
            shards: m
                .shards
                .iter()
                .map(|s| pb::ShardEntry {
                    shard: s.id.0,
                    key_start: s.range.start,
                    key_end: s.range.end,
                    replicas: s.replicas.iter().map(|r| r.0).collect(),
                    primary: s.primary.0,
                    epoch: s.epoch.0,
                    learner: s.learner.map_or(0, |n| n.0),
                    replacing: s.replacing.map_or(0, |n| n.0),
                    splitting: s.split.is_some(),
                    split_at: s.split.map_or(0, |x| x.at),
                    split_child: s.split.map_or(0, |x| x.child.0),
                    merging: s.merge.is_some(),
                    merge_from: s.merge.map_or(0, |x| x.from.0),
                    bytes: self.load.get(&s.id.0).map_or(0, |l| l.bytes),
                    concepts: self.load.get(&s.id.0).map_or(0, |l| l.concepts),
                    requests_per_s: self.load.get(&s.id.0).map_or(0.0, |l| l.rate),
                    lag_entries: self.lag(s),
                })
                .collect(),
            nodes: self
                .meta
                .nodes
                .iter()
                .map(|(id, r)| pb::NodeAddr {
                    node_id: *id,
                    storage_addr: r.storage_addr.clone(),
                    state: self.state_of(*id).to_pb() as i32,
                })
                .collect(),
        }
    }

    /// How many entries the furthest-behind voter of `e` lags its primary's commit point, as
    /// their latest heartbeats said (a voter not reporting the shard counts from 0).
    fn lag(&self, e: &shardmap::ShardEntry) -> u64 {
        let report = |n: NodeId| self.nodes.get(&n.0).and_then(|l| l.shards.get(&e.id.0));
        let Some(commit) = report(e.primary).map(|p| p.commit_lsn) else { return 0 };
        e.replicas.iter().map(|r| commit.saturating_sub(report(*r).map_or(0, |x| x.last_lsn))).max().unwrap_or(0)
    }

    /// How many more nodes can be lost with every shard keeping a majority of its replicas
    /// reachable; `None` if some shard has already lost its majority or there is no map.
    pub fn fault_tolerance(&self) -> Option<u32> {
        let m = &self.meta.map;
        if m.version == 0 {
            return None;
        }
        let mut tolerance = u32::MAX;
        for s in &m.shards {
            let live = s.replicas.iter().filter(|r| self.serves(r.0) && self.hosts(r.0, s.id.0)).count() as u32;
            let majority = s.replicas.len() as u32 / 2 + 1;
            tolerance = tolerance.min(live.checked_sub(majority)?);
        }
        // Worst case, every loss hits the same shard: the tightest shard decides.
        Some(tolerance)
    }

    /// Whether `node`'s latest heartbeat says it hosts `shard` and serves it.
    fn hosts(&self, node: u64, shard: u32) -> bool {
        self.nodes.get(&node).and_then(|l| l.shards.get(&shard)).is_some_and(|r| r.serving)
    }

    fn serves(&self, node: u64) -> bool {
        matches!(self.state_of(node), NodeState::Up | NodeState::Draining | NodeState::Degraded)
    }

    pub fn status(&self, now_ms: u64) -> pb::StatusResponse {
        let mut replicas: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
        for s in &self.meta.map.shards {
            for r in &s.replicas {
                replicas.entry(r.0).or_default().0 += 1;
            }
            replicas.entry(s.primary.0).or_default().1 += 1;
        }
        let fresh: BTreeSet<u64> =
            self.nodes.iter().filter(|(_, l)| self.fresh(l, now_ms)).map(|(id, _)| *id).collect();
        let nodes = self
            .meta
            .nodes
            .iter()
            .map(|(id, r)| {
                let live = self.nodes.get(id);
                let (nrep, nprim) = replicas.get(id).copied().unwrap_or_default();
                pb::NodeStatus {
                    node_id: *id,
                    agent: r.agent.clone(),
                    slot: r.slot,
                    storage_addr: r.storage_addr.clone(),
                    gossip_addr: r.gossip_addr.clone(),
                    state: self.state_of(*id).to_pb() as i32,
                    reason: live.map(|l| l.reason.clone()).unwrap_or_default(),
                    unreachable_from: fresh
                        .iter()
                        .filter(|f| self.nodes[f].unreachable.contains(id))
                        .copied()
                        .collect(),
                    heartbeat_age_ms: live
                        .and_then(|l| l.last_heartbeat_ms)
                        .map_or(-1, |t| now_ms.saturating_sub(t) as i64),
                    replicas: nrep,
                    primaries: nprim,
                }
            })
            .collect::<Vec<_>>();
        let agents = self
            .meta
            .agents
            .iter()
            .map(|(name, id)| {
                let live = self.agents.get(name);
                let age = live.and_then(|l| l.last_heartbeat_ms).map(|t| now_ms.saturating_sub(t));
                pb::AgentStatus {
                    agent_id: *id,
                    name: name.clone(),
                    up: age.is_some_and(|a| a <= self.down_after_ms),
                    heartbeat_age_ms: age.map_or(-1, |a| a as i64),
                    processes: live.map(|l| l.processes.clone()).unwrap_or_default(),
                }
            })
            .collect::<Vec<_>>();
        let mut problems = Vec::new();
        if self.meta.map.version == 0 {
            problems.push("the grid is not initialised; run `sutra init`".to_string());
        }
        for n in &nodes {
            let state = NodeState::from_pb(n.state).unwrap_or(NodeState::Down);
            if matches!(state, NodeState::Down | NodeState::Degraded) {
                problems.push(format!("node {} ({}/{}) is {}: {}", n.node_id, n.agent, n.slot, state.name(), n.reason));
            }
        }
        for s in &self.meta.map.shards {
            for r in &s.replicas {
                if self.serves(r.0) && !self.hosts(r.0, s.id.0) {
                    let what = match self.nodes.get(&r.0).and_then(|l| l.shards.get(&s.id.0)) {
                        Some(r) if !r.serving => "is not serving it",
                        _ => "does not host it yet",
                    };
                    problems.push(format!("shard {}: replica node {} {what}", s.id, r.0));
                }
            }
            match (s.learner, s.replacing) {
                (Some(l), Some(old)) => problems.push(format!(
                    "shard {}: replacing node {} with node {} (a learner catching up)",
                    s.id, old.0, l.0
                )),
                (None, Some(old)) => {
                    problems.push(format!("shard {}: replacing node {} (the new voter has joined)", s.id, old.0))
                }
                _ => {}
            }
            if let Some(sp) = s.split {
                let why = if self.leading_primary(s).is_some() {
                    "its primary is logging it"
                } else {
                    "waiting for its primary to lead with a lease"
                };
                problems.push(format!("shard {}: splitting at {:#018x} into shard {} ({why})", s.id, sp.at, sp.child));
            }
            if let Some(mg) = s.merge {
                problems.push(format!("shard {}: absorbing shard {} (a merge under way)", s.id, mg.from));
            }
            // A voter on a drained node, with no change under way: the drain is waiting, or stuck.
            if s.learner.is_none() && s.replacing.is_none() {
                for v in s.replicas.iter().filter(|v| self.meta.nodes.get(&v.0).is_some_and(|r| r.draining)) {
                    let can_move = self.meta.nodes.iter().any(|(id, r)| {
                        !s.replicas.contains(&NodeId(*id)) && !r.draining && self.state_of(*id) == NodeState::Up
                    });
                    problems.push(if can_move {
                        format!("shard {}: voter node {} is draining; waiting to move it", s.id, v.0)
                    } else {
                        format!(
                            "shard {}: voter node {} is draining; no Up node outside the shard can take it",
                            s.id, v.0
                        )
                    });
                }
            }
            let led = self.nodes.get(&s.primary.0).and_then(|l| l.shards.get(&s.id.0)).map_or(0, |r| r.led);
            if led != s.epoch.0 {
                problems.push(format!(
                    "shard {}: primary node {} does not lead epoch {} yet",
                    s.id, s.primary.0, s.epoch.0
                ));
            }
        }
        for a in &agents {
            if !a.up {
                problems.push(format!("agent {} is not heartbeating", a.name));
            }
        }
        let tolerance = self.fault_tolerance();
        if self.meta.map.version > 0 && tolerance.is_none() {
            problems.push("some shard has lost a majority of its replicas".into());
        }
        let in_edges_pending = self
            .meta
            .map
            .shards
            .iter()
            .filter_map(|s| self.nodes.get(&s.primary.0)?.shards.get(&s.id.0).map(|l| l.outbox_items))
            .sum();
        pb::StatusResponse {
            in_edges_pending,
            healthy: problems.is_empty(),
            nodes,
            agents,
            map: Some(self.map_pb()),
            fault_tolerance: tolerance.map_or(-1, |t| t.min(i32::MAX as u32) as i32),
            problems,
        }
    }
}
