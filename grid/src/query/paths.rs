//! Path finding across shards (architecture.md §6): bidirectional, level-synchronous BFS. Each level
//! expands the smaller frontier with one batched call per shard (the [`Expander`] groups and
//! parallelises), never one call per vertex. Shortest mode returns every shortest path up to
//! `max_paths`, best confidence first; confident mode finds the path with the greatest product
//! of edge confidences by layered relaxation (one batched expansion per hop).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use crate::ids::ConceptId;
use crate::limits;
use crate::model::{Direction, EdgeFilter};
use crate::store::search::{Path, Step};

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
    /// Distinct vertices reached, both directions together.
    pub visited: usize,
    /// Levels served wholly from lists a shard sent ahead (no call made).
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

/// One side of the bidirectional search: distances and every shortest predecessor step.
struct Side {
    dist: BTreeMap<ConceptId, usize>,
    /// For the forward side: v ← (u, step u→v). For the backward side: v ← (w, step v→w),
    /// stated in the forward orientation.
    preds: BTreeMap<ConceptId, Vec<(ConceptId, Step)>>,
    frontier: Vec<ConceptId>,
    depth: usize,
}

impl Side {
    fn new(root: ConceptId) -> Side {
        Side { dist: BTreeMap::from([(root, 0)]), preds: BTreeMap::new(), frontier: vec![root], depth: 0 }
    }
}

/// Lists sent ahead by shards, per walk direction (the only part of the filter that differs
/// between the two sides of one search).
#[derive(Default)]
struct Prefetched(BTreeMap<u8, BTreeMap<ConceptId, Vec<Step>>>);

fn direction_key(d: Direction) -> u8 {
    match d {
        Direction::Out => 0,
        Direction::In => 1,
        Direction::Both => 2,
    }
}

/// Expands one level: vertices whose lists were sent ahead are served from them; the rest
/// (if any) take one batched expansion.
async fn expand_level<E: Expander>(
    e: &E,
    ahead: &mut Prefetched,
    frontier: &[ConceptId],
    filter: &EdgeFilter,
    stats: &mut Stats,
) -> Result<Vec<(ConceptId, Vec<Step>)>, String> {
    let cache = ahead.0.entry(direction_key(filter.direction)).or_default();
    let mut edges = Vec::new();
    let mut missing = Vec::new();
    for v in frontier {
        match cache.get(v) {
            Some(steps) => edges.push((*v, steps.clone())),
            None => missing.push(*v),
        }
    }
    if missing.is_empty() {
        stats.local_levels += 1;
        return Ok(edges);
    }
    let x = e.expand(&missing, filter).await?;
    stats.rpcs += x.rpcs;
    stats.shards.extend(x.shards);
    edges.extend(x.edges);
    cache.extend(x.prefetched);
    Ok(edges)
}

fn reversed(filter: &EdgeFilter) -> EdgeFilter {
    let direction = match filter.direction {
        Direction::Out => Direction::In,
        Direction::In => Direction::Out,
        Direction::Both => Direction::Both,
    };
    EdgeFilter { direction, ..filter.clone() }
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
    let mut stats = Stats::default();
    if start == end {
        stats.visited = 1;
        return Ok((vec![Path { vertices: vec![start], steps: vec![], confidence: 1.0 }], stats));
    }
    let back_filter = reversed(filter);
    let mut ahead = Prefetched::default();
    let (mut fwd, mut bwd) = (Side::new(start), Side::new(end));
    while fwd.depth + bwd.depth < bounds.max_depth && !fwd.frontier.is_empty() && !bwd.frontier.is_empty() {
        let forward = fwd.frontier.len() <= bwd.frontier.len();
        let (side, f) = if forward { (&mut fwd, filter) } else { (&mut bwd, &back_filter) };
        let mut edges = match expand_level(e, &mut ahead, &side.frontier, f, &mut stats).await {
            Ok(x) => x,
            Err(reason) => return Err(PathError::Expand { reason, stats }),
        };
        side.depth += 1;
        let depth = side.depth;
        let mut next = Vec::new();
        edges.sort_by_key(|(v, _)| *v);
        for (u, steps) in edges {
            if side.dist.get(&u) != Some(&(depth - 1)) {
                continue;
            }
            for s in steps {
                let w = s.to;
                // Backward steps are re-stated in the forward orientation (w → u).
                let step = if forward { s } else { Step { to: u, outgoing: !s.outgoing, ..s } };
                match side.dist.get(&w) {
                    None => {
                        side.dist.insert(w, depth);
                        side.preds.insert(w, vec![(u, step)]);
                        next.push(w);
                    }
                    Some(&d) if d == depth => side.preds.entry(w).or_default().push((u, step)),
                    Some(_) => {}
                }
            }
        }
        side.frontier = next;
        stats.visited = fwd.dist.len() + bwd.dist.len();
        if stats.visited > bounds.visited_max {
            return Err(PathError::Budget { visited: stats.visited, limit: bounds.visited_max, stats });
        }
        // Vertices at exactly the two depths lie on every path of length fwd.depth + bwd.depth,
        // and no shorter path exists (the sides met at no earlier level).
        let meet: Vec<ConceptId> = fwd
            .dist
            .iter()
            .filter(|(v, d)| **d == fwd.depth && bwd.dist.get(v) == Some(&bwd.depth))
            .map(|(v, _)| *v)
            .collect();
        if !meet.is_empty() {
            stats.visited = fwd.dist.keys().chain(bwd.dist.keys()).collect::<BTreeSet<_>>().len();
            return Ok((join(&fwd, &bwd, start, end, &meet, bounds.max_paths), stats));
        }
    }
    stats.visited = fwd.dist.keys().chain(bwd.dist.keys()).collect::<BTreeSet<_>>().len();
    Ok((Vec::new(), stats))
}

/// Every path start → m → end through the meeting vertices (at most `PATHS_ENUMERATED_MAX`),
/// distinct, best confidence first, cut to `max_paths`.
fn join(fwd: &Side, bwd: &Side, start: ConceptId, end: ConceptId, meet: &[ConceptId], max_paths: usize) -> Vec<Path> {
    let cap = limits::PATHS_ENUMERATED_MAX;
    let mut out: Vec<Path> = Vec::new();
    for &m in meet {
        let heads = halves(&fwd.preds, start, m, cap, true);
        let tails = halves(&bwd.preds, end, m, cap, false);
        for h in &heads {
            for t in &tails {
                if out.len() >= cap {
                    break;
                }
                let mut steps = h.clone();
                steps.extend(t.iter().cloned());
                let mut vertices = vec![start];
                let mut at = start;
                for s in &steps {
                    at = s.to;
                    vertices.push(at);
                }
                debug_assert_eq!(at, end);
                let confidence = steps.iter().map(|s| s.confidence as f64).product();
                out.push(Path { vertices, steps, confidence });
            }
        }
    }
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence).then_with(|| a.vertices.cmp(&b.vertices)));
    out.dedup_by(|a, b| a.vertices == b.vertices && a.steps == b.steps);
    out.truncate(max_paths);
    out
}

/// Step sequences between `root` and `m` along predecessor lists: forward halves run root → m,
/// backward halves m → root. Each step's `to` is the vertex it arrives at.
fn halves(
    preds: &BTreeMap<ConceptId, Vec<(ConceptId, Step)>>,
    root: ConceptId,
    m: ConceptId,
    cap: usize,
    forward: bool,
) -> Vec<Vec<Step>> {
    if m == root {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for (u, step) in preds.get(&m).map(Vec::as_slice).unwrap_or(&[]) {
        for mut rest in halves(preds, root, *u, cap, forward) {
            if out.len() >= cap {
                return out;
            }
            if forward {
                // root … u, then u → m.
                rest.push(Step { to: m, ..step.clone() });
            } else {
                // m → u, then u … root.
                rest.insert(0, Step { to: *u, ..step.clone() });
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
    let mut stats = Stats::default();
    // Immutable states (vertex, confidence, parent state and step), so a later improvement
    // never rewires a path already built on an earlier one.
    type State = (ConceptId, f64, Option<(usize, Step)>);
    let mut states: Vec<State> = vec![(start, 1.0, None)];
    // Best confidence reaching each vertex in at most the hops so far, and its state. A state
    // that does not beat it is dominated (more hops, no more confidence); confidences are at
    // most 1, so no cycle ever improves on its own start.
    let mut best: BTreeMap<ConceptId, (f64, usize)> = BTreeMap::from([(start, (1.0, 0))]);
    let mut layer: BTreeMap<ConceptId, usize> = BTreeMap::from([(start, 0)]);
    let mut ahead = Prefetched::default();
    for _ in 0..bounds.max_depth {
        if layer.is_empty() {
            break;
        }
        let frontier: Vec<ConceptId> = layer.keys().copied().collect();
        let mut edges = match expand_level(e, &mut ahead, &frontier, filter, &mut stats).await {
            Ok(x) => x,
            Err(reason) => return Err(PathError::Expand { reason, stats }),
        };
        let mut improved = BTreeMap::new();
        edges.sort_by_key(|(v, _)| *v);
        for (u, steps) in edges {
            let Some(&si) = layer.get(&u) else { continue };
            let cu = states[si].1;
            for s in steps {
                let c = cu * s.confidence as f64;
                if best.get(&s.to).is_some_and(|(b, _)| *b >= c) {
                    continue;
                }
                let to = s.to;
                states.push((to, c, Some((si, s))));
                best.insert(to, (c, states.len() - 1));
                improved.insert(to, states.len() - 1);
            }
        }
        stats.visited = best.len();
        if states.len() > bounds.visited_max {
            return Err(PathError::Budget { visited: states.len(), limit: bounds.visited_max, stats });
        }
        layer = improved;
    }
    let Some(&(confidence, mut si)) = best.get(&end) else { return Ok((None, stats)) };
    let mut steps = Vec::new();
    while let Some((p, s)) = &states[si].2 {
        steps.push(s.clone());
        si = *p;
    }
    steps.reverse();
    let mut vertices = vec![start];
    vertices.extend(steps.iter().map(|s| s.to));
    Ok((Some(Path { vertices, steps, confidence }), stats))
}

#[cfg(test)]
mod tests;
