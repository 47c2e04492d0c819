use std::collections::BTreeSet;

use proptest::prelude::*;

use super::checkpoint::{build_image, CheckpointMeta};
use super::*;
use crate::io::Mapped;
use crate::model::{Association, ConceptWrite};

fn id(n: u32) -> ConceptId {
    ConceptId::from_label(&format!("c{n}"))
}

fn concept(n: u32, content: &str) -> ConceptWrite {
    ConceptWrite { label: format!("c{n}"), content: content.into(), vector: vec![], confidence: 0.9 }
}

fn assoc(a: u32, b: u32, rel: &str, conf: f32) -> Association {
    Association {
        source: id(a),
        target: id(b),
        kind: AssocKind::Semantic,
        relation: rel.into(),
        confidence: conf,
        evidence: format!("c{a} {rel} c{b}"),
    }
}

fn store_with(edges: &[(u32, u32, f32)], n: u32) -> ShardStore {
    let mut s = ShardStore::new(KeyRange::ALL, None);
    let batch = WriteBatch {
        concepts: (0..n).map(|i| concept(i, "x")).collect(),
        associations: edges.iter().map(|(a, b, c)| assoc(*a, *b, "r", *c)).collect(),
        forget: vec![],
    };
    s.apply(1, 1000, batch);
    s
}

fn checkpointed(s: &ShardStore) -> ShardStore {
    let meta = CheckpointMeta { lsn: s.applied_lsn(), epoch: 1, key_start: 0, key_end: u64::MAX };
    let image = build_image(&meta, s.relations(), &s.snapshot_vertices(), s.links());
    ShardStore::new(s.range, Some(Checkpoint::open(Mapped::from_vec(image)).unwrap()))
}

fn edges_of(s: &ShardStore, v: ConceptId) -> BTreeSet<(String, bool, String, u32, String)> {
    let mut out = BTreeSet::new();
    s.for_each_edge(v, &EdgeFilter::default(), |e| {
        out.insert((
            e.other.to_string(),
            e.outgoing,
            e.relation.to_string(),
            e.confidence.to_bits(),
            e.evidence.unwrap_or("").to_string(),
        ));
        true
    });
    out
}

#[test]
fn upserts_merge_and_keep_the_first_spelling() {
    let mut s = ShardStore::new(KeyRange::ALL, None);
    s.apply(
        1,
        10,
        WriteBatch {
            concepts: vec![ConceptWrite {
                label: "Eiffel_Tower".into(),
                content: "a tower".into(),
                vector: vec![],
                confidence: 1.0,
            }],
            associations: vec![],
            forget: vec![],
        },
    );
    s.apply(
        2,
        20,
        WriteBatch {
            concepts: vec![ConceptWrite {
                label: "eiffel tower".into(),
                content: String::new(),
                vector: vec![],
                confidence: 0.5,
            }],
            associations: vec![],
            forget: vec![],
        },
    );
    let c = s.concept(ConceptId::from_label("EIFFEL TOWER")).unwrap();
    assert_eq!(
        (c.label.as_str(), c.content.as_str(), c.confidence, c.created_ms, c.updated_ms),
        ("Eiffel_Tower", "a tower", 0.5, 10, 20)
    );
    // Same (source, target, kind, relation) replaces; a new relation adds.
    s.apply(
        3,
        30,
        WriteBatch {
            concepts: vec![],
            associations: vec![assoc(1, 2, "r", 0.5), assoc(1, 2, "r", 0.7), assoc(1, 2, "q", 0.1)],
            forget: vec![],
        },
    );
    assert_eq!(edges_of(&s, id(1)).len(), 2);
    assert_eq!(s.counts(), (1, 2, 2));
}

#[test]
fn overlay_supersedes_checkpoint_edges() {
    let s = store_with(&[(0, 1, 0.5), (0, 2, 0.5)], 3);
    let mut s = checkpointed(&s);
    s.apply(
        2,
        2000,
        WriteBatch {
            concepts: vec![concept(0, "")],
            associations: vec![assoc(0, 1, "r", 0.9), assoc(0, 3, "r", 0.2)],
            forget: vec![],
        },
    );
    let e = edges_of(&s, id(0));
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e.iter().any(|x| x.0 == id(1).to_string() && x.3 == 0.9f32.to_bits()));
    assert_eq!(s.concept(id(0)).unwrap().content, "x", "empty content keeps the stored one");
    assert_eq!(s.counts(), (3, 3, 3));
    // And a second checkpoint folds it all in.
    let s2 = checkpointed(&s);
    assert_eq!(edges_of(&s2, id(0)), e);
    assert!(s2.overlay_is_empty());
}

#[test]
fn checkpoint_rejects_every_damaged_byte_it_is_shown() {
    let s = store_with(&[(0, 1, 0.5), (1, 2, 0.25), (2, 0, 1.0)], 4);
    let meta = CheckpointMeta { lsn: 1, epoch: 1, key_start: 0, key_end: u64::MAX };
    let image = build_image(&meta, s.relations(), &s.snapshot_vertices(), s.links());
    for at in (0..image.len()).step_by(7) {
        let mut bad = image.clone();
        bad[at] ^= 0x10;
        assert!(Checkpoint::open(Mapped::from_vec(bad)).is_err(), "flip at {at} went unnoticed");
    }
    for cut in [0, 10, 255, 256, 511, 512, image.len() - 1] {
        assert!(Checkpoint::open(Mapped::from_vec(image[..cut].to_vec())).is_err());
    }
}

#[test]
fn csr_fast_path_agrees_with_the_general_bfs() {
    let edges: Vec<(u32, u32, f32)> = (0..200).map(|i| (i % 50, (i * 7 + 3) % 60, 1.0)).collect();
    let s = store_with(&edges, 60);
    let cp = checkpointed(&s);
    for dir in [Direction::Out, Direction::In, Direction::Both] {
        let f = EdgeFilter { direction: dir, ..Default::default() };
        let slow = s.bfs_reach(id(0), &f, 10);
        let fast = cp.bfs_reach(id(0), &f, 10);
        assert_eq!(slow.0, fast.0, "{dir:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any flipped bit or truncation anywhere in a checkpoint is rejected on open.
    #[test]
    fn checkpoint_damage_is_always_detected(
        edges in proptest::collection::vec((0u32..12, 0u32..12, 0.0f32..=1.0), 0..30),
        n in 1u32..12, at: usize, bit in 0u8..8, cut: bool,
    ) {
        let s = store_with(&edges, n);
        let meta = CheckpointMeta { lsn: 1, epoch: 1, key_start: 0, key_end: u64::MAX };
        let mut image = build_image(&meta, s.relations(), &s.snapshot_vertices(), s.links());
        let at = at % image.len();
        if cut {
            image.truncate(at);
        } else {
            image[at] ^= 1 << bit;
        }
        prop_assert!(Checkpoint::open(Mapped::from_vec(image)).is_err());
    }

    /// Whatever goes in comes back out of a checkpoint, concept by concept and edge by edge.
    #[test]
    fn checkpoint_round_trips(edges in proptest::collection::vec((0u32..20, 0u32..20, 0.0f32..=1.0), 0..60), n in 1u32..20) {
        let s = store_with(&edges, n);
        let cp = checkpointed(&s);
        for v in 0..20 {
            prop_assert_eq!(s.concept(id(v)), cp.concept(id(v)));
            prop_assert_eq!(edges_of(&s, id(v)), edges_of(&cp, id(v)));
        }
        prop_assert_eq!(s.counts(), cp.counts());
    }
}

/// architecture.md §5 rule 7: the source's shard keeps the in-edge in its outbox (through checkpoints)
/// until a `Delivered` entry; the target applies deliveries past its inbox mark only.
#[test]
fn the_outbox_holds_in_edges_until_delivered_and_the_inbox_skips_repeats() {
    // Two shards splitting the key space; find a pair of concepts on different sides.
    let mid = u64::MAX / 2;
    let (lo, hi) = (KeyRange { start: 0, end: mid }, KeyRange { start: mid + 1, end: u64::MAX });
    let a = (0..).find(|n| lo.contains(id(*n))).unwrap();
    let b = (0..).find(|n| hi.contains(id(*n))).unwrap();
    let mut src = ShardStore::new(lo, None);
    let batch = |conf| WriteBatch {
        concepts: vec![concept(a, "x")],
        associations: vec![assoc(a, b, "r", conf)],
        forget: vec![],
    };
    src.apply(1, 1, batch(0.5));
    src.apply(2, 2, batch(0.7));
    let items = src.outbox_head(10);
    assert_eq!(items.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![links::seq(1, 0), links::seq(2, 0)]);
    assert!(edges_of(&src, id(b)).is_empty(), "the source's shard stores no in-edge of a remote target");
    let src = checkpointed(&src);
    assert_eq!(src.outbox_head(10), items, "the outbox survives a checkpoint");

    let mut dst = ShardStore::new(hi, None);
    let deliver = |items: Vec<(u64, Association)>| InEdges { source_shard: 0, items, routed: None };
    dst.apply_in_edges(1, deliver(items.clone()));
    let conf = |s: &ShardStore| edges_of(s, id(b)).iter().map(|e| f32::from_bits(e.3)).collect::<Vec<_>>();
    assert_eq!(conf(&dst), vec![0.7]);
    // A late duplicate of the first delivery cannot bring the older weight back.
    dst.apply_in_edges(2, deliver(items[..1].to_vec()));
    assert_eq!(conf(&dst), vec![0.7]);
    // Out of order within one delivery: the older item is skipped.
    let mut dst2 = ShardStore::new(hi, None);
    dst2.apply_in_edges(1, deliver(vec![items[1].clone(), items[0].clone()]));
    assert_eq!(conf(&dst2), vec![0.7]);
    let dst = checkpointed(&dst);
    assert_eq!(dst.links().inbox.get(&0), Some(&links::seq(2, 0)), "the inbox mark survives a checkpoint");

    let mut src = src;
    src.apply_delivered(3, &[links::seq(1, 0), links::seq(2, 0)]);
    assert!(src.outbox_head(10).is_empty());
}

/// Found by the `edges` checker once vertices had several edges: a replica that checkpointed
/// between two upserts produced another image (and digest) than one that had not.
#[test]
fn images_do_not_depend_on_when_a_replica_checkpointed() {
    let one = |a: Association| WriteBatch { concepts: vec![], associations: vec![a], forget: vec![] };
    let batches = [one(assoc(1, 2, "r", 0.5)), one(assoc(1, 0, "r", 0.6)), one(assoc(1, 2, "r", 0.9))];
    let image = |s: &ShardStore| {
        let meta = CheckpointMeta { lsn: s.applied_lsn(), epoch: 1, key_start: 0, key_end: u64::MAX };
        build_image(&meta, s.relations(), &s.snapshot_vertices(), s.links())
    };
    let mut a = ShardStore::new(KeyRange::ALL, None);
    let mut b = ShardStore::new(KeyRange::ALL, None);
    for (i, batch) in batches.into_iter().enumerate() {
        a.apply(i as u64 + 1, 1, batch.clone());
        b.apply(i as u64 + 1, 1, batch);
        if i == 1 {
            b = checkpointed(&b);
        }
    }
    assert_eq!(image(&a), image(&b));
}

proptest! {
    /// A split hands every vertex to exactly one half with all its edges: each association's
    /// out-edge is on its source's half and its in-edge on its target's, as before the split,
    /// whether or not the parent had checkpointed first.
    #[test]
    fn a_split_keeps_both_sides_of_every_edge(
        edges in proptest::collection::vec((0u32..30, 0u32..30, 0.0f32..=1.0), 0..80),
        at in 1u64..u64::MAX,
        cp in any::<bool>(),
    ) {
        let whole = store_with(&edges, 30);
        let mut left = if cp { checkpointed(&whole) } else { store_with(&edges, 30) };
        let image = left.apply_split(2, 1, at).expect("at is inside the range");
        let right = ShardStore::new(KeyRange { start: at, end: u64::MAX }, Some(Checkpoint::open(Mapped::from_vec(image)).unwrap()));
        prop_assert_eq!(left.range, KeyRange { start: 0, end: at - 1 });
        prop_assert!(left.overlay_items() >= crate::limits::CHECKPOINT_OVERLAY_ITEMS_TRIGGER);
        for n in 0..30 {
            let v = id(n);
            let (mine, other) = if v.placement_key() < at { (&left, &right) } else { (&right, &left) };
            prop_assert_eq!(mine.concept(v), whole.concept(v));
            prop_assert_eq!(edges_of(mine, v), edges_of(&whole, v));
            prop_assert!(other.concept(v).is_none() && edges_of(other, v).is_empty() && !other.knows(v));
        }
        // A repeated split entry is a no-op; a write naming the half that left is refused
        // whole.
        prop_assert!(left.apply_split(3, 1, at).is_none());
        let stray = (0..30).find(|n| id(*n).placement_key() >= at);
        let kept = (0..30).find(|n| id(*n).placement_key() < at);
        if let (Some(s), Some(k)) = (stray, kept) {
            let batch = WriteBatch { concepts: vec![concept(k, "new"), concept(s, "new")], associations: vec![], forget: vec![] };
            let before = left.concept(id(k));
            prop_assert!(!left.apply(4, 2000, batch));
            prop_assert_eq!(left.concept(id(k)), before);
            prop_assert!(left.concept(id(s)).is_none());
        }
    }
}

proptest! {
    /// Undelivered in-edges go with their source: each half's outbox holds exactly the
    /// items whose source it owns, so one shard keeps delivering each association's versions.
    #[test]
    fn a_split_hands_each_outbox_item_to_its_sources_half(
        edges in proptest::collection::vec((0u32..30, 0u32..30, 0.0f32..=1.0), 0..80),
        hi in (u64::MAX / 4)..(u64::MAX / 4 * 3),
        frac in 0.01f64..0.99,
    ) {
        let range = KeyRange { start: 0, end: hi };
        let mut s = ShardStore::new(range, None);
        let own: Vec<Association> =
            edges.iter().map(|(a, b, c)| assoc(*a, *b, "r", *c)).filter(|a| range.contains(a.source)).collect();
        let batch = WriteBatch { concepts: vec![], associations: own, forget: vec![] };
        prop_assert!(s.apply(1, 1000, batch));
        let before = s.links().outbox.clone();
        let at = ((hi as f64 * frac) as u64).max(1);
        let image = s.apply_split(2, 1, at).expect("inside");
        let right = ShardStore::new(KeyRange { start: at, end: hi }, Some(Checkpoint::open(Mapped::from_vec(image)).unwrap()));
        prop_assert!(s.links().outbox.values().all(|a| a.source.placement_key() < at));
        prop_assert!(right.links().outbox.values().all(|a| a.source.placement_key() >= at));
        let mut union = s.links().outbox.clone();
        union.extend(right.links().outbox.clone());
        prop_assert_eq!(union, before);
    }
}

/// Each association of `later` on its source's side of `at`, written twice (a re-weight), on
/// the two halves and on the whole alike.
fn write_later(later: &[(u32, u32, f32)], at: u64, whole: &mut ShardStore, halves: [&mut ShardStore; 2]) {
    let [left, right] = halves;
    for round in 0..2 {
        let all: Vec<Association> =
            later.iter().map(|(a, b, c)| assoc(*a, *b, "later", if round == 0 { *c } else { 1.0 - *c })).collect();
        let (l, r): (Vec<_>, Vec<_>) = all.iter().cloned().partition(|a| a.source.placement_key() < at);
        let next = |s: &ShardStore| s.applied_lsn() + 1;
        prop_assume_ok(whole.apply(
            next(whole),
            3000,
            WriteBatch { concepts: vec![], associations: all, forget: vec![] },
        ));
        prop_assume_ok(left.apply(next(left), 3000, WriteBatch { concepts: vec![], associations: l, forget: vec![] }));
        prop_assume_ok(right.apply(
            next(right),
            3000,
            WriteBatch { concepts: vec![], associations: r, forget: vec![] },
        ));
    }
}

fn prop_assume_ok(applied: bool) {
    assert!(applied, "a write inside the range applies");
}

/// The right half's parts from `key` on, `bytes` at a time, as checkpoint images.
fn parts_of(right: &ShardStore, bytes: usize) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    let mut key = right.range.start;
    loop {
        let (vs, next) = right.vertices_from(key, bytes);
        let meta =
            CheckpointMeta { lsn: 0, epoch: 0, key_start: key, key_end: next.map_or(right.range.end, |n| n - 1) };
        let image = build_image(&meta, right.relations(), &vs, &Links::default());
        out.push(Checkpoint::open(Mapped::from_vec(image)).unwrap());
        match next {
            Some(n) => key = n,
            None => return out,
        }
    }
}

proptest! {
    /// A merge gives back what the two shards held, exactly: split a shard, write on both
    /// halves (each association on its source's half, its in-edge through the outbox), deliver
    /// the right half's outbox and part of the left's (the rest is owed when the right half
    /// freezes), then merge it back in parts (one part twice, as a new primary redoing the copy
    /// would): every vertex has the concept and edges of a shard that was never split, whether
    /// or not the left half's checkpoint still held the right half's old data.
    #[test]
    fn a_merge_after_a_split_gives_back_the_whole(
        edges in proptest::collection::vec((0u32..30, 0u32..30, 0.0f32..=1.0), 0..60),
        later in proptest::collection::vec((0u32..30, 0u32..30, 0.0f32..=1.0), 0..40),
        at in 1u64..u64::MAX,
        cp in any::<bool>(),
        delivered in 0usize..100,
        part_bytes in 1usize..4000,
    ) {
        let (l_id, r_id) = (0u32, 1u32);
        let mut whole = store_with(&edges, 30);
        let mut left = if cp { checkpointed(&whole) } else { store_with(&edges, 30) };
        let image = left.apply_split(2, 1, at).expect("at is inside the range");
        let mut right = ShardStore::new(KeyRange { start: at, end: u64::MAX }, Some(Checkpoint::open(Mapped::from_vec(image)).unwrap()));
        whole.apply(2, 0, WriteBatch::default());
        write_later(&later, at, &mut whole, [&mut left, &mut right]);
        // The right half delivers its whole outbox; the left half part of its own, unacknowledged.
        let owed = right.outbox_head(usize::MAX);
        let seqs: Vec<u64> = owed.iter().map(|(s, _)| *s).collect();
        let took = left.apply_in_edges(left.applied_lsn() + 1, InEdges { source_shard: r_id, items: owed, routed: None });
        prop_assert!(took);
        right.apply_delivered(right.applied_lsn() + 1, &seqs);
        let sent: Vec<_> = left.outbox_head(delivered);
        let took = right.apply_in_edges(right.applied_lsn() + 1, InEdges { source_shard: l_id, items: sent, routed: None });
        prop_assert!(took);
        // A third shard delivered two versions of an in-edge to the right half (none to the
        // left); after the merge it sends the older one again, which must not win.
        let third = 5u32;
        let ext = |t: u32, c: f32| Association {
            source: id(1000),
            target: id(t),
            kind: AssocKind::Semantic,
            relation: "ext".into(),
            confidence: c,
            evidence: String::new(),
        };
        let target = (0..30).find(|n| id(*n).placement_key() >= at);
        if let Some(t) = target {
            let items = vec![(1, ext(t, 0.25)), (2, ext(t, 0.75))];
            let took = right.apply_in_edges(right.applied_lsn() + 1, InEdges { source_shard: third, items: items.clone(), routed: None });
            prop_assert!(took);
            whole.apply_in_edges(whole.applied_lsn() + 1, InEdges { source_shard: third, items, routed: None });
        }
        // Frozen: the right half takes nothing any more.
        right.apply_freeze(right.applied_lsn() + 1, l_id);
        let stray = WriteBatch { concepts: vec![], associations: later.iter().map(|(a, b, _)| assoc(*a, *b, "late", 0.5)).filter(|a| a.source.placement_key() >= at).collect(), forget: vec![] };
        if !stray.is_empty() {
            prop_assert!(!right.apply(right.applied_lsn() + 1, 4000, stray));
        }
        prop_assert!(right.apply_split(right.applied_lsn() + 1, 1, at.saturating_add(1).max(u64::MAX - 1)).is_none());
        // The merge, through the left half's log.
        let marks = Links { outbox: Default::default(), ..right.links().clone() };
        left.apply_merge_begin(left.applied_lsn() + 1, r_id, right.range, marks);
        prop_assert_eq!(left.absorbing(), Some(r_id));
        let parts = parts_of(&right, part_bytes);
        for p in parts.iter().chain(parts.first()) {
            left.apply_absorb(left.applied_lsn() + 1, r_id, p);
        }
        left.apply_merge_end(left.applied_lsn() + 1, l_id, r_id);
        prop_assert_eq!(left.absorbing(), None);
        prop_assert_eq!(left.range, KeyRange::ALL);
        prop_assert!(left.links().outbox.is_empty());
        // A deliverer still routing by the left half's old range is refused, whole: it would
        // move the source's mark past items it owes the right half's range.
        let old_left = (0, at - 1);
        if let Some(k) = (0..30).find(|n| id(*n).placement_key() < at) {
            let stale = InEdges { source_shard: third, items: vec![(u64::MAX, ext(k, 0.5))], routed: Some(old_left) };
            let took = left.apply_in_edges(left.applied_lsn() + 1, stale);
            prop_assert!(!took);
        }
        if let Some(t) = target {
            let again = InEdges { source_shard: third, items: vec![(1, ext(t, 0.25))], routed: Some((0, u64::MAX)) };
            let took = left.apply_in_edges(left.applied_lsn() + 1, again);
            prop_assert!(took);
        }
        let saved = checkpointed(&left);
        for s in [&left, &saved] {
            for n in 0..30 {
                let v = id(n);
                prop_assert_eq!(s.concept(v), whole.concept(v));
                prop_assert_eq!(edges_of(s, v), edges_of(&whole, v));
            }
        }
        // A repeated end, or parts after it, change nothing.
        let before = edges_of(&left, id(0));
        left.apply_absorb(left.applied_lsn() + 1, r_id, &parts[0]);
        left.apply_merge_end(left.applied_lsn() + 1, l_id, r_id);
        prop_assert_eq!(edges_of(&left, id(0)), before);
    }
}

#[test]
fn merged_inbox_marks_skip_exactly_what_either_side_applied() {
    // Source 7 had delivered up to 10 to the left side and up to 20 to the right side.
    let mut left = Links::default();
    left.inbox.insert(7, 10);
    left.inbox.insert(8, 5);
    let mut right = Links::default();
    right.inbox.insert(7, 20);
    right.inbox.insert(9, 3);
    left.merge_marks((0, 99), &right, (100, 199));
    assert_eq!(left.inbox.get(&7), Some(&10));
    // Source 8 never delivered to the right side, 9 never to the left.
    assert_eq!(left.inbox.get(&8), None);
    assert_eq!(left.inbox.get(&9), None);
    for (src, seq, key, applied) in [
        (7, 10, 50, true),
        (7, 11, 50, false),
        (7, 20, 150, true),
        (7, 21, 150, false),
        (8, 5, 50, true),
        (8, 5, 150, false),
        (9, 3, 150, true),
        (9, 3, 50, false),
        (9, 4, 150, false),
    ] {
        assert_eq!(left.applied(src, seq, key), applied, "source {src} seq {seq} key {key}");
    }
    // The marks survive a checkpoint's encoding; once a source passes a scoped mark it goes.
    assert_eq!(Links::decode(&left.encode()).unwrap(), left);
    left.inbox.insert(7, 25);
    left.prune_scoped(7);
    assert!(!left.scoped.contains_key(&7));
    let frozen = Links { frozen_into: Some(3), ..Links::default() };
    assert_eq!(Links::decode(&frozen.encode()).unwrap(), frozen);
}

#[test]
fn the_median_key_halves_the_vertices_and_needs_two() {
    let s = store_with(&[], 30);
    let m = s.median_key().expect("thirty vertices");
    let below = (0..30).filter(|n| id(*n).placement_key() < m).count();
    assert_eq!(below, 15);
    assert_eq!(store_with(&[], 1).median_key(), None, "one vertex cannot be split");
}

/// Concepts `0..n` with the built-in embedder's vectors of their labels and some words.
fn store_with_vectors(n: u32, dim: usize) -> ShardStore {
    let mut s = ShardStore::new(KeyRange::ALL, None);
    let words = ["iron", "tower", "river", "bank", "stone", "bridge", "garden", "light"];
    let concepts = (0..n)
        .map(|i| {
            let text = format!("c{i} {} {}", words[i as usize % 8], words[(i as usize / 8) % 8]);
            ConceptWrite {
                label: format!("c{i}"),
                content: text.clone(),
                vector: crate::model::embed::embed(&text, dim),
                confidence: 0.9,
            }
        })
        .collect();
    s.apply(1, 1000, WriteBatch { concepts, associations: vec![], forget: vec![] });
    s
}

/// Indexes everything pending, as the node's background task does.
fn index_all(s: &ShardStore) {
    loop {
        let todo = s.vectors_to_index(64);
        if todo.is_empty() && s.vector_index_stats().pending == 0 {
            return;
        }
        let ix = s.vector_index();
        let mut ix = ix.lock();
        for (id, v) in todo {
            if !ix.pending().contains(&id) {
                ix.insert(id, &v);
            }
        }
    }
}

fn ranked(hits: &[(f32, Concept)]) -> Vec<(u32, ConceptId)> {
    hits.iter().map(|(s, c)| (s.to_bits(), c.id)).collect()
}

#[test]
fn a_search_finds_what_the_exact_scan_finds_before_during_and_after_indexing() {
    let dim = 64;
    let s = store_with_vectors(600, dim);
    let q = crate::model::embed::embed("iron bridge", dim);
    let exact = s.nearest(&q, 10, true);
    assert_eq!(exact.len(), 10);
    // Nothing indexed yet: every vector is pending and compared exactly.
    assert_eq!(s.vector_index_stats().pending, 600);
    assert_eq!(ranked(&s.nearest(&q, 10, false)), ranked(&exact));
    // Half indexed, half pending.
    let ix = s.vector_index();
    for (id, v) in s.vectors_to_index(300) {
        ix.lock().insert(id, &v);
    }
    assert_eq!(ranked(&s.nearest(&q, 10, false)), ranked(&exact));
    index_all(&s);
    assert_eq!(s.vector_index_stats(), IndexStats { indexed: 600, pending: 0, ..s.vector_index_stats() });
    assert_eq!(ranked(&s.nearest(&q, 10, false)), ranked(&exact));
}

#[test]
fn a_changed_vector_is_found_by_its_new_value_only() {
    let dim = 64;
    let mut s = store_with_vectors(200, dim);
    index_all(&s);
    let v = crate::model::embed::embed("zebra quokka", dim);
    let c = ConceptWrite { label: "c5".into(), content: String::new(), vector: v.clone(), confidence: 0.9 };
    s.apply(2, 1001, WriteBatch { concepts: vec![c], associations: vec![], forget: vec![] });
    let hits = s.nearest(&v, 1, false);
    assert_eq!(hits[0].1.id, id(5));
    assert!((hits[0].0 - 1.0).abs() < 1e-5);
    index_all(&s);
    assert_eq!(s.nearest(&v, 1, false)[0].1.id, id(5));
    let old = crate::model::embed::embed("c5 bank iron", dim);
    assert!(s.nearest(&old, 200, false).iter().all(|(sc, c)| c.id != id(5) || *sc < 0.99));
}

#[test]
fn the_index_survives_a_checkpoint_and_is_rebuilt_from_one() {
    let dim = 32;
    let mut s = store_with_vectors(300, dim);
    index_all(&s);
    let q = crate::model::embed::embed("stone garden", dim);
    let exact = ranked(&s.nearest(&q, 10, true));
    // A checkpoint keeps the built index.
    let meta = CheckpointMeta { lsn: s.applied_lsn(), epoch: 1, key_start: 0, key_end: u64::MAX };
    let image = build_image(&meta, s.relations(), &s.snapshot_vertices(), s.links());
    s.install_checkpoint(Checkpoint::open(Mapped::from_vec(image)).unwrap());
    assert_eq!(s.vector_index_stats().indexed, 300);
    assert_eq!(ranked(&s.nearest(&q, 10, false)), exact);
    // A store opened from a checkpoint (a restart) starts with everything pending.
    let r = checkpointed(&s);
    assert_eq!(r.vector_index_stats().pending, 300);
    assert_eq!(ranked(&r.nearest(&q, 10, false)), exact);
    index_all(&r);
    assert_eq!(r.vector_index_stats().indexed, 300);
    assert_eq!(ranked(&r.nearest(&q, 10, false)), exact);
}

#[test]
fn after_a_split_the_index_answers_only_this_half() {
    let dim = 32;
    let mut s = store_with_vectors(400, dim);
    index_all(&s);
    let at = 1u64 << 63;
    assert!(s.apply_split(2, 1, at).is_some());
    let q = crate::model::embed::embed("river light", dim);
    let hits = s.nearest(&q, 50, false);
    assert!(hits.iter().all(|(_, c)| c.id.placement_key() < at));
    assert_eq!(ranked(&hits), ranked(&s.nearest(&q, 50, true)));
    assert!(s.vector_index_stats().indexed < 400);
}

fn forget_batch(forget: Vec<Forget>) -> WriteBatch {
    WriteBatch { forget, ..Default::default() }
}

fn forget_assoc(a: u32, b: u32, rel: &str) -> Forget {
    Forget::Association { source: id(a), target: id(b), relation: rel.into(), kind: None }
}

/// architecture.md §12: a retraction hides both sides this shard holds, from the overlay and
/// from the checkpoint, the next checkpoint drops them, and learning again brings them back.
#[test]
fn forgetting_an_association_removes_both_local_sides_and_checkpoints_drop_it() {
    let s = store_with(&[(0, 1, 0.5), (0, 2, 0.6), (1, 2, 0.7)], 3);
    let mut s = checkpointed(&s);
    assert_eq!(s.counts(), (3, 3, 3));
    assert!(s.apply(2, 2000, forget_batch(vec![forget_assoc(0, 1, "r")])));
    assert_eq!(s.last_forgotten(), 1, "one association (both its sides)");
    assert!(s.apply(3, 2000, forget_batch(vec![forget_assoc(0, 2, "r")])));
    assert!(s.knows(id(0)), "its concept is still there, though every edge it had is gone");
    assert!(s.apply(4, 2002, WriteBatch { associations: vec![assoc(0, 2, "r", 0.6)], ..Default::default() }));
    assert!(!edges_of(&s, id(0)).iter().any(|e| e.0 == id(1).to_string()));
    assert!(!edges_of(&s, id(1)).iter().any(|e| e.0 == id(0).to_string()));
    assert_eq!(s.counts(), (3, 2, 2));
    // Again, or one that never existed: nothing to take back.
    assert!(s.apply(5, 2001, forget_batch(vec![forget_assoc(0, 1, "r"), forget_assoc(2, 0, "r")])));
    assert_eq!(s.last_forgotten(), 0);
    assert_eq!(s.counts(), (3, 2, 2));
    let c = checkpointed(&s);
    assert_eq!(c.counts(), (3, 2, 2));
    assert_eq!(edges_of(&c, id(0)), edges_of(&s, id(0)));
    assert_eq!(edges_of(&c, id(1)), edges_of(&s, id(1)));
    // Learned again.
    assert!(s.apply(6, 2002, WriteBatch { associations: vec![assoc(0, 1, "r", 0.9)], ..Default::default() }));
    assert_eq!(s.counts(), (3, 3, 3));
    assert!(edges_of(&s, id(1)).iter().any(|e| e.0 == id(0).to_string() && f32::from_bits(e.3) == 0.9));
    // Only the named kind, when one is named.
    let k = Forget::Association { source: id(1), target: id(2), relation: "r".into(), kind: Some(AssocKind::Causal) };
    assert!(s.apply(7, 2003, forget_batch(vec![k])));
    assert_eq!(s.last_forgotten(), 0, "the association is semantic");
}

#[test]
fn forgetting_a_concept_removes_it_and_its_local_edges_and_relearning_starts_afresh() {
    let mut s = store_with(&[(0, 1, 0.5), (2, 0, 0.6), (1, 2, 0.7)], 3);
    let mut c = concept(0, "");
    c.vector = vec![1.0, 0.0];
    assert!(s.apply(2, 1500, WriteBatch { concepts: vec![c], ..Default::default() }));
    let mut s = checkpointed(&s);
    assert!(s.nearest(&[1.0, 0.0], 1, true).first().is_some_and(|(_, c)| c.id == id(0)));
    assert!(s.apply(3, 2000, forget_batch(vec![Forget::Concept(id(0))])));
    assert_eq!(s.last_forgotten(), 1 + 2, "the concept and its two associations");
    assert!(s.concept(id(0)).is_none());
    assert!(edges_of(&s, id(0)).is_empty() && !s.knows(id(0)));
    assert_eq!(edges_of(&s, id(1)).len(), 1, "c1 keeps c1 -> c2 only");
    assert_eq!(edges_of(&s, id(2)).len(), 1, "c2 keeps c1 -> c2 only");
    assert_eq!(s.counts(), (2, 1, 1));
    for exact in [true, false] {
        assert!(s.nearest(&[1.0, 0.0], 3, exact).iter().all(|(_, c)| c.id != id(0)), "exact: {exact}");
    }
    let c = checkpointed(&s);
    assert!(c.concept(id(0)).is_none() && !c.knows(id(0)));
    assert_eq!(c.counts(), (2, 1, 1));
    assert_eq!(c.snapshot_vertices().len(), 2, "nothing of the forgotten concept is saved");
    // Learned again: a new concept, not the old record.
    assert!(s.apply(4, 3000, WriteBatch { concepts: vec![concept(0, "")], ..Default::default() }));
    let again = s.concept(id(0)).unwrap();
    assert_eq!((again.content.as_str(), again.created_ms, again.vector.len()), ("", 3000, 0));
    assert_eq!(s.counts(), (3, 1, 1));
}

/// The target's side on another shard goes through the outbox, in order with the
/// association's upserts; a concept's remote out-edges likewise.
#[test]
fn retractions_reach_the_targets_shard_through_the_outbox() {
    let mid = u64::MAX / 2;
    let (lo, hi) = (KeyRange { start: 0, end: mid }, KeyRange { start: mid + 1, end: u64::MAX });
    let a = (0..).find(|n| lo.contains(id(*n))).unwrap();
    let b = (0..).find(|n| hi.contains(id(*n))).unwrap();
    let mut src = ShardStore::new(lo, None);
    let mut dst = ShardStore::new(hi, None);
    let deliver = |dst: &mut ShardStore, lsn, src: &ShardStore| {
        let items = src.outbox_head(100);
        assert!(dst.apply_in_edges(lsn, InEdges { source_shard: 0, items, routed: None }));
    };
    assert!(src.apply(1, 1, WriteBatch { associations: vec![assoc(a, b, "r", 0.5)], ..Default::default() }));
    assert!(src.apply(2, 2, forget_batch(vec![forget_assoc(a, b, "r")])));
    assert_eq!(src.last_forgotten(), 1, "the source's side");
    let items = src.outbox_head(10);
    assert_eq!(items.len(), 2);
    assert!(items[1].1.is_retraction() && items[1].0 == links::seq(2, 0));
    // Both at once, in order: nothing is left at the target.
    deliver(&mut dst, 1, &src);
    assert!(edges_of(&dst, id(b)).is_empty());
    // The retraction alone, after the upsert was delivered: the in-edge goes.
    let mut dst2 = ShardStore::new(hi, None);
    assert!(dst2.apply_in_edges(1, InEdges { source_shard: 0, items: items[..1].to_vec(), routed: None }));
    assert_eq!(edges_of(&dst2, id(b)).len(), 1);
    assert!(dst2.apply_in_edges(2, InEdges { source_shard: 0, items: items.clone(), routed: None }));
    assert!(edges_of(&dst2, id(b)).is_empty());
    // A late copy of the upsert does not bring it back.
    assert!(dst2.apply_in_edges(3, InEdges { source_shard: 0, items: items[..1].to_vec(), routed: None }));
    assert!(edges_of(&dst2, id(b)).is_empty());
    // Forgetting the source concept retracts its remote out-edge as well.
    assert!(src.apply(3, 3, WriteBatch { associations: vec![assoc(a, b, "q", 0.5)], ..Default::default() }));
    assert!(src.apply(4, 4, forget_batch(vec![Forget::Concept(id(a))])));
    deliver(&mut dst, 2, &src);
    assert!(edges_of(&dst, id(b)).is_empty(), "{:?}", edges_of(&dst, id(b)));
    assert!(src.outbox_head(10).last().is_some_and(|(s, r)| r.is_retraction() && *s == links::seq(4, 0)));
}

#[test]
fn batches_with_retractions_round_trip_through_the_log_codec() {
    let b = WriteBatch {
        concepts: vec![concept(1, "x")],
        associations: vec![assoc(1, 2, "r", 0.5)],
        forget: vec![
            Forget::Concept(id(3)),
            forget_assoc(1, 2, "r"),
            Forget::Association { source: id(4), target: id(5), relation: "q".into(), kind: Some(AssocKind::Causal) },
        ],
    };
    let bytes = batch_codec::encode(7, &b);
    assert_eq!(batch_codec::decode(&bytes).unwrap(), (7, b.clone()));
    let plain = WriteBatch { forget: vec![], ..b };
    assert_eq!(batch_codec::decode(&batch_codec::encode(7, &plain)).unwrap(), (7, plain));
    let mut bad = bytes.clone();
    let n = bad.len();
    bad.truncate(n - 1);
    assert!(batch_codec::decode(&bad).is_err());
}
