//! The router: a cached copy of the master's shard map, used to send each key to its shard's
//! primary. A write batch is split per shard (concepts by their placement key; an association
//! to its source's shard and, when the target lives elsewhere, to the target's shard for the
//! in-edge), and the per-shard batches go out in parallel. Each per-shard batch is atomic; a
//! batch spanning shards is not (the in-edge outbox of DESIGN.md §5.7 is the replication
//! issue's). On a routing failure the map is re-read once, so the next call finds a moved
//! primary.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use sutra_proto as pb;

use crate::client::{ClientError, MasterClient, StorageClient};
use crate::ids::ConceptId;
use crate::model::WriteBatch;
use crate::node::convert::id_from_pb;

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
}

/// One per-shard part of a routed write, as acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardWrite {
    pub shard: u32,
    pub lsn: u64,
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
}

pub struct Router {
    master: MasterClient,
    table: RwLock<Table>,
    clients: Mutex<HashMap<String, StorageClient>>,
    deadline: std::time::Duration,
}

impl Router {
    /// A router over `master`'s current map.
    pub async fn new(master: MasterClient, deadline: std::time::Duration) -> Result<Arc<Router>, RouterError> {
        let r = Arc::new(Router {
            master,
            table: RwLock::new(Table::default()),
            clients: Mutex::new(HashMap::new()),
            deadline,
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

    pub fn map_version(&self) -> u64 {
        self.table.read().unwrap_or_else(|p| p.into_inner()).map.version
    }

    async fn client(&self, addr: &str) -> Result<StorageClient, ClientError> {
        if let Some(c) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let c = StorageClient::connect(addr).await?.with_deadline(self.deadline);
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
        for a in &batch.associations {
            let (src, dst) = (a.source.placement_key(), a.target.placement_key());
            part(&t, &mut parts, src)?.associations.push(a.clone());
            if t.shard_for(src)?.shard != t.shard_for(dst)?.shard {
                part(&t, &mut parts, dst)?.associations.push(a.clone());
            }
        }
        Ok(parts.into_iter().map(|(shard, (addr, b))| (shard, addr, b)).collect())
    }

    /// Writes `batch` through the primaries, per-shard parts in parallel. Not retried: a
    /// failed part may or may not have committed, and the caller knows whether repeating it
    /// is safe (upserts by label are).
    pub async fn write(self: &Arc<Self>, batch: &WriteBatch) -> Result<Vec<ShardWrite>, RouterError> {
        let parts = self.split(batch)?;
        let mut tasks = Vec::with_capacity(parts.len());
        for (shard, addr, part) in parts {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                let r = match me.client(&addr).await {
                    Ok(c) => c.write_batch(shard, &part).await,
                    Err(e) => Err(e),
                };
                (shard, addr, r)
            }));
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for t in tasks {
            let Ok((shard, addr, r)) = t.await else { continue };
            match r {
                Ok(resp) => out.push(ShardWrite { shard, lsn: resp.lsn }),
                Err(source) => {
                    self.forget(&addr);
                    first_err.get_or_insert(RouterError::Shard { shard, addr, source });
                }
            }
        }
        if let Some(e) = first_err {
            let _ = self.refresh().await;
            return Err(e);
        }
        Ok(out)
    }

    /// Looks concepts up on their primaries, one batched call per shard.
    pub async fn get_concepts(self: &Arc<Self>, ids: &[ConceptId]) -> Result<Vec<pb::Concept>, RouterError> {
        let mut by_shard: BTreeMap<u32, (String, Vec<ConceptId>)> = BTreeMap::new();
        {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                let s = t.shard_for(id.placement_key())?;
                let addr = t.primary_addr(s)?;
                by_shard.entry(s.shard).or_insert_with(|| (addr, Vec::new())).1.push(*id);
            }
        }
        let mut found = Vec::new();
        for (shard, (addr, ids)) in by_shard {
            let r = match self.client(&addr).await {
                Ok(c) => c.get_concepts(shard, &ids).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(r) => found.extend(r.found),
                Err(source) => {
                    self.forget(&addr);
                    let _ = self.refresh().await;
                    return Err(RouterError::Shard { shard, addr, source });
                }
            }
        }
        found.sort_by_key(|c| c.id.as_ref().map(|i| id_from_pb(i).0));
        Ok(found)
    }
}
