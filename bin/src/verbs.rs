//! The query verbs (`learn`, `forget`, `concept`, `neighbors`, `reason`, `search`): each is one call to
//! the HTTP API, printed for people by default or as the API's JSON with `--format json`.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cluster::API_DEFAULT;
use crate::http_client::{pct, HttpClient};

#[derive(clap::Args, Clone)]
pub struct Common {
    /// The API's address.
    #[arg(long, global = true, default_value = API_DEFAULT)]
    api: String,
    /// text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

impl Common {
    fn client(&self) -> Result<HttpClient> {
        HttpClient::new(&self.api)
    }
    fn json(&self) -> bool {
        self.format == "json"
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(clap::Args)]
pub struct LearnArgs {
    /// Sentences to learn ("Paris is the capital of France."); or use --file.
    text: Option<String>,
    /// A JSON file holding one /learn request ({"concepts": [...], "associations": [...]}).
    #[arg(long, conflicts_with = "text")]
    file: Option<std::path::PathBuf>,
    #[command(flatten)]
    common: Common,
}

pub async fn learn(a: LearnArgs) -> Result<()> {
    let body = match (&a.text, &a.file) {
        (Some(t), None) => json!({ "content": t }),
        (None, Some(f)) => {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", f.display()))?
        }
        _ => bail!("give the sentences to learn, or --file with a JSON /learn request"),
    };
    let v = a.common.client()?.post("/learn", &body).await?;
    if a.common.json() {
        return print_json(&v);
    }
    let triples = v["triples"].as_array().cloned().unwrap_or_default();
    for t in &triples {
        println!(
            "  {} --{}--> {}   ({})",
            t["subject"].as_str().unwrap_or(""),
            t["relation"].as_str().unwrap_or(""),
            t["object"].as_str().unwrap_or(""),
            t["kind"].as_str().unwrap_or("")
        );
    }
    for s in v["unmatched"].as_array().cloned().unwrap_or_default() {
        println!("  no association extracted from: {}", s.as_str().unwrap_or(""));
    }
    println!(
        "learned {} concept(s), {} association(s) on shard(s) {}",
        v["concepts"].as_array().map_or(0, Vec::len),
        v["associations_created"],
        v["shards"]
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ConceptArgs {
    /// A label ("Eiffel Tower", any spelling) or a 32-hex-char id.
    concept: String,
    #[command(flatten)]
    common: Common,
}

pub async fn concept(a: ConceptArgs) -> Result<()> {
    let v = a.common.client()?.get(&format!("/concepts/{}", pct(&a.concept))).await?;
    if a.common.json() {
        return print_json(&v);
    }
    let content = v["content"].as_str().unwrap_or("");
    println!("  {}  {}", v["label"].as_str().unwrap_or(""), v["id"].as_str().unwrap_or(""));
    println!("  {}", if content.is_empty() { "(no content)" } else { content });
    println!("  confidence {:.2}, vector of {} dimensions", v["confidence"].as_f64().unwrap_or(0.0), v["vector_dim"]);
    Ok(())
}

#[derive(clap::Args)]
pub struct NeighborsArgs {
    concept: String,
    /// Comma-separated kinds (semantic, causal, temporal, hierarchical, compositional).
    #[arg(long)]
    kind: Option<String>,
    /// Comma-separated relation names.
    #[arg(long)]
    relation: Option<String>,
    /// out, in or both.
    #[arg(long)]
    direction: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long)]
    min_confidence: Option<f32>,
    #[command(flatten)]
    common: Common,
}

pub async fn neighbors(a: NeighborsArgs) -> Result<()> {
    let mut q = format!("limit={}", a.limit);
    for (k, v) in [("kind", &a.kind), ("relation", &a.relation), ("direction", &a.direction)] {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", pct(v)));
        }
    }
    if let Some(c) = a.min_confidence {
        q.push_str(&format!("&min_confidence={c}"));
    }
    let v = a.common.client()?.get(&format!("/concepts/{}/neighbors?{q}", pct(&a.concept))).await?;
    if a.common.json() {
        return print_json(&v);
    }
    for e in v["neighbors"].as_array().cloned().unwrap_or_default() {
        let arrow = if e["direction"] == "out" { "-->" } else { "<--" };
        println!(
            "  {arrow} {:<24} {:<16} {:<13} {:.2}",
            e["label"].as_str().unwrap_or(""),
            e["relation"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["confidence"].as_f64().unwrap_or(0.0)
        );
    }
    if v["truncated"] == true {
        println!("  (more; raise --limit)");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ReasonArgs {
    start: String,
    end: String,
    #[arg(long)]
    max_depth: Option<usize>,
    #[arg(long)]
    max_paths: Option<usize>,
    /// shortest (every shortest path), k_shortest (k best by length) or confident (k best by confidence); k is --max-paths.
    #[arg(long)]
    mode: Option<String>,
    /// Comma-separated kinds to follow.
    #[arg(long)]
    kinds: Option<String>,
    /// Comma-separated relations to follow.
    #[arg(long)]
    relations: Option<String>,
    /// out or both.
    #[arg(long)]
    direction: Option<String>,
    #[arg(long)]
    min_confidence: Option<f32>,
    /// strong or eventual.
    #[arg(long)]
    consistency: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect())
        .unwrap_or_default()
}

pub async fn reason(a: ReasonArgs) -> Result<()> {
    let mut body = json!({ "start": a.start, "end": a.end, "kinds": list(&a.kinds), "relations": list(&a.relations) });
    for (k, v) in [("mode", &a.mode), ("direction", &a.direction), ("consistency", &a.consistency)] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    if let Some(d) = a.max_depth {
        body["max_depth"] = json!(d);
    }
    if let Some(p) = a.max_paths {
        body["max_paths"] = json!(p);
    }
    if let Some(c) = a.min_confidence {
        body["min_confidence"] = json!(c);
    }
    let v = a.common.client()?.post("/reason", &body).await?;
    if a.common.json() {
        return print_json(&v);
    }
    if v["found"] != true {
        println!("  no path from {} to {} within the bounds", a.start, a.end);
    }
    for line in v["reasoning"].as_array().cloned().unwrap_or_default() {
        println!("  {}", line.as_str().unwrap_or(""));
    }
    println!(
        "  ({} path(s), combined confidence {:.3}; {} shards, {} RPCs, {} visited, {:.2} ms)",
        v["paths"].as_array().map_or(0, Vec::len),
        v["confidence"].as_f64().unwrap_or(0.0),
        v["shards_accessed"],
        v["rpcs"],
        v["visited"],
        v["latency_ms"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Text to embed and search for.
    text: String,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Compare every vector instead of asking the shards' indexes.
    #[arg(long)]
    exact: bool,
    #[command(flatten)]
    common: Common,
}

pub async fn search(a: SearchArgs) -> Result<()> {
    let v = a.common.client()?.post("/search", &json!({ "text": a.text, "k": a.k, "exact": a.exact })).await?;
    if a.common.json() {
        return print_json(&v);
    }
    for h in v["hits"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:.3}  {:<32} {}",
            h["score"].as_f64().unwrap_or(0.0),
            h["label"].as_str().unwrap_or(""),
            h["id"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ForgetArgs {
    /// A concept to forget (label or 32-hex-char id), with every association it is an end of.
    concept: Option<String>,
    /// Or an association: its source (with --target and --relation).
    #[arg(long, conflicts_with = "concept", requires_all = ["target", "relation"])]
    source: Option<String>,
    #[arg(long, requires = "source")]
    target: Option<String>,
    #[arg(long, requires = "source")]
    relation: Option<String>,
    /// Only the association of this kind (default: every kind).
    #[arg(long, requires = "source")]
    kind: Option<String>,
    #[command(flatten)]
    common: Common,
}

pub async fn forget(a: ForgetArgs) -> Result<()> {
    let client = a.common.client()?;
    let v = match (&a.concept, &a.source) {
        (Some(c), None) => client.delete(&format!("/concepts/{}", pct(c)), None).await?,
        (None, Some(source)) => {
            let mut body = json!({ "source": source, "target": a.target, "relation": a.relation });
            if let Some(k) = &a.kind {
                body["kind"] = json!(k);
            }
            client.delete("/associations", Some(&body)).await?
        }
        _ => bail!("name a concept, or an association with --source, --target and --relation"),
    };
    if a.common.json() {
        return print_json(&v);
    }
    println!("forgot {} item(s) on shard(s) {}", v["forgotten"], v["shards"]);
    Ok(())
}
