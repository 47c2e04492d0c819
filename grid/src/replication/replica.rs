//! The replica side: fencing, log matching, truncation of an uncommitted divergent suffix, and
//! a commit LSN that never moves backwards (architecture.md §5 rules 2, 3 and 5).

use super::log_index::{EntryId, LogIndex};

/// An append from a primary: entries after `prev`, and the primary's commit LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    pub epoch: u64,
    pub prev: EntryId,
    pub entries: Vec<EntryId>,
    pub commit: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendReply {
    /// Everything up to `matched` is durable here and matches the primary's log.
    Ok { epoch: u64, matched: u64 },
    /// This replica has promised a newer epoch: the sender is no longer primary.
    StaleEpoch { promised: u64 },
    /// `prev` is not in this log. `last` and `commit` tell the primary where to resume:
    /// everything up to `commit` matches any later primary's log.
    Mismatch { epoch: u64, last: EntryId, commit: u64 },
}

#[derive(Clone, Debug)]
pub struct Replica {
    pub log: LogIndex,
    /// The highest epoch this replica has accepted (by fence or append); older ones are refused.
    pub promised: u64,
    pub commit: u64,
}

impl Replica {
    pub fn new(log: LogIndex, promised: u64, commit: u64) -> Replica {
        Replica { log, promised, commit }
    }

    /// The master fences this replica into `epoch` for a promotion; the reply is its last entry.
    pub fn on_fence(&mut self, epoch: u64) -> Result<EntryId, u64> {
        if epoch < self.promised {
            return Err(self.promised);
        }
        self.promised = epoch;
        Ok(self.log.last())
    }

    /// Applies an append. The returned LSN (if any) is where the log was truncated: the driver
    /// must drop the WAL after it before writing the new entries, and fsync before replying.
    pub fn on_append(&mut self, a: &Append) -> (AppendReply, Option<u64>) {
        if a.epoch < self.promised {
            return (AppendReply::StaleEpoch { promised: self.promised }, None);
        }
        self.promised = a.epoch;
        if !self.log.contains(a.prev) {
            let reply = AppendReply::Mismatch { epoch: a.epoch, last: self.log.last(), commit: self.commit };
            return (reply, None);
        }
        let mut truncated = None;
        for e in &a.entries {
            match self.log.epoch_of(e.lsn) {
                Some(epoch) if epoch == e.epoch => continue,
                Some(_) => {
                    // Rule 5: only an uncommitted suffix may ever be cut.
                    assert!(
                        e.lsn > self.commit,
                        "truncating committed entry {} (commit {}) for epoch {}",
                        e.lsn,
                        self.commit,
                        a.epoch
                    );
                    self.log.truncate_after(e.lsn - 1);
                    truncated = Some(e.lsn - 1);
                    self.log.push(e.epoch);
                }
                None => {
                    debug_assert_eq!(e.lsn, self.log.last().lsn + 1, "entries arrive in order");
                    self.log.push(e.epoch);
                }
            }
        }
        let matched = a.prev.lsn + a.entries.len() as u64;
        let commit = a.commit.min(matched);
        if commit > self.commit {
            self.commit = commit;
        }
        (AppendReply::Ok { epoch: a.epoch, matched }, truncated)
    }
}
