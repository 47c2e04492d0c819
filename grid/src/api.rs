//! The plain query and learning API (architecture.md §1, §8): what `bin/` serves over HTTP and what the
//! simulator and tests call directly. Requests and answers are serde types, validated here, so
//! every front end rejects the same inputs with the same messages; errors carry a code that
//! maps to one HTTP status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sutra_proto as pb;

use crate::ids::ConceptId;
use crate::limits;
use crate::model::Consistency;
use crate::model::{self, AssocKind, Association, ConceptWrite, Direction, EdgeFilter, Forget, WriteBatch};
use crate::query::paths::{self, Bounds, Path, PathError, Rank, Stats};
use crate::query::router::GridExpander;
use crate::query::{Router, RouterError, ShardWrite};
use crate::wire::{id_from_pb, kind_from_pb};

/// What went wrong, as a front end reports it. `status` is the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    #[serde(skip)]
    pub status: u16,
    /// Extra structured facts (a budget error's partial statistics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn bad_request(field: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError { code: "bad_request", message: format!("{field}: {why}"), status: 400, details: None }
    }
    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError { code: "not_found", message: what.to_string(), status: 404, details: None }
    }
    pub fn too_large(what: impl std::fmt::Display) -> ApiError {
        ApiError { code: "too_large", message: what.to_string(), status: 413, details: None }
    }
    pub fn timeout(what: impl std::fmt::Display) -> ApiError {
        ApiError { code: "timeout", message: what.to_string(), status: 504, details: None }
    }
    pub fn unavailable(what: impl std::fmt::Display) -> ApiError {
        ApiError { code: "unavailable", message: what.to_string(), status: 503, details: None }
    }

    /// The JSON body every front end sends: `{"error": {"code", "message", ...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> ApiError {
        match &e {
            RouterError::Shard { source, .. } if source.code() == Some(tonic::Code::InvalidArgument) => {
                ApiError { code: "bad_request", message: e.to_string(), status: 400, details: None }
            }
            RouterError::Truncated { .. } => {
                ApiError { code: "budget_exceeded", message: e.to_string(), status: 422, details: None }
            }
            _ => ApiError::unavailable(e),
        }
    }
}

fn stats_json(s: &Stats) -> serde_json::Value {
    serde_json::json!({
        "visited": s.visited, "rpcs": s.rpcs, "local_levels": s.local_levels, "shards_accessed": s.shards.len(),
    })
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        match &e {
            PathError::Budget { stats, .. } => ApiError {
                code: "budget_exceeded",
                message: e.to_string(),
                status: 422,
                details: Some(stats_json(stats)),
            },
            PathError::Expand { stats, .. } => {
                ApiError { code: "unavailable", message: e.to_string(), status: 503, details: Some(stats_json(stats)) }
            }
        }
    }
}

/// Parses a JSON request body; a bad one is a 400 naming the field (its path) at fault.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let v: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" || path.is_empty() { "body".to_string() } else { path };
        ApiError::bad_request(&field, e.into_inner())
    })?;
    Ok(v)
}

/// A concept named by a 32-hex-char id or by a label (any spelling of it).
/// `wait_for`: `in_edges` (the default) or `commit`.
fn wait_for(v: Option<&str>) -> Result<bool, ApiError> {
    match v.unwrap_or("in_edges") {
        "in_edges" => Ok(true),
        "commit" => Ok(false),
        other => Err(ApiError::bad_request("wait_for", format!("'{other}' is not one of in_edges, commit"))),
    }
}

/// A concept named by label or id, checked like every other key.
fn concept_key(field: &str, key: &str) -> Result<ConceptId, ApiError> {
    if model::label_is_blank(key) {
        return Err(ApiError::bad_request(field, "must name a concept (a label or a 32-hex-char id)"));
    }
    if key.len() > limits::LABEL_BYTES_MAX {
        return Err(ApiError::bad_request(field, format!("longer than {} bytes", limits::LABEL_BYTES_MAX)));
    }
    Ok(resolve(key))
}

/// `prefix` names the field in errors (`forget.associations[3].`).
fn association_ref(prefix: &str, a: &AssociationRef) -> Result<Forget, ApiError> {
    let field = |f: &str| format!("{prefix}{f}");
    let source = concept_key(&field("source"), &a.source)?;
    let target = concept_key(&field("target"), &a.target)?;
    if a.relation.trim().is_empty() {
        return Err(ApiError::bad_request(&field("relation"), "must not be blank"));
    }
    if a.relation.len() > limits::RELATION_BYTES_MAX {
        return Err(ApiError::bad_request(
            &field("relation"),
            format!("longer than {} bytes", limits::RELATION_BYTES_MAX),
        ));
    }
    let kind = match a.kind.as_deref() {
        None => None,
        Some(k) => Some(parse_kinds(&field("kind"), &[k.to_string()])?[0]),
    };
    Ok(Forget::Association { source, target, relation: a.relation.clone(), kind })
}

/// `/learn`'s `forget`: the concepts' ids, and the associations as retractions.
fn forget_plan(f: &ForgetIn) -> Result<(Vec<ConceptId>, Vec<Forget>), ApiError> {
    if f.concepts.len() + f.associations.len() > limits::BATCH_ITEMS_MAX {
        return Err(ApiError::bad_request("forget", format!("at most {} items", limits::BATCH_ITEMS_MAX)));
    }
    let mut concepts = Vec::new();
    for (i, c) in f.concepts.iter().enumerate() {
        concepts.push(concept_key(&format!("forget.concepts[{i}]"), c)?);
    }
    concepts.sort_unstable();
    concepts.dedup();
    let mut associations = Vec::new();
    for (i, a) in f.associations.iter().enumerate() {
        if a.wait_for.is_some() {
            return Err(ApiError::bad_request(&format!("forget.associations[{i}].wait_for"), "belongs to the request"));
        }
        associations.push(association_ref(&format!("forget.associations[{i}]."), a)?);
    }
    Ok((concepts, associations))
}

pub fn resolve(key: &str) -> ConceptId {
    ConceptId::parse_hex(key.trim()).unwrap_or_else(|| ConceptId::from_label(key))
}

/// `strong` (the default) or `eventual`.
pub fn parse_consistency(field: &str, s: Option<&str>) -> Result<Consistency, ApiError> {
    match s.unwrap_or("strong") {
        "strong" => Ok(Consistency::Strong),
        "eventual" => Ok(Consistency::Eventual),
        other => Err(ApiError::bad_request(field, format!("'{other}' is not one of strong, eventual"))),
    }
}

fn parse_kinds(field: &str, kinds: &[String]) -> Result<Vec<AssocKind>, ApiError> {
    kinds
        .iter()
        .map(|k| {
            AssocKind::parse(k).ok_or_else(|| {
                ApiError::bad_request(
                    field,
                    format!("'{k}' is not one of semantic, causal, temporal, hierarchical, compositional"),
                )
            })
        })
        .collect()
}

fn check_confidence(field: &str, c: f32) -> Result<f32, ApiError> {
    if (0.0..=1.0).contains(&c) {
        Ok(c)
    } else {
        Err(ApiError::bad_request(field, format!("{c} is outside [0, 1]")))
    }
}

fn direction_name(outgoing: bool) -> &'static str {
    if outgoing {
        "out"
    } else {
        "in"
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and answers.

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptIn {
    pub label: String,
    #[serde(default)]
    pub content: String,
    /// Client-supplied embedding (the grid's dimension); absent: the built-in embedder's.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    #[serde(default)]
    pub confidence: Option<f32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssociationIn {
    /// Label or 32-hex-char id.
    pub source: String,
    pub target: String,
    /// semantic (default), causal, temporal, hierarchical, compositional.
    #[serde(default)]
    pub kind: Option<String>,
    pub relation: String,
    #[serde(default)]
    pub confidence: Option<f32>,
    #[serde(default)]
    pub evidence: String,
}

/// `POST /learn`: sentences in `content`, or structured `concepts` and `associations` (or both).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LearnRequest {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub concepts: Vec<ConceptIn>,
    #[serde(default)]
    pub associations: Vec<AssociationIn>,
    /// Fill missing vectors with the built-in embedder (default true).
    #[serde(default)]
    pub embed: Option<bool>,
    /// Create a concept for each association end named by a label that `concepts` does not
    /// list (default true; it then has no content and no vector, and its confidence is 1).
    #[serde(default)]
    pub create_concepts: Option<bool>,
    /// `in_edges` (default): answer once every association is stored at both ends, so this
    /// client's next read sees it from either concept. `commit`: answer once the source's
    /// shard committed it; the target's shard gets its in-edge shortly after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
    /// What to take back, after the upserts (architecture.md §12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget: Option<ForgetIn>,
}

/// Concepts (labels or ids) and associations to take back.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetIn {
    #[serde(default)]
    pub concepts: Vec<String>,
    #[serde(default)]
    pub associations: Vec<AssociationRef>,
}

/// An association to take back: (source, target, relation), of `kind` or of every kind.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssociationRef {
    /// Label or 32-hex-char id.
    pub source: String,
    pub target: String,
    pub relation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// As `/learn`'s: `in_edges` (default) answers once the target's side is gone too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
}

/// What a retraction removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetResponse {
    /// The concept's id (`DELETE /concepts/…`), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Concepts and associations removed (an association whose ends live on two shards
    /// may count once per side a step of the retraction removed).
    pub forgotten: u64,
    pub shards: Vec<u32>,
    /// The other shards' sides are gone too (always true with `wait_for: in_edges`).
    pub in_edges_delivered: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptRef {
    pub id: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripleOut {
    pub subject: String,
    pub relation: String,
    pub object: String,
    pub kind: String,
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnResponse {
    pub concepts: Vec<ConceptRef>,
    pub triples: Vec<TripleOut>,
    pub associations_created: usize,
    /// Sentences that matched no pattern: stored as concepts, no association extracted.
    pub unmatched: Vec<String>,
    pub shards: Vec<u32>,
    /// Every association is stored at both ends (always true with `wait_for: in_edges`).
    pub in_edges_delivered: bool,
    /// Concepts and associations `forget` removed.
    #[serde(default)]
    pub forgotten: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptOut {
    pub id: String,
    pub label: String,
    pub content: String,
    pub confidence: f32,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub vector_dim: usize,
}

/// `GET /concepts/{id}/neighbors` filters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborsQuery {
    /// Comma-separated kinds.
    pub kind: Option<String>,
    /// Comma-separated relation names.
    pub relation: Option<String>,
    /// out, in or both (default).
    pub direction: Option<String>,
    pub limit: Option<u32>,
    pub min_confidence: Option<f32>,
    pub consistency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborOut {
    pub id: String,
    pub label: String,
    pub kind: String,
    pub relation: String,
    pub confidence: f32,
    pub direction: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborsOut {
    pub id: String,
    pub label: String,
    pub neighbors: Vec<NeighborOut>,
    pub truncated: bool,
}

/// `POST /reason`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    pub start: String,
    pub end: String,
    pub max_depth: Option<usize>,
    pub max_paths: Option<usize>,
    /// shortest (default: every shortest path), k_shortest (the k best loop-free paths by
    /// length) or confident (the k best by confidence); k is `max_paths`.
    pub mode: Option<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub relations: Vec<String>,
    /// out or both (default).
    pub direction: Option<String>,
    pub min_confidence: Option<f32>,
    pub consistency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeOut {
    pub kind: String,
    pub relation: String,
    pub confidence: f32,
    /// forward: walked source → target; backward: walked along an in-edge.
    pub direction: String,
    /// Every edge joining the hop's two concepts that passed the filter, most confident first;
    /// the first is the one walked (the fields above). Empty inside this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<EdgeOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathOut {
    pub concepts: Vec<ConceptRef>,
    pub edges: Vec<EdgeOut>,
    pub hops: usize,
    pub confidence: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasonResponse {
    pub found: bool,
    pub paths: Vec<PathOut>,
    /// The probability that at least one returned path holds, each hop independent evidence
    /// counted once however many paths share it (`query::paths::combined_confidence`): the
    /// noisy-OR 1 − Π(1 − cᵢ) when the paths share no hop, less when they do.
    pub confidence: f64,
    pub reasoning: Vec<String>,
    pub shards_accessed: usize,
    pub rpcs: usize,
    /// Levels served from lists a shard sent ahead (the local fast path), with no call.
    pub local_levels: usize,
    pub visited: usize,
    pub latency_ms: f64,
}

/// `POST /search`: `text` (embedded here) or `vector`, and `k`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub text: Option<String>,
    pub vector: Option<Vec<f32>>,
    pub k: Option<usize>,
    pub consistency: Option<String>,
    /// Compare every vector rather than ask the shards' indexes (for checking, small grids).
    pub exact: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHitOut {
    pub id: String,
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub hits: Vec<SearchHitOut>,
    pub shards_accessed: usize,
    pub latency_ms: f64,
    /// The answering replicas' vector indexes, summed over shards.
    pub index: SearchIndexOut,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchIndexOut {
    /// Vectors in the indexes.
    pub vectors: u64,
    /// Vectors written but not indexed yet (each search compares those exactly).
    pub pending: u64,
    pub bytes: u64,
}

/// Which paths `/reason` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every shortest path (up to `max_paths`), most confident first.
    Shortest,
    /// The `max_paths` best loop-free paths by length, then confidence.
    KShortest,
    /// The `max_paths` best loop-free paths by confidence, then length.
    Confident,
}

/// A validated `/reason` request.
#[derive(Debug, Clone)]
pub struct ReasonPlan {
    pub start: ConceptId,
    pub end: ConceptId,
    pub mode: Mode,
    pub filter: EdgeFilter,
    pub bounds: Bounds,
    pub consistency: Consistency,
}

impl ReasonRequest {
    /// Checks every field; the error names the first bad one.
    pub fn plan(&self) -> Result<ReasonPlan, ApiError> {
        for (field, v) in [("start", &self.start), ("end", &self.end)] {
            if model::label_is_blank(v) {
                return Err(ApiError::bad_request(field, "must name a concept (a label or a 32-hex-char id)"));
            }
            if v.len() > limits::LABEL_BYTES_MAX {
                return Err(ApiError::bad_request(field, format!("longer than {} bytes", limits::LABEL_BYTES_MAX)));
            }
        }
        let max_depth = self.max_depth.unwrap_or(limits::REASON_DEPTH_DEFAULT);
        if !(1..=limits::SEARCH_DEPTH_MAX).contains(&max_depth) {
            return Err(ApiError::bad_request("max_depth", format!("must be 1 to {}", limits::SEARCH_DEPTH_MAX)));
        }
        let max_paths = self.max_paths.unwrap_or(limits::REASON_PATHS_DEFAULT);
        if !(1..=limits::SEARCH_PATHS_MAX).contains(&max_paths) {
            return Err(ApiError::bad_request("max_paths", format!("must be 1 to {}", limits::SEARCH_PATHS_MAX)));
        }
        let mode = match self.mode.as_deref().unwrap_or("shortest") {
            "shortest" => Mode::Shortest,
            "k_shortest" => Mode::KShortest,
            "confident" => Mode::Confident,
            other => {
                return Err(ApiError::bad_request(
                    "mode",
                    format!("'{other}' is not one of shortest, k_shortest, confident"),
                ))
            }
        };
        let direction = match self.direction.as_deref().unwrap_or("both") {
            "both" => Direction::Both,
            "out" => Direction::Out,
            other => return Err(ApiError::bad_request("direction", format!("'{other}' is not one of out, both"))),
        };
        if self.relations.len() > limits::FILTER_RELATIONS_MAX {
            return Err(ApiError::bad_request("relations", format!("at most {}", limits::FILTER_RELATIONS_MAX)));
        }
        if let Some(r) = self.relations.iter().find(|r| r.len() > limits::RELATION_BYTES_MAX) {
            return Err(ApiError::bad_request(
                "relations",
                format!(
                    "'{}…' is longer than {} bytes",
                    r.chars().take(16).collect::<String>(),
                    limits::RELATION_BYTES_MAX
                ),
            ));
        }
        let filter = EdgeFilter {
            kinds: parse_kinds("kinds", &self.kinds)?,
            relations: self.relations.clone(),
            direction,
            min_confidence: check_confidence("min_confidence", self.min_confidence.unwrap_or(0.0))?,
        };
        Ok(ReasonPlan {
            start: resolve(&self.start),
            end: resolve(&self.end),
            mode,
            filter,
            bounds: Bounds { max_depth, max_paths, visited_max: limits::REASON_VISITED_MAX },
            consistency: parse_consistency("consistency", self.consistency.as_deref())?,
        })
    }
}

impl NeighborsQuery {
    pub fn filter(&self) -> Result<(EdgeFilter, u32, Consistency), ApiError> {
        let split = |s: &Option<String>| -> Vec<String> {
            s.as_deref()
                .map(|s| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect())
                .unwrap_or_default()
        };
        let relations = split(&self.relation);
        if relations.len() > limits::FILTER_RELATIONS_MAX {
            return Err(ApiError::bad_request("relation", format!("at most {}", limits::FILTER_RELATIONS_MAX)));
        }
        let direction = match self.direction.as_deref().unwrap_or("both") {
            "both" => Direction::Both,
            "out" => Direction::Out,
            "in" => Direction::In,
            other => return Err(ApiError::bad_request("direction", format!("'{other}' is not one of out, in, both"))),
        };
        let limit = self.limit.unwrap_or(limits::NEIGHBORS_PER_VERTEX_DEFAULT as u32);
        if limit == 0 || limit as usize > limits::NEIGHBORS_PER_VERTEX_MAX {
            return Err(ApiError::bad_request("limit", format!("must be 1 to {}", limits::NEIGHBORS_PER_VERTEX_MAX)));
        }
        let filter = EdgeFilter {
            kinds: parse_kinds("kind", &split(&self.kind))?,
            relations,
            direction,
            min_confidence: check_confidence("min_confidence", self.min_confidence.unwrap_or(0.0))?,
        };
        Ok((filter, limit, parse_consistency("consistency", self.consistency.as_deref())?))
    }
}

/// A validated `/learn` request: the write batch plus what the answer reports about it.
#[derive(Debug, Clone)]
pub struct LearnPlan {
    pub batch: WriteBatch,
    pub triples: Vec<TripleOut>,
    pub unmatched: Vec<String>,
}

impl LearnRequest {
    /// Extracts triples, resolves labels, embeds and validates: everything but the write.
    pub fn plan(&self, vector_dim: usize) -> Result<LearnPlan, ApiError> {
        let req = self;
        let embed = req.embed.unwrap_or(true);
        let mut batch = WriteBatch::default();
        let mut index: HashMap<ConceptId, usize> = HashMap::new();
        // Per concept write: whether the embedder may fill its vector. A concept named only as
        // a structured association's end gets no vector, so that naming a known concept never
        // replaces the vector learned from its content.
        let mut fill: Vec<bool> = Vec::new();
        let mut triples = Vec::new();
        let mut unmatched = Vec::new();
        let mut add = |batch: &mut WriteBatch, label: &str, content: &str, vector: Vec<f32>, conf: f32, embed: bool| {
            let id = ConceptId::from_label(label);
            match index.get(&id) {
                Some(&i) => {
                    let c = &mut batch.concepts[i];
                    if c.content.is_empty() && !content.is_empty() {
                        c.content = content.to_string();
                    }
                    if c.vector.is_empty() {
                        c.vector = vector;
                    }
                    fill[i] |= embed;
                }
                None => {
                    index.insert(id, batch.concepts.len());
                    batch.concepts.push(ConceptWrite {
                        label: label.to_string(),
                        content: content.to_string(),
                        vector,
                        confidence: conf,
                    });
                    fill.push(embed);
                }
            }
            id
        };
        if let Some(text) = &req.content {
            let sentences: Vec<&str> = model::extract::sentences(text).collect();
            if sentences.len() > limits::LEARN_SENTENCES_MAX {
                return Err(ApiError::too_large(format!(
                    "content: {} sentences; at most {} per request (use /learn/batch)",
                    sentences.len(),
                    limits::LEARN_SENTENCES_MAX
                )));
            }
            for s in sentences {
                match model::extract::extract_sentence(s) {
                    Some(t) => {
                        let s = add(&mut batch, &t.subject, "", Vec::new(), 1.0, true);
                        let o = add(&mut batch, &t.object, "", Vec::new(), 1.0, true);
                        batch.associations.push(Association {
                            source: s,
                            target: o,
                            kind: t.kind,
                            relation: t.relation.clone(),
                            confidence: 1.0,
                            evidence: t.evidence.clone(),
                        });
                        triples.push(TripleOut {
                            subject: t.subject,
                            relation: t.relation,
                            object: t.object,
                            kind: t.kind.name().to_string(),
                            evidence: t.evidence,
                        });
                    }
                    None => {
                        // Stored as a concept of its own, labelled by the sentence (cut to fit).
                        let mut end = s.len().min(limits::LABEL_BYTES_MAX);
                        while !s.is_char_boundary(end) {
                            end -= 1;
                        }
                        add(&mut batch, &s[..end], s, Vec::new(), 1.0, true);
                        unmatched.push(s.to_string());
                    }
                }
            }
        }
        for (i, c) in req.concepts.iter().enumerate() {
            let conf = check_confidence(&format!("concepts[{i}].confidence"), c.confidence.unwrap_or(1.0))?;
            if model::label_is_blank(&c.label) {
                return Err(ApiError::bad_request(&format!("concepts[{i}].label"), "must not be blank"));
            }
            add(&mut batch, &c.label, &c.content, c.vector.clone().unwrap_or_default(), conf, true);
        }
        let create = req.create_concepts.unwrap_or(true);
        for (i, a) in req.associations.iter().enumerate() {
            let field = |f: &str| format!("associations[{i}].{f}");
            let kind = match a.kind.as_deref() {
                None => AssocKind::Semantic,
                Some(k) => parse_kinds(&field("kind"), &[k.to_string()])?[0],
            };
            let confidence = check_confidence(&field("confidence"), a.confidence.unwrap_or(1.0))?;
            let mut end_id = |key: &str, f: &str| -> Result<ConceptId, ApiError> {
                if model::label_is_blank(key) {
                    return Err(ApiError::bad_request(&field(f), "must name a concept"));
                }
                Ok(match ConceptId::parse_hex(key) {
                    Some(id) => id,
                    None if create => add(&mut batch, key, "", Vec::new(), 1.0, false),
                    None => ConceptId::from_label(key),
                })
            };
            let source = end_id(&a.source, "source")?;
            let target = end_id(&a.target, "target")?;
            batch.associations.push(Association {
                source,
                target,
                kind,
                relation: a.relation.clone(),
                confidence,
                evidence: a.evidence.clone(),
            });
        }
        let forgets = req.forget.as_ref().is_some_and(|f| !f.concepts.is_empty() || !f.associations.is_empty());
        if batch.is_empty() && !forgets {
            return Err(ApiError::bad_request(
                "content",
                "nothing to learn: give content, concepts, associations or forget",
            ));
        }
        if batch.items() > limits::BATCH_ITEMS_MAX {
            return Err(ApiError::too_large(format!(
                "{} items in one request; at most {}",
                batch.items(),
                limits::BATCH_ITEMS_MAX
            )));
        }
        if embed {
            for (c, _) in batch.concepts.iter_mut().zip(&fill).filter(|(c, f)| **f && c.vector.is_empty()) {
                c.vector = model::embed::embed(&format!("{} {}", c.label, c.content), vector_dim);
            }
        }
        model::validate_batch(&batch, vector_dim).map_err(|e| ApiError {
            code: "bad_request",
            message: e.to_string(),
            status: 400,
            details: None,
        })?;
        Ok(LearnPlan { batch, triples, unmatched })
    }
}

/// Noisy-OR: the chance at least one of independent supports holds.
pub fn noisy_or(confidences: impl IntoIterator<Item = f64>) -> f64 {
    1.0 - confidences.into_iter().fold(1.0, |acc, c| acc * (1.0 - c.clamp(0.0, 1.0)))
}

fn edge_out(s: &paths::Step) -> EdgeOut {
    EdgeOut {
        kind: s.kind.name().to_string(),
        relation: s.relation.clone(),
        confidence: s.confidence,
        direction: if s.outgoing { "forward" } else { "backward" }.to_string(),
        all: Vec::new(),
    }
}

/// One readable sentence for a path: each fact in its stored direction.
pub fn explain(path: &PathOut) -> String {
    let name = |i: usize| path.concepts.get(i).map(|c| c.label.as_str()).unwrap_or("?");
    if path.edges.is_empty() {
        return format!("{} is the concept itself.", name(0));
    }
    let facts: Vec<String> = path
        .edges
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let fact = |e: &EdgeOut| {
                let rel = e.relation.replace('_', " ");
                if e.direction == "forward" {
                    format!("{} {rel} {}", name(i), name(i + 1))
                } else {
                    format!("{} {rel} {}", name(i + 1), name(i))
                }
            };
            let also: Vec<String> = e.all.iter().skip(1).map(fact).collect();
            if also.is_empty() {
                fact(e)
            } else {
                format!("{} (also: {})", fact(e), also.join(", "))
            }
        })
        .collect();
    format!(
        "{} connects to {} in {} hop{} (confidence {:.3}): {}.",
        name(0),
        name(path.concepts.len() - 1),
        path.hops,
        if path.hops == 1 { "" } else { "s" },
        path.confidence,
        facts.join("; ")
    )
}

fn concept_out(c: pb::Concept) -> ConceptOut {
    ConceptOut {
        id: c.id.as_ref().map(id_from_pb).unwrap_or_default().to_string(),
        label: c.label,
        content: c.content,
        confidence: c.confidence,
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
        vector_dim: c.vector_len as usize,
    }
}

fn kind_name(k: i32) -> String {
    kind_from_pb(k).map(|k| k.name()).unwrap_or("unknown").to_string()
}

// ---------------------------------------------------------------------------------------------

/// The API over one grid: a router plus the grid's vector width.
pub struct Api {
    router: Arc<Router>,
    master: crate::client::MasterClient,
    vector_dim: usize,
}

impl Api {
    pub fn new(router: Arc<Router>, master: crate::client::MasterClient, vector_dim: usize) -> Api {
        Api { router, master, vector_dim: vector_dim.clamp(1, limits::VECTOR_DIM_MAX) }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn vector_dim(&self) -> usize {
        self.vector_dim
    }

    /// Learns sentences and/or structured items as one routed write, then takes back what
    /// `forget` names.
    pub async fn learn(&self, req: LearnRequest) -> Result<LearnResponse, ApiError> {
        let wait = wait_for(req.wait_for.as_deref())?;
        let LearnPlan { batch, triples, unmatched } = req.plan(self.vector_dim)?;
        let forget = req.forget.as_ref().map(forget_plan).transpose()?;
        // Upserts of the same values: safe to send again to a new primary.
        let mut written = if batch.is_empty() && forget.is_some() {
            Vec::new()
        } else {
            self.router.write_idempotent(&batch).await?
        };
        let mut forgotten = 0;
        if let Some((concepts, associations)) = forget {
            let w = self.forget_items(&concepts, associations).await?;
            forgotten = w.iter().map(|w| w.forgotten as u64).sum();
            written.extend(w);
        }
        let in_edges_delivered = self.await_delivery(&written, wait).await?;
        Ok(LearnResponse {
            forgotten,
            in_edges_delivered,
            concepts: batch
                .concepts
                .iter()
                .map(|c| ConceptRef { id: ConceptId::from_label(&c.label).to_string(), label: c.label.clone() })
                .collect(),
            triples,
            associations_created: batch.associations.len(),
            unmatched,
            shards: written.iter().map(|w| w.shard).collect::<BTreeSet<_>>().into_iter().collect(),
        })
    }

    /// With `wait`, waits until the in-edges (and retractions) `written` owes reached their
    /// shards. Whether they have.
    async fn await_delivery(&self, written: &[ShardWrite], wait: bool) -> Result<bool, ApiError> {
        let pending: Vec<ShardWrite> = written.iter().filter(|w| w.owes_in_edges).cloned().collect();
        if pending.is_empty() {
            return Ok(true);
        }
        if !wait {
            return Ok(false);
        }
        let within = Duration::from_millis(limits::LEARN_DELIVERY_WAIT_MS);
        if !self.router.wait_delivered(&pending, within).await? {
            return Err(ApiError::timeout(format!(
                "the write committed, but its in-edges did not reach their shards within {} ms; \
                 repeating it is safe (writes are upserts, retractions may be repeated)",
                limits::LEARN_DELIVERY_WAIT_MS
            )));
        }
        Ok(true)
    }

    /// Logs the retractions: the associations as one routed write, then each concept.
    async fn forget_items(
        &self,
        concepts: &[ConceptId],
        associations: Vec<Forget>,
    ) -> Result<Vec<ShardWrite>, ApiError> {
        let mut written = Vec::new();
        if !associations.is_empty() {
            let batch = WriteBatch { forget: associations, ..Default::default() };
            written.extend(self.router.write_idempotent(&batch).await?);
        }
        for id in concepts {
            written.extend(self.router.forget_concept(*id).await?);
        }
        Ok(written)
    }

    /// `DELETE /concepts/{key}`: the concept and every association it is an end of.
    pub async fn forget_concept(&self, key: &str, wait: Option<&str>) -> Result<ForgetResponse, ApiError> {
        let wait = wait_for(wait)?;
        let id = concept_key("id", key)?;
        // Read first: a retraction sent twice (a lost answer) removes nothing the second time,
        // yet the concept did exist; 404 only when it was not there before either.
        let existed = !self.router.get_concepts_with(&[id], Consistency::Strong, true).await?.is_empty()
            || self.router.neighbors(id, &EdgeFilter::default(), 1, Consistency::Strong).await?.is_some();
        let written = self.forget_items(&[id], Vec::new()).await?;
        self.forget_answer(written, wait, existed, id.to_string(), || format!("no concept '{key}'")).await
    }

    /// `DELETE /associations`: (source, target, relation), of one kind or every kind.
    pub async fn forget_association(&self, req: &AssociationRef) -> Result<ForgetResponse, ApiError> {
        let wait = wait_for(req.wait_for.as_deref())?;
        let f = association_ref("", req)?;
        let Forget::Association { source, target, relation, kind } = &f else { unreachable!("an association") };
        let filter = EdgeFilter {
            direction: Direction::Out,
            relations: vec![relation.clone()],
            kinds: kind.iter().copied().collect(),
            ..Default::default()
        };
        let limit = limits::NEIGHBORS_PER_VERTEX_MAX as u32;
        let existed =
            self.router.neighbors(*source, &filter, limit, Consistency::Strong).await?.is_some_and(|l| {
                l.edges.iter().any(|e| e.outgoing && e.other.as_ref().map(id_from_pb) == Some(*target))
            });
        let written = self.forget_items(&[], vec![f]).await?;
        let what = || format!("no association {} -[{}]-> {}", req.source, req.relation, req.target);
        self.forget_answer(written, wait, existed, String::new(), what).await
    }

    async fn forget_answer(
        &self,
        written: Vec<ShardWrite>,
        wait: bool,
        existed: bool,
        id: String,
        missing: impl FnOnce() -> String,
    ) -> Result<ForgetResponse, ApiError> {
        let forgotten: u64 = written.iter().map(|w| w.forgotten as u64).sum();
        let in_edges_delivered = self.await_delivery(&written, wait).await?;
        if forgotten == 0 && !existed {
            return Err(ApiError::not_found(missing()));
        }
        let shards = written.iter().map(|w| w.shard).collect::<BTreeSet<_>>().into_iter().collect();
        Ok(ForgetResponse { id, forgotten, shards, in_edges_delivered })
    }

    /// One concept by id or label.
    pub async fn concept(&self, key: &str, consistency: Consistency) -> Result<ConceptOut, ApiError> {
        if model::label_is_blank(key) || key.len() > limits::LABEL_BYTES_MAX {
            return Err(ApiError::bad_request("id", "must be a label or a 32-hex-char id"));
        }
        let id = resolve(key);
        let found = self.router.get_concepts_with(&[id], consistency, true).await?;
        found.into_iter().next().map(concept_out).ok_or_else(|| ApiError::not_found(format!("no concept '{key}'")))
    }

    async fn labels(
        &self,
        ids: &[ConceptId],
        consistency: Consistency,
    ) -> Result<HashMap<ConceptId, String>, ApiError> {
        let mut uniq: Vec<ConceptId> = ids.to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        let found = self.router.get_concepts_with(&uniq, consistency, true).await?;
        Ok(found.into_iter().filter_map(|c| Some((id_from_pb(c.id.as_ref()?), c.label))).collect())
    }

    pub async fn neighbors(&self, key: &str, q: &NeighborsQuery) -> Result<NeighborsOut, ApiError> {
        let (filter, limit, consistency) = q.filter()?;
        let id = resolve(key);
        let list = self
            .router
            .neighbors(id, &filter, limit, consistency)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no concept '{key}'")))?;
        let mut ids: Vec<ConceptId> = list.edges.iter().filter_map(|e| e.other.as_ref().map(id_from_pb)).collect();
        ids.push(id);
        let names = self.labels(&ids, consistency).await?;
        let label = |i: ConceptId| names.get(&i).cloned().unwrap_or_else(|| i.to_string());
        Ok(NeighborsOut {
            id: id.to_string(),
            label: label(id),
            neighbors: list
                .edges
                .into_iter()
                .map(|e| {
                    let other = e.other.as_ref().map(id_from_pb).unwrap_or_default();
                    NeighborOut {
                        id: other.to_string(),
                        label: label(other),
                        kind: kind_name(e.kind),
                        relation: e.relation,
                        confidence: e.confidence,
                        direction: direction_name(e.outgoing).to_string(),
                        evidence: e.evidence,
                    }
                })
                .collect(),
            truncated: list.truncated,
        })
    }

    /// Path finding (architecture.md §6), bounded by `REASON_TIMEOUT_MS` and the request's bounds.
    pub async fn reason(&self, req: &ReasonRequest) -> Result<ReasonResponse, ApiError> {
        let plan = req.plan()?;
        let t0 = tokio::time::Instant::now();
        let budget = Duration::from_millis(limits::REASON_TIMEOUT_MS);
        match tokio::time::timeout(budget, self.reason_plan(req, &plan)).await {
            Ok(r) => r.map(|mut r| {
                r.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
                r
            }),
            Err(_) => Err(ApiError::timeout(format!(
                "the search did not finish within {} ms; narrow it with filters or a lower max_depth",
                limits::REASON_TIMEOUT_MS
            ))),
        }
    }

    async fn reason_plan(&self, req: &ReasonRequest, plan: &ReasonPlan) -> Result<ReasonResponse, ApiError> {
        let e = GridExpander { router: self.router.clone(), consistency: plan.consistency };
        let (found, stats): (Vec<Path>, Stats) = match plan.mode {
            Mode::Shortest => paths::shortest_paths(&e, plan.start, plan.end, &plan.filter, &plan.bounds).await?,
            Mode::KShortest => {
                paths::k_best_paths(&e, plan.start, plan.end, &plan.filter, &plan.bounds, Rank::Hops).await?
            }
            Mode::Confident => {
                paths::k_best_paths(&e, plan.start, plan.end, &plan.filter, &plan.bounds, Rank::Confidence).await?
            }
        };
        if found.is_empty() || plan.start == plan.end {
            // No path: say so only if both ends exist (a concept, or a vertex with edges).
            for (field, id, key) in [("start", plan.start, &req.start), ("end", plan.end, &req.end)] {
                let known = !self.router.get_concepts_with(&[id], plan.consistency, true).await?.is_empty()
                    || self.router.neighbors(id, &EdgeFilter::default(), 1, plan.consistency).await?.is_some();
                if !known {
                    return Err(ApiError::not_found(format!("{field}: no concept '{key}'")));
                }
            }
        }
        let ids: Vec<ConceptId> = found.iter().flat_map(|p| p.vertices.iter().copied()).collect();
        let names = if ids.is_empty() { HashMap::new() } else { self.labels(&ids, plan.consistency).await? };
        let label = |i: &ConceptId| names.get(i).cloned().unwrap_or_else(|| i.to_string());
        let paths: Vec<PathOut> = found
            .iter()
            .map(|p| PathOut {
                concepts: p.vertices.iter().map(|v| ConceptRef { id: v.to_string(), label: label(v) }).collect(),
                edges: p
                    .links
                    .iter()
                    .map(|l| EdgeOut { all: l.iter().map(edge_out).collect(), ..edge_out(&l[0]) })
                    .collect(),
                hops: p.hops(),
                confidence: p.confidence,
            })
            .collect();
        Ok(ReasonResponse {
            found: !paths.is_empty(),
            confidence: paths::combined_confidence(&found),
            reasoning: paths.iter().map(explain).collect(),
            paths,
            shards_accessed: stats.shards.len(),
            rpcs: stats.rpcs,
            local_levels: stats.local_levels,
            visited: stats.visited,
            latency_ms: 0.0,
        })
    }

    /// Vector search: scatter to every shard, each answers its top k by cosine, merged here.
    pub async fn search(&self, req: &SearchRequest) -> Result<SearchResponse, ApiError> {
        let t0 = tokio::time::Instant::now();
        let k = req.k.unwrap_or(limits::VECTOR_SEARCH_K_DEFAULT);
        if !(1..=limits::VECTOR_SEARCH_K_MAX).contains(&k) {
            return Err(ApiError::bad_request("k", format!("must be 1 to {}", limits::VECTOR_SEARCH_K_MAX)));
        }
        let consistency = parse_consistency("consistency", req.consistency.as_deref())?;
        let vector = match (&req.text, &req.vector) {
            (Some(_), Some(_)) => return Err(ApiError::bad_request("text", "give text or vector, not both")),
            (None, None) => return Err(ApiError::bad_request("text", "give text or vector")),
            (Some(t), None) => {
                if t.trim().is_empty() || t.len() > limits::CONTENT_BYTES_MAX {
                    return Err(ApiError::bad_request(
                        "text",
                        format!("must be 1 to {} bytes of text", limits::CONTENT_BYTES_MAX),
                    ));
                }
                model::embed::embed(t, self.vector_dim)
            }
            (None, Some(v)) => {
                if v.len() != self.vector_dim {
                    return Err(ApiError::bad_request(
                        "vector",
                        format!("has {} components; this grid's vectors have {}", v.len(), self.vector_dim),
                    ));
                }
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(ApiError::bad_request("vector", "components must be finite numbers"));
                }
                v.clone()
            }
        };
        let found = self.router.search(&vector, k, consistency, req.exact.unwrap_or(false)).await?;
        Ok(SearchResponse {
            hits: found
                .hits
                .into_iter()
                .filter_map(|h| {
                    let c = h.concept?;
                    Some(SearchHitOut { id: id_from_pb(c.id.as_ref()?).to_string(), label: c.label, score: h.score })
                })
                .collect(),
            shards_accessed: found.shards,
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
            index: SearchIndexOut {
                vectors: found.index.indexed,
                pending: found.index.pending,
                bytes: found.index.bytes,
            },
        })
    }

    /// The master's view of the grid.
    pub async fn status(&self) -> Result<pb::StatusResponse, ApiError> {
        self.master.status().await.map_err(|e| ApiError::unavailable(format!("master: {e}")))
    }

    /// Ready: the grid is initialised and every shard's primary, asked directly, leads its
    /// epoch with a lease (it takes writes and strong reads now).
    pub async fn ready(&self) -> Result<(), ApiError> {
        let map = self.master.shard_map().await.map_err(|e| ApiError::unavailable(format!("master: {e}")))?;
        if map.version == 0 || map.shards.is_empty() {
            return Err(ApiError::unavailable("the grid is not initialised"));
        }
        let addrs: BTreeMap<u64, String> = map.nodes.iter().map(|n| (n.node_id, n.storage_addr.clone())).collect();
        let mut asks = Vec::with_capacity(map.shards.len());
        for s in &map.shards {
            let (shard, epoch, addr) = (s.shard, s.epoch, addrs.get(&s.primary).cloned());
            asks.push(tokio::spawn(async move {
                let Some(addr) = addr else { return Err(format!("shard {shard} has no primary")) };
                let deadline = std::time::Duration::from_millis(limits::READY_PROBE_MS);
                let info = async {
                    crate::client::StorageClient::connect_once(&addr)
                        .await?
                        .with_deadline(deadline)
                        .shard_info(shard)
                        .await
                };
                match tokio::time::timeout(deadline, info).await {
                    Ok(Ok(i)) if i.leading && i.primary_epoch == epoch => Ok(()),
                    Ok(Ok(i)) if !i.serving => Err(format!("shard {shard}: its primary does not serve: {}", i.fault)),
                    Ok(Ok(_)) => {
                        Err(format!("shard {shard}: its primary (epoch {epoch}) does not lead with a lease yet"))
                    }
                    Ok(Err(e)) => Err(format!("shard {shard}: its primary does not answer: {e}")),
                    Err(_) => Err(format!("shard {shard}: its primary did not answer within {deadline:?}")),
                }
            }));
        }
        for a in asks {
            match a.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ApiError::unavailable(e)),
                Err(e) => return Err(ApiError::unavailable(format!("readiness probe failed: {e}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
