//! The storage node: hosts many shard replicas under one data directory and serves the Storage
//! gRPC service. A shard that cannot be opened (corruption, failed fsync) is kept in the map as
//! not serving, with its reason, so the node stays up and says what is wrong.

pub mod cluster;
mod log;
mod merge;
mod outbox;
mod service;
mod shard;
mod ship;
mod split;

pub use log::Promotion;
#[cfg(not(madsim))]
pub use service::serve_listener;
pub use service::{serve, StorageService};
pub use shard::{MergeStage, ReplicationInfo, Shard, ShardError, Written};

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock};

use crate::codec::{Reader, Writer};
use crate::ids::ShardId;
use crate::io::{write_atomic, Disk};
use crate::limits;
use crate::store::KeyRange;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Width of concept vectors on this grid.
    pub vector_dim: usize,
    /// Overlay entries that trigger an automatic checkpoint (the simulator lowers it so
    /// checkpoints race with crashes).
    pub checkpoint_overlay_items: u64,
    pub checkpoint_check_interval_ms: u64,
    /// WAL segment size; the simulator makes it tiny so segments roll and trim constantly.
    pub wal_segment_bytes_max: u64,
    /// Committed log entries a primary keeps in memory for lagging replicas; older ones are
    /// read from the WAL, or sent as a snapshot once trimmed (the simulator makes it tiny).
    pub repl_retain_bytes: usize,
    /// No master: every shard is led by this node alone (replication 1), in a new epoch
    /// per open. In a grid the master fences and promotes instead.
    pub standalone: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            vector_dim: limits::VECTOR_DIM_DEFAULT,
            checkpoint_overlay_items: limits::CHECKPOINT_OVERLAY_ITEMS_TRIGGER,
            checkpoint_check_interval_ms: limits::CHECKPOINT_CHECK_INTERVAL_MS,
            wal_segment_bytes_max: limits::WAL_SEGMENT_BYTES_MAX,
            repl_retain_bytes: limits::REPL_RETAIN_BYTES_MAX,
            standalone: true,
        }
    }
}

impl NodeConfig {
    pub fn with_vector_dim(vector_dim: usize) -> NodeConfig {
        NodeConfig { vector_dim, ..NodeConfig::default() }
    }
}

/// Checkpoints `shard` whenever its overlay passes the trigger; ends when the shard is dropped
/// or stops serving.
async fn auto_checkpoint(shard: std::sync::Weak<Shard>, config: NodeConfig) {
    let interval = std::time::Duration::from_millis(config.checkpoint_check_interval_ms.max(1));
    loop {
        tokio::time::sleep(interval).await;
        let Some(s) = shard.upgrade() else { return };
        if s.fault().is_some() {
            return;
        }
        let items = s.read().map(|st| st.overlay_items()).unwrap_or(0);
        // Buggify: checkpoint early, racing with catch-up, trims and crashes.
        if items >= config.checkpoint_overlay_items || (items > 0 && crate::buggify!(0.2)) {
            match s.checkpoint().await {
                Ok(lsn) => tracing::info!(shard = s.id.0, lsn, items, "automatic checkpoint"),
                Err(e) => tracing::warn!(shard = s.id.0, error = %e, "automatic checkpoint failed"),
            }
        }
    }
}

/// Builds `shard`'s vector index in the background (architecture.md §11) while the replica
/// leads or answers searches: a batch at a time, holding the store's lock only to read the
/// vectors; the inserts run as background work (`io::background`: a low-priority thread in
/// real mode), taking the index's lock for one insert at a time. Ends when the shard is
/// dropped or stops serving.
async fn index_vectors(shard: std::sync::Weak<Shard>) {
    let mut pause = limits::VECTOR_INDEX_IDLE_MS;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        let Some(s) = shard.upgrade() else { return };
        if s.fault().is_some() {
            return;
        }
        pause = limits::VECTOR_INDEX_IDLE_MS;
        let wanted = s.wants_vector_index();
        // A block, so no lock guard lives across the await below.
        let (index, todo) = {
            let Ok(st) = s.read() else { continue };
            let index = st.vector_index();
            if !wanted {
                drop(st);
                // Still take the changes in, so what a follower owes its index stays bounded
                // by its concepts, not by its writes.
                drop(index.lock());
                continue;
            }
            let todo = st.vectors_to_index(limits::VECTOR_INDEX_BATCH);
            (index, todo)
        };
        drop(s);
        if todo.is_empty() {
            continue;
        }
        pause = limits::VECTOR_INDEX_BUSY_MS;
        crate::io::background::run(move || {
            for (id, v) in todo {
                let mut g = index.lock();
                if !g.pending().contains(&id) {
                    g.insert(id, &v);
                }
            }
        })
        .await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("shard {0} is not hosted on this node")]
    ShardNotFound(u32),
    #[error("shard {0} already exists on this node")]
    ShardExists(u32),
    #[error("this node already hosts {0} shards, the most it may")]
    TooManyShards(usize),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// A hosted shard: serving, or failed with the reason it refuses to serve.
#[derive(Clone)]
pub enum ShardSlot {
    Serving(Arc<Shard>),
    Failed { range: KeyRange, reason: String },
}

pub struct StorageNode {
    disk: Arc<dyn Disk>,
    pub config: NodeConfig,
    shards: RwLock<BTreeMap<u32, ShardSlot>>,
    /// Serialises shard creation so two racing creates cannot both write a shard directory.
    create_lock: tokio::sync::Mutex<()>,
    /// Removed replicas whose tasks may still run: their directory is not reused until they
    /// are gone (a late WAL write must not land in a new replica's files).
    retiring: std::sync::Mutex<BTreeMap<u32, std::sync::Weak<log::Shared>>>,
    /// Wakes the outbox task when a write owes in-edges, so a writer waiting for their
    /// delivery does not wait out the idle poll.
    pub(crate) outbox_wake: tokio::sync::Notify,
}

fn shard_dir(id: u32) -> String {
    format!("shards/{id:06}")
}

/// Marks a shard directory whose replica was removed from its replica set: ignored at open,
/// wiped before the directory is used again. Written first, so a crash midway through the
/// deletion leaves nothing that could be mistaken for a replica.
const RETIRED: &str = "retired";

/// Deletes every file of a retired replica except its marker.
fn purge(disk: &dyn Disk, dir: &str) -> io::Result<()> {
    let wal_dir = format!("{dir}/wal");
    for name in disk.list(&wal_dir)? {
        disk.remove(&format!("{wal_dir}/{name}"))?;
    }
    for name in disk.list(dir)? {
        if name != RETIRED && name != "wal" {
            disk.remove(&format!("{dir}/{name}"))?;
        }
    }
    disk.sync_dir(dir)
}

fn encode_meta(range: KeyRange) -> Vec<u8> {
    let mut w = Writer::default();
    w.buf.extend_from_slice(b"SUTRASHD");
    w.u64(range.start);
    w.u64(range.end);
    let crc = crc32c::crc32c(&w.buf);
    w.u32(crc);
    w.buf
}

fn decode_meta(b: &[u8]) -> Option<KeyRange> {
    if b.len() != 28 || &b[..8] != b"SUTRASHD" || crc32c::crc32c(&b[..24]).to_le_bytes() != b[24..28] {
        return None;
    }
    let mut r = Reader::new(&b[8..24]);
    Some(KeyRange { start: r.u64("start").ok()?, end: r.u64("end").ok()? })
}

/// Opens (recovers) one shard replica and starts its automatic checkpoints.
async fn start_shard(
    disk: &Arc<dyn Disk>,
    id: u32,
    range: KeyRange,
    config: &NodeConfig,
) -> Result<Arc<Shard>, ShardError> {
    let shard = Arc::new(Shard::open(disk.clone(), ShardId(id), range, &shard_dir(id), config).await?);
    tokio::spawn(auto_checkpoint(Arc::downgrade(&shard), config.clone()));
    tokio::spawn(index_vectors(Arc::downgrade(&shard)));
    Ok(shard)
}

impl StorageNode {
    /// Opens every shard found on the disk. Never fails because one shard is damaged.
    pub async fn open(disk: Arc<dyn Disk>, config: NodeConfig) -> Result<Arc<StorageNode>, NodeError> {
        disk.create_dir_all("shards")?;
        let mut shards = BTreeMap::new();
        for name in disk.list("shards")? {
            let Ok(id) = name.parse::<u32>() else {
                continue;
            };
            let dir = shard_dir(id);
            if disk.exists(&format!("{dir}/{RETIRED}")) {
                // Removed from its replica set; finish deleting what a crash left behind.
                if let Err(e) = purge(&*disk, &dir) {
                    tracing::warn!(shard = id, error = %e, "cannot finish deleting a retired replica");
                }
                continue;
            }
            let read_meta = || disk.read(&format!("{dir}/shard.meta")).ok().as_deref().and_then(decode_meta);
            // Read twice before giving up: a read error in transit is not a damaged file.
            let Some(range) = read_meta().or_else(read_meta) else {
                if disk.list(&dir)?.iter().any(|n| n == "wal" || n == "storage.dat") {
                    // Data without a readable key range: never guess the range, refuse to serve.
                    tracing::error!(shard = id, "shard.meta is missing or corrupt; shard refuses to serve");
                    let reason = "shard.meta is missing or corrupt; re-sync this replica from its peers".to_string();
                    shards.insert(id, ShardSlot::Failed { range: KeyRange { start: 0, end: 0 }, reason });
                } else {
                    // A create that crashed before its metadata became durable: nothing was acked.
                    tracing::warn!(shard = id, "empty shard directory without metadata; ignored");
                }
                continue;
            };
            let slot = match start_shard(&disk, id, range, &config).await {
                Ok(s) => ShardSlot::Serving(s),
                Err(e) => {
                    tracing::error!(shard = id, error = %e, "shard refuses to serve");
                    ShardSlot::Failed { range, reason: e.to_string() }
                }
            };
            shards.insert(id, slot);
        }
        let node = Arc::new(StorageNode {
            disk,
            config,
            shards: RwLock::new(shards),
            create_lock: tokio::sync::Mutex::new(()),
            retiring: std::sync::Mutex::new(BTreeMap::new()),
            outbox_wake: tokio::sync::Notify::new(),
        });
        // Recovery may have re-applied a split and written its new shard's replica.
        node.adopt_split_shards().await;
        Ok(node)
    }

    /// Opens every replica a split wrote on this node that is not open yet (a split entry
    /// applied since the last look). Called after each heartbeat and after a split.
    pub async fn adopt_split_shards(&self) {
        let _guard = self.create_lock.lock().await;
        let Ok(names) = self.disk.list("shards") else { return };
        for id in names.iter().filter_map(|n| n.parse::<u32>().ok()) {
            if self.slots().contains_key(&id) {
                continue;
            }
            let dir = shard_dir(id);
            if self.disk.exists(&format!("{dir}/{RETIRED}")) {
                continue;
            }
            if self.retiring.lock().unwrap_or_else(|p| p.into_inner()).get(&id).is_some_and(|w| w.strong_count() > 0) {
                continue;
            }
            let Some(range) = self.disk.read(&format!("{dir}/shard.meta")).ok().as_deref().and_then(decode_meta) else {
                continue;
            };
            let slot = match start_shard(&self.disk, id, range, &self.config).await {
                Ok(s) => ShardSlot::Serving(s),
                Err(e) => {
                    tracing::error!(shard = id, error = %e, "a replica written by a split refuses to serve");
                    ShardSlot::Failed { range, reason: e.to_string() }
                }
            };
            tracing::info!(shard = id, start = range.start, end = range.end, "opened a replica written by a split");
            self.shards.write().unwrap_or_else(|p| p.into_inner()).insert(id, slot);
        }
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, ShardSlot>> {
        self.shards.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<(u32, ShardSlot)> {
        self.slots().iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    pub fn slot(&self, id: u32) -> Result<ShardSlot, NodeError> {
        self.slots().get(&id).cloned().ok_or(NodeError::ShardNotFound(id))
    }

    pub fn shard(&self, id: u32) -> Result<Arc<Shard>, NodeError> {
        match self.slot(id)? {
            ShardSlot::Serving(s) => Ok(s),
            ShardSlot::Failed { reason, .. } => Err(ShardError::NotServing { shard: id, reason }.into()),
        }
    }

    /// Rebuilds a replica that refuses to serve (detected corruption) from its peers: wipes its
    /// log and checkpoint, keeps its promise (marked re-syncing, so it cannot vote or lead
    /// until a primary has caught it up), and opens it empty. Refused when the promise cannot
    /// be read: forgetting a fence could let a deposed primary commit through this replica.
    pub async fn resync_shard(&self, id: u32, range: KeyRange) -> Result<Arc<Shard>, NodeError> {
        let _guard = self.create_lock.lock().await;
        if !matches!(self.slots().get(&id), Some(ShardSlot::Failed { .. })) {
            return Err(NodeError::ShardExists(id));
        }
        let dir = shard_dir(id);
        let promise_path = format!("{dir}/promise");
        let mut promise = match self.disk.read(&promise_path) {
            Ok(b) => log::Promise::decode(&b)
                .ok_or_else(|| NodeError::Invalid("the promise file is unreadable; not re-syncing".into()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => log::Promise::default(),
            Err(e) => return Err(e.into()),
        };
        promise.resync = true;
        tracing::warn!(shard = id, "wiping a replica that refuses to serve; re-syncing it from its peers");
        let wal_dir = format!("{dir}/wal");
        for name in self.disk.list(&wal_dir)? {
            self.disk.remove(&format!("{wal_dir}/{name}"))?;
        }
        self.disk.sync_dir(&wal_dir).or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
        for name in ["storage.dat", "storage.dat.tmp"] {
            let p = format!("{dir}/{name}");
            if self.disk.exists(&p) {
                self.disk.remove(&p)?;
            }
        }
        write_atomic(&*self.disk, &dir, "promise", &promise.encode())?;
        write_atomic(&*self.disk, &dir, "shard.meta", &encode_meta(range))?;
        let shard = start_shard(&self.disk, id, range, &self.config).await?;
        self.shards.write().unwrap_or_else(|p| p.into_inner()).insert(id, ShardSlot::Serving(shard.clone()));
        Ok(shard)
    }

    /// Deletes a replica the master removed from the shard's replica set (a membership change
    /// replaced this node). Its data lives on in the new replica set.
    pub async fn remove_shard(&self, id: u32) -> Result<(), NodeError> {
        let _guard = self.create_lock.lock().await;
        let Some(slot) = self.shards.write().unwrap_or_else(|p| p.into_inner()).remove(&id) else {
            return Err(NodeError::ShardNotFound(id));
        };
        if let ShardSlot::Serving(s) = slot {
            self.retiring.lock().unwrap_or_else(|p| p.into_inner()).insert(id, s.liveness());
            s.retire();
        }
        let dir = shard_dir(id);
        write_atomic(&*self.disk, &dir, RETIRED, b"removed from its replica set\n")?;
        purge(&*self.disk, &dir)?;
        tracing::info!(shard = id, "deleted a replica removed from the replica set");
        Ok(())
    }

    /// Creates an empty shard replica. Idempotent for the same range. `resync`: the shard has
    /// a history (its data must come from a primary), so the replica may neither vote nor lead
    /// until a primary has caught it up: an empty replica of a shard that holds data must never
    /// count as an up-to-date voter (say, on a node that missed the split that made the shard).
    pub async fn create_shard(&self, id: u32, range: KeyRange, resync: bool) -> Result<Arc<Shard>, NodeError> {
        if range.start > range.end {
            return Err(NodeError::Invalid(format!("key range start {} is after its end {}", range.start, range.end)));
        }
        let _guard = self.create_lock.lock().await;
        if let Some(slot) = self.slots().get(&id) {
            return match slot {
                ShardSlot::Serving(s) if s.range() == range => Ok(s.clone()),
                _ => Err(NodeError::ShardExists(id)),
            };
        }
        if self.slots().len() >= limits::SHARDS_PER_NODE_MAX {
            return Err(NodeError::TooManyShards(limits::SHARDS_PER_NODE_MAX));
        }
        {
            let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
            if retiring.get(&id).is_some_and(|w| w.strong_count() > 0) {
                return Err(NodeError::Invalid(format!(
                    "the removed replica of shard {id} is still shutting down; retry shortly"
                )));
            }
            retiring.remove(&id);
        }
        let dir = shard_dir(id);
        self.disk.create_dir_all(&dir)?;
        let retired = format!("{dir}/{RETIRED}");
        if self.disk.exists(&retired) {
            purge(&*self.disk, &dir)?;
            self.disk.remove(&retired)?;
            self.disk.sync_dir(&dir)?;
        }
        if resync {
            let promise = log::Promise { resync: true, ..log::Promise::default() };
            write_atomic(&*self.disk, &dir, "promise", &promise.encode())?;
        }
        write_atomic(&*self.disk, &dir, "shard.meta", &encode_meta(range))?;
        self.disk.sync_dir("shards")?;
        let shard = start_shard(&self.disk, id, range, &self.config).await?;
        self.shards.write().unwrap_or_else(|p| p.into_inner()).insert(id, ShardSlot::Serving(shard.clone()));
        Ok(shard)
    }
}
