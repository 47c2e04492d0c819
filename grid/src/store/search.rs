//! Local path search over any [`Graph`]: all shortest paths (up to k) by level-synchronous BFS
//! with predecessor lists, and the most confident path within a hop bound (max product of edge
//! confidences) by layered relaxation with dominance pruning.

use std::collections::HashMap;

use crate::ids::ConceptId;
use crate::model::{AssocKind, EdgeFilter};

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub to: ConceptId,
    pub kind: AssocKind,
    pub relation: String,
    pub confidence: f32,
    /// true: followed from source to target; false: walked backwards along an in-edge.
    pub outgoing: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub vertices: Vec<ConceptId>,
    pub steps: Vec<Step>,
    /// Product of the steps' confidences.
    pub confidence: f64,
}

impl Path {
    pub fn hops(&self) -> usize {
        self.steps.len()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    #[error(
        "search visited {visited} vertices, over the limit of {limit}; narrow it with filters or a lower max_depth"
    )]
    VisitedLimit { visited: usize, limit: usize },
}

pub trait Graph {
    /// Calls `f` for each edge of `v` passing `filter`, until it returns false.
    fn expand(&self, v: ConceptId, filter: &EdgeFilter, f: &mut dyn FnMut(Step) -> bool);
}

impl Graph for super::ShardStore {
    fn expand(&self, v: ConceptId, filter: &EdgeFilter, f: &mut dyn FnMut(Step) -> bool) {
        self.for_each_edge(v, filter, |e| {
            f(Step {
                to: e.other,
                kind: e.kind,
                relation: e.relation.to_string(),
                confidence: e.confidence,
                outgoing: e.outgoing,
            })
        });
    }
}

/// Every shortest path from `start` to `end` (up to `max_paths`), best confidence first.
/// Empty when no path of at most `max_depth` hops exists.
pub fn shortest_paths(
    g: &dyn Graph,
    start: ConceptId,
    end: ConceptId,
    max_paths: usize,
    max_depth: usize,
    filter: &EdgeFilter,
    visited_max: usize,
) -> Result<Vec<Path>, SearchError> {
    if start == end {
        return Ok(vec![Path { vertices: vec![start], steps: vec![], confidence: 1.0 }]);
    }
    let mut dist: HashMap<ConceptId, usize> = HashMap::from([(start, 0)]);
    let mut preds: HashMap<ConceptId, Vec<(ConceptId, Step)>> = HashMap::new();
    let mut frontier = vec![start];
    for depth in 1..=max_depth {
        let mut next = Vec::new();
        for &u in &frontier {
            g.expand(u, filter, &mut |step| {
                match dist.get(&step.to) {
                    None => {
                        dist.insert(step.to, depth);
                        next.push(step.to);
                        preds.insert(step.to, vec![(u, step)]);
                    }
                    Some(&d) if d == depth => preds.entry(step.to).or_default().push((u, step)),
                    Some(_) => {}
                }
                true
            });
            if dist.len() > visited_max {
                return Err(SearchError::VisitedLimit { visited: dist.len(), limit: visited_max });
            }
        }
        if dist.contains_key(&end) {
            let mut out = Vec::new();
            let mut rev: Vec<(ConceptId, Step)> = Vec::new();
            collect(&preds, start, end, max_paths, &mut rev, &mut out);
            out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
            return Ok(out);
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(Vec::new())
}

/// Walks predecessor lists back from `v` to `start`, emitting whole paths.
fn collect(
    preds: &HashMap<ConceptId, Vec<(ConceptId, Step)>>,
    start: ConceptId,
    v: ConceptId,
    max_paths: usize,
    rev: &mut Vec<(ConceptId, Step)>,
    out: &mut Vec<Path>,
) {
    if out.len() >= max_paths {
        return;
    }
    if v == start {
        let mut vertices = vec![start];
        let mut steps = Vec::with_capacity(rev.len());
        for (_, s) in rev.iter().rev() {
            vertices.push(s.to);
            steps.push(s.clone());
        }
        let confidence = steps.iter().map(|s| s.confidence as f64).product();
        out.push(Path { vertices, steps, confidence });
        return;
    }
    for (u, step) in preds.get(&v).map(Vec::as_slice).unwrap_or(&[]) {
        rev.push((*u, step.clone()));
        collect(preds, start, *u, max_paths, rev, out);
        rev.pop();
        if out.len() >= max_paths {
            return;
        }
    }
}

/// The path of at most `max_depth` hops with the greatest product of confidences.
pub fn most_confident_path(
    g: &dyn Graph,
    start: ConceptId,
    end: ConceptId,
    max_depth: usize,
    filter: &EdgeFilter,
    visited_max: usize,
) -> Result<Option<Path>, SearchError> {
    struct State {
        v: ConceptId,
        conf: f64,
        parent: Option<(usize, Step)>,
    }
    if start == end {
        return Ok(Some(Path { vertices: vec![start], steps: vec![], confidence: 1.0 }));
    }
    let mut states = vec![State { v: start, conf: 1.0, parent: None }];
    // Best confidence reaching each vertex in at most the current number of hops: a state that
    // does not beat it is dominated (more hops, no more confidence) and is dropped.
    let mut best: HashMap<ConceptId, (f64, usize)> = HashMap::from([(start, (1.0, 0))]);
    let mut layer = vec![0usize];
    for _ in 0..max_depth {
        let mut improved: HashMap<ConceptId, usize> = HashMap::new();
        for &si in &layer {
            let (u, conf) = (states[si].v, states[si].conf);
            g.expand(u, filter, &mut |step| {
                let c = conf * step.confidence as f64;
                if best.get(&step.to).is_some_and(|(b, _)| *b >= c) {
                    return true;
                }
                let to = step.to;
                states.push(State { v: to, conf: c, parent: Some((si, step)) });
                best.insert(to, (c, states.len() - 1));
                improved.insert(to, states.len() - 1);
                true
            });
            if states.len() > visited_max {
                return Err(SearchError::VisitedLimit { visited: states.len(), limit: visited_max });
            }
        }
        if improved.is_empty() {
            break;
        }
        let mut next: Vec<usize> = improved.into_values().collect();
        next.sort_unstable();
        layer = next;
    }
    let Some(&(conf, mut si)) = best.get(&end) else {
        return Ok(None);
    };
    let mut steps = Vec::new();
    let mut vertices = vec![end];
    while let Some((p, step)) = &states[si].parent {
        steps.push(step.clone());
        si = *p;
        vertices.push(states[si].v);
    }
    steps.reverse();
    vertices.reverse();
    Ok(Some(Path { vertices, steps, confidence: conf }))
}
