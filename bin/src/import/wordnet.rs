//! WordNet 3.0 database files (`data.*`, `index.*`, as Debian's `wordnet-base` installs them)
//! into concepts and associations. Labels are exactly NLTK's `Synset.name()`: the synset's first
//! lemma, lowercased, its part of speech (`s` for adjective satellites) and its sense number,
//! which is the synset's position in that lemma's `index.*` line (adjective satellites use
//! `index.adj`). Word-to-word pointers are lifted to their synsets.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sutra_grid::api::{AssociationIn, ConceptIn};

const POS: [(&str, char); 4] = [("noun", 'n'), ("verb", 'v'), ("adj", 'a'), ("adv", 'r')];

/// WordNet's pointer symbols → (relation, kind), per part of speech where they differ.
fn relation(symbol: &str, pos: char) -> Option<(&'static str, &'static str)> {
    let r = match symbol {
        "!" => ("antonym", "semantic"),
        "@" => ("hypernym", "hierarchical"),
        "@i" => ("instance_hypernym", "hierarchical"),
        "~" => ("hyponym", "hierarchical"),
        "~i" => ("instance_hyponym", "hierarchical"),
        "#m" => ("member_holonym", "compositional"),
        "#s" => ("substance_holonym", "compositional"),
        "#p" => ("part_holonym", "compositional"),
        "%m" => ("member_meronym", "compositional"),
        "%s" => ("substance_meronym", "compositional"),
        "%p" => ("part_meronym", "compositional"),
        "=" => ("attribute", "semantic"),
        "+" => ("derivationally_related_form", "semantic"),
        ";c" => ("domain_topic", "semantic"),
        "-c" => ("member_of_domain_topic", "semantic"),
        ";r" => ("domain_region", "semantic"),
        "-r" => ("member_of_domain_region", "semantic"),
        ";u" => ("domain_usage", "semantic"),
        "-u" => ("member_of_domain_usage", "semantic"),
        "*" => ("entailment", "causal"),
        ">" => ("cause", "causal"),
        "^" => ("also_see", "semantic"),
        "$" => ("verb_group", "semantic"),
        "&" => ("similar_to", "semantic"),
        "<" => ("participle", "semantic"),
        // Adjectives: pertains to a noun; adverbs: derived from an adjective. NLTK calls both
        // pertainyms.
        "\\" if pos == 'a' || pos == 's' || pos == 'r' => ("pertainym", "semantic"),
        _ => return None,
    };
    Some(r)
}

/// One synset as read from a data file.
pub struct Synset {
    pub offset: u64,
    /// n, v, a, s or r.
    pub pos: char,
    pub lemmas: Vec<String>,
    /// (symbol, target offset, target pos char as in the file).
    pub pointers: Vec<(String, u64, char)>,
    pub gloss: String,
}

/// Parses one data-file line (license lines start with a space and are not passed here).
pub fn parse_data_line(line: &str) -> Result<Synset> {
    let (head, gloss) = line.split_once('|').unwrap_or((line, ""));
    let mut t = head.split_ascii_whitespace();
    let mut next = |what: &str| t.next().with_context(|| format!("missing {what}"));
    let offset: u64 = next("offset")?.parse().context("bad offset")?;
    next("lex_filenum")?;
    let pos = next("ss_type")?.chars().next().context("empty ss_type")?;
    let w_cnt = usize::from_str_radix(next("w_cnt")?, 16).context("bad w_cnt")?;
    let mut lemmas = Vec::with_capacity(w_cnt);
    for _ in 0..w_cnt {
        let word = next("word")?;
        next("lex_id")?;
        // Adjective syntactic markers: "beautiful(a)" → "beautiful".
        let word = match word.find('(') {
            Some(i) if word.ends_with(')') => &word[..i],
            _ => word,
        };
        lemmas.push(word.to_string());
    }
    let p_cnt: usize = next("p_cnt")?.parse().context("bad p_cnt")?;
    let mut pointers = Vec::with_capacity(p_cnt);
    for _ in 0..p_cnt {
        let symbol = next("pointer symbol")?.to_string();
        let target: u64 = next("pointer offset")?.parse().context("bad pointer offset")?;
        let tpos = next("pointer pos")?.chars().next().context("empty pointer pos")?;
        next("source/target")?;
        pointers.push((symbol, target, tpos));
    }
    if lemmas.is_empty() {
        bail!("synset {offset} has no lemmas");
    }
    Ok(Synset { offset, pos, lemmas, pointers, gloss: gloss.trim().to_string() })
}

/// lemma → offsets, in sense order, for one index file.
pub fn parse_index(text: &str) -> HashMap<String, Vec<u64>> {
    let mut map = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with(' ')) {
        let t: Vec<&str> = line.split_ascii_whitespace().collect();
        let parse = || -> Option<(String, Vec<u64>)> {
            let synset_cnt: usize = t.get(2)?.parse().ok()?;
            let p_cnt: usize = t.get(3)?.parse().ok()?;
            let first = 4 + p_cnt + 2;
            let offsets = t.get(first..first + synset_cnt)?.iter().map(|o| o.parse().ok()).collect::<Option<_>>()?;
            Some((t.first()?.to_string(), offsets))
        };
        if let Some((lemma, offsets)) = parse() {
            map.insert(lemma, offsets);
        }
    }
    map
}

/// The WordNet database, read whole (about 30 MB).
pub struct WordNet {
    /// Per data file: its synsets.
    pub synsets: Vec<Synset>,
    /// (pos file char, offset) → synset name.
    names: HashMap<(char, u64), String>,
}

/// The file a pointer's pos char lives in ('s' lives in data.adj).
fn file_pos(pos: char) -> char {
    if pos == 's' {
        'a'
    } else {
        pos
    }
}

impl WordNet {
    pub fn load(dir: &Path) -> Result<WordNet> {
        let mut synsets = Vec::new();
        let mut names = HashMap::new();
        for (file, pos) in POS {
            let read = |kind: &str| {
                let p = dir.join(format!("{kind}.{file}"));
                std::fs::read_to_string(&p).with_context(|| {
                    format!("cannot read {}; install WordNet with `apt-get install wordnet-base`", p.display())
                })
            };
            let index = parse_index(&read("index")?);
            let data = read("data")?;
            for (n, line) in data.lines().enumerate().filter(|(_, l)| !l.starts_with(' ') && !l.is_empty()) {
                let s = parse_data_line(line).with_context(|| format!("data.{file} line {}", n + 1))?;
                let lemma = s.lemmas[0].to_lowercase();
                let sense = index
                    .get(&lemma)
                    .and_then(|offs| offs.iter().position(|o| *o == s.offset))
                    .with_context(|| format!("data.{file}: {lemma} ({}) is not in index.{file}", s.offset))?;
                names.insert((pos, s.offset), format!("{lemma}.{}.{:02}", s.pos, sense + 1));
                synsets.push(s);
            }
        }
        Ok(WordNet { synsets, names })
    }

    pub fn name(&self, s: &Synset) -> &str {
        self.names.get(&(file_pos(s.pos), s.offset)).map(String::as_str).unwrap_or("")
    }

    /// The synset's concept: its name, with the lemmas and the gloss as content.
    pub fn concept(&self, s: &Synset) -> ConceptIn {
        let lemmas: Vec<String> = s.lemmas.iter().map(|l| l.replace('_', " ")).collect();
        ConceptIn {
            label: self.name(s).to_string(),
            content: format!("{}: {}", lemmas.join(", "), s.gloss),
            ..Default::default()
        }
    }

    /// One association per pointer (lifted to synsets); pointers WordNet does not name, or to
    /// synsets missing from the files, are counted in the second value.
    pub fn associations(&self, s: &Synset) -> (Vec<AssociationIn>, usize) {
        let source = self.name(s).to_string();
        let mut out = Vec::with_capacity(s.pointers.len());
        let mut skipped = 0;
        for (symbol, target, tpos) in &s.pointers {
            let (Some((rel, kind)), Some(t)) = (relation(symbol, s.pos), self.names.get(&(file_pos(*tpos), *target)))
            else {
                skipped += 1;
                continue;
            };
            out.push(AssociationIn {
                source: source.clone(),
                target: t.clone(),
                kind: Some(kind.to_string()),
                relation: rel.to_string(),
                confidence: Some(1.0),
                evidence: String::new(),
            });
        }
        (out, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA_NOUN: &str = "  1 This software and database is being provided\n\
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 00002452 n 0000 | that which is perceived\n\
00001930 03 n 01 physical_entity 0 001 @ 00001740 n 0000 | an entity that has physical existence\n\
00002137 03 n 02 abstraction 0 abstract_entity 0 002 @ 00001740 n 0000 + 00000001 v 0101 | a general concept\n\
00002452 03 n 01 Thing 0 001 @ 00001740 n 0000 | a separate and self-contained entity\n";
    const INDEX_NOUN: &str = "  1 This software\n\
abstraction n 1 2 @ ~ 1 0 00002137\n\
entity n 1 1 ~ 1 0 00001740\n\
physical_entity n 1 1 @ 1 0 00001930\n\
thing n 2 1 @ 2 0 99999999 00002452\n";
    const DATA_VERB: &str = "00000001 29 v 01 abstract 0 001 + 00002137 n 0101 01 + 08 00 | consider abstractly\n";
    const INDEX_VERB: &str = "abstract v 1 1 + 1 0 00000001\n";
    const DATA_ADJ: &str = "00000010 00 a 01 able(p) 0 001 ! 00000020 a 0101 | having the means\n\
00000020 00 a 01 unable 0 001 ! 00000010 a 0101 | not able\n\
00000030 00 s 01 emergent 0 001 & 00000010 a 0000 | coming into existence\n";
    const INDEX_ADJ: &str = "able a 1 1 ! 1 0 00000010\nunable a 1 1 ! 1 0 00000020\nemergent a 1 1 & 1 0 00000030\n";

    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("data.noun", DATA_NOUN),
            ("index.noun", INDEX_NOUN),
            ("data.verb", DATA_VERB),
            ("index.verb", INDEX_VERB),
            ("data.adj", DATA_ADJ),
            ("index.adj", INDEX_ADJ),
            ("data.adv", ""),
            ("index.adv", ""),
        ] {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn names_follow_nltk() {
        let d = fixture();
        let wn = WordNet::load(d.path()).unwrap();
        let names: Vec<&str> = wn.synsets.iter().map(|s| wn.name(s)).collect();
        assert_eq!(
            names,
            [
                "entity.n.01",
                "physical_entity.n.01",
                "abstraction.n.01",
                // Second sense of "thing" in the index; the data file spells it "Thing".
                "thing.n.02",
                "abstract.v.01",
                // The "(p)" marker is dropped; satellites are "s" and use index.adj.
                "able.a.01",
                "unable.a.01",
                "emergent.s.01",
            ]
        );
        assert_eq!(wn.concept(&wn.synsets[2]).content, "abstraction, abstract entity: a general concept");
    }

    #[test]
    fn pointers_become_named_associations_of_the_right_kind() {
        let d = fixture();
        let wn = WordNet::load(d.path()).unwrap();
        let rels = |i: usize| -> Vec<(String, String, String)> {
            let (a, skipped) = wn.associations(&wn.synsets[i]);
            assert_eq!(skipped, 0);
            a.into_iter().map(|a| (a.relation, a.kind.unwrap(), a.target)).collect()
        };
        assert_eq!(rels(0)[0], ("hyponym".into(), "hierarchical".into(), "physical_entity.n.01".into()));
        assert_eq!(rels(2)[1], ("derivationally_related_form".into(), "semantic".into(), "abstract.v.01".into()));
        assert_eq!(rels(5)[0], ("antonym".into(), "semantic".into(), "unable.a.01".into()));
        // A satellite's similar_to points at its head adjective, named from data.adj.
        assert_eq!(rels(7)[0], ("similar_to".into(), "semantic".into(), "able.a.01".into()));
    }

    #[test]
    fn bad_lines_name_what_is_missing() {
        assert!(parse_data_line("00001740 03 n 01").is_err());
        assert!(parse_data_line("x 03 n 01 entity 0 000 | g").is_err());
        assert!(parse_data_line("00001740 03 n 01 entity 0 002 @ 1 n 0000 | g").is_err());
    }
}
