//! The primary side: it starts its epoch with an epoch-start entry, ships entries to every
//! replica with many in flight, and commits an entry once a majority of the voters hold it
//! durably and it carries the primary's own epoch; older entries commit through the
//! epoch-start entry (architecture.md §5 rules 3 and 5; Raft's commit rule).

use std::collections::BTreeMap;

use super::log_index::{EntryId, LogIndex};
use super::replica::{Append, AppendReply, Replica};
use crate::ids::NodeId;

/// Where one replica stands, as far as the primary knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Highest LSN it acknowledged as durable and matching.
    pub matched: u64,
    /// Next LSN to send (ahead of `matched` while appends are in flight).
    pub next: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// A replica has promised a newer epoch: this primary must stop acknowledging writes.
    StepDown {
        promised: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Primary {
    pub epoch: u64,
    pub me: NodeId,
    /// The voting replica set, this node included.
    pub voters: Vec<NodeId>,
    pub log: LogIndex,
    /// LSN this node has fsynced.
    pub durable: u64,
    pub peers: BTreeMap<NodeId, Progress>,
    pub commit: u64,
    /// LSN of this epoch's first entry: nothing below it commits except through it.
    pub epoch_start: u64,
}

impl Primary {
    /// Takes over `replica`'s log in `epoch` and appends the epoch-start entry (which the
    /// driver must write to the WAL like any other).
    pub fn new(me: NodeId, voters: Vec<NodeId>, epoch: u64, replica: Replica) -> Primary {
        assert!(epoch >= replica.promised, "promoted into epoch {epoch} below promised {}", replica.promised);
        assert!(voters.contains(&me), "a primary must be one of its voters");
        let mut log = replica.log;
        let durable = log.last().lsn;
        let start = log.push(epoch);
        let peers =
            voters.iter().filter(|v| **v != me).map(|v| (*v, Progress { matched: 0, next: start.lsn })).collect();
        Primary { epoch, me, voters, log, durable, peers, commit: replica.commit, epoch_start: start.lsn }
    }

    /// Starts shipping to a non-voting `peer` (a learner): it is sent every entry but counts
    /// for nothing until a new epoch makes it a voter. False if it is already a peer.
    pub fn add_learner(&mut self, peer: NodeId) -> bool {
        if peer == self.me || self.peers.contains_key(&peer) {
            return false;
        }
        // Probe at the end of the log; its mismatch reply moves `next` back to what it holds.
        let next = self.log.last().lsn + 1;
        self.peers.insert(peer, Progress { matched: 0, next });
        true
    }

    /// Steps down: what remains is a replica (after a crash the driver truncates to `durable`).
    pub fn into_replica(self) -> Replica {
        Replica::new(self.log, self.epoch, self.commit)
    }

    /// A client write: the next entry of this epoch.
    pub fn append(&mut self) -> EntryId {
        self.log.push(self.epoch)
    }

    /// This node fsynced its log through `lsn`.
    pub fn on_durable(&mut self, lsn: u64) {
        self.durable = self.durable.max(lsn.min(self.log.last().lsn));
        self.advance_commit();
    }

    /// The next append for `peer`, at most `max_entries` long, advancing its `next` (so several
    /// can be in flight). `None` when it is up to date; `Err` when it needs entries this log no
    /// longer holds (a snapshot).
    pub fn next_append(&mut self, peer: NodeId, max_entries: u64) -> Result<Option<Append>, u64> {
        let last = self.log.last().lsn;
        let base = self.log.base().lsn;
        let Some(p) = self.peers.get_mut(&peer) else { return Ok(None) };
        if p.next > last {
            return Ok(None);
        }
        let prev_lsn = p.next - 1;
        let Some(prev_epoch) = self.log.epoch_of(prev_lsn) else { return Err(base) };
        let to = last.min(prev_lsn + max_entries.max(1));
        let entries = self.log.ids(p.next, to);
        p.next = to + 1;
        Ok(Some(Append {
            epoch: self.epoch,
            prev: EntryId { epoch: prev_epoch, lsn: prev_lsn },
            entries,
            commit: self.commit,
        }))
    }

    /// An empty append at `peer`'s resume point, sent when nothing else is due (and on a
    /// timer): it carries the commit LSN, and if appends were lost on the way, the replica's
    /// mismatch reply moves `next` back to where it really is.
    pub fn heartbeat(&self, peer: NodeId) -> Option<Append> {
        let p = self.peers.get(&peer)?;
        let prev_lsn = p.next - 1;
        let prev = EntryId { epoch: self.log.epoch_of(prev_lsn)?, lsn: prev_lsn };
        Some(Append { epoch: self.epoch, prev, entries: Vec::new(), commit: self.commit })
    }

    /// An append to `peer` was lost (RPC error or timeout): resend from what it acknowledged.
    pub fn rewind(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.next = p.matched.max(self.log.base().lsn) + 1;
        }
    }

    /// Lowest LSN every peer holds (what the primary must keep shipping from).
    pub fn low_water(&self) -> u64 {
        self.peers.values().map(|p| p.matched).min().unwrap_or(self.log.last().lsn)
    }

    pub fn on_reply(&mut self, peer: NodeId, reply: &AppendReply) -> Outcome {
        let epoch = self.epoch;
        let Some(p) = self.peers.get_mut(&peer) else { return Outcome::Continue };
        match *reply {
            AppendReply::StaleEpoch { promised } if promised > epoch => return Outcome::StepDown { promised },
            AppendReply::StaleEpoch { .. } => {}
            AppendReply::Ok { epoch: e, matched } if e == epoch => {
                p.matched = p.matched.max(matched);
                p.next = p.next.max(p.matched + 1);
            }
            AppendReply::Mismatch { epoch: e, last, commit } if e == epoch => {
                // Resume right after the replica's last entry if this log holds it; else after
                // its commit point, which every later primary's log holds.
                let resume = if self.log.contains(last) { last.lsn } else { commit };
                if last.lsn < p.matched {
                    // It holds less than it acknowledged: it was wiped to re-sync (corruption).
                    // Start it over, or it would be sent the same unmatched tail forever.
                    p.matched = resume;
                }
                p.next = resume.max(p.matched) + 1;
            }
            // A reply to an append of an older epoch of ours: nothing to learn.
            _ => {}
        }
        self.advance_commit();
        Outcome::Continue
    }

    fn advance_commit(&mut self) {
        let mut held: Vec<u64> = self
            .voters
            .iter()
            .map(|v| if *v == self.me { self.durable } else { self.peers.get(v).map_or(0, |p| p.matched) })
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let majority = self.voters.len() / 2 + 1;
        let m = held[majority - 1];
        // Rule 3: only an entry of this epoch commits by counting; older ones ride on it.
        if m >= self.epoch_start && m > self.commit {
            self.commit = m;
        }
    }
}
