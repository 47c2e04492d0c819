//! One storage node under concurrent write load is killed at a random moment; its disk loses
//! or tears whatever was not fsynced (`SimDisk::crash`); it restarts and recovers. Automatic
//! checkpoints (with a low, per-seed trigger) race with the crash. Some seeds also inject an
//! fsync failure (fatal for the shard until restart), a full disk, a second crash, or reads
//! that flip bits while the node recovers (it must then refuse to serve or serve the truth;
//! once reads are clean again, a plain restart must bring back everything acknowledged).
//!
//! Checkers, over the recorded history and the recovered node:
//! - every batch acknowledged before (or after) the crash is present and intact;
//! - no batch appears half-applied (each is one WAL record: all of it or none);
//! - nothing that was never written appears (counts match the batches present);
//! - recovery never panics (a panic aborts the simulation and fails the seed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use rand::Rng;
use serde_json::json;
use sutra_grid::client::StorageClient;
use sutra_grid::ids::ConceptId;
use sutra_grid::io::{seeded_rng, SimDisk, SimDiskFaults};
use sutra_grid::model::{AssocKind, Association, ConceptWrite, Direction, EdgeFilter, WriteBatch};
use sutra_grid::node::NodeConfig;
use sutra_grid::wire::{id_from_pb, kind_from_pb};

use super::Report;
use crate::{boot, plan};

const WRITE_DEADLINE: Duration = Duration::from_millis(500);
const READY_BUDGET: Duration = Duration::from_secs(10);
const IDS_PER_READ: usize = 3000;

#[derive(Clone, Debug, PartialEq)]
enum Fate {
    InFlight,
    Acked(u64),
    Failed,
}

#[derive(Default)]
struct History {
    /// (writer, index) → fate.
    batches: HashMap<(u32, u32), Fate>,
}

fn label(w: u32, i: u32, j: u32) -> String {
    format!("w{w}-b{i}-c{j}")
}

fn content(w: u32, i: u32, j: u32) -> String {
    format!("w{w} b{i} c{j} {}", "x".repeat(((i * 7 + j) % 50) as usize))
}

/// Three fresh concepts and two associations: one WAL record, so all or nothing.
fn batch(w: u32, i: u32) -> WriteBatch {
    let id = |j| ConceptId::from_label(&label(w, i, j));
    WriteBatch {
        concepts: (0..3)
            .map(|j| ConceptWrite { label: label(w, i, j), content: content(w, i, j), vector: vec![], confidence: 0.9 })
            .collect(),
        associations: vec![
            Association {
                source: id(0),
                target: id(1),
                kind: AssocKind::Causal,
                relation: "causes".into(),
                confidence: 0.8,
                evidence: format!("w{w} b{i}"),
            },
            Association {
                source: id(1),
                target: id(2),
                kind: AssocKind::Temporal,
                relation: "before".into(),
                confidence: 0.7,
                evidence: format!("w{w} b{i}"),
            },
        ],
        forget: vec![],
    }
}

async fn writer(w: u32, addr: SocketAddr, history: Arc<Mutex<History>>, stop: Arc<AtomicBool>) {
    let mut client: Option<StorageClient> = None;
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let c = match &client {
            Some(c) => c.clone(),
            None => match StorageClient::connect(&addr.to_string()).await {
                Ok(c) => {
                    let c = c.with_deadline(WRITE_DEADLINE);
                    client = Some(c.clone());
                    c
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        history.lock().unwrap().batches.insert((w, i), Fate::InFlight);
        let fate = match c.write_batch(0, &batch(w, i)).await {
            Ok(r) => Fate::Acked(r.lsn),
            Err(_) => {
                client = None;
                Fate::Failed
            }
        };
        history.lock().unwrap().batches.insert((w, i), fate);
        i += 1;
    }
}

async fn wait_ready(addr: SocketAddr) -> Result<StorageClient, String> {
    let start = tokio::time::Instant::now();
    let mut last = String::new();
    while start.elapsed() < READY_BUDGET {
        if let Ok(c) = StorageClient::connect(&addr.to_string()).await {
            match c.shard_info(0).await {
                Ok(info) if info.serving => return Ok(c),
                Ok(info) => last = format!("shard 0 not serving: {}", info.fault),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("node not serving within {READY_BUDGET:?} of restart: {last}"))
}

/// What the recovered node holds for one batch.
#[derive(Default, Clone)]
struct Seen {
    concepts: u32,
    contents_ok: bool,
    edges: u32,
}

async fn observe(c: &StorageClient, keys: &[(u32, u32)]) -> Result<HashMap<(u32, u32), Seen>, String> {
    let mut seen: HashMap<(u32, u32), Seen> =
        keys.iter().map(|k| (*k, Seen { contents_ok: true, ..Default::default() })).collect();
    let mut owner: HashMap<ConceptId, ((u32, u32), u32)> = HashMap::new();
    let mut ids = Vec::new();
    for &(w, i) in keys {
        for j in 0..3 {
            let id = ConceptId::from_label(&label(w, i, j));
            owner.insert(id, ((w, i), j));
            ids.push(id);
        }
    }
    for chunk in ids.chunks(IDS_PER_READ) {
        let r = c.get_concepts(0, chunk).await.map_err(|e| format!("reading back: {e}"))?;
        for found in r.found {
            let id = found.id.as_ref().map(id_from_pb).unwrap_or_default();
            let Some(&((w, i), j)) = owner.get(&id) else { return Err(format!("phantom concept {id} returned")) };
            let s = seen.get_mut(&(w, i)).ok_or("bookkeeping")?;
            s.concepts += 1;
            s.contents_ok &= found.content == content(w, i, j) && found.label == label(w, i, j);
        }
        let out = EdgeFilter { direction: Direction::Out, ..Default::default() };
        let r = c.neighbors(0, chunk, &out, 16, true).await.map_err(|e| format!("reading edges: {e}"))?;
        for list in r.lists {
            let id = list.id.as_ref().map(id_from_pb).unwrap_or_default();
            let Some(&((w, i), j)) = owner.get(&id) else { continue };
            let want = match j {
                0 => Some((label(w, i, 1), AssocKind::Causal, "causes", 0.8f32)),
                1 => Some((label(w, i, 2), AssocKind::Temporal, "before", 0.7f32)),
                _ => None,
            };
            let s = seen.get_mut(&(w, i)).ok_or("bookkeeping")?;
            for e in &list.edges {
                let ok = want.as_ref().is_some_and(|(to, kind, rel, conf)| {
                    e.other.as_ref().map(id_from_pb) == Some(ConceptId::from_label(to))
                        && kind_from_pb(e.kind) == Some(*kind)
                        && e.relation == *rel
                        && e.confidence == *conf
                        && e.evidence == format!("w{w} b{i}")
                });
                if !ok {
                    return Err(format!("batch w{w}/b{i}: unexpected or damaged edge {e:?}"));
                }
                s.edges += 1;
            }
        }
    }
    Ok(seen)
}

pub async fn run() -> Result<Report, String> {
    let h = Handle::current();
    let mut rng = seeded_rng(madsim::rand::random::<u64>());
    let writers: u32 = rng.random_range(2..=12);
    let crash_at = Duration::from_millis(rng.random_range(5..1500));
    let downtime = Duration::from_millis(rng.random_range(0..300));
    let after = Duration::from_millis(rng.random_range(50..600));
    let sync_latency = Duration::from_micros(rng.random_range(50..3000));
    let fsync_fault_at = rng.random_bool(0.2).then(|| crash_at.mul_f64(rng.random_range(0.1..0.9)));
    let disk_full_at = rng.random_bool(0.15).then(|| crash_at.mul_f64(rng.random_range(0.1..0.9)));
    let double_crash = rng.random_bool(0.2);
    let read_flips = rng.random_bool(0.15).then(|| rng.random_range(0.05..0.5));
    let config = NodeConfig {
        vector_dim: boot::SIM_VECTOR_DIM,
        checkpoint_overlay_items: rng.random_range(20..3000),
        checkpoint_check_interval_ms: rng.random_range(20..400),
        wal_segment_bytes_max: rng.random_range(512..256 * 1024),
        standalone: true,
        ..NodeConfig::default()
    };

    let disk = SimDisk::new(rng.random());
    disk.set_faults(SimDiskFaults { sync_latency, ..Default::default() });
    let addr = plan::storage_addr(0);
    let (node_disk, node_config) = (disk.clone(), config.clone());
    let node = h
        .create_node()
        .name(plan::storage_name(0))
        .ip(addr.ip())
        .init(move || boot::storage_standalone(node_disk.clone(), addr, node_config.clone()))
        .build();
    let client = h.create_node().name("client-1").ip(plan::client_ip(0)).build();

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        tasks.push(client.spawn(writer(w, addr, history.clone(), stop.clone())));
    }

    let crash = |label: &str| {
        h.kill(node.id());
        disk.crash();
        // An armed fsync fault that never fired belonged to the dead incarnation; left armed it
        // would fail the restarted node, which no agent restarts here (regression seed 1352).
        disk.fail_next_syncs(0);
        // Likewise the operator frees space before restarting a node that filled its disk.
        disk.set_faults(SimDiskFaults { capacity_bytes: u64::MAX, ..disk.faults() });
        tracing::info!(at = ?madsim::time::Instant::now(), what = label, "crash");
    };
    // Faults before the crash, in time order.
    let mut faults: Vec<(Duration, &str)> = Vec::new();
    faults.extend(fsync_fault_at.map(|t| (t, "fsync")));
    faults.extend(disk_full_at.map(|t| (t, "full")));
    faults.sort();
    let mut now = Duration::ZERO;
    for (at, what) in faults {
        tokio::time::sleep(at - now).await;
        now = at;
        match what {
            "fsync" => disk.fail_next_syncs(1),
            _ => {
                let capacity_bytes = disk.used_bytes() + rng.random_range(0..64 * 1024);
                disk.set_faults(SimDiskFaults { capacity_bytes, ..disk.faults() });
            }
        }
    }
    tokio::time::sleep(crash_at - now).await;
    crash("first");
    tokio::time::sleep(downtime).await;
    if let Some(p) = read_flips {
        disk.set_faults(SimDiskFaults { read_bitflip_probability: p, ..disk.faults() });
    }
    h.restart(node.id());
    if double_crash {
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        crash("second");
        h.restart(node.id());
    }
    tokio::time::sleep(after).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| format!("writer task failed: {e}"))?;
    }

    let mut refused_after_read_flips = None;
    if read_flips.is_some() {
        // Flips only matter while the node opens. Reads are clean from here on; see what the
        // node made of them, and if it refused to serve, restart it (the disk itself is fine).
        disk.set_faults(SimDiskFaults { read_bitflip_probability: 0.0, ..disk.faults() });
        let info = client
            .spawn(async move {
                let c = StorageClient::connect(&addr.to_string()).await.map_err(|e| e.to_string())?;
                c.shard_info(0).await.map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("checker task failed: {e}"))?
            .map_err(|e| format!("node unreachable after recovering with flipped reads: {e}"))?;
        if !info.serving {
            let known = ["corrupt", "checksum", "crc", "shard.meta", "disagreeing"];
            if !known.iter().any(|k| info.fault.contains(k)) {
                return Err(format!(
                    "after flipped reads the shard refused to serve for an unexpected reason: {}",
                    info.fault
                ));
            }
            refused_after_read_flips = Some(info.fault);
            h.kill(node.id());
            h.restart(node.id());
        }
    }

    let batches = history.lock().unwrap().batches.clone();
    let mut keys: Vec<(u32, u32)> = batches.keys().copied().collect();
    keys.sort_unstable();
    let checked = client
        .spawn(async move {
            let c = wait_ready(addr).await?;
            let seen = observe(&c, &keys).await?;
            let info = c.shard_info(0).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((seen, info))
        })
        .await
        .map_err(|e| format!("checker task failed: {e}"))??;
    let (seen, info) = checked;

    let (mut acked, mut present, mut unacked_present, mut unacked_absent, mut max_acked_lsn) = (0, 0u64, 0, 0, 0);
    let mut present_keys = Vec::new();
    for (key, fate) in &batches {
        let s = &seen[key];
        let whole = s.concepts == 3 && s.edges == 2 && s.contents_ok;
        let none = s.concepts == 0 && s.edges == 0;
        let (w, i) = key;
        if !whole && !none {
            return Err(format!(
                "batch w{w}/b{i} ({fate:?}) is half-applied or damaged: {} of 3 concepts, {} of 2 edges, contents ok: {}",
                s.concepts, s.edges, s.contents_ok
            ));
        }
        if let Fate::Acked(lsn) = fate {
            acked += 1;
            max_acked_lsn = max_acked_lsn.max(*lsn);
            if !whole {
                return Err(format!("acknowledged batch w{w}/b{i} (lsn {lsn}) was lost"));
            }
        } else if whole {
            unacked_present += 1;
        } else {
            unacked_absent += 1;
        }
        if whole {
            present += 1;
            present_keys.push(*key);
        }
    }
    if info.concepts != 3 * present || info.out_edges != 2 * present || info.in_edges != 2 * present {
        return Err(format!(
            "node holds {} concepts / {} out-edges / {} in-edges, but the history accounts for {present} batches ({} / {} / {})",
            info.concepts, info.out_edges, info.in_edges, 3 * present, 2 * present, 2 * present
        ));
    }
    if info.last_lsn < max_acked_lsn {
        return Err(format!("recovered lsn {} is behind the highest acknowledged lsn {max_acked_lsn}", info.last_lsn));
    }
    present_keys.sort_unstable();
    let stats = disk.stats();
    let json = json!({
        "scenario": "crash-recovery",
        "writers": writers,
        "crash_at_ms": crash_at.as_millis() as u64,
        "downtime_ms": downtime.as_millis() as u64,
        "sync_latency_us": sync_latency.as_micros() as u64,
        "fsync_fault_at_ms": fsync_fault_at.map(|d| d.as_millis() as u64),
        "double_crash": double_crash,
        "disk_full_at_ms": disk_full_at.map(|d| d.as_millis() as u64),
        "checkpoint_trigger_items": config.checkpoint_overlay_items,
        "checkpoint_lsn": info.checkpoint_lsn,
        "wal_segment_bytes": config.wal_segment_bytes_max,
        "read_bitflip_probability": read_flips,
        "refused_after_read_flips": refused_after_read_flips,
        "bitflips": stats.bitflips,
        "batches_attempted": batches.len(),
        "batches_acked": acked,
        "unacked_present": unacked_present,
        "unacked_absent": unacked_absent,
        "recovered_lsn": info.last_lsn,
        "torn_files": stats.torn_files,
        "dropped_bytes": stats.dropped_bytes,
        "sync_errors": stats.sync_errors,
    });
    let end_state_hash = xxhash_rust::xxh3::xxh3_64(format!("{json}{present_keys:?}").as_bytes());
    Ok(Report { json, end_state_hash })
}
