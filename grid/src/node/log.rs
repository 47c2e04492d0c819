//! A shard replica's replicated log: the driver of the pure replica core
//! (`replication::core::Core`). One task owns the WAL, the writes waiting to commit and every
//! acknowledgement. It handles commands in groups: client writes (primary), appends from the
//! primary, fences and promotions from the master, snapshot installs, and the peers' answers
//! to this primary's appends (which the shippers forward). For each command it asks the core
//! what to do, releases the core's lock, then performs the writes the core listed. A group is
//! written with one fsync; only then are its replies sent, the commit LSN advanced and
//! committed entries applied, so the store only ever holds committed data and
//! acknowledgements follow commit. No lock is held across I/O.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::shard::{ShardError, Written};
use crate::ids::{ConceptId, NodeId};
use crate::io::{clock::lease_now, AbortOnDrop, Disk};
use crate::limits;
use crate::model::WriteBatch;
pub(crate) use crate::replication::core::{Core, Fenced, Promise, Role, WriteKind};
use crate::replication::core::{InstallPlan, Io, Promoted, Ready, Refused};
use crate::replication::entry::{self, Body};
use crate::replication::witness::{self, Event};
use crate::replication::{Append, AppendReply, EntryId};
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

/// Applies one committed entry's body to the store (live and at recovery alike). False when
/// the entry names keys this shard no longer owns (it applied as a no-op). A split writes the
/// new shard's first checkpoint to its own directory before the store forgets that half; a
/// checkpoint of this shard cannot run meanwhile (the caller holds the apply gate).
pub(crate) fn apply_body(
    st: &mut ShardStore,
    me: u32,
    id: EntryId,
    body: Body<'_>,
    disk: &dyn Disk,
) -> Result<bool, String> {
    let lsn = id.lsn;
    Ok(match body {
        Body::EpochStart => st.apply(lsn, 0, WriteBatch::default()),
        Body::Batch(b) => {
            let (ts, batch) = batch_codec::decode(b).map_err(|e| e.to_string())?;
            st.apply(lsn, ts, batch)
        }
        Body::InEdges(b) => st.apply_in_edges(lsn, InEdges::decode(b).map_err(|e| e.to_string())?),
        Body::Delivered(b) => {
            st.apply_delivered(lsn, &links::decode_delivered(b).map_err(|e| e.to_string())?);
            true
        }
        Body::Split { at, child } => {
            let end = st.range.end;
            if let Some(image) = st.apply_split(lsn, id.epoch, at) {
                super::split::write_child(disk, child, KeyRange { start: at, end }, &image)
                    .map_err(|e| format!("writing shard {child}, split off at {at:#018x}: {e}"))?;
                tracing::info!(
                    shard = child,
                    at = format_args!("{at:#018x}"),
                    lsn,
                    "split: the new shard's replica is written"
                );
            }
            true
        }
        Body::Freeze { into } => {
            st.apply_freeze(lsn, into);
            true
        }
        Body::MergeBegin { from, start, end, marks } => {
            let marks = crate::store::Links::decode(marks).map_err(|e| format!("merge marks: {e}"))?;
            st.apply_merge_begin(lsn, from, KeyRange { start, end }, marks);
            true
        }
        Body::Absorb { from, image } => {
            let part = Checkpoint::open(crate::io::Mapped::from_vec(image.to_vec()))
                .map_err(|e| format!("a part of merged shard {from}: {e}"))?;
            st.apply_absorb(lsn, from, &part);
            true
        }
        Body::MergeEnd { from } => {
            st.apply_merge_end(lsn, me, from);
            if st.absorbing().is_none() {
                tracing::info!(shard = me, from, lsn, end = st.range.end, "merge: absorbed the shard");
            }
            true
        }
    })
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
    Install {
        epoch: u64,
        at: EntryId,
        image: Vec<u8>,
        done: oneshot::Sender<Result<AppendReply, String>>,
    },
    /// The replica left its replica set (or its shard merged away): nobody ships to it or
    /// fences it any more, so a write it holds would wait forever. Stops the log.
    Retire,
}

/// A peer's answer to an append of `epoch` this primary sent at `sent` (lease clock).
pub(crate) struct PeerReply {
    pub epoch: u64,
    pub peer: NodeId,
    pub sent: Instant,
    pub reply: AppendReply,
}

/// The shipping tasks of the epoch this node leads, one per peer (voters, and a learner while
/// a membership change adds one).
#[derive(Default)]
pub(crate) struct Shipping {
    epoch: u64,
    tasks: BTreeMap<NodeId, AbortOnDrop>,
}

/// What the driver, the shippers and the shard's handle share.
pub(crate) struct Shared {
    pub shard: u32,
    /// The range the replica was created with; the store's own end moves with splits and
    /// merges, its start never.
    pub range: KeyRange,
    pub dir: String,
    pub disk: Arc<dyn Disk>,
    pub state: Arc<RwLock<ShardStore>>,
    /// The pure replica core. Locked only to ask it something, never across I/O.
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
    shipping: Mutex<Shipping>,
    /// The shippers forward their peers' answers here, to the log task.
    replies: mpsc::Sender<PeerReply>,
}

impl Shared {
    /// The shared state and the receiving end of its peer-reply channel (for `run_log`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shard: u32,
        range: KeyRange,
        dir: String,
        disk: Arc<dyn Disk>,
        store: ShardStore,
        core: Core,
    ) -> (Arc<Shared>, mpsc::Receiver<PeerReply>) {
        let (replies, replies_rx) = mpsc::channel(limits::REPL_REPLY_QUEUE_DEPTH_MAX);
        let sh = Arc::new(Shared {
            shard,
            range,
            dir,
            disk,
            state: Arc::new(RwLock::new(store)),
            core: Mutex::new(core),
            fault: Mutex::new(None),
            changed: Notify::new(),
            syncs: AtomicU64::new(0),
            apply_gate: Mutex::new(()),
            trim_through: AtomicU64::new(0),
            instance: witness::instance(),
            node_id: AtomicU64::new(0),
            shipping: Mutex::new(Shipping::default()),
            replies,
        });
        (sh, replies_rx)
    }

    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shipping(&self) -> MutexGuard<'_, Shipping> {
        self.shipping.lock().unwrap_or_else(|p| p.into_inner())
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

    /// A shipper's peer answered: hand it to the log task. False once the log has stopped.
    pub(crate) async fn forward_reply(&self, epoch: u64, peer: NodeId, sent: Instant, reply: AppendReply) -> bool {
        self.replies.send(PeerReply { epoch, peer, sent, reply }).await.is_ok()
    }

    /// Applies every committed entry not applied yet, then acknowledges their writers.
    fn apply_committed(&self, waiters: &mut BTreeMap<u64, Waiter>) {
        // A replica that stopped serving applies nothing more: the entry that failed may have
        // changed the state before it failed (a split whose new replica could not be written),
        // so applying it again would apply it twice (swarm seed 1000429, a full disk).
        if self.fault().is_some() {
            return;
        }
        let entries = match self.core().to_apply() {
            Ok(e) if e.is_empty() => return,
            Ok(e) => e,
            Err(e) => return self.set_fault(e),
        };
        let mut acks = Vec::new();
        let mut applied = None;
        let mut failed = None;
        {
            let _gate = self.apply_gate.lock().unwrap_or_else(|p| p.into_inner());
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            for (id, payload) in entries {
                let waiter = waiters.remove(&id.lsn);
                let answer = |owned: bool, owes_in_edges: bool, range: KeyRange, forgotten: u32, w: Waiter| {
                    let r = if owned {
                        Ok(Written { lsn: id.lsn, concept_ids: w.ids, owes_in_edges, range, forgotten })
                    } else {
                        Err(ShardError::WrongShard {
                            shard: self.shard,
                            reason: "the shard split or froze for a merge while the write waited; it did not apply"
                                .into(),
                        })
                    };
                    (w.done, r)
                };
                let r = match (entry::decode(&payload), waiter) {
                    (Ok((_, Body::Batch(_))), Some(mut w)) if w.kind == WriteKind::Batch => {
                        let retracts = !w.batch.forget.is_empty();
                        let owned = st.apply_with_ids(id.lsn, w.ts_ms, std::mem::take(&mut w.batch), &w.ids);
                        // A retraction sent again (its first copy applied, its answer lost)
                        // finds nothing left to retract, but the first copy's retractions may
                        // still be on their way: its writer waits for everything up to here.
                        let upto = if retracts { 0 } else { links::seq(id.lsn, 0) };
                        let owes = st.links().outbox.range(upto..links::seq(id.lsn + 1, 0)).next().is_some();
                        acks.push(answer(owned, owes, st.range, st.last_forgotten(), w));
                        Ok(())
                    }
                    (Ok((_, body)), w) => apply_body(&mut st, self.shard, id, body, &*self.disk).map(|owned| {
                        if let Some(w) = w {
                            acks.push(answer(owned, false, st.range, 0, w));
                        }
                    }),
                    (Err(e), _) => Err(e),
                };
                if let Err(e) = r {
                    failed = Some(format!("entry {} does not apply: {e}", id.lsn));
                    break;
                }
                applied = Some(id.lsn);
            }
        }
        let range_lsn = self.state.read().unwrap_or_else(|p| p.into_inner()).range_lsn();
        if let Some(lsn) = applied {
            let mut core = self.core();
            core.applied_through(lsn);
            core.snapshot_through = core.snapshot_through.max(range_lsn);
        }
        if let Some(reason) = failed {
            return self.set_fault(reason);
        }
        for (done, r) in acks {
            let _ = done.send(r);
        }
        if let Some(commit) = applied {
            let node = self.node_id.load(Ordering::Relaxed);
            witness::emit(Event::Commit { node, instance: self.instance, shard: self.shard, commit });
        }
    }

    /// The core stepped down: writes still waiting end with an unknown outcome (they may yet
    /// commit under the new primary) and the shippers stop.
    fn stepped_down(&self, waiters: &mut BTreeMap<u64, Waiter>) {
        let promised = self.core().role.promised();
        tracing::info!(shard = self.shard, promised, "primary steps down");
        let reason = "the primary stepped down before the write committed; it may or may not apply";
        for (_, w) in std::mem::take(waiters) {
            let _ = w.done.send(Err(ShardError::Unknown { shard: self.shard, reason: reason.into() }));
        }
        *self.shipping() = Shipping::default();
    }

    /// A peer's answer, in the log task: may commit (and acknowledge) or step down.
    fn on_peer_reply(&self, waiters: &mut BTreeMap<u64, Waiter>, r: PeerReply) {
        let mut ready = Ready::default();
        let moved = {
            let mut core = self.core();
            let before = core.role.commit();
            core.on_reply(r.epoch, r.peer, r.sent, &r.reply, &mut ready);
            core.role.commit() > before
        };
        if ready.stepped_down {
            self.stepped_down(waiters);
        }
        if moved {
            self.apply_committed(waiters);
            self.bump();
        }
    }

    fn spawn_shipper(self: &Arc<Self>, shipping: &mut Shipping, epoch: u64, peer: NodeId, addr: String) {
        if shipping.epoch != epoch {
            *shipping = Shipping { epoch, tasks: BTreeMap::new() };
        }
        let task = AbortOnDrop(tokio::spawn(super::ship::ship(self.clone(), epoch, peer, addr)));
        shipping.tasks.insert(peer, task);
    }

    /// After the promotion's group is durable: ship to every other voter.
    fn start_shipping(self: &Arc<Self>, pr: &Promotion) {
        if self.core().shipping_to().is_none_or(|(epoch, _)| epoch != pr.epoch) {
            return;
        }
        let mut shipping = self.shipping();
        for (n, addr) in pr.voters.iter().filter(|(n, _)| *n != pr.me) {
            self.spawn_shipper(&mut shipping, pr.epoch, *n, addr.clone());
        }
        tracing::debug!(shard = self.shard, epoch = pr.epoch, peers = shipping.tasks.len(), "shipping");
    }

    /// While this node leads `epoch`: ship to exactly these learners too (non-voting members
    /// catching up; their acknowledgements count neither for commit nor for the lease).
    pub(crate) fn set_learners(self: &Arc<Self>, epoch: u64, learners: &[(NodeId, String)]) {
        let ids: Vec<NodeId> = learners.iter().map(|(n, _)| *n).collect();
        let (added, gone) = self.core().set_learners(epoch, &ids);
        let mut shipping = self.shipping();
        for n in gone {
            tracing::info!(shard = self.shard, epoch, learner = n.0, "no longer shipping to a learner");
            if shipping.epoch == epoch {
                shipping.tasks.remove(&n);
            }
        }
        for (n, addr) in learners.iter().filter(|(n, _)| added.contains(n)) {
            tracing::info!(shard = self.shard, epoch, learner = n.0, "shipping to a learner");
            self.spawn_shipper(&mut shipping, epoch, *n, addr.clone());
        }
    }
}

/// Runs the shard's log until the handle is dropped or the WAL fails.
pub(crate) async fn run_log(
    sh: Arc<Shared>,
    mut wal: Wal,
    mut rx: mpsc::Receiver<Cmd>,
    mut replies: mpsc::Receiver<PeerReply>,
) {
    // Grows to the largest group and is reused: preallocating the group bound (8 MiB) per
    // replica cost a page-faulting allocation at every open.
    let mut buf: Vec<u8> = Vec::new();
    let mut waiters: BTreeMap<u64, Waiter> = BTreeMap::new();
    let mut trimmed = 0u64;
    loop {
        let first = tokio::select! {
            biased;
            Some(r) = replies.recv() => {
                sh.on_peer_reply(&mut waiters, r);
                continue;
            }
            c = rx.recv() => match c {
                Some(c) => c,
                None => break,
            },
        };
        let trim = sh.trim_through.load(Ordering::Acquire);
        if trim > trimmed {
            trimmed = trim;
            match wal.trim_through(trim) {
                Ok(_) => sh.core().on_trimmed(wal.first_lsn()),
                Err(e) => tracing::warn!(error = %e, "wal trim failed; segments kept"),
            }
        }
        let mut retire = matches!(first, Cmd::Retire);
        let mut group = if retire { Vec::new() } else { vec![first] };
        while !retire && group.len() < limits::WAL_GROUP_COMMIT_RECORDS_MAX {
            match rx.try_recv() {
                Ok(Cmd::Retire) => retire = true,
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        buf.clear();
        let mut step = Step { shard: sh.shard, first_lsn: wal.next_lsn(), replies: Vec::new(), promoted: None };
        let mut res: Result<(), WalError> = Ok(());
        for cmd in group {
            if res.is_ok() {
                res = handle(&sh, &mut wal, &mut buf, &mut step, &mut waiters, cmd);
            } else {
                step.refuse(cmd);
            }
        }
        if res.is_ok() && !buf.is_empty() {
            // Read per group: a simulated disk can turn slow while the replica runs.
            let sync_latency = sh.disk.sync_latency();
            // Peers' answers keep committing (and acknowledging) earlier groups meanwhile.
            res = if sync_latency.is_zero() {
                let first_lsn = step.first_lsn;
                let (w, b, r) = while_replies(
                    &sh,
                    &mut replies,
                    &mut waiters,
                    crate::io::blocking(move || {
                        let r = wal.write_and_sync(first_lsn, &buf);
                        (wal, buf, r)
                    }),
                )
                .await;
                (wal, buf) = (w, b);
                r
            } else {
                // Simulated device latency sits between the write and the fsync's return, so
                // a crash can land while the group is written but not yet durable.
                match wal.write(step.first_lsn, &buf) {
                    Ok(()) => {
                        while_replies(&sh, &mut replies, &mut waiters, tokio::time::sleep(sync_latency)).await;
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
            for (_, w) in std::mem::take(&mut waiters) {
                let _ = w.done.send(Err(ShardError::NotServing { shard: sh.shard, reason: reason.clone() }));
            }
            step.fail_all(&reason);
            rx.close();
            while let Some(c) = rx.recv().await {
                step.refuse(c);
                step.fail_all(&reason);
            }
            break;
        }
        sh.core().on_durable(wal.next_lsn() - 1);
        sh.apply_committed(&mut waiters);
        for r in step.replies {
            r.send();
        }
        if let Some(promotion) = step.promoted {
            sh.start_shipping(&promotion);
        }
        sh.bump();
        if retire {
            let reason = "the replica was removed from its replica set";
            for (_, w) in std::mem::take(&mut waiters) {
                let _ = w.done.send(Err(ShardError::NotServing { shard: sh.shard, reason: reason.into() }));
            }
            rx.close();
            while let Some(c) = rx.recv().await {
                step_refuse(sh.shard, c, reason);
            }
            break;
        }
    }
    // The shippers hold the shared state: stop them, or a removed replica lives on.
    *sh.shipping() = Shipping::default();
}

/// Awaits `fut` while handling the peers' answers that arrive meanwhile.
async fn while_replies<F: Future>(
    sh: &Shared,
    replies: &mut mpsc::Receiver<PeerReply>,
    waiters: &mut BTreeMap<u64, Waiter>,
    fut: F,
) -> F::Output {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            Some(r) = replies.recv() => sh.on_peer_reply(waiters, r),
        }
    }
}

/// Asks the core about one command, then performs what it listed.
fn handle(
    sh: &Arc<Shared>,
    wal: &mut Wal,
    buf: &mut Vec<u8>,
    step: &mut Step,
    waiters: &mut BTreeMap<u64, Waiter>,
    cmd: Cmd,
) -> Result<(), WalError> {
    let shard = sh.shard;
    let now = lease_now();
    let mut ready = Ready::default();
    match cmd {
        Cmd::Write(w) => {
            let r = sh.core().write(w.kind, &w.bytes, now, &mut ready);
            match r {
                Ok(id) => {
                    waiters.insert(id.lsn, w);
                }
                Err(Refused::NotPrimary(reason)) => drop(w.done.send(Err(ShardError::NotPrimary { shard, reason }))),
                Err(Refused::Busy(reason)) => drop(w.done.send(Err(ShardError::Busy { shard, reason }))),
            }
        }
        Cmd::Append(a, payloads, tx) => {
            let reply = sh.core().append(&a, payloads, now, &mut ready);
            step.replies.push(Deferred::Append(tx, reply));
        }
        Cmd::Fence(epoch, tx) => {
            let r = sh.core().fence(epoch, now, &mut ready);
            match r {
                Ok(fenced) => step.replies.push(Deferred::Fence(tx, fenced)),
                Err(e) => drop(tx.send(Err(e))),
            }
        }
        Cmd::Promote(pr, tx) => {
            let voters = pr.voters.iter().map(|(n, _)| *n).collect();
            let r = sh.core().promote(pr.epoch, pr.me, voters, pr.lease_wait, now, &mut ready);
            match r {
                Ok(Promoted::Already) => drop(tx.send(Ok(()))),
                Ok(Promoted::Started { epoch_start }) => {
                    sh.node_id.store(pr.me.0, Ordering::Relaxed);
                    tracing::info!(shard, epoch = pr.epoch, node = pr.me.0, start = epoch_start, "leading");
                    witness::emit(Event::Primary { node: pr.me.0, shard, epoch: pr.epoch });
                    step.promoted = Some(pr);
                    step.replies.push(Deferred::Done(tx));
                }
                Err(e) => drop(tx.send(Err(e))),
            }
        }
        // Taken apart from groups by `run_log`.
        Cmd::Retire => {}
        Cmd::Install { epoch, at, image, done } => {
            let plan = sh.core().install_plan(epoch, at, now, &mut ready);
            perform(sh, wal, buf, step, waiters, std::mem::take(&mut ready))?;
            if let InstallPlan::Reply(reply) = plan {
                step.replies.push(Deferred::Append(done, reply));
                return Ok(());
            }
            let cp = match install_checkpoint(sh, at, &image) {
                Ok(cp) => cp,
                Err(e) => {
                    let _ = done.send(Err(e));
                    return Ok(());
                }
            };
            {
                let _gate = sh.apply_gate.lock().unwrap_or_else(|p| p.into_inner());
                let range = KeyRange { start: cp.key_start, end: cp.key_end };
                *sh.state.write().unwrap_or_else(|p| p.into_inner()) = ShardStore::new(range, Some(cp));
            }
            let reply = sh.core().installed(epoch, at, now, &mut ready);
            tracing::info!(shard, lsn = at.lsn, "installed a snapshot from the primary");
            step.replies.push(Deferred::Append(done, reply));
        }
    }
    perform(sh, wal, buf, step, waiters, ready)
}

/// Writes the snapshot as this replica's `storage.dat` and opens it.
fn install_checkpoint(sh: &Shared, at: EntryId, image: &[u8]) -> Result<Checkpoint, String> {
    crate::store::checkpoint::write(&*sh.disk, &sh.dir, image).map_err(|e| e.to_string())?;
    let map = sh.disk.map(&format!("{}/storage.dat", sh.dir)).map_err(|e| e.to_string())?;
    let cp = Checkpoint::open(map).map_err(|e| e.to_string())?;
    // A shard's start never moves; its end does (a split narrows it, a merge widens it).
    if cp.lsn != at.lsn || cp.key_start != sh.range.start || cp.key_start > cp.key_end {
        return Err("the snapshot does not match what the primary announced".into());
    }
    Ok(cp)
}

/// Performs what the core listed, in order.
fn perform(
    sh: &Shared,
    wal: &mut Wal,
    buf: &mut Vec<u8>,
    step: &mut Step,
    waiters: &mut BTreeMap<u64, Waiter>,
    ready: Ready,
) -> Result<(), WalError> {
    for io in ready.io {
        match io {
            Io::Stage(id, payload) => {
                let lsn = wal.stage(buf, id.epoch, RecordType::Entry, &payload);
                assert_eq!(lsn, id.lsn, "the WAL and the log index disagree on the next LSN");
            }
            Io::TruncateAfter(lsn) => {
                // Records staged earlier in this group go to the file first, then the cut.
                step.flush(wal, buf)?;
                wal.truncate_after(lsn)?;
                step.first_lsn = wal.next_lsn();
            }
            Io::PersistPromise(p) => crate::io::write_atomic(&*sh.disk, &sh.dir, "promise", &p.encode())
                .map_err(|source| WalError::FsyncFailed { path: format!("{}/promise", sh.dir), source })?,
            Io::ResetAfter(at) => {
                step.flush(wal, buf)?;
                wal.reset_after(at.lsn)?;
                step.first_lsn = wal.next_lsn();
            }
        }
    }
    if ready.stepped_down {
        sh.stepped_down(waiters);
    }
    Ok(())
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
    promoted: Option<Promotion>,
}

impl Step {
    /// Writes and syncs what this group staged so far.
    fn flush(&mut self, wal: &mut Wal, buf: &mut Vec<u8>) -> Result<(), WalError> {
        if !buf.is_empty() {
            wal.write_and_sync(self.first_lsn, buf)?;
            buf.clear();
        }
        Ok(())
    }

    fn fail_all(&mut self, reason: &str) {
        for r in self.replies.drain(..) {
            r.fail(reason);
        }
    }

    /// A command that arrived after the WAL failed.
    fn refuse(&mut self, cmd: Cmd) {
        step_refuse(self.shard, cmd, "the replica's log failed");
    }
}

/// Answers a command the log will not carry out.
fn step_refuse(shard: u32, cmd: Cmd, reason: &str) {
    match cmd {
        Cmd::Write(w) => drop(w.done.send(Err(ShardError::NotServing { shard, reason: reason.into() }))),
        Cmd::Append(_, _, tx) | Cmd::Install { done: tx, .. } => drop(tx.send(Err(reason.into()))),
        Cmd::Fence(_, tx) => drop(tx.send(Err(reason.into()))),
        Cmd::Promote(_, tx) => drop(tx.send(Err(reason.into()))),
        Cmd::Retire => {}
    }
}
