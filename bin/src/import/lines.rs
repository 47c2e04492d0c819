//! The line formats `sutra import` reads: jsonl and csv, one concept or association a line.
//! Self-contained (the integration tests include it by path).

use anyhow::{bail, Context, Result};
use sutra_grid::api::{AssociationIn, ConceptIn};

/// One thing to import.
#[derive(Debug)]
pub enum Item {
    Concept(ConceptIn),
    Association(AssociationIn),
}

/// A jsonl line: a concept (`{"label", "content"?, "vector"?, "confidence"?}`) or an association
/// (`{"source", "target", "relation", "kind"?, "confidence"?, "evidence"?}`).
pub fn parse_jsonl_line(line: &str) -> Result<Item> {
    let v: serde_json::Value = serde_json::from_str(line).context("not JSON")?;
    if v.get("label").is_some() {
        Ok(Item::Concept(sutra_grid::api::parse_json(line.as_bytes()).map_err(|e| anyhow::anyhow!(e.message))?))
    } else if v.get("source").is_some() {
        Ok(Item::Association(sutra_grid::api::parse_json(line.as_bytes()).map_err(|e| anyhow::anyhow!(e.message))?))
    } else {
        bail!("neither a concept (\"label\") nor an association (\"source\")")
    }
}

/// A csv line: `subject,relation,object[,kind[,confidence]]`, fields optionally "quoted".
pub fn parse_csv_line(line: &str) -> Result<Item> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(line.as_bytes());
    let rec = rdr.records().next().context("empty line")?.context("not CSV")?;
    let f: Vec<&str> = rec.iter().map(str::trim).collect();
    if !(3..=5).contains(&f.len()) {
        bail!("expected subject,relation,object[,kind[,confidence]], got {} fields", f.len());
    }
    if f[..3].iter().any(|x| x.is_empty()) {
        bail!("subject, relation and object must not be empty");
    }
    let confidence = match f.get(4).filter(|c| !c.is_empty()) {
        Some(c) => Some(c.parse::<f32>().with_context(|| format!("confidence '{c}' is not a number"))?),
        None => None,
    };
    Ok(Item::Association(AssociationIn {
        source: f[0].to_string(),
        target: f[2].to_string(),
        relation: f[1].to_string(),
        kind: f.get(3).filter(|k| !k.is_empty()).map(|k| k.to_string()),
        confidence,
        evidence: String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_parse_with_optional_columns_and_quotes() {
        let Item::Association(a) = parse_csv_line("Paris,capital_of,France").unwrap() else { panic!() };
        assert_eq!((a.source.as_str(), a.relation.as_str(), a.target.as_str()), ("Paris", "capital_of", "France"));
        assert_eq!((a.kind, a.confidence), (None, None));
        let Item::Association(a) =
            parse_csv_line("\"Washington, D.C.\",capital_of,United States,hierarchical,0.9").unwrap()
        else {
            panic!()
        };
        assert_eq!(a.source, "Washington, D.C.");
        assert_eq!((a.kind.as_deref(), a.confidence), (Some("hierarchical"), Some(0.9)));
        assert!(parse_csv_line("a,b").is_err());
        assert!(parse_csv_line("a,b,c,semantic,high").is_err());
        assert!(parse_csv_line("a,,c").is_err());
    }

    #[test]
    fn jsonl_lines_are_concepts_or_associations() {
        assert!(matches!(parse_jsonl_line(r#"{"label": "Paris", "content": "city"}"#), Ok(Item::Concept(_))));
        assert!(matches!(
            parse_jsonl_line(r#"{"source": "Paris", "target": "France", "relation": "capital_of"}"#),
            Ok(Item::Association(_))
        ));
        let e = parse_jsonl_line(r#"{"label": "Paris", "colour": "blue"}"#).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(parse_jsonl_line(r#"{"x": 1}"#).is_err());
        assert!(parse_jsonl_line("{").is_err());
    }
}
