//! One hosted shard replica: recovery on open, the replicated write path (`node::log`),
//! reads at the consistency the caller asks for, and checkpoints. Writes are acknowledged only
//! once their entry has committed (on a majority of the replica set, each copy fsynced), and
//! are applied (made visible) in LSN order at that moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::log::{self, apply_body, Cmd, Core, Promise, Promotion, Role, Shared, Waiter, WriteKind};
use crate::ids::{ConceptId, NodeId, ShardId};
use crate::io::Disk;
use crate::limits;
use crate::model::{
    validate_batch, Association, BatchRejected, Consistency, EdgeFilter, Forget, ItemError, WriteBatch,
};
use crate::replication::entry::{self, Body};
use crate::replication::{Append, AppendReply, EntryId, LogIndex, Replica};
use crate::store::{batch_codec, checkpoint, links, Checkpoint, CheckpointError, InEdges, KeyRange, ShardStore};
use crate::wal::{RecordType, RecoveryReport, Wal};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("{0}")]
    Rejected(BatchRejected),
    #[error("shard {shard} is not serving: {reason}")]
    NotServing { shard: u32, reason: String },
    #[error("shard {shard}: {reason}")]
    Storage { shard: u32, reason: String },
    /// Not the primary (or not yet / no longer able to act as one): nothing was logged, so
    /// the caller may retry elsewhere.
    #[error("shard {shard}: not primary: {reason}")]
    NotPrimary { shard: u32, reason: String },
    #[error("shard {shard} is busy: {reason}")]
    Busy { shard: u32, reason: String },
    /// The write was logged but its fate is not known here.
    #[error("shard {shard}: outcome unknown: {reason}")]
    Unknown { shard: u32, reason: String },
    /// A key this shard does not own (any more: it split). Nothing applied; the caller
    /// re-reads the shard map and sends it to the owner.
    #[error("shard {shard}: wrong shard: {reason}")]
    WrongShard { shard: u32, reason: String },
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// LSN of the log entry holding the whole batch.
    pub lsn: u64,
    /// `concept_ids[i]` is the id of the batch's concept `i`.
    pub concept_ids: Vec<ConceptId>,
    /// The entry put in-edges in the outbox: their delivery follows the acknowledgement.
    pub owes_in_edges: bool,
    /// The shard's range when the entry applied.
    pub range: KeyRange,
    /// Concepts and associations the entry's retractions removed.
    pub forgotten: u32,
}

/// Replication state as shard info reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicationInfo {
    pub primary_epoch: u64,
    pub promised: u64,
    pub commit: u64,
    pub last: EntryId,
    /// Leads with a lease (its epoch-start entry committed): a membership change may go on.
    pub leading: bool,
    /// Catching up from a primary; it may not vote until it holds everything committed.
    pub resyncing: bool,
}

/// (epoch, lsn, lsn_epoch, bytes so far).
type Incoming = (u64, u64, u64, Vec<u8>);

pub struct Shard {
    pub id: ShardId,
    pub vector_dim: usize,
    pub recovery: RecoveryReport,
    sh: Arc<Shared>,
    tx: mpsc::Sender<Cmd>,
    /// Serialises checkpoints of this shard.
    checkpointing: tokio::sync::Mutex<()>,
    /// A snapshot being received from the primary: (epoch, lsn, lsn_epoch, bytes so far).
    incoming: Mutex<Option<Incoming>>,
    /// Requests served (write batches, deliveries, reads), for the master's load figures.
    requests: AtomicU64,
    /// Where in the range the requests' keys fall (a split for load splits at its median).
    key_load: Mutex<KeyLoad>,
    /// When this replica last answered a vector search (its index is kept up to date while
    /// it leads or answers searches: architecture.md §11).
    searched_at: Mutex<Option<tokio::time::Instant>>,
}

/// Counts of request keys in equal slices of a range, halved whenever they pass
/// `KEY_LOAD_DECAY_TOTAL` so they follow the recent load; reset when the range changes.
#[derive(Clone, Debug)]
struct KeyLoad {
    range: Option<KeyRange>,
    buckets: [u64; limits::KEY_LOAD_BUCKETS],
}

impl Default for KeyLoad {
    fn default() -> Self {
        KeyLoad { range: None, buckets: [0; limits::KEY_LOAD_BUCKETS] }
    }
}

impl KeyLoad {
    fn bucket(range: KeyRange, key: u64) -> usize {
        let width = (range.end - range.start) as u128 + 1;
        (((key.saturating_sub(range.start)) as u128 * limits::KEY_LOAD_BUCKETS as u128 / width) as usize)
            .min(limits::KEY_LOAD_BUCKETS - 1)
    }

    fn note(&mut self, range: KeyRange, keys: impl Iterator<Item = u64>) {
        if self.range != Some(range) {
            *self = KeyLoad { range: Some(range), ..KeyLoad::default() };
        }
        for k in keys.filter(|k| (range.start..=range.end).contains(k)) {
            self.buckets[Self::bucket(range, k)] += 1;
        }
        if self.buckets.iter().sum::<u64>() >= limits::KEY_LOAD_DECAY_TOTAL {
            self.buckets.iter_mut().for_each(|b| *b /= 2);
        }
    }

    /// The slice boundary with the load on either side nearest even, if there was any load.
    fn median(&self, range: KeyRange) -> Option<u64> {
        if self.range != Some(range) {
            return None;
        }
        let total: u64 = self.buckets.iter().sum();
        let width = (range.end - range.start) as u128 + 1;
        let mut below = 0u64;
        let mut best: Option<(u64, u64)> = None;
        for (i, b) in self.buckets.iter().enumerate().take(limits::KEY_LOAD_BUCKETS - 1) {
            below += b;
            let off = (below as i128 * 2 - total as i128).unsigned_abs() as u64;
            let at = range.start + ((i as u128 + 1) * width / limits::KEY_LOAD_BUCKETS as u128) as u64;
            if best.is_none_or(|(o, _)| off < o) {
                best = Some((off, at));
            }
        }
        best.filter(|_| total > 0).map(|(_, at)| at).filter(|at| *at > range.start && *at <= range.end)
    }
}

fn storage_err(shard: u32, e: impl std::fmt::Display) -> ShardError {
    ShardError::Storage { shard, reason: e.to_string() }
}

impl Shard {
    /// Loads the checkpoint, reads the WAL tail, applies what is known committed, and starts
    /// the log driver. Corruption is an error: the caller keeps the shard as not serving. A
    /// standalone node (no master) then leads the shard alone in a new epoch.
    pub async fn open(
        disk: Arc<dyn Disk>,
        id: ShardId,
        range: KeyRange,
        dir: &str,
        config: &super::NodeConfig,
    ) -> Result<Shard, ShardError> {
        let vector_dim = config.vector_dim;
        let sid = id.0;
        let cp_path = format!("{dir}/storage.dat");
        let checkpoint = if disk.exists(&cp_path) {
            let load = || -> Result<Checkpoint, String> {
                let map = disk.map(&cp_path).map_err(|e| format!("reading {cp_path}: {e}"))?;
                Checkpoint::open(map).map_err(|e| format!("{cp_path}: {e}"))
            };
            // Once more before refusing to serve: a read error in transit is not a damaged file.
            let cp = load().or_else(|_| load()).map_err(|e| storage_err(sid, e))?;
            // The end moves (a split narrows it, a merge widens it; `shard.meta` keeps the range
            // the replica was created with); the start never does.
            if cp.key_start != range.start || cp.key_start > cp.key_end {
                return Err(storage_err(sid, "checkpoint key range is outside the shard's"));
            }
            Some(cp)
        } else {
            None
        };
        let _ = disk.remove(&format!("{dir}/storage.dat.tmp"));
        let _ = disk.remove(&format!("{dir}/promise.tmp"));
        let promise = match disk.read(&format!("{dir}/promise")) {
            Ok(b) => Promise::decode(&b)
                .or_else(|| disk.read(&format!("{dir}/promise")).ok().as_deref().and_then(Promise::decode))
                .ok_or_else(|| storage_err(sid, "the promise file is corrupt; re-sync this replica from its peers"))?,
            Err(_) => Promise::default(),
        };
        let base = checkpoint.as_ref().map(|c| EntryId { epoch: c.epoch, lsn: c.lsn }).unwrap_or_default();
        let current = checkpoint.as_ref().map_or(range, |c| KeyRange { start: c.key_start, end: c.key_end });
        let mut store = ShardStore::new(current, checkpoint);
        let mut log_index = LogIndex::new(base);
        let mut tail: Vec<(EntryId, RecordType, Vec<u8>)> = Vec::new();
        let mut hint = base.lsn;
        let (mut wal, recovery) = Wal::open(disk.clone(), &format!("{dir}/wal"), base.lsn, |rec| {
            match rec.rtype {
                RecordType::Entry => hint = hint.max(entry::decode(rec.payload)?.0),
                // Written before replication: acknowledged, so committed.
                RecordType::Batch => hint = hint.max(rec.lsn),
                t => return Err(format!("unexpected record type {t:?} in a shard log")),
            }
            let id = log_index.push(rec.epoch);
            if id.lsn != rec.lsn {
                return Err(format!("lsn {} where {} was expected", rec.lsn, id.lsn));
            }
            tail.push((id, rec.rtype, rec.payload.to_vec()));
            Ok(())
        })
        .map_err(|e| storage_err(sid, e))?;
        wal.set_segment_bytes_max(config.wal_segment_bytes_max);
        let commit = hint.min(log_index.last().lsn);
        // Apply the known-committed prefix; the rest waits for a primary's commit LSN.
        let mut applied = base.lsn;
        let mut pending = Vec::new();
        for (id, rtype, payload) in tail {
            if id.lsn > commit {
                pending.push((id, payload));
                continue;
            }
            let body = match rtype {
                RecordType::Batch => Body::Batch(&payload[..]),
                _ => entry::decode(&payload).map_err(|e| storage_err(sid, e))?.1,
            };
            apply_body(&mut store, sid, id, body, &*disk)
                .map_err(|e| storage_err(sid, format!("entry {}: {e}", id.lsn)))?;
            applied = id.lsn;
        }
        let promised = promise.promised.max(log_index.last().epoch);
        tracing::info!(
            shard = sid,
            lsn = recovery.last_lsn,
            commit,
            promised,
            replayed = recovery.records_replayed,
            truncated_bytes = recovery.truncated_tail_bytes,
            "shard recovered"
        );
        let role = Role::Replica(Replica::new(log_index, promised, commit));
        let mut core = Core::new(role, promise, pending, applied, config.repl_retain_bytes);
        core.snapshot_through = store.range_lsn();
        let (sh, replies) = Shared::new(sid, range, dir.to_string(), disk, store, core);
        let (tx, rx) = mpsc::channel(limits::WAL_QUEUE_DEPTH_MAX);
        tokio::spawn(log::run_log(sh.clone(), wal, rx, replies));
        let shard = Shard {
            id,
            vector_dim,
            recovery,
            sh,
            tx,
            checkpointing: tokio::sync::Mutex::new(()),
            incoming: Mutex::new(None),
            requests: AtomicU64::new(0),
            key_load: Mutex::new(KeyLoad::default()),
            searched_at: Mutex::new(None),
        };
        if config.standalone {
            let (promised, led) = {
                let c = shard.sh.core();
                (c.role.promised(), c.promise.led)
            };
            let me = crate::ids::NodeId(0);
            let pr = Promotion {
                epoch: promised.max(led) + 1,
                me,
                voters: vec![(me, String::new())],
                lease_wait: Duration::ZERO,
            };
            shard.promote(pr).await.map_err(|e| storage_err(sid, e))?;
        }
        Ok(shard)
    }

    /// The key range this replica owns now (narrower than at creation once it split).
    pub fn range(&self) -> KeyRange {
        self.sh.state.read().unwrap_or_else(|p| p.into_inner()).range
    }

    /// WAL groups committed, one fsync each.
    pub fn wal_syncs(&self) -> u64 {
        self.sh.syncs.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Option<String> {
        self.sh.fault()
    }

    fn check_serving(&self) -> Result<(), ShardError> {
        match self.fault() {
            Some(reason) => Err(ShardError::NotServing { shard: self.id.0, reason }),
            None => Ok(()),
        }
    }

    /// Read access to the replica's committed state (eventual consistency).
    pub fn read(&self) -> Result<RwLockReadGuard<'_, ShardStore>, ShardError> {
        self.check_serving()?;
        Ok(self.sh.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Requests served since this process opened the replica.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts where in `range` (this replica's now) a request's keys fall (for a split's
    /// point, `split_point`).
    pub fn note_keys(&self, range: KeyRange, keys: impl Iterator<Item = u64>) {
        self.key_load.lock().unwrap_or_else(|p| p.into_inner()).note(range, keys);
    }

    /// Where to split this shard: the key that halves its recent requests (`by_load`), else
    /// the one that halves its concepts; None when neither would leave both halves a share.
    pub fn split_point(&self, by_load: bool) -> Result<Option<u64>, ShardError> {
        let range = self.range();
        let load = by_load.then(|| self.key_load.lock().unwrap_or_else(|p| p.into_inner()).median(range)).flatten();
        Ok(match load {
            Some(at) => Some(at),
            None => self.read()?.median_key(),
        })
    }

    /// Notes that this replica answers vector searches, so it keeps its index built.
    pub fn searched(&self) {
        *self.searched_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// Whether this replica's vector index is worth building now: it leads (strong searches
    /// come here, and a follower that takes over starts from exact scans), or it answered a
    /// search within `VECTOR_INDEX_KEEP_MS`.
    pub fn wants_vector_index(&self) -> bool {
        let recent = self
            .searched_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(limits::VECTOR_INDEX_KEEP_MS));
        recent || self.sh.core().leads_with_lease(crate::io::clock::lease_now())
    }

    /// Read access at `consistency`: strong reads only on a primary holding its lease. Counts
    /// as a request (every read RPC takes it once).
    pub fn read_at(&self, consistency: Consistency) -> Result<RwLockReadGuard<'_, ShardStore>, ShardError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if consistency == Consistency::Strong && !self.sh.core().leads_with_lease(crate::io::clock::lease_now()) {
            let reason = "strong reads go to the primary while it holds its lease".into();
            return Err(ShardError::NotPrimary { shard: self.id.0, reason });
        }
        let st = self.read()?;
        // A frozen shard's keys are about to be served by the shard it merges into, which
        // may take writes before a stale router learns it: no strong read may answer here.
        if let (Consistency::Strong, Some(into)) = (consistency, st.frozen_into()) {
            return Err(self.merging(into));
        }
        Ok(st)
    }

    fn merging(&self, into: u32) -> ShardError {
        let reason = format!("merging into shard {into}; re-read the shard map");
        ShardError::WrongShard { shard: self.id.0, reason }
    }

    pub fn replication(&self) -> ReplicationInfo {
        let c = self.sh.core();
        ReplicationInfo {
            primary_epoch: c.primary_epoch(),
            promised: c.role.promised(),
            commit: c.applied,
            last: c.role.log().last(),
            leading: c.leads_with_lease(crate::io::clock::lease_now()),
            resyncing: c.promise.resync,
        }
    }

    /// Stops the log of a replica that left its replica set: writes it holds, and any sent
    /// later, fail instead of waiting for a commit that nobody will make.
    pub(crate) fn retire(&self) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Cmd::Retire).await;
        });
    }

    /// Alive while anything of this replica still runs (its log task, shippers, readers).
    pub(crate) fn liveness(&self) -> std::sync::Weak<super::log::Shared> {
        Arc::downgrade(&self.sh)
    }

    /// While leading `epoch`, ship to exactly these learners as well (membership changes).
    pub fn set_learners(&self, epoch: u64, learners: &[(crate::ids::NodeId, String)]) {
        self.sh.set_learners(epoch, learners);
    }

    /// crc32c of the applied state's canonical image: equal on replicas that applied the same
    /// entries. A full scan; for checkers and operators.
    pub fn state_digest(&self) -> Result<u64, ShardError> {
        let _gate = self.sh.apply_gate.lock().unwrap_or_else(|p| p.into_inner());
        let st = self.read()?;
        let meta = checkpoint::CheckpointMeta {
            lsn: st.applied_lsn(),
            epoch: 0,
            key_start: st.range.start,
            key_end: st.range.end,
        };
        let image = checkpoint::build_image(&meta, st.relations(), &st.snapshot_vertices(), st.links());
        Ok(crc32c::crc32c(&image) as u64 | (st.applied_lsn() << 32))
    }

    async fn command<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Cmd) -> Result<T, String> {
        if let Some(f) = self.fault() {
            return Err(f);
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| "the replica's log stopped".to_string())?;
        rx.await.map_err(|_| self.fault().unwrap_or_else(|| "the replica's log stopped".into()))?
    }

    /// The master fences this replica into `epoch`; returns its last entry once durable, and
    /// how long ago it last accepted an append.
    pub async fn fence(&self, epoch: u64) -> Result<super::log::Fenced, String> {
        self.command(|tx| Cmd::Fence(epoch, tx)).await
    }

    /// Before a leadership transfer: stop taking writes for up to `wait` and return once voter
    /// `to` holds every entry logged here (true), or when `wait` runs out (false).
    pub async fn handover(&self, epoch: u64, to: NodeId, wait: Duration) -> Result<bool, String> {
        if let Some(f) = self.fault() {
            return Err(f);
        }
        // The core compares against the lease clock writes are stamped with.
        let until = crate::io::clock::lease_now() + wait;
        self.sh.core().begin_handover(epoch, to, until)?;
        loop {
            if self.sh.core().handed_over(to) {
                return Ok(true);
            }
            if crate::io::clock::lease_now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Logs a split of this shard at `at` into shard `child` (primary of `epoch` only) and
    /// answers once it applied here: this replica then owns `[start, at - 1]` and has written
    /// the new shard's replica. Answers at once if this shard already ends at `at - 1`.
    pub async fn split(&self, epoch: u64, at: u64, child: u32) -> Result<u64, ShardError> {
        self.check_serving()?;
        let done = |r: KeyRange| r.end.checked_add(1) == Some(at);
        let range = self.range();
        if done(range) {
            return Ok(self.read()?.applied_lsn());
        }
        if self.sh.core().primary_epoch() != epoch {
            let reason = format!("not the primary of epoch {epoch}");
            return Err(ShardError::NotPrimary { shard: self.id.0, reason });
        }
        {
            let st = self.read()?;
            if st.frozen_into().is_some() || st.absorbing().is_some() {
                let reason = "a merge is under way; it splits afterwards".into();
                return Err(ShardError::Busy { shard: self.id.0, reason });
            }
        }
        if at <= range.start || at > range.end || child == self.id.0 {
            let reason = format!(
                "cannot split at {at:#018x} into shard {child}: outside [{:#018x}, {:#018x}]",
                range.start, range.end
            );
            return Err(ShardError::Storage { shard: self.id.0, reason });
        }
        let bytes = crate::replication::entry::split_bytes(at, child);
        let w = self.submit(WriteKind::Split, now_ms(), WriteBatch::default(), Vec::new(), bytes).await?;
        if !done(self.range()) {
            let reason = "the split entry applied without splitting (a concurrent split?)".into();
            return Err(ShardError::Storage { shard: self.id.0, reason });
        }
        Ok(w.lsn)
    }

    /// Freezes this shard to be merged into shard `into` (primary of `epoch` only;
    /// architecture.md §10): logs the `Freeze` entry unless it applied already. Answers the
    /// applied LSN and whether the outbox is empty (the shard's data is then final).
    pub async fn freeze(&self, epoch: u64, into: u32) -> Result<(u64, bool), ShardError> {
        self.check_serving()?;
        let frozen = |st: &ShardStore| (st.applied_lsn(), st.links().outbox.is_empty());
        {
            let st = self.read()?;
            match st.frozen_into() {
                Some(i) if i == into => return Ok(frozen(&st)),
                Some(i) => {
                    let reason = format!("frozen to merge into shard {i}, not {into}");
                    return Err(ShardError::Storage { shard: self.id.0, reason });
                }
                None if st.absorbing().is_some() => {
                    let reason = "absorbing another shard; retry once it is done".into();
                    return Err(ShardError::Busy { shard: self.id.0, reason });
                }
                None => {}
            }
        }
        self.primary_of(epoch)?;
        self.submit_merge(Body::Freeze { into }).await?;
        let st = self.read()?;
        if st.frozen_into() != Some(into) {
            let reason = "the freeze entry applied without freezing".into();
            return Err(ShardError::Storage { shard: self.id.0, reason });
        }
        Ok(frozen(&st))
    }

    fn primary_of(&self, epoch: u64) -> Result<(), ShardError> {
        if self.sh.core().primary_epoch() != epoch || !self.replication().leading {
            let reason = format!("not leading epoch {epoch}");
            return Err(ShardError::NotPrimary { shard: self.id.0, reason });
        }
        Ok(())
    }

    async fn submit_merge(&self, body: Body<'_>) -> Result<Written, ShardError> {
        let bytes = entry::encode(0, body);
        self.submit(WriteKind::Merge, now_ms(), WriteBatch::default(), Vec::new(), bytes).await
    }

    /// Part of a frozen, drained shard's data for a merge: its vertices from placement key
    /// `from` on, about `bytes_max` bytes of them (at least one vertex).
    pub fn merge_part(&self, from: u64, bytes_max: usize) -> Result<MergePart, ShardError> {
        let st = self.read()?;
        if st.frozen_into().is_none() || !st.links().outbox.is_empty() {
            let reason = "not frozen with its outbox delivered yet".into();
            return Err(ShardError::Busy { shard: self.id.0, reason });
        }
        let (vertices, next) = st.vertices_from(from, bytes_max);
        let meta = checkpoint::CheckpointMeta {
            lsn: st.applied_lsn(),
            epoch: 0,
            key_start: from,
            key_end: next.map_or(st.range.end, |n| n - 1),
        };
        let image = checkpoint::build_image(&meta, st.relations(), &vertices, &crate::store::Links::default());
        let marks = crate::store::Links { outbox: Default::default(), ..st.links().clone() };
        Ok(MergePart { image, next, range: st.range, marks: marks.encode() })
    }

    /// Where a merge of shard `from` (owning `right`) into this one stands here: not begun,
    /// absorbing, or done (this shard's range takes in `right`).
    pub fn merge_stage(&self, from: u32, right: KeyRange) -> Result<MergeStage, ShardError> {
        let st = self.read()?;
        Ok(match st.absorbing() {
            Some(f) if f == from => MergeStage::Absorbing,
            Some(f) => {
                let reason = format!("absorbing shard {f}, not {from}");
                return Err(ShardError::Busy { shard: self.id.0, reason });
            }
            None if st.range.end >= right.end && st.range.start < right.start => MergeStage::Done,
            None if st.range.end.checked_add(1) == Some(right.start) => MergeStage::NotBegun,
            None => {
                let reason = format!(
                    "this shard [{:#018x}, {:#018x}] does not end where shard {from} starts ({:#018x})",
                    st.range.start, st.range.end, right.start
                );
                return Err(ShardError::Storage { shard: self.id.0, reason });
            }
        })
    }

    /// Logs one step of absorbing shard `from` (primary of `epoch` only): its `MergeBegin`, a
    /// part, or its `MergeEnd`; answers once it applied here.
    pub async fn merge_step(&self, epoch: u64, body: Body<'_>) -> Result<u64, ShardError> {
        self.check_serving()?;
        self.primary_of(epoch)?;
        Ok(self.submit_merge(body).await?.lsn)
    }

    /// The master names this replica primary.
    pub async fn promote(&self, pr: Promotion) -> Result<(), String> {
        self.command(|tx| Cmd::Promote(pr, tx)).await
    }

    /// An append from the primary; the reply follows the fsync.
    pub async fn append(&self, a: Append, payloads: Vec<Arc<Vec<u8>>>) -> Result<AppendReply, String> {
        self.command(|tx| Cmd::Append(a, payloads, tx)).await
    }

    /// One chunk of a snapshot from the primary; the last one installs it.
    #[allow(clippy::too_many_arguments)]
    pub async fn snapshot_chunk(
        &self,
        epoch: u64,
        at: EntryId,
        offset: u64,
        total: u64,
        data: Vec<u8>,
        done: bool,
    ) -> Result<AppendReply, String> {
        if total > limits::SNAPSHOT_BYTES_MAX {
            return Err(format!("a snapshot of {total} bytes exceeds the {} byte limit", limits::SNAPSHOT_BYTES_MAX));
        }
        let image = {
            let mut inc = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
            if offset == 0 {
                *inc = Some((epoch, at.lsn, at.epoch, Vec::with_capacity(total as usize)));
            }
            let Some((e, l, le, buf)) = inc.as_mut() else { return Err("snapshot chunk out of order".into()) };
            if (*e, *l, *le) != (epoch, at.lsn, at.epoch) || buf.len() as u64 != offset {
                *inc = None;
                return Err("snapshot chunk out of order".into());
            }
            buf.extend_from_slice(&data);
            if !done {
                return Ok(AppendReply::Ok { epoch, matched: 0 });
            }
            inc.take().map(|(_, _, _, b)| b).unwrap_or_default()
        };
        self.command(|tx| Cmd::Install { epoch, at, image, done: tx }).await
    }

    /// Validates the whole batch (limits and ownership), logs it as one entry, and returns its
    /// LSN (and the concepts' ids) once it has committed and been applied.
    pub async fn write(&self, batch: WriteBatch, mut extra: Vec<ItemError>) -> Result<Written, ShardError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.check_serving()?;
        if let Err(mut rej) = validate_batch(&batch, self.vector_dim) {
            extra.append(&mut rej.errors);
            return Err(ShardError::Rejected(BatchRejected { errors: sorted(extra), unlisted: rej.unlisted }));
        }
        let ids: Vec<ConceptId> = batch.concepts.iter().map(|c| ConceptId::from_label(&c.label)).collect();
        if !extra.is_empty() {
            return Err(ShardError::Rejected(BatchRejected { errors: sorted(extra), unlisted: 0 }));
        }
        if let Some(into) = self.read()?.frozen_into() {
            return Err(self.merging(into));
        }
        let range = self.range();
        self.note_keys(
            range,
            ids.iter().chain(batch.associations.iter().map(|a| &a.source)).map(|id| id.placement_key()),
        );
        // An association is logged on its source's shard (architecture.md §5 rule 7).
        let stray = ids
            .iter()
            .copied()
            .chain(batch.associations.iter().map(|a| a.source))
            .chain(batch.forget.iter().map(|f| f.owner()))
            .find(|id| !range.contains(*id));
        if let Some(id) = stray {
            return Err(self.wrong_shard(range, id));
        }
        if batch.is_empty() {
            let lsn = self.read()?.applied_lsn();
            return Ok(Written { lsn, concept_ids: ids, owes_in_edges: false, range, forgotten: 0 });
        }
        self.check_forget_degree(&batch)?;
        let remote = batch.associations.iter().any(|a| !range.contains(a.target))
            || batch.forget.iter().any(|f| match f {
                Forget::Concept(_) => true,
                Forget::Association { target, .. } => !range.contains(*target),
            });
        let owed = self.read()?.links().outbox.len();
        if remote && owed >= limits::OUTBOX_ITEMS_MAX {
            let reason = format!("{owed} in-edges wait for delivery to other shards; retry later");
            return Err(ShardError::Busy { shard: self.id.0, reason });
        }
        let ts_ms = now_ms();
        let bytes = batch_codec::encode(ts_ms, &batch);
        self.submit(WriteKind::Batch, ts_ms, batch, ids, bytes).await
    }

    /// Refuses to forget a concept with more associations than one entry can retract.
    fn check_forget_degree(&self, batch: &WriteBatch) -> Result<(), ShardError> {
        let st = self.read()?;
        for (i, f) in batch.forget.iter().enumerate() {
            let Forget::Concept(id) = f else { continue };
            let mut n = 0usize;
            st.for_each_edge(*id, &EdgeFilter::default(), |_| {
                n += 1;
                n <= limits::FORGET_EDGES_MAX
            });
            if n > limits::FORGET_EDGES_MAX {
                let reason = format!(
                    "concept {id} has more than {} associations; forget some of them first",
                    limits::FORGET_EDGES_MAX
                );
                return Err(ShardError::Rejected(BatchRejected {
                    errors: vec![ItemError { list: "forget", index: i, reason }],
                    unlisted: 0,
                }));
            }
        }
        Ok(())
    }

    /// Logs in-edges delivered from `source_shard`'s outbox (items in sequence order). Items
    /// already applied are skipped when the entry applies, so re-delivery is harmless.
    /// `routed`: the range the deliverer's map gave this shard; refused unless it owns exactly
    /// that when the entry applies (`InEdges::routed`).
    pub async fn deliver_in_edges(
        &self,
        source_shard: u32,
        items: Vec<(u64, Association)>,
        routed: Option<KeyRange>,
    ) -> Result<u64, ShardError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.check_serving()?;
        // Retractions carry a confidence no write may (`Association::RETRACTED`).
        let checked = |a: &Association| Association { confidence: a.confidence.max(0.0), ..a.clone() };
        let batch = WriteBatch { associations: items.iter().map(|(_, a)| checked(a)).collect(), ..Default::default() };
        let mut extra = Vec::new();
        if let Err(mut rej) = validate_batch(&batch, self.vector_dim) {
            extra.append(&mut rej.errors);
            return Err(ShardError::Rejected(BatchRejected { errors: sorted(extra), unlisted: rej.unlisted }));
        }
        if !items.windows(2).all(|w| w[0].0 < w[1].0) {
            extra.push(ItemError { list: "associations", index: 0, reason: "sequence numbers must ascend".into() });
        }
        if !extra.is_empty() {
            return Err(ShardError::Rejected(BatchRejected { errors: sorted(extra), unlisted: 0 }));
        }
        if let Some(into) = self.read()?.frozen_into() {
            return Err(self.merging(into));
        }
        let range = self.range();
        if let Some(a) = batch.associations.iter().find(|a| !range.contains(a.target)) {
            return Err(self.wrong_shard(range, a.target));
        }
        self.note_keys(range, batch.associations.iter().map(|a| a.target.placement_key()));
        if let Some(r) = routed.filter(|r| *r != range) {
            let reason = format!(
                "this shard owns [{:016x}, {:016x}], not the [{:016x}, {:016x}] the delivery was routed by; re-read the shard map",
                range.start, range.end, r.start, r.end
            );
            return Err(ShardError::WrongShard { shard: self.id.0, reason });
        }
        let routed = routed.map(|r| (r.start, r.end));
        let bytes = InEdges { source_shard, items, routed }.encode();
        Ok(self.submit(WriteKind::InEdges, now_ms(), WriteBatch::default(), Vec::new(), bytes).await?.lsn)
    }

    /// Logs that the outbox items `seqs` reached their target shards (primary only).
    pub async fn mark_delivered(&self, seqs: &[u64]) -> Result<u64, ShardError> {
        self.check_serving()?;
        let bytes = links::encode_delivered(seqs);
        Ok(self.submit(WriteKind::Delivered, now_ms(), WriteBatch::default(), Vec::new(), bytes).await?.lsn)
    }

    /// Up to `max` undelivered outbox items, in sequence order.
    pub fn outbox(&self, max: usize) -> Result<Vec<(u64, Association)>, ShardError> {
        Ok(self.read()?.outbox_head(max))
    }

    /// Hands `w` to the log and waits for its entry to commit and apply.
    async fn submit(
        &self,
        kind: WriteKind,
        ts_ms: u64,
        batch: WriteBatch,
        ids: Vec<ConceptId>,
        bytes: Vec<u8>,
    ) -> Result<Written, ShardError> {
        let (done, rx) = oneshot::channel();
        let w = Waiter { kind, ts_ms, batch, ids, bytes, done };
        let stopped = || ShardError::NotServing { shard: self.id.0, reason: "the replica's log stopped".into() };
        self.tx.send(Cmd::Write(w)).await.map_err(|_| self.fault_or(stopped()))?;
        rx.await.map_err(|_| self.fault_or(stopped()))?
    }

    fn fault_or(&self, e: ShardError) -> ShardError {
        match self.fault() {
            Some(reason) => ShardError::NotServing { shard: self.id.0, reason },
            None => e,
        }
    }

    fn wrong_shard(&self, range: KeyRange, id: ConceptId) -> ShardError {
        wrong_shard(self.id.0, range, id)
    }

    /// Writes a new `storage.dat` covering everything applied (committed), then lets the log
    /// trim the WAL below it. Applying pauses while the image is built and written; reads and
    /// logging do not.
    pub async fn checkpoint(&self) -> Result<u64, ShardError> {
        self.check_serving()?;
        if self.read()?.absorbing().is_some() {
            // The absorbed shard's parts live only in the log until its end entry.
            let reason = "absorbing a merge; the checkpoint follows its end".into();
            return Err(ShardError::Busy { shard: self.id.0, reason });
        }
        let _one = self.checkpointing.lock().await;
        let sh = self.sh.clone();
        let sid = self.id.0;
        let lsn = crate::io::blocking(move || -> Result<u64, CheckpointError> {
            // Lock order: apply gate, state, core (briefly). The log task never holds the core
            // while it waits for the gate.
            let _gate = sh.apply_gate.lock().unwrap_or_else(|p| p.into_inner());
            let (meta, image) = {
                let st = sh.state.read().unwrap_or_else(|p| p.into_inner());
                let lsn = st.applied_lsn();
                let epoch = sh.core().role.log().epoch_of(lsn).unwrap_or(0);
                let meta = checkpoint::CheckpointMeta { lsn, epoch, key_start: st.range.start, key_end: st.range.end };
                let image = checkpoint::build_image(&meta, st.relations(), &st.snapshot_vertices(), st.links());
                (meta, image)
            };
            checkpoint::write(&*sh.disk, &sh.dir, &image)?;
            drop(image);
            let cp = Checkpoint::open(sh.disk.map(&format!("{}/storage.dat", sh.dir))?)?;
            sh.state.write().unwrap_or_else(|p| p.into_inner()).install_checkpoint(cp);
            Ok(meta.lsn)
        })
        .await
        .map_err(|e| storage_err(sid, e))?;
        self.sh.trim_through.store(lsn, Ordering::Release);
        Ok(lsn)
    }
}

/// Part of a frozen shard's data, for the shard absorbing it (`Shard::merge_part`).
pub struct MergePart {
    /// A checkpoint image of the part's vertices.
    pub image: Vec<u8>,
    /// The placement key the next part starts at (none: this was the last).
    pub next: Option<u64>,
    /// The frozen shard's range and inbox marks (`Links` encoding).
    pub range: KeyRange,
    pub marks: Vec<u8>,
}

/// Where a merge stands on one replica of the shard absorbing another.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MergeStage {
    NotBegun,
    Absorbing,
    Done,
}

/// `id` is not `shard`'s (any more: it split); the caller re-reads the map.
pub(crate) fn wrong_shard(shard: u32, range: KeyRange, id: ConceptId) -> ShardError {
    let reason = format!(
        "placement key {:016x} is outside its range [{:016x}, {:016x}]; re-read the shard map",
        id.placement_key(),
        range.start,
        range.end
    );
    ShardError::WrongShard { shard, reason }
}

fn sorted(mut v: Vec<ItemError>) -> Vec<ItemError> {
    v.sort_by(|a, b| (a.list, a.index).cmp(&(b.list, b.index)));
    v.truncate(limits::BATCH_ERRORS_LISTED_MAX);
    v
}

/// Wall-clock milliseconds; simulated time inside madsim.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_median_falls_where_half_the_requests_are_and_follows_the_recent_load() {
        let range = KeyRange { start: 1 << 40, end: (1 << 40) + (1 << 30) - 1 };
        let at = |frac: f64| range.start + ((range.end - range.start) as f64 * frac) as u64;
        let mut kl = KeyLoad::default();
        assert_eq!(kl.median(range), None, "no load seen");
        // Three quarters of the requests in the first tenth of the range.
        kl.note(range, (0..3000).map(|i| at(0.1 * (i as f64 / 3000.0))));
        kl.note(range, (0..1000).map(|i| at(0.1 + 0.9 * (i as f64 / 1000.0))));
        let m = kl.median(range).expect("a median");
        assert!(m > range.start && m < at(0.1), "the median {m:#x} lies in the busy tenth");
        // The load moves to the top half: the decay lets the median follow it.
        for _ in 0..8 {
            kl.note(range, (0..limits::KEY_LOAD_DECAY_TOTAL / 4).map(|i| at(0.5 + 0.5 * (i as f64 / 16384.0))));
        }
        assert!(kl.median(range).expect("a median") > at(0.5));
        // A new range (the shard split) starts afresh; keys outside it do not count.
        let half = KeyRange { start: range.start, end: at(0.5) };
        kl.note(half, [range.end].into_iter());
        assert_eq!(kl.median(half), None);
    }
}
