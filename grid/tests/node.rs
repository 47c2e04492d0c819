//! Storage node behaviour on a simulated disk, in real (tokio) mode: restart recovery,
//! fatal fsync errors, refusal to serve a corrupt replica, and whole-batch rejection.
#![cfg(not(madsim))]

use std::sync::Arc;

use sutra_grid::ids::ConceptId;
use sutra_grid::io::{Disk, SimDisk};
use sutra_grid::model::{AssocKind, Association, ConceptWrite, WriteBatch};
use sutra_grid::node::{NodeConfig, ShardError, ShardSlot, StorageNode};
use sutra_grid::store::KeyRange;

fn cfg() -> NodeConfig {
    NodeConfig::with_vector_dim(4)
}

fn batch(i: u32) -> WriteBatch {
    let a = format!("a{i}");
    let b = format!("b{i}");
    WriteBatch {
        concepts: vec![
            ConceptWrite { label: a.clone(), content: format!("content {i}"), vector: vec![0.5; 4], confidence: 1.0 },
            ConceptWrite { label: b.clone(), content: String::new(), vector: vec![], confidence: 0.5 },
        ],
        associations: vec![Association {
            source: ConceptId::from_label(&a),
            target: ConceptId::from_label(&b),
            kind: AssocKind::Causal,
            relation: "causes".into(),
            confidence: 0.8,
            evidence: format!("a{i} causes b{i}"),
        }],
        forget: vec![],
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_restart_and_checkpoint() {
    let sim = SimDisk::new(7);
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let node = StorageNode::open(disk.clone(), cfg()).await.unwrap();
    let shard = node.create_shard(0, KeyRange::ALL, false).await.unwrap();
    for i in 0..50 {
        shard.write(batch(i), vec![]).await.unwrap();
    }
    // LSN 1 is the epoch-start entry of this (standalone) node's first term.
    assert_eq!(shard.checkpoint().await.unwrap(), 51);
    for i in 50..80 {
        shard.write(batch(i), vec![]).await.unwrap();
    }
    drop((shard, node));
    sim.crash();
    let node = StorageNode::open(disk, cfg()).await.unwrap();
    let shard = node.shard(0).unwrap();
    let st = shard.read().unwrap();
    // 81 entries, then the epoch-start entry of the term the reopened node leads.
    assert_eq!(st.applied_lsn(), 82);
    assert_eq!(st.checkpoint_lsn(), 51);
    for i in 0..80 {
        let c = st.concept(ConceptId::from_label(&format!("A{i}"))).unwrap();
        assert_eq!(c.content, format!("content {i}"));
        let mut n = 0;
        st.for_each_edge(c.id, &Default::default(), |e| {
            assert_eq!(e.evidence, Some(format!("a{i} causes b{i}").as_str()));
            n += 1;
            true
        });
        assert_eq!(n, 1);
    }
}

#[tokio::test]
async fn a_failed_fsync_stops_the_shard_and_nothing_unsynced_is_acknowledged() {
    let sim = SimDisk::new(8);
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let node = StorageNode::open(disk.clone(), cfg()).await.unwrap();
    let shard = node.create_shard(0, KeyRange::ALL, false).await.unwrap();
    shard.write(batch(1), vec![]).await.unwrap();
    sim.fail_next_syncs(1);
    let err = shard.write(batch(2), vec![]).await.unwrap_err();
    assert!(matches!(err, ShardError::NotServing { .. }), "{err}");
    assert!(shard.write(batch(3), vec![]).await.is_err(), "fatal: no retry on the same page cache");
    assert!(shard.read().is_err());
    assert!(shard.fault().unwrap().contains("fsync"));
}

#[tokio::test]
async fn corruption_before_the_tail_makes_the_replica_refuse_to_serve() {
    let sim = SimDisk::new(9);
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let node = StorageNode::open(disk.clone(), cfg()).await.unwrap();
    let shard = node.create_shard(3, KeyRange::ALL, false).await.unwrap();
    for i in 0..10 {
        shard.write(batch(i), vec![]).await.unwrap();
    }
    drop((shard, node));
    let seg = "shards/000003/wal/00000000000000000001.wal";
    let mut bytes = disk.read(seg).unwrap();
    bytes[40] ^= 0xff;
    let mut f = disk.create(seg).unwrap();
    f.append(&bytes).unwrap();
    f.sync().unwrap();
    let node = StorageNode::open(disk.clone(), cfg()).await.unwrap();
    match node.slot(3).unwrap() {
        ShardSlot::Failed { reason, .. } => assert!(reason.contains("corruption"), "{reason}"),
        ShardSlot::Serving(_) => panic!("a corrupt replica must not serve"),
    }
    assert!(node.shard(3).is_err());

    // Re-sync from peers: wiped and reopened empty, keeping its promise, and it may neither
    // vote nor lead until a primary has caught it up.
    let grid = NodeConfig { standalone: false, ..cfg() };
    drop(node);
    let node = StorageNode::open(disk.clone(), grid).await.unwrap();
    let s = node.resync_shard(3, KeyRange::ALL).await.unwrap();
    assert_eq!(s.read().unwrap().applied_lsn(), 0, "nothing kept from the corrupt log");
    let e = s.fence(9).await.unwrap_err();
    assert!(e.contains("re-syncing"), "{e}");
    assert!(node.resync_shard(3, KeyRange::ALL).await.is_err(), "only a failed replica is wiped");
}

#[tokio::test]
async fn a_bad_batch_is_rejected_whole_and_names_every_bad_item() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
    let node = StorageNode::open(disk, cfg()).await.unwrap();
    let shard = node.create_shard(0, KeyRange { start: 0, end: 1 << 62 }, false).await.unwrap();
    let mut b = batch(1);
    b.concepts[0].label = "x".repeat(400);
    b.concepts[1].vector = vec![1.0; 3];
    b.associations[0].confidence = f32::NAN;
    let err = shard.write(b, vec![]).await.unwrap_err().to_string();
    for want in [
        "concepts[0]: label is 400 bytes",
        "concepts[1]: vector has 3 dimensions",
        "associations[0]: confidence is NaN",
    ] {
        assert!(err.contains(want), "{err}");
    }
    // A concept whose key is outside the range is the wrong shard (the caller's map is older
    // than a split): a retryable refusal naming the key, not a bad request.
    let outside =
        (0..100).map(|i| format!("k{i}")).find(|l| ConceptId::from_label(l).placement_key() > 1 << 62).unwrap();
    let b = WriteBatch {
        concepts: vec![ConceptWrite { label: outside, confidence: 1.0, ..Default::default() }],
        associations: vec![],
        forget: vec![],
    };
    let err = shard.write(b, vec![]).await.unwrap_err().to_string();
    assert!(err.contains("wrong shard: placement key"), "{err}");
    assert_eq!(shard.read().unwrap().applied_lsn(), 1, "nothing was logged after the epoch start");
}

#[tokio::test]
async fn a_large_overlay_is_checkpointed_automatically_and_the_wal_trimmed() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(5));
    let config = NodeConfig {
        checkpoint_overlay_items: 10,
        checkpoint_check_interval_ms: 5,
        wal_segment_bytes_max: 300,
        ..cfg()
    };
    let node = StorageNode::open(disk.clone(), config).await.unwrap();
    let shard = node.create_shard(0, KeyRange::ALL, false).await.unwrap();
    for i in 0..20 {
        shard.write(batch(i), vec![]).await.unwrap();
    }
    let start = std::time::Instant::now();
    while shard.read().unwrap().checkpoint_lsn() == 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "no automatic checkpoint");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let st = shard.read().unwrap();
    assert!(st.overlay_items() < 10, "the overlay was folded into the checkpoint");
    assert_eq!(st.counts().0, 40);
}

#[tokio::test]
async fn a_shard_with_data_but_no_readable_metadata_refuses_to_serve() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(6));
    {
        let node = StorageNode::open(disk.clone(), cfg()).await.unwrap();
        node.create_shard(4, KeyRange::ALL, false).await.unwrap().write(batch(0), vec![]).await.unwrap();
    }
    let mut f = disk.create("shards/000004/shard.meta").unwrap();
    f.append(b"garbage").unwrap();
    f.sync().unwrap();
    let node = StorageNode::open(disk, cfg()).await.unwrap();
    match node.slot(4).unwrap() {
        ShardSlot::Failed { reason, .. } => assert!(reason.contains("shard.meta"), "{reason}"),
        ShardSlot::Serving(_) => panic!("must not guess a key range"),
    }
}
