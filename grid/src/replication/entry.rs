//! The payload of a replicated log entry: `[commit u64][kind u8][body]`. The commit hint is the
//! primary's commit LSN when it created the entry, so a replica that restarts knows a prefix of
//! its log is committed (and may be applied) without asking anyone.

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// A new primary's first entry: commits every older entry it follows (Raft's rule).
    EpochStart,
    /// A validated write batch (`store::batch_codec`).
    Batch(&'a [u8]),
    /// In-edges delivered from another shard's outbox (`store::links::InEdges`).
    InEdges(&'a [u8]),
    /// Outbox items their target shards acknowledged (`store::links::encode_delivered`).
    Delivered(&'a [u8]),
    /// The shard splits: keys from `at` on belong to shard `child` from this entry on
    /// (architecture.md §9).
    Split { at: u64, child: u32 },
    /// The shard freezes to be merged into shard `into` (architecture.md §10).
    Freeze { into: u32 },
    /// The shard starts absorbing shard `from`, which owns `[start, end]` and whose inbox
    /// marks are `marks` (`store::Links` encoding).
    MergeBegin { from: u32, start: u64, end: u64, marks: &'a [u8] },
    /// Part of the absorbed shard's data: a checkpoint image of some of its vertices.
    Absorb { from: u32, image: &'a [u8] },
    /// The merge is done: the range takes in the absorbed shard's.
    MergeEnd { from: u32 },
}

const EPOCH_START: u8 = 0;
const BATCH: u8 = 1;
const IN_EDGES: u8 = 2;
const DELIVERED: u8 = 3;
const SPLIT: u8 = 4;
const FREEZE: u8 = 5;
const MERGE_BEGIN: u8 = 6;
const ABSORB: u8 = 7;
const MERGE_END: u8 = 8;

/// The body of a split entry: `[at u64][child u32]`.
pub fn split_bytes(at: u64, child: u32) -> Vec<u8> {
    let mut b = at.to_le_bytes().to_vec();
    b.extend_from_slice(&child.to_le_bytes());
    b
}

/// The body of a merge's entry (`Body::Freeze`, `MergeBegin`, `Absorb`, `MergeEnd`).
pub fn merge_bytes(body: Body<'_>) -> Vec<u8> {
    let mut b = Vec::new();
    match body {
        Body::Freeze { into } => b.extend_from_slice(&into.to_le_bytes()),
        Body::MergeBegin { from, start, end, marks } => {
            b.extend_from_slice(&from.to_le_bytes());
            b.extend_from_slice(&start.to_le_bytes());
            b.extend_from_slice(&end.to_le_bytes());
            b.extend_from_slice(marks);
        }
        Body::Absorb { from, image } => {
            b.extend_from_slice(&from.to_le_bytes());
            b.extend_from_slice(image);
        }
        Body::MergeEnd { from } => b.extend_from_slice(&from.to_le_bytes()),
        _ => {}
    }
    b
}

pub fn encode(commit: u64, body: Body<'_>) -> Vec<u8> {
    let owned;
    let (kind, bytes) = match body {
        Body::EpochStart => (EPOCH_START, &[][..]),
        Body::Batch(b) => (BATCH, b),
        Body::InEdges(b) => (IN_EDGES, b),
        Body::Delivered(b) => (DELIVERED, b),
        Body::Split { at, child } => {
            owned = split_bytes(at, child);
            (SPLIT, &owned[..])
        }
        Body::Freeze { .. } | Body::MergeBegin { .. } | Body::Absorb { .. } | Body::MergeEnd { .. } => {
            owned = merge_bytes(body);
            let kind = match body {
                Body::Freeze { .. } => FREEZE,
                Body::MergeBegin { .. } => MERGE_BEGIN,
                Body::Absorb { .. } => ABSORB,
                _ => MERGE_END,
            };
            (kind, &owned[..])
        }
    };
    let mut out = Vec::with_capacity(9 + bytes.len());
    out.extend_from_slice(&commit.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(bytes);
    out
}

fn u32_of(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4).and_then(|x| x.try_into().ok()).map(u32::from_le_bytes).ok_or_else(|| "short merge entry".into())
}

fn u64_of(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8).and_then(|x| x.try_into().ok()).map(u64::from_le_bytes).ok_or_else(|| "short merge entry".into())
}

/// `(commit hint, body)`.
pub fn decode(payload: &[u8]) -> Result<(u64, Body<'_>), String> {
    if payload.len() < 9 {
        return Err(format!("entry payload of {} bytes is shorter than its 9-byte header", payload.len()));
    }
    let commit = u64::from_le_bytes(payload[..8].try_into().map_err(|_| "short header")?);
    match payload[8] {
        EPOCH_START => Ok((commit, Body::EpochStart)),
        BATCH => Ok((commit, Body::Batch(&payload[9..]))),
        IN_EDGES => Ok((commit, Body::InEdges(&payload[9..]))),
        DELIVERED => Ok((commit, Body::Delivered(&payload[9..]))),
        SPLIT => {
            let b = &payload[9..];
            if b.len() != 12 {
                return Err(format!("split entry body of {} bytes, not 12", b.len()));
            }
            let at = u64::from_le_bytes(b[..8].try_into().map_err(|_| "short split")?);
            let child = u32::from_le_bytes(b[8..].try_into().map_err(|_| "short split")?);
            Ok((commit, Body::Split { at, child }))
        }
        FREEZE => Ok((commit, Body::Freeze { into: u32_of(&payload[9..], 0)? })),
        MERGE_BEGIN => {
            let b = &payload[9..];
            let (from, start, end) = (u32_of(b, 0)?, u64_of(b, 4)?, u64_of(b, 12)?);
            Ok((commit, Body::MergeBegin { from, start, end, marks: &b[20..] }))
        }
        ABSORB => Ok((commit, Body::Absorb { from: u32_of(&payload[9..], 0)?, image: &payload[13..] })),
        MERGE_END => Ok((commit, Body::MergeEnd { from: u32_of(&payload[9..], 0)? })),
        k => Err(format!("unknown entry kind {k}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        assert_eq!(decode(&encode(7, Body::EpochStart)), Ok((7, Body::EpochStart)));
        assert_eq!(decode(&encode(9, Body::Batch(b"abc"))), Ok((9, Body::Batch(&b"abc"[..]))));
        assert_eq!(decode(&encode(3, Body::InEdges(b"x"))), Ok((3, Body::InEdges(&b"x"[..]))));
        assert_eq!(decode(&encode(4, Body::Delivered(b"y"))), Ok((4, Body::Delivered(&b"y"[..]))));
        assert_eq!(
            decode(&encode(5, Body::Split { at: 1 << 63, child: 9 })),
            Ok((5, Body::Split { at: 1 << 63, child: 9 }))
        );
        assert_eq!(decode(&encode(6, Body::Freeze { into: 3 })), Ok((6, Body::Freeze { into: 3 })));
        let begin = Body::MergeBegin { from: 4, start: 10, end: 20, marks: b"mk" };
        assert_eq!(decode(&encode(7, begin)), Ok((7, begin)));
        let part = Body::Absorb { from: 4, image: b"img" };
        assert_eq!(decode(&encode(8, part)), Ok((8, part)));
        assert_eq!(decode(&encode(9, Body::MergeEnd { from: 4 })), Ok((9, Body::MergeEnd { from: 4 })));
        let mut short = encode(7, begin);
        short.truncate(20);
        assert!(decode(&short).is_err());
        assert!(decode(b"short").is_err());
        let mut bad = encode(1, Body::EpochStart);
        bad[8] = 42;
        assert!(decode(&bad).is_err());
    }
}
