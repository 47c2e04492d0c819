//! The bundled sample knowledge set loaded by `sutra dev`.

use sutra_grid::ids::ConceptId;
use sutra_grid::model::{AssocKind, Association, ConceptWrite, WriteBatch};

const SAMPLE: &str = include_str!("../data/sample.tsv");

/// Parses the sample into one batch; every subject and object becomes a concept.
pub fn batch() -> anyhow::Result<WriteBatch> {
    let mut b = WriteBatch::default();
    let mut seen = std::collections::HashMap::new();
    let mut add = |b: &mut WriteBatch, label: &str, content: &str| {
        let id = ConceptId::from_label(label);
        match seen.get(&id) {
            Some(&i) => {
                let c: &mut ConceptWrite = &mut b.concepts[i];
                if c.content.is_empty() {
                    c.content = content.to_string();
                }
            }
            None => {
                seen.insert(id, b.concepts.len());
                b.concepts.push(ConceptWrite {
                    label: label.into(),
                    content: content.into(),
                    vector: vec![],
                    confidence: 1.0,
                });
            }
        }
        id
    };
    for (n, line) in SAMPLE.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["@", label, content] => {
                add(&mut b, label, content);
            }
            [s, rel, o, kind, conf] => {
                let source = add(&mut b, s, "");
                let target = add(&mut b, o, "");
                let kind =
                    AssocKind::parse(kind).ok_or_else(|| anyhow::anyhow!("sample line {}: bad kind {kind}", n + 1))?;
                b.associations.push(Association {
                    source,
                    target,
                    kind,
                    relation: rel.to_string(),
                    confidence: conf.parse()?,
                    evidence: format!("{} {} {}", s.replace('_', " "), rel.replace('_', " "), o.replace('_', " ")),
                });
            }
            _ => anyhow::bail!("sample line {}: expected 3 or 5 tab-separated fields", n + 1),
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_sample_parses_and_validates() {
        let b = super::batch().unwrap();
        assert!(b.concepts.len() >= 80, "{}", b.concepts.len());
        sutra_grid::model::validate_batch(&b, sutra_grid::limits::VECTOR_DIM_DEFAULT).unwrap();
    }
}
