//! WordNet 3.0 imported into a local grid (`sutra dev` + `sutra import --format wordnet`), then
//! `/reason` checked against an independent BFS over the same files: the hop count of every
//! answer, and the whole set of shortest paths whenever it has at most `max_paths` members.
//! Needs Debian's `wordnet-base` (`ci/wordnet.sh` installs it); without it the test says so and
//! passes, except under CI (`CI` set), where it fails.

use crate::common;

use crate::wordnet_import as wordnet;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;

use common::{call, DevGrid};
use serde_json::{json, Value};

const DIR: &str = "/usr/share/wordnet";
const RELATIONS: [&str; 2] = ["hypernym", "hyponym"];
const MAX_PATHS: usize = 32;

/// A step of the reference multigraph: (to, relation, walked forward?).
type Step = (u32, &'static str, bool);

struct Reference {
    names: Vec<String>,
    steps: Vec<Vec<Step>>,
}

impl Reference {
    fn new(wn: &wordnet::WordNet) -> Reference {
        let names: Vec<String> = wn.synsets.iter().map(|s| wn.name(s).to_string()).collect();
        let index: HashMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
        // One association per (source, target, relation): the grid's upsert key.
        let mut edges = BTreeSet::new();
        for (i, s) in wn.synsets.iter().enumerate() {
            for a in wn.associations(s).0 {
                if let Some(rel) = RELATIONS.iter().find(|r| **r == a.relation) {
                    edges.insert((i as u32, index[a.target.as_str()], *rel));
                }
            }
        }
        let mut steps = vec![Vec::new(); names.len()];
        for (s, t, rel) in edges {
            steps[s as usize].push((t, rel, true));
            steps[t as usize].push((s, rel, false));
        }
        Reference { names, steps }
    }

    fn dist(&self, s: u32, out_only: bool, max: usize) -> HashMap<u32, usize> {
        let mut d = HashMap::from([(s, 0)]);
        let mut q = VecDeque::from([s]);
        while let Some(u) = q.pop_front() {
            if d[&u] == max {
                continue;
            }
            for &(v, _, fwd) in &self.steps[u as usize] {
                if (fwd || !out_only) && !d.contains_key(&v) {
                    d.insert(v, d[&u] + 1);
                    q.push_back(v);
                }
            }
        }
        d
    }

    /// Every shortest path s → t as (labels, (relation, direction) per edge), or None when
    /// there are more than `cap`.
    fn shortest(
        &self,
        s: u32,
        t: u32,
        out_only: bool,
        d: &HashMap<u32, usize>,
        cap: usize,
    ) -> Option<BTreeSet<Vec<String>>> {
        let back = self.dist(t, false, d[&t]);
        let mut out = BTreeSet::new();
        // Depth-first from s along steps that stay on a shortest route to t.
        let mut stack: Vec<(u32, Vec<String>)> = vec![(s, vec![self.names[s as usize].clone()])];
        while let Some((u, path)) = stack.pop() {
            if u == t {
                out.insert(path);
                if out.len() > cap {
                    return None;
                }
                continue;
            }
            for &(v, rel, fwd) in &self.steps[u as usize] {
                let on_route = d.get(&u).map(|du| du + 1) == d.get(&v).copied()
                    && back.get(&v).is_some_and(|bv| d[&v] + bv == d[&t]);
                if (fwd || !out_only) && on_route {
                    let mut p = path.clone();
                    p.push(format!("{rel}/{}", if fwd { "forward" } else { "backward" }));
                    p.push(self.names[v as usize].clone());
                    stack.push((v, p));
                }
            }
        }
        Some(out)
    }
}

fn grid_paths(v: &Value) -> BTreeSet<Vec<String>> {
    v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let c = p["concepts"].as_array().unwrap();
            let e = p["edges"].as_array().unwrap();
            let mut out = vec![c[0]["label"].as_str().unwrap().to_string()];
            for (i, e) in e.iter().enumerate() {
                out.push(format!("{}/{}", e["relation"].as_str().unwrap(), e["direction"].as_str().unwrap()));
                out.push(c[i + 1]["label"].as_str().unwrap().to_string());
            }
            out
        })
        .collect()
}

#[test]
fn wordnet_paths_match_a_reference_bfs() {
    if !Path::new(DIR).join("data.noun").exists() {
        assert!(std::env::var_os("CI").is_none(), "{DIR} is missing; ci/wordnet.sh installs wordnet-base");
        eprintln!("skipped: {DIR} is missing (ci/wordnet.sh installs wordnet-base)");
        return;
    }
    let wn = wordnet::WordNet::load(Path::new(DIR)).expect("reading WordNet");
    let reference = Reference::new(&wn);
    let g = DevGrid::start();
    let out = g.sutra(&["import", "--format", "wordnet", DIR, "--no-embed"]);
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["concepts"], 117_659, "{summary}");
    eprintln!("imported: {summary}");
    let c = g.json(&["concept", "dog.n.01"]);
    assert!(c["content"]
        .as_str()
        .unwrap()
        .starts_with("dog, domestic dog, Canis familiaris: a member of the genus Canis"));

    let mut seed = 0x2545f4914f6cdd1du64;
    let mut rand = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let (mut compared_sets, mut checked, mut unreachable) = (0, 0, 0);
    for i in 0..10_000 {
        if checked == 160 {
            break;
        }
        // Every fourth query follows out-edges only; every eighth is bounded below its
        // answer's distance, so "no path" is checked too.
        let out_only = i % 4 == 3;
        let s = rand(reference.names.len()) as u32;
        let d = reference.dist(s, out_only, 8);
        let mut far: Vec<(u32, usize)> = d.iter().filter(|(_, k)| **k > 0).map(|(v, k)| (*v, *k)).collect();
        if far.is_empty() {
            continue;
        }
        far.sort_unstable();
        let want = 1 + rand(8);
        let pool: Vec<&(u32, usize)> = far.iter().filter(|(_, k)| *k == want).collect();
        let (t, hops) = if pool.is_empty() { far[rand(far.len())] } else { *pool[rand(pool.len())] };
        let bounded = i % 8 == 7 && hops > 1;
        let max_depth = if bounded { hops - 1 } else { 8 };
        let body = json!({
            "start": reference.names[s as usize], "end": reference.names[t as usize],
            "relations": RELATIONS, "max_depth": max_depth, "max_paths": MAX_PATHS,
            "direction": if out_only { "out" } else { "both" },
        });
        let (status, v) = call(&g.api, "POST", "/reason", body.clone());
        assert_eq!(status, 200, "{body}: {v}");
        checked += 1;
        if bounded {
            assert_eq!(v["found"], false, "{body}: the shortest path has {hops} hops: {v}");
            unreachable += 1;
            continue;
        }
        let got = grid_paths(&v);
        assert!(!got.is_empty(), "{body}: no path; the reference BFS finds {hops} hops");
        for p in &got {
            assert_eq!(
                (p.len() - 1) / 2,
                hops,
                "{body}: a path of {} hops, the BFS says {hops}: {p:?}",
                (p.len() - 1) / 2
            );
        }
        match reference.shortest(s, t, out_only, &d, MAX_PATHS) {
            Some(all) => {
                assert_eq!(got, all, "{body}: the grid's shortest paths differ from the reference's");
                compared_sets += 1;
            }
            None => assert_eq!(got.len(), MAX_PATHS, "{body}: more than {MAX_PATHS} shortest paths exist"),
        }
    }
    eprintln!(
        "{checked} queries checked: {compared_sets} whole path sets equal, {unreachable} bounded below their distance"
    );
    assert!(checked >= 150 && compared_sets >= 40, "too few comparisons: {checked} / {compared_sets}");
}
