//! The WAL payload of a write batch: its timestamp plus every item, so replay reproduces the
//! exact state the live apply produced.

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::ConceptId;
use crate::limits;
use crate::model::{AssocKind, Association, ConceptWrite, Forget, WriteBatch};

pub fn encode(ts_ms: u64, b: &WriteBatch) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + b.items() * 96);
    w.u64(ts_ms);
    w.u32(b.concepts.len() as u32);
    for c in &b.concepts {
        w.str(&c.label);
        w.str(&c.content);
        w.f32s(&c.vector);
        w.f32(c.confidence);
    }
    w.u32(b.associations.len() as u32);
    for a in &b.associations {
        encode_association(&mut w, a);
    }
    // Retractions: a trailing section, absent when there are none (so batches logged before
    // it existed decode as they were written).
    if !b.forget.is_empty() {
        w.u32(b.forget.len() as u32);
        for f in &b.forget {
            match f {
                Forget::Concept(id) => {
                    w.u8(FORGET_CONCEPT);
                    w.u128(id.0);
                }
                Forget::Association { source, target, relation, kind } => {
                    w.u8(FORGET_ASSOCIATION);
                    w.u128(source.0);
                    w.u128(target.0);
                    w.str(relation);
                    w.u8(kind.map_or(0, |k| k as u8));
                }
            }
        }
    }
    w.buf
}

const FORGET_CONCEPT: u8 = 1;
const FORGET_ASSOCIATION: u8 = 2;

fn decode_forget(r: &mut Reader<'_>) -> Result<Forget, DecodeError> {
    let at = r.pos();
    match r.u8("forget tag")? {
        FORGET_CONCEPT => Ok(Forget::Concept(ConceptId(r.u128("concept")?))),
        FORGET_ASSOCIATION => {
            let source = ConceptId(r.u128("source")?);
            let target = ConceptId(r.u128("target")?);
            let relation = r.str(limits::RELATION_BYTES_MAX, "relation")?.to_string();
            let at = r.pos();
            let kind = match r.u8("kind")? {
                0 => None,
                k => Some(AssocKind::from_u8(k).ok_or(DecodeError { offset: at, what: "kind" })?),
            };
            Ok(Forget::Association { source, target, relation, kind })
        }
        _ => Err(DecodeError { offset: at, what: "forget tag" }),
    }
}

pub fn encode_association(w: &mut Writer, a: &Association) {
    w.u128(a.source.0);
    w.u128(a.target.0);
    w.u8(a.kind as u8);
    w.str(&a.relation);
    w.f32(a.confidence);
    w.str(&a.evidence);
}

pub fn decode_association(r: &mut Reader<'_>) -> Result<Association, DecodeError> {
    let source = ConceptId(r.u128("source")?);
    let target = ConceptId(r.u128("target")?);
    let at = r.pos();
    let kind = AssocKind::from_u8(r.u8("kind")?).ok_or(DecodeError { offset: at, what: "kind" })?;
    Ok(Association {
        source,
        target,
        kind,
        relation: r.str(limits::RELATION_BYTES_MAX, "relation")?.to_string(),
        confidence: r.f32("confidence")?,
        evidence: r.str(limits::EVIDENCE_BYTES_MAX, "evidence")?.to_string(),
    })
}

pub fn decode(payload: &[u8]) -> Result<(u64, WriteBatch), DecodeError> {
    let mut r = Reader::new(payload);
    let ts = r.u64("timestamp")?;
    let n = r.u32("concept count")? as usize;
    if n > limits::BATCH_ITEMS_MAX {
        return Err(DecodeError { offset: r.pos(), what: "concept count" });
    }
    let mut b = WriteBatch::default();
    for _ in 0..n {
        b.concepts.push(ConceptWrite {
            label: r.str(limits::LABEL_BYTES_MAX, "label")?.to_string(),
            content: r.str(limits::CONTENT_BYTES_MAX, "content")?.to_string(),
            vector: r.f32s(limits::VECTOR_DIM_MAX, "vector")?,
            confidence: r.f32("confidence")?,
        });
    }
    let n = r.u32("association count")? as usize;
    if n > limits::BATCH_ITEMS_MAX {
        return Err(DecodeError { offset: r.pos(), what: "association count" });
    }
    for _ in 0..n {
        b.associations.push(decode_association(&mut r)?);
    }
    if r.pos() < payload.len() {
        let n = r.u32("forget count")? as usize;
        if n > limits::BATCH_ITEMS_MAX {
            return Err(DecodeError { offset: r.pos(), what: "forget count" });
        }
        for _ in 0..n {
            b.forget.push(decode_forget(&mut r)?);
        }
    }
    r.expect_end("batch")?;
    Ok((ts, b))
}
