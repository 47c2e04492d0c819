//! SWIM at scale: N gossip-only nodes (10, 100 or 1000) on a lossy network (0–2% packet loss
//! per seed). After a warm-up one node is killed silently; every live node must declare it
//! Dead within 10 s of simulated time, no live node may be declared Dead, messages per node
//! per second must not grow with N, and once the victim restarts everyone must see it Alive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use rand::Rng;
use serde_json::json;
use sutra_grid::gossip::{State, View};
use sutra_grid::ids::NodeId;
use sutra_grid::io::seeded_rng;

use super::Report;
use crate::{boot, plan};

const WARMUP: Duration = Duration::from_secs(5);
const DETECT_BUDGET: Duration = Duration::from_secs(10);
const REJOIN_BUDGET: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

fn state_of(views: &[Arc<Mutex<View>>], observer: usize, of: usize) -> Option<State> {
    views[observer].lock().unwrap().members.get(&NodeId(of as u64)).map(|(s, _)| *s)
}

fn sent_total(views: &[Arc<Mutex<View>>]) -> u64 {
    views.iter().map(|v| v.lock().unwrap().stats.sent).sum()
}

/// Seconds until `pred` holds for every live observer, polled every `POLL`, or None.
async fn wait_all(
    views: &[Arc<Mutex<View>>],
    dead: Option<usize>,
    budget: Duration,
    pred: impl Fn(usize) -> bool,
) -> Option<f64> {
    let start = tokio::time::Instant::now();
    while start.elapsed() <= budget {
        if (0..views.len()).filter(|o| Some(*o) != dead).all(&pred) {
            return Some(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

pub async fn run(n: usize) -> Result<Report, String> {
    let h = Handle::current();
    let mut rng = seeded_rng(madsim::rand::random::<u64>());
    let loss = rng.random_range(0.0..0.02);
    madsim::net::NetSim::current().update_config(|c| c.packet_loss_rate = loss);
    let peers: Arc<Vec<(NodeId, std::net::SocketAddr)>> =
        Arc::new((0..n).map(|i| (NodeId(i as u64), plan::gossip_addr(i))).collect());
    let views: Vec<Arc<Mutex<View>>> = (0..n).map(|_| Arc::default()).collect();
    let mut nodes = Vec::with_capacity(n);
    for (i, view) in views.iter().enumerate() {
        let (peers, view, addr) = (peers.clone(), view.clone(), plan::gossip_addr(i));
        nodes.push(
            h.create_node()
                .name(format!("gossip-{i}"))
                .ip(addr.ip())
                .init(move || boot::gossip_only(i, addr, peers.clone(), view.clone()))
                .build(),
        );
    }
    tokio::time::sleep(WARMUP).await;
    for (o, view) in views.iter().enumerate() {
        if let Some((id, _)) = view.lock().unwrap().members.iter().find(|(_, (s, _))| *s == State::Dead) {
            return Err(format!("during warm-up node {o} declared live node {} dead (loss {loss:.3})", id.0));
        }
    }

    let victim = rng.random_range(0..n);
    let sent_before = sent_total(&views);
    h.kill(nodes[victim].id());
    let t0 = tokio::time::Instant::now();
    // First observer to know, and the moment all know.
    let first = {
        let mut first = None;
        while first.is_none() && t0.elapsed() <= DETECT_BUDGET {
            if (0..n).any(|o| o != victim && state_of(&views, o, victim) == Some(State::Dead)) {
                first = Some(t0.elapsed().as_secs_f64());
            } else {
                tokio::time::sleep(POLL).await;
            }
        }
        first
    };
    let remaining = DETECT_BUDGET.saturating_sub(t0.elapsed());
    let all = wait_all(&views, Some(victim), remaining, |o| state_of(&views, o, victim) == Some(State::Dead)).await;
    let Some(all) = all.map(|_| t0.elapsed().as_secs_f64()) else {
        let knowing = (0..n).filter(|o| *o != victim && state_of(&views, *o, victim) == Some(State::Dead)).count();
        return Err(format!(
            "node {victim} not known dead everywhere within {DETECT_BUDGET:?}: {knowing} of {} know",
            n - 1
        ));
    };
    let secs = t0.elapsed().as_secs_f64();
    let msgs_per_node_s = (sent_total(&views) - sent_before) as f64 / (n - 1) as f64 / secs;
    for o in (0..n).filter(|o| *o != victim) {
        for v in (0..n).filter(|v| *v != victim && *v != o) {
            if state_of(&views, o, v) == Some(State::Dead) {
                return Err(format!("false positive: node {o} declared live node {v} dead (loss {loss:.3})"));
            }
        }
    }

    h.restart(nodes[victim].id());
    let rejoin = wait_all(&views, Some(victim), REJOIN_BUDGET, |o| state_of(&views, o, victim) == Some(State::Alive))
        .await
        .ok_or_else(|| format!("restarted node {victim} not seen alive everywhere within {REJOIN_BUDGET:?}"))?;

    let json = json!({
        "scenario": format!("gossip-scale-{n}"),
        "nodes": n,
        "packet_loss": (loss * 1000.0).round() / 1000.0,
        "victim": victim,
        "first_detect_s": first,
        "all_detect_s": (all * 100.0).round() / 100.0,
        "messages_per_node_per_s": (msgs_per_node_s * 10.0).round() / 10.0,
        "rejoin_s": (rejoin * 100.0).round() / 100.0,
    });
    let end_state_hash = xxhash_rust::xxh3::xxh3_64(json.to_string().as_bytes());
    Ok(Report { json, end_state_hash })
}
