//! Whole-batch validation: every item is checked before anything is logged, and a rejection
//! names every bad item by index with its reason.

use std::fmt;

use super::{Forget, WriteBatch};
use crate::limits;

#[derive(Clone, Debug, PartialEq)]
pub struct ItemError {
    /// "concepts" or "associations".
    pub list: &'static str,
    pub index: usize,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BatchRejected {
    pub errors: Vec<ItemError>,
    /// Bad items beyond `limits::BATCH_ERRORS_LISTED_MAX` that are counted but not listed.
    pub unlisted: usize,
}

impl fmt::Display for BatchRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch rejected, nothing written: ")?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{}[{}]: {}", e.list, e.index, e.reason)?;
        }
        if self.unlisted > 0 {
            write!(f, "; and {} more bad items", self.unlisted)?;
        }
        Ok(())
    }
}

impl std::error::Error for BatchRejected {}

fn check_confidence(c: f32) -> Option<String> {
    if c.is_nan() {
        Some("confidence is NaN".into())
    } else if !(0.0..=1.0).contains(&c) {
        Some(format!("confidence {c} is outside [0, 1]"))
    } else {
        None
    }
}

fn check_len(what: &str, s: &str, max: usize) -> Option<String> {
    (s.len() > max).then(|| format!("{what} is {} bytes; at most {max} allowed", s.len()))
}

/// Checks a batch against the model's limits. `vector_dim` is the grid's configured width.
pub fn validate_batch(batch: &WriteBatch, vector_dim: usize) -> Result<(), BatchRejected> {
    let mut errors = Vec::new();
    let mut unlisted = 0usize;
    let mut push = |list, index, reason: String| {
        if errors.len() < limits::BATCH_ERRORS_LISTED_MAX {
            errors.push(ItemError { list, index, reason });
        } else {
            unlisted += 1;
        }
    };
    if batch.items() > limits::BATCH_ITEMS_MAX {
        push("batch", 0, format!("{} items; at most {} allowed per batch", batch.items(), limits::BATCH_ITEMS_MAX));
    }
    let mut bytes = 0usize;
    for (i, c) in batch.concepts.iter().enumerate() {
        bytes += c.label.len() + c.content.len() + c.vector.len() * 4 + 16;
        let mut reasons = Vec::new();
        if super::label_is_blank(&c.label) {
            reasons.push("label is empty".to_string());
        }
        reasons.extend(check_len("label", &c.label, limits::LABEL_BYTES_MAX));
        reasons.extend(check_len("content", &c.content, limits::CONTENT_BYTES_MAX));
        if !c.vector.is_empty() && c.vector.len() != vector_dim {
            reasons.push(format!("vector has {} dimensions; this grid uses {vector_dim}", c.vector.len()));
        }
        if c.vector.iter().any(|x| !x.is_finite()) {
            reasons.push("vector has a NaN or infinite component".into());
        }
        reasons.extend(check_confidence(c.confidence));
        for r in reasons {
            push("concepts", i, r);
        }
    }
    for (i, a) in batch.associations.iter().enumerate() {
        bytes += a.relation.len() + a.evidence.len() + 48;
        let mut reasons = Vec::new();
        if a.relation.trim().is_empty() {
            reasons.push("relation is empty".to_string());
        }
        reasons.extend(check_len("relation", &a.relation, limits::RELATION_BYTES_MAX));
        reasons.extend(check_len("evidence", &a.evidence, limits::EVIDENCE_BYTES_MAX));
        reasons.extend(check_confidence(a.confidence));
        for r in reasons {
            push("associations", i, r);
        }
    }
    for (i, f) in batch.forget.iter().enumerate() {
        if let Forget::Association { relation, .. } = f {
            bytes += relation.len() + 48;
            if relation.trim().is_empty() {
                push("forget", i, "relation is empty".to_string());
            }
            if let Some(r) = check_len("relation", relation, limits::RELATION_BYTES_MAX) {
                push("forget", i, r);
            }
        }
    }
    if bytes > limits::BATCH_BYTES_MAX {
        push("batch", 0, format!("{bytes} bytes; at most {} allowed per batch", limits::BATCH_BYTES_MAX));
    }
    if errors.is_empty() && unlisted == 0 {
        Ok(())
    } else {
        Err(BatchRejected { errors, unlisted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConceptId;
    use crate::model::{AssocKind, Association, ConceptWrite};

    fn concept(label: &str) -> ConceptWrite {
        ConceptWrite { label: label.into(), content: "c".into(), vector: vec![], confidence: 1.0 }
    }

    #[test]
    fn every_bad_item_is_named_with_its_index() {
        let mut b = WriteBatch::default();
        b.concepts.push(concept("ok"));
        b.concepts.push(concept(&"x".repeat(300)));
        b.concepts.push(ConceptWrite { confidence: f32::NAN, ..concept("nan") });
        b.concepts.push(ConceptWrite { vector: vec![0.5; 3], ..concept("vec") });
        b.associations.push(Association {
            source: ConceptId::from_label("a"),
            target: ConceptId::from_label("b"),
            kind: AssocKind::Causal,
            relation: "causes".into(),
            confidence: 1.5,
            evidence: String::new(),
        });
        let err = validate_batch(&b, 8).unwrap_err();
        let at: Vec<_> = err.errors.iter().map(|e| (e.list, e.index)).collect();
        assert_eq!(at, vec![("concepts", 1), ("concepts", 2), ("concepts", 3), ("associations", 0)]);
        let msg = err.to_string();
        assert!(msg.contains("concepts[1]: label is 300 bytes"), "{msg}");
        assert!(msg.contains("NaN"), "{msg}");
        assert!(msg.contains("3 dimensions; this grid uses 8"), "{msg}");
        assert!(msg.contains("associations[0]: confidence 1.5"), "{msg}");
    }

    #[test]
    fn a_good_batch_passes() {
        let mut b = WriteBatch::default();
        b.concepts.push(ConceptWrite { vector: vec![0.1; 8], ..concept("Paris") });
        assert!(validate_batch(&b, 8).is_ok());
    }

    #[test]
    fn huge_error_lists_are_cut_short_but_counted() {
        let mut b = WriteBatch::default();
        for _ in 0..150 {
            b.concepts.push(concept(""));
        }
        let err = validate_batch(&b, 8).unwrap_err();
        assert_eq!(err.errors.len(), limits::BATCH_ERRORS_LISTED_MAX);
        assert_eq!(err.unlisted, 50);
    }
}
