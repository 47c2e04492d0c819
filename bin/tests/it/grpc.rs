//! The Storage service over real gRPC on 127.0.0.1, so real prost encoding, real tonic limits
//! and real error statuses are covered (madsim-tonic passes objects in memory).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use sutra_grid::client::StorageClient;
use sutra_grid::ids::ConceptId;
use sutra_grid::io::{Disk, RealDisk};
use sutra_grid::model::{Direction, EdgeFilter};
use sutra_grid::node::{serve, NodeConfig, StorageNode};
use sutra_grid::store::KeyRange;
use sutra_grid::wire::id_from_pb;
use sutra_proto as pb;
use tonic::Code;

async fn start() -> (String, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn Disk> = Arc::new(RealDisk::new(dir.path()).unwrap());
    let node = StorageNode::open(disk, NodeConfig::with_vector_dim(4)).await.unwrap();
    node.create_shard(0, KeyRange::ALL, false).await.unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(node, addr, async {
        let _ = rx.await;
    }));
    (addr.to_string(), tx, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_calls_round_trip_over_real_grpc() {
    let (addr, _stop, _dir) = start().await;
    let c = StorageClient::connect(&addr).await.unwrap();
    let mut b = common::batch(0, 0);
    b.concepts[0].vector = vec![0.25, -1.0, 3.5, 0.0];
    let r = c.write_batch(0, &b).await.unwrap();
    assert_eq!(r.lsn, 2, "after the epoch-start entry");
    assert_eq!(r.concept_ids.iter().map(id_from_pb).collect::<Vec<_>>(), common::ids(0, 0));
    let got = c.get_concepts(0, &[common::ids(0, 0)[0], ConceptId::from_label("absent")]).await.unwrap();
    assert_eq!(got.found.len(), 1);
    assert_eq!(got.found[0].vector, vec![0.25, -1.0, 3.5, 0.0]);
    assert_eq!(got.found[0].content, "content 0 0 0");
    assert_eq!(got.missing.len(), 1);
    let n = c.neighbors(0, &common::ids(0, 0)[..2], &EdgeFilter::default(), 0, true).await.unwrap();
    assert_eq!(n.lists[0].edges.len(), 1);
    assert!(n.lists[0].edges[0].outgoing);
    assert_eq!(n.lists[0].edges[0].evidence, "w0 b0");
    assert!(!n.lists[1].edges[0].outgoing, "the in-edge is indexed on the target");
    let out = EdgeFilter { direction: Direction::Out, ..Default::default() };
    let e = c.expand(0, &common::ids(0, 0), &out, 0).await.unwrap();
    assert_eq!(e.lists.iter().map(|l| l.edges.len()).sum::<usize>(), 1);
    assert_eq!(e.lists[0].edges[0].evidence, "", "expand carries no evidence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_and_large_responses_cross_the_wire() {
    let (addr, _stop, _dir) = start().await;
    let c = StorageClient::connect(&addr).await.unwrap();
    // ~6 MB request: above tonic's 4 MiB default decode limit, within ours.
    let mut b = common::batch(1, 0);
    b.concepts = (0..100)
        .map(|i| sutra_grid::model::ConceptWrite {
            label: format!("big{i}"),
            content: "z".repeat(60_000),
            vector: vec![],
            confidence: 1.0,
        })
        .collect();
    c.write_batch(0, &b).await.unwrap();
    let ids: Vec<ConceptId> = (0..100).map(|i| ConceptId::from_label(&format!("big{i}"))).collect();
    assert_eq!(c.get_concepts(0, &ids).await.unwrap().found.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_change_nothing() {
    let (addr, _stop, _dir) = start().await;
    let c = StorageClient::connect(&addr).await.unwrap();
    let mut raw = pb::storage_client::StorageClient::connect(format!("http://{addr}")).await.unwrap();
    let bad = pb::WriteBatchRequest {
        shard: 0,
        concepts: vec![pb::ConceptWrite { label: "ok".into(), confidence: f32::NAN, ..Default::default() }],
        associations: vec![pb::Association { kind: 42, relation: "r".into(), confidence: 0.5, ..Default::default() }],
        forget: vec![],
    };
    let st = raw.write_batch(bad).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    for want in [
        "concepts[0]: confidence is NaN",
        "associations[0]: unknown association kind 42",
        "associations[0]: source id is missing",
    ] {
        assert!(st.message().contains(want), "{}", st.message());
    }
    let too_many = pb::GetConceptsRequest {
        shard: 0,
        ids: vec![pb::Id::default(); sutra_grid::limits::GET_IDS_MAX + 1],
        ..Default::default()
    };
    assert_eq!(raw.get_concepts(too_many).await.unwrap_err().code(), Code::InvalidArgument);
    let bad_filter = pb::NeighborsRequest {
        shard: 0,
        filter: Some(pb::EdgeFilter { min_confidence: 2.0, ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(raw.neighbors(bad_filter).await.unwrap_err().code(), Code::InvalidArgument);
    let e = c.get_concepts(9, &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    assert!(e.to_string().contains("shard 9 is not hosted"), "{e}");
    assert_eq!(c.create_shard(0, 5, 1).await.unwrap_err().code(), Some(Code::InvalidArgument));
    assert_eq!(c.create_shard(0, 0, 7).await.unwrap_err().code(), Some(Code::AlreadyExists));
    assert_eq!(c.create_shard(0, 0, u64::MAX).await.unwrap().shard, 0, "same range: idempotent");
    assert_eq!(c.shard_info(0).await.unwrap().last_lsn, 1, "nothing was logged after the epoch start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_has_a_deadline() {
    // A listener that accepts and never answers: the client must give up, not hang.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), StorageClient::connect(&addr))
        .await
        .expect("connect must not hang");
    if let Ok(c) = r {
        let c = c.with_deadline(Duration::from_millis(300));
        assert!(c.write_batch(0, &common::batch(0, 0)).await.is_err());
    }
    assert!(t.elapsed() < Duration::from_secs(60));
}
