//! Both sides of an edge (architecture.md §5 rule 7). An association whose target lives on another shard
//! is logged once, on the source's shard; applying it there also puts it in that shard's
//! **outbox**. The source primary delivers outbox items to the target's shard, which logs them
//! as in-edges, and once they are acknowledged logs a `Delivered` entry that removes them.
//!
//! Every item's sequence number is its position in the source's log (`lsn << 16 | index`), the
//! same on every replica, so a new primary re-delivers exactly what is left. The target keeps,
//! per source shard, the highest sequence it has applied (its **inbox** mark) and skips anything
//! at or below it: re-deliveries and late duplicates are harmless, and a stale copy of an edge
//! can never overwrite a newer one. The source delivers to each target in sequence order.
//!
//! Outbox and inbox are replicated state: applied from the log, saved in checkpoints, part of
//! the replica digest.
//!
//! A merge (architecture.md §10) joins two shards whose marks for one source may differ: the
//! merged mark is the lower one, and the higher holds for its former range only (a **scoped**
//! mark) until the source's deliveries pass it. The same section records a shard **frozen**
//! for a merge.

use std::collections::BTreeMap;

use super::batch_codec::{decode_association, encode_association};
use crate::codec::{DecodeError, Reader, Writer};
use crate::limits;
use crate::model::Association;

/// Associations per batch stay below this, so `index` fits the low bits of a sequence number.
const INDEX_BITS: u32 = 16;
const _: () = assert!(limits::BATCH_ITEMS_MAX < 1 << INDEX_BITS);

/// Outbox items one log entry can make (its upserts, then its retractions).
pub const ITEMS_PER_ENTRY_MAX: usize = 1 << INDEX_BITS;

/// The sequence number of association `index` of the batch logged at `lsn`.
pub fn seq(lsn: u64, index: usize) -> u64 {
    (lsn << INDEX_BITS) | index as u64
}

/// The LSN of the write that logged outbox item `seq`.
pub fn lsn_of(seq: u64) -> u64 {
    seq >> INDEX_BITS
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Links {
    /// Undelivered in-edges for other shards, by sequence number.
    pub outbox: BTreeMap<u64, Association>,
    /// Per source shard, the highest sequence number applied here.
    pub inbox: BTreeMap<u32, u64>,
    /// Per source shard, marks above `inbox` that hold for part of the range only (after a
    /// merge): an item whose target is in `range` and whose sequence is at or below `mark`
    /// was applied already.
    pub scoped: BTreeMap<u32, Vec<Scoped>>,
    /// The shard is frozen for a merge into this shard (its `Freeze` entry applied): it takes
    /// no writes, deliveries or splits any more.
    pub frozen_into: Option<u32>,
}

/// A mark for part of the range (see [`Links::scoped`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Scoped {
    pub start: u64,
    pub end: u64,
    pub mark: u64,
}

/// Marks the extension after the inbox (scoped marks, freeze); files without it still decode.
const EXTENSION_V1: u8 = 1;

impl Links {
    pub fn is_empty(&self) -> bool {
        self.outbox.is_empty() && self.inbox.is_empty() && self.scoped.is_empty() && self.frozen_into.is_none()
    }

    /// Whether item `seq` of `source`, for a target at placement key `target`, was applied
    /// here already (its mark, or a scoped mark covering the target, is at or above it).
    pub fn applied(&self, source: u32, seq: u64, target: u64) -> bool {
        seq <= self.inbox.get(&source).copied().unwrap_or(0)
            || self
                .scoped
                .get(&source)
                .is_some_and(|v| v.iter().any(|s| (s.start..=s.end).contains(&target) && seq <= s.mark))
    }

    /// Drops the scoped marks of `source` that its mark has passed.
    pub fn prune_scoped(&mut self, source: u32) {
        let mark = self.inbox.get(&source).copied().unwrap_or(0);
        if let Some(v) = self.scoped.get_mut(&source) {
            v.retain(|s| s.mark > mark);
            if v.is_empty() {
                self.scoped.remove(&source);
            }
        }
    }

    /// The inbox marks of a shard made of `left` (whose marks are `self`) and `right` (with
    /// `other`'s), exactly: per source the lower mark, and the higher one scoped to its side.
    pub fn merge_marks(&mut self, left: (u64, u64), other: &Links, right: (u64, u64)) {
        let sources: std::collections::BTreeSet<u32> =
            self.inbox.keys().chain(other.inbox.keys()).chain(other.scoped.keys()).copied().collect();
        for src in sources {
            let a = self.inbox.get(&src).copied().unwrap_or(0);
            let b = other.inbox.get(&src).copied().unwrap_or(0);
            let low = a.min(b);
            let scoped = self.scoped.entry(src).or_default();
            if a > low {
                scoped.push(Scoped { start: left.0, end: left.1, mark: a });
            }
            if b > low {
                scoped.push(Scoped { start: right.0, end: right.1, mark: b });
            }
            scoped.extend(other.scoped.get(&src).into_iter().flatten().copied());
            if low > 0 {
                self.inbox.insert(src, low);
            } else {
                self.inbox.remove(&src);
            }
            self.prune_scoped(src);
        }
    }

    /// The scoped marks that hold within `[start, end]`, cut to it (a split's new shard).
    pub fn scoped_within(&self, start: u64, end: u64) -> BTreeMap<u32, Vec<Scoped>> {
        self.scoped
            .iter()
            .map(|(src, v)| {
                let cut = v
                    .iter()
                    .filter(|s| s.start <= end && start <= s.end)
                    .map(|s| Scoped { start: s.start.max(start), end: s.end.min(end), mark: s.mark })
                    .collect::<Vec<_>>();
                (*src, cut)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.outbox.len() as u64);
        for (s, a) in &self.outbox {
            w.u64(*s);
            encode_association(&mut w, a);
        }
        w.u64(self.inbox.len() as u64);
        for (shard, s) in &self.inbox {
            w.u32(*shard);
            w.u64(*s);
        }
        if !self.scoped.is_empty() || self.frozen_into.is_some() {
            w.buf.push(EXTENSION_V1);
            w.u64(self.scoped.len() as u64);
            for (src, v) in &self.scoped {
                w.u32(*src);
                w.u32(v.len() as u32);
                for s in v {
                    w.u64(s.start);
                    w.u64(s.end);
                    w.u64(s.mark);
                }
            }
            w.u32(self.frozen_into.map_or(0, |s| s + 1));
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Links, DecodeError> {
        let mut links = Links::default();
        if b.is_empty() {
            return Ok(links);
        }
        let mut r = Reader::new(b);
        let n = r.u64("outbox count")?;
        for _ in 0..n {
            let s = r.u64("outbox sequence")?;
            links.outbox.insert(s, decode_association(&mut r)?);
        }
        let n = r.u64("inbox count")?;
        for _ in 0..n {
            let shard = r.u32("inbox shard")?;
            links.inbox.insert(shard, r.u64("inbox sequence")?);
        }
        if r.pos() < b.len() {
            if r.u8("links extension")? != EXTENSION_V1 {
                return Err(DecodeError { offset: r.pos(), what: "links extension version" });
            }
            let n = r.u64("scoped count")?;
            for _ in 0..n {
                let src = r.u32("scoped source")?;
                let m = r.u32("scoped marks")?;
                let mut v = Vec::new();
                for _ in 0..m {
                    v.push(Scoped {
                        start: r.u64("scoped start")?,
                        end: r.u64("scoped end")?,
                        mark: r.u64("scoped mark")?,
                    });
                }
                links.scoped.insert(src, v);
            }
            links.frozen_into = r.u32("frozen into")?.checked_sub(1);
        }
        r.expect_end("links")?;
        Ok(links)
    }
}

/// An `InEdges` entry: in-edges delivered from `source_shard`'s outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct InEdges {
    pub source_shard: u32,
    pub items: Vec<(u64, Association)>,
    /// The range the deliverer's map gave this shard, `(start, end)`: the entry applies only
    /// if the shard still owns exactly that. A deliverer routing by a map from before a merge
    /// sends the absorbing shard only the items for its old range; taking them would move the
    /// source's mark past the absorbed range's items it still owes, which then get skipped.
    /// (None: entries logged before the field existed.)
    pub routed: Option<(u64, u64)>,
}

impl InEdges {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.source_shard);
        w.u32(self.items.len() as u32);
        for (s, a) in &self.items {
            w.u64(*s);
            encode_association(&mut w, a);
        }
        if let Some((start, end)) = self.routed {
            w.u64(start);
            w.u64(end);
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<InEdges, DecodeError> {
        let mut r = Reader::new(b);
        let source_shard = r.u32("source shard")?;
        let n = r.u32("in-edge count")? as usize;
        if n > limits::BATCH_ITEMS_MAX {
            return Err(DecodeError { offset: r.pos(), what: "in-edge count" });
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let s = r.u64("sequence")?;
            items.push((s, decode_association(&mut r)?));
        }
        let routed = if r.pos() < b.len() { Some((r.u64("routed start")?, r.u64("routed end")?)) } else { None };
        r.expect_end("in-edges")?;
        Ok(InEdges { source_shard, items, routed })
    }
}

/// A `Delivered` entry: outbox items the targets acknowledged.
pub fn encode_delivered(seqs: &[u64]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(seqs.len() as u32);
    for s in seqs {
        w.u64(*s);
    }
    w.buf
}

pub fn decode_delivered(b: &[u8]) -> Result<Vec<u64>, DecodeError> {
    let mut r = Reader::new(b);
    let n = r.u32("delivered count")? as usize;
    if n > limits::BATCH_ITEMS_MAX {
        return Err(DecodeError { offset: r.pos(), what: "delivered count" });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.u64("sequence")?);
    }
    r.expect_end("delivered")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConceptId;
    use crate::model::AssocKind;

    fn assoc(i: u128) -> Association {
        Association {
            source: ConceptId(i),
            target: ConceptId(i + 1),
            kind: AssocKind::Causal,
            relation: "causes".into(),
            confidence: 0.5,
            evidence: "because".into(),
        }
    }

    #[test]
    fn codecs_round_trip_and_reject_garbage() {
        let mut l = Links::default();
        l.outbox.insert(seq(7, 2), assoc(1));
        l.inbox.insert(3, seq(9, 0));
        assert_eq!(Links::decode(&l.encode()).unwrap(), l);
        assert_eq!(Links::decode(&[]).unwrap(), Links::default());
        let mut e =
            InEdges { source_shard: 4, items: vec![(seq(1, 0), assoc(5)), (seq(1, 1), assoc(6))], routed: None };
        assert_eq!(InEdges::decode(&e.encode()).unwrap(), e);
        e.routed = Some((3, 9));
        assert_eq!(InEdges::decode(&e.encode()).unwrap(), e);
        assert_eq!(decode_delivered(&encode_delivered(&[1, 2, 3])).unwrap(), vec![1, 2, 3]);
        let mut bad = l.encode();
        bad.push(0);
        assert!(Links::decode(&bad).is_err());
        assert!(InEdges::decode(&[1, 2, 3]).is_err());
        assert!(decode_delivered(&[255, 255, 255, 255]).is_err());
        assert!(seq(1, 0) > seq(0, limits::BATCH_ITEMS_MAX));
    }
}
