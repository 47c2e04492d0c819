//! The distributed search against independent references, on random graphs split over three
//! shards (the expander groups each frontier by shard, as the router does over RPC).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::model::{AssocKind, Association, WriteBatch};
use crate::store::{KeyRange, ShardStore};

fn id(n: usize) -> ConceptId {
    ConceptId::from_label(&format!("v{n}"))
}

struct Sharded(Vec<ShardStore>);

impl Sharded {
    fn new(edges: &[(usize, usize, f32)]) -> Sharded {
        let third = u64::MAX / 3;
        Sharded::over(edges, &[(0, third), (third + 1, 2 * third), (2 * third + 1, u64::MAX)])
    }

    /// Every vertex on one shard: every frontier takes the local fast path.
    fn single(edges: &[(usize, usize, f32)]) -> Sharded {
        Sharded::over(edges, &[(0, u64::MAX)])
    }

    fn over(edges: &[(usize, usize, f32)], ranges: &[(u64, u64)]) -> Sharded {
        let mut shards: Vec<ShardStore> =
            ranges.iter().map(|(s, e)| ShardStore::new(KeyRange { start: *s, end: *e }, None)).collect();
        let batch = WriteBatch {
            concepts: Vec::new(),
            associations: edges
                .iter()
                .enumerate()
                .map(|(i, (a, b, c))| Association {
                    source: id(*a),
                    target: id(*b),
                    kind: AssocKind::Semantic,
                    relation: relation(edges, i),
                    confidence: *c,
                    evidence: String::new(),
                })
                .collect(),
            forget: vec![],
        };
        // Each shard stores the sides it owns (in-edges arrive as the outbox would bring them).
        for s in &mut shards {
            let own = WriteBatch {
                concepts: Vec::new(),
                associations: batch.associations.iter().filter(|a| s.range.contains(a.source)).cloned().collect(),
                forget: vec![],
            };
            assert!(s.apply(1, 0, own));
            let remote: Vec<(u64, Association)> = batch
                .associations
                .iter()
                .enumerate()
                .filter(|(_, a)| s.range.contains(a.target) && !s.range.contains(a.source))
                .map(|(i, a)| (crate::store::links::seq(1, i), a.clone()))
                .collect();
            s.apply_in_edges(2, crate::store::InEdges { source_shard: 9, items: remote, routed: None });
        }
        Sharded(shards)
    }
}

/// Parallel edges (the same ordered pair again) get relations of their own, so each is stored.
fn relation(edges: &[(usize, usize, f32)], i: usize) -> String {
    let (a, b, _) = edges[i];
    format!("r{}", edges[..i].iter().filter(|(x, y, _)| (*x, *y) == (a, b)).count())
}

fn steps_of(s: &ShardStore, v: ConceptId, filter: &EdgeFilter) -> Vec<Step> {
    let mut steps = Vec::new();
    s.for_each_edge(v, filter, |e| {
        steps.push(Step {
            to: e.other,
            kind: e.kind,
            relation: e.relation.to_string(),
            confidence: e.confidence,
            outgoing: e.outgoing,
        });
        true
    });
    steps
}

/// Groups each frontier by shard, as the router does; a frontier wholly on one shard gets that
/// shard's local fast path (further levels sent ahead while they stay on it), as the node does.
impl Expander for Sharded {
    async fn expand(&self, frontier: &[ConceptId], filter: &EdgeFilter) -> Result<Expansion, String> {
        let mut x = Expansion::default();
        for (i, s) in self.0.iter().enumerate() {
            let mine: Vec<ConceptId> = frontier.iter().copied().filter(|v| s.range.contains(*v)).collect();
            if mine.is_empty() {
                continue;
            }
            x.rpcs += 1;
            x.shards.insert(i as u32);
            if mine.len() == frontier.len() {
                for v in
                    s.local_levels(&mine, filter, limits::EXPAND_PREFETCH_LEVELS, limits::EXPAND_PREFETCH_VERTICES_MAX)
                {
                    x.prefetched.push((v, steps_of(s, v, filter)));
                }
            }
            for v in mine {
                x.edges.push((v, steps_of(s, v, filter)));
            }
        }
        Ok(x)
    }
}

/// Reference: every shortest vertex sequence from `s` to `t` (BFS layers, then enumeration).
fn reference(n: usize, edges: &[(usize, usize, f32)], both: bool, s: usize, t: usize) -> Option<Vec<Vec<usize>>> {
    let mut adj = vec![Vec::new(); n];
    for (a, b, _) in edges {
        adj[*a].push(*b);
        if both {
            adj[*b].push(*a);
        }
    }
    let mut dist = vec![usize::MAX; n];
    dist[s] = 0;
    let mut q = VecDeque::from([s]);
    while let Some(u) = q.pop_front() {
        for &w in &adj[u] {
            if dist[w] == usize::MAX {
                dist[w] = dist[u] + 1;
                q.push_back(w);
            }
        }
    }
    if dist[t] == usize::MAX {
        return None;
    }
    fn walk(adj: &[Vec<usize>], dist: &[usize], u: usize, t: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if u == t {
            out.push(cur.clone());
            return;
        }
        for &w in &adj[u] {
            if dist[w] == dist[u] + 1 && dist[w] <= dist[t] {
                cur.push(w);
                walk(adj, dist, w, t, cur, out);
                cur.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(&adj, &dist, s, t, &mut vec![s], &mut out);
    Some(out)
}

/// Reference: the greatest confidence product over simple paths of at most `max` hops.
fn best_product(n: usize, edges: &[(usize, usize, f32)], both: bool, s: usize, t: usize, max: usize) -> Option<f64> {
    let mut adj = vec![Vec::new(); n];
    for (a, b, c) in edges {
        adj[*a].push((*b, *c as f64));
        if both {
            adj[*b].push((*a, *c as f64));
        }
    }
    fn dfs(
        adj: &[Vec<(usize, f64)>],
        u: usize,
        t: usize,
        left: usize,
        c: f64,
        seen: &mut Vec<bool>,
        best: &mut Option<f64>,
    ) {
        if u == t {
            *best = Some(best.map_or(c, |b| b.max(c)));
            return;
        }
        if left == 0 {
            return;
        }
        for &(w, wc) in &adj[u] {
            if !seen[w] {
                seen[w] = true;
                dfs(adj, w, t, left - 1, c * wc, seen, best);
                seen[w] = false;
            }
        }
    }
    let mut best = None;
    let mut seen = vec![false; n];
    seen[s] = true;
    dfs(&adj, s, t, max, 1.0, &mut seen, &mut best);
    best
}

/// The confidences of every edge that joins `a` to `b` as a hop (either orientation if `both`).
fn joining(edges: &[(usize, usize, f32)], both: bool, a: usize, b: usize) -> Vec<f32> {
    let mut out: Vec<f32> = edges
        .iter()
        .filter(|(x, y, _)| (*x, *y) == (a, b) || (both && (*x, *y) == (b, a)))
        .map(|(_, _, c)| *c)
        .collect();
    out.sort_by(|x, y| y.total_cmp(x));
    out
}

/// Each hop walks the most confident joining edge and lists every joining edge.
fn check_hops(
    p: &Path,
    names: &BTreeMap<ConceptId, usize>,
    edges: &[(usize, usize, f32)],
    both: bool,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(p.steps.len(), p.links.len());
    let mut product = 1.0f64;
    for (i, hop) in p.links.iter().enumerate() {
        let (a, b) = (names[&p.vertices[i]], names[&p.vertices[i + 1]]);
        let want = joining(edges, both, a, b);
        let got: Vec<f32> = hop.iter().map(|s| s.confidence).collect();
        prop_assert_eq!(&got, &want, "hop {} -> {}", a, b);
        prop_assert_eq!(&p.steps[i], &hop[0]);
        prop_assert!(hop.iter().all(|s| s.to == p.vertices[i + 1]));
        product *= p.steps[i].confidence as f64;
    }
    prop_assert_eq!(p.confidence, product);
    Ok(())
}

/// Reference: every loop-free path of at most `max` hops as (vertices, confidence of its best
/// edges), by exhaustive DFS.
fn simple_paths(
    n: usize,
    edges: &[(usize, usize, f32)],
    both: bool,
    s: usize,
    t: usize,
    max: usize,
) -> Vec<(Vec<usize>, f64)> {
    #[allow(clippy::too_many_arguments)]
    fn dfs(
        n: usize,
        edges: &[(usize, usize, f32)],
        both: bool,
        t: usize,
        max: usize,
        cur: &mut Vec<usize>,
        c: f64,
        out: &mut Vec<(Vec<usize>, f64)>,
    ) {
        let u = *cur.last().unwrap();
        if u == t {
            out.push((cur.clone(), c));
            return;
        }
        if cur.len() > max {
            return;
        }
        for w in 0..n {
            if cur.contains(&w) {
                continue;
            }
            if let Some(best) = joining(edges, both, u, w).first() {
                cur.push(w);
                dfs(n, edges, both, t, max, cur, c * *best as f64, out);
                cur.pop();
            }
        }
    }
    let mut out = Vec::new();
    dfs(n, edges, both, t, max, &mut vec![s], 1.0, &mut out);
    out
}

fn graph() -> impl Strategy<Value = (usize, Vec<(usize, usize, f32)>)> {
    (4usize..24).prop_flat_map(|n| {
        let edge = (0..n, 0..n, 1u8..=10).prop_map(|(a, b, c)| (a, b, c as f32 / 10.0));
        // Parallel edges, both orientations of a pair and self-loops all occur: a path is still
        // one vertex sequence.
        (Just(n), proptest::collection::vec(edge, 0..n * 3))
    })
}

fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn shortest_paths_match_a_reference_bfs(
        (n, edges) in graph(), s in 0usize..24, t in 0usize..24, both: bool, max_paths in 1usize..6, one_shard: bool,
    ) {
        let (s, t) = (s % n, t % n);
        let g = if one_shard { Sharded::single(&edges) } else { Sharded::new(&edges) };
        let filter = EdgeFilter { direction: if both { Direction::Both } else { Direction::Out }, ..Default::default() };
        let bounds = Bounds { max_depth: 8, max_paths, ..Default::default() };
        let (paths, stats) = run(shortest_paths(&g, id(s), id(t), &filter, &bounds)).unwrap();
        let names: BTreeMap<ConceptId, usize> = (0..n).map(|i| (id(i), i)).collect();
        let got: BTreeSet<Vec<usize>> = paths.iter().map(|p| p.vertices.iter().map(|v| names[v]).collect()).collect();
        prop_assert_eq!(got.len(), paths.len(), "paths are distinct");
        match reference(n, &edges, both, s, t).filter(|r| r[0].len() - 1 <= bounds.max_depth) {
            None => prop_assert!(paths.is_empty()),
            Some(all) => {
                let hops = all[0].len() - 1;
                prop_assert!(paths.iter().all(|p| p.hops() == hops && p.vertices.len() == hops + 1));
                let all: BTreeSet<Vec<usize>> = all.into_iter().collect();
                if all.len() <= max_paths {
                    prop_assert_eq!(got, all);
                } else {
                    prop_assert_eq!(paths.len(), max_paths);
                    prop_assert!(got.is_subset(&all));
                }
                prop_assert!(paths.windows(2).all(|w| w[0].confidence >= w[1].confidence));
                prop_assert!(stats.rpcs <= 3 * hops, "at most one call per shard per level");
                for p in &paths {
                    check_hops(p, &names, &edges, both)?;
                }
            }
        }
    }

    #[test]
    fn the_confident_path_has_the_best_product(
        (n, edges) in graph(), s in 0usize..24, t in 0usize..24, both: bool, one_shard: bool,
    ) {
        let (s, t) = (s % n, t % n);
        prop_assume!(s != t);
        let g = if one_shard { Sharded::single(&edges) } else { Sharded::new(&edges) };
        let filter = EdgeFilter { direction: if both { Direction::Both } else { Direction::Out }, ..Default::default() };
        let bounds = Bounds { max_depth: 5, ..Default::default() };
        let (path, _) = run(most_confident_path(&g, id(s), id(t), &filter, &bounds)).unwrap();
        let want = best_product(n, &edges, both, s, t, bounds.max_depth);
        match (path, want) {
            (None, None) => {}
            (Some(p), Some(w)) => {
                prop_assert!((p.confidence - w).abs() < 1e-9, "got {} want {}", p.confidence, w);
                prop_assert!(p.hops() <= bounds.max_depth);
                prop_assert_eq!(p.vertices[0], id(s));
                prop_assert_eq!(*p.vertices.last().unwrap(), id(t));
                let product: f64 = p.steps.iter().map(|x| x.confidence as f64).product();
                prop_assert!((product - p.confidence).abs() < 1e-9);
            }
            (p, w) => prop_assert!(false, "got {:?}, want {:?}", p.map(|p| p.confidence), w),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn k_best_paths_are_the_k_best_loop_free_paths(
        (n, edges) in small_graph(), s in 0usize..9, t in 0usize..9, both: bool, k in 1usize..8,
        by_confidence: bool, one_shard: bool,
    ) {
        let (s, t) = (s % n, t % n);
        let g = if one_shard { Sharded::single(&edges) } else { Sharded::new(&edges) };
        let filter = EdgeFilter { direction: if both { Direction::Both } else { Direction::Out }, ..Default::default() };
        let bounds = Bounds { max_depth: 5, max_paths: k, ..Default::default() };
        let rank = if by_confidence { Rank::Confidence } else { Rank::Hops };
        let (paths, _) = run(k_best_paths(&g, id(s), id(t), &filter, &bounds, rank)).unwrap();
        let names: BTreeMap<ConceptId, usize> = (0..n).map(|i| (id(i), i)).collect();
        let ids = |v: &[usize]| v.iter().map(|i| id(*i)).collect::<Vec<_>>();
        let mut want = simple_paths(n, &edges, both, s, t, bounds.max_depth);
        want.sort_by(|a, b| {
            let (ha, hb) = (a.0.len(), b.0.len());
            let by_conf = b.1.total_cmp(&a.1);
            match rank {
                Rank::Hops => ha.cmp(&hb).then(by_conf),
                Rank::Confidence => by_conf.then(ha.cmp(&hb)),
            }
            .then_with(|| ids(&a.0).cmp(&ids(&b.0)))
        });
        want.truncate(k);
        let got: Vec<(Vec<usize>, f64)> =
            paths.iter().map(|p| (p.vertices.iter().map(|v| names[v]).collect(), p.confidence)).collect();
        prop_assert_eq!(got, want);
        for p in &paths {
            check_hops(p, &names, &edges, both)?;
        }
    }

    #[test]
    fn combined_confidence_counts_shared_hops_once(
        paths in proptest::collection::vec(Just((0usize..5).collect::<Vec<_>>()).prop_shuffle().prop_flat_map(|v| (Just(v), 2usize..=5)), 0..7),
    ) {
        // Loop-free vertex sequences over 5 vertices; the hop {a, b} has a fixed confidence.
        let pair = |a: usize, b: usize| (a.min(b), a.max(b));
        let conf = |(a, b): (usize, usize)| ((a * 5 + b) % 9 + 1) as f32 / 10.0;
        let pairs: Vec<(usize, usize)> = (0..5).flat_map(|a| (a + 1..5).map(move |b| (a, b))).collect();
        let built: Vec<(Vec<(usize, usize)>, Path)> = paths
            .iter()
            .map(|(order, len)| {
                let vs = &order[..*len];
                let hops: Vec<(usize, usize)> = vs.windows(2).map(|w| pair(w[0], w[1])).collect();
                let steps: Vec<Step> = vs[1..]
                    .iter()
                    .zip(&hops)
                    .map(|(v, h)| Step { to: id(*v), kind: AssocKind::Semantic, relation: "r".into(), confidence: conf(*h), outgoing: true })
                    .collect();
                let confidence = steps.iter().map(|s| s.confidence as f64).product();
                let vertices = vs.iter().map(|v| id(*v)).collect();
                (hops, Path { vertices, links: steps.iter().map(|s| vec![s.clone()]).collect(), steps, confidence })
            })
            .collect();
        let ps: Vec<Path> = built.iter().map(|(_, p)| p.clone()).collect();
        // Exact: over every state of the 10 hops, the weight of those in which some path holds.
        let mut exact = 0.0;
        for state in 0u32..(1 << pairs.len()) {
            let on = |h: &(usize, usize)| state & (1 << pairs.iter().position(|p| p == h).unwrap()) != 0;
            let w: f64 = pairs.iter().map(|h| if on(h) { conf(*h) as f64 } else { 1.0 - conf(*h) as f64 }).product();
            if built.iter().any(|(hops, _)| hops.iter().all(on)) {
                exact += w;
            }
        }
        let got = combined_confidence(&ps);
        prop_assert!((got - exact).abs() < 1e-9, "got {} exact {}", got, exact);
        let noisy = 1.0 - ps.iter().map(|p| 1.0 - p.confidence).product::<f64>();
        prop_assert!(got <= noisy + 1e-12);
        prop_assert!(ps.iter().all(|p| got + 1e-12 >= p.confidence));
    }
}

fn small_graph() -> impl Strategy<Value = (usize, Vec<(usize, usize, f32)>)> {
    (3usize..9).prop_flat_map(|n| {
        let edge = (0..n, 0..n, 1u8..=10).prop_map(|(a, b, c)| (a, b, c as f32 / 10.0));
        (Just(n), proptest::collection::vec(edge, 0..n * 2))
    })
}

#[test]
fn a_search_over_budget_stops_with_its_statistics() {
    let edges: Vec<(usize, usize, f32)> = (1..200).map(|i| (0, i, 1.0)).collect();
    let g = Sharded::new(&edges);
    let bounds = Bounds { max_depth: 4, max_paths: 5, visited_max: 50 };
    let err = run(shortest_paths(&g, id(0), id(999), &EdgeFilter::default(), &bounds)).unwrap_err();
    match err {
        PathError::Budget { visited, limit, stats } => {
            assert!(visited > limit && stats.rpcs > 0);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_frontier_on_one_shard_takes_the_local_fast_path() {
    let chain: Vec<(usize, usize, f32)> = (0..12).map(|i| (i, i + 1, 0.9)).collect();
    let out = EdgeFilter { direction: Direction::Out, ..Default::default() };
    let bounds = Bounds { max_depth: 12, ..Default::default() };
    // One shard: each call also sends the next levels, so most levels cost no call.
    let (paths, stats) = run(shortest_paths(&Sharded::single(&chain), id(0), id(12), &out, &bounds)).unwrap();
    assert_eq!(paths[0].hops(), 12);
    assert!(stats.local_levels > 0 && stats.rpcs + stats.local_levels == 12, "{stats:?}");
    assert!(stats.rpcs <= 12 / (limits::EXPAND_PREFETCH_LEVELS + 1) + 2, "{stats:?}");
    let (path, stats) = run(most_confident_path(&Sharded::single(&chain), id(0), id(12), &out, &bounds)).unwrap();
    assert_eq!(path.unwrap().hops(), 12);
    assert!(stats.local_levels > 0, "{stats:?}");
    // Three shards by hash: the chain leaves the shard at almost every step.
    let (_, stats) = run(shortest_paths(&Sharded::new(&chain), id(0), id(12), &out, &bounds)).unwrap();
    assert!(stats.rpcs >= 6, "{stats:?}");
}
