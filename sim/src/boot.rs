//! Boots roles on simulated nodes through the same library functions the binary calls.

use std::net::SocketAddr;
use std::sync::Arc;

use sutra_grid::gossip::{Swim, SwimConfig, View};
use sutra_grid::ids::NodeId;
use sutra_grid::io::{Disk, SimDisk};
use sutra_grid::node::{serve, NodeConfig, StorageNode};
use sutra_grid::store::KeyRange;

/// Vector width used in simulation: small, since workloads write few vectors.
pub const SIM_VECTOR_DIM: usize = 8;

/// What `sutra storage --standalone` does: open every shard on the disk, create shard 0 over
/// the whole key space if there are none, serve until killed.
pub async fn storage_standalone(disk: SimDisk, addr: SocketAddr, config: NodeConfig) {
    let disk: Arc<dyn Disk> = Arc::new(disk);
    let node = match StorageNode::open(disk, config).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "storage node failed to open");
            return;
        }
    };
    if node.list().is_empty() {
        if let Err(e) = node.create_shard(0, KeyRange::ALL, false).await {
            tracing::error!(error = %e, "creating shard 0 failed");
            return;
        }
    }
    if let Err(e) = serve(node, addr, std::future::pending()).await {
        tracing::error!(error = %e, "storage node stopped serving");
    }
}

/// A node that only gossips (scale scenarios): binds UDP at `addr` and runs SWIM with `peers`
/// as the initial member list, publishing its view into `view`.
pub async fn gossip_only(
    me: usize,
    addr: SocketAddr,
    peers: Arc<Vec<(NodeId, SocketAddr)>>,
    view: Arc<std::sync::Mutex<View>>,
) {
    let socket = match tokio::net::UdpSocket::bind(addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "gossip bind failed");
            return;
        }
    };
    let swim = Swim::new(NodeId(me as u64), addr, 0, madsim::rand::random(), SwimConfig::default());
    if let Err(e) = sutra_grid::gossip::run(swim, socket, peers.to_vec(), view).await {
        tracing::error!(error = %e, "gossip stopped");
    }
}
