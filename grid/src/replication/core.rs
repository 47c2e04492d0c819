//! One shard replica's decisions as a pure state machine (architecture.md §5): which commands
//! it accepts, what it must persist, truncate or reset, when it steps down, what it ships to
//! each peer, what has committed and what it may forget. It does no I/O and holds no channel:
//! each call returns its answer and appends to a [`Ready`] the writes the driver
//! (`node/log.rs`) must perform, in order, before any reply of the group goes out. Time comes
//! in as an argument (the lease clock's `now`).
//!
//! The rules for one role at a time are in [`Primary`] and [`Replica`]; this adds what lies
//! around them: the durable promise, the epoch a replica may lead once, re-sync after a wipe,
//! the lease, the byte-bounded in-memory log, learners and snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{self, Body};
use super::{Append, AppendReply, EntryId, LogIndex, Outcome, Primary, Replica};
use crate::ids::NodeId;
use crate::limits;

/// A log entry's id and its payload (the encoded body, shared with the shippers).
pub type LoggedEntry = (EntryId, Arc<Vec<u8>>);

/// One write the driver must perform, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Io {
    /// Append this entry to the WAL (staged; the group's fsync makes it durable).
    Stage(EntryId, Arc<Vec<u8>>),
    /// Drop every WAL record after this LSN (what was staged before goes to the file first).
    TruncateAfter(u64),
    /// Write the promise file (fsynced, atomically) before anything after it.
    PersistPromise(Promise),
    /// A snapshot through this entry was installed: the WAL restarts after it.
    ResetAfter(EntryId),
}

/// What a step asks of the driver besides its answer.
#[derive(Debug, Default)]
pub struct Ready {
    pub io: Vec<Io>,
    /// This replica stopped leading: writes still waiting end with an unknown outcome (they
    /// may yet commit under the new primary) and its shippers stop.
    pub stepped_down: bool,
    /// It now leads this epoch: once the group is durable, ship to every other voter.
    pub lead_started: Option<u64>,
}

impl Ready {
    fn stage(&mut self, id: EntryId, payload: Arc<Vec<u8>>) {
        self.io.push(Io::Stage(id, payload));
    }
}

/// The durable promise (`promise` file): the highest epoch fenced into, the highest epoch this
/// replica has led, and whether it is re-syncing. A replica never leads an epoch twice: after a
/// restart its in-memory primary state is gone, and a second epoch-start entry could diverge
/// from the first. A replica re-syncing from its peers (its data was wiped after corruption)
/// may hold less than it once acknowledged, so it neither answers fences nor leads until a
/// primary's append shows it holds everything that primary had committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Promise {
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

#[derive(Clone, Debug)]
pub enum Role {
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

/// While this replica leads: when it may start acknowledging, and the send times of the
/// latest appends each peer acknowledged (its lease).
#[derive(Clone, Debug)]
pub struct Lead {
    pub epoch: u64,
    pub activate_at: Instant,
    pub acks: BTreeMap<NodeId, Instant>,
    /// Handing the role over: no new writes until then (the fence that follows ends this
    /// lead; if none comes, writes resume).
    pub handover_until: Option<Instant>,
}

/// A fenced replica's answer: its last entry, and how long ago it last accepted an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced {
    pub last: EntryId,
    pub append_age: Option<Duration>,
}

/// What a client write is, for its entry body.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Batch,
    InEdges,
    Delivered,
    /// `bytes` is `entry::split_bytes(at, child)`.
    Split,
    /// A merge's entry (`Freeze`, `MergeBegin`, `Absorb`, `MergeEnd`): `bytes` is the whole
    /// `entry::encode` payload; its commit hint is filled in here.
    Merge,
}

/// Why a write was not logged (nothing was: the caller may retry, elsewhere for the first two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    NotPrimary(String),
    Busy(String),
}

/// A promotion's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Promoted {
    /// Already leading that epoch: answer at once.
    Already,
    /// Leading it from this group on: answer once the epoch-start entry is durable.
    Started { epoch_start: u64 },
}

/// A snapshot offer's answer before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstallPlan {
    /// Answer this and install nothing.
    Reply(AppendReply),
    /// Write the image, then call [`Core::installed`].
    Install,
}

/// What a shipper sends `peer` next.
#[derive(Debug)]
pub enum Job {
    Send(Append, Vec<Arc<Vec<u8>>>),
    /// Entries this primary no longer holds in memory: read them from the WAL.
    FromDisk(Append),
    Snapshot,
    Wait,
    Stop,
}

/// The replica: its role's state machine, the durable promise, and the log entries it keeps
/// in memory (every entry after `applied`, and some before it for lagging replicas).
#[derive(Debug)]
pub struct Core {
    pub role: Role,
    pub promise: Promise,
    entries: VecDeque<LoggedEntry>,
    entry_bytes: usize,
    /// Committed entries kept in memory for lagging replicas, at most.
    retain_bytes: usize,
    pub applied: u64,
    /// Everything through this LSN is fsynced here.
    pub durable: u64,
    pub lead: Option<Lead>,
    /// When this replica last accepted an append (or snapshot) from a primary, on the lease
    /// clock: reported at a fence (`replication::lease`).
    pub append_heard_at: Option<Instant>,
    /// Entries at or below this LSN reach an empty peer only inside a snapshot: the shard's
    /// range changed there (a split, a merge's end), and a replica created since with the new
    /// range would apply older entries differently from one that held the old range when they
    /// were logged. A peer holding entries already held the old range: it replays them, the
    /// range-changing entry included (a split entry skipped inside a snapshot would never
    /// write the new shard's replica on that node).
    pub snapshot_through: u64,
}

impl Core {
    /// A replica recovered from disk: its log (every entry in the WAL is durable), what it
    /// promised, the entries not yet applied, and the last applied LSN.
    pub fn new(
        role: Role,
        promise: Promise,
        entries: Vec<(EntryId, Vec<u8>)>,
        applied: u64,
        retain_bytes: usize,
    ) -> Core {
        let entry_bytes = entries.iter().map(|(_, p)| p.len()).sum();
        let durable = role.log().last().lsn;
        Core {
            role,
            promise,
            entries: entries.into_iter().map(|(id, p)| (id, Arc::new(p))).collect(),
            entry_bytes,
            retain_bytes,
            applied,
            durable,
            lead: None,
            append_heard_at: None,
            snapshot_through: 0,
        }
    }

    fn push(&mut self, id: EntryId, payload: Arc<Vec<u8>>, ready: &mut Ready) {
        self.entry_bytes += payload.len();
        self.entries.push_back((id, payload.clone()));
        ready.stage(id, payload);
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

    /// Starts handing the primary role of `epoch` to voter `to`: no new writes until `until`
    /// (the master's fence, once `to` holds everything, ends this lead).
    pub fn begin_handover(&mut self, epoch: u64, to: NodeId, until: Instant) -> Result<(), String> {
        let Role::Primary(p) = &self.role else { return Err("this replica is not primary".into()) };
        if p.epoch != epoch {
            return Err(format!("this replica leads epoch {}, not {epoch}", p.epoch));
        }
        if to == p.me || !p.voters.contains(&to) {
            return Err(format!("node {} is not another voter of this shard", to.0));
        }
        match self.lead.as_mut() {
            Some(l) => l.handover_until = Some(until),
            None => return Err("this replica does not lead yet".into()),
        }
        Ok(())
    }

    /// Whether voter `to` holds every entry this primary has logged (a handover may go on).
    pub fn handed_over(&self, to: NodeId) -> bool {
        let Role::Primary(p) = &self.role else { return false };
        p.peers.get(&to).is_some_and(|g| g.matched >= p.log.last().lsn)
    }

    /// True while this primary may acknowledge writes and serve strong reads: activated, its
    /// epoch-start entry committed, and a lease from a majority (rule 6).
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

    /// The epoch this replica leads, 0 when it does not.
    pub fn primary_epoch(&self) -> u64 {
        match (&self.role, &self.lead) {
            (Role::Primary(p), Some(_)) => p.epoch,
            _ => 0,
        }
    }

    /// The epoch it leads and its other voters, for the driver's shippers.
    pub fn shipping_to(&self) -> Option<(u64, Vec<NodeId>)> {
        let Role::Primary(p) = &self.role else { return None };
        self.lead.as_ref()?;
        Some((p.epoch, p.voters.iter().copied().filter(|v| *v != p.me).collect()))
    }

    fn step_down(&mut self, promised: u64, ready: &mut Ready) {
        if let Role::Primary(p) = &self.role {
            let mut r = p.clone().into_replica();
            r.promised = r.promised.max(promised);
            self.role = Role::Replica(r);
            ready.stepped_down = true;
        }
        if self.lead.take().is_some() {
            ready.stepped_down = true;
        }
    }

    /// A client write (primary only): its entry, staged in `ready`.
    pub fn write(
        &mut self,
        kind: WriteKind,
        bytes: &[u8],
        now: Instant,
        ready: &mut Ready,
    ) -> Result<EntryId, Refused> {
        let active = self.lead.as_ref().is_some_and(|l| now >= l.activate_at);
        let Role::Primary(p) = &mut self.role else {
            return Err(Refused::NotPrimary("this replica is not primary".into()));
        };
        if !active {
            return Err(Refused::NotPrimary("the new primary is waiting out the old primary's lease".into()));
        }
        if self.lead.as_ref().and_then(|l| l.handover_until).is_some_and(|t| now < t) {
            return Err(Refused::NotPrimary("handing the primary role to another replica".into()));
        }
        let uncommitted = p.log.last().lsn.saturating_sub(self.applied) as usize;
        if uncommitted >= limits::REPL_UNCOMMITTED_MAX {
            return Err(Refused::Busy(format!("{uncommitted} writes are waiting to commit; retry later")));
        }
        if kind == WriteKind::Merge {
            if !matches!(
                entry::decode(bytes),
                Ok((_, Body::Freeze { .. } | Body::MergeBegin { .. } | Body::Absorb { .. } | Body::MergeEnd { .. }))
            ) {
                return Err(Refused::NotPrimary("a malformed merge entry".into()));
            }
            let id = p.append();
            let mut payload = bytes.to_vec();
            payload[..8].copy_from_slice(&p.commit.to_le_bytes());
            self.push(id, Arc::new(payload), ready);
            return Ok(id);
        }
        let id = p.append();
        let body = match kind {
            WriteKind::Batch => Body::Batch(bytes),
            WriteKind::InEdges => Body::InEdges(bytes),
            WriteKind::Delivered => Body::Delivered(bytes),
            WriteKind::Split => {
                let (Ok(at), Ok(child)) = (
                    bytes.get(..8).unwrap_or_default().try_into().map(u64::from_le_bytes),
                    bytes.get(8..12).unwrap_or_default().try_into().map(u32::from_le_bytes),
                ) else {
                    return Err(Refused::NotPrimary("a malformed split".into()));
                };
                Body::Split { at, child }
            }
            WriteKind::Merge => unreachable!("handled above"),
        };
        let payload = Arc::new(entry::encode(p.commit, body));
        self.push(id, payload, ready);
        Ok(id)
    }

    /// An append from a primary (`payloads[i]` is `a.entries[i]`'s). The reply goes out once
    /// the group is durable.
    pub fn append(&mut self, a: &Append, payloads: Vec<Arc<Vec<u8>>>, now: Instant, ready: &mut Ready) -> AppendReply {
        if let Role::Primary(p) = &self.role {
            if a.epoch <= p.epoch {
                return AppendReply::StaleEpoch { promised: p.epoch };
            }
            self.step_down(a.epoch, ready);
        }
        let Role::Replica(r) = &mut self.role else { unreachable!("stepped down above") };
        let old_last = r.log.last().lsn;
        let (reply, truncated) = r.on_append(a);
        if let Some(t) = truncated {
            ready.io.push(Io::TruncateAfter(t));
            self.durable = self.durable.min(t);
            self.drop_after(t);
        }
        if let AppendReply::Ok { matched, .. } = reply {
            let from = truncated.unwrap_or(old_last).min(old_last);
            for (id, payload) in a.entries.iter().zip(payloads) {
                if id.lsn > from {
                    self.push(*id, payload, ready);
                }
            }
            if self.promise.resync && a.commit <= matched {
                // It now holds everything the primary had committed: a full voter again.
                self.promise.resync = false;
                self.promise.promised = self.promise.promised.max(a.epoch);
                ready.io.push(Io::PersistPromise(self.promise));
            }
            // News of a live primary, whose age a later fence reports (`replication::lease`).
            self.append_heard_at = Some(now);
        }
        reply
    }

    /// The master fences this replica into `epoch`. The answer goes out once durable.
    pub fn fence(&mut self, epoch: u64, now: Instant, ready: &mut Ready) -> Result<Fenced, String> {
        if self.promise.resync {
            return Err("re-syncing from its peers: it cannot vote until it has caught up".into());
        }
        if epoch < self.role.promised() {
            return Err(format!("already promised epoch {}", self.role.promised()));
        }
        self.step_down(epoch, ready);
        let Role::Replica(r) = &mut self.role else { unreachable!("stepped down above") };
        let last = r.on_fence(epoch).unwrap_or_else(|_| r.log.last());
        if epoch > self.promise.promised {
            self.promise.promised = epoch;
            ready.io.push(Io::PersistPromise(self.promise));
        }
        let append_age = self.append_heard_at.map(|t| now.saturating_duration_since(t));
        Ok(Fenced { last, append_age })
    }

    /// The master names this replica primary of `epoch` over `voters` (itself included); it
    /// may acknowledge writes `lease_wait` from `now`.
    pub fn promote(
        &mut self,
        epoch: u64,
        me: NodeId,
        voters: Vec<NodeId>,
        lease_wait: Duration,
        now: Instant,
        ready: &mut Ready,
    ) -> Result<Promoted, String> {
        if matches!(&self.role, Role::Primary(p) if p.epoch == epoch) {
            return Ok(Promoted::Already);
        }
        if epoch < self.role.promised() || epoch <= self.promise.led || self.promise.resync {
            return Err(format!(
                "cannot lead epoch {epoch}: promised {}, already led {}, re-syncing {}",
                self.role.promised(),
                self.promise.led,
                self.promise.resync
            ));
        }
        if !voters.contains(&me) {
            return Err(format!("cannot lead epoch {epoch}: node {} is not one of its voters", me.0));
        }
        self.step_down(epoch, ready);
        self.promise = Promise { promised: epoch, led: epoch, resync: false };
        ready.io.push(Io::PersistPromise(self.promise));
        let Role::Replica(r) = &self.role else { unreachable!("stepped down above") };
        let mut r = r.clone();
        r.promised = epoch;
        let mut p = Primary::new(me, voters, epoch, r);
        // Entries staged earlier in this group are not durable yet: they must not count.
        p.durable = p.durable.min(self.durable);
        let start = p.log.last();
        let payload = Arc::new(entry::encode(p.commit, Body::EpochStart));
        self.role = Role::Primary(p);
        self.push(start, payload, ready);
        self.lead = Some(Lead { epoch, activate_at: now + lease_wait, acks: BTreeMap::new(), handover_until: None });
        ready.lead_started = Some(epoch);
        Ok(Promoted::Started { epoch_start: start.lsn })
    }

    /// A snapshot through `at` is offered in `epoch`: whether to write it.
    pub fn install_plan(&mut self, epoch: u64, at: EntryId, now: Instant, ready: &mut Ready) -> InstallPlan {
        if epoch < self.role.promised() {
            return InstallPlan::Reply(AppendReply::StaleEpoch { promised: self.role.promised() });
        }
        self.step_down(epoch, ready);
        if self.role.commit() >= at.lsn {
            // Already has everything the snapshot holds.
            self.append_heard_at = Some(now);
            return InstallPlan::Reply(AppendReply::Ok { epoch, matched: self.role.commit() });
        }
        InstallPlan::Install
    }

    /// The snapshot through `at` is written and its state installed: the log restarts there.
    pub fn installed(&mut self, epoch: u64, at: EntryId, now: Instant, ready: &mut Ready) -> AppendReply {
        ready.io.push(Io::ResetAfter(at));
        self.durable = at.lsn;
        self.role = Role::Replica(Replica::new(LogIndex::new(at), epoch, at.lsn));
        self.entries.clear();
        self.entry_bytes = 0;
        self.applied = at.lsn;
        self.append_heard_at = Some(now);
        AppendReply::Ok { epoch, matched: at.lsn }
    }

    /// The WAL holds everything through `lsn` durably (the group's fsync returned).
    pub fn on_durable(&mut self, lsn: u64) {
        self.durable = lsn;
        if let Role::Primary(p) = &mut self.role {
            p.on_durable(lsn);
        }
    }

    /// The WAL now starts at `keep_from` (segments below it were trimmed).
    pub fn on_trimmed(&mut self, keep_from: u64) {
        if keep_from > self.role.log().base().lsn + 1 {
            self.role.log_mut().trim_through(keep_from - 1);
        }
    }

    /// A peer's reply to an append of `epoch` sent at `sent` (lease clock).
    pub fn on_reply(&mut self, epoch: u64, peer: NodeId, sent: Instant, reply: &AppendReply, ready: &mut Ready) {
        let Role::Primary(p) = &mut self.role else { return };
        if p.epoch != epoch {
            return;
        }
        if let Outcome::StepDown { promised } = p.on_reply(peer, reply) {
            self.step_down(promised, ready);
            return;
        }
        if matches!(reply, AppendReply::Ok { epoch: e, .. } if *e == epoch) {
            if let Some(lead) = self.lead.as_mut() {
                let t = lead.acks.entry(peer).or_insert(sent);
                *t = (*t).max(sent);
            }
        }
    }

    /// Committed entries not applied yet, in LSN order; `Err` if the log lacks the next one.
    pub fn to_apply(&self) -> Result<Vec<LoggedEntry>, String> {
        let commit = self.role.commit();
        if commit <= self.applied {
            return Ok(Vec::new());
        }
        let front = self.entries.front().map_or(u64::MAX, |(id, _)| id.lsn);
        if front > self.applied + 1 {
            return Err(format!("log gap: entry {} is not held (applied {})", self.applied + 1, self.applied));
        }
        let start = (self.applied + 1 - front) as usize;
        let end = ((commit + 1 - front) as usize).min(self.entries.len());
        Ok(self.entries.range(start..end).cloned().collect())
    }

    /// Entries through `lsn` are applied: keep of them only what lagging peers still need,
    /// within the byte budget.
    pub fn applied_through(&mut self, lsn: u64) {
        assert!(lsn <= self.role.commit(), "applied {lsn} beyond commit {}", self.role.commit());
        self.applied = self.applied.max(lsn);
        let low = match &self.role {
            Role::Primary(p) => p.low_water().min(self.applied),
            Role::Replica(_) => self.applied,
        };
        while let Some((id, p)) = self.entries.front() {
            if id.lsn > self.applied || (id.lsn > low && self.entry_bytes <= self.retain_bytes) {
                break;
            }
            self.entry_bytes -= p.len();
            self.entries.pop_front();
        }
    }

    /// While leading `epoch`, ship to exactly these learners too (non-voting members catching
    /// up; their acknowledgements count neither for commit nor for the lease). Returns the
    /// learners to start shipping to and those to stop.
    pub fn set_learners(&mut self, epoch: u64, learners: &[NodeId]) -> (Vec<NodeId>, Vec<NodeId>) {
        let (Role::Primary(p), Some(lead)) = (&mut self.role, &mut self.lead) else { return Default::default() };
        if p.epoch != epoch || lead.epoch != epoch {
            return Default::default();
        }
        let wanted: Vec<NodeId> = learners.iter().copied().filter(|n| !p.voters.contains(n)).collect();
        let gone: Vec<NodeId> =
            p.peers.keys().copied().filter(|n| !p.voters.contains(n) && !wanted.contains(n)).collect();
        for n in &gone {
            p.peers.remove(n);
            lead.acks.remove(n);
        }
        let added = wanted.into_iter().filter(|n| p.add_learner(*n)).collect();
        (added, gone)
    }

    /// What to send `peer` next while leading `epoch`: up to `REPL_APPEND_ENTRIES_MAX` entries
    /// and `REPL_APPEND_BYTES_MAX` bytes (at least one entry), an empty append when a
    /// heartbeat is due, or nothing.
    pub fn next_job(&mut self, epoch: u64, peer: NodeId, heartbeat_due: bool) -> Job {
        let Role::Primary(p) = &mut self.role else { return Job::Stop };
        if p.epoch != epoch {
            return Job::Stop;
        }
        match p.next_append(peer, limits::REPL_APPEND_ENTRIES_MAX) {
            Ok(Some(a)) if a.prev.lsn == 0 && a.entries.first().is_some_and(|e| e.lsn <= self.snapshot_through) => {
                Job::Snapshot
            }
            Ok(Some(mut a)) => {
                let Some(mut ps) = self.payloads(&a.entries) else { return Job::FromDisk(a) };
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
                    // Cut the tail and move `next` back to it.
                    ps.truncate(keep);
                    a.entries.truncate(keep);
                    self.resume_at(epoch, peer, a.entries[keep - 1].lsn + 1);
                }
                Job::Send(a, ps)
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
    pub fn resume_at(&mut self, epoch: u64, peer: NodeId, next: u64) {
        if let Role::Primary(p) = &mut self.role {
            if p.epoch == epoch {
                if let Some(pp) = p.peers.get_mut(&peer) {
                    pp.next = next;
                }
            }
        }
    }

    /// An append to `peer` was lost: send again from what it acknowledged.
    pub fn rewind(&mut self, epoch: u64, peer: NodeId) {
        if let Role::Primary(p) = &mut self.role {
            if p.epoch == epoch {
                p.rewind(peer);
            }
        }
    }
}
