//! `storage.dat`: an immutable checkpoint of one shard replica, read in place (mmap).
//!
//! Layout: a 512-byte header, then 8-byte-aligned sections. Vertices are sorted by id; edges
//! are CSR, with the neighbour's local index in its own packed `u32` array so a BFS touches
//! 4 bytes per edge. The header and the whole body carry CRC32C checksums, verified on open
//! together with every structural bound, so accessors afterwards cannot read out of range.

use std::ops::Range;
use std::sync::Arc;

use crate::codec::{u128_at, u32_at, u64_at, Reader, Writer};
use crate::ids::ConceptId;
use crate::io::{Disk, Mapped};
use crate::limits;
use crate::model::{AssocKind, Concept};
use crate::store::links::Links;

const MAGIC: &[u8; 8] = b"SUTRADAT";
/// Version 2 added the `Links` section; version 1 files (without it) still open.
const VERSION: u32 = 2;
const HEADER_BYTES: usize = 512;
/// Section table entry count; see `Sec`.
const SECTIONS: usize = 12;
const SECTIONS_V1: usize = 11;
/// other u128, rel_kind u32, confidence f32, evidence u64.
pub const EDGE_BYTES: usize = 32;
/// Marks an edge whose other end is not stored in this checkpoint.
pub const REMOTE: u32 = u32::MAX;

#[derive(Copy, Clone)]
enum Sec {
    Ids = 0,
    ConceptOffsets,
    ConceptBlob,
    OutOffsets,
    OutNbr,
    OutEdges,
    InOffsets,
    InNbr,
    InEdges,
    Relations,
    Evidence,
    /// The in-edge outbox and inbox marks (`store::links`).
    Links,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("checkpoint is corrupt: {0}")]
    Corrupt(String),
}

fn corrupt(msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Corrupt(msg.into())
}

/// An edge as held in memory by the overlay and fed to the checkpoint writer.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeRec {
    pub other: ConceptId,
    pub kind: AssocKind,
    /// Index into the shard's relation table.
    pub rel: u32,
    pub confidence: f32,
    pub evidence: Option<Arc<str>>,
}

impl EdgeRec {
    pub fn same_key(&self, other: ConceptId, kind: AssocKind, rel: u32) -> bool {
        self.other == other && self.kind == kind && self.rel == rel
    }

    /// An overlay record that hides the edge with this key (it was forgotten). Lives only in
    /// memory: checkpoints leave the edge out instead.
    pub fn tombstone(other: ConceptId, kind: AssocKind, rel: u32) -> EdgeRec {
        EdgeRec { other, kind, rel, confidence: f32::NAN, evidence: None }
    }

    pub fn is_tombstone(&self) -> bool {
        self.confidence.is_nan()
    }
}

/// One vertex's share of a checkpoint: its concept record (if stored here) and its edges.
#[derive(Default)]
pub struct VertexData {
    pub id: ConceptId,
    pub concept: Option<Concept>,
    pub out: Vec<EdgeRec>,
    pub inn: Vec<EdgeRec>,
}

pub struct CheckpointMeta {
    pub lsn: u64,
    pub epoch: u64,
    pub key_start: u64,
    pub key_end: u64,
}

/// A borrowed view of one stored edge.
#[derive(Copy, Clone, Debug)]
pub struct EdgeView<'a> {
    pub other: ConceptId,
    pub kind: AssocKind,
    pub rel: u32,
    pub confidence: f32,
    pub evidence: Option<&'a str>,
}

pub struct Checkpoint {
    map: Mapped,
    sec: [Range<usize>; SECTIONS],
    pub lsn: u64,
    pub epoch: u64,
    pub key_start: u64,
    pub key_end: u64,
    n: usize,
    n_out: usize,
    n_in: usize,
    /// Vertices with a concept record (the rest only hold edges).
    concepts: usize,
    relations: Vec<String>,
    links: Links,
}

fn encode_concept(w: &mut Writer, c: &Concept) {
    w.str(&c.label);
    w.str(&c.content);
    w.f32s(&c.vector);
    w.f32(c.confidence);
    w.u64(c.created_ms);
    w.u64(c.updated_ms);
}

fn decode_concept(id: ConceptId, b: &[u8]) -> Option<Concept> {
    let mut r = Reader::new(b);
    let c = Concept {
        id,
        label: r.str(limits::LABEL_BYTES_MAX, "label").ok()?.to_string(),
        content: r.str(limits::CONTENT_BYTES_MAX, "content").ok()?.to_string(),
        vector: r.f32s(limits::VECTOR_DIM_MAX, "vector").ok()?,
        confidence: r.f32("confidence").ok()?,
        created_ms: r.u64("created").ok()?,
        updated_ms: r.u64("updated").ok()?,
    };
    r.expect_end("concept record").ok()?;
    Some(c)
}

fn align8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

/// Builds the file image. `vertices` must be sorted by id without duplicates.
pub fn build_image(meta: &CheckpointMeta, relations: &[String], vertices: &[VertexData], links: &Links) -> Vec<u8> {
    assert!(vertices.windows(2).all(|w| w[0].id < w[1].id), "checkpoint vertices must be sorted and unique");
    let n = vertices.len();
    let n_out: usize = vertices.iter().map(|v| v.out.len()).sum();
    let n_in: usize = vertices.iter().map(|v| v.inn.len()).sum();
    assert!(n < REMOTE as usize, "too many vertices for one checkpoint");
    let local =
        |id: ConceptId| -> u32 { vertices.binary_search_by(|v| v.id.cmp(&id)).map(|i| i as u32).unwrap_or(REMOTE) };
    let mut evidence = vec![0u8]; // offset 0 is reserved for "no evidence"
    let mut body: Vec<u8> = Vec::with_capacity(n * 64 + (n_out + n_in) * (EDGE_BYTES + 12) + 1024);
    let mut sec: Vec<Range<usize>> = Vec::with_capacity(SECTIONS);
    let start = |body: &mut Vec<u8>| {
        align8(body);
        body.len()
    };
    // ids
    let s = start(&mut body);
    for v in vertices {
        body.extend_from_slice(&v.id.0.to_le_bytes());
    }
    sec.push(s..body.len());
    // concepts
    let mut blob = Writer::with_capacity(n * 64);
    let mut offsets = Writer::with_capacity((n + 1) * 8);
    for v in vertices {
        offsets.u64(blob.buf.len() as u64);
        if let Some(c) = &v.concept {
            encode_concept(&mut blob, c);
        }
    }
    offsets.u64(blob.buf.len() as u64);
    let s = start(&mut body);
    body.extend_from_slice(&offsets.buf);
    sec.push(s..body.len());
    let s = start(&mut body);
    body.extend_from_slice(&blob.buf);
    sec.push(s..body.len());
    drop((blob, offsets));
    // edges, both directions
    for dir in 0..2 {
        fn list(v: &VertexData, dir: usize) -> &[EdgeRec] {
            if dir == 0 {
                &v.out
            } else {
                &v.inn
            }
        }
        let s = start(&mut body);
        let mut at = 0u64;
        for v in vertices {
            body.extend_from_slice(&at.to_le_bytes());
            at += list(v, dir).len() as u64;
        }
        body.extend_from_slice(&at.to_le_bytes());
        sec.push(s..body.len());
        let s = start(&mut body);
        for v in vertices {
            for e in list(v, dir) {
                body.extend_from_slice(&local(e.other).to_le_bytes());
            }
        }
        sec.push(s..body.len());
        let s = start(&mut body);
        for v in vertices {
            for e in list(v, dir) {
                body.extend_from_slice(&e.other.0.to_le_bytes());
                body.extend_from_slice(&(((e.kind as u32) << 24) | e.rel).to_le_bytes());
                body.extend_from_slice(&e.confidence.to_le_bytes());
                let ev = match &e.evidence {
                    Some(text) => {
                        let off = evidence.len() as u64;
                        evidence.extend_from_slice(&(text.len() as u32).to_le_bytes());
                        evidence.extend_from_slice(text.as_bytes());
                        off
                    }
                    None => 0,
                };
                body.extend_from_slice(&ev.to_le_bytes());
            }
        }
        sec.push(s..body.len());
    }
    let mut rel = Writer::default();
    for r in relations {
        rel.str(r);
    }
    let s = start(&mut body);
    body.extend_from_slice(&rel.buf);
    sec.push(s..body.len());
    let s = start(&mut body);
    body.extend_from_slice(&evidence);
    sec.push(s..body.len());
    let s = start(&mut body);
    body.extend_from_slice(&links.encode());
    sec.push(s..body.len());
    assert_eq!(sec.len(), SECTIONS);

    let mut h = Writer::with_capacity(HEADER_BYTES);
    h.buf.extend_from_slice(MAGIC);
    h.u32(VERSION);
    h.u32(0); // header crc, filled below
    for v in [meta.lsn, meta.epoch, meta.key_start, meta.key_end, n as u64, n_out as u64, n_in as u64] {
        h.u64(v);
    }
    h.u64(relations.len() as u64);
    h.u32(crc32c::crc32c(&body));
    h.u32(0);
    for r in &sec {
        h.u64((r.start + HEADER_BYTES) as u64);
        h.u64(r.len() as u64);
    }
    h.buf.resize(HEADER_BYTES, 0);
    let crc = crc32c::crc32c(&h.buf);
    h.buf[12..16].copy_from_slice(&crc.to_le_bytes());
    let mut image = h.buf;
    image.extend_from_slice(&body);
    image
}

/// Writes a checkpoint atomically as `dir/storage.dat`; returns its size in bytes.
pub fn write(disk: &dyn Disk, dir: &str, image: &[u8]) -> Result<u64, CheckpointError> {
    let tmp = format!("{dir}/storage.dat.tmp");
    let mut f = disk.create(&tmp)?;
    for chunk in image.chunks(limits::CHECKPOINT_WRITE_BUFFER_BYTES) {
        f.append(chunk)?;
    }
    f.sync()?;
    drop(f);
    disk.rename(&tmp, &format!("{dir}/storage.dat"))?;
    disk.sync_dir(dir)?;
    Ok(image.len() as u64)
}

impl Checkpoint {
    /// Opens and fully verifies a checkpoint image.
    pub fn open(map: Mapped) -> Result<Checkpoint, CheckpointError> {
        let b = &map[..];
        if b.len() < HEADER_BYTES {
            return Err(corrupt(format!("file is {} bytes, shorter than the header", b.len())));
        }
        if &b[0..8] != MAGIC {
            return Err(corrupt("bad magic; not a storage.dat file"));
        }
        let mut hdr = b[..HEADER_BYTES].to_vec();
        hdr[12..16].fill(0);
        let header_crc = u32_at(b, 3).unwrap_or(0);
        if crc32c::crc32c(&hdr) != header_crc {
            return Err(corrupt("header checksum mismatch"));
        }
        let mut r = Reader::new(&b[8..HEADER_BYTES]);
        let version = r.u32("version").map_err(|e| corrupt(e.to_string()))?;
        let sections = match version {
            VERSION => SECTIONS,
            1 => SECTIONS_V1,
            v => return Err(corrupt(format!("unsupported version {v}"))),
        };
        let h = |r: &mut Reader<'_>| r.u64("header").map_err(|e| corrupt(e.to_string()));
        r.u32("crc").map_err(|e| corrupt(e.to_string()))?;
        let (lsn, epoch, key_start, key_end) = (h(&mut r)?, h(&mut r)?, h(&mut r)?, h(&mut r)?);
        let (n, n_out, n_in, n_rel) = (h(&mut r)?, h(&mut r)?, h(&mut r)?, h(&mut r)?);
        let body_crc = r.u32("body crc").map_err(|e| corrupt(e.to_string()))?;
        r.u32("pad").map_err(|e| corrupt(e.to_string()))?;
        if crc32c::crc32c(&b[HEADER_BYTES..]) != body_crc {
            return Err(corrupt("body checksum mismatch"));
        }
        let mut sec: [Range<usize>; SECTIONS] = Default::default();
        for s in sec.iter_mut().take(sections) {
            let (off, len) = (h(&mut r)? as usize, h(&mut r)? as usize);
            if off < HEADER_BYTES || !off.is_multiple_of(8) || off.checked_add(len).is_none_or(|end| end > b.len()) {
                return Err(corrupt("section out of bounds"));
            }
            *s = off..off + len;
        }
        if n >= REMOTE as u64 || n_rel > limits::RELATIONS_PER_SHARD_MAX as u64 {
            return Err(corrupt("counts out of range"));
        }
        let (n, n_out, n_in) = (n as usize, n_out as usize, n_in as usize);
        let expect = |s: Sec, len: Option<usize>| -> Result<(), CheckpointError> {
            match len {
                Some(l) if sec[s as usize].len() == l => Ok(()),
                _ => Err(corrupt(format!("section {} has the wrong size", s as usize))),
            }
        };
        let size = |count: usize, each: usize| count.checked_mul(each);
        expect(Sec::Ids, size(n, 16))?;
        expect(Sec::ConceptOffsets, size(n + 1, 8))?;
        expect(Sec::OutOffsets, size(n + 1, 8))?;
        expect(Sec::InOffsets, size(n + 1, 8))?;
        expect(Sec::OutNbr, size(n_out, 4))?;
        expect(Sec::InNbr, size(n_in, 4))?;
        expect(Sec::OutEdges, size(n_out, EDGE_BYTES))?;
        expect(Sec::InEdges, size(n_in, EDGE_BYTES))?;
        let mut rr = Reader::new(&b[sec[Sec::Relations as usize].clone()]);
        let mut relations = Vec::with_capacity(n_rel as usize);
        for _ in 0..n_rel {
            relations
                .push(rr.str(limits::RELATION_BYTES_MAX, "relation").map_err(|e| corrupt(e.to_string()))?.to_string());
        }
        let links =
            Links::decode(&b[sec[Sec::Links as usize].clone()]).map_err(|e| corrupt(format!("links section: {e}")))?;
        let mut cp = Checkpoint {
            links,
            map: map.clone(),
            sec,
            lsn,
            epoch,
            key_start,
            key_end,
            n,
            n_out,
            n_in,
            concepts: 0,
            relations,
        };
        cp.verify_structure()?;
        cp.concepts = (0..n as u32).filter(|i| cp.has_concept(*i)).count();
        Ok(cp)
    }

    fn s(&self, s: Sec) -> &[u8] {
        &self.map[self.sec[s as usize].clone()]
    }

    fn verify_structure(&self) -> Result<(), CheckpointError> {
        let ids = self.s(Sec::Ids);
        for i in 1..self.n {
            if u128_at(ids, i - 1) >= u128_at(ids, i) {
                return Err(corrupt("vertex ids are not strictly sorted"));
            }
        }
        let monotone = |sec: Sec, end: usize| -> Result<(), CheckpointError> {
            let o = self.s(sec);
            let mut prev = 0;
            for i in 0..=self.n {
                let v = u64_at(o, i).unwrap_or(u64::MAX) as usize;
                if v < prev || v > end {
                    return Err(corrupt(format!("offsets of section {} are not monotone", sec as usize)));
                }
                prev = v;
            }
            if prev != end {
                return Err(corrupt(format!("offsets of section {} do not cover it", sec as usize)));
            }
            Ok(())
        };
        monotone(Sec::ConceptOffsets, self.sec[Sec::ConceptBlob as usize].len())?;
        monotone(Sec::OutOffsets, self.n_out)?;
        monotone(Sec::InOffsets, self.n_in)?;
        let ev_len = self.sec[Sec::Evidence as usize].len() as u64;
        for (nbr, edges, count) in [(Sec::OutNbr, Sec::OutEdges, self.n_out), (Sec::InNbr, Sec::InEdges, self.n_in)] {
            let (nb, ed) = (self.s(nbr), self.s(edges));
            for e in 0..count {
                let x = u32_at(nb, e).unwrap_or(REMOTE);
                if x != REMOTE && x as usize >= self.n {
                    return Err(corrupt("edge neighbour index out of range"));
                }
                let rk = u32_at(ed, e * 8 + 4).unwrap_or(0);
                if AssocKind::from_u8((rk >> 24) as u8).is_none() || (rk & 0xff_ffff) as usize >= self.relations.len() {
                    return Err(corrupt("edge kind or relation out of range"));
                }
                let ev = u64_at(ed, e * 4 + 3).unwrap_or(u64::MAX);
                if ev != 0 && ev.checked_add(4).is_none_or(|end| end > ev_len) {
                    return Err(corrupt("edge evidence offset out of range"));
                }
            }
        }
        Ok(())
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn vertices(&self) -> usize {
        self.n
    }
    pub fn concept_count(&self) -> usize {
        self.concepts
    }
    pub fn out_edge_count(&self) -> usize {
        self.n_out
    }
    pub fn in_edge_count(&self) -> usize {
        self.n_in
    }
    pub fn bytes(&self) -> usize {
        self.map.len()
    }
    pub fn relations(&self) -> &[String] {
        &self.relations
    }

    pub fn id_at(&self, i: u32) -> ConceptId {
        ConceptId(u128_at(self.s(Sec::Ids), i as usize).unwrap_or(0))
    }

    /// Local index of `id`, by binary search over the sorted id section.
    pub fn find(&self, id: ConceptId) -> Option<u32> {
        let ids = self.s(Sec::Ids);
        let (mut lo, mut hi) = (0usize, self.n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match u128_at(ids, mid).unwrap_or(0).cmp(&id.0) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid as u32),
            }
        }
        None
    }

    pub fn concept(&self, i: u32) -> Option<Concept> {
        let o = self.s(Sec::ConceptOffsets);
        let (a, b) = (u64_at(o, i as usize)? as usize, u64_at(o, i as usize + 1)? as usize);
        if a == b {
            return None;
        }
        decode_concept(self.id_at(i), self.s(Sec::ConceptBlob).get(a..b)?)
    }

    pub fn has_concept(&self, i: u32) -> bool {
        let o = self.s(Sec::ConceptOffsets);
        u64_at(o, i as usize) != u64_at(o, i as usize + 1)
    }

    /// Edge index range of vertex `i`, outgoing (`out`) or incoming.
    #[inline]
    pub fn edge_range(&self, i: u32, out: bool) -> Range<usize> {
        let o = self.s(if out { Sec::OutOffsets } else { Sec::InOffsets });
        let a = u64_at(o, i as usize).unwrap_or(0) as usize;
        let b = u64_at(o, i as usize + 1).unwrap_or(0) as usize;
        a..b
    }

    /// Packed neighbour indexes (4 bytes per edge) for the BFS fast path.
    #[inline]
    pub fn nbr_section(&self, out: bool) -> &[u8] {
        self.s(if out { Sec::OutNbr } else { Sec::InNbr })
    }

    pub fn edge(&self, e: usize, out: bool) -> EdgeView<'_> {
        let ed = self.s(if out { Sec::OutEdges } else { Sec::InEdges });
        let rk = u32_at(ed, e * 8 + 4).unwrap_or(0);
        let ev = u64_at(ed, e * 4 + 3).unwrap_or(0) as usize;
        let evidence = if ev == 0 {
            None
        } else {
            let blob = self.s(Sec::Evidence);
            let len = u32_at(&blob[ev..], 0).unwrap_or(0) as usize;
            blob.get(ev + 4..ev + 4 + len).and_then(|b| std::str::from_utf8(b).ok())
        };
        EdgeView {
            other: ConceptId(u128_at(ed, e * 2).unwrap_or(0)),
            kind: AssocKind::from_u8((rk >> 24) as u8).unwrap_or(AssocKind::Semantic),
            rel: rk & 0xff_ffff,
            confidence: f32::from_le_bytes(ed[e * EDGE_BYTES + 20..e * EDGE_BYTES + 24].try_into().unwrap_or([0; 4])),
            evidence,
        }
    }
}
