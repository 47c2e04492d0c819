//! Group commit: writers queue records; one task frames a whole queue's worth, writes it with
//! one fsync, and only then hands every record to the sink, which applies and acknowledges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{RecordType, Wal, WalError};
use crate::limits;

/// One record waiting for the disk, with whatever the sink needs to finish it.
pub struct Pending<T> {
    pub epoch: u64,
    pub rtype: RecordType,
    pub payload: Vec<u8>,
    pub item: T,
}

pub trait CommitSink<T>: Send + 'static {
    /// Every record of `batch` is durable; called in LSN order.
    fn durable(&mut self, batch: Vec<(u64, T)>);
    /// The WAL failed (fsync errors are fatal); no record of `batch` may be acknowledged.
    /// Called once; the driver then fails everything that arrives after.
    fn failed(&mut self, error: &WalError, batch: Vec<T>);
}

/// Runs until every sender is dropped, or the WAL fails. Between groups it trims segments
/// wholly at or below `trim_through` (the latest checkpoint's LSN).
pub async fn run_group_commit<T: Send + 'static>(
    mut wal: Wal,
    mut rx: mpsc::Receiver<Pending<T>>,
    mut sink: impl CommitSink<T>,
    trim_through: Arc<AtomicU64>,
) -> Result<(), WalError> {
    let sync_latency = wal.disk.sync_latency();
    let mut buf: Vec<u8> = Vec::with_capacity(limits::WAL_GROUP_COMMIT_BYTES_MAX);
    loop {
        let Some(first) = rx.recv().await else {
            return Ok(());
        };
        let trim = trim_through.load(Ordering::Acquire);
        if trim > 0 {
            if let Err(e) = wal.trim_through(trim) {
                tracing::warn!(error = %e, "wal trim failed; segments kept");
            }
        }
        let mut group = vec![first];
        let mut bytes = group[0].payload.len();
        while group.len() < limits::WAL_GROUP_COMMIT_RECORDS_MAX && bytes < limits::WAL_GROUP_COMMIT_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        buf.clear();
        let first_lsn = wal.next_lsn();
        let mut items = Vec::with_capacity(group.len());
        for p in group {
            let lsn = wal.stage(&mut buf, p.epoch, p.rtype, &p.payload);
            items.push((lsn, p.item));
        }
        let res = if sync_latency.is_zero() {
            let (w, b, r) = crate::io::blocking(move || {
                let r = wal.write_and_sync(first_lsn, &buf);
                (wal, buf, r)
            })
            .await;
            (wal, buf) = (w, b);
            r
        } else {
            // Simulated device latency sits between the write and the fsync's return, so a
            // crash can land while the group is written but not yet durable.
            match wal.write(first_lsn, &buf) {
                Ok(()) => {
                    tokio::time::sleep(sync_latency).await;
                    wal.sync()
                }
                Err(e) => Err(e),
            }
        };
        if let Err(e) = res {
            sink.failed(&e, items.into_iter().map(|(_, t)| t).collect());
            rx.close();
            while let Some(p) = rx.recv().await {
                sink.failed(&e, vec![p.item]);
            }
            return Err(e);
        }
        sink.durable(items);
    }
}
