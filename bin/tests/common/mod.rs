//! Helpers shared by the real-mode tests: free ports, and batches whose presence can be
//! checked all-or-nothing.
#![allow(dead_code)]

use sutra_grid::ids::ConceptId;
use sutra_grid::model::{AssocKind, Association, ConceptWrite, WriteBatch};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

pub fn label(w: u32, i: u32, j: u32) -> String {
    format!("w{w}-b{i}-c{j}")
}

pub fn batch(w: u32, i: u32) -> WriteBatch {
    let id = |j| ConceptId::from_label(&label(w, i, j));
    WriteBatch {
        concepts: (0..3)
            .map(|j| ConceptWrite {
                label: label(w, i, j),
                content: format!("content {w} {i} {j}"),
                vector: vec![],
                confidence: 0.9,
            })
            .collect(),
        associations: vec![Association {
            source: id(0),
            target: id(1),
            kind: AssocKind::Causal,
            relation: "causes".into(),
            confidence: 0.8,
            evidence: format!("w{w} b{i}"),
        }],
    }
}

pub fn ids(w: u32, i: u32) -> Vec<ConceptId> {
    (0..3).map(|j| ConceptId::from_label(&label(w, i, j))).collect()
}
