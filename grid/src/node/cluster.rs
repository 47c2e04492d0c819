//! A storage node as a member of a grid: it registers with the master (getting its stable node
//! id and the peer list), runs SWIM gossip with its peers, and heartbeats the master every
//! `HEARTBEAT_INTERVAL_MS` with the peers it cannot reach and its shard stats. Heartbeat
//! replies carry the shard replicas it should host, which it creates. The master being down
//! only pauses this loop; the node keeps serving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sutra_proto as pb;

use super::{serve, NodeConfig, StorageNode};
use crate::client::MasterClient;
use crate::gossip::{self, State, Swim, SwimConfig, View};
use crate::ids::NodeId;
use crate::io::{AbortOnDrop, Disk};
use crate::limits;
use crate::store::KeyRange;

/// Who this storage process is in the grid.
#[derive(Clone, Debug)]
pub struct Membership {
    /// The master's address ("host:port").
    pub master: String,
    /// The supervising agent's name and this process's slot under it: the stable identity
    /// the master maps to a node id.
    pub agent: String,
    pub slot: u32,
    /// Where clients reach the Storage service, and where peers gossip to.
    pub storage_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    /// This spawn's generation (from the agent): orders exit reports against registrations.
    pub generation: u64,
}

/// Boots a grid storage process: opens the node, serves Storage on `membership.storage_addr`,
/// gossips on `membership.gossip_addr`, and keeps registered with the master, until
/// `shutdown` resolves. The binary (`sutra storage --master`) and the simulator both call it.
pub async fn run_storage_process(
    disk: Arc<dyn Disk>,
    config: NodeConfig,
    membership: Membership,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let config = NodeConfig { standalone: false, ..config };
    let node = StorageNode::open(disk, config).await.map_err(|e| format!("storage node failed to open: {e}"))?;
    let socket = tokio::net::UdpSocket::bind(membership.gossip_addr)
        .await
        .map_err(|e| format!("cannot bind gossip {}: {e}", membership.gossip_addr))?;
    let member = tokio::spawn(stay_registered(node.clone(), membership.clone(), socket));
    let _outbox = AbortOnDrop(tokio::spawn(super::outbox::run(node.clone(), membership.master.clone())));
    let r = serve(node, membership.storage_addr, shutdown)
        .await
        .map_err(|e| format!("cannot serve on {}: {e}", membership.storage_addr));
    member.abort();
    r
}

async fn connect(master: &str) -> MasterClient {
    let mut attempt = 0;
    loop {
        match MasterClient::connect(master).await {
            Ok(c) => return c.with_deadline(Duration::from_millis(limits::HEARTBEAT_INTERVAL_MS * 2)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the master; retrying");
                tokio::time::sleep(crate::client::reconnect_backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

async fn register(client: &MasterClient, m: &Membership) -> pb::RegisterNodeResponse {
    let mut attempt = 0;
    loop {
        let (storage, gossip) = (m.storage_addr.to_string(), m.gossip_addr.to_string());
        match client.register_node(&m.agent, m.slot, &storage, &gossip, m.generation).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::warn!(error = %e, "registration failed; retrying");
                tokio::time::sleep(crate::client::reconnect_backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Registers, then gossips and heartbeats forever.
async fn stay_registered(node: Arc<StorageNode>, m: Membership, socket: tokio::net::UdpSocket) {
    let mut client = connect(&m.master).await;
    let reg = register(&client, &m).await;
    let me = reg.node_id;
    tracing::info!(node = me, agent = %m.agent, slot = m.slot, "registered with the master");
    let view = Arc::new(Mutex::new(View::default()));
    let swim = Swim::new(NodeId(me), m.gossip_addr, 0, rand::random(), SwimConfig::default());
    let _gossip = AbortOnDrop(tokio::spawn({
        let view = view.clone();
        async move {
            if let Err(e) = gossip::run(swim, socket, Vec::new(), view).await {
                tracing::error!(error = %e, "gossip stopped");
            }
        }
    }));
    let mut known: BTreeSet<u64> = BTreeSet::new();
    add_peers(&view, &mut known, me, &reg.peers);
    let mut map_version = 0u64;
    let mut assigned: Vec<pb::Assignment> = Vec::new();
    let mut failures = 0u32;
    let interval = Duration::from_millis(limits::HEARTBEAT_INTERVAL_MS);
    let mut next = tokio::time::Instant::now();
    loop {
        next += interval;
        if crate::buggify!(0.05) {
            // A heartbeat lost on the way.
            tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
            continue;
        }
        let mut req = heartbeat_request(&node, &view, me, known.len() as u64, map_version);
        req.generation = m.generation;
        match client.heartbeat(req).await {
            Ok(r) if r.reregister => {
                tracing::warn!(node = me, "the master does not know this node; registering again");
                let reg = register(&client, &m).await;
                add_peers(&view, &mut known, me, &reg.peers);
                map_version = 0;
            }
            Ok(r) => {
                failures = 0;
                add_peers(&view, &mut known, me, &r.peers);
                // Roles from the assignments of an earlier heartbeat: the master's own promotion
                // RPC (which knows the real lease wait) has had an interval to arrive.
                node.adopt_split_shards().await;
                host(&node, me, &assigned, true).await;
                if r.map_version != map_version && host(&node, me, &r.assignments, false).await {
                    map_version = r.map_version;
                    assigned = r.assignments;
                }
                retire(&node, &r.retired).await;
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(error = %e, "heartbeat failed");
                // A master that restarted (or moved) needs a new channel.
                if failures >= 3 {
                    client = connect(&m.master).await;
                    failures = 0;
                }
            }
        }
        tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
    }
}

fn add_peers(view: &Mutex<View>, known: &mut BTreeSet<u64>, me: u64, peers: &[pb::Peer]) {
    let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
    for p in peers.iter().take(limits::GOSSIP_MEMBERS_MAX) {
        if known.insert(p.node_id) && p.node_id != me {
            if let Ok(addr) = p.gossip_addr.parse() {
                v.to_add.push((NodeId(p.node_id), addr));
            }
        }
    }
}

fn heartbeat_request(
    node: &StorageNode,
    view: &Mutex<View>,
    me: u64,
    peers_known: u64,
    map_version: u64,
) -> pb::HeartbeatRequest {
    // Dead only, not Suspect: a suspicion is often refuted within milliseconds (a process that
    // resumes from a pause suspects whoever it was probing), but a report stands until the
    // next heartbeat, long enough to flag a healthy node Degraded.
    let unreachable = {
        let v = view.lock().unwrap_or_else(|p| p.into_inner());
        v.members.iter().filter(|(_, (s, _))| *s == State::Dead).map(|(id, _)| id.0).collect()
    };
    let shards = node
        .list()
        .iter()
        .map(|(id, slot)| {
            let i = super::service::shard_info(*id, slot);
            let (leading, resyncing) = match slot {
                super::ShardSlot::Serving(s) => {
                    let r = s.replication();
                    (r.leading, r.resyncing)
                }
                _ => (false, false),
            };
            pb::ShardStat {
                leading,
                shard: i.shard,
                last_lsn: i.last_lsn,
                concepts: i.concepts,
                out_edges: i.out_edges,
                serving: i.serving,
                primary_epoch: i.primary_epoch,
                commit_lsn: i.commit_lsn,
                outbox_items: i.outbox_items,
                bytes: i.bytes,
                requests: i.requests,
                resyncing,
            }
        })
        .collect();
    pb::HeartbeatRequest { node_id: me, unreachable, shards, peers_known, map_version, generation: 0 }
}

/// Deletes replicas a membership change removed from their replica sets. One that promised
/// an epoch beyond the map's is kept: the master's map cannot be newer than what fenced it
/// (an operator may have wiped and re-initialised the master).
async fn retire(node: &StorageNode, retired: &[pb::RetiredReplica]) {
    for r in retired.iter().take(limits::SHARDS_PER_NODE_MAX) {
        let promised = match node.slot(r.shard) {
            Ok(super::ShardSlot::Serving(s)) => s.replication().promised,
            Ok(super::ShardSlot::Failed { .. }) => 0,
            Err(_) => continue,
        };
        if promised > r.epoch {
            tracing::warn!(shard = r.shard, promised, epoch = r.epoch, "not deleting a replica newer than the map");
            continue;
        }
        if crate::buggify!(0.3) {
            continue;
        }
        if let Err(e) = node.remove_shard(r.shard).await {
            tracing::warn!(shard = r.shard, error = %e, "cannot delete a removed replica");
        }
    }
}

/// Creates every assigned replica this node lacks, and takes up the primary role where the
/// map names this node and it does not lead that epoch yet (the backup path for a promotion
/// whose RPC was lost; it waits out a full lease, not knowing how long ago the fence was).
/// With `take_up_roles`, an assigned replica that refuses to serve is re-synced from its peers.
/// True when all are in place.
async fn host(node: &StorageNode, me: u64, assignments: &[pb::Assignment], take_up_roles: bool) -> bool {
    let mut ok = true;
    for a in assignments {
        let shard = match node.slot(a.shard) {
            Ok(super::ShardSlot::Serving(s)) => s,
            Ok(super::ShardSlot::Failed { reason, .. }) => {
                // Detected corruption: rebuild this replica from its peers.
                if !take_up_roles {
                    continue;
                }
                let range = KeyRange { start: a.key_start, end: a.key_end };
                match node.resync_shard(a.shard, range).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(shard = a.shard, error = %e, was = %reason, "cannot re-sync a failed replica");
                        continue;
                    }
                }
            }
            Err(_) if take_up_roles => continue,
            Err(_) => {
                let range = KeyRange { start: a.key_start, end: a.key_end };
                // A shard split off one hosted here: applying the split entry writes its
                // replica with the data. An empty one made now could lead it with nothing.
                let parent = node.list().into_iter().find_map(|(id, slot)| match slot {
                    super::ShardSlot::Serving(s) if s.range().start <= range.end && range.start <= s.range().end => {
                        Some(id)
                    }
                    _ => None,
                });
                if let Some(parent) = parent {
                    tracing::debug!(shard = a.shard, parent, "waiting for the split entry to apply");
                    ok = false;
                    continue;
                }
                // A shard past its first epoch has a history: this empty replica catches up before it votes.
                match node.create_shard(a.shard, range, a.epoch > 1).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(shard = a.shard, error = %e, "cannot create an assigned shard replica");
                        ok = false;
                        continue;
                    }
                }
            }
        };
        let r = shard.replication();
        if take_up_roles && a.primary && r.primary_epoch == a.epoch && a.learners.len() == a.learner_addrs.len() {
            let learners: Vec<(NodeId, String)> =
                a.learners.iter().map(|n| NodeId(*n)).zip(a.learner_addrs.iter().cloned()).collect();
            shard.set_learners(a.epoch, &learners);
        }
        if take_up_roles
            && a.primary
            && r.primary_epoch != a.epoch
            && r.promised <= a.epoch
            && a.replicas.len() == a.replica_addrs.len()
        {
            let pr = super::Promotion {
                epoch: a.epoch,
                me: NodeId(me),
                voters: a.replicas.iter().map(|n| NodeId(*n)).zip(a.replica_addrs.iter().cloned()).collect(),
                lease_wait: Duration::from_millis(limits::LEASE_MS + limits::LEASE_MARGIN_MS),
            };
            if let Err(e) = shard.promote(pr).await {
                tracing::debug!(shard = a.shard, epoch = a.epoch, error = %e, "not taking up the primary role");
            }
        }
    }
    ok
}
