//! One shard replica's state: the memory-mapped `storage.dat` checkpoint plus an in-memory
//! overlay of every write applied since. Reads merge the two; overlay edges with the same
//! upsert key (other end, kind, relation) supersede checkpoint edges.

pub mod batch_codec;
pub mod checkpoint;
pub mod links;
pub mod vector_index;

use std::collections::HashMap;
use std::sync::Arc;

pub use checkpoint::{Checkpoint, CheckpointError, EdgeRec, EdgeView, VertexData};
pub use links::{InEdges, Links, Scoped};
pub use vector_index::{IndexStats, SharedIndex, VectorIndex};

use crate::ids::ConceptId;
use crate::limits;
use crate::model::{AssocKind, Association, Concept, Direction, EdgeFilter, Forget, WriteBatch};

/// The key range a shard owns, inclusive at both ends so one shard can own the whole space.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    pub start: u64,
    pub end: u64,
}

impl KeyRange {
    pub const ALL: KeyRange = KeyRange { start: 0, end: u64::MAX };

    pub fn contains(&self, id: ConceptId) -> bool {
        (self.start..=self.end).contains(&id.placement_key())
    }
}

/// One edge as a read returns it, borrowed from the checkpoint or the overlay.
#[derive(Copy, Clone, Debug)]
pub struct Edge<'a> {
    pub other: ConceptId,
    pub kind: AssocKind,
    pub relation: &'a str,
    pub confidence: f32,
    /// true: the asked vertex is the source.
    pub outgoing: bool,
    pub evidence: Option<&'a str>,
}

pub struct ShardStore {
    pub range: KeyRange,
    checkpoint: Option<Checkpoint>,
    concepts: HashMap<ConceptId, Concept>,
    out: HashMap<ConceptId, Vec<EdgeRec>>,
    inn: HashMap<ConceptId, Vec<EdgeRec>>,
    relations: Vec<String>,
    relation_ids: HashMap<String, u32>,
    applied_lsn: u64,
    /// Counts of overlay entries that are new (not superseding the checkpoint).
    overlay_new_concepts: u64,
    overlay_out_edges: u64,
    overlay_in_edges: u64,
    /// Concepts forgotten since the checkpoint (architecture.md §12): their checkpoint records
    /// no longer count. Edges are forgotten by overlay tombstones (`EdgeRec::is_tombstone`).
    /// The next checkpoint drops both.
    forgotten: std::collections::HashSet<ConceptId>,
    /// Concepts and edges removed since the checkpoint (what `counts` subtracts).
    dead_concepts: u64,
    dead_out_edges: u64,
    dead_in_edges: u64,
    /// Concepts and associations the last applied batch took back (its writer answers 404
    /// when none); an association counts once for the sides this shard held.
    last_forgotten: u32,
    /// Concepts and edge records written into the overlay; drives automatic checkpoints.
    overlay_items: u64,
    /// In-edges owed to other shards, and the marks of those delivered here (`links`).
    links: Links,
    /// The LSN of the last entry that changed the range (a split, a merge's end) applied since
    /// this state was loaded (0: none): replicas made after it start from a snapshot.
    range_lsn: u64,
    /// The checkpoint's data holds for keys up to here only: a split narrows it (the half that
    /// left stays in `storage.dat` until the next checkpoint), and what a merge brings in
    /// beyond it must never be read from an older checkpoint.
    cp_end: u64,
    /// A merge under way (architecture.md §10): the shard being absorbed, its range and its
    /// inbox marks. Its vertices arrive in parts and stay out of `range` (unread, unsaved)
    /// until the merge's end entry.
    absorbing: Option<Absorbing>,
    /// What the overlay's upserts carried, roughly (for the size a split policy reads).
    overlay_bytes: u64,
    /// The nearest-neighbour index over this state's vectors (architecture.md §11), shared
    /// with the task that builds it in the background; lock it after the store's own lock.
    vectors: Arc<SharedIndex>,
}

impl ShardStore {
    pub fn new(range: KeyRange, checkpoint: Option<Checkpoint>) -> ShardStore {
        ShardStore::open(range, checkpoint, None)
    }

    /// `vectors`: an index already built over exactly this data (a checkpoint of this state).
    fn open(range: KeyRange, checkpoint: Option<Checkpoint>, vectors: Option<Arc<SharedIndex>>) -> ShardStore {
        let relations: Vec<String> = checkpoint.as_ref().map(|c| c.relations().to_vec()).unwrap_or_default();
        let relation_ids = relations.iter().enumerate().map(|(i, r)| (r.clone(), i as u32)).collect();
        let applied_lsn = checkpoint.as_ref().map(|c| c.lsn).unwrap_or(0);
        let links = checkpoint.as_ref().map(|c| c.links().clone()).unwrap_or_default();
        let cp_end = checkpoint.as_ref().map_or(u64::MAX, |c| c.key_end);
        // Otherwise everything the checkpoint holds waits to be indexed (searches scan it).
        let vectors = vectors.unwrap_or_else(|| {
            let mut ix = VectorIndex::new();
            if let Some(cp) = &checkpoint {
                for i in 0..cp.vertices() as u32 {
                    let id = cp.id_at(i);
                    if range.contains(id) && id.placement_key() <= cp_end {
                        ix.changed(id);
                    }
                }
            }
            Arc::new(SharedIndex::new(ix))
        });
        ShardStore {
            range,
            checkpoint,
            concepts: HashMap::new(),
            out: HashMap::new(),
            inn: HashMap::new(),
            relations,
            relation_ids,
            applied_lsn,
            overlay_new_concepts: 0,
            overlay_out_edges: 0,
            overlay_in_edges: 0,
            forgotten: Default::default(),
            dead_concepts: 0,
            dead_out_edges: 0,
            dead_in_edges: 0,
            last_forgotten: 0,
            overlay_items: 0,
            links,
            range_lsn: 0,
            cp_end,
            absorbing: None,
            overlay_bytes: 0,
            vectors,
        }
    }

    fn vectors(&self) -> std::sync::MutexGuard<'_, VectorIndex> {
        self.vectors.lock()
    }

    /// The vector index, for the task that builds it ([`ShardStore::vectors_to_index`]).
    pub fn vector_index(&self) -> Arc<SharedIndex> {
        self.vectors.clone()
    }

    pub fn vector_index_stats(&self) -> IndexStats {
        self.vectors().stats()
    }

    /// Up to `max` concepts waiting to be indexed, with their vectors, taken from the index's
    /// pending set. The caller inserts them into [`ShardStore::vector_index`] without holding
    /// this store's lock, skipping any that became pending again meanwhile (changed since).
    pub fn vectors_to_index(&self, max: usize) -> Vec<(ConceptId, Vec<f32>)> {
        let ids = {
            let mut ix = self.vectors();
            ix.compact_if_mostly_dead();
            ix.take_pending(max)
        };
        ids.into_iter()
            .filter(|id| self.range.contains(*id))
            .filter_map(|id| Some((id, self.concept(id)?.vector)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// Approximate bytes held: the checkpoint image plus what the overlay's upserts carried
    /// (superseded values counted too, until the next checkpoint).
    pub fn approx_bytes(&self) -> u64 {
        self.checkpoint.as_ref().map_or(0, |c| c.bytes() as u64) + self.overlay_bytes
    }

    /// `v` in the checkpoint, where its data still holds (see `cp_end`).
    fn cp_find(&self, v: ConceptId) -> Option<(&Checkpoint, u32)> {
        let cp = self.checkpoint.as_ref().filter(|_| v.placement_key() <= self.cp_end)?;
        Some((cp, cp.find(v)?))
    }

    pub fn range_lsn(&self) -> u64 {
        self.range_lsn
    }

    /// The shard this one is absorbing, while a merge is under way.
    pub fn absorbing(&self) -> Option<u32> {
        self.absorbing.as_ref().map(|a| a.from)
    }

    /// The shard this one is frozen to merge into (its `Freeze` entry applied).
    pub fn frozen_into(&self) -> Option<u32> {
        self.links.frozen_into
    }

    pub fn applied_lsn(&self) -> u64 {
        self.applied_lsn
    }

    pub fn checkpoint_lsn(&self) -> u64 {
        self.checkpoint.as_ref().map(|c| c.lsn).unwrap_or(0)
    }

    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    pub fn overlay_items(&self) -> u64 {
        self.overlay_items
    }

    pub fn overlay_is_empty(&self) -> bool {
        self.concepts.is_empty() && self.out.is_empty() && self.inn.is_empty() && self.forgotten.is_empty()
    }

    /// (concepts, out-edges, in-edges); overlay upserts of checkpointed items count once.
    pub fn counts(&self) -> (u64, u64, u64) {
        let cp = self.checkpoint.as_ref();
        (
            (cp.map(|c| c.concept_count() as u64).unwrap_or(0) + self.overlay_new_concepts)
                .saturating_sub(self.dead_concepts),
            (cp.map(|c| c.out_edge_count() as u64).unwrap_or(0) + self.overlay_out_edges)
                .saturating_sub(self.dead_out_edges),
            (cp.map(|c| c.in_edge_count() as u64).unwrap_or(0) + self.overlay_in_edges)
                .saturating_sub(self.dead_in_edges),
        )
    }

    /// How many concepts and associations the last applied batch took back here.
    pub fn last_forgotten(&self) -> u32 {
        self.last_forgotten
    }

    pub fn relation_name(&self, rel: u32) -> &str {
        self.relations.get(rel as usize).map(String::as_str).unwrap_or("")
    }

    pub fn relation_id(&self, name: &str) -> Option<u32> {
        self.relation_ids.get(name).copied()
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.relation_ids.get(name) {
            return *id;
        }
        let id = self.relations.len() as u32;
        self.relations.push(name.to_string());
        self.relation_ids.insert(name.to_string(), id);
        id
    }

    /// Applies one logged batch. Must be called in LSN order, exactly once per LSN. False
    /// when the batch holds an item this shard does not own (a split applied after the batch
    /// was validated): then none of it applies, so no half of an association is left behind,
    /// and its writer is told to send it again by the new map. Every replica decides alike:
    /// each holds the same range at each entry (a replica created after a split starts from
    /// a snapshot taken after it, `Core::snapshot_through`).
    pub fn apply(&mut self, lsn: u64, ts_ms: u64, batch: WriteBatch) -> bool {
        let ids: Vec<ConceptId> = batch.concepts.iter().map(|c| ConceptId::from_label(&c.label)).collect();
        self.apply_with_ids(lsn, ts_ms, batch, &ids)
    }

    /// Whether every concept of the batch and every association's source is in this range.
    pub fn owns(&self, batch: &WriteBatch, ids: &[ConceptId]) -> bool {
        ids.iter().all(|id| self.range.contains(*id))
            && batch.associations.iter().all(|a| self.range.contains(a.source))
            && batch.forget.iter().all(|f| self.range.contains(f.owner()))
    }

    /// [`ShardStore::apply`] with the concepts' ids already derived (the write path has them
    /// from validation): `ids[i]` is the id of `batch.concepts[i]`.
    pub fn apply_with_ids(&mut self, lsn: u64, ts_ms: u64, batch: WriteBatch, ids: &[ConceptId]) -> bool {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        assert_eq!(ids.len(), batch.concepts.len(), "one id per concept");
        self.last_forgotten = 0;
        debug_assert!(batch.concepts.iter().zip(ids).all(|(c, id)| ConceptId::from_label(&c.label) == *id));
        // A frozen shard's data is final: what a merge copies is all there is.
        if self.links.frozen_into.is_some() && !batch.is_empty() {
            self.applied_lsn = lsn;
            return false;
        }
        if !self.owns(&batch, ids) {
            self.applied_lsn = lsn;
            return false;
        }
        for (c, &id) in batch.concepts.into_iter().zip(ids) {
            self.overlay_bytes += (64 + c.label.len() + c.content.len() + 4 * c.vector.len()) as u64;
            // A forgotten concept learned again starts afresh.
            let reborn = self.forgotten.remove(&id);
            let (checkpoint, new_concepts, items, cp_end) =
                (&self.checkpoint, &mut self.overlay_new_concepts, &mut self.overlay_items, self.cp_end);
            let p = self.concepts.entry(id).or_insert_with(|| {
                *items += 1;
                let base = checkpoint
                    .as_ref()
                    .filter(|_| id.placement_key() <= cp_end && !reborn)
                    .and_then(|cp| cp.concept(cp.find(id)?));
                base.unwrap_or_else(|| {
                    *new_concepts += 1;
                    Concept {
                        id,
                        label: c.label.trim().to_string(),
                        content: String::new(),
                        vector: Vec::new(),
                        confidence: c.confidence,
                        created_ms: ts_ms,
                        updated_ms: ts_ms,
                    }
                })
            });
            if !c.content.is_empty() {
                p.content = c.content;
            }
            if !c.vector.is_empty() {
                p.vector = c.vector;
                self.vectors.changed(id);
            }
            p.confidence = c.confidence;
            p.updated_ms = ts_ms;
        }
        let n = batch.associations.len();
        for (i, a) in batch.associations.into_iter().enumerate() {
            if self.range.contains(a.source) && !self.range.contains(a.target) {
                self.links.outbox.insert(links::seq(lsn, i), a.clone());
            }
            self.upsert_association(a);
        }
        let mut next = n;
        for f in batch.forget {
            let gone = match f {
                Forget::Concept(id) => self.forget_concept(id),
                Forget::Association { source, target, relation, kind } => self
                    .ends_of(source, target, &relation, kind)
                    .into_iter()
                    .map(|(k, rel)| (source, target, k, rel))
                    .collect(),
            };
            for (source, target, kind, relation) in gone {
                // The target's side on another shard follows through the outbox, in order
                // with the association's upserts.
                let remote = self.range.contains(source) && !self.range.contains(target);
                if remote && next >= links::ITEMS_PER_ENTRY_MAX {
                    // No sequence number left in this entry: both sides stay (writers bound
                    // a concept's associations before they forget it, `FORGET_EDGES_MAX`).
                    continue;
                }
                self.last_forgotten += self.retract(source, target, kind, &relation) as u32;
                if remote {
                    let r = Association::retraction(source, target, kind, &relation);
                    self.links.outbox.insert(links::seq(lsn, next), r);
                    next += 1;
                }
            }
        }
        self.applied_lsn = lsn;
        true
    }

    /// The (kind, relation) of every live association source -> target named `relation`
    /// (of `kind`, if given) this shard holds the source's side of.
    fn ends_of(
        &self,
        source: ConceptId,
        target: ConceptId,
        relation: &str,
        kind: Option<AssocKind>,
    ) -> Vec<(AssocKind, String)> {
        let mut out = Vec::new();
        let filter = EdgeFilter { direction: Direction::Out, ..Default::default() };
        self.for_each_edge(source, &filter, |e| {
            if e.other == target && e.relation == relation && kind.is_none_or(|k| k == e.kind) {
                out.push((e.kind, e.relation.to_string()));
            }
            true
        });
        out
    }

    /// Forgets concept `id` here: its record, and every association it is an end of, both
    /// sides where this shard holds them. Returns the associations whose source side it held,
    /// to retract at their targets (the caller sends those on other shards through the
    /// outbox); a remote source's side of an in-edge is the router's to forget first
    /// (`Router::forget_concept`). Counts the concept itself in `last_forgotten`.
    fn forget_concept(&mut self, id: ConceptId) -> Vec<(ConceptId, ConceptId, AssocKind, String)> {
        if !self.range.contains(id) {
            return Vec::new();
        }
        if self.concept(id).is_some() {
            self.concepts.remove(&id);
            self.dead_concepts += 1;
            self.last_forgotten += 1;
            self.vectors.changed(id);
        }
        self.forgotten.insert(id);
        let mut ends = Vec::new();
        self.for_each_edge(id, &EdgeFilter::default(), |e| {
            let (s, t) = if e.outgoing { (id, e.other) } else { (e.other, id) };
            ends.push((s, t, e.kind, e.relation.to_string()));
            true
        });
        ends.sort_by(|a, b| (a.0, a.1, a.2, &a.3).cmp(&(b.0, b.1, b.2, &b.3)));
        ends.dedup();
        ends
    }

    /// Removes both sides of association (source, target, kind, relation) that this shard
    /// holds. True when a side was live.
    fn retract(&mut self, source: ConceptId, target: ConceptId, kind: AssocKind, relation: &str) -> bool {
        let Some(rel) = self.relation_id(relation) else { return false };
        let mut any = false;
        if self.range.contains(source) && self.kill_edge(source, target, kind, rel, true) {
            self.dead_out_edges += 1;
            any = true;
        }
        if self.range.contains(target) && self.kill_edge(target, source, kind, rel, false) {
            self.dead_in_edges += 1;
            any = true;
        }
        any
    }

    /// Puts a tombstone over `v`'s edge to `other` (kind, rel) on one side. True when the
    /// edge was live (in the overlay or the checkpoint).
    fn kill_edge(&mut self, v: ConceptId, other: ConceptId, kind: AssocKind, rel: u32, out: bool) -> bool {
        let in_checkpoint = self.cp_find(v).is_some_and(|(cp, i)| {
            cp.edge_range(i, out).any(|x| {
                let ev = cp.edge(x, out);
                ev.other == other && ev.kind == kind && ev.rel == rel
            })
        });
        let map = if out { &mut self.out } else { &mut self.inn };
        let list = map.entry(v).or_default();
        let dead = EdgeRec::tombstone(other, kind, rel);
        if let Some(slot) = list.iter_mut().find(|x| x.same_key(other, kind, rel)) {
            let was_live = !slot.is_tombstone();
            *slot = dead;
            return was_live;
        }
        if in_checkpoint {
            list.push(dead);
            self.overlay_items += 1;
        } else if list.is_empty() {
            map.remove(&v);
        }
        in_checkpoint
    }

    /// Applies in-edges delivered from `e.source_shard`, skipping any at or below its inbox
    /// mark. False (nothing applied, the mark unmoved) when a target is not in this range (the
    /// shard split), or the deliverer routed by another range than this shard's (`routed`), or
    /// the shard froze for a merge: the deliverer sends the items again by the new map, and the
    /// shard that owns them then (which copied or merged this one's marks) takes them.
    pub fn apply_in_edges(&mut self, lsn: u64, e: InEdges) -> bool {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        let stale = e.routed.is_some_and(|r| r != (self.range.start, self.range.end));
        if stale || self.links.frozen_into.is_some() || !e.items.iter().all(|(_, a)| self.range.contains(a.target)) {
            self.applied_lsn = lsn;
            return false;
        }
        let src = e.source_shard;
        let mark = self.links.inbox.get(&src).copied().unwrap_or(0);
        // A running mark, so items out of order cannot let an older copy overwrite a newer one.
        let mut top = mark;
        for (s, a) in e.items {
            if s > top {
                top = s;
                // A merge may have left a higher mark for the target's side (`links::Scoped`).
                if self.links.applied(src, s, a.target.placement_key()) {
                    continue;
                }
                if a.is_retraction() {
                    self.retract(a.source, a.target, a.kind, &a.relation);
                } else {
                    self.upsert_association(a);
                }
            }
        }
        if top > mark {
            self.links.inbox.insert(src, top);
            self.links.prune_scoped(src);
        }
        self.applied_lsn = lsn;
        true
    }

    /// Applies a split at `at` (architecture.md §9): this replica keeps `[start, at - 1]`; the
    /// returned image (a checkpoint at `lsn`/`epoch`) holds `[at, end]`, the new shard's first
    /// state: its vertices with all their edges, every inbox mark (a source may re-deliver to
    /// the new shard what it delivered here), and the undelivered outbox items whose source
    /// moves with it: later versions of those associations are logged by the new shard, and
    /// one sender keeps them in order (two could deliver an old version after a new one).
    /// None when `at` is not inside the range (a repeated split entry): a no-op.
    pub fn apply_split(&mut self, lsn: u64, epoch: u64, at: u64) -> Option<Vec<u8>> {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        self.applied_lsn = lsn;
        self.range_lsn = lsn;
        // Never while merging (the master starts neither while the other is under way).
        if at <= self.range.start || at > self.range.end || self.links.frozen_into.is_some() || self.absorbing.is_some()
        {
            return None;
        }
        let right = KeyRange { start: at, end: self.range.end };
        let meta = checkpoint::CheckpointMeta { lsn, epoch, key_start: right.start, key_end: right.end };
        let moving: Vec<u64> =
            self.links.outbox.iter().filter(|(_, a)| right.contains(a.source)).map(|(s, _)| *s).collect();
        let outbox = moving.iter().filter_map(|s| Some((*s, self.links.outbox.remove(s)?))).collect();
        let links = Links {
            outbox,
            inbox: self.links.inbox.clone(),
            scoped: self.links.scoped_within(right.start, right.end),
            frozen_into: None,
        };
        self.links.scoped = self.links.scoped_within(self.range.start, at - 1);
        let image = checkpoint::build_image(&meta, &self.relations, &self.vertices_in(right), &links);
        self.range.end = at - 1;
        self.cp_end = self.cp_end.min(at - 1);
        let gone = |id: &ConceptId| right.contains(*id);
        self.vectors().retain(|id| !gone(&id));
        self.forgotten.retain(|id| !gone(id));
        self.concepts.retain(|id, _| !gone(id));
        self.out.retain(|id, _| !gone(id));
        self.inn.retain(|id, _| !gone(id));
        // Due for a checkpoint: the next one drops the half that left from storage.dat.
        self.overlay_items = self.overlay_items.max(limits::CHECKPOINT_OVERLAY_ITEMS_TRIGGER);
        Some(image)
    }

    /// Freezes the shard for a merge into shard `into` (architecture.md §10): from here on it
    /// applies no writes, deliveries or splits (they are refused, whole, on every replica
    /// alike) and only delivers its outbox. Its data is then final.
    pub fn apply_freeze(&mut self, lsn: u64, into: u32) {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        self.applied_lsn = lsn;
        self.links.frozen_into.get_or_insert(into);
    }

    /// Starts absorbing shard `from`, which owns `right` (the range just after this one's),
    /// froze, delivered its whole outbox, and holds the inbox marks `marks`. A no-op when
    /// this shard does not end just before `right` or already absorbs (a repeated entry).
    pub fn apply_merge_begin(&mut self, lsn: u64, from: u32, right: KeyRange, marks: Links) {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        self.applied_lsn = lsn;
        if self.absorbing.is_some() || self.range.end.checked_add(1) != Some(right.start) || !marks.outbox.is_empty() {
            return;
        }
        self.absorbing = Some(Absorbing { from, range: right, marks });
    }

    /// One part of the absorbed shard: its vertices with all their edges (a checkpoint image
    /// of part of its range). Each is added where this replica lacks it, so a part sent again
    /// (a new primary redoing the merge) changes nothing. A no-op unless absorbing `from`.
    pub fn apply_absorb(&mut self, lsn: u64, from: u32, part: &Checkpoint) {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        self.applied_lsn = lsn;
        let Some(right) = self.absorbing.as_ref().filter(|a| a.from == from).map(|a| a.range) else { return };
        let rels: Vec<u32> = part.relations().iter().map(|r| self.intern(r)).collect();
        for i in 0..part.vertices() as u32 {
            let id = part.id_at(i);
            if !right.contains(id) {
                continue;
            }
            if let Some(c) = part.concept(i) {
                if !self.concepts.contains_key(&id) {
                    self.overlay_bytes += (64 + c.label.len() + c.content.len() + 4 * c.vector.len()) as u64;
                    self.overlay_new_concepts += 1;
                    self.overlay_items += 1;
                    self.concepts.insert(id, c);
                }
            }
            for out in [true, false] {
                for x in part.edge_range(i, out) {
                    let e = part.edge(x, out);
                    let Some(rel) = rels.get(e.rel as usize).copied() else { continue };
                    let list = if out { self.out.entry(id).or_default() } else { self.inn.entry(id).or_default() };
                    if list.iter().any(|o| o.same_key(e.other, e.kind, rel)) {
                        continue;
                    }
                    let evidence: Option<Arc<str>> = e.evidence.map(Arc::from);
                    self.overlay_bytes += 48 + e.evidence.map_or(0, str::len) as u64;
                    list.push(EdgeRec { other: e.other, kind: e.kind, rel, confidence: e.confidence, evidence });
                    self.overlay_items += 1;
                    if out {
                        self.overlay_out_edges += 1;
                    } else {
                        self.overlay_in_edges += 1;
                    }
                }
            }
        }
    }

    /// Ends absorbing shard `from` (this replica is shard `me`): the range takes in the
    /// absorbed one; this shard's undelivered in-edges for it apply here now, unless the
    /// absorbed shard had applied them (its mark for `me`); the inbox marks merge exactly
    /// (`Links::merge_marks`). The next checkpoint is due. A no-op unless absorbing `from`.
    pub fn apply_merge_end(&mut self, lsn: u64, me: u32, from: u32) {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        self.applied_lsn = lsn;
        if self.absorbing.as_ref().is_none_or(|a| a.from != from) {
            return;
        }
        let Some(Absorbing { range: right, marks, .. }) = self.absorbing.take() else { return };
        let left = self.range;
        self.range.end = right.end;
        self.range_lsn = lsn;
        self.concepts.keys().filter(|id| right.contains(**id)).for_each(|id| self.vectors.changed(*id));
        let local: Vec<(u64, Association)> =
            self.links.outbox.iter().filter(|(_, a)| right.contains(a.target)).map(|(s, a)| (*s, a.clone())).collect();
        for (seq, a) in local {
            self.links.outbox.remove(&seq);
            if !marks.applied(me, seq, a.target.placement_key()) {
                self.upsert_association(a);
            }
        }
        self.links.merge_marks((left.start, left.end), &marks, (right.start, right.end));
        self.overlay_items = self.overlay_items.max(limits::CHECKPOINT_OVERLAY_ITEMS_TRIGGER);
    }

    /// Removes delivered items from the outbox.
    pub fn apply_delivered(&mut self, lsn: u64, seqs: &[u64]) {
        assert!(lsn > self.applied_lsn, "apply out of order: lsn {lsn} after {}", self.applied_lsn);
        for s in seqs {
            self.links.outbox.remove(s);
        }
        self.applied_lsn = lsn;
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Up to `max` outbox items in sequence order.
    pub fn outbox_head(&self, max: usize) -> Vec<(u64, Association)> {
        self.links.outbox.iter().take(max).map(|(s, a)| (*s, a.clone())).collect()
    }

    /// Stores the ends of `a` this shard owns.
    fn upsert_association(&mut self, a: Association) {
        self.overlay_bytes += (48 + a.relation.len() + a.evidence.len()) as u64;
        let rel = self.intern(&a.relation);
        let evidence: Option<Arc<str>> = (!a.evidence.is_empty()).then(|| Arc::from(a.evidence.as_str()));
        if self.range.contains(a.source) {
            let e =
                EdgeRec { other: a.target, kind: a.kind, rel, confidence: a.confidence, evidence: evidence.clone() };
            if self.upsert_edge(a.source, e, true) {
                self.overlay_out_edges += 1;
            }
        }
        if self.range.contains(a.target) {
            let e = EdgeRec { other: a.source, kind: a.kind, rel, confidence: a.confidence, evidence };
            if self.upsert_edge(a.target, e, false) {
                self.overlay_in_edges += 1;
            }
        }
    }

    /// Returns true when the edge is new (neither in the overlay nor the checkpoint).
    fn upsert_edge(&mut self, v: ConceptId, e: EdgeRec, out: bool) -> bool {
        let in_checkpoint = self.cp_find(v).and_then(|(cp, i)| {
            cp.edge_range(i, out).find(|&x| {
                let ev = cp.edge(x, out);
                ev.other == e.other && ev.kind == e.kind && ev.rel == e.rel
            })
        });
        let map = if out { &mut self.out } else { &mut self.inn };
        let list = map.entry(v).or_default();
        if let Some(slot) = list.iter_mut().find(|x| x.same_key(e.other, e.kind, e.rel)) {
            // Learned again after it was forgotten: counted as new (its removal was counted).
            let revived = slot.is_tombstone();
            *slot = e;
            return revived;
        }
        list.push(e);
        self.overlay_items += 1;
        in_checkpoint.is_none()
    }

    pub fn concept(&self, id: ConceptId) -> Option<Concept> {
        // After a split the checkpoint still holds the half that left until the next one.
        if !self.range.contains(id) {
            return None;
        }
        if let Some(c) = self.concepts.get(&id) {
            return Some(c.clone());
        }
        if self.forgotten.contains(&id) {
            return None;
        }
        let (cp, i) = self.cp_find(id)?;
        cp.concept(i)
    }

    /// The `k` concepts whose vectors are nearest `query` by cosine, best first (ties by id).
    /// `exact`: compares every vector; otherwise the index proposes candidates (and every
    /// vector not indexed yet is compared), and all are scored exactly, so scores are the
    /// same either way and only a candidate the index missed can differ.
    pub fn nearest(&self, query: &[f32], k: usize, exact: bool) -> Vec<(f32, Concept)> {
        let candidates: Vec<ConceptId> = {
            let ix = self.vectors();
            if exact || ix.dim() != query.len() {
                drop(ix);
                return self.nearest_exact(query, k);
            }
            let mut c: Vec<ConceptId> =
                ix.search(query, 2 * k, |id| self.range.contains(id)).into_iter().map(|(_, id)| id).collect();
            c.extend(ix.pending().iter().filter(|id| self.range.contains(**id)));
            c
        };
        let mut best: Vec<(f32, Concept)> = candidates
            .into_iter()
            .filter_map(|id| self.concept(id))
            .filter(|c| c.vector.len() == query.len())
            .map(|c| (crate::model::embed::cosine(query, &c.vector), c))
            .filter(|(s, _)| s.is_finite())
            .collect();
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
        best.dedup_by(|a, b| a.1.id == b.1.id);
        best.truncate(k);
        best
    }

    /// [`ShardStore::nearest`] by comparing every vector.
    pub fn nearest_exact(&self, query: &[f32], k: usize) -> Vec<(f32, Concept)> {
        let mut best: Vec<(f32, ConceptId)> = Vec::new();
        let consider = |score: f32, id: ConceptId, best: &mut Vec<(f32, ConceptId)>| {
            if !score.is_finite() {
                return;
            }
            best.push((score, id));
            if best.len() >= 2 * k.max(16) {
                best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                best.truncate(k);
            }
        };
        for c in self.concepts.values() {
            if c.vector.len() == query.len() {
                consider(crate::model::embed::cosine(query, &c.vector), c.id, &mut best);
            }
        }
        if let Some(cp) = &self.checkpoint {
            for i in 0..cp.vertices() as u32 {
                let id = cp.id_at(i);
                if self.concepts.contains_key(&id)
                    || self.forgotten.contains(&id)
                    || !self.range.contains(id)
                    || id.placement_key() > self.cp_end
                {
                    continue;
                }
                if let Some(c) = cp.concept(i).filter(|c| c.vector.len() == query.len()) {
                    consider(crate::model::embed::cosine(query, &c.vector), id, &mut best);
                }
            }
        }
        best.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        best.truncate(k);
        best.into_iter().filter_map(|(s, id)| Some((s, self.concept(id)?))).collect()
    }

    /// The local fast path of an expansion (architecture.md §6): the vertices of the next levels after
    /// `frontier` (up to `levels` of them) for as long as every vertex a level reaches lives
    /// on this shard, so listing their edges too spares the search a call per level. Stops
    /// before a level that would pass `vertices_max` vertices.
    pub fn local_levels(
        &self,
        frontier: &[ConceptId],
        filter: &EdgeFilter,
        levels: usize,
        vertices_max: usize,
    ) -> Vec<ConceptId> {
        let mut seen: std::collections::HashSet<ConceptId> = frontier.iter().copied().collect();
        let mut out = Vec::new();
        let mut level: Vec<ConceptId> = frontier.to_vec();
        for _ in 0..levels {
            let mut next = Vec::new();
            let mut leaves_shard = false;
            for v in &level {
                self.for_each_edge(*v, filter, |e| {
                    if !self.range.contains(e.other) {
                        leaves_shard = true;
                        return false;
                    }
                    if seen.insert(e.other) {
                        next.push(e.other);
                    }
                    true
                });
                if leaves_shard || out.len() + next.len() > vertices_max {
                    return out;
                }
            }
            if next.is_empty() {
                break;
            }
            out.extend_from_slice(&next);
            level = next;
        }
        out
    }

    /// Calls `f` for every edge of `v` on the chosen side(s) that passes `filter`, until `f`
    /// returns false. Checkpoint edges superseded by an overlay upsert are skipped.
    pub fn for_each_edge<'a>(&'a self, v: ConceptId, filter: &EdgeFilter, mut f: impl FnMut(Edge<'a>) -> bool) {
        if !self.range.contains(v) {
            return;
        }
        let rel_filter: Option<Vec<u32>> = (!filter.relations.is_empty())
            .then(|| filter.relations.iter().filter_map(|r| self.relation_id(r)).collect());
        let pass = |kind: AssocKind, rel: u32, conf: f32| {
            filter.accepts_kind(kind)
                && conf >= filter.min_confidence
                && rel_filter.as_ref().is_none_or(|rs| rs.contains(&rel))
        };
        let sides: &[bool] = match filter.direction {
            Direction::Out => &[true],
            Direction::In => &[false],
            Direction::Both => &[true, false],
        };
        let cp_index = self.cp_find(v);
        for &out in sides {
            let overlay = if out { self.out.get(&v) } else { self.inn.get(&v) };
            let overlay: &[EdgeRec] = overlay.map(Vec::as_slice).unwrap_or(&[]);
            if let Some((cp, i)) = cp_index {
                for x in cp.edge_range(i, out) {
                    let e = cp.edge(x, out);
                    if !pass(e.kind, e.rel, e.confidence) || overlay.iter().any(|o| o.same_key(e.other, e.kind, e.rel))
                    {
                        continue;
                    }
                    let edge = Edge {
                        other: e.other,
                        kind: e.kind,
                        relation: self.relation_name(e.rel),
                        confidence: e.confidence,
                        outgoing: out,
                        evidence: e.evidence,
                    };
                    if !f(edge) {
                        return;
                    }
                }
            }
            for o in overlay {
                if o.is_tombstone() || !pass(o.kind, o.rel, o.confidence) {
                    continue;
                }
                let edge = Edge {
                    other: o.other,
                    kind: o.kind,
                    relation: self.relation_name(o.rel),
                    confidence: o.confidence,
                    outgoing: out,
                    evidence: o.evidence.as_deref(),
                };
                if !f(edge) {
                    return;
                }
            }
        }
    }

    /// Does this replica hold anything (concept or edges) for `v`?
    pub fn knows(&self, v: ConceptId) -> bool {
        if !self.range.contains(v) {
            return false;
        }
        if self.concepts.contains_key(&v) {
            return true;
        }
        // Tombstones may hide all of what the checkpoint holds for it.
        if self.forgotten.contains(&v) || self.out.contains_key(&v) || self.inn.contains_key(&v) {
            let mut any = self.concept(v).is_some();
            if !any {
                self.for_each_edge(v, &EdgeFilter::default(), |_| {
                    any = true;
                    false
                });
            }
            return any;
        }
        self.cp_find(v).is_some()
    }

    /// Full single-thread BFS from `start`; returns (vertices reached, edges scanned). Uses the
    /// CSR fast path (local indexes, a bitmap, 4 bytes read per edge) when the overlay is empty
    /// and the filter only picks a direction.
    pub fn bfs_reach(&self, start: ConceptId, filter: &EdgeFilter, max_depth: usize) -> (u64, u64) {
        let whole =
            self.checkpoint.as_ref().is_some_and(|cp| cp.key_start == self.range.start && cp.key_end == self.range.end);
        if let (Some(cp), true, true, true) = (&self.checkpoint, self.overlay_is_empty(), filter.is_trivial(), whole) {
            if let Some(s) = cp.find(start) {
                return csr_bfs(cp, s, filter.direction, max_depth);
            }
        }
        let mut seen = std::collections::HashSet::from([start]);
        let mut frontier = vec![start];
        let mut edges = 0u64;
        for _ in 0..max_depth {
            let mut next = Vec::new();
            for v in &frontier {
                self.for_each_edge(*v, filter, |e| {
                    edges += 1;
                    if seen.len() < limits::SEARCH_VISITED_MAX && seen.insert(e.other) {
                        next.push(e.other);
                    }
                    true
                });
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        (seen.len() as u64, edges)
    }

    /// Everything this replica holds in its range, sorted by id: the input of the next
    /// checkpoint.
    pub fn snapshot_vertices(&self) -> Vec<VertexData> {
        self.vertices_in(self.range)
    }

    /// The vertices of `range` (within this replica's), sorted by id, as a checkpoint lists them.
    pub fn vertices_in(&self, range: KeyRange) -> Vec<VertexData> {
        // A vertex whose concept and edges were all forgotten is left out: nothing of it stays.
        self.ids_in(range)
            .into_iter()
            .map(|id| self.vertex_data(id))
            .filter(|v| v.concept.is_some() || !v.out.is_empty() || !v.inn.is_empty())
            .collect()
    }

    /// The vertices from placement key `start` on, sorted by id, until they pass about
    /// `bytes_max` bytes (at least every vertex of the first key), and the key the rest start
    /// at. A part never ends between two ids with one placement key, so asking from that key
    /// next never repeats one nor stalls.
    pub fn vertices_from(&self, start: u64, bytes_max: usize) -> (Vec<VertexData>, Option<u64>) {
        if start > self.range.end {
            return (Vec::new(), None);
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut last_key = None;
        for id in self.ids_in(KeyRange { start, end: self.range.end }) {
            let key = id.placement_key();
            if bytes >= bytes_max && last_key.is_some_and(|k| k != key) {
                return (out, Some(key));
            }
            let v = self.vertex_data(id);
            let edge_bytes =
                |l: &[EdgeRec]| l.iter().map(|e| 40 + e.evidence.as_ref().map_or(0, |x| x.len())).sum::<usize>();
            bytes += 64
                + v.concept.as_ref().map_or(0, |c| c.label.len() + c.content.len() + 4 * c.vector.len())
                + edge_bytes(&v.out)
                + edge_bytes(&v.inn);
            last_key = Some(key);
            out.push(v);
        }
        (out, None)
    }

    /// The placement key that halves this replica's vertices (the first key of the upper
    /// half), if both halves would hold one.
    pub fn median_key(&self) -> Option<u64> {
        let ids = self.ids_in(self.range);
        let key = ids.get(ids.len() / 2)?.placement_key();
        (key > self.range.start && ids.first()?.placement_key() < key).then_some(key)
    }

    /// The ids this replica holds in `range` (within its own), sorted.
    fn ids_in(&self, range: KeyRange) -> Vec<ConceptId> {
        let mut ids: Vec<ConceptId> =
            self.concepts.keys().chain(self.out.keys()).chain(self.inn.keys()).copied().collect();
        if let Some(cp) = &self.checkpoint {
            ids.extend((0..cp.vertices() as u32).map(|i| cp.id_at(i)).filter(|id| id.placement_key() <= self.cp_end));
        }
        ids.retain(|id| range.contains(*id) && self.range.contains(*id));
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// One vertex with all its edges, as a checkpoint lists it.
    fn vertex_data(&self, id: ConceptId) -> VertexData {
        let all = EdgeFilter::default();
        let mut v = VertexData { id, concept: self.concept(id), ..Default::default() };
        self.for_each_edge(id, &all, |e| {
            let rec = EdgeRec {
                other: e.other,
                kind: e.kind,
                rel: self.relation_id(e.relation).unwrap_or(0),
                confidence: e.confidence,
                evidence: e.evidence.map(Arc::from),
            };
            if e.outgoing {
                v.out.push(rec)
            } else {
                v.inn.push(rec)
            }
            true
        });
        // Canonical order: a replica that checkpointed between two upserts lists them
        // checkpoint-last, one that did not in apply order; images (and digests) must not
        // depend on when a replica checkpointed.
        let key = |e: &EdgeRec| (e.other, e.kind, self.relation_name(e.rel).to_string());
        v.out.sort_by_cached_key(key);
        v.inn.sort_by_cached_key(key);
        v
    }

    pub fn relations(&self) -> &[String] {
        &self.relations
    }

    /// Replaces checkpoint + overlay with a freshly written checkpoint covering `applied_lsn`.
    pub fn install_checkpoint(&mut self, cp: Checkpoint) {
        assert_eq!(cp.lsn, self.applied_lsn, "a checkpoint must cover exactly what was applied");
        assert!(self.absorbing.is_none(), "no checkpoint while a merge is under way");
        // The data is the same, so is the index: keep it rather than build it again.
        *self = ShardStore::open(self.range, Some(cp), Some(self.vectors.clone()));
    }
}

/// A merge under way (see [`ShardStore::apply_merge_begin`]).
#[derive(Clone, Debug)]
struct Absorbing {
    from: u32,
    range: KeyRange,
    marks: Links,
}

/// BFS over local indexes; edges to vertices not stored here are counted but not followed.
fn csr_bfs(cp: &Checkpoint, start: u32, dir: Direction, max_depth: usize) -> (u64, u64) {
    let n = cp.vertices();
    let mut seen = vec![0u64; n.div_ceil(64)];
    seen[start as usize / 64] |= 1 << (start % 64);
    let mut frontier = vec![start];
    let mut next = Vec::new();
    let (mut reached, mut edges) = (1u64, 0u64);
    let sides: &[bool] = match dir {
        Direction::Out => &[true],
        Direction::In => &[false],
        Direction::Both => &[true, false],
    };
    for _ in 0..max_depth {
        for &out in sides {
            let nbr = cp.nbr_section(out);
            for &v in &frontier {
                let r = cp.edge_range(v, out);
                edges += r.len() as u64;
                for chunk in nbr[r.start * 4..r.end * 4].chunks_exact(4) {
                    let w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    if w == checkpoint::REMOTE {
                        continue;
                    }
                    let (word, bit) = (w as usize / 64, 1u64 << (w % 64));
                    if seen[word] & bit == 0 {
                        seen[word] |= bit;
                        reached += 1;
                        next.push(w);
                    }
                }
            }
        }
        if next.is_empty() {
            break;
        }
        // Visiting a level in index order turns two random cache misses per vertex (offsets,
        // neighbour slice) into forward scans the prefetcher can follow.
        next.sort_unstable();
        std::mem::swap(&mut frontier, &mut next);
        next.clear();
    }
    (reached, edges)
}

#[cfg(test)]
mod tests;
