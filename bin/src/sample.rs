//! The bundled sample knowledge set loaded by `sutra dev`.

use sutra_grid::api::{AssociationIn, ConceptIn, LearnRequest};
use sutra_grid::model::AssocKind;

const SAMPLE: &str = include_str!("../data/sample.tsv");

/// Parses the sample into one `/learn` request; every subject and object becomes a concept
/// (described when an "@" line describes it).
pub fn request() -> anyhow::Result<LearnRequest> {
    let mut r = LearnRequest::default();
    let mut seen = std::collections::HashMap::new();
    let mut add = |r: &mut LearnRequest, label: &str, content: &str| {
        let key = sutra_grid::model::normalise_label(label);
        match seen.get(&key) {
            Some(&i) => {
                let c: &mut ConceptIn = &mut r.concepts[i];
                if c.content.is_empty() {
                    c.content = content.to_string();
                }
            }
            None => {
                seen.insert(key, r.concepts.len());
                r.concepts.push(ConceptIn { label: label.into(), content: content.into(), ..Default::default() });
            }
        }
    };
    for (n, line) in SAMPLE.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["@", label, content] => add(&mut r, label, content),
            [s, rel, o, kind, conf] => {
                add(&mut r, s, "");
                add(&mut r, o, "");
                if AssocKind::parse(kind).is_none() {
                    anyhow::bail!("sample line {}: bad kind {kind}", n + 1);
                }
                r.associations.push(AssociationIn {
                    source: s.to_string(),
                    target: o.to_string(),
                    kind: Some(kind.to_string()),
                    relation: rel.to_string(),
                    confidence: Some(conf.parse()?),
                    evidence: format!("{} {} {}", s.replace('_', " "), rel.replace('_', " "), o.replace('_', " ")),
                });
            }
            _ => anyhow::bail!("sample line {}: expected 3 or 5 tab-separated fields", n + 1),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_sample_parses() {
        let r = super::request().unwrap();
        assert!(r.concepts.len() >= 250, "{}", r.concepts.len());
        assert!(r.associations.len() >= 250, "{}", r.associations.len());
        for needed in ["Paris", "France", "Eiffel_Tower", "Medical_Diagnosis", "Financial_Fraud"] {
            assert!(r.concepts.iter().any(|c| c.label == needed), "{needed}");
        }
    }
}
