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
];

/// Relation verbs: (base, third person, past, past participle, relation, kind). Each gives the
/// active forms ("aspirin treats headache", "antibiotics treat", "Fleming discovered") and the
/// passive ones ("headache is treated by aspirin", "… was treated with …"), which reverse the
/// slots. Tried after the phrases above, longest phrase first.
const VERBS: &[(&str, &str, &str, &str, &str, AssocKind)] = &[
    ("treat", "treats", "treated", "treated", "treats", AssocKind::Causal),
    ("cure", "cures", "cured", "cured", "treats", AssocKind::Causal),
    ("cause", "causes", "caused", "caused", "causes", AssocKind::Causal),
    ("trigger", "triggers", "triggered", "triggered", "causes", AssocKind::Causal),
    ("induce", "induces", "induced", "induced", "causes", AssocKind::Causal),
    ("prevent", "prevents", "prevented", "prevented", "prevents", AssocKind::Causal),
    ("inhibit", "inhibits", "inhibited", "inhibited", "inhibits", AssocKind::Causal),
    ("block", "blocks", "blocked", "blocked", "inhibits", AssocKind::Causal),
    ("reduce", "reduces", "reduced", "reduced", "reduces", AssocKind::Causal),
    ("lower", "lowers", "lowered", "lowered", "reduces", AssocKind::Causal),
    ("increase", "increases", "increased", "increased", "increases", AssocKind::Causal),
    ("raise", "raises", "raised", "raised", "increases", AssocKind::Causal),
    ("produce", "produces", "produced", "produced", "produces", AssocKind::Causal),
    ("create", "creates", "created", "created", "produces", AssocKind::Causal),
    ("generate", "generates", "generated", "generated", "produces", AssocKind::Causal),
    ("kill", "kills", "killed", "killed", "kills", AssocKind::Causal),
    ("damage", "damages", "damaged", "damaged", "damages", AssocKind::Causal),
    ("affect", "affects", "affected", "affected", "affects", AssocKind::Causal),
    ("activate", "activates", "activated", "activated", "activates", AssocKind::Causal),
    ("regulate", "regulates", "regulated", "regulated", "regulates", AssocKind::Causal),
    ("protect", "protects", "protected", "protected", "protects", AssocKind::Causal),
    ("contain", "contains", "contained", "contained", "has_part", AssocKind::Compositional),
    ("include", "includes", "included", "included", "has_part", AssocKind::Compositional),
    ("comprise", "comprises", "comprised", "comprised", "has_part", AssocKind::Compositional),
    ("require", "requires", "required", "required", "requires", AssocKind::Semantic),
    ("need", "needs", "needed", "needed", "requires", AssocKind::Semantic),
    ("use", "uses", "used", "used", "uses", AssocKind::Semantic),
    ("eat", "eats", "ate", "eaten", "eats", AssocKind::Semantic),
    ("feed on", "feeds on", "fed on", "fed on", "eats", AssocKind::Semantic),
    ("write", "writes", "wrote", "written", "author_of", AssocKind::Semantic),
    ("invent", "invents", "invented", "invented", "invented", AssocKind::Semantic),
    ("discover", "discovers", "discovered", "discovered", "discovered", AssocKind::Semantic),
    ("found", "founds", "founded", "founded", "founded", AssocKind::Semantic),
    ("build", "builds", "built", "built", "built", AssocKind::Semantic),
    ("design", "designs", "designed", "designed", "designed", AssocKind::Semantic),
    ("paint", "paints", "painted", "painted", "painted", AssocKind::Semantic),
    ("compose", "composes", "composed", "composed", "composed", AssocKind::Semantic),
    ("own", "owns", "owned", "owned", "owns", AssocKind::Semantic),
    ("support", "supports", "supported", "supported", "supports", AssocKind::Semantic),
    ("replace", "replaces", "replaced", "replaced", "replaces", AssocKind::Semantic),
    ("depend on", "depends on", "depended on", "depended on", "depends_on", AssocKind::Semantic),
    ("live in", "lives in", "lived in", "lived in", "lives_in", AssocKind::Semantic),
    ("work for", "works for", "worked for", "worked for", "works_for", AssocKind::Semantic),
    ("orbit", "orbits", "orbited", "orbited", "orbits", AssocKind::Semantic),
    ("connect to", "connects to", "connected to", "connected to", "connected_to", AssocKind::Semantic),
    ("border", "borders", "bordered", "bordered", "borders", AssocKind::Semantic),
    ("speak", "speaks", "spoke", "spoken", "speaks", AssocKind::Semantic),
    ("border on", "borders on", "bordered on", "bordered on", "borders", AssocKind::Semantic),
    ("transmit", "transmits", "transmitted", "transmitted", "transmits", AssocKind::Causal),
    ("convert", "converts", "converted", "converted", "converts", AssocKind::Causal),
    ("become", "becomes", "became", "become", "becomes", AssocKind::Temporal),
    ("have", "has", "had", "had", "has_part", AssocKind::Compositional),
];

/// Copular phrases tried last: they match almost anything.
const COPULAS: &[(&str, &str, AssocKind, Dir)] = &[
    ("is an", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("is a", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("was an", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("was a", "is_a", AssocKind::Hierarchical, Dir::Forward),
    ("are", "is_a", AssocKind::Hierarchical, Dir::Forward),
];

/// Words dropped before matching: modals and frequency adverbs between subject and verb
/// ("aspirin can often treat headaches" reads as "aspirin treat headaches").
const FILLERS: &[&str] = &[
    "can",
    "may",
    "might",
    "could",
    "will",
    "would",
    "should",
    "must",
    "often",
    "usually",
    "also",
    "sometimes",
    "commonly",
    "typically",
    "frequently",
    "generally",
    "mainly",
    "mostly",
    "directly",
    "effectively",
    "always",
    "primarily",
    "largely",
    "helps",
    "help",
    "actually",
    "really",
    "strongly",
    "significantly",
    "greatly",
    "slightly",
    "naturally",
    "originally",
    "first",
];

/// Every (phrase, relation, kind, direction) the extractor knows, in the order it tries them.
fn patterns() -> &'static [(String, &'static str, AssocKind, Dir)] {
    static ALL: std::sync::OnceLock<Vec<(String, &'static str, AssocKind, Dir)>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut out: Vec<(String, &'static str, AssocKind, Dir)> =
            PATTERNS.iter().map(|(p, r, k, d)| (p.to_string(), *r, *k, *d)).collect();
        let mut verbs = Vec::new();
        for (base, third, past, participle, rel, kind) in VERBS {
            for aux in ["is", "are", "was", "were", "be", "been", "being"] {
                let preps: &[&str] = if matches!(*base, "contain" | "include") { &["in"] } else { &["by", "with"] };
                for by in preps {
                    verbs.push((format!("{aux} {participle} {by}"), *rel, *kind, Dir::Reverse));
                }
            }
            for active in [third, base, past] {
                verbs.push((active.to_string(), *rel, *kind, Dir::Forward));
            }
            verbs.push((format!("has {participle}"), *rel, *kind, Dir::Forward));
            verbs.push((format!("have {participle}"), *rel, *kind, Dir::Forward));
        }
        // Longest first, so "is treated by" wins over "treated"; the sort is stable.
        verbs.sort_by_key(|(p, ..)| std::cmp::Reverse(p.split(' ').count()));
        for v in verbs {
            if !out.iter().any(|(p, ..)| *p == v.0) {
                out.push(v);
            }
        }
        out.extend(COPULAS.iter().map(|(p, r, k, d)| (p.to_string(), *r, *k, *d)));
        out
    })
}

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
    let all: Vec<&str> = body.split_whitespace().collect();
    if all.iter().any(|w| NEGATIONS.contains(&w.to_lowercase().as_str())) {
        return None;
    }
    // Fillers go, except a first or last word (a label may be "Will" or end in "use").
    let words: Vec<&str> = all
        .iter()
        .enumerate()
        .filter(|(i, w)| *i == 0 || *i + 1 == all.len() || !FILLERS.contains(&w.to_lowercase().as_str()))
        .map(|(_, w)| *w)
        .collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_lowercase().trim_end_matches(',').to_string()).collect();
    // "X is the R of Y": any R becomes the relation r_of (Semantic), e.g. capital_of.
    if let Some(t) = the_r_of(&words, &lower, s) {
        return Some(t);
    }
    for (phrase, relation, kind, dir) in patterns() {
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

    /// Correct extractions on the fixture when it was written (see the test below).
    const EXTRACTION_CORRECT_MIN: usize = 157;

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
            patterns().iter().map(|p| p.2).chain([AssocKind::Semantic]).collect();
        assert_eq!(kinds.len(), 5, "the patterns cover all five kinds");
        assert!(PATTERNS.len() >= 12);
    }

    /// The extraction rate on a fixed set of 200 varied sentences (`extract_sentences.tsv`):
    /// printed, and held at or above the rate measured when the verbs were added. A sentence
    /// labelled `-` must yield nothing; a triple that differs from its label counts as wrong.
    #[test]
    fn extraction_rate_on_the_fixture() {
        let (mut total, mut expected, mut correct, mut wrong, mut refused) = (0, 0, 0, Vec::new(), 0);
        for line in include_str!("extract_sentences.tsv").lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (sentence, want) = line.split_once('\t').expect("sentence TAB label");
            total += 1;
            let got = extract_sentence(sentence).map(|t| format!("{}|{}|{}", t.subject, t.relation, t.object));
            match (want, got) {
                ("-", None) => refused += 1,
                ("-", Some(g)) => wrong.push(format!("{sentence}: got {g}, want none")),
                (w, g) => {
                    expected += 1;
                    match g {
                        Some(g) if g == w => correct += 1,
                        Some(g) => wrong.push(format!("{sentence}: got {g}, want {w}")),
                        None => {}
                    }
                }
            }
        }
        eprintln!(
            "extraction: {correct} of {expected} sentences with a fact extracted correctly ({:.0}%), {} wrong, \
             {refused} of {} without one refused",
            100.0 * correct as f64 / expected as f64,
            wrong.len(),
            total - expected
        );
        for w in &wrong {
            eprintln!("  {w}");
        }
        assert_eq!(total, 200);
        assert!(wrong.iter().all(|w| !w.ends_with("want none")), "a sentence without a fact yielded one: {wrong:?}");
        assert!(correct >= EXTRACTION_CORRECT_MIN, "{correct} correct, fewer than {EXTRACTION_CORRECT_MIN}");
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
