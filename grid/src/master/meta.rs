//! The master's metadata on disk: a WAL of [`MetaOp`]s (the foundation's WAL, fsynced before
//! a change is acknowledged) plus a periodic snapshot `meta.snap` (crc32c + JSON, written
//! atomically) after which the log is trimmed. A restart loads the snapshot and replays the log.

use std::sync::Arc;

use super::state::{Meta, MetaOp};
use crate::io::{write_atomic, Disk};
use crate::limits;
use crate::wal::{RecordType, Wal, WalError};

const SNAPSHOT: &str = "meta.snap";

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("master metadata i/o on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("master metadata snapshot {path} is corrupt: {reason}; refusing to start")]
    Corrupt { path: String, reason: String },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    /// The last log record the snapshot covers.
    lsn: u64,
    meta: Meta,
}

pub struct MetaLog {
    disk: Arc<dyn Disk>,
    dir: String,
    wal: Wal,
    since_snapshot: u64,
}

impl MetaLog {
    /// Opens (or creates) the metadata under `dir` and returns it as recovered.
    pub fn open(disk: Arc<dyn Disk>, dir: &str) -> Result<(MetaLog, Meta), MetaError> {
        let io = |path: &str| {
            let path = path.to_string();
            move |source| MetaError::Io { path, source }
        };
        disk.create_dir_all(dir).map_err(io(dir))?;
        let snap_path = format!("{dir}/{SNAPSHOT}");
        let (mut meta, after) = if disk.exists(&snap_path) {
            let bytes = disk.read(&snap_path).map_err(io(&snap_path))?;
            let s = decode_snapshot(&bytes).map_err(|reason| MetaError::Corrupt { path: snap_path.clone(), reason })?;
            (s.meta, s.lsn)
        } else {
            (Meta::default(), 0)
        };
        let mut replayed = 0u64;
        let (wal, _) = Wal::open(disk.clone(), &format!("{dir}/wal"), after, |rec| {
            if rec.rtype != RecordType::MasterMeta {
                return Err(format!("unexpected record type {:?} in the master log", rec.rtype));
            }
            let op: MetaOp = serde_json::from_slice(rec.payload).map_err(|e| format!("undecodable op: {e}"))?;
            meta.apply(&op);
            replayed += 1;
            Ok(())
        })?;
        Ok((MetaLog { disk, dir: dir.to_string(), wal, since_snapshot: replayed }, meta))
    }

    /// Makes `op` durable. `after` is the metadata with `op` applied, snapshotted now and then.
    /// Blocking (write + fsync). An error leaves the op unacknowledged; the caller must not
    /// apply it, and after an fsync error must stop (the log can no longer be trusted).
    pub fn append(&mut self, op: &MetaOp, after: &Meta) -> Result<(), MetaError> {
        let payload = serde_json::to_vec(op).expect("metadata ops always serialise");
        let mut buf = Vec::with_capacity(payload.len() + 32);
        let lsn = self.wal.stage(&mut buf, 0, RecordType::MasterMeta, &payload);
        self.wal.write_and_sync(lsn, &buf)?;
        self.since_snapshot += 1;
        if self.since_snapshot >= limits::MASTER_LOG_RECORDS_PER_SNAPSHOT {
            self.snapshot(after)?;
        }
        Ok(())
    }

    /// Writes a snapshot covering every logged op, then trims the log behind it.
    pub fn snapshot(&mut self, meta: &Meta) -> Result<(), MetaError> {
        let lsn = self.wal.next_lsn() - 1;
        let bytes = encode_snapshot(&Snapshot { lsn, meta: meta.clone() });
        write_atomic(&*self.disk, &self.dir, SNAPSHOT, &bytes)
            .map_err(|source| MetaError::Io { path: format!("{}/{SNAPSHOT}", self.dir), source })?;
        self.wal.trim_through(lsn)?;
        self.since_snapshot = 0;
        Ok(())
    }
}

fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let body = serde_json::to_vec(s).expect("metadata always serialises");
    let mut out = crc32c::crc32c(&body).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let (crc, body) = bytes.split_at_checked(4).ok_or("shorter than its checksum")?;
    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != want {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}
