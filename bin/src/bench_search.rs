//! `sutra bench search`: vector search on a running grid with WordNet imported (issue 19):
//! for random query texts drawn from the synsets' lemmas (with a letter changed, as a user
//! mistypes), the index's top k against an exact scan of every vector (`"exact": true`) on
//! the same grid: recall@k, the latency of both, and the indexes' size. First it waits until
//! every answering replica has indexed what it holds, and reports how long that took.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::bench_api::ms_percentile;
use crate::cluster::API_DEFAULT;
use crate::http_client::HttpClient;
use crate::import::wordnet::WordNet;

#[derive(clap::Args)]
pub struct SearchArgs {
    #[arg(long, default_value = API_DEFAULT)]
    api: String,
    /// The WordNet files the grid was loaded from (query texts are drawn from them).
    #[arg(long, default_value = "/usr/share/wordnet")]
    wordnet: PathBuf,
    /// Queries, each asked of the index and of the exact scan.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Longest wait for the indexes to catch up before measuring, in seconds.
    #[arg(long, default_value_t = 600.0)]
    wait_s: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// No grid: build one index per shard in this process over the synsets' vectors (as the
    /// importer embeds them, split into `--shards` by id), and report recall, latency and
    /// build time per candidate count (`--candidates`), to tune the index without a grid.
    #[arg(long)]
    offline: bool,
    #[arg(long, default_value_t = 3)]
    shards: usize,
    /// Offline, with dense random vectors (as a client's own embeddings would be) instead of
    /// the built-in embedder's sparse ones: every column is read.
    #[arg(long)]
    dense: bool,
    /// Candidate counts tried offline (each shard's, before exact scoring).
    #[arg(long, value_delimiter = ',', default_value = "10,20,32")]
    candidates: Vec<usize>,
    /// Print only the JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn bench_search(a: &SearchArgs) -> Result<serde_json::Value> {
    let say = |m: &str| {
        if !a.json {
            eprintln!("  {m}");
        }
    };
    if a.queries == 0 || a.k == 0 {
        bail!("--queries and --k must be at least 1");
    }
    let wn = WordNet::load(&a.wordnet)?;
    let lemmas: Vec<String> = wn.synsets.iter().flat_map(|s| s.lemmas.iter().map(|l| l.replace('_', " "))).collect();
    if lemmas.is_empty() {
        bail!("no lemmas in {}", a.wordnet.display());
    }
    if a.offline {
        return offline(a, &wn, &lemmas);
    }
    let client = HttpClient::new(&a.api)?;
    let ask = |text: &str, exact: bool| json!({"text": text, "k": a.k, "exact": exact});

    say("waiting for the indexes to take in every vector");
    let t0 = Instant::now();
    let first = client.post("/search", &ask("entity", false)).await.context("POST /search")?;
    let pending_at_start = first["index"]["pending"].as_u64().unwrap_or(0);
    let mut index = first["index"].clone();
    while index["pending"].as_u64().unwrap_or(0) > 0 {
        if t0.elapsed().as_secs_f64() > a.wait_s {
            bail!("the indexes still had {} vectors pending after {} s", index["pending"], a.wait_s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        index = client.post("/search", &ask("entity", false)).await?["index"].clone();
    }
    let caught_up_s = t0.elapsed().as_secs_f64();
    let vectors = index["vectors"].as_u64().unwrap_or(0);
    if vectors == 0 {
        bail!("the grid holds no vectors; import WordNet first: sutra import --format wordnet {}", a.wordnet.display());
    }

    say(&format!("{} queries, k = {}, index and exact", a.queries, a.k));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let (mut fast, mut slow) = (Vec::with_capacity(a.queries), Vec::with_capacity(a.queries));
    let (mut found, mut wanted) = (0usize, 0usize);
    for _ in 0..a.queries {
        let text = query_text(&lemmas, &mut rng);
        let t = Instant::now();
        let got = client.post("/search", &ask(&text, false)).await?;
        fast.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let want = client.post("/search", &ask(&text, true)).await?;
        slow.push(t.elapsed().as_secs_f64() * 1e3);
        let hits = |v: &serde_json::Value| -> Vec<(String, f64)> {
            v["hits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| (h["id"].as_str().unwrap_or("").to_string(), h["score"].as_f64().unwrap_or(0.0)))
                .collect()
        };
        let (got, want) = (hits(&got), hits(&want));
        // A hit scoring at least the exact k-th counts (ties at the cut may differ by id).
        let cut = want.last().map_or(f64::INFINITY, |w| w.1) - 1e-6;
        found += got.iter().filter(|g| want.iter().any(|w| w.0 == g.0) || g.1 >= cut).count().min(want.len());
        wanted += want.len();
    }
    fast.sort_by(f64::total_cmp);
    slow.sort_by(f64::total_cmp);
    let bytes = index["bytes"].as_u64().unwrap_or(0);
    Ok(json!({
        "bench": "search",
        "queries": a.queries,
        "k": a.k,
        "recall_at_k": found as f64 / wanted.max(1) as f64,
        "index_ms_p50": ms_percentile(&fast, 0.5),
        "index_ms_p99": ms_percentile(&fast, 0.99),
        "exact_ms_p50": ms_percentile(&slow, 0.5),
        "exact_ms_p99": ms_percentile(&slow, 0.99),
        "index_vectors": vectors,
        "index_bytes": bytes,
        "index_bytes_per_vector": bytes as f64 / vectors as f64,
        "pending_at_start": pending_at_start,
        "caught_up_s": caught_up_s,
    }))
}

/// A lemma with one letter changed, as a user mistypes.
fn query_text(lemmas: &[String], rng: &mut rand_chacha::ChaCha8Rng) -> String {
    let mut text: Vec<char> = lemmas[rng.random_range(0..lemmas.len())].chars().collect();
    if text.len() > 3 {
        let at = rng.random_range(0..text.len());
        text[at] = (b'a' + rng.random_range(0..26u8)) as char;
    }
    text.into_iter().collect()
}

fn offline(a: &SearchArgs, wn: &WordNet, lemmas: &[String]) -> Result<serde_json::Value> {
    use sutra_grid::ids::ConceptId;
    use sutra_grid::model::embed::{cosine, embed};
    use sutra_grid::store::VectorIndex;
    let dim = sutra_grid::limits::VECTOR_DIM_DEFAULT;
    let shards = a.shards.max(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let dense =
        |rng: &mut rand_chacha::ChaCha8Rng| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
    let concepts: Vec<(ConceptId, Vec<f32>)> = wn
        .synsets
        .iter()
        .map(|s| {
            let c = wn.concept(s);
            let v = if a.dense { dense(&mut rng) } else { embed(&format!("{} {}", c.label, c.content), dim) };
            (ConceptId::from_label(&c.label), v)
        })
        .collect();
    let shard_of = |id: ConceptId| ((id.placement_key() as u128 * shards as u128) >> 64) as usize;
    let mut parts: Vec<Vec<&(ConceptId, Vec<f32>)>> = vec![Vec::new(); shards];
    concepts.iter().for_each(|c| parts[shard_of(c.0)].push(c));
    let t0 = Instant::now();
    let indexes: Vec<VectorIndex> = parts
        .iter()
        .map(|p| {
            let mut ix = VectorIndex::new();
            p.iter().for_each(|(id, v)| {
                ix.insert(*id, v);
            });
            ix
        })
        .collect();
    let build_s = t0.elapsed().as_secs_f64();
    let bytes: u64 = indexes.iter().map(|i| i.stats().bytes).sum();
    let vectors: HashMap<ConceptId, &Vec<f32>> = concepts.iter().map(|(i, v)| (*i, v)).collect();
    let queries: Vec<Vec<f32>> = (0..a.queries)
        .map(|_| {
            if a.dense {
                let near = &concepts[rng.random_range(0..concepts.len())].1;
                near.iter().zip(dense(&mut rng)).map(|(x, n)| x + 0.5 * n).collect()
            } else {
                embed(&query_text(lemmas, &mut rng), dim)
            }
        })
        .collect();
    let top = |cands: &mut Vec<(f32, ConceptId)>| {
        cands.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        cands.truncate(a.k);
    };
    let exact: Vec<Vec<(f32, ConceptId)>> = queries
        .iter()
        .map(|q| {
            let mut c: Vec<(f32, ConceptId)> = concepts.iter().map(|(i, v)| (cosine(q, v), *i)).collect();
            top(&mut c);
            c
        })
        .collect();
    let mut tried = Vec::new();
    for &ef in &a.candidates {
        let (mut found, mut lat) = (0usize, Vec::new());
        for (q, want) in queries.iter().zip(&exact) {
            let t = Instant::now();
            let mut got: Vec<(f32, ConceptId)> = indexes
                .iter()
                .flat_map(|ix| ix.search(q, ef.max(a.k), |_| true))
                .map(|(_, id)| (cosine(q, vectors[&id]), id))
                .collect();
            top(&mut got);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            let cut = want.last().map_or(f32::INFINITY, |w| w.0) - 1e-6;
            found += got.iter().filter(|g| want.iter().any(|w| w.1 == g.1) || g.0 >= cut).count().min(want.len());
        }
        lat.sort_by(f64::total_cmp);
        tried.push(json!({
            "candidates": ef,
            "recall_at_k": found as f64 / (a.k * queries.len()) as f64,
            "ms_p50": ms_percentile(&lat, 0.5),
            "ms_p99": ms_percentile(&lat, 0.99),
        }));
    }
    Ok(json!({
        "bench": "search-offline",
        "vectors_kind": if a.dense { "dense random" } else { "built-in embedder" },
        "vectors": concepts.len(),
        "shards": shards,
        "build_s": build_s,
        "build_us_per_vector": build_s * 1e6 / concepts.len() as f64,
        "bytes_per_vector": bytes as f64 / concepts.len() as f64,
        "queries": a.queries,
        "k": a.k,
        "tried": tried,
    }))
}
