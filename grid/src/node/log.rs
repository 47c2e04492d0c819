//! A shard replica's replicated log: the driver that runs the replication state machines
//! (`replication::{Primary, Replica}`) over the WAL. One task owns the WAL and handles every
//! command in groups: client writes (primary), appends from the primary, fences and
//! promotions from the master, snapshot installs. A group is written with one fsync; only then
//! are its replies sent, the primary's commit LSN advanced and committed entries applied, so
//! the store only ever holds committed data and acknowledgements follow commit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::shard::{ShardError, Written};
use crate::ids::{ConceptId, NodeId};
use crate::io::{AbortOnDrop, Disk};
use crate::limits;
use crate::model::WriteBatch;
use crate::replication::entry::{self, Body};
use crate::replication::witness::{self, Event};
use crate::replication::{Append, AppendReply, EntryId, LogIndex, Primary, Replica};
use crate::store::{batch_codec, links, Checkpoint, InEdges, KeyRange, ShardStore};
use crate::wal::{RecordType, Wal, WalError};

/// A write waiting for its entry to commit.
pub(crate) struct Waiter {
    pub kind: WriteKind,
    pub ts_ms: u64,
    /// The decoded batch (`WriteKind::Batch` only), applied without decoding `bytes` again.
    pub batch: WriteBatch,
    pub ids: Vec<ConceptId>,
    /// The entry body: `batch_codec` bytes of (ts, batch), or the `links` encoding.
    pub bytes: Vec<u8>,
    pub done: oneshot::Sender<Result<Written, ShardError>>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    Batch,
    InEdges,
    Delivered,
}

/// Applies one committed entry's body to the store (live and at recovery alike).
pub(crate) fn apply_body(st: &mut ShardStore, lsn: u64, body: Body<'_>) -> Result<(), String> {
    match body {
        Body::EpochStart => st.apply(lsn, 0, WriteBatch::default()),
        Body::Batch(b) => {
            let (ts, batch) = batch_codec::decode(b).map_err(|e| e.to_string())?;
            st.apply(lsn, ts, batch);
        }
        Body::InEdges(b) => st.apply_in_edges(lsn, InEdges::decode(b).map_err(|e| e.to_string())?),
        Body::Delivered(b) => st.apply_delivered(lsn, &links::decode_delivered(b).map_err(|e| e.to_string())?),
    }
    Ok(())
}

/// What the master asked a node to lead.
#[derive(Clone, Debug)]
pub struct Promotion {
    pub epoch: u64,
    pub me: NodeId,
    /// Voters and their storage addresses (the primary included).
    pub voters: Vec<(NodeId, String)>,
    pub lease_wait: Duration,
}

pub(crate) enum Cmd {
    Write(Waiter),
    Append(Append, Vec<Arc<Vec<u8>>>, oneshot::Sender<Result<AppendReply, String>>),
    Fence(u64, oneshot::Sender<Result<Fenced, String>>),
    Promote(Promotion, oneshot::Sender<Result<(), String>>),
    Install { epoch: u64, at: EntryId, image: Vec<u8>, done: oneshot::Sender<Result<AppendReply, String>> },
}

pub(crate) enum Role {
    Replica(Replica),
    Primary(Primary),
}

impl Role {
    pub fn log(&self) -> &LogIndex {
        match self {
            Role::Replica(r) => &r.log,
            Role::Primary(p) => &p.log,
        }
    }
    fn log_mut(&mut self) -> &mut LogIndex {
        match self {
            Role::Replica(r) => &mut r.log,
            Role::Primary(p) => &mut p.log,
        }
    }
    pub fn commit(&self) -> u64 {
        match self {
            Role::Replica(r) => r.commit,
            Role::Primary(p) => p.commit,
        }
    }
    pub fn promised(&self) -> u64 {
        match self {
            Role::Replica(r) => r.promised,
            Role::Primary(p) => p.epoch,
        }
    }
}

/// The durable promise (`promise` file): the highest epoch fenced into, the highest epoch this
/// replica has led, and whether it is re-syncing. A replica never leads an epoch twice: after a
/// restart its in-memory primary state is gone, and a second epoch-start entry could diverge
/// from the first. A replica re-syncing from its peers (its data was wiped after corruption)
/// may hold less than it once acknowledged, so it neither answers fences nor leads until a
/// primary's append shows it holds everything that primary had committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Promise {
    pub promised: u64,
    pub led: u64,
    pub resync: bool,
}

impl Promise {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(28);
        b.extend_from_slice(&self.promised.to_le_bytes());
        b.extend_from_slice(&self.led.to_le_bytes());
        b.extend_from_slice(&(self.resync as u64).to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Promise> {
        let n = b.len().checked_sub(4)?;
        if !(n == 16 || n == 24) || crc32c::crc32c(&b[..n]).to_le_bytes() != b[n..] {
            return None;
        }
        let word = |i: usize| b.get(i * 8..i * 8 + 8).and_then(|w| w.try_into().ok()).map(u64::from_le_bytes);
        Some(Promise { promised: word(0)?, led: word(1)?, resync: n == 24 && word(2)? != 0 })
    }
}

/// While this replica leads: when it may start acknowledging, the send times of the latest
/// appends each peer acknowledged (its lease), and the shipping tasks.
pub(crate) struct Lead {
    pub epoch: u64,
    pub activate_at: Instant,
    pub acks: BTreeMap<NodeId, Instant>,
    /// One per peer: the voters, and a learner while a membership change adds one.
    shippers: BTreeMap<NodeId, AbortOnDrop>,
}

pub(crate) struct Core {
    pub role: Role,
    pub promise: Promise,
    /// Every entry after `applied` (and some before it, for lagging replicas), in LSN order.
    pub entries: VecDeque<(EntryId, Arc<Vec<u8>>)>,
    entry_bytes: usize,
    pub applied: u64,
    /// Everything through this LSN is fsynced here.
    pub durable: u64,
    pub waiters: BTreeMap<u64, Waiter>,
    pub lead: Option<Lead>,
    /// When this replica last accepted an append (or snapshot) from a primary, on the lease
    /// clock: reported at a fence (`replication::lease`).
    pub append_heard_at: Option<Instant>,
}

impl Core {
    pub fn new(role: Role, promise: Promise, entries: Vec<(EntryId, Vec<u8>)>, applied: u64) -> Core {
        let entry_bytes = entries.iter().map(|(_, p)| p.len()).sum();
        let durable = role.log().last().lsn;
        Core {
            role,
            promise,
            entries: entries.into_iter().map(|(id, p)| (id, Arc::new(p))).collect(),
            entry_bytes,
            applied,
            durable,
            waiters: BTreeMap::new(),
            lead: None,
            append_heard_at: None,
        }
    }

    fn push(&mut self, id: EntryId, payload: Arc<Vec<u8>>) {
        self.entry_bytes += payload.len();
        self.entries.push_back((id, payload));
    }

    fn drop_after(&mut self, lsn: u64) {
        while self.entries.back().is_some_and(|(id, _)| id.lsn > lsn) {
            if let Some((_, p)) = self.entries.pop_back() {
                self.entry_bytes -= p.len();
            }
        }
    }

    /// Payloads of `ids`, if all are still in memory.
    fn payloads(&self, ids: &[EntryId]) -> Option<Vec<Arc<Vec<u8>>>> {
        let front = self.entries.front()?.0.lsn;
        ids.iter()
            .map(|id| {
                let (have, p) = self.entries.get(id.lsn.checked_sub(front)? as usize)?;
                (have == id).then(|| p.clone())
            })
            .collect()
    }

    /// True while this primary may acknowledge writes and serve strong reads: activated, its
    /// epoch-start entry committed, and a lease from a majority (architecture.md §5 rule 6).
    pub fn leads_with_lease(&self, now: Instant) -> bool {
        let (Role::Primary(p), Some(lead)) = (&self.role, &self.lead) else { return false };
        if now < lead.activate_at || p.commit < p.epoch_start {
            return false;
        }
        let lease = Duration::from_millis(limits::LEASE_MS);
        // Voters only: a learner's acknowledgement grants no lease.
        let fresh = lead.acks.iter().filter(|(n, sent)| p.voters.contains(n) && **sent + lease > now).count();
        fresh + 1 > p.voters.len() / 2
    }

    pub fn primary_epoch(&self) -> u64 {
        match (&self.role, &self.lead) {
            (Role::Primary(p), Some(_)) => p.epoch,
            _ => 0,
        }
    }

    fn fail_waiters(&mut self, reason: &str, shard: u32) {
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.done.send(Err(ShardError::Unknown { shard, reason: reason.to_string() }));
        }
    }
}

/// What the driver, the shippers and the shard's handle share.
pub(crate) struct Shared {
    pub shard: u32,
    /// Committed entries kept in memory for lagging replicas (`NodeConfig::repl_retain_bytes`).
    pub retain_bytes: usize,
    pub range: KeyRange,
    pub dir: String,
    pub disk: Arc<dyn Disk>,
    pub state: Arc<RwLock<ShardStore>>,
    pub core: Mutex<Core>,
    pub fault: Mutex<Option<String>>,
    /// Notified whenever the log grows or the commit LSN moves: wakes the shippers. A `Notify`,
    /// not a `watch`: tokio's watch spreads waiters over 8 lists picked by a process-seeded RNG,
    /// so wake order (and the simulation) differed between runs in one process.
    pub changed: Notify,
    pub syncs: AtomicU64,
    /// Held while applying; a checkpoint holds it to freeze the state without blocking readers.
    pub apply_gate: Mutex<()>,
    pub trim_through: AtomicU64,
    pub instance: u64,
    pub node_id: AtomicU64,
}

impl Shared {
    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_fault(&self, reason: String) {
        let mut f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(shard = self.shard, error = %reason, "replica stops serving");
            *f = Some(reason);
        }
    }

    fn bump(&self) {
        self.changed.notify_waiters();
    }

    /// Applies every committed entry not applied yet, then acknowledges their writers.
    fn apply_committed(&self, core: &mut Core) {
        let commit = core.role.commit();
        if commit <= core.applied {
            return;
        }
        let mut acks = Vec::new();
        {
            let _gate = self.apply_gate.lock().unwrap_or_else(|p| p.into_inner());
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            let front = core.entries.front().map_or(u64::MAX, |(id, _)| id.lsn);
            if front > core.applied + 1 {
                drop(st);
                self.set_fault(format!("log gap: entry {} is not held (applied {})", core.applied + 1, core.applied));
                return;
            }
            let start = (core.applied + 1 - front) as usize;
            let end = ((commit + 1 - front) as usize).min(core.entries.len());
            for i in start..end {
                let (id, payload) = core.entries[i].clone();
                let waiter = core.waiters.remove(&id.lsn);
                let applied = match (entry::decode(&payload), waiter) {
                    (Ok((_, Body::Batch(_))), Some(w)) if w.kind == WriteKind::Batch => {
                        st.apply_with_ids(id.lsn, w.ts_ms, w.batch, &w.ids);
                        acks.push((w.done, Written { lsn: id.lsn, concept_ids: w.ids }));
                        Ok(())
                    }
                    (Ok((_, body)), w) => {
                        let r = apply_body(&mut st, id.lsn, body);
                        if let (Ok(()), Some(w)) = (&r, w) {
                            acks.push((w.done, Written { lsn: id.lsn, concept_ids: w.ids }));
                        }
                        r
                    }
                    (Err(e), _) => Err(e),
                };
                if let Err(e) = applied {
                    drop(st);
                    self.set_fault(format!("entry {} does not apply: {e}", id.lsn));
                    return;
                }
                core.applied = id.lsn;
            }
        }
        for (done, w) in acks {
            let _ = done.send(Ok(w));
        }
        witness::emit(Event::Commit {
            node: self.node_id.load(Ordering::Relaxed),
            instance: self.instance,
            shard: self.shard,
            commit: core.applied,
        });
        // Keep what lagging replicas still need, within a byte budget.
        let low = match &core.role {
            Role::Primary(p) => p.low_water().min(core.applied),
            Role::Replica(_) => core.applied,
        };
        while let Some((id, p)) = core.entries.front() {
            if id.lsn > core.applied || (id.lsn > low && core.entry_bytes <= self.retain_bytes) {
                break;
            }
            core.entry_bytes -= p.len();
            core.entries.pop_front();
        }
    }

    /// This primary learned of a newer epoch (or was fenced): it becomes a replica, and writes
    /// still waiting end with an unknown outcome (they may yet commit under the new primary).
    fn step_down(&self, core: &mut Core, promised: u64) {
        if let Role::Primary(p) = &core.role {
            tracing::info!(shard = self.shard, epoch = p.epoch, promised, "primary steps down");
            let p = p.clone();
            let mut r = p.into_replica();
            r.promised = r.promised.max(promised);
            core.role = Role::Replica(r);
        }
        core.lead = None;
        core.fail_waiters("the primary stepped down before the write committed; it may or may not apply", self.shard);
    }
}

/// Runs the shard's log until the handle is dropped or the WAL fails.
pub(crate) async fn run_log(sh: Arc<Shared>, mut wal: Wal, mut rx: mpsc::Receiver<Cmd>) {
    let sync_latency = sh.disk.sync_latency();
    let mut buf: Vec<u8> = Vec::with_capacity(limits::WAL_GROUP_COMMIT_BYTES_MAX);
    let mut trimmed = 0u64;
    loop {
        let Some(first) = rx.recv().await else { return };
        let trim = sh.trim_through.load(Ordering::Acquire);
        if trim > trimmed {
            trimmed = trim;
            match wal.trim_through(trim) {
                Ok(_) => {
                    let keep_from = wal.first_lsn();
                    let mut core = sh.core();
                    if keep_from > core.role.log().base().lsn + 1 {
                        core.role.log_mut().trim_through(keep_from - 1);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "wal trim failed; segments kept"),
            }
        }
        let mut group = vec![first];
        while group.len() < limits::WAL_GROUP_COMMIT_RECORDS_MAX {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        buf.clear();
        let mut step = Step { shard: sh.shard, first_lsn: wal.next_lsn(), replies: Vec::new(), promoted: None };
        let mut res: Result<(), WalError> = Ok(());
        {
            let mut core = sh.core();
            for cmd in group {
                if res.is_ok() {
                    res = handle(&sh, &mut core, &mut wal, &mut buf, &mut step, cmd);
                } else {
                    step.refuse(cmd);
                }
            }
        }
        if res.is_ok() && !buf.is_empty() {
            res = if sync_latency.is_zero() {
                let (w, b, r) = crate::io::blocking(move || {
                    let r = wal.write_and_sync(step.first_lsn, &buf);
                    (wal, buf, r)
                })
                .await;
                (wal, buf) = (w, b);
                r
            } else {
                // Simulated device latency sits between the write and the fsync's return, so
                // a crash can land while the group is written but not yet durable.
                match wal.write(step.first_lsn, &buf) {
                    Ok(()) => {
                        tokio::time::sleep(sync_latency).await;
                        wal.sync()
                    }
                    Err(e) => Err(e),
                }
            };
            sh.syncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = res {
            // fsync errors are fatal (fsyncgate): nothing in this group may be acknowledged.
            sh.set_fault(e.to_string());
            let reason = e.to_string();
            for (_, w) in std::mem::take(&mut sh.core().waiters) {
                let _ = w.done.send(Err(ShardError::NotServing { shard: sh.shard, reason: reason.clone() }));
            }
            step.fail_all(&reason);
            rx.close();
            while let Some(c) = rx.recv().await {
                step.refuse(c);
                step.fail_all(&reason);
            }
            return;
        }
        {
            let mut core = sh.core();
            let durable = wal.next_lsn() - 1;
            core.durable = durable;
            if let Role::Primary(p) = &mut core.role {
                p.on_durable(durable);
            }
            sh.apply_committed(&mut core);
        }
        for r in step.replies {
            r.send();
        }
        if let Some((promotion, epoch)) = step.promoted {
            start_shipping(&sh, &promotion, epoch);
        }
        sh.bump();
    }
}

/// A fenced replica's answer: its last entry, and how long ago it last accepted an append.
#[derive(Clone, Copy, Debug)]
pub struct Fenced {
    pub last: EntryId,
    pub append_age: Option<Duration>,
}

/// Replies held until the group is durable.
enum Deferred {
    Append(oneshot::Sender<Result<AppendReply, String>>, AppendReply),
    Fence(oneshot::Sender<Result<Fenced, String>>, Fenced),
    Done(oneshot::Sender<Result<(), String>>),
}

impl Deferred {
    fn send(self) {
        match self {
            Deferred::Append(tx, r) => drop(tx.send(Ok(r))),
            Deferred::Fence(tx, r) => drop(tx.send(Ok(r))),
            Deferred::Done(tx) => drop(tx.send(Ok(()))),
        }
    }

    fn fail(self, reason: &str) {
        match self {
            Deferred::Append(tx, _) => drop(tx.send(Err(reason.into()))),
            Deferred::Fence(tx, _) => drop(tx.send(Err(reason.into()))),
            Deferred::Done(tx) => drop(tx.send(Err(reason.into()))),
        }
    }
}

struct Step {
    shard: u32,
    first_lsn: u64,
    replies: Vec<Deferred>,
    promoted: Option<(Promotion, u64)>,
}

impl Step {
    fn fail_all(&mut self, reason: &str) {
        for r in self.replies.drain(..) {
            r.fail(reason);
        }
    }

    /// A command that arrived after the WAL failed.
    fn refuse(&mut self, cmd: Cmd) {
        let reason = "the replica's log failed";
        match cmd {
            Cmd::Write(w) => {
                drop(w.done.send(Err(ShardError::NotServing { shard: self.shard, reason: reason.into() })))
            }
            Cmd::Append(_, _, tx) | Cmd::Install { done: tx, .. } => drop(tx.send(Err(reason.into()))),
            Cmd::Fence(_, tx) => drop(tx.send(Err(reason.into()))),
            Cmd::Promote(_, tx) => drop(tx.send(Err(reason.into()))),
        }
    }
}

fn persist_promise(sh: &Shared, p: Promise) -> Result<(), WalError> {
    crate::io::write_atomic(&*sh.disk, &sh.dir, "promise", &p.encode())
        .map_err(|source| WalError::FsyncFailed { path: format!("{}/promise", sh.dir), source })
}

/// Queues the reply to an append or snapshot; an accepted one is news of a live primary, whose
/// age a later fence reports (`replication::lease`).
fn reply_append(
    core: &mut Core,
    step: &mut Step,
    tx: oneshot::Sender<Result<AppendReply, String>>,
    reply: AppendReply,
) {
    if matches!(reply, AppendReply::Ok { .. }) {
        core.append_heard_at = Some(crate::io::clock::lease_now());
    }
    step.replies.push(Deferred::Append(tx, reply));
}

fn stage(wal: &mut Wal, buf: &mut Vec<u8>, core: &mut Core, id: EntryId, payload: Arc<Vec<u8>>) {
    let lsn = wal.stage(buf, id.epoch, RecordType::Entry, &payload);
    assert_eq!(lsn, id.lsn, "the WAL and the log index disagree on the next LSN");
    core.push(id, payload);
}

fn handle(
    sh: &Shared,
    core: &mut Core,
    wal: &mut Wal,
    buf: &mut Vec<u8>,
    step: &mut Step,
    cmd: Cmd,
) -> Result<(), WalError> {
    let shard = sh.shard;
    match cmd {
        Cmd::Write(w) => {
            let active = core.lead.as_ref().is_some_and(|l| crate::io::clock::lease_now() >= l.activate_at);
            let Role::Primary(p) = &mut core.role else {
                let _ =
                    w.done.send(Err(ShardError::NotPrimary { shard, reason: "this replica is not primary".into() }));
                return Ok(());
            };
            if !active {
                let reason = "the new primary is waiting out the old primary's lease".into();
                let _ = w.done.send(Err(ShardError::NotPrimary { shard, reason }));
                return Ok(());
            }
            if core.waiters.len() >= limits::REPL_UNCOMMITTED_MAX {
                let reason = format!("{} writes are waiting to commit; retry later", core.waiters.len());
                let _ = w.done.send(Err(ShardError::Busy { shard, reason }));
                return Ok(());
            }
            let id = p.append();
            let body = match w.kind {
                WriteKind::Batch => Body::Batch(&w.bytes),
                WriteKind::InEdges => Body::InEdges(&w.bytes),
                WriteKind::Delivered => Body::Delivered(&w.bytes),
            };
            let payload = Arc::new(entry::encode(p.commit, body));
            stage(wal, buf, core, id, payload);
            core.waiters.insert(id.lsn, w);
        }
        Cmd::Append(a, payloads, tx) => {
            if let Role::Primary(p) = &core.role {
                if a.epoch <= p.epoch {
                    step.replies.push(Deferred::Append(tx, AppendReply::StaleEpoch { promised: p.epoch }));
                    return Ok(());
                }
                sh.step_down(core, a.epoch);
            }
            let Role::Replica(r) = &mut core.role else { unreachable!("stepped down above") };
            let old_last = r.log.last().lsn;
            let (reply, truncated) = r.on_append(&a);
            if let Some(t) = truncated {
                // Records staged earlier in this group go to the file first, then the cut.
                if !buf.is_empty() {
                    wal.write_and_sync(step.first_lsn, buf)?;
                    buf.clear();
                }
                wal.truncate_after(t)?;
                core.durable = core.durable.min(t);
                step.first_lsn = wal.next_lsn();
                core.drop_after(t);
            }
            if matches!(reply, AppendReply::Ok { .. }) {
                let from = truncated.unwrap_or(old_last).min(old_last);
                for (id, payload) in a.entries.iter().zip(payloads) {
                    if id.lsn > from {
                        stage(wal, buf, core, *id, payload);
                    }
                }
            }
            if let AppendReply::Ok { matched, .. } = reply {
                if core.promise.resync && a.commit <= matched {
                    // It now holds everything the primary had committed: a full voter again.
                    core.promise.resync = false;
                    core.promise.promised = core.promise.promised.max(a.epoch);
                    persist_promise(sh, core.promise)?;
                    tracing::info!(shard, commit = a.commit, "re-sync complete; voting again");
                }
            }
            reply_append(core, step, tx, reply);
        }
        Cmd::Fence(epoch, tx) => {
            if core.promise.resync {
                let _ = tx.send(Err("re-syncing from its peers: it cannot vote until it has caught up".into()));
                return Ok(());
            }
            if epoch < core.role.promised() {
                let _ = tx.send(Err(format!("already promised epoch {}", core.role.promised())));
                return Ok(());
            }
            if matches!(core.role, Role::Primary(_)) {
                sh.step_down(core, epoch);
            }
            let Role::Replica(r) = &mut core.role else { unreachable!("stepped down above") };
            let last = r.on_fence(epoch).unwrap_or_else(|_| r.log.last());
            if epoch > core.promise.promised {
                core.promise.promised = epoch;
                persist_promise(sh, core.promise)?;
            }
            let append_age = core.append_heard_at.map(|t| crate::io::clock::lease_now().saturating_duration_since(t));
            step.replies.push(Deferred::Fence(tx, Fenced { last, append_age }));
        }
        Cmd::Promote(pr, tx) => {
            if let Role::Primary(p) = &core.role {
                if p.epoch == pr.epoch {
                    let _ = tx.send(Ok(()));
                    return Ok(());
                }
            }
            if pr.epoch < core.role.promised() || pr.epoch <= core.promise.led || core.promise.resync {
                let why = format!(
                    "cannot lead epoch {}: promised {}, already led {}, re-syncing {}",
                    pr.epoch,
                    core.role.promised(),
                    core.promise.led,
                    core.promise.resync
                );
                let _ = tx.send(Err(why));
                return Ok(());
            }
            if matches!(core.role, Role::Primary(_)) {
                sh.step_down(core, pr.epoch);
            }
            core.promise = Promise { promised: pr.epoch, led: pr.epoch, resync: false };
            persist_promise(sh, core.promise)?;
            let Role::Replica(r) = &core.role else { unreachable!("stepped down above") };
            let mut r = r.clone();
            r.promised = pr.epoch;
            let voters: Vec<NodeId> = pr.voters.iter().map(|(n, _)| *n).collect();
            let mut p = Primary::new(pr.me, voters, pr.epoch, r);
            // Entries staged earlier in this group are not durable yet: they must not count.
            p.durable = p.durable.min(core.durable);
            let start = p.log.last();
            let payload = Arc::new(entry::encode(p.commit, Body::EpochStart));
            core.role = Role::Primary(p);
            stage(wal, buf, core, start, payload);
            sh.node_id.store(pr.me.0, Ordering::Relaxed);
            tracing::info!(shard, epoch = pr.epoch, node = pr.me.0, start = start.lsn, "leading");
            witness::emit(Event::Primary { node: pr.me.0, shard, epoch: pr.epoch });
            core.lead = Some(Lead {
                epoch: pr.epoch,
                activate_at: crate::io::clock::lease_now() + pr.lease_wait,
                acks: BTreeMap::new(),
                shippers: BTreeMap::new(),
            });
            step.promoted = Some((pr, start.lsn));
            step.replies.push(Deferred::Done(tx));
        }
        Cmd::Install { epoch, at, image, done } => {
            if epoch < core.role.promised() {
                let _ = done.send(Ok(AppendReply::StaleEpoch { promised: core.role.promised() }));
                return Ok(());
            }
            if matches!(core.role, Role::Primary(_)) {
                sh.step_down(core, epoch);
            }
            if core.role.commit() >= at.lsn {
                // Already has everything the snapshot holds.
                let matched = core.role.commit();
                reply_append(core, step, done, AppendReply::Ok { epoch, matched });
                return Ok(());
            }
            let installed = (|| -> Result<Checkpoint, String> {
                crate::store::checkpoint::write(&*sh.disk, &sh.dir, &image).map_err(|e| e.to_string())?;
                let cp = Checkpoint::open(sh.disk.map(&format!("{}/storage.dat", sh.dir)).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                if cp.lsn != at.lsn || cp.key_start != sh.range.start || cp.key_end != sh.range.end {
                    return Err("the snapshot does not match what the primary announced".into());
                }
                Ok(cp)
            })();
            let cp = match installed {
                Ok(cp) => cp,
                Err(e) => {
                    let _ = done.send(Err(e));
                    return Ok(());
                }
            };
            if !buf.is_empty() {
                wal.write_and_sync(step.first_lsn, buf)?;
                buf.clear();
            }
            wal.reset_after(at.lsn)?;
            core.durable = at.lsn;
            step.first_lsn = wal.next_lsn();
            {
                let _gate = sh.apply_gate.lock().unwrap_or_else(|p| p.into_inner());
                *sh.state.write().unwrap_or_else(|p| p.into_inner()) = ShardStore::new(sh.range, Some(cp));
            }
            core.role = Role::Replica(Replica::new(LogIndex::new(at), epoch, at.lsn));
            core.drop_after(0);
            core.entries.clear();
            core.entry_bytes = 0;
            core.applied = at.lsn;
            tracing::info!(shard, lsn = at.lsn, "installed a snapshot from the primary");
            reply_append(core, step, done, AppendReply::Ok { epoch, matched: at.lsn });
        }
    }
    Ok(())
}

fn start_shipping(sh: &Arc<Shared>, pr: &Promotion, epoch_start: u64) {
    let mut core = sh.core();
    let Some(lead) = core.lead.as_mut() else { return };
    if lead.epoch != pr.epoch {
        return;
    }
    for (n, addr) in pr.voters.iter().filter(|(n, _)| *n != pr.me) {
        let task = AbortOnDrop(tokio::spawn(super::ship::ship(sh.clone(), pr.epoch, *n, addr.clone())));
        lead.shippers.insert(*n, task);
    }
    tracing::debug!(shard = sh.shard, epoch = pr.epoch, epoch_start, peers = lead.shippers.len(), "shipping");
}

impl Shared {
    /// While this node leads `epoch`: ship to exactly these learners too (non-voting members
    /// catching up; their acknowledgements count neither for commit nor for the lease).
    pub(crate) fn set_learners(self: &Arc<Self>, epoch: u64, learners: &[(NodeId, String)]) {
        let mut core = self.core();
        let Core { role: Role::Primary(p), lead: Some(lead), .. } = &mut *core else { return };
        if p.epoch != epoch || lead.epoch != epoch {
            return;
        }
        let wanted: Vec<NodeId> = learners.iter().map(|(n, _)| *n).filter(|n| !p.voters.contains(n)).collect();
        let gone: Vec<NodeId> =
            p.peers.keys().copied().filter(|n| !p.voters.contains(n) && !wanted.contains(n)).collect();
        for n in gone {
            tracing::info!(shard = self.shard, epoch, learner = n.0, "no longer shipping to a learner");
            p.peers.remove(&n);
            lead.shippers.remove(&n);
            lead.acks.remove(&n);
        }
        for (n, addr) in learners.iter().filter(|(n, _)| wanted.contains(n)) {
            if p.add_learner(*n) {
                tracing::info!(shard = self.shard, epoch, learner = n.0, "shipping to a learner");
                let task = AbortOnDrop(tokio::spawn(super::ship::ship(self.clone(), epoch, *n, addr.clone())));
                lead.shippers.insert(*n, task);
            }
        }
    }
}

/// Shipper side: what to send `peer` next.
pub(crate) enum Job {
    Send(Append, Vec<Arc<Vec<u8>>>),
    /// Entries this primary no longer holds in memory: read them from the WAL.
    FromDisk(Append),
    Snapshot,
    Wait,
    Stop,
}

impl Shared {
    pub(crate) fn next_job(&self, epoch: u64, peer: NodeId, heartbeat_due: bool) -> Job {
        let mut core = self.core();
        let Role::Primary(p) = &mut core.role else { return Job::Stop };
        if p.epoch != epoch {
            return Job::Stop;
        }
        match p.next_append(peer, limits::REPL_APPEND_ENTRIES_MAX) {
            Ok(Some(mut a)) => {
                // Bound the bytes: cut the tail and move `next` back to it.
                let payloads = core.payloads(&a.entries);
                let Role::Primary(p) = &mut core.role else { return Job::Stop };
                match payloads {
                    Some(mut ps) => {
                        let mut bytes = 0usize;
                        let keep = ps
                            .iter()
                            .position(|x| {
                                bytes += x.len();
                                bytes > limits::REPL_APPEND_BYTES_MAX
                            })
                            .unwrap_or(ps.len())
                            .max(1);
                        if keep < ps.len() {
                            ps.truncate(keep);
                            a.entries.truncate(keep);
                            if let Some(pp) = p.peers.get_mut(&peer) {
                                pp.next = a.entries[keep - 1].lsn + 1;
                            }
                        }
                        Job::Send(a, ps)
                    }
                    None => Job::FromDisk(a),
                }
            }
            Ok(None) if heartbeat_due => match p.heartbeat(peer) {
                Some(a) => Job::Send(a, Vec::new()),
                None => Job::Wait,
            },
            Ok(None) => Job::Wait,
            Err(_) => Job::Snapshot,
        }
    }

    /// Sets where the next append to `peer` starts (after a partial read from disk).
    pub(crate) fn resume_at(&self, epoch: u64, peer: NodeId, next: u64) {
        if let Role::Primary(p) = &mut self.core().role {
            if p.epoch == epoch {
                if let Some(pp) = p.peers.get_mut(&peer) {
                    pp.next = next;
                }
            }
        }
    }

    pub(crate) fn rewind(&self, epoch: u64, peer: NodeId) {
        if let Role::Primary(p) = &mut self.core().role {
            if p.epoch == epoch {
                p.rewind(peer);
            }
        }
    }

    /// A reply from `peer` to an append sent at `sent`.
    pub(crate) fn on_reply(&self, epoch: u64, peer: NodeId, sent: Instant, reply: &AppendReply) -> bool {
        let mut core = self.core();
        let Role::Primary(p) = &mut core.role else { return false };
        if p.epoch != epoch {
            return false;
        }
        let before = p.commit;
        match p.on_reply(peer, reply) {
            crate::replication::Outcome::StepDown { promised } => {
                self.step_down(&mut core, promised);
                return false;
            }
            crate::replication::Outcome::Continue => {}
        }
        if matches!(reply, AppendReply::Ok { epoch: e, .. } if *e == epoch) {
            if let Some(lead) = core.lead.as_mut() {
                let t = lead.acks.entry(peer).or_insert(sent);
                *t = (*t).max(sent);
            }
        }
        let moved = core.role.commit() > before;
        if moved {
            self.apply_committed(&mut core);
        }
        drop(core);
        if moved {
            self.bump();
        }
        true
    }
}
