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

use std::collections::BTreeMap;

use super::batch_codec::{decode_association, encode_association};
use crate::codec::{DecodeError, Reader, Writer};
use crate::limits;
use crate::model::Association;

/// Associations per batch stay below this, so `index` fits the low bits of a sequence number.
const INDEX_BITS: u32 = 16;
const _: () = assert!(limits::BATCH_ITEMS_MAX < 1 << INDEX_BITS);

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
}

impl Links {
    pub fn is_empty(&self) -> bool {
        self.outbox.is_empty() && self.inbox.is_empty()
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
        r.expect_end("links")?;
        Ok(links)
    }
}

/// An `InEdges` entry: in-edges delivered from `source_shard`'s outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct InEdges {
    pub source_shard: u32,
    pub items: Vec<(u64, Association)>,
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
        r.expect_end("in-edges")?;
        Ok(InEdges { source_shard, items })
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
        let e = InEdges { source_shard: 4, items: vec![(seq(1, 0), assoc(5)), (seq(1, 1), assoc(6))] };
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
