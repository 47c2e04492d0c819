//! WordNet 3.0 imported into a local grid (`sutra dev` + `sutra import --format wordnet`); once
//! status says every in-edge is delivered, `/reason` is checked against an independent BFS over
//! the same files: the hop count of every answer, the whole set of shortest paths (distinct
//! vertex sequences) whenever it has at most `max_paths` members, and each hop's list of the
//! stored edges joining its two concepts. Pairs are random, around the hubs `person.n.01` and
//! `material.n.01`, and fixed ones with several shortest paths; both `direction: both` and
//! `out`. `k_shortest` answers are checked to be distinct, loop-free, real and ordered.
//! Needs Debian's `wordnet-base` (`ci/wordnet.sh` installs it); without it the test says so and
//! passes, except under CI (`CI` set), where it fails.

use crate::common;

use crate::wordnet_import as wordnet;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;

use common::{call, DevGrid};
use serde_json::{json, Value};

const DIR: &str = "/usr/share/wordnet";
const RELATIONS: [&str; 2] = ["hypernym", "hyponym"];
const MAX_PATHS: usize = 32;

/// A step of the reference multigraph: (to, relation, walked forward?).
type Step = (u32, &'static str, bool);

/// A path as compared: its labels, and per hop the sorted "relation/direction" of every edge
/// joining the two concepts.
type Seq = (Vec<String>, Vec<BTreeSet<String>>);

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

    /// The concepts one hop from `u`, each with the edges joining them.
    fn hops(&self, u: u32, out_only: bool) -> BTreeMap<u32, BTreeSet<String>> {
        let mut out: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for &(v, rel, fwd) in &self.steps[u as usize] {
            if (fwd || !out_only) && v != u {
                out.entry(v).or_default().insert(format!("{rel}/{}", if fwd { "forward" } else { "backward" }));
            }
        }
        out
    }

    /// Every shortest path s → t as a distinct vertex sequence, or None when there are more
    /// than `cap`.
    fn shortest(&self, s: u32, t: u32, out_only: bool, d: &HashMap<u32, usize>, cap: usize) -> Option<BTreeSet<Seq>> {
        let back = self.dist_to(t, out_only, d[&t]);
        let mut out = BTreeSet::new();
        // Depth-first from s along hops that stay on a shortest route to t.
        let mut stack: Vec<(u32, Seq)> = vec![(s, (vec![self.names[s as usize].clone()], Vec::new()))];
        while let Some((u, (labels, edges))) = stack.pop() {
            if u == t {
                out.insert((labels, edges));
                if out.len() > cap {
                    return None;
                }
                continue;
            }
            for (v, joining) in self.hops(u, out_only) {
                let on_route = d.get(&u).map(|du| du + 1) == d.get(&v).copied()
                    && back.get(&v).is_some_and(|bv| d[&v] + bv == d[&t]);
                if on_route {
                    let (mut l, mut e) = (labels.clone(), edges.clone());
                    l.push(self.names[v as usize].clone());
                    e.push(joining);
                    stack.push((v, (l, e)));
                }
            }
        }
        Some(out)
    }

    /// Hops from every concept to `t` (following edges forward only when `out_only`).
    fn dist_to(&self, t: u32, out_only: bool, max: usize) -> HashMap<u32, usize> {
        let mut d = HashMap::from([(t, 0)]);
        let mut q = VecDeque::from([t]);
        while let Some(u) = q.pop_front() {
            if d[&u] == max {
                continue;
            }
            // Walking backwards from t: an edge v → u arrives at u.
            for &(v, _, fwd) in &self.steps[u as usize] {
                if (!fwd || !out_only) && !d.contains_key(&v) {
                    d.insert(v, d[&u] + 1);
                    q.push_back(v);
                }
            }
        }
        d
    }
}

fn grid_paths(v: &Value) -> Vec<Seq> {
    v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let c = p["concepts"].as_array().unwrap();
            let labels = c.iter().map(|c| c["label"].as_str().unwrap().to_string()).collect();
            let edges = p["edges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let name =
                        |e: &Value| format!("{}/{}", e["relation"].as_str().unwrap(), e["direction"].as_str().unwrap());
                    let all: BTreeSet<String> =
                        e["all"].as_array().map(|a| a.iter().map(name).collect()).unwrap_or_default();
                    assert!(all.is_empty() || all.contains(&name(e)), "the walked edge is one of the hop's: {e}");
                    if all.is_empty() {
                        BTreeSet::from([name(e)])
                    } else {
                        all
                    }
                })
                .collect();
            (labels, edges)
        })
        .collect()
}

/// Waits until the primaries report every in-edge delivered (two heartbeats apart, so the
/// figure is not from before the import's last writes).
fn wait_delivered(g: &DevGrid) {
    let start = std::time::Instant::now();
    let mut zero_since = None;
    loop {
        let (status, v) = call(&g.api, "GET", "/cluster/status", Value::Null);
        assert_eq!(status, 200, "{v}");
        let pending = v["in_edges_pending"].as_u64().expect("in_edges_pending in status");
        if pending == 0 {
            let since = *zero_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > std::time::Duration::from_secs(3) {
                eprintln!("in-edges delivered after {:?}", start.elapsed());
                return;
            }
        } else {
            zero_since = None;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(300), "{pending} in-edges still pending");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
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
    let index: HashMap<&str, u32> = reference.names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
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
    wait_delivered(&g);

    let mut seed = 0x2545f4914f6cdd1du64;
    let mut rand = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    // Pairs: fixed ones with several shortest paths, pairs around two hubs (concepts within
    // two hops of the hub on either side, so most shortest paths pass through or near it),
    // and random pairs 1-8 hops apart.
    let mut pairs: Vec<(u32, u32, bool)> = vec![
        (index["monk.n.01"], index["communist.n.02"], false),
        (index["communist.n.02"], index["monk.n.01"], false),
    ];
    for hub in ["person.n.01", "material.n.01"] {
        let near: Vec<u32> =
            reference.dist(index[hub], false, 2).into_iter().filter(|(_, k)| *k == 2).map(|(v, _)| v).collect();
        let mut near = near;
        near.sort_unstable();
        for _ in 0..30 {
            pairs.push((near[rand(near.len())], near[rand(near.len())], false));
        }
    }
    let (mut compared_sets, mut several, mut checked, mut unreachable, mut through_hubs) = (0, 0, 0, 0, 0);
    let hubs: BTreeSet<&str> = ["person.n.01", "material.n.01"].into();
    let mut i = 0usize;
    while checked < 230 && i < 20_000 {
        i += 1;
        let (s, t, out_only, bounded) = if let Some((s, t, o)) = pairs.pop() {
            (s, t, o, false)
        } else {
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
            (s, t, out_only, i % 8 == 7 && hops > 1)
        };
        if s == t {
            continue;
        }
        let d = reference.dist(s, out_only, 8);
        let Some(&hops) = d.get(&t) else { continue };
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
        let distinct: BTreeSet<&Vec<String>> = got.iter().map(|(l, _)| l).collect();
        assert_eq!(distinct.len(), got.len(), "{body}: two answers share a vertex sequence: {v}");
        for (labels, _) in &got {
            assert_eq!(
                labels.len() - 1,
                hops,
                "{body}: a path of {} hops, the BFS says {hops}: {labels:?}",
                labels.len() - 1
            );
        }
        if got.iter().any(|(l, _)| l[1..l.len() - 1].iter().any(|x| hubs.contains(x.as_str()))) {
            through_hubs += 1;
        }
        // Paths share no evidence only if they share no hop; combined never exceeds noisy-OR.
        let noisy = 1.0
            - v["paths"].as_array().unwrap().iter().map(|p| 1.0 - p["confidence"].as_f64().unwrap()).product::<f64>();
        assert!(v["confidence"].as_f64().unwrap() <= noisy + 1e-9, "{body}: {v}");
        match reference.shortest(s, t, out_only, &d, MAX_PATHS) {
            Some(all) => {
                let got: BTreeSet<Seq> = got.into_iter().collect();
                assert_eq!(got, all, "{body}: the grid's shortest paths differ from the reference's");
                compared_sets += 1;
                if all.len() > 1 {
                    several += 1;
                }
            }
            None => assert_eq!(got.len(), MAX_PATHS, "{body}: more than {MAX_PATHS} shortest paths exist"),
        }
        // Every tenth pair: the k shortest loop-free paths, checked against the reference graph.
        if checked % 10 == 0 {
            let body = json!({
                "start": reference.names[s as usize], "end": reference.names[t as usize],
                "relations": RELATIONS, "max_depth": hops + 2, "max_paths": 8, "mode": "k_shortest",
                "direction": if out_only { "out" } else { "both" },
            });
            let (status, v) = call(&g.api, "POST", "/reason", body.clone());
            assert_eq!(status, 200, "{body}: {v}");
            let got = grid_paths(&v);
            assert_eq!(got[0].0.len() - 1, hops, "{body}: the first k-shortest path is a shortest one");
            assert!(got.windows(2).all(|w| w[0].0.len() <= w[1].0.len()), "{body}: not in order of length");
            let distinct: BTreeSet<&Vec<String>> = got.iter().map(|(l, _)| l).collect();
            assert_eq!(distinct.len(), got.len(), "{body}: repeated paths");
            for (labels, edges) in &got {
                let ids: Vec<u32> = labels.iter().map(|l| index[l.as_str()]).collect();
                assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "{body}: a loop: {labels:?}");
                for (k, w) in ids.windows(2).enumerate() {
                    assert_eq!(
                        reference.hops(w[0], out_only).get(&w[1]),
                        Some(&edges[k]),
                        "{body}: hop {k} of {labels:?}"
                    );
                }
            }
        }
    }
    eprintln!(
        "{checked} queries checked: {compared_sets} whole path sets equal ({several} with several shortest paths), \
         {through_hubs} answers through a hub, {unreachable} bounded below their distance"
    );
    assert!(
        checked >= 200 && compared_sets >= 60 && several >= 5,
        "too few comparisons: {checked} / {compared_sets} / {several}"
    );
}
