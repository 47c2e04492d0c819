//! The write-ahead log of one shard replica: segmented files of CRC-framed records.
//!
//! Recovery scans every segment. A record that fails to decode at the very end of the last
//! segment, with nothing valid after it, is a torn tail from a crash: it is truncated. Any
//! other bad record is corruption: `open` fails and the replica must not serve, because
//! dropping it would silently lose acknowledged data.
//!
//! Group commit (one fsync for many records, replies after it) lives in the replica's log
//! driver, `node/log.rs`, which owns the WAL.

pub mod record;

pub use record::{Record, RecordType};

use std::sync::Arc;

use crate::io::{AppendFile, Disk};
use crate::limits;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("wal corruption in {segment} at byte {offset}: {reason}; refusing to serve (re-sync from peers)")]
    Corruption { segment: String, offset: u64, reason: String },
    #[error("fsync failed on {path}: {source}; the replica stops (fsync errors are fatal)")]
    FsyncFailed { path: String, source: std::io::Error },
    #[error("wal replay rejected record lsn {lsn}: {reason}")]
    Replay { lsn: u64, reason: String },
}

/// What recovery found; logged and surfaced in shard info.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records_scanned: u64,
    pub records_replayed: u64,
    pub truncated_tail_bytes: u64,
    pub last_lsn: u64,
    pub last_epoch: u64,
}

pub struct Wal {
    disk: Arc<dyn Disk>,
    dir: String,
    /// First LSN of every live segment, ascending; the last one is `active`.
    segments: Vec<u64>,
    active: Box<dyn AppendFile>,
    next_lsn: u64,
    /// `limits::WAL_SEGMENT_BYTES_MAX`, lowered by tests to exercise rolling.
    segment_bytes_max: u64,
}

fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".wal")?.parse().ok()
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, calling `replay` for every record with lsn > `after`
    /// in order. `after` is the checkpoint's LSN.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &str,
        after: u64,
        mut replay: impl FnMut(&Record<'_>) -> Result<(), String>,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        let io_err = |path: &str| {
            let path = path.to_string();
            move |source| WalError::Io { path, source }
        };
        disk.create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments: Vec<u64> =
            disk.list(dir).map_err(io_err(dir))?.iter().filter_map(|n| parse_segment_name(n)).collect();
        segments.sort_unstable();
        let mut report = RecoveryReport { segments: segments.len(), last_lsn: after, ..Default::default() };
        let mut prev_lsn: Option<u64> = None;
        for (i, &first) in segments.iter().enumerate() {
            let path = format!("{dir}/{}", segment_name(first));
            let is_last = i + 1 == segments.len();
            let mut buf = disk.read(&path).map_err(io_err(&path))?;
            let mut rereads = 0u32;
            let corrupt = |offset: usize, reason: String| WalError::Corruption {
                segment: path.clone(),
                offset: offset as u64,
                reason,
            };
            if let Some(p) = prev_lsn {
                if first != p + 1 {
                    return Err(corrupt(0, format!("segment starts at lsn {first} but the previous one ended at {p}")));
                }
            }
            let mut off = 0usize;
            while off < buf.len() {
                let (rec, n) = match record::decode(&buf[off..]) {
                    Ok(v) => v,
                    Err(failure) => {
                        // A read error in transit must not pass for a torn tail (that would
                        // truncate an acknowledged record): act only on damage that two reads
                        // agree on, byte for byte, from here to the end.
                        let again = disk.read(&path).map_err(io_err(&path))?;
                        if again.get(off..) != buf.get(off..) {
                            rereads += 1;
                            if rereads > limits::WAL_REREADS_MAX {
                                return Err(corrupt(off, "reads of this segment keep disagreeing".into()));
                            }
                            buf = again;
                            continue;
                        }
                        let reason = format!("{failure:?}");
                        if !is_last {
                            return Err(corrupt(off, reason));
                        }
                        if let Some(at) = find_valid_record_after(&buf, off + 1, prev_lsn.unwrap_or(0)) {
                            return Err(corrupt(off, format!("{reason}, yet a valid record follows at byte {at}")));
                        }
                        // Torn tail: never acknowledged (acks follow the fsync that covers them).
                        disk.truncate(&path, off as u64).map_err(io_err(&path))?;
                        report.truncated_tail_bytes = (buf.len() - off) as u64;
                        break;
                    }
                };
                let expected = prev_lsn.map(|p| p + 1).unwrap_or(first);
                if rec.lsn != expected {
                    return Err(corrupt(off, format!("lsn {} where {expected} was expected", rec.lsn)));
                }
                if rec.epoch < report.last_epoch {
                    return Err(corrupt(off, format!("epoch went back from {} to {}", report.last_epoch, rec.epoch)));
                }
                report.records_scanned += 1;
                report.last_epoch = rec.epoch;
                if rec.lsn > after {
                    replay(&rec).map_err(|reason| WalError::Replay { lsn: rec.lsn, reason })?;
                    report.records_replayed += 1;
                }
                prev_lsn = Some(rec.lsn);
                off += n;
            }
        }
        let last = prev_lsn.unwrap_or(0).max(after);
        report.last_lsn = last;
        let next_lsn = last + 1;
        // The last segment can take the next record only if its next LSN is `next_lsn`.
        let reusable = match (segments.last(), prev_lsn) {
            (Some(&first), Some(p)) => first <= p && p + 1 == next_lsn || first == next_lsn,
            (Some(&first), None) => first == next_lsn,
            _ => false,
        };
        let active = if reusable {
            let path = format!("{dir}/{}", segment_name(*segments.last().unwrap_or(&next_lsn)));
            disk.open_append(&path).map_err(io_err(&path))?
        } else {
            // New WAL, or the checkpoint is ahead of every record (all were trimmed).
            if let Some(&first) = segments.last() {
                let path = format!("{dir}/{}", segment_name(first));
                if disk.read(&path).map(|b| b.is_empty()).unwrap_or(false) {
                    disk.remove(&path).map_err(io_err(&path))?;
                    segments.pop();
                }
            }
            let path = format!("{dir}/{}", segment_name(next_lsn));
            let f = disk.create(&path).map_err(io_err(&path))?;
            disk.sync_dir(dir).map_err(io_err(dir))?;
            segments.push(next_lsn);
            f
        };
        Ok((
            Wal {
                disk,
                dir: dir.to_string(),
                segments,
                active,
                next_lsn,
                segment_bytes_max: limits::WAL_SEGMENT_BYTES_MAX,
            },
            report,
        ))
    }

    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Frames one record into `buf` and assigns it the next LSN.
    pub fn stage(&mut self, buf: &mut Vec<u8>, epoch: u64, rtype: RecordType, payload: &[u8]) -> u64 {
        let lsn = self.next_lsn;
        record::encode(buf, epoch, lsn, rtype, payload);
        self.next_lsn += 1;
        lsn
    }

    /// Writes staged records whose first LSN is `first_lsn`, then fsyncs. Blocking.
    pub fn write_and_sync(&mut self, first_lsn: u64, buf: &[u8]) -> Result<(), WalError> {
        self.write(first_lsn, buf)?;
        self.sync()
    }

    /// Appends staged records (not yet durable), rolling to a new segment first if needed.
    pub fn write(&mut self, first_lsn: u64, buf: &[u8]) -> Result<(), WalError> {
        if self.active.len() >= self.segment_bytes_max {
            self.roll(first_lsn)?;
        }
        let path = self.active_path();
        self.active.append(buf).map_err(|source| WalError::Io { path, source })
    }

    /// fsyncs the active segment. An error is fatal for the replica.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let path = self.active_path();
        self.active.sync().map_err(|source| WalError::FsyncFailed { path, source })
    }

    fn active_path(&self) -> String {
        format!("{}/{}", self.dir, segment_name(*self.segments.last().unwrap_or(&0)))
    }

    fn roll(&mut self, first_lsn: u64) -> Result<(), WalError> {
        let path = format!("{}/{}", self.dir, segment_name(first_lsn));
        let f = self.disk.create(&path).map_err(|source| WalError::Io { path: path.clone(), source })?;
        // The new name must be durable before any record in it is acknowledged.
        self.disk.sync_dir(&self.dir).map_err(|source| WalError::FsyncFailed { path: self.dir.clone(), source })?;
        self.active = f;
        self.segments.push(first_lsn);
        Ok(())
    }

    /// Drops every record after `lsn` (a replica cutting an uncommitted divergent suffix). The
    /// new length is durable when this returns.
    pub fn truncate_after(&mut self, lsn: u64) -> Result<(), WalError> {
        if lsn + 1 >= self.next_lsn {
            return Ok(());
        }
        let io = |path: &str| {
            let path = path.to_string();
            move |source| WalError::Io { path, source }
        };
        if self.segments.first().is_some_and(|&f| f > lsn + 1) {
            return Err(WalError::Replay { lsn, reason: "truncation point is below the log's first segment".into() });
        }
        while self.segments.len() > 1 && self.segments.last().is_some_and(|&f| f > lsn) {
            let path = format!("{}/{}", self.dir, segment_name(self.segments.pop().unwrap_or_default()));
            self.disk.remove(&path).map_err(io(&path))?;
        }
        let first = *self.segments.last().unwrap_or(&(lsn + 1));
        let path = self.active_path();
        let buf = self.disk.read(&path).map_err(io(&path))?;
        let mut off = 0usize;
        let mut at = first;
        while at <= lsn && off < buf.len() {
            let (_, n) = record::decode(&buf[off..]).map_err(|f| WalError::Corruption {
                segment: path.clone(),
                offset: off as u64,
                reason: format!("{f:?} while truncating"),
            })?;
            off += n;
            at += 1;
        }
        self.disk.truncate(&path, off as u64).map_err(io(&path))?;
        self.disk.sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.active = self.disk.open_append(&path).map_err(io(&path))?;
        self.next_lsn = lsn + 1;
        Ok(())
    }

    /// Drops the whole log and starts it again after `lsn` (a replica that installed a
    /// snapshot at `lsn`).
    pub fn reset_after(&mut self, lsn: u64) -> Result<(), WalError> {
        let io = |path: &str| {
            let path = path.to_string();
            move |source| WalError::Io { path, source }
        };
        for first in std::mem::take(&mut self.segments) {
            let path = format!("{}/{}", self.dir, segment_name(first));
            self.disk.remove(&path).map_err(io(&path))?;
        }
        let path = format!("{}/{}", self.dir, segment_name(lsn + 1));
        self.active = self.disk.create(&path).map_err(io(&path))?;
        self.disk.sync_dir(&self.dir).map_err(io(&self.dir))?;
        self.segments.push(lsn + 1);
        self.next_lsn = lsn + 1;
        Ok(())
    }

    /// LSN of the first record the WAL files may hold.
    pub fn first_lsn(&self) -> u64 {
        *self.segments.first().unwrap_or(&self.next_lsn)
    }

    /// Deletes segments whose every record is ≤ `lsn` (covered by a checkpoint). The active
    /// segment always stays.
    pub fn trim_through(&mut self, lsn: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1] <= lsn + 1 {
            let path = format!("{}/{}", self.dir, segment_name(self.segments[0]));
            self.disk.remove(&path).map_err(|source| WalError::Io { path, source })?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            self.disk.sync_dir(&self.dir).map_err(|source| WalError::Io { path: self.dir.clone(), source })?;
        }
        Ok(removed)
    }

    pub fn set_segment_bytes_max(&mut self, bytes: u64) {
        self.segment_bytes_max = bytes;
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// One record read back for shipping: `(epoch, lsn, payload)`.
pub type Shipped = (u64, u64, Vec<u8>);

/// Reads records `from ..= to` (at most `max_bytes` of payload, at least one record) straight
/// from the segment files, for a primary shipping entries it no longer holds in memory. Stops
/// at the first record that does not decode (a group being written right now). Empty when the
/// WAL no longer holds `from`.
pub fn read_entries(disk: &dyn Disk, dir: &str, from: u64, to: u64, max_bytes: usize) -> Vec<Shipped> {
    let mut segments: Vec<u64> =
        disk.list(dir).unwrap_or_default().iter().filter_map(|n| parse_segment_name(n)).collect();
    segments.sort_unstable();
    let start = segments.partition_point(|&f| f <= from);
    let Some(i) = start.checked_sub(1) else { return Vec::new() };
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    for &first in &segments[i..] {
        let Ok(buf) = disk.read(&format!("{dir}/{}", segment_name(first))) else { break };
        let mut off = 0usize;
        while off < buf.len() {
            let Ok((rec, n)) = record::decode(&buf[off..]) else { return out };
            off += n;
            if rec.lsn < from + out.len() as u64 {
                continue;
            }
            if rec.lsn != from + out.len() as u64 || rec.lsn > to || (bytes >= max_bytes && !out.is_empty()) {
                return out;
            }
            bytes += rec.payload.len();
            out.push((rec.epoch, rec.lsn, rec.payload.to_vec()));
        }
    }
    out
}

/// Looks for any decodable record after a failure: if one exists, the failure was not a torn
/// tail. Byte-by-byte, but only ever run on a failure path.
fn find_valid_record_after(buf: &[u8], from: usize, min_lsn: u64) -> Option<usize> {
    (from..buf.len()).find(|&at| matches!(record::decode(&buf[at..]), Ok((r, _)) if r.lsn > min_lsn))
}

#[cfg(test)]
mod tests;
