//! What replication needs to know about a replica's log: which epoch wrote each LSN. Payloads
//! stay in the WAL; this is the (epoch, lsn) skeleton, run-length encoded because epochs change
//! rarely (one run per primary change), so it stays small however long the log.

/// One entry's identity. Ordered by epoch, then LSN: the greater log wins a promotion.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub epoch: u64,
    pub lsn: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogIndex {
    /// The newest entry below the log (covered by a checkpoint or trimmed): its id is all that
    /// is known of the prefix. `EntryId::default()` for an empty history.
    base: EntryId,
    /// `(first_lsn, epoch)` runs, ascending, covering `base.lsn + 1 ..= last`.
    runs: Vec<(u64, u64)>,
    last: u64,
}

impl LogIndex {
    pub fn new(base: EntryId) -> LogIndex {
        LogIndex { base, runs: Vec::new(), last: base.lsn }
    }

    pub fn base(&self) -> EntryId {
        self.base
    }

    pub fn last(&self) -> EntryId {
        EntryId { epoch: self.epoch_of(self.last).unwrap_or(self.base.epoch), lsn: self.last }
    }

    /// The epoch of the entry at `lsn`, if the log holds it (the base counts).
    pub fn epoch_of(&self, lsn: u64) -> Option<u64> {
        if lsn == self.base.lsn {
            return Some(self.base.epoch);
        }
        if lsn < self.base.lsn || lsn > self.last {
            return None;
        }
        let i = self.runs.partition_point(|(first, _)| *first <= lsn);
        self.runs.get(i.checked_sub(1)?).map(|(_, e)| *e)
    }

    pub fn contains(&self, id: EntryId) -> bool {
        self.epoch_of(id.lsn) == Some(id.epoch)
    }

    /// Appends the next entry. Epochs never go back within one log.
    pub fn push(&mut self, epoch: u64) -> EntryId {
        assert!(epoch >= self.last().epoch, "epoch went back from {} to {epoch}", self.last().epoch);
        self.last += 1;
        if self.runs.last().is_none_or(|(_, e)| *e != epoch) {
            self.runs.push((self.last, epoch));
        }
        EntryId { epoch, lsn: self.last }
    }

    /// Drops every entry after `lsn`.
    pub fn truncate_after(&mut self, lsn: u64) {
        assert!(lsn >= self.base.lsn, "cannot truncate below the base ({} < {})", lsn, self.base.lsn);
        self.last = self.last.min(lsn);
        self.runs.retain(|(first, _)| *first <= lsn);
    }

    /// Forgets entries up to `lsn` (a checkpoint covers them); `lsn` must be in the log.
    pub fn trim_through(&mut self, lsn: u64) {
        let Some(epoch) = self.epoch_of(lsn) else { return };
        self.base = EntryId { epoch, lsn };
        let keep_from = self.runs.partition_point(|(first, _)| *first <= lsn);
        let mut runs: Vec<(u64, u64)> = Vec::with_capacity(self.runs.len() - keep_from + 1);
        if lsn < self.last && self.runs.get(keep_from).is_none_or(|(first, _)| *first != lsn + 1) {
            runs.push((lsn + 1, epoch));
        }
        runs.extend_from_slice(&self.runs[keep_from..]);
        self.runs = runs;
    }

    /// Ids of the entries `from ..= to` (both in the log).
    pub fn ids(&self, from: u64, to: u64) -> Vec<EntryId> {
        (from..=to.min(self.last)).filter_map(|lsn| Some(EntryId { epoch: self.epoch_of(lsn)?, lsn })).collect()
    }
}
