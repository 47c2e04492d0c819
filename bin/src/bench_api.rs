//! `sutra bench api`: the API's figures on a running grid with WordNet imported (issue 5's
//! targets): `GET /concepts/{id}` latency with one client and throughput with many, and
//! `POST /reason` latency between random synset pairs joined by hypernym/hyponym paths of at
//! most 8 hops. The pairs come from a BFS over the WordNet files here, so every answer's hop
//! count is also checked against that independent BFS (`reason_hops_mismatches`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::json;
use sutra_grid::ids::ConceptId;

use crate::cluster::API_DEFAULT;
use crate::http_client::HttpClient;
use crate::import::wordnet::WordNet;

#[derive(clap::Args)]
pub struct ApiArgs {
    #[arg(long, default_value = API_DEFAULT)]
    api: String,
    /// The WordNet files the grid was loaded from (pairs and ids are drawn from them).
    #[arg(long, default_value = "/usr/share/wordnet")]
    wordnet: PathBuf,
    /// Sequential GETs for the one-client latency figure.
    #[arg(long, default_value_t = 5_000)]
    gets: usize,
    /// Concurrent clients for the throughput figure.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Sequential /reason queries.
    #[arg(long, default_value_t = 500)]
    reasons: usize,
    /// `max_paths` of each /reason query (the answers' distinct-path figures count against it).
    #[arg(long, default_value_t = 32)]
    max_paths: usize,
    /// Longest path between a pair, in hops.
    #[arg(long, default_value_t = 8)]
    max_hops: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Synsets whose edges are read for the locality figures (issue 18): how many of their
    /// associations have both ends on one shard, by the ids the grid answers.
    #[arg(long, default_value_t = 2_000)]
    locality_sample: usize,
    /// Print only the JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn ms_percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The hypernym/hyponym graph, undirected, by synset name index.
struct Taxonomy {
    names: Vec<String>,
    adj: Vec<Vec<u32>>,
}

impl Taxonomy {
    fn new(wn: &WordNet) -> Taxonomy {
        let names: Vec<String> = wn.synsets.iter().map(|s| wn.name(s).to_string()).collect();
        let index: HashMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
        let mut adj = vec![Vec::new(); names.len()];
        for (i, s) in wn.synsets.iter().enumerate() {
            for a in wn.associations(s).0 {
                if a.relation == "hypernym" || a.relation == "hyponym" {
                    if let Some(&j) = index.get(a.target.as_str()) {
                        adj[i].push(j);
                        adj[j as usize].push(i as u32);
                    }
                }
            }
        }
        for l in &mut adj {
            l.sort_unstable();
            l.dedup();
        }
        Taxonomy { names, adj }
    }

    /// Distances from `s` up to `max` hops.
    fn bfs(&self, s: u32, max: usize) -> HashMap<u32, usize> {
        let mut dist = HashMap::from([(s, 0usize)]);
        let mut q = VecDeque::from([s]);
        while let Some(u) = q.pop_front() {
            let d = dist[&u];
            if d == max {
                continue;
            }
            for &v in &self.adj[u as usize] {
                if let std::collections::hash_map::Entry::Vacant(e) = dist.entry(v) {
                    e.insert(d + 1);
                    q.push_back(v);
                }
            }
        }
        dist
    }
}

pub async fn bench_api(a: &ApiArgs) -> Result<serde_json::Value> {
    let say = |m: &str| {
        if !a.json {
            eprintln!("  {m}");
        }
    };
    if a.clients == 0 || a.gets == 0 {
        bail!("--clients and --gets must be at least 1");
    }
    let wn = WordNet::load(&a.wordnet)?;
    let tax = Taxonomy::new(&wn);
    let client = HttpClient::new(&a.api)?;
    let probe = &tax.names[0];
    client.get(&format!("/concepts/{}", ConceptId::from_label(probe))).await.with_context(|| {
        format!(
            "{probe} is not in the grid; import WordNet first: sutra import --format wordnet {}",
            a.wordnet.display()
        )
    })?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let ids: Vec<String> = (0..4096)
        .map(|_| ConceptId::from_label(&tax.names[rng.random_range(0..tax.names.len())]).to_string())
        .collect();

    say(&format!("GET /concepts/{{id}}: {} sequential requests, one client", a.gets));
    for id in ids.iter().take(200) {
        client.get(&format!("/concepts/{id}")).await?;
    }
    let mut lat = Vec::with_capacity(a.gets);
    for i in 0..a.gets {
        let t = Instant::now();
        let (status, _) = client.send(hyper::Method::GET, &format!("/concepts/{}", ids[i % ids.len()]), None).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if status != 200 {
            bail!("GET answered {status}");
        }
    }
    lat.sort_by(f64::total_cmp);

    say(&format!("GET /concepts/{{id}}: {} clients for {} s", a.clients, a.seconds));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(ids);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (client, done, failed, stop, ids) =
            (client.clone(), done.clone(), failed.clone(), stop.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c * 97;
            while !stop.load(Ordering::Relaxed) {
                match client.send(hyper::Method::GET, &format!("/concepts/{}", ids[i % ids.len()]), None).await {
                    Ok((200, _)) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    let n0 = done.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let rps = n0 as f64 / elapsed;

    say(&format!("locality: the edges of {} synsets against the shard map", a.locality_sample));
    let locality = locality(&client, &tax, a.locality_sample, &mut rng).await?;

    say(&format!("POST /reason: {} pairs ≤ {} hops apart over hypernym/hyponym", a.reasons, a.max_hops));
    let mut reason_lat = Vec::with_capacity(a.reasons);
    let (mut rpcs, mut shards_accessed) = (Vec::with_capacity(a.reasons), Vec::with_capacity(a.reasons));
    let (mut mismatches, mut cross_shard, mut hops_sum) = (0usize, 0usize, 0usize);
    let (mut paths_sum, mut distinct_sum, mut k_lat) = (0usize, 0usize, Vec::new());
    while reason_lat.len() < a.reasons {
        let s = rng.random_range(0..tax.names.len()) as u32;
        let dist = tax.bfs(s, a.max_hops);
        let want = rng.random_range(1..=a.max_hops);
        let mut at: Vec<(u32, usize)> = dist.iter().filter(|(_, d)| **d >= 1).map(|(v, d)| (*v, *d)).collect();
        if at.is_empty() {
            continue;
        }
        at.sort_unstable();
        // Prefer the drawn distance; else the farthest available.
        let pick: Vec<&(u32, usize)> = at.iter().filter(|(_, d)| *d == want).collect();
        let &(t, d) = if pick.is_empty() {
            at.iter().max_by_key(|(v, d)| (*d, *v)).unwrap_or(&at[0])
        } else {
            pick[rng.random_range(0..pick.len())]
        };
        let body = json!({
            "start": tax.names[s as usize], "end": tax.names[t as usize],
            "relations": ["hypernym", "hyponym"], "max_depth": a.max_hops, "max_paths": a.max_paths,
        });
        let t0 = Instant::now();
        let v = client.post("/reason", &body).await?;
        reason_lat.push(t0.elapsed().as_secs_f64() * 1e3);
        let paths = v["paths"].as_array().cloned().unwrap_or_default();
        let seqs: std::collections::BTreeSet<Vec<String>> = paths
            .iter()
            .map(|p| p["concepts"].as_array().into_iter().flatten().map(|c| c["id"].to_string()).collect())
            .collect();
        paths_sum += paths.len();
        distinct_sum += seqs.len();
        // Every fifth pair also asks for the k shortest loop-free paths (a grid that does not
        // know the mode answers 400, and the figure stays empty).
        if reason_lat.len() % 5 == 0 {
            let mut kb = body.clone();
            kb["mode"] = json!("k_shortest");
            kb["max_paths"] = json!(a.max_paths.min(8));
            let t0 = Instant::now();
            if let Ok((200, _)) = client.send(hyper::Method::POST, "/reason", Some(serde_json::to_vec(&kb)?)).await {
                k_lat.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let hops = v["paths"][0]["hops"].as_u64().map(|h| h as usize);
        if hops != Some(d) {
            mismatches += 1;
            say(&format!(
                "hop count differs: {} → {}: grid {hops:?}, BFS {d}",
                tax.names[s as usize], tax.names[t as usize]
            ));
        }
        cross_shard += (v["shards_accessed"].as_u64().unwrap_or(0) > 1) as usize;
        rpcs.push(v["rpcs"].as_f64().unwrap_or(0.0));
        shards_accessed.push(v["shards_accessed"].as_f64().unwrap_or(0.0));
        hops_sum += d;
    }
    reason_lat.sort_by(f64::total_cmp);
    k_lat.sort_by(f64::total_cmp);
    rpcs.sort_by(f64::total_cmp);
    shards_accessed.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let per = |n: usize| n as f64 / reason_lat.len().max(1) as f64;
    Ok(json!({
        "bench": "api",
        "get_requests": a.gets,
        "get_ms_p50": ms_percentile(&lat, 0.5),
        "get_ms_p99": ms_percentile(&lat, 0.99),
        "get_clients": a.clients,
        "get_rps": rps.round(),
        "get_failed": failed.load(Ordering::Relaxed),
        "reason_queries": reason_lat.len(),
        "reason_ms_p50": ms_percentile(&reason_lat, 0.5),
        "reason_ms_p99": ms_percentile(&reason_lat, 0.99),
        "reason_mean_hops": hops_sum as f64 / reason_lat.len().max(1) as f64,
        "reason_cross_shard": cross_shard,
        "reason_hops_mismatches": mismatches,
        "reason_max_paths": a.max_paths,
        "reason_paths_per_answer": per(paths_sum),
        "reason_distinct_paths_per_answer": per(distinct_sum),
        "reason_k_shortest_queries": k_lat.len(),
        "reason_k_shortest_ms_p50": ms_percentile(&k_lat, 0.5),
        "reason_k_shortest_ms_p99": ms_percentile(&k_lat, 0.99),
        "reason_rpcs_mean": mean(&rpcs),
        "reason_rpcs_p50": ms_percentile(&rpcs, 0.5),
        "reason_rpcs_p99": ms_percentile(&rpcs, 0.99),
        "reason_shards_accessed_mean": mean(&shards_accessed),
        "locality": locality,
    }))
}

/// How local the grid's placement is: of the associations of `sample` random synsets (read
/// from the grid by label, so whatever ids the grid gave them), the fraction whose other end's
/// placement key falls in the same shard's range; and the shards' concept counts, largest
/// against the mean, from `/cluster/status`.
async fn locality(
    client: &HttpClient,
    tax: &Taxonomy,
    sample: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<serde_json::Value> {
    let st = client.get("/cluster/status").await?;
    let hex = |v: &serde_json::Value| u64::from_str_radix(v.as_str().unwrap_or("0"), 16).unwrap_or(0);
    let ranges: Vec<(u64, u64, u64)> = st["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (hex(&e["key_start"]), hex(&e["key_end"]), e["id"].as_u64().unwrap_or(0)))
        .collect();
    let shard_of = |key: u64| ranges.iter().find(|(s, e, _)| (*s..=*e).contains(&key)).map(|r| r.2);
    let key_of = |id: &str| u128::from_str_radix(id, 16).map(|v| (v >> 64) as u64).ok();
    let (mut edges, mut local) = (0u64, 0u64);
    for _ in 0..sample {
        let name = &tax.names[rng.random_range(0..tax.names.len())];
        let c = client.get(&format!("/concepts?label={name}")).await?;
        let Some(id) = c["id"].as_str().map(str::to_string) else { continue };
        let n = client.get(&format!("/concepts/{id}/neighbors?limit=100000")).await?;
        let mine = key_of(&id).and_then(shard_of);
        for e in n["neighbors"].as_array().into_iter().flatten() {
            let other = e["id"].as_str().and_then(key_of).and_then(shard_of);
            edges += 1;
            local += u64::from(other.is_some() && other == mine);
        }
    }
    let counts: Vec<f64> =
        st["shards"].as_array().into_iter().flatten().map(|e| e["concepts"].as_f64().unwrap_or(0.0)).collect();
    let mean = counts.iter().sum::<f64>() / counts.len().max(1) as f64;
    let largest = counts.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "shards": ranges.len(),
        "sampled_synsets": sample,
        "edges_read": edges,
        "intra_shard_fraction": local as f64 / edges.max(1) as f64,
        "concepts_per_shard": counts,
        "largest_vs_mean": if mean > 0.0 { largest / mean } else { 0.0 },
    }))
}
