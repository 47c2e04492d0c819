//! The shard map as pure functions: split the 64-bit placement-key space into contiguous
//! ranges, place each shard's replicas on distinct nodes (and distinct agents, i.e. machines,
//! where there are enough), find a key's shard, check a map's invariants, and change it only by
//! compare-and-set on its version. The master owns the one live copy; these functions decide.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{Epoch, NodeId, ShardId};
use crate::store::KeyRange;

/// A storage node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// The agent (machine) that runs it: replicas of one shard avoid sharing a machine.
    pub agent: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardEntry {
    pub id: ShardId,
    pub range: KeyRange,
    /// Voting members; `replicas[..]` are distinct nodes.
    pub replicas: Vec<NodeId>,
    pub primary: NodeId,
    /// Bumped on every change to this shard's configuration.
    pub epoch: Epoch,
    /// A membership change in progress (architecture.md §5 rule 8): a non-voting member catching up
    /// from the primary, to join `replicas` and then take `replacing`'s place.
    #[serde(default)]
    pub learner: Option<NodeId>,
    #[serde(default)]
    pub replacing: Option<NodeId>,
    /// A split in progress (architecture.md §9): keys from `at` on are to become shard `child`.
    #[serde(default)]
    pub split: Option<SplitIntent>,
    /// A merge in progress (architecture.md §10): this shard absorbs the one just after it.
    #[serde(default)]
    pub merge: Option<MergeIntent>,
}

/// A merge the master has decided: the shard holding it absorbs shard `from`, the next one.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MergeIntent {
    pub from: ShardId,
}

/// A split the master has decided and the shard's primary has yet to log.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitIntent {
    pub at: u64,
    pub child: ShardId,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ShardMap {
    /// Bumped on every change to the map; changes are compare-and-set on it.
    pub version: u64,
    /// Sorted by range start.
    pub shards: Vec<ShardEntry>,
    /// Shard ids below this were handed out (ids are never reused: a merged-away shard's
    /// replicas may still be on disk). 0 in maps written before merges: see `next_shard_id`.
    #[serde(default)]
    pub next_id: u32,
    /// The shard count `init` made: the merge policy never goes below it (0: unknown, a map
    /// written before merges; the policy then merges nothing).
    #[serde(default)]
    pub initial_shards: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("need at least {needed} nodes for replication {needed}; have {have}")]
    TooFewNodes { needed: usize, have: usize },
    #[error("shard count must be between 1 and {max}; got {got}")]
    BadShardCount { got: u32, max: u32 },
    #[error("replication must be at least 1")]
    BadReplication,
    #[error("map version is {actual}, not the expected {expected}; re-read and retry")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("invalid shard map: {0}")]
    Invalid(String),
}

/// Most shards one map may hold (bounds every per-shard loop in the master).
pub const SHARDS_MAX: u32 = 65_536;

/// `n` contiguous ranges covering the whole key space, as equal as integer division allows.
pub fn even_ranges(n: u32) -> Result<Vec<KeyRange>, ShardMapError> {
    if n == 0 || n > SHARDS_MAX {
        return Err(ShardMapError::BadShardCount { got: n, max: SHARDS_MAX });
    }
    let space = u64::MAX as u128 + 1;
    Ok((0..n as u128)
        .map(|i| KeyRange { start: (space * i / n as u128) as u64, end: (space * (i + 1) / n as u128 - 1) as u64 })
        .collect())
}

/// Places `shards` shards with `replication` replicas each. Greedy and deterministic: each
/// replica goes to the least-loaded node whose agent this shard does not use yet (falling back
/// to any unused node when agents run out); each shard's primary is its replica with the fewest
/// primaries so far. Loads and primaries end up within one of each other.
pub fn place(shards: u32, replication: usize, nodes: &[NodeInfo]) -> Result<ShardMap, ShardMapError> {
    if replication == 0 {
        return Err(ShardMapError::BadReplication);
    }
    let mut nodes: Vec<&NodeInfo> = nodes.iter().collect();
    nodes.sort_by_key(|n| n.id);
    nodes.dedup_by_key(|n| n.id);
    if nodes.len() < replication {
        return Err(ShardMapError::TooFewNodes { needed: replication, have: nodes.len() });
    }
    let ranges = even_ranges(shards)?;
    let mut load: BTreeMap<NodeId, usize> = nodes.iter().map(|n| (n.id, 0)).collect();
    let mut primaries: BTreeMap<NodeId, usize> = load.clone();
    let mut out = Vec::with_capacity(ranges.len());
    for (i, range) in ranges.into_iter().enumerate() {
        let mut replicas: Vec<NodeId> = Vec::with_capacity(replication);
        let mut agents: BTreeSet<u64> = BTreeSet::new();
        for _ in 0..replication {
            let pick = |agent_rule: bool| {
                nodes
                    .iter()
                    .filter(|n| !replicas.contains(&n.id) && (!agent_rule || !agents.contains(&n.agent)))
                    .min_by_key(|n| (load[&n.id], n.id))
                    .map(|n| (n.id, n.agent))
            };
            let Some((id, agent)) = pick(true).or_else(|| pick(false)) else {
                return Err(ShardMapError::TooFewNodes { needed: replication, have: nodes.len() });
            };
            replicas.push(id);
            agents.insert(agent);
            *load.entry(id).or_default() += 1;
        }
        let primary = *replicas.iter().min_by_key(|r| (primaries[r], **r)).unwrap_or(&replicas[0]);
        *primaries.entry(primary).or_default() += 1;
        out.push(ShardEntry {
            id: ShardId(i as u32),
            range,
            replicas,
            primary,
            epoch: Epoch(1),
            learner: None,
            replacing: None,
            split: None,
            merge: None,
        });
    }
    Ok(ShardMap { version: 1, shards: out, next_id: shards, initial_shards: shards })
}

impl ShardMap {
    /// The id the next new shard takes: above every id the map holds or reserves, and every
    /// one it ever handed out.
    pub fn next_shard_id(&self) -> u32 {
        let taken = self.shards.iter().flat_map(|s| std::iter::once(s.id.0).chain(s.split.map(|x| x.child.0)));
        taken.map(|i| i.saturating_add(1)).max().unwrap_or(0).max(self.next_id)
    }

    /// The shard owning `key`, by binary search over range starts.
    pub fn shard_for(&self, key: u64) -> Option<&ShardEntry> {
        let i = self.shards.partition_point(|s| s.range.start <= key);
        self.shards.get(i.checked_sub(1)?).filter(|s| s.range.end >= key)
    }

    /// Every invariant a map must hold: ranges sorted, contiguous and covering the whole key
    /// space exactly once; shard ids unique; replicas distinct; the primary one of them; a
    /// learner not a voter yet, and the voter it replaces still one.
    pub fn validate(&self) -> Result<(), ShardMapError> {
        let bad = |m: String| Err(ShardMapError::Invalid(m));
        let Some(first) = self.shards.first() else { return bad("no shards".into()) };
        if first.range.start != 0 {
            return bad(format!("keys below {:#x} are owned by no shard", first.range.start));
        }
        let mut ids = BTreeSet::new();
        for (i, s) in self.shards.iter().enumerate() {
            if s.range.start > s.range.end {
                return bad(format!("shard {} has an empty range", s.id));
            }
            if !ids.insert(s.id) {
                return bad(format!("shard id {} appears twice", s.id));
            }
            if let Some(next) = self.shards.get(i + 1) {
                if s.range.end.checked_add(1) != Some(next.range.start) {
                    return bad(format!("shards {} and {} overlap or leave a gap", s.id, next.id));
                }
            } else if s.range.end != u64::MAX {
                return bad(format!("keys above {:#x} are owned by no shard", s.range.end));
            }
            let distinct: BTreeSet<_> = s.replicas.iter().collect();
            if s.replicas.is_empty() || distinct.len() != s.replicas.len() {
                return bad(format!("shard {} has no replicas or a node twice", s.id));
            }
            if !s.replicas.contains(&s.primary) {
                return bad(format!("shard {}'s primary is not one of its replicas", s.id));
            }
            if s.learner.is_some_and(|l| s.replicas.contains(&l)) {
                return bad(format!("shard {}'s learner is already a voter", s.id));
            }
            if s.replacing.is_some_and(|r| !s.replicas.contains(&r)) || (s.learner.is_some() && s.replacing.is_none()) {
                return bad(format!("shard {}'s membership change names a node that is not a voter", s.id));
            }
            if let Some(sp) = s.split {
                if sp.at <= s.range.start || sp.at > s.range.end {
                    return bad(format!("shard {}'s split point {:#x} is not inside its range", s.id, sp.at));
                }
                if self
                    .shards
                    .iter()
                    .any(|o| o.id == sp.child || o.split.is_some_and(|x| x.child == sp.child && o.id != s.id))
                {
                    return bad(format!("shard {}'s split names shard id {}, which is taken", s.id, sp.child));
                }
            }
            if let Some(mg) = s.merge {
                let next = self.shards.get(i + 1);
                if next.is_none_or(|n| n.id != mg.from) {
                    return bad(format!("shard {} would absorb shard {}, which does not follow it", s.id, mg.from));
                }
                if s.split.is_some() || next.is_some_and(|n| n.split.is_some() || n.merge.is_some()) {
                    return bad(format!("shard {}'s merge overlaps a split or another merge", s.id));
                }
            }
        }
        Ok(())
    }

    /// Applies `change` only if the map is still at `expected_version`; the result must
    /// validate. On success the version is bumped and returned.
    pub fn compare_and_set(
        &mut self,
        expected_version: u64,
        change: impl FnOnce(&mut ShardMap),
    ) -> Result<u64, ShardMapError> {
        if self.version != expected_version {
            return Err(ShardMapError::VersionMismatch { expected: expected_version, actual: self.version });
        }
        let mut next = self.clone();
        change(&mut next);
        next.validate()?;
        next.version = self.version + 1;
        *self = next;
        Ok(self.version)
    }
}

#[cfg(test)]
mod tests;
