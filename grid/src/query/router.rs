//! The router: a cached copy of the master's shard map, used to send each key to its shard's
//! primary. A write batch is split per shard (concepts by their placement key, an association
//! to its source's shard, whose outbox delivers the in-edge), and the per-shard batches go out
//! in parallel. Each per-shard batch is atomic; a batch spanning shards is not. A part refused because its node is not (yet) primary, or that could not be sent at all, was
//! never logged: it is retried against the re-read map until the router's deadline. A part or
//! read refused as "wrong shard" (the shard split since the map was read; nothing applied) is
//! routed again by the re-read map. Eventual reads try every replica; strong reads go to the
//! primary and retry the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sutra_proto as pb;

use crate::client::{ClientError, MasterClient, StorageClient};
use crate::ids::ConceptId;
use crate::limits;
use crate::model::{Association, Consistency, Direction, EdgeFilter, Forget, WriteBatch};
use crate::query::paths::{Expander, Expansion, Step};
use crate::wire::{id_from_pb, kind_from_pb};

/// A merged vector search.
#[derive(Debug, Default)]
pub struct SearchOutcome {
    pub hits: Vec<pb::SearchHit>,
    /// Shards asked.
    pub shards: usize,
    /// The answering replicas' indexes, summed.
    pub index: crate::store::IndexStats,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("the grid is not initialised (shard map version 0); run `sutra init`")]
    NotInitialised,
    #[error("no shard owns placement key {0:#018x}; the shard map is invalid")]
    Unowned(u64),
    #[error("shard {shard}'s primary (node {node}) has no known address")]
    NoAddress { shard: u32, node: u64 },
    #[error("master: {0}")]
    Master(ClientError),
    #[error("shard {shard} on {addr}: {source}")]
    Shard { shard: u32, addr: String, source: ClientError },
    #[error("shard {shard} cut its expansion short (too many edges); narrow the search with filters")]
    Truncated { shard: u32 },
    #[error("a routing task failed: {0}")]
    Task(String),
    /// The shard left the map (merged into its neighbour) while a request was routed to it.
    #[error("shard {shard} left the shard map (it merged into another); route again")]
    Gone { shard: u32 },
    /// In-edges logged before a retraction still travel to their shards (`wait_all_delivered`).
    #[error("in-edges written before this request are still on their way to their shards; retry shortly")]
    InFlight,
}

impl RouterError {
    /// A shard answered that it does not own a key (it split or merged since this router's
    /// map was read), or left the map: re-read the map and route again.
    fn is_wrong_shard(&self) -> bool {
        matches!(self, RouterError::Gone { .. })
            || matches!(self, RouterError::Shard { source, .. } if wrong_shard(source))
    }
}

fn wrong_shard(e: &ClientError) -> bool {
    matches!(e, ClientError::Rpc { status, .. }
        if status.code() == tonic::Code::FailedPrecondition && status.message().contains("wrong shard"))
}

/// A write part that did not go through: refused because its shard split (route it again),
/// or failed.
enum PartError {
    Moved(WriteBatch),
    Failed(RouterError),
}

/// One per-shard part of a routed write, as acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardWrite {
    pub shard: u32,
    pub lsn: u64,
    /// The part holds an association whose target lives on another shard: its in-edge is
    /// delivered after the acknowledgement (`wait_delivered`).
    pub owes_in_edges: bool,
    /// The shard's key range when the part was written: shards split off it since then may
    /// hold its undelivered in-edges (they go with their source).
    pub range: (u64, u64),
    /// Concepts and associations the part's retractions removed.
    pub forgotten: u32,
}

#[derive(Default)]
struct Table {
    map: pb::ShardMap,
    addrs: HashMap<u64, String>,
}

impl Table {
    fn shard_for(&self, key: u64) -> Result<&pb::ShardEntry, RouterError> {
        if self.map.version == 0 {
            return Err(RouterError::NotInitialised);
        }
        let i = self.map.shards.partition_point(|s| s.key_start <= key);
        i.checked_sub(1)
            .and_then(|i| self.map.shards.get(i))
            .filter(|s| s.key_end >= key)
            .ok_or(RouterError::Unowned(key))
    }

    fn primary_addr(&self, s: &pb::ShardEntry) -> Result<String, RouterError> {
        self.addrs.get(&s.primary).cloned().ok_or(RouterError::NoAddress { shard: s.shard, node: s.primary })
    }

    fn entry(&self, shard: u32) -> Option<&pb::ShardEntry> {
        self.map.shards.iter().find(|s| s.shard == shard)
    }

    /// Where to read `shard`: the primary first, then (eventual only) the other replicas.
    fn read_addrs(&self, shard: u32, consistency: Consistency) -> Vec<String> {
        let Some(e) = self.entry(shard) else { return Vec::new() };
        let mut nodes = vec![e.primary];
        if consistency == Consistency::Eventual {
            nodes.extend(e.replicas.iter().filter(|r| **r != e.primary));
        }
        nodes.iter().filter_map(|n| self.addrs.get(n).cloned()).collect()
    }
}

/// True when the request certainly was not logged, so sending it again is safe.
fn never_logged(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Rpc { status, .. } => {
            matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::ResourceExhausted)
                // A node that has not opened the shard yet (one just split off, a learner).
                || (status.code() == tonic::Code::NotFound && status.message().contains("not hosted"))
                // Refused by a replica that does not serve, or a cached channel that could not
                // reconnect (a dead primary after a failover): the request never left.
                || (status.code() == tonic::Code::Unavailable
                    && (status.message().contains("not serving") || status.message().contains("connect error")))
        }
        ClientError::Deadline { .. } => false,
    }
}

/// The call may or may not have been logged: a deadline, or a connection that broke (a hung
/// primary resumed, a process killed mid-call). An idempotent write may simply be sent again.
fn outcome_unknown(e: &ClientError) -> bool {
    match e {
        ClientError::Deadline { .. } => true,
        ClientError::Rpc { status, .. } => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Aborted
                | tonic::Code::DeadlineExceeded
        ),
        ClientError::Connect { .. } => false,
    }
}

pub struct Router {
    master: MasterClient,
    table: RwLock<Table>,
    clients: Mutex<HashMap<String, StorageClient>>,
    deadline: std::time::Duration,
    /// Write parts sent again (a new primary, or an outcome-unknown failure), for `/metrics`.
    resends: std::sync::atomic::AtomicU64,
}

impl Router {
    /// A router over `master`'s current map.
    pub async fn new(master: MasterClient, deadline: std::time::Duration) -> Result<Arc<Router>, RouterError> {
        let r = Arc::new(Router {
            master,
            table: RwLock::new(Table::default()),
            clients: Mutex::new(HashMap::new()),
            deadline,
            resends: std::sync::atomic::AtomicU64::new(0),
        });
        r.refresh().await?;
        Ok(r)
    }

    /// Re-reads the shard map; returns its version.
    pub async fn refresh(&self) -> Result<u64, RouterError> {
        let map = self.master.shard_map().await.map_err(RouterError::Master)?;
        let addrs = map.nodes.iter().map(|n| (n.node_id, n.storage_addr.clone())).collect();
        let v = map.version;
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if map.version >= t.map.version {
            *t = Table { map, addrs };
        }
        Ok(v)
    }

    /// A router made before the grid was initialised re-reads the map before its first use.
    async fn ensure_map(&self) {
        if self.map_version() == 0 {
            let _ = self.refresh().await;
        }
    }

    /// Write parts sent again since this router started (a failover, or an unknown outcome).
    pub fn write_resends(&self) -> u64 {
        self.resends.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn map_version(&self) -> u64 {
        self.table.read().unwrap_or_else(|p| p.into_inner()).map.version
    }

    async fn client(&self, addr: &str) -> Result<StorageClient, ClientError> {
        if let Some(c) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let c = StorageClient::connect_once(addr).await?.with_deadline(self.deadline);
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn forget(&self, addr: &str) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }

    /// Splits `batch` into per-shard batches, each with its primary's address.
    pub fn split(&self, batch: &WriteBatch) -> Result<Vec<(u32, String, WriteBatch)>, RouterError> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        let mut parts: BTreeMap<u32, (String, WriteBatch)> = BTreeMap::new();
        fn part<'a>(
            t: &Table,
            parts: &'a mut BTreeMap<u32, (String, WriteBatch)>,
            key: u64,
        ) -> Result<&'a mut WriteBatch, RouterError> {
            let s = t.shard_for(key)?;
            let addr = t.primary_addr(s)?;
            Ok(&mut parts.entry(s.shard).or_insert_with(|| (addr, WriteBatch::default())).1)
        }
        for c in &batch.concepts {
            let key = ConceptId::from_label(&c.label).placement_key();
            part(&t, &mut parts, key)?.concepts.push(c.clone());
        }
        // Only the source's shard logs an association; its outbox delivers the in-edge to the
        // target's shard (`store::links`), so no crash leaves one side without the other.
        for a in &batch.associations {
            part(&t, &mut parts, a.source.placement_key())?.associations.push(a.clone());
        }
        // Retractions likewise: a concept's own shard, an association's source's.
        for f in &batch.forget {
            part(&t, &mut parts, f.owner().placement_key())?.forget.push(f.clone());
        }
        Ok(parts.into_iter().map(|(shard, (addr, b))| (shard, addr, b)).collect())
    }

    /// Writes `batch` through the primaries, per-shard parts in parallel. A part is retried
    /// only while it certainly was not logged (see [`never_logged`]); a part that timed out
    /// may or may not have committed, and the caller knows whether repeating it is safe
    /// (upserts by label are).
    pub async fn write(self: &Arc<Self>, batch: &WriteBatch) -> Result<Vec<ShardWrite>, RouterError> {
        self.write_with(batch, false).await
    }

    /// [`Self::write`] for a batch the caller may apply twice (upserts of the same values, as
    /// `/learn` sends): a part whose primary is replaced while the part waits on it (a hung
    /// process) is sent again to the new primary instead of waiting out its deadline. If the
    /// old primary did log it before it was fenced, the batch is applied twice.
    pub async fn write_idempotent(self: &Arc<Self>, batch: &WriteBatch) -> Result<Vec<ShardWrite>, RouterError> {
        self.write_with(batch, true).await
    }

    async fn write_with(
        self: &Arc<Self>,
        batch: &WriteBatch,
        idempotent: bool,
    ) -> Result<Vec<ShardWrite>, RouterError> {
        self.ensure_map().await;
        let start = tokio::time::Instant::now();
        // What is left to route: the batch, then only the parts a split refused.
        let mut todo: Option<WriteBatch> = None;
        let mut out = Vec::new();
        let mut attempt = 0u32;
        loop {
            let parts = self.split(todo.as_ref().unwrap_or(batch))?;
            let mut tasks = Vec::with_capacity(parts.len());
            for (shard, addr, part) in parts {
                let me = self.clone();
                tasks.push(tokio::spawn(async move { me.write_part(shard, addr, part, idempotent).await }));
            }
            let mut first_err = None;
            let mut moved = WriteBatch::default();
            for t in tasks {
                let Ok(r) = t.await else { continue };
                match r {
                    Ok(w) => out.push(w),
                    Err(PartError::Moved(b)) => {
                        moved.concepts.extend(b.concepts);
                        moved.associations.extend(b.associations);
                        moved.forget.extend(b.forget);
                    }
                    Err(PartError::Failed(e)) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            if moved.is_empty() {
                return Ok(out);
            }
            // Parts refused by a shard that split: nothing of them applied; route them by
            // the new map.
            if start.elapsed() >= self.deadline {
                let source = ClientError::Deadline {
                    op: "write_batch (shard map kept changing)",
                    ms: self.deadline.as_millis() as u64,
                };
                return Err(RouterError::Shard { shard: 0, addr: String::new(), source });
            }
            let _ = self.refresh().await;
            tokio::time::sleep(crate::client::retry_backoff(attempt, 5, 160)).await;
            attempt += 1;
            self.resends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            todo = Some(moved);
        }
    }

    async fn write_part(
        &self,
        shard: u32,
        mut addr: String,
        part: WriteBatch,
        idempotent: bool,
    ) -> Result<ShardWrite, PartError> {
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let send = async {
                match self.client(&addr).await {
                    Ok(c) => c.write_batch(shard, &part).await,
                    Err(e) => Err(e),
                }
            };
            let r = if idempotent {
                tokio::select! {
                    biased;
                    r = send => Some(r),
                    _ = self.primary_moved(shard, &addr) => None,
                }
            } else {
                Some(send.await)
            };
            let source = match r {
                Some(Ok(resp)) => {
                    // The shard knows whether it owes in-edges, and its range when the entry
                    // applied (where they may go once it splits).
                    let range = (resp.key_start, resp.key_end);
                    let (lsn, owes_in_edges, forgotten) = (resp.lsn, resp.owes_in_edges, resp.forgotten);
                    return Ok(ShardWrite { shard, lsn, owes_in_edges, range, forgotten });
                }
                Some(Err(e)) => e,
                None => {
                    // The shard has a new primary while this part waited on the old one.
                    if start.elapsed() >= self.deadline {
                        let source = ClientError::Deadline { op: "write_batch", ms: self.deadline.as_millis() as u64 };
                        return Err(PartError::Failed(RouterError::Shard { shard, addr, source }));
                    }
                    self.forget(&addr);
                    if let Some(a) = self.primary_addr_of(shard) {
                        addr = a;
                    }
                    self.resends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
            };
            if wrong_shard(&source) {
                return Err(PartError::Moved(part));
            }
            self.forget(&addr);
            let _ = self.refresh().await;
            // Merged away (so it logged nothing more once it froze): route by the new map.
            if never_logged(&source) && !self.has_shard(shard) {
                return Err(PartError::Moved(part));
            }
            let retry = never_logged(&source) || (idempotent && outcome_unknown(&source));
            if !retry || start.elapsed() >= self.deadline {
                return Err(PartError::Failed(RouterError::Shard { shard, addr, source }));
            }
            tokio::time::sleep(crate::client::retry_backoff(attempt, 20, 160)).await;
            attempt += 1;
            self.resends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(a) = self.primary_addr_of(shard) {
                addr = a;
            }
        }
    }

    /// Whether this router's map (once it has one) still holds `shard`.
    fn has_shard(&self, shard: u32) -> bool {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.map.version == 0 || t.entry(shard).is_some()
    }

    fn primary_addr_of(&self, shard: u32) -> Option<String> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.entry(shard).and_then(|e| t.addrs.get(&e.primary)).cloned()
    }

    /// Resolves once the map names a primary for `shard` other than the one at `addr`: after
    /// `WRITE_WATCH_AFTER_MS`, the map is re-read every `WRITE_WATCH_EVERY_MS`. Never resolves
    /// while the primary stays.
    async fn primary_moved(&self, shard: u32, addr: &str) {
        tokio::time::sleep(Duration::from_millis(limits::WRITE_WATCH_AFTER_MS)).await;
        loop {
            let _ = self.refresh().await;
            if self.primary_addr_of(shard).is_some_and(|a| a != addr) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(limits::WRITE_WATCH_EVERY_MS)).await;
        }
    }

    /// Waits until every write in `writes` has delivered its in-edges to their target shards:
    /// the primary's oldest undelivered outbox item was logged after the write (or there is
    /// none). Asks the primaries, backing off from 2 ms to 50 ms; `Ok(false)` when `within`
    /// ran out first.
    pub async fn wait_delivered(
        &self,
        writes: &[ShardWrite],
        within: std::time::Duration,
    ) -> Result<bool, RouterError> {
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        let mut left: Vec<ShardWrite> = writes.to_vec();
        while !left.is_empty() {
            let mut still = Vec::new();
            for w in left {
                // The write's shard, and any split off it since (its items may have moved, and
                // a child numbers its log on from its parent's). A shard split off starts above
                // the write's range start; one that starts below it absorbed the write's shard,
                // which merges only once it delivered its outbox, and numbers its log apart.
                // The write's shard itself may be gone, merged away after the split.
                let shards: Vec<u32> = {
                    let t = self.table.read().unwrap_or_else(|p| p.into_inner());
                    let split_off = t
                        .map
                        .shards
                        .iter()
                        .filter(|e| e.shard != w.shard && w.range.0 < e.key_start && e.key_start <= w.range.1);
                    let own = t.map.version == 0 || t.entry(w.shard).is_some();
                    own.then_some(w.shard).into_iter().chain(split_off.map(|e| e.shard)).collect()
                };
                let mut done = true;
                for shard in shards {
                    let (addr, info) = self.primary_info(shard).await;
                    // A replica that stopped serving (a failed fsync) still says it leads, but
                    // its outbox is unreadable and reported empty: only a serving primary's
                    // word counts. A shard split off the write's has its own commit LSNs.
                    let committed = |i: &pb::ShardInfo| shard != w.shard || i.commit_lsn >= w.lsn;
                    // The write's shard split since this router read the map: the shards
                    // split off it are not in the list yet.
                    let stale = |i: &pb::ShardInfo| {
                        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
                        t.entry(i.shard).is_none_or(|e| (e.key_start, e.key_end) != (i.key_start, i.key_end))
                    };
                    match info.filter(|i| i.serving && i.primary_epoch > 0) {
                        Some(i) if stale(&i) => {
                            let _ = self.refresh().await;
                            done = false;
                        }
                        Some(i) if committed(&i) && (i.outbox_oldest_lsn == 0 || i.outbox_oldest_lsn > w.lsn) => {}
                        Some(_) => done = false,
                        _ => {
                            // Not the primary (any more), or unreachable: look the shard up again.
                            if let Some(a) = addr {
                                self.forget(&a);
                            }
                            let _ = self.refresh().await;
                            done = false;
                        }
                    }
                    if !done {
                        break;
                    }
                }
                if !done {
                    still.push(w);
                }
            }
            left = still;
            if left.is_empty() {
                break;
            }
            if start.elapsed() >= within {
                return Ok(false);
            }
            tokio::time::sleep(crate::client::retry_backoff(attempt, 2, 50)).await;
            attempt += 1;
        }
        Ok(true)
    }

    fn read_addrs(&self, shard: u32, consistency: Consistency) -> Vec<String> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).read_addrs(shard, consistency)
    }

    /// Delivers outbox items of `source_shard` (ascending sequence numbers) to their targets'
    /// shards, one call per target shard, in parallel. Returns the sequence numbers delivered;
    /// a shard that fails keeps its items for the next round (delivery is idempotent).
    pub async fn deliver_in_edges(
        self: &Arc<Self>,
        source_shard: u32,
        items: Vec<(u64, Association)>,
    ) -> Result<Vec<u64>, RouterError> {
        self.ensure_map().await;
        let mut by_shard: BTreeMap<u32, Vec<(u64, Association)>> = BTreeMap::new();
        {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            for (s, a) in items {
                by_shard.entry(t.shard_for(a.target.placement_key())?.shard).or_default().push((s, a));
            }
        }
        // Each part carries the range this map gives its shard (`store::InEdges::routed`).
        let routed: BTreeMap<u32, (u64, u64)> = {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            by_shard.keys().filter_map(|s| Some((*s, t.entry(*s).map(|e| (e.key_start, e.key_end))?))).collect()
        };
        let mut tasks = Vec::with_capacity(by_shard.len());
        for (shard, part) in by_shard {
            let me = self.clone();
            let routed = routed.get(&shard).copied();
            tasks.push(tokio::spawn(async move {
                let addr = {
                    let t = me.table.read().unwrap_or_else(|p| p.into_inner());
                    t.primary_addr(t.entry(shard).ok_or(RouterError::NoAddress { shard, node: 0 })?)?
                };
                let r = match me.client(&addr).await {
                    Ok(c) => c.deliver_in_edges(shard, source_shard, &part, routed).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(_) => Ok(part.into_iter().map(|(s, _)| s).collect::<Vec<u64>>()),
                    Err(source) => {
                        me.forget(&addr);
                        let _ = me.refresh().await;
                        Err(RouterError::Shard { shard, addr, source })
                    }
                }
            }));
        }
        let mut delivered = Vec::new();
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(seqs)) => delivered.extend(seqs),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        match (delivered.is_empty(), first_err) {
            (true, Some(e)) => Err(e),
            _ => Ok(delivered),
        }
    }

    /// One batched expand call per shard the frontier touches, in parallel (architecture.md §6). Each
    /// shard's call tries the primary, then (eventual reads) the other replicas. A shard that
    /// had to cut its answer short fails the expansion rather than return a partial level.
    pub async fn expand(
        self: &Arc<Self>,
        frontier: &[ConceptId],
        filter: &EdgeFilter,
        consistency: Consistency,
    ) -> Result<Expansion, RouterError> {
        self.rerouted(|| self.expand_once(frontier, filter, consistency)).await
    }

    /// Runs `read` again by a re-read map while a shard answers that it split, until the
    /// router's deadline.
    async fn rerouted<T, Fut>(&self, read: impl Fn() -> Fut) -> Result<T, RouterError>
    where
        Fut: std::future::Future<Output = Result<T, RouterError>>,
    {
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            match read().await {
                Err(e) if e.is_wrong_shard() && start.elapsed() < self.deadline => {
                    let _ = self.refresh().await;
                    tokio::time::sleep(crate::client::retry_backoff(attempt, 5, 160)).await;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn expand_once(
        self: &Arc<Self>,
        frontier: &[ConceptId],
        filter: &EdgeFilter,
        consistency: Consistency,
    ) -> Result<Expansion, RouterError> {
        self.ensure_map().await;
        let mut by_shard: BTreeMap<u32, Vec<ConceptId>> = BTreeMap::new();
        {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            for v in frontier {
                by_shard.entry(t.shard_for(v.placement_key())?.shard).or_default().push(*v);
            }
        }
        let level = match consistency {
            Consistency::Strong => pb::Consistency::Strong,
            Consistency::Eventual => pb::Consistency::Eventual,
        };
        // Local fast path: a frontier wholly on one shard lets that shard list further levels
        // while they stay on it; the search then needs no call for those levels.
        let prefetch = if by_shard.len() == 1 && frontier.len() <= limits::EXPAND_FRONTIER_MAX {
            limits::EXPAND_PREFETCH_LEVELS as u32
        } else {
            0
        };
        let mut tasks = Vec::new();
        for (shard, ids) in by_shard {
            for chunk in ids.chunks(limits::EXPAND_FRONTIER_MAX) {
                let (me, chunk, filter) = (self.clone(), chunk.to_vec(), filter.clone());
                tasks.push(tokio::spawn(async move {
                    let addrs = me.read_addrs(shard, consistency);
                    let mut last = RouterError::NoAddress { shard, node: 0 };
                    let mut rpcs = 0usize;
                    for addr in addrs {
                        rpcs += 1;
                        let r = match me.client(&addr).await {
                            Ok(c) => {
                                c.with_consistency(level).expand_prefetching(shard, &chunk, &filter, 0, prefetch).await
                            }
                            Err(e) => Err(e),
                        };
                        match r {
                            Ok(r) if r.truncated => return Err(RouterError::Truncated { shard }),
                            Ok(r) => return Ok((shard, rpcs, r)),
                            Err(source) => {
                                me.forget(&addr);
                                last = RouterError::Shard { shard, addr, source };
                            }
                        }
                    }
                    Err(last)
                }));
            }
        }
        let mut x = Expansion::default();
        for t in tasks {
            let (shard, rpcs, r) = t.await.map_err(|e| RouterError::Task(e.to_string()))??;
            x.rpcs += rpcs;
            x.shards.insert(shard);
            for list in r.lists {
                let v = id_from_pb(&list.id.unwrap_or_default());
                let prefetched = list.prefetched;
                let steps = list
                    .edges
                    .into_iter()
                    .filter_map(|e| {
                        Some(Step {
                            to: id_from_pb(&e.other?),
                            kind: kind_from_pb(e.kind)?,
                            relation: e.relation,
                            confidence: e.confidence,
                            outgoing: e.outgoing,
                        })
                    })
                    .collect();
                if prefetched {
                    x.prefetched.push((v, steps));
                } else {
                    x.edges.push((v, steps));
                }
            }
        }
        Ok(x)
    }

    /// Looks concepts up (eventual consistency: any replica, committed data only).
    pub async fn get_concepts(self: &Arc<Self>, ids: &[ConceptId]) -> Result<Vec<pb::Concept>, RouterError> {
        self.get_concepts_at(ids, Consistency::Eventual).await
    }

    /// Looks concepts up, one batched call per shard. Strong reads go to the primary and are
    /// retried (map re-read) while it is not serving them, until the router's deadline.
    pub async fn get_concepts_at(
        self: &Arc<Self>,
        ids: &[ConceptId],
        consistency: Consistency,
    ) -> Result<Vec<pb::Concept>, RouterError> {
        self.get_concepts_with(ids, consistency, false).await
    }

    /// As [`Router::get_concepts_at`]; `skip_vectors` leaves the vectors out of the answer.
    pub async fn get_concepts_with(
        self: &Arc<Self>,
        ids: &[ConceptId],
        consistency: Consistency,
        skip_vectors: bool,
    ) -> Result<Vec<pb::Concept>, RouterError> {
        self.rerouted(|| self.get_concepts_once(ids, consistency, skip_vectors)).await
    }

    async fn get_concepts_once(
        self: &Arc<Self>,
        ids: &[ConceptId],
        consistency: Consistency,
        skip_vectors: bool,
    ) -> Result<Vec<pb::Concept>, RouterError> {
        self.ensure_map().await;
        let mut by_shard: BTreeMap<u32, Vec<ConceptId>> = BTreeMap::new();
        {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                by_shard.entry(t.shard_for(id.placement_key())?.shard).or_default().push(*id);
            }
        }
        let mut found = Vec::new();
        for (shard, ids) in by_shard {
            let r = self
                .read_shard(shard, consistency, |c| {
                    let ids = ids.clone();
                    async move { c.get_concepts_with(shard, &ids, skip_vectors).await }
                })
                .await?;
            found.extend(r.found);
        }
        found.sort_by_key(|c| c.id.as_ref().map(|i| id_from_pb(i).0));
        Ok(found)
    }

    /// The edges of one vertex that pass `filter` (at most `limit`, 0 = the server default),
    /// or None when no shard knows the vertex.
    pub async fn neighbors(
        self: &Arc<Self>,
        id: ConceptId,
        filter: &EdgeFilter,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Option<pb::NeighborList>, RouterError> {
        self.rerouted(|| self.neighbors_once(id, filter, limit, consistency)).await
    }

    /// `shard`'s info as the primary this router knows answers it (None: unreachable), and
    /// that primary's address.
    async fn primary_info(&self, shard: u32) -> (Option<String>, Option<pb::ShardInfo>) {
        let addr = self.read_addrs(shard, Consistency::Strong).into_iter().next();
        let info = match &addr {
            Some(addr) => match self.client(addr).await {
                Ok(c) => c.shard_info(shard).await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        (addr, info)
    }

    /// Waits until every in-edge logged on any shard before this call reached its target:
    /// each primary's commit LSN now, then [`Router::wait_delivered`] past it. A shard whose
    /// outbox is empty owes nothing. False when that takes longer than `within`.
    pub async fn wait_all_delivered(self: &Arc<Self>, within: Duration) -> Result<bool, RouterError> {
        self.ensure_map().await;
        let start = tokio::time::Instant::now();
        let mut todo: Vec<(u32, (u64, u64))> = {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            t.map.shards.iter().map(|e| (e.shard, (e.key_start, e.key_end))).collect()
        };
        let mut owed = Vec::new();
        let mut attempt = 0u32;
        while !todo.is_empty() {
            let mut again = Vec::new();
            for (shard, range) in todo {
                let (addr, info) = self.primary_info(shard).await;
                match info.filter(|i| i.serving && i.primary_epoch > 0) {
                    Some(i) if i.outbox_oldest_lsn == 0 => {}
                    Some(i) => {
                        owed.push(ShardWrite { shard, lsn: i.commit_lsn, owes_in_edges: true, range, forgotten: 0 })
                    }
                    // Merged away since: it delivered everything before it left.
                    None if !self.has_shard(shard) => {}
                    None => {
                        if let Some(a) = addr {
                            self.forget(&a);
                        }
                        again.push((shard, range));
                    }
                }
            }
            todo = again;
            if todo.is_empty() {
                break;
            }
            if start.elapsed() >= within {
                return Ok(false);
            }
            let _ = self.refresh().await;
            tokio::time::sleep(crate::client::retry_backoff(attempt, 2, 50)).await;
            attempt += 1;
        }
        self.wait_delivered(&owed, within.saturating_sub(start.elapsed())).await
    }

    /// Forgets concept `id` and every association it is an end of (architecture.md §12):
    /// first the associations that point at it, on their sources' shards (their retractions
    /// reach `id`'s shard through the outbox, in order with their upserts), then the concept
    /// on its own shard, which drops what is left of its edges and retracts its out-edges at
    /// their targets. Each step may be repeated, so a failed call can simply be retried.
    pub async fn forget_concept(self: &Arc<Self>, id: ConceptId) -> Result<Vec<ShardWrite>, RouterError> {
        // Every association written before this call is stored at its target first, so the
        // in-edges read next name all of them (one still in an outbox would otherwise outlive
        // the concept at its source).
        if !self.wait_all_delivered(Duration::from_millis(limits::LEARN_DELIVERY_WAIT_MS)).await? {
            return Err(RouterError::InFlight);
        }
        let filter = EdgeFilter { direction: Direction::In, ..Default::default() };
        let limit = limits::FORGET_EDGES_MAX as u32 + 1;
        let list = self.neighbors(id, &filter, limit, Consistency::Strong).await?;
        let incoming: Vec<Forget> = list
            .iter()
            .flat_map(|l| &l.edges)
            .filter_map(|e| {
                let source = id_from_pb(e.other.as_ref()?);
                let kind = kind_from_pb(e.kind);
                (source != id).then(|| Forget::Association { source, target: id, relation: e.relation.clone(), kind })
            })
            .collect();
        let mut writes = Vec::new();
        for chunk in incoming.chunks(limits::BATCH_ITEMS_MAX) {
            writes.extend(self.write_idempotent(&WriteBatch { forget: chunk.to_vec(), ..Default::default() }).await?);
        }
        let own = WriteBatch { forget: vec![Forget::Concept(id)], ..Default::default() };
        writes.extend(self.write_idempotent(&own).await?);
        Ok(writes)
    }

    async fn neighbors_once(
        self: &Arc<Self>,
        id: ConceptId,
        filter: &EdgeFilter,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Option<pb::NeighborList>, RouterError> {
        self.ensure_map().await;
        let shard = self.table.read().unwrap_or_else(|p| p.into_inner()).shard_for(id.placement_key())?.shard;
        let r = self
            .read_shard(shard, consistency, |c| {
                let filter = filter.clone();
                async move { c.neighbors(shard, &[id], &filter, limit, true).await }
            })
            .await?;
        Ok(r.lists.into_iter().next().filter(|l| !l.missing))
    }

    /// Vector search: every shard's top `k` by cosine, in parallel, merged (best first, ties
    /// by id); `exact` compares every vector instead of asking the shards' indexes.
    pub async fn search(
        self: &Arc<Self>,
        vector: &[f32],
        k: usize,
        consistency: Consistency,
        exact: bool,
    ) -> Result<SearchOutcome, RouterError> {
        self.rerouted(|| self.search_once(vector, k, consistency, exact)).await
    }

    async fn search_once(
        self: &Arc<Self>,
        vector: &[f32],
        k: usize,
        consistency: Consistency,
        exact: bool,
    ) -> Result<SearchOutcome, RouterError> {
        self.ensure_map().await;
        let shards: Vec<(u32, u64, u64)> = {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            if t.map.version == 0 {
                return Err(RouterError::NotInitialised);
            }
            t.map.shards.iter().map(|s| (s.shard, s.key_start, s.key_end)).collect()
        };
        let vector = Arc::new(vector.to_vec());
        let mut tasks = Vec::with_capacity(shards.len());
        for (shard, start, end) in shards.iter().copied() {
            let (me, vector) = (self.clone(), vector.clone());
            tasks.push(tokio::spawn(async move {
                let r = me
                    .read_shard(shard, consistency, |c| {
                        let vector = vector.clone();
                        async move { c.search(shard, &vector, k as u32, exact).await }
                    })
                    .await?;
                // A replica that split since this map was read owns less than the map says:
                // the map is stale (the other half would be missed).
                if r.key_start > start || r.key_end < end {
                    let status = tonic::Status::failed_precondition(format!("shard {shard}: wrong shard: it split"));
                    let source = ClientError::Rpc { op: "search", status };
                    return Err(RouterError::Shard { shard, addr: String::new(), source });
                }
                // One that has not applied a split yet owns more: keep only this shard's keys.
                let key = |h: &pb::SearchHit| {
                    h.concept.as_ref().and_then(|c| c.id.as_ref()).map(|i| id_from_pb(i).placement_key())
                };
                let index = crate::store::IndexStats {
                    indexed: r.index_vectors,
                    pending: r.index_pending,
                    bytes: r.index_bytes,
                };
                let hits = r
                    .hits
                    .into_iter()
                    .filter(|h| key(h).is_some_and(|k| (start..=end).contains(&k)))
                    .collect::<Vec<_>>();
                Ok((hits, index))
            }));
        }
        let mut out = SearchOutcome { shards: shards.len(), ..SearchOutcome::default() };
        for t in tasks {
            let (hits, index) = t.await.map_err(|e| RouterError::Task(e.to_string()))??;
            out.hits.extend(hits);
            out.index.indexed += index.indexed;
            out.index.pending += index.pending;
            out.index.bytes += index.bytes;
        }
        let key = |h: &pb::SearchHit| h.concept.as_ref().and_then(|c| c.id.as_ref()).map(|i| id_from_pb(i).0);
        out.hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| key(a).cmp(&key(b))));
        out.hits.truncate(k);
        Ok(out)
    }

    /// One read on `shard`: the primary, then (eventual) the other replicas; the whole round
    /// is retried against a re-read map until the router's deadline.
    async fn read_shard<T, Fut>(
        &self,
        shard: u32,
        consistency: Consistency,
        call: impl Fn(StorageClient) -> Fut,
    ) -> Result<T, RouterError>
    where
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let level = match consistency {
            Consistency::Strong => pb::Consistency::Strong,
            Consistency::Eventual => pb::Consistency::Eventual,
        };
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let addrs = self.read_addrs(shard, consistency);
            let mut last = None;
            for addr in addrs {
                let r = match self.client(&addr).await {
                    Ok(c) => call(c.with_consistency(level)).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(v) => return Ok(v),
                    Err(source) => {
                        // A bad request is the caller's: another replica would say the same.
                        // So is a shard that split: the caller routes again by the new map.
                        if source.code() == Some(tonic::Code::InvalidArgument) || wrong_shard(&source) {
                            return Err(RouterError::Shard { shard, addr, source });
                        }
                        self.forget(&addr);
                        last = Some(RouterError::Shard { shard, addr, source });
                    }
                }
            }
            let _ = self.refresh().await;
            if !self.has_shard(shard) {
                return Err(RouterError::Gone { shard });
            }
            if start.elapsed() >= self.deadline {
                return Err(last.unwrap_or(RouterError::NoAddress { shard, node: 0 }));
            }
            tokio::time::sleep(crate::client::retry_backoff(attempt, 20, 160)).await;
            attempt += 1;
        }
    }
}

/// The router as a path-search expander over the whole grid.
pub struct GridExpander {
    pub router: Arc<Router>,
    pub consistency: Consistency,
}

impl Expander for GridExpander {
    async fn expand(&self, frontier: &[ConceptId], filter: &EdgeFilter) -> Result<Expansion, String> {
        self.router.expand(frontier, filter, self.consistency).await.map_err(|e| e.to_string())
    }
}
