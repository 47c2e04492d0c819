//! Learning from text (architecture.md §2): a deterministic extractor that turns simple English
//! sentences into (subject, relation, object) triples. No model, no network: a sentence either
//! matches one of the patterns below or yields nothing (and is still stored as a concept by the
//! caller). Questions and negated sentences never yield a triple.

use super::AssocKind;
use crate::limits;

/// One extracted association, with the sentence it came from as evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Triple {
    pub subject: String,
    pub relation: String,
    pub object: String,
    pub kind: AssocKind,
    pub evidence: String,
}

/// Which way a pattern's slots map onto the association.
#[derive(Copy, Clone, PartialEq)]
enum Dir {
    /// "X <phrase> Y" → X —rel→ Y.
    Forward,
    /// "X <phrase> Y" → Y —rel→ X ("X is caused by Y" → Y causes X).
    Reverse,
}

/// (phrase between the two slots, relation, kind, direction). Longer phrases come first, so
/// "is a part of" wins over "is a".
const PATTERNS: &[(&str, &str, AssocKind, Dir)] = &[
    ("is a kind of", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("is a type of", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("is a part of", "part_of", AssocKind::Compositional, Dir::Forward),
    ("is a member of", "member_of", AssocKind::Compositional, Dir::Forward),
    ("is part of", "part_of", AssocKind::Compositional, Dir::Forward),
    ("are part of", "part_of", AssocKind::Compositional, Dir::Forward),
    ("belongs to", "member_of", AssocKind::Compositional, Dir::Forward),
    ("consists of", "has_part", AssocKind::Compositional, Dir::Forward),
    ("contains", "has_part", AssocKind::Compositional, Dir::Forward),
    ("is caused by", "causes", AssocKind::Causal, Dir::Reverse),
    ("are caused by", "causes", AssocKind::Causal, Dir::Reverse),
    ("leads to", "causes", AssocKind::Causal, Dir::Forward),
    ("lead to", "causes", AssocKind::Causal, Dir::Forward),
    ("results in", "causes", AssocKind::Causal, Dir::Forward),
    ("causes", "causes", AssocKind::Causal, Dir::Forward),
    ("cause", "causes", AssocKind::Causal, Dir::Forward),
    ("prevents", "prevents", AssocKind::Causal, Dir::Forward),
    ("enables", "enables", AssocKind::Causal, Dir::Forward),
    ("happens before", "before", AssocKind::Temporal, Dir::Forward),
    ("comes before", "before", AssocKind::Temporal, Dir::Forward),
    ("precedes", "before", AssocKind::Temporal, Dir::Forward),
    ("happens after", "before", AssocKind::Temporal, Dir::Reverse),
    ("comes after", "before", AssocKind::Temporal, Dir::Reverse),
    ("follows", "before", AssocKind::Temporal, Dir::Reverse),
    ("is located in", "located_in", AssocKind::Semantic, Dir::Forward),
    ("is similar to", "similar_to", AssocKind::Semantic, Dir::Forward),
    ("is related to", "related_to", AssocKind::Semantic, Dir::Forward),
    ("is used for", "used_for", AssocKind::Semantic, Dir::Forward),
    ("is an", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("is a", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("are", "is_a", AssocKind::Hierarchical, Dir::Forward),
];

/// Words that make a sentence say the opposite of its pattern.
const NEGATIONS: &[&str] = &["not", "never", "no", "isn't", "aren't", "doesn't", "don't", "cannot", "can't"];

/// Splits `text` into sentences and extracts at most one triple from each.
pub fn extract(text: &str) -> Vec<Triple> {
    sentences(text).filter_map(extract_sentence).collect()
}

/// The sentences of `text`: split after `.`, `!`, `?` or `;`, trimmed, empty ones dropped.
/// A sentence keeps its final mark (questions are recognised by it).
pub fn sentences(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive(['.', '!', '?', ';', '\n']).map(str::trim).filter(|s| !s.is_empty())
}

/// One sentence → at most one triple.
pub fn extract_sentence(sentence: &str) -> Option<Triple> {
    let s = sentence.trim();
    if s.ends_with('?') {
        return None;
    }
    let body = s.trim_end_matches(['.', '!', ';']).trim();
    let words: Vec<&str> = body.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
    if lower.iter().any(|w| NEGATIONS.contains(&w.as_str())) {
        return None;
    }
    // "X is the R of Y": any R becomes the relation r_of (Semantic), e.g. capital_of.
    if let Some(t) = the_r_of(&words, &lower, s) {
        return Some(t);
    }
    for (phrase, relation, kind, dir) in PATTERNS {
        let p: Vec<&str> = phrase.split(' ').collect();
        // The first place the phrase occurs with words on both sides.
        let Some(at) = (1..lower.len().saturating_sub(p.len())).find(|&i| lower[i..i + p.len()].iter().eq(p.iter()))
        else {
            continue;
        };
        let (x, y) = (label(&words[..at])?, label(&words[at + p.len()..])?);
        let (subject, object) = if *dir == Dir::Forward { (x, y) } else { (y, x) };
        return Some(Triple { subject, relation: relation.to_string(), object, kind: *kind, evidence: evidence(s) });
    }
    None
}

fn the_r_of(words: &[&str], lower: &[String], s: &str) -> Option<Triple> {
    let is = lower.iter().position(|w| w == "is" || w == "was")?;
    if lower.get(is + 1).map(String::as_str) != Some("the") {
        return None;
    }
    let of = (is + 3..lower.len().saturating_sub(1)).find(|&i| lower[i] == "of")?;
    let rel_words = &lower[is + 2..of];
    if rel_words.is_empty() || rel_words.len() > 3 {
        return None;
    }
    let mut relation: String = rel_words.join("_");
    relation.retain(|c| c.is_alphanumeric() || c == '_');
    relation.push_str("_of");
    if relation.len() > limits::RELATION_BYTES_MAX || relation == "_of" {
        return None;
    }
    let (subject, object) = (label(&words[..is])?, label(&words[of + 1..])?);
    Some(Triple { subject, relation, object, kind: AssocKind::Semantic, evidence: evidence(s) })
}

/// A slot's words as a concept label: a leading article dropped, surrounding punctuation
/// trimmed; None when nothing is left or it is too long to be a label.
fn label(words: &[&str]) -> Option<String> {
    let words = match words.first().map(|w| w.to_lowercase()) {
        Some(w) if words.len() > 1 && matches!(w.as_str(), "the" | "a" | "an") => &words[1..],
        _ => words,
    };
    let l = words.join(" ");
    let l = l.trim_matches(|c: char| !c.is_alphanumeric()).to_string();
    (!l.is_empty() && l.len() <= limits::LABEL_BYTES_MAX).then_some(l)
}

fn evidence(s: &str) -> String {
    let mut e = s.to_string();
    if e.len() > limits::EVIDENCE_BYTES_MAX {
        let mut cut = limits::EVIDENCE_BYTES_MAX;
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        e.truncate(cut);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> (String, String, String, AssocKind) {
        let t = extract_sentence(s).unwrap_or_else(|| panic!("no triple from {s:?}"));
        (t.subject, t.relation, t.object, t.kind)
    }

    fn t(s: &str, r: &str, o: &str, k: AssocKind) -> (String, String, String, AssocKind) {
        (s.into(), r.into(), o.into(), k)
    }

    #[test]
    fn sentences_that_must_produce_triples() {
        use AssocKind::*;
        let cases = [
            ("Paris is the capital of France.", t("Paris", "capital_of", "France", Semantic)),
            ("The Eiffel Tower is located in Paris.", t("Eiffel Tower", "located_in", "Paris", Semantic)),
            ("A dog is a mammal", t("dog", "is_a", "mammal", Hierarchical)),
            ("An oak is a kind of tree.", t("oak", "is_a", "tree", Hierarchical)),
            ("Dogs are mammals.", t("Dogs", "is_a", "mammals", Hierarchical)),
            ("The wheel is part of the car.", t("wheel", "part_of", "car", Compositional)),
            ("France is a member of the European Union.", t("France", "member_of", "European Union", Compositional)),
            ("Water consists of hydrogen and oxygen.", t("Water", "has_part", "hydrogen and oxygen", Compositional)),
            ("Smoking causes cancer.", t("Smoking", "causes", "cancer", Causal)),
            ("Cancer is caused by smoking.", t("smoking", "causes", "Cancer", Causal)),
            (
                "Medical diagnosis leads to insurance claims.",
                t("Medical diagnosis", "causes", "insurance claims", Causal),
            ),
            ("Vaccination prevents disease!", t("Vaccination", "prevents", "disease", Causal)),
            ("Breakfast happens before lunch.", t("Breakfast", "before", "lunch", Temporal)),
            ("Dinner happens after lunch.", t("lunch", "before", "Dinner", Temporal)),
            ("Spring precedes summer.", t("Spring", "before", "summer", Temporal)),
            ("A violin is similar to a viola.", t("violin", "similar_to", "viola", Semantic)),
            ("Newton was the author of Principia.", t("Newton", "author_of", "Principia", Semantic)),
        ];
        for (s, want) in cases {
            assert_eq!(one(s), want, "{s}");
        }
        let kinds: std::collections::BTreeSet<AssocKind> =
            PATTERNS.iter().map(|p| p.2).chain([AssocKind::Semantic]).collect();
        assert_eq!(kinds.len(), 5, "the patterns cover all five kinds");
        assert!(PATTERNS.len() >= 12);
    }

    #[test]
    fn sentences_that_must_not() {
        for s in [
            "What is the capital of France?",
            "Is a dog a mammal?",
            "Smoking does not cause happiness.",
            "A whale is not a fish.",
            "The weather is nice today.",
            "Hello.",
            "causes",
            "is a",
            "",
            "   ",
            "The the of of.",
        ] {
            assert_eq!(extract_sentence(s), None, "{s:?}");
        }
    }

    #[test]
    fn text_splits_into_sentences_with_evidence() {
        let got = extract("Paris is the capital of France. Is it big? Smoking causes cancer; The sky is blue.");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].evidence, "Paris is the capital of France.");
        assert_eq!(got[1].subject, "Smoking");
    }

    #[test]
    fn any_input_is_handled_without_panicking() {
        let long = "x".repeat(100_000);
        for s in
            [long.as_str(), "é is a ü.", "a is a", "\u{0}\u{1} is a \u{2}", "is the of x", "x is the a b c d e of y"]
        {
            let _ = extract(s);
        }
        let big = format!("{long} is a thing.");
        assert_eq!(extract_sentence(&big), None, "a label longer than a label may be is refused");
    }
}
