//! Log shipping: one task per replica while this node leads a shard. It sends the entries the
//! replica lacks (batched: up to `REPL_APPEND_ENTRIES_MAX` per append, pipelined: up to
//! `REPL_APPENDS_IN_FLIGHT_MAX` appends on their way), an empty append every
//! `REPL_HEARTBEAT_MS` (commit LSN and lease), entries it no longer holds in memory from the
//! WAL, and a checkpoint snapshot once the WAL no longer has them either.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

use sutra_proto as pb;
use tokio::time::Instant;

use super::log::Shared;
use crate::client::StorageClient;
use crate::ids::NodeId;
use crate::limits;
use crate::replication::core::Job;
use crate::replication::{Append, AppendReply, EntryId};
use crate::store::Checkpoint;

pub(crate) fn append_to_pb(shard: u32, a: &Append, payloads: &[Arc<Vec<u8>>]) -> pb::AppendRequest {
    pb::AppendRequest {
        shard,
        epoch: a.epoch,
        prev_epoch: a.prev.epoch,
        prev_lsn: a.prev.lsn,
        entries: a
            .entries
            .iter()
            .zip(payloads)
            .map(|(id, p)| pb::LogEntry { epoch: id.epoch, lsn: id.lsn, payload: p.as_ref().clone().into() })
            .collect(),
        commit: a.commit,
    }
}

pub(crate) fn reply_to_pb(r: &AppendReply) -> pb::AppendResponse {
    match *r {
        AppendReply::Ok { epoch, matched } => {
            pb::AppendResponse { status: pb::AppendStatus::AppendOk as i32, epoch, matched, ..Default::default() }
        }
        AppendReply::StaleEpoch { promised } => {
            pb::AppendResponse { status: pb::AppendStatus::AppendStaleEpoch as i32, promised, ..Default::default() }
        }
        AppendReply::Mismatch { epoch, last, commit } => pb::AppendResponse {
            status: pb::AppendStatus::AppendMismatch as i32,
            epoch,
            last_epoch: last.epoch,
            last_lsn: last.lsn,
            commit,
            ..Default::default()
        },
    }
}

pub(crate) fn reply_from_pb(r: &pb::AppendResponse) -> AppendReply {
    match pb::AppendStatus::try_from(r.status) {
        Ok(pb::AppendStatus::AppendOk) => AppendReply::Ok { epoch: r.epoch, matched: r.matched },
        Ok(pb::AppendStatus::AppendStaleEpoch) => AppendReply::StaleEpoch { promised: r.promised },
        _ => AppendReply::Mismatch {
            epoch: r.epoch,
            last: EntryId { epoch: r.last_epoch, lsn: r.last_lsn },
            commit: r.commit,
        },
    }
}

/// An append on its way: the lease-clock time it left, and the peer's answer.
type InFlight = Pin<Box<dyn Future<Output = (Instant, Result<pb::AppendResponse, String>)> + Send>>;

pub(crate) async fn ship(sh: Arc<Shared>, epoch: u64, peer: NodeId, addr: String) {
    let mut client: Option<StorageClient> = None;
    let heartbeat = Duration::from_millis(limits::REPL_HEARTBEAT_MS);
    let deadline = Duration::from_millis(limits::REPL_RPC_DEADLINE_MS);
    let mut last_sent: Option<Instant> = None;
    let mut failures = 0u32;
    // Pipelining: up to REPL_APPENDS_IN_FLIGHT_MAX appends on their way at once. One that
    // arrives out of order is refused as a mismatch and sent again; nothing else changes.
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    loop {
        // Registered before looking for work, so a notification in between is not lost.
        let changed = sh.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let full = in_flight.len() >= limits::REPL_APPENDS_IN_FLIGHT_MAX;
        // An empty append only when nothing is on its way: it would overtake what is.
        let due = in_flight.is_empty() && last_sent.is_none_or(|t| t.elapsed() >= heartbeat);
        let job = if full { Job::Wait } else { sh.core().next_job(epoch, peer, due) };
        let (append, payloads) = match job {
            Job::Stop => return,
            Job::Wait => {
                let wait = last_sent.map_or(Duration::ZERO, |t| heartbeat.saturating_sub(t.elapsed()));
                tokio::select! {
                    biased;
                    Some((sent, r)) = in_flight.next(), if !in_flight.is_empty() => {
                        if r.is_err() {
                            // Everything after it is sent again after the rewind.
                            in_flight.clear();
                        }
                        if !on_answer(&sh, epoch, peer, sent, r, &mut client, &mut failures).await {
                            return;
                        }
                    }
                    _ = changed, if !full => {}
                    _ = tokio::time::sleep(wait), if in_flight.is_empty() => {}
                }
                continue;
            }
            Job::Send(a, p) => (a, p),
            Job::FromDisk(mut a) => {
                let (from, to) = (a.entries[0].lsn, a.entries[a.entries.len() - 1].lsn);
                let (disk, dir) = (sh.disk.clone(), format!("{}/wal", sh.dir));
                let read = crate::io::blocking(move || {
                    crate::wal::read_entries(&*disk, &dir, from, to, limits::REPL_APPEND_BYTES_MAX)
                })
                .await;
                let n =
                    read.iter().zip(&a.entries).take_while(|((e, l, _), id)| *e == id.epoch && *l == id.lsn).count();
                // Buggify: as if the WAL had been trimmed meanwhile.
                let n = if crate::buggify!(0.3) { 0 } else { n };
                if n == 0 {
                    // Neither memory nor the WAL holds it any more: send a snapshot.
                    if snapshot(&sh, epoch, peer, &addr, &mut client).await.is_err() {
                        rewind(&sh, epoch, peer, &mut in_flight);
                        tokio::time::sleep(backoff(&mut failures)).await;
                    }
                    continue;
                }
                a.entries.truncate(n);
                sh.core().resume_at(epoch, peer, from + n as u64);
                let payloads = read.into_iter().take(n).map(|(_, _, p)| Arc::new(p)).collect();
                (a, payloads)
            }
            Job::Snapshot => {
                if snapshot(&sh, epoch, peer, &addr, &mut client).await.is_err() {
                    tokio::time::sleep(backoff(&mut failures)).await;
                }
                continue;
            }
        };
        let c = match client.as_ref() {
            Some(c) => c.clone(),
            None => match StorageClient::connect(&addr).await {
                Ok(c) => {
                    let c = c.with_deadline(deadline);
                    client = Some(c.clone());
                    c
                }
                Err(_) => {
                    rewind(&sh, epoch, peer, &mut in_flight);
                    tokio::time::sleep(backoff(&mut failures)).await;
                    continue;
                }
            },
        };
        if crate::buggify!(0.05) {
            // Buggify: the append is lost on the way.
            rewind(&sh, epoch, peer, &mut in_flight);
            tokio::time::sleep(backoff(&mut failures)).await;
            continue;
        }
        last_sent = Some(Instant::now());
        // The lease counts from when the append left, on this process's lease clock.
        let sent = crate::io::clock::lease_now();
        let req = append_to_pb(sh.shard, &append, &payloads);
        in_flight.push(Box::pin(async move { (sent, c.append(req).await.map_err(|e| e.to_string())) }));
    }
}

/// Sends again from the peer's last matched entry. What is in flight is dropped: the backoff
/// that follows a rewind would leave it unpolled, so each RPC ran out its deadline a step at a
/// time and the peer never heard from this primary again (swarm seed 7000391).
fn rewind(sh: &Shared, epoch: u64, peer: NodeId, in_flight: &mut FuturesUnordered<InFlight>) {
    in_flight.clear();
    sh.core().rewind(epoch, peer);
}

/// Handles one append's answer (the log task decides what it means); false once the log has
/// stopped.
async fn on_answer(
    sh: &Shared,
    epoch: u64,
    peer: NodeId,
    sent: Instant,
    answer: Result<pb::AppendResponse, String>,
    client: &mut Option<StorageClient>,
    failures: &mut u32,
) -> bool {
    match answer {
        Ok(r) => {
            *failures = 0;
            sh.forward_reply(epoch, peer, sent, reply_from_pb(&r)).await
        }
        Err(e) => {
            tracing::debug!(shard = sh.shard, peer = peer.0, error = %e, "append failed");
            *client = None;
            sh.core().rewind(epoch, peer);
            tokio::time::sleep(backoff(failures)).await;
            true
        }
    }
}

fn backoff(failures: &mut u32) -> Duration {
    *failures += 1;
    crate::client::retry_backoff(*failures, limits::RPC_BACKOFF_MS_INITIAL, limits::REPL_HEARTBEAT_MS * 2)
}

/// Sends this primary's latest checkpoint image to `peer` in chunks; its reply to the last
/// chunk moves the peer past the image's LSN.
async fn snapshot(
    sh: &Arc<Shared>,
    epoch: u64,
    peer: NodeId,
    addr: &str,
    client: &mut Option<StorageClient>,
) -> Result<(), String> {
    let path = format!("{}/storage.dat", sh.dir);
    let map = sh.disk.map(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let cp = Checkpoint::open(map.clone()).map_err(|e| e.to_string())?;
    let through = sh.core().snapshot_through;
    if cp.lsn < through {
        // The split made a checkpoint due; older images hold the range before it.
        return Err(format!("no checkpoint past the split at lsn {through} yet"));
    }
    let c = match client.as_ref() {
        Some(c) => c.clone(),
        None => {
            let c = StorageClient::connect(addr)
                .await
                .map_err(|e| e.to_string())?
                .with_deadline(Duration::from_millis(limits::REPL_RPC_DEADLINE_MS));
            *client = Some(c.clone());
            c
        }
    };
    tracing::info!(shard = sh.shard, peer = peer.0, lsn = cp.lsn, bytes = map.len(), "sending a snapshot");
    let total = map.len();
    let mut offset = 0usize;
    let sent = crate::io::clock::lease_now();
    loop {
        let end = (offset + limits::SNAPSHOT_CHUNK_BYTES).min(total);
        let chunk = pb::SnapshotChunk {
            shard: sh.shard,
            epoch,
            lsn: cp.lsn,
            lsn_epoch: cp.epoch,
            offset: offset as u64,
            data: map[offset..end].to_vec().into(),
            done: end == total,
            total_bytes: total as u64,
        };
        let r = c.install_snapshot(chunk).await.map_err(|e| {
            *client = None;
            e.to_string()
        })?;
        if end == total {
            sh.forward_reply(epoch, peer, sent, reply_from_pb(&r)).await;
            return Ok(());
        }
        offset = end;
    }
}
