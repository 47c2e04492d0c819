//! Replication of one shard's log (architecture.md §5), as pure state machines: the primary
//! ([`Primary`]: epoch-start entry, pipelined appends, majority commit of its own epoch's
//! entries), the replica ([`Replica`]: fencing, log matching, truncation of an uncommitted
//! suffix only, monotonic commit), the master's promotion rule ([`choose_primary`]) and the
//! new primary's wait for the old lease ([`lease::lease_wait`]).
//!
//! [`core::Core`] holds every decision of one replica around them (promise, re-sync, lease,
//! snapshots, learners, what to ship), as a pure state machine whose calls list the writes to
//! perform; `node::log` drives it over the WAL and the network; `master::failover` fences and
//! promotes. A randomized model test drives three nodes through crashes, lost and reordered
//! messages and failovers, checking that no committed entry is ever lost.

pub mod core;
pub mod entry;
pub mod lease;
mod log_index;
mod primary;
mod replica;
pub mod witness;

pub use log_index::{EntryId, LogIndex};
pub use primary::{Outcome, Primary, Progress};
pub use replica::{Append, AppendReply, Replica};

use crate::ids::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    #[error("{got} of {voters} voters answered the fence; a promotion needs {needed}")]
    NoMajority { got: usize, voters: usize, needed: usize },
}

/// Rule 4: given the fenced replies `(node, last entry)` of the voters, the node with the
/// greatest `(epoch, lsn)` (lowest id on a tie). Needs a majority of the voters, since only
/// then must one of them hold every committed entry.
pub fn choose_primary(voters: &[NodeId], replies: &[(NodeId, EntryId)]) -> Result<NodeId, PromoteError> {
    let mut answered: Vec<&(NodeId, EntryId)> = replies.iter().filter(|(n, _)| voters.contains(n)).collect();
    answered.sort_by_key(|(n, _)| *n);
    answered.dedup_by_key(|(n, _)| *n);
    let needed = voters.len() / 2 + 1;
    if answered.len() < needed {
        return Err(PromoteError::NoMajority { got: answered.len(), voters: voters.len(), needed });
    }
    let best = answered.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).expect("a majority is not empty");
    Ok(best.0)
}

/// Rule 4 across a membership change: the fence still needs a majority of the current
/// `voters`, but the new primary must belong to the next voter set `eligible`. The greatest log
/// among the eligible repliers still holds every committed entry as long as the current
/// configuration committed its epoch-start entry (so every committed entry sits on a majority
/// that a one-member change leaves an eligible holder in); the master only changes a
/// configuration whose primary leads with a lease.
pub fn choose_primary_among(
    voters: &[NodeId],
    replies: &[(NodeId, EntryId)],
    eligible: &[NodeId],
) -> Result<NodeId, PromoteError> {
    choose_primary(voters, replies)?;
    let candidates: Vec<(NodeId, EntryId)> =
        replies.iter().copied().filter(|(n, _)| voters.contains(n) && eligible.contains(n)).collect();
    let needed = voters.len() / 2 + 1;
    let best = candidates.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).ok_or(PromoteError::NoMajority {
        got: 0,
        voters: voters.len(),
        needed,
    })?;
    Ok(best.0)
}

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod tests;
