//! WAL record framing: `[len u32][crc32c u32][epoch u64][lsn u64][type u8][payload]`.
//! `len` is the payload length; the CRC covers `len` and everything after the CRC field, so a
//! damaged length is caught as surely as damaged data.

use crate::limits;

pub const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 1;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// A validated write batch (concepts + associations), applied atomically.
    Batch = 1,
    /// A change to the master's metadata (JSON `master::meta::MetaOp`).
    MasterMeta = 2,
    /// A replicated shard log entry (`replication::entry`): commit hint, then a batch or an
    /// epoch start.
    Entry = 3,
}

impl RecordType {
    pub fn from_u8(v: u8) -> Option<RecordType> {
        match v {
            1 => Some(RecordType::Batch),
            2 => Some(RecordType::MasterMeta),
            3 => Some(RecordType::Entry),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub epoch: u64,
    pub lsn: u64,
    pub rtype: RecordType,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeFailure {
    /// Fewer bytes than the header or the declared payload: a torn tail, if nothing valid follows.
    Incomplete,
    /// Length out of bounds, CRC mismatch or unknown type.
    Bad(&'static str),
}

fn crc_of(frame: &[u8]) -> u32 {
    let c = crc32c::crc32c(&frame[0..4]);
    crc32c::crc32c_append(c, &frame[8..])
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, epoch: u64, lsn: u64, rtype: RecordType, payload: &[u8]) {
    assert!(payload.len() <= limits::WAL_RECORD_PAYLOAD_BYTES_MAX, "record payload over the limit");
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.push(rtype as u8);
    out.extend_from_slice(payload);
    let crc = crc_of(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    // Assert the checksum right before the bytes leave for the disk (TigerBeetle habit).
    if cfg!(feature = "strict_assertions") {
        assert!(matches!(decode(&out[start..]), Ok((_, n)) if n == out.len() - start));
    }
}

/// Decodes the record at the start of `buf`, returning it and its framed length.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeFailure> {
    if buf.len() < HEADER_BYTES {
        return Err(DecodeFailure::Incomplete);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > limits::WAL_RECORD_PAYLOAD_BYTES_MAX {
        return Err(DecodeFailure::Bad("record length over the limit"));
    }
    let total = HEADER_BYTES + len;
    if buf.len() < total {
        return Err(DecodeFailure::Incomplete);
    }
    let frame = &buf[..total];
    let stored = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if crc_of(frame) != stored {
        return Err(DecodeFailure::Bad("crc mismatch"));
    }
    let rtype = RecordType::from_u8(frame[24]).ok_or(DecodeFailure::Bad("unknown record type"))?;
    let mut e = [0u8; 8];
    e.copy_from_slice(&frame[8..16]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&frame[16..24]);
    Ok((
        Record { epoch: u64::from_le_bytes(e), lsn: u64::from_le_bytes(l), rtype, payload: &frame[HEADER_BYTES..] },
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(epoch: u64, lsn: u64, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = Vec::new();
            encode(&mut buf, epoch, lsn, RecordType::Batch, &payload);
            let (r, n) = decode(&buf).unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(r, Record { epoch, lsn, rtype: RecordType::Batch, payload: &payload });
        }

        #[test]
        fn any_flipped_bit_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..256), at: usize, bit in 0u8..8) {
            let mut buf = Vec::new();
            encode(&mut buf, 7, 42, RecordType::Batch, &payload);
            let at = at % buf.len();
            buf[at] ^= 1 << bit;
            // Either the frame is rejected or (length grew) it is incomplete; never wrong data.
            prop_assert!(decode(&buf).is_err());
        }

        #[test]
        fn any_truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..256), cut: usize) {
            let mut buf = Vec::new();
            encode(&mut buf, 1, 1, RecordType::Batch, &payload);
            let cut = cut % buf.len();
            prop_assert_eq!(decode(&buf[..cut]).unwrap_err(), DecodeFailure::Incomplete);
        }
    }
}
