//! Gossip: SWIM failure detection among storage nodes. [`swim`] is the pure protocol;
//! [`run`] drives it over UDP (`tokio::net::UdpSocket`, which madsim simulates) and publishes
//! the membership view for the node's heartbeats to report.

pub mod swim;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use swim::{Member, State, Swim, SwimConfig, SwimStats};

use crate::ids::NodeId;
use crate::io::AbortOnDrop;
use crate::limits;

/// What the driver publishes (at most once a protocol period, when something changed): each
/// member's state and the protocol counters.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub members: BTreeMap<NodeId, (State, u64)>,
    pub stats: SwimStats,
    /// Datagrams that failed to decode.
    pub malformed: u64,
    /// Failed receives on the socket.
    pub recv_errors: u64,
    /// Input, not output: members learnt out of band (the master's list) for the driver to
    /// add; drained on its next wakeup.
    pub to_add: Vec<(NodeId, SocketAddr)>,
}

/// madsim's `UdpSocket::send_to` takes `(target, buf)`, tokio's `(buf, target)`.
async fn send_datagram(socket: &tokio::net::UdpSocket, buf: &[u8], to: SocketAddr) -> std::io::Result<()> {
    #[cfg(not(madsim))]
    return socket.send_to(buf, to).await.map(|_| ());
    #[cfg(madsim)]
    return socket.send_to(to, buf).await;
}

fn now_ms(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Runs SWIM on `socket` until the task is dropped. `peers` seeds the member list (the master
/// hands it out); members also learn of each other through gossip.
pub async fn run(
    mut swim: Swim,
    socket: tokio::net::UdpSocket,
    peers: Vec<(NodeId, SocketAddr)>,
    view: Arc<Mutex<View>>,
) -> std::io::Result<()> {
    let start = tokio::time::Instant::now();
    for (id, addr) in peers {
        swim.add_member(id, addr, 0);
    }
    let socket = Arc::new(socket);
    // Receiving runs on its own task and is never cancelled: madsim's `recv_from` is not
    // cancel-safe (a datagram already taken from the mailbox is lost if the future is dropped),
    // and dropping it whenever the probe timer won a `select!` lost real pings.
    let (tx, mut datagrams) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(limits::GOSSIP_QUEUE_MAX);
    let _receiver = AbortOnDrop(tokio::spawn(receive(socket.clone(), tx)));
    let mut malformed = 0u64;
    let mut recv_errors = 0u64;
    let mut published = u64::MAX;
    let mut next_publish_ms = 0;
    let period_ms = swim.period_ms();
    loop {
        let wake = start + Duration::from_millis(swim.next_wakeup_ms());
        let out = tokio::select! {
            biased;
            d = datagrams.recv() => match d {
                Some(Some(bytes)) => match wire::decode(&bytes) {
                    Ok(msg) => swim.on_message(now_ms(start), msg),
                    Err(_) => {
                        malformed += 1;
                        Vec::new()
                    }
                },
                Some(None) => {
                    recv_errors += 1;
                    Vec::new()
                }
                None => return Err(std::io::Error::other("gossip receiver stopped")),
            },
            _ = tokio::time::sleep_until(wake) => swim.tick(now_ms(start)),
        };
        for o in out {
            // Lost datagrams are what SWIM is built to tolerate.
            let _ = send_datagram(&socket, &wire::encode(&o.msg), o.to).await;
        }
        let now = now_ms(start);
        let to_add = std::mem::take(&mut view.lock().unwrap_or_else(|p| p.into_inner()).to_add);
        for (id, addr) in to_add {
            swim.add_member(id, addr, now);
        }
        // Republish at most once a period: copying the member table is O(n).
        if now >= next_publish_ms {
            next_publish_ms = now + period_ms;
            let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
            if swim.changes() != published {
                published = swim.changes();
                v.members = swim.members().map(|(id, m)| (*id, (m.state, m.incarnation))).collect();
            }
            v.stats = swim.stats.clone();
            v.malformed = malformed;
            v.recv_errors = recv_errors;
        }
    }
}

/// Forwards every datagram (or `None` for a failed receive) to the protocol loop.
async fn receive(socket: Arc<tokio::net::UdpSocket>, tx: tokio::sync::mpsc::Sender<Option<Vec<u8>>>) {
    let mut buf = vec![0u8; limits::GOSSIP_DATAGRAM_BYTES_MAX];
    loop {
        let item = match socket.recv_from(&mut buf).await {
            Ok((n, _)) => Some(buf[..n].to_vec()),
            // A failed receive (ICMP unreachable and the like) is not fatal for gossip, but
            // back off so a socket that keeps failing cannot spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(limits::GOSSIP_RECV_ERROR_BACKOFF_MS)).await;
                None
            }
        };
        // A full queue means the protocol loop is behind: drop, as a busy network would.
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(item) {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
