//! Path finding across shards (architecture.md §6). Every search walks a cached, collapsed view
//! of the graph: the edges joining a vertex to one neighbour form one *link*, so a path is a
//! distinct vertex sequence, each hop walking its most confident edge and listing the others.
//! A level is expanded with one batched call per shard (the [`Expander`] groups and
//! parallelises), never one call per vertex, and a vertex is expanded at most once per search.
//!
//! - [`shortest_paths`]: every shortest path up to `max_paths`, by bidirectional,
//!   level-synchronous BFS, best confidence first.
//! - [`most_confident_path`]: the path with the greatest product of edge confidences within the
//!   hop bound, by layered relaxation (one batched expansion per hop).
//! - [`k_best_paths`]: the k best loop-free paths, by length or by confidence (Yen's algorithm;
//!   each spur search is one of the two above with the root path's vertices and edges banned,
//!   served mostly from the cache).
//!
//! [`combined_confidence`] is the probability that at least one returned path holds, counting
//! an edge shared by several paths once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use crate::ids::ConceptId;
use crate::limits;
use crate::model::{AssocKind, Direction, EdgeFilter};

/// One stored edge as a search walks it, stated from the vertex it leaves.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub to: ConceptId,
    pub kind: AssocKind,
    pub relation: String,
    pub confidence: f32,
    /// true: followed from source to target; false: walked backwards along an in-edge.
    pub outgoing: bool,
}

/// A loop-free path: a vertex sequence no other answer repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub vertices: Vec<ConceptId>,
    /// The edge walked at each hop: the most confident of those joining its two vertices.
    pub steps: Vec<Step>,
    /// Every edge joining each hop's two vertices that passed the filter, most confident first
    /// (`links[i][0] == steps[i]`).
    pub links: Vec<Vec<Step>>,
    /// Product of the walked steps' confidences.
    pub confidence: f64,
}

impl Path {
    pub fn hops(&self) -> usize {
        self.steps.len()
    }

    fn single(v: ConceptId) -> Path {
        Path { vertices: vec![v], steps: Vec::new(), links: Vec::new(), confidence: 1.0 }
    }

    /// The path along `links` (one non-empty list per hop, forward orientation) from `start`.
    fn from_links(start: ConceptId, links: Vec<Vec<Step>>) -> Path {
        let steps: Vec<Step> = links.iter().map(|l| l[0].clone()).collect();
        let mut vertices = vec![start];
        vertices.extend(steps.iter().map(|s| s.to));
        let confidence = steps.iter().map(|s| s.confidence as f64).product();
        Path { vertices, steps, links, confidence }
    }
}

/// The edges of a frontier, however the shards are reached.
pub trait Expander {
    /// Every edge of each vertex in `frontier` that passes `filter` (vertices with none may be
    /// left out), with the calls and shards it took.
    fn expand(&self, frontier: &[ConceptId], filter: &EdgeFilter) -> impl Future<Output = Result<Expansion, String>>;
}

#[derive(Debug, Default)]
pub struct Expansion {
    pub edges: Vec<(ConceptId, Vec<Step>)>,
    /// Complete edge lists of vertices beyond the frontier, sent ahead by a shard when the
    /// next levels stayed on it (the local fast path); the search asks no one for them again.
    pub prefetched: Vec<(ConceptId, Vec<Step>)>,
    pub rpcs: usize,
    pub shards: BTreeSet<u32>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub rpcs: usize,
    pub shards: BTreeSet<u32>,
    /// Vertices reached, both directions together, summed over the searches one request made
    /// (one for shortest and confident, up to k × max_depth for k best).
    pub visited: usize,
    /// Levels served wholly from lists a shard sent ahead or an earlier search loaded (no call).
    pub local_levels: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PathError {
    #[error(
        "the search reached {visited} vertices, over the limit of {limit}; narrow it with filters or a lower max_depth"
    )]
    Budget { visited: usize, limit: usize, stats: Stats },
    #[error("expanding a frontier failed: {reason}")]
    Expand { reason: String, stats: Stats },
}

/// What a search may do. `direction` is the request's (`Out` or `Both`).
#[derive(Debug, Clone)]
pub struct Bounds {
    pub max_depth: usize,
    pub max_paths: usize,
    pub visited_max: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { max_depth: 6, max_paths: 5, visited_max: limits::SEARCH_VISITED_MAX }
    }
}

/// How [`k_best_paths`] ranks paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    /// Fewest hops first, then the most confident.
    Hops,
    /// Most confident first, then the fewest hops.
    Confidence,
}

/// The edges joining a vertex to one neighbour, most confident first, stated from the vertex.
type Link = (ConceptId, Vec<Step>);

/// Which side of a search walks: the request's filter, or its reverse (from the end).
#[derive(Clone, Copy, PartialEq)]
enum Walk {
    Forward,
    Backward,
}

/// Vertices and edges a spur search may not use (Yen's algorithm). Edges are vertex pairs in
/// the forward orientation.
#[derive(Default)]
struct Bans {
    vertices: BTreeSet<ConceptId>,
    edges: BTreeSet<(ConceptId, ConceptId)>,
}

impl Bans {
    fn allows(&self, from: ConceptId, to: ConceptId) -> bool {
        !self.vertices.contains(&to) && !self.vertices.contains(&from) && !self.edges.contains(&(from, to))
    }
}

/// The graph as one request has seen it: each vertex's links per walk direction, loaded in
/// batched levels and kept for the request's later searches.
struct Explorer<'a, E> {
    e: &'a E,
    filters: [EdgeFilter; 2],
    /// Collapsed edge lists by direction key (both walks share them when the filter is `Both`).
    adj: BTreeMap<u8, BTreeMap<ConceptId, Vec<Link>>>,
    /// Raw lists sent ahead by shards, by direction key.
    ahead: BTreeMap<u8, BTreeMap<ConceptId, Vec<Step>>>,
    stats: Stats,
    visited_max: usize,
}

fn direction_key(d: Direction) -> u8 {
    match d {
        Direction::Out => 0,
        Direction::In => 1,
        Direction::Both => 2,
    }
}

fn reversed(filter: &EdgeFilter) -> EdgeFilter {
    let direction = match filter.direction {
        Direction::Out => Direction::In,
        Direction::In => Direction::Out,
        Direction::Both => Direction::Both,
    };
    EdgeFilter { direction, ..filter.clone() }
}

/// Groups `v`'s steps by neighbour, most confident first (ties in a fixed order), dropping
/// self-loops: no loop-free path walks one.
fn collapse(v: ConceptId, steps: Vec<Step>) -> Vec<Link> {
    let mut by: BTreeMap<ConceptId, Vec<Step>> = BTreeMap::new();
    for s in steps {
        if s.to != v {
            by.entry(s.to).or_default().push(s);
        }
    }
    by.into_iter()
        .map(|(to, mut l)| {
            l.sort_by(|a, b| {
                b.confidence.total_cmp(&a.confidence).then_with(|| {
                    (a.kind as u8, &a.relation, !a.outgoing).cmp(&(b.kind as u8, &b.relation, !b.outgoing))
                })
            });
            l.dedup();
            (to, l)
        })
        .collect()
}

impl<'a, E: Expander> Explorer<'a, E> {
    fn new(e: &'a E, filter: &EdgeFilter, visited_max: usize) -> Self {
        Explorer {
            e,
            filters: [filter.clone(), reversed(filter)],
            adj: BTreeMap::new(),
            ahead: BTreeMap::new(),
            stats: Stats::default(),
            visited_max,
        }
    }

    fn key(&self, w: Walk) -> u8 {
        direction_key(self.filters[w as usize].direction)
    }

    /// Loads the links of every vertex of `frontier` not loaded yet: from lists sent ahead,
    /// else in one batched expansion.
    async fn load(&mut self, frontier: &[ConceptId], w: Walk) -> Result<(), PathError> {
        let key = self.key(w);
        let adj = self.adj.entry(key).or_default();
        let ahead = self.ahead.entry(key).or_default();
        let mut missing = Vec::new();
        for v in frontier {
            if adj.contains_key(v) {
                continue;
            }
            match ahead.remove(v) {
                Some(steps) => {
                    adj.insert(*v, collapse(*v, steps));
                }
                None => missing.push(*v),
            }
        }
        if missing.is_empty() {
            self.stats.local_levels += 1;
            return Ok(());
        }
        let x = match self.e.expand(&missing, &self.filters[w as usize]).await {
            Ok(x) => x,
            Err(reason) => return Err(PathError::Expand { reason, stats: self.stats.clone() }),
        };
        self.stats.rpcs += x.rpcs;
        self.stats.shards.extend(x.shards);
        let adj = self.adj.entry(key).or_default();
        for (v, steps) in x.edges {
            adj.insert(v, collapse(v, steps));
        }
        for v in missing {
            adj.entry(v).or_default();
        }
        let ahead = self.ahead.entry(key).or_default();
        for (v, steps) in x.prefetched {
            if !adj.contains_key(&v) {
                ahead.insert(v, steps);
            }
        }
        Ok(())
    }

    fn links(&self, v: ConceptId, w: Walk) -> &[Link] {
        self.adj.get(&self.key(w)).and_then(|a| a.get(&v)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Counts `n` more vertices reached; an error past the request's budget.
    fn spend(&mut self, n: usize) -> Result<(), PathError> {
        self.stats.visited += n;
        if self.stats.visited > self.visited_max {
            return Err(PathError::Budget {
                visited: self.stats.visited,
                limit: self.visited_max,
                stats: self.stats.clone(),
            });
        }
        Ok(())
    }
}

/// One side of the bidirectional search: distances and every shortest predecessor link.
struct Side {
    dist: BTreeMap<ConceptId, usize>,
    /// v ← (u, the edges of the hop between u and v in the forward orientation). For the
    /// backward side u is the vertex after v on the way to the end.
    preds: BTreeMap<ConceptId, Vec<(ConceptId, Vec<Step>)>>,
    frontier: Vec<ConceptId>,
    depth: usize,
}

impl Side {
    fn new(root: ConceptId) -> Side {
        Side { dist: BTreeMap::from([(root, 0)]), preds: BTreeMap::new(), frontier: vec![root], depth: 0 }
    }
}

/// Every shortest path from `start` to `end` of at most `bounds.max_depth` hops (up to
/// `bounds.max_paths` of them, highest confidence first; all of them when there are no more).
pub async fn shortest_paths<E: Expander>(
    e: &E,
    start: ConceptId,
    end: ConceptId,
    filter: &EdgeFilter,
    bounds: &Bounds,
) -> Result<(Vec<Path>, Stats), PathError> {
    let mut x = Explorer::new(e, filter, bounds.visited_max);
    let found = shortest(&mut x, start, end, bounds.max_depth, bounds.max_paths, &Bans::default()).await?;
    Ok((found, x.stats))
}

async fn shortest<E: Expander>(
    x: &mut Explorer<'_, E>,
    start: ConceptId,
    end: ConceptId,
    max_depth: usize,
    max_paths: usize,
    bans: &Bans,
) -> Result<Vec<Path>, PathError> {
    if start == end {
        x.spend(1)?;
        return Ok(vec![Path::single(start)]);
    }
    let (mut fwd, mut bwd) = (Side::new(start), Side::new(end));
    let spent = x.stats.visited;
    while fwd.depth + bwd.depth < max_depth && !fwd.frontier.is_empty() && !bwd.frontier.is_empty() {
        let forward = fwd.frontier.len() <= bwd.frontier.len();
        let (side, walk) = if forward { (&mut fwd, Walk::Forward) } else { (&mut bwd, Walk::Backward) };
        side.frontier.sort_unstable();
        x.load(&side.frontier, walk).await?;
        side.depth += 1;
        let depth = side.depth;
        let mut next = Vec::new();
        for &u in &side.frontier {
            for (w, steps) in x.links(u, walk) {
                let w = *w;
                let (from, to) = if forward { (u, w) } else { (w, u) };
                if !bans.allows(from, to) {
                    continue;
                }
                // Backward links are re-stated in the forward orientation (w → u).
                let hop = || -> Vec<Step> {
                    if forward {
                        steps.clone()
                    } else {
                        steps.iter().map(|s| Step { to: u, outgoing: !s.outgoing, ..s.clone() }).collect()
                    }
                };
                match side.dist.get(&w) {
                    None => {
                        side.dist.insert(w, depth);
                        side.preds.insert(w, vec![(u, hop())]);
                        next.push(w);
                    }
                    Some(&d) if d == depth => side.preds.entry(w).or_default().push((u, hop())),
                    Some(_) => {}
                }
            }
        }
        side.frontier = next;
        x.stats.visited = spent;
        x.spend(fwd.dist.len() + bwd.dist.len())?;
        // Vertices at exactly the two depths lie on every path of length fwd.depth + bwd.depth,
        // and no shorter path exists (the sides met at no earlier level).
        let meet: Vec<ConceptId> = fwd
            .dist
            .iter()
            .filter(|(v, d)| **d == fwd.depth && bwd.dist.get(v) == Some(&bwd.depth))
            .map(|(v, _)| *v)
            .collect();
        if !meet.is_empty() {
            x.stats.visited = spent;
            x.spend(union_len(&fwd, &bwd))?;
            return Ok(join(&fwd, &bwd, start, end, &meet, max_paths));
        }
    }
    x.stats.visited = spent;
    x.spend(union_len(&fwd, &bwd))?;
    Ok(Vec::new())
}

fn union_len(a: &Side, b: &Side) -> usize {
    a.dist.len() + b.dist.keys().filter(|v| !a.dist.contains_key(v)).count()
}

/// Every path start → m → end through the meeting vertices (at most `PATHS_ENUMERATED_MAX`),
/// best confidence first, cut to `max_paths`. Each is a distinct vertex sequence: one path
/// passes exactly one vertex at the meeting depth, and predecessors are distinct vertices.
fn join(fwd: &Side, bwd: &Side, start: ConceptId, end: ConceptId, meet: &[ConceptId], max_paths: usize) -> Vec<Path> {
    let cap = limits::PATHS_ENUMERATED_MAX;
    let mut out: Vec<Path> = Vec::new();
    'meet: for &m in meet {
        let heads = halves(&fwd.preds, start, m, cap, true);
        let tails = halves(&bwd.preds, end, m, cap, false);
        for h in &heads {
            for t in &tails {
                if out.len() >= cap {
                    break 'meet;
                }
                let mut links = h.clone();
                links.extend(t.iter().cloned());
                let p = Path::from_links(start, links);
                debug_assert_eq!(p.vertices.last(), Some(&end));
                out.push(p);
            }
        }
    }
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then_with(|| a.vertices.cmp(&b.vertices)));
    out.truncate(max_paths);
    out
}

/// Hop sequences between `root` and `m` along predecessor lists: forward halves run root → m,
/// backward halves m → root. Each step's `to` is the vertex it arrives at.
fn halves(
    preds: &BTreeMap<ConceptId, Vec<(ConceptId, Vec<Step>)>>,
    root: ConceptId,
    m: ConceptId,
    cap: usize,
    forward: bool,
) -> Vec<Vec<Vec<Step>>> {
    if m == root {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for (u, hop) in preds.get(&m).map(Vec::as_slice).unwrap_or(&[]) {
        for mut rest in halves(preds, root, *u, cap, forward) {
            if out.len() >= cap {
                return out;
            }
            if forward {
                // root … u, then u → m.
                rest.push(hop.iter().map(|s| Step { to: m, ..s.clone() }).collect());
            } else {
                // m → u, then u … root.
                rest.insert(0, hop.iter().map(|s| Step { to: *u, ..s.clone() }).collect());
            }
            out.push(rest);
        }
    }
    out
}

/// The path of at most `max_depth` hops with the greatest product of edge confidences, by
/// layered relaxation: each hop expands every vertex whose best confidence improved, in one
/// batched call. None when `end` is not reachable within the bound.
pub async fn most_confident_path<E: Expander>(
    e: &E,
    start: ConceptId,
    end: ConceptId,
    filter: &EdgeFilter,
    bounds: &Bounds,
) -> Result<(Option<Path>, Stats), PathError> {
    let mut x = Explorer::new(e, filter, bounds.visited_max);
    let found = confident(&mut x, start, end, bounds.max_depth, &Bans::default()).await?;
    Ok((found, x.stats))
}

async fn confident<E: Expander>(
    x: &mut Explorer<'_, E>,
    start: ConceptId,
    end: ConceptId,
    max_depth: usize,
    bans: &Bans,
) -> Result<Option<Path>, PathError> {
    if start == end {
        x.spend(1)?;
        return Ok(Some(Path::single(start)));
    }
    // Immutable states (vertex, confidence, parent state and hop), so a later improvement
    // never rewires a path already built on an earlier one.
    type State = (ConceptId, f64, Option<(usize, Vec<Step>)>);
    let mut states: Vec<State> = vec![(start, 1.0, None)];
    // Best confidence reaching each vertex in at most the hops so far, and its state. A state
    // that does not beat it is dominated (more hops, no more confidence); confidences are at
    // most 1, so no cycle ever improves on its own start and every state is loop-free.
    let mut best: BTreeMap<ConceptId, (f64, usize)> = BTreeMap::from([(start, (1.0, 0))]);
    let mut layer: BTreeMap<ConceptId, usize> = BTreeMap::from([(start, 0)]);
    let spent = x.stats.visited;
    for _ in 0..max_depth {
        if layer.is_empty() {
            break;
        }
        let frontier: Vec<ConceptId> = layer.keys().copied().collect();
        x.load(&frontier, Walk::Forward).await?;
        let mut improved = BTreeMap::new();
        for (&u, &si) in &layer {
            let cu = states[si].1;
            for (w, steps) in x.links(u, Walk::Forward) {
                if !bans.allows(u, *w) {
                    continue;
                }
                let c = cu * steps[0].confidence as f64;
                if best.get(w).is_some_and(|(b, _)| *b >= c) {
                    continue;
                }
                states.push((*w, c, Some((si, steps.clone()))));
                best.insert(*w, (c, states.len() - 1));
                improved.insert(*w, states.len() - 1);
            }
        }
        x.stats.visited = spent;
        x.spend(states.len())?;
        layer = improved;
    }
    x.stats.visited = spent;
    x.spend(best.len())?;
    let Some(&(_, mut si)) = best.get(&end) else { return Ok(None) };
    let mut links = Vec::new();
    while let Some((p, hop)) = &states[si].2 {
        links.push(hop.clone());
        si = *p;
    }
    links.reverse();
    Ok(Some(Path::from_links(start, links)))
}

/// The `bounds.max_paths` best loop-free paths of at most `bounds.max_depth` hops, ranked by
/// `rank` (ties by vertex sequence), by Yen's algorithm: each next path is the best deviation
/// from a path already found, at one of its vertices, avoiding the root before that vertex and
/// the hops already taken from it. Every spur search shares the request's cache of links.
pub async fn k_best_paths<E: Expander>(
    e: &E,
    start: ConceptId,
    end: ConceptId,
    filter: &EdgeFilter,
    bounds: &Bounds,
    rank: Rank,
) -> Result<(Vec<Path>, Stats), PathError> {
    let mut x = Explorer::new(e, filter, bounds.visited_max);
    let found = yen(&mut x, start, end, bounds, rank).await?;
    Ok((found, x.stats))
}

async fn best<E: Expander>(
    x: &mut Explorer<'_, E>,
    rank: Rank,
    from: ConceptId,
    end: ConceptId,
    max_depth: usize,
    bans: &Bans,
) -> Result<Option<Path>, PathError> {
    match rank {
        Rank::Hops => Ok(shortest(x, from, end, max_depth, 1, bans).await?.pop()),
        Rank::Confidence => confident(x, from, end, max_depth, bans).await,
    }
}

fn ranked(rank: Rank, a: &Path, b: &Path) -> std::cmp::Ordering {
    let by_conf = b.confidence.total_cmp(&a.confidence);
    let by_hops = a.hops().cmp(&b.hops());
    match rank {
        Rank::Hops => by_hops.then(by_conf),
        Rank::Confidence => by_conf.then(by_hops),
    }
    .then_with(|| a.vertices.cmp(&b.vertices))
}

async fn yen<E: Expander>(
    x: &mut Explorer<'_, E>,
    start: ConceptId,
    end: ConceptId,
    bounds: &Bounds,
    rank: Rank,
) -> Result<Vec<Path>, PathError> {
    let Some(first) = best(x, rank, start, end, bounds.max_depth, &Bans::default()).await? else {
        return Ok(Vec::new());
    };
    let mut found = vec![first];
    let mut seen: BTreeSet<Vec<ConceptId>> = BTreeSet::from([found[0].vertices.clone()]);
    let mut candidates: Vec<Path> = Vec::new();
    while found.len() < bounds.max_paths {
        let prev = found.last().cloned().unwrap_or_else(|| Path::single(start));
        for i in 0..prev.hops() {
            let spur = prev.vertices[i];
            let root = &prev.vertices[..=i];
            let mut bans = Bans { vertices: root[..i].iter().copied().collect(), edges: BTreeSet::new() };
            for p in &found {
                if p.vertices.len() > i + 1 && p.vertices[..=i] == *root {
                    bans.edges.insert((spur, p.vertices[i + 1]));
                }
            }
            let Some(tail) = best(x, rank, spur, end, bounds.max_depth - i, &bans).await? else { continue };
            let mut links = prev.links[..i].to_vec();
            links.extend(tail.links);
            let p = Path::from_links(start, links);
            if seen.insert(p.vertices.clone()) {
                candidates.push(p);
            }
        }
        let Some(i) = (0..candidates.len()).min_by(|a, b| ranked(rank, &candidates[*a], &candidates[*b])) else {
            break;
        };
        found.push(candidates.swap_remove(i));
    }
    Ok(found)
}

/// The probability that at least one of `paths` holds when each hop (an unordered vertex pair,
/// counted once however many paths walk it) holds independently with its walked confidence.
/// Exact by conditioning on shared hops; paths that share no hop combine by noisy-OR. It never
/// exceeds the noisy-OR of the paths' own confidences, which would count shared evidence twice.
/// Past a work bound it returns the noisy-OR of a greedy hop-disjoint subset (most confident
/// first), which is a lower bound of the exact value.
pub fn combined_confidence(paths: &[Path]) -> f64 {
    let sets: Vec<Vec<(Hop, f64)>> = paths
        .iter()
        .map(|p| {
            let mut hops: Vec<(Hop, f64)> = p
                .steps
                .iter()
                .zip(&p.vertices)
                .map(|(s, v)| (hop_key(*v, s.to), (s.confidence as f64).clamp(0.0, 1.0)))
                .collect();
            hops.sort_by_key(|h| h.0);
            hops.dedup_by(|a, b| a.0 == b.0);
            hops
        })
        .collect();
    let mut work = COMBINE_WORK_MAX;
    union_probability(sets.clone(), &mut work).unwrap_or_else(|| disjoint_lower_bound(sets))
}

type Hop = (ConceptId, ConceptId);

/// Conditioning steps [`combined_confidence`] may take before it settles for its lower bound.
const COMBINE_WORK_MAX: usize = 20_000;

fn hop_key(a: ConceptId, b: ConceptId) -> Hop {
    (a.min(b), a.max(b))
}

fn union_probability(mut paths: Vec<Vec<(Hop, f64)>>, work: &mut usize) -> Option<f64> {
    *work = work.checked_sub(1)?;
    if paths.is_empty() {
        return Some(0.0);
    }
    if paths.iter().any(Vec::is_empty) {
        return Some(1.0);
    }
    // A path whose hops include all of another's adds nothing to the union.
    paths.sort_by_key(Vec::len);
    let mut kept: Vec<Vec<(Hop, f64)>> = Vec::new();
    for p in paths {
        if !kept.iter().any(|k| k.iter().all(|h| p.iter().any(|q| q.0 == h.0))) {
            kept.push(p);
        }
    }
    let mut uses: BTreeMap<Hop, (usize, f64)> = BTreeMap::new();
    for p in &kept {
        for (h, c) in p {
            uses.entry(*h).or_insert((0, *c)).0 += 1;
        }
    }
    let Some((&shared, &(_, c))) = uses.iter().filter(|(_, (n, _))| *n > 1).max_by_key(|(_, (n, _))| *n) else {
        // No hop shared: the paths are independent.
        let none: f64 = kept.iter().map(|p| 1.0 - p.iter().map(|(_, c)| c).product::<f64>()).product();
        return Some(1.0 - none);
    };
    let holds: Vec<Vec<(Hop, f64)>> =
        kept.iter().map(|p| p.iter().filter(|(h, _)| *h != shared).copied().collect()).collect();
    let fails: Vec<Vec<(Hop, f64)>> = kept.into_iter().filter(|p| p.iter().all(|(h, _)| *h != shared)).collect();
    Some(c * union_probability(holds, work)? + (1.0 - c) * union_probability(fails, work)?)
}

fn disjoint_lower_bound(mut paths: Vec<Vec<(Hop, f64)>>) -> f64 {
    let conf = |p: &Vec<(Hop, f64)>| p.iter().map(|(_, c)| c).product::<f64>();
    paths.sort_by(|a, b| conf(b).total_cmp(&conf(a)));
    let mut used: BTreeSet<Hop> = BTreeSet::new();
    let mut none = 1.0;
    for p in &paths {
        if p.iter().all(|(h, _)| !used.contains(h)) {
            used.extend(p.iter().map(|(h, _)| *h));
            none *= 1.0 - conf(p);
        }
    }
    1.0 - none
}

#[cfg(test)]
mod tests;
