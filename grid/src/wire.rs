//! Protobuf ⇄ model conversion for every RPC (client, query, API and node use this one module).
//! Anything malformed on the wire becomes an item error or an InvalidArgument, never a panic.

use sutra_proto as pb;

use crate::ids::ConceptId;
use crate::model::{
    AssocKind, Association, Concept, ConceptWrite, Direction, EdgeFilter, Forget, ItemError, WriteBatch,
};
use crate::store::Edge;

pub fn id_to_pb(id: ConceptId) -> pb::Id {
    pb::Id { hi: id.hi(), lo: id.lo() }
}

pub fn id_from_pb(id: &pb::Id) -> ConceptId {
    ConceptId::from_parts(id.hi, id.lo)
}

pub fn kind_to_pb(k: AssocKind) -> i32 {
    match k {
        AssocKind::Semantic => pb::AssocKind::Semantic as i32,
        AssocKind::Causal => pb::AssocKind::Causal as i32,
        AssocKind::Temporal => pb::AssocKind::Temporal as i32,
        AssocKind::Hierarchical => pb::AssocKind::Hierarchical as i32,
        AssocKind::Compositional => pb::AssocKind::Compositional as i32,
    }
}

pub fn kind_from_pb(k: i32) -> Option<AssocKind> {
    match pb::AssocKind::try_from(k).ok()? {
        pb::AssocKind::Unspecified => None,
        pb::AssocKind::Semantic => Some(AssocKind::Semantic),
        pb::AssocKind::Causal => Some(AssocKind::Causal),
        pb::AssocKind::Temporal => Some(AssocKind::Temporal),
        pb::AssocKind::Hierarchical => Some(AssocKind::Hierarchical),
        pb::AssocKind::Compositional => Some(AssocKind::Compositional),
    }
}

pub fn concept_to_pb(c: Concept) -> pb::Concept {
    pb::Concept {
        id: Some(id_to_pb(c.id)),
        label: c.label,
        content: c.content,
        vector_len: c.vector.len() as u32,
        vector: c.vector,
        confidence: c.confidence,
        created_ms: c.created_ms,
        updated_ms: c.updated_ms,
    }
}

pub fn concept_write_to_pb(c: &ConceptWrite) -> pb::ConceptWrite {
    pb::ConceptWrite {
        label: c.label.clone(),
        content: c.content.clone(),
        vector: c.vector.clone(),
        confidence: c.confidence,
    }
}

pub fn association_to_pb(a: &Association) -> pb::Association {
    pb::Association {
        source: Some(id_to_pb(a.source)),
        target: Some(id_to_pb(a.target)),
        kind: kind_to_pb(a.kind),
        relation: a.relation.clone(),
        confidence: a.confidence,
        evidence: a.evidence.clone(),
    }
}

pub fn edge_to_pb(e: &Edge<'_>, with_evidence: bool) -> pb::Edge {
    pb::Edge {
        other: Some(id_to_pb(e.other)),
        kind: kind_to_pb(e.kind),
        relation: e.relation.to_string(),
        confidence: e.confidence,
        outgoing: e.outgoing,
        evidence: if with_evidence { e.evidence.unwrap_or("").to_string() } else { String::new() },
    }
}

/// Converts a wire batch; items that cannot even be converted (unknown kind, missing id) are
/// reported with their index and replaced by placeholders so the rest is still validated.
pub fn forget_to_pb(f: &Forget) -> pb::Forget {
    match f {
        Forget::Concept(id) => pb::Forget { concept: Some(id_to_pb(*id)), ..Default::default() },
        Forget::Association { source, target, relation, kind } => pb::Forget {
            concept: None,
            source: Some(id_to_pb(*source)),
            target: Some(id_to_pb(*target)),
            relation: relation.clone(),
            kind: kind.map_or(pb::AssocKind::Unspecified as i32, kind_to_pb),
        },
    }
}

fn forget_from_pb(i: usize, f: pb::Forget, errors: &mut Vec<ItemError>) -> Forget {
    let mut bad = |reason: String| errors.push(ItemError { list: "forget", index: i, reason });
    if let Some(id) = f.concept.as_ref() {
        return Forget::Concept(id_from_pb(id));
    }
    let kind = match f.kind {
        k if k == pb::AssocKind::Unspecified as i32 => None,
        k => kind_from_pb(k).or_else(|| {
            bad(format!("unknown association kind {k}"));
            None
        }),
    };
    let (Some(source), Some(target)) = (f.source.as_ref(), f.target.as_ref()) else {
        bad("name a concept, or an association's source and target".into());
        return Forget::Concept(ConceptId::default());
    };
    Forget::Association { source: id_from_pb(source), target: id_from_pb(target), relation: f.relation, kind }
}

pub fn batch_from_pb(
    concepts: Vec<pb::ConceptWrite>,
    assocs: Vec<pb::Association>,
    forget: Vec<pb::Forget>,
) -> (WriteBatch, Vec<ItemError>) {
    let mut errors = Vec::new();
    let concepts = concepts
        .into_iter()
        .map(|c| ConceptWrite { label: c.label, content: c.content, vector: c.vector, confidence: c.confidence })
        .collect();
    let associations = assocs
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let mut bad = |reason: String| errors.push(ItemError { list: "associations", index: i, reason });
            let kind = kind_from_pb(a.kind).unwrap_or_else(|| {
                bad(format!("unknown association kind {}", a.kind));
                AssocKind::Semantic
            });
            let source = a.source.as_ref().map(id_from_pb).unwrap_or_else(|| {
                bad("source id is missing".into());
                ConceptId::default()
            });
            let target = a.target.as_ref().map(id_from_pb).unwrap_or_else(|| {
                bad("target id is missing".into());
                ConceptId::default()
            });
            Association { source, target, kind, relation: a.relation, confidence: a.confidence, evidence: a.evidence }
        })
        .collect();
    let forget = forget.into_iter().enumerate().map(|(i, f)| forget_from_pb(i, f, &mut errors)).collect();
    (WriteBatch { concepts, associations, forget }, errors)
}

pub fn filter_from_pb(f: Option<pb::EdgeFilter>) -> Result<EdgeFilter, String> {
    let Some(f) = f else {
        return Ok(EdgeFilter::default());
    };
    let mut kinds = Vec::with_capacity(f.kinds.len());
    for k in &f.kinds {
        kinds.push(kind_from_pb(*k).ok_or_else(|| format!("filter.kinds: unknown association kind {k}"))?);
    }
    let direction = match pb::Direction::try_from(f.direction) {
        Ok(pb::Direction::Both) => Direction::Both,
        Ok(pb::Direction::Out) => Direction::Out,
        Ok(pb::Direction::In) => Direction::In,
        Err(_) => return Err(format!("filter.direction: unknown direction {}", f.direction)),
    };
    if f.min_confidence.is_nan() || !(0.0..=1.0).contains(&f.min_confidence) {
        return Err(format!("filter.min_confidence {} is outside [0, 1]", f.min_confidence));
    }
    if f.relations.len() > 1024 {
        return Err("filter.relations: more than 1024 relations".into());
    }
    Ok(EdgeFilter { kinds, relations: f.relations, direction, min_confidence: f.min_confidence })
}

pub fn filter_to_pb(f: &EdgeFilter) -> pb::EdgeFilter {
    pb::EdgeFilter {
        kinds: f.kinds.iter().map(|k| kind_to_pb(*k)).collect(),
        relations: f.relations.clone(),
        direction: match f.direction {
            Direction::Both => pb::Direction::Both as i32,
            Direction::Out => pb::Direction::Out as i32,
            Direction::In => pb::Direction::In as i32,
        },
        min_confidence: f.min_confidence,
    }
}
