//! One hosted shard replica: recovery on open, the group-committed write path, reads, and
//! checkpoints. Writes are acknowledged only after the fsync covering their WAL record, and
//! applied (made visible) in LSN order at that same moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use tokio::sync::{mpsc, oneshot};

use crate::ids::{ConceptId, ShardId};
use crate::io::Disk;
use crate::limits;
use crate::model::{validate_batch, BatchRejected, ItemError, WriteBatch};
use crate::store::{batch_codec, checkpoint, Checkpoint, CheckpointError, KeyRange, ShardStore};
use crate::wal::{self, CommitSink, Pending, RecordType, RecoveryReport, Wal, WalError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("{0}")]
    Rejected(BatchRejected),
    #[error("shard {shard} is not serving: {reason}")]
    NotServing { shard: u32, reason: String },
    #[error("shard {shard}: {reason}")]
    Storage { shard: u32, reason: String },
}

struct Waiter {
    ts_ms: u64,
    batch: WriteBatch,
    /// The concepts' ids, derived once during validation.
    ids: Vec<ConceptId>,
    done: oneshot::Sender<Result<Written, ShardError>>,
}

struct Sink {
    shard: u32,
    syncs: Arc<AtomicU64>,
    /// Held while applying; a checkpoint holds it to freeze the state without blocking readers.
    apply_gate: Arc<Mutex<()>>,
    state: Arc<RwLock<ShardStore>>,
    fault: Arc<Mutex<Option<String>>>,
}

impl CommitSink<Waiter> for Sink {
    fn durable(&mut self, mut batch: Vec<(u64, Waiter)>) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        {
            let _gate = self.apply_gate.lock().unwrap_or_else(|p| p.into_inner());
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            for (lsn, w) in &mut batch {
                st.apply_with_ids(*lsn, w.ts_ms, std::mem::take(&mut w.batch), &w.ids);
            }
        }
        for (lsn, w) in batch {
            // The writer may have given up (deadline); the write is durable all the same.
            let _ = w.done.send(Ok(Written { lsn, concept_ids: w.ids }));
        }
    }

    fn failed(&mut self, error: &WalError, batch: Vec<Waiter>) {
        let reason = error.to_string();
        let mut f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(shard = self.shard, error = %reason, "wal failed; shard stops serving");
            *f = Some(reason.clone());
        }
        for w in batch {
            let _ = w.done.send(Err(ShardError::NotServing { shard: self.shard, reason: reason.clone() }));
        }
    }
}

/// An acknowledged write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// LSN of the WAL record holding the whole batch.
    pub lsn: u64,
    /// `concept_ids[i]` is the id of the batch's concept `i`.
    pub concept_ids: Vec<ConceptId>,
}

pub struct Shard {
    pub id: ShardId,
    pub range: KeyRange,
    pub vector_dim: usize,
    pub recovery: RecoveryReport,
    dir: String,
    disk: Arc<dyn Disk>,
    state: Arc<RwLock<ShardStore>>,
    tx: mpsc::Sender<Pending<Waiter>>,
    /// Set once the WAL fails; the shard then refuses every write and read.
    fault: Arc<Mutex<Option<String>>>,
    trim_through: Arc<AtomicU64>,
    /// WAL groups committed, one fsync each.
    syncs: Arc<AtomicU64>,
    apply_gate: Arc<Mutex<()>>,
    /// Serialises checkpoints of this shard.
    checkpointing: tokio::sync::Mutex<()>,
}

fn storage_err(shard: u32, e: impl std::fmt::Display) -> ShardError {
    ShardError::Storage { shard, reason: e.to_string() }
}

impl Shard {
    /// Loads the checkpoint, replays the WAL tail, and starts the committer. Corruption in
    /// either is an error: the caller keeps the shard as not serving.
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
            if cp.key_start != range.start || cp.key_end != range.end {
                return Err(storage_err(sid, "checkpoint key range does not match the shard's"));
            }
            Some(cp)
        } else {
            None
        };
        let _ = disk.remove(&format!("{dir}/storage.dat.tmp"));
        let after = checkpoint.as_ref().map(|c| c.lsn).unwrap_or(0);
        let mut store = ShardStore::new(range, checkpoint);
        let (mut wal, recovery) = Wal::open(disk.clone(), &format!("{dir}/wal"), after, |rec| {
            let (ts, batch) = batch_codec::decode(rec.payload).map_err(|e| e.to_string())?;
            store.apply(rec.lsn, ts, batch);
            Ok(())
        })
        .map_err(|e| storage_err(sid, e))?;
        wal.set_segment_bytes_max(config.wal_segment_bytes_max);
        tracing::info!(
            shard = sid,
            lsn = recovery.last_lsn,
            replayed = recovery.records_replayed,
            truncated_bytes = recovery.truncated_tail_bytes,
            "shard recovered"
        );
        let state = Arc::new(RwLock::new(store));
        let fault = Arc::new(Mutex::new(None));
        let trim_through = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(limits::WAL_QUEUE_DEPTH_MAX);
        let syncs = Arc::new(AtomicU64::new(0));
        let apply_gate = Arc::new(Mutex::new(()));
        let sink = Sink {
            shard: sid,
            syncs: syncs.clone(),
            apply_gate: apply_gate.clone(),
            state: state.clone(),
            fault: fault.clone(),
        };
        tokio::spawn(wal::run_group_commit(wal, rx, sink, trim_through.clone()));
        Ok(Shard {
            id,
            range,
            vector_dim,
            recovery,
            dir: dir.to_string(),
            disk,
            state,
            tx,
            fault,
            trim_through,
            syncs,
            apply_gate,
            checkpointing: tokio::sync::Mutex::new(()),
        })
    }

    /// WAL group commits (each one fsync) since the shard opened.
    pub fn wal_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn check_serving(&self) -> Result<(), ShardError> {
        match self.fault() {
            Some(reason) => Err(ShardError::NotServing { shard: self.id.0, reason }),
            None => Ok(()),
        }
    }

    /// Read access to the replica's state.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, ShardStore>, ShardError> {
        self.check_serving()?;
        Ok(self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Validates the whole batch (limits and ownership), logs it as one WAL record, and returns
    /// its LSN (and the concepts' ids) once it is durable and applied.
    pub async fn write(&self, batch: WriteBatch, mut extra: Vec<ItemError>) -> Result<Written, ShardError> {
        self.check_serving()?;
        if let Err(mut rej) = validate_batch(&batch, self.vector_dim) {
            extra.append(&mut rej.errors);
            return Err(ShardError::Rejected(BatchRejected { errors: sorted(extra), unlisted: rej.unlisted }));
        }
        let ids: Vec<ConceptId> = batch.concepts.iter().map(|c| ConceptId::from_label(&c.label)).collect();
        for (i, id) in ids.iter().enumerate() {
            if !self.range.contains(*id) {
                extra.push(self.not_owned("concepts", i, *id));
            }
        }
        for (i, a) in batch.associations.iter().enumerate() {
            if !self.range.contains(a.source) && !self.range.contains(a.target) {
                extra.push(self.not_owned("associations", i, a.source));
            }
        }
        if !extra.is_empty() {
            return Err(ShardError::Rejected(BatchRejected { errors: sorted(extra), unlisted: 0 }));
        }
        if batch.is_empty() {
            return Ok(Written { lsn: self.read()?.applied_lsn(), concept_ids: ids });
        }
        let ts_ms = now_ms();
        let payload = batch_codec::encode(ts_ms, &batch);
        let (done, rx) = oneshot::channel();
        let pending = Pending { epoch: 1, rtype: RecordType::Batch, payload, item: Waiter { ts_ms, batch, ids, done } };
        let stopped = || ShardError::NotServing { shard: self.id.0, reason: "wal committer stopped".into() };
        self.tx.send(pending).await.map_err(|_| self.fault_or(stopped()))?;
        rx.await.map_err(|_| self.fault_or(stopped()))?
    }

    fn fault_or(&self, e: ShardError) -> ShardError {
        match self.fault() {
            Some(reason) => ShardError::NotServing { shard: self.id.0, reason },
            None => e,
        }
    }

    fn not_owned(&self, list: &'static str, index: usize, id: ConceptId) -> ItemError {
        ItemError {
            list,
            index,
            reason: format!(
                "placement key {:016x} is outside shard {}'s range [{:016x}, {:016x}]",
                id.placement_key(),
                self.id.0,
                self.range.start,
                self.range.end
            ),
        }
    }

    /// Writes a new `storage.dat` covering everything applied, then lets the committer trim the
    /// WAL below it. Writes pause while the image is built and written; reads do not.
    pub async fn checkpoint(&self) -> Result<u64, ShardError> {
        self.check_serving()?;
        let _one = self.checkpointing.lock().await;
        let (state, gate, disk, dir, sid) =
            (self.state.clone(), self.apply_gate.clone(), self.disk.clone(), self.dir.clone(), self.id.0);
        let lsn = crate::io::blocking(move || -> Result<u64, CheckpointError> {
            // Writes pause (the committer waits at the gate); reads go on until the install.
            let _gate = gate.lock().unwrap_or_else(|p| p.into_inner());
            let (meta, image) = {
                let st = state.read().unwrap_or_else(|p| p.into_inner());
                let meta = checkpoint::CheckpointMeta {
                    lsn: st.applied_lsn(),
                    epoch: 1,
                    key_start: st.range.start,
                    key_end: st.range.end,
                };
                let image = checkpoint::build_image(&meta, st.relations(), &st.snapshot_vertices());
                (meta, image)
            };
            checkpoint::write(&*disk, &dir, &image)?;
            drop(image);
            let cp = Checkpoint::open(disk.map(&format!("{dir}/storage.dat"))?)?;
            state.write().unwrap_or_else(|p| p.into_inner()).install_checkpoint(cp);
            Ok(meta.lsn)
        })
        .await
        .map_err(|e| storage_err(sid, e))?;
        self.trim_through.store(lsn, Ordering::Release);
        Ok(lsn)
    }
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
