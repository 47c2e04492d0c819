//! `sutra import --format wordnet|jsonl|csv PATH`: reads a file (or the WordNet directory) into
//! concepts and associations and sends them to the API's `/learn` in batches, several in
//! flight. A progress bar on a terminal, plain progress lines otherwise, a summary at the end.
//! Every item is an upsert, so running an import again changes nothing but timestamps.

mod lines;
pub mod wordnet;

use lines::{parse_csv_line, parse_jsonl_line, Item};

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sutra_grid::api::LearnRequest;
use sutra_grid::limits;

use crate::cluster::API_DEFAULT;
use crate::http_client::HttpClient;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// wordnet (a directory holding data.* and index.*), jsonl or csv.
    #[arg(long, value_parser = ["wordnet", "jsonl", "csv"])]
    format: String,
    /// The file, or for wordnet the directory (Debian's wordnet-base: /usr/share/wordnet).
    path: PathBuf,
    /// The API's address.
    #[arg(long, default_value = API_DEFAULT)]
    api: String,
    /// Items (concepts + associations) per /learn request.
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Do not compute vectors with the built-in embedder (faster; vector search then skips
    /// these concepts).
    #[arg(long)]
    no_embed: bool,
}

/// Progress: a bar on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    unit: &'static str,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64, unit: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ({per_sec}, ETA {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(unit);
            b
        });
        Progress { bar, total, unit, started: Instant::now(), last_line: Instant::now() }
    }

    fn set(&mut self, pos: u64, items: u64) {
        match &self.bar {
            Some(b) => b.set_position(pos),
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = Instant::now();
                let s = self.started.elapsed().as_secs_f64();
                let pct = if self.total == 0 { 100.0 } else { pos as f64 * 100.0 / self.total as f64 };
                let eta = if pos == 0 { 0.0 } else { s * (self.total.saturating_sub(pos)) as f64 / pos as f64 };
                eprintln!(
                    "  {pos}/{} {} ({pct:.0}%), {items} items sent, {:.0} items/s, ETA {eta:.0} s",
                    self.total,
                    self.unit,
                    items as f64 / s.max(1e-9)
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[derive(Default)]
struct Totals {
    concepts: u64,
    associations: u64,
    requests: u64,
    skipped: u64,
}

/// Sends batches with at most `parallel` in flight; transient failures are retried.
struct Sender {
    client: HttpClient,
    parallel: usize,
    embed: bool,
    /// Whether associations may create the concepts they name (not for WordNet: every
    /// synset is imported as a concept of its own).
    create: bool,
    inflight: tokio::task::JoinSet<Result<()>>,
    pending: LearnRequest,
    batch: usize,
    totals: Totals,
}

impl Sender {
    async fn push(&mut self, item: Item) -> Result<()> {
        match item {
            Item::Concept(c) => {
                self.totals.concepts += 1;
                self.pending.concepts.push(c);
            }
            Item::Association(a) => {
                self.totals.associations += 1;
                self.pending.associations.push(a);
            }
        }
        // A request also carries the concepts its associations create, so leave headroom.
        if self.pending.concepts.len() + 3 * self.pending.associations.len() >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.pending.concepts.is_empty() && self.pending.associations.is_empty() {
            return Ok(());
        }
        while self.inflight.len() >= self.parallel {
            self.join_one().await?;
        }
        let mut req = std::mem::take(&mut self.pending);
        req.embed = Some(self.embed);
        req.create_concepts = Some(self.create);
        let (client, body) = (self.client.clone(), serde_json::to_value(&req)?);
        self.totals.requests += 1;
        self.inflight.spawn(async move { send_with_retries(&client, &body).await });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(r) = self.inflight.join_next().await {
            r.context("import task")??;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        while !self.inflight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

async fn send_with_retries(client: &HttpClient, body: &serde_json::Value) -> Result<()> {
    let mut delay = Duration::from_millis(200);
    for attempt in 0.. {
        let bytes = serde_json::to_vec(body)?;
        match client.send(hyper::Method::POST, "/learn", Some(bytes)).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, b)) if status >= 500 && attempt < 6 => {
                tracing::warn!(status, body = %String::from_utf8_lossy(&b), "retrying a batch");
            }
            Ok((status, b)) => {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or(json!({}));
                bail!("the API refused a batch (HTTP {status}): {}", v["error"]["message"].as_str().unwrap_or("?"));
            }
            Err(e) if attempt < 6 => tracing::warn!(error = %e, "retrying a batch"),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the loop returns")
}

/// How long `sutra import` waits for `/readyz` before giving up.
const READY_WAIT: Duration = Duration::from_secs(30);

pub async fn run(a: ImportArgs) -> Result<()> {
    if a.batch == 0 || a.batch > limits::BATCH_ITEMS_MAX {
        bail!("--batch must be 1 to {}", limits::BATCH_ITEMS_MAX);
    }
    if a.parallel == 0 || a.parallel > 64 {
        bail!("--parallel must be 1 to 64");
    }
    let client = HttpClient::new(&a.api)?;
    // A grid that just started (or failed over) becomes ready within seconds: wait a bounded time.
    let waited = Instant::now();
    while let Err(e) = client.get("/readyz").await {
        if waited.elapsed() > READY_WAIT {
            return Err(e.context(format!("the grid is not ready after {} s", READY_WAIT.as_secs())));
        }
        if waited.elapsed() < Duration::from_millis(300) {
            eprintln!("waiting for the grid to be ready: {e:#}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let started = Instant::now();
    let mut sender = Sender {
        client,
        parallel: a.parallel,
        embed: !a.no_embed,
        create: a.format != "wordnet",
        inflight: tokio::task::JoinSet::new(),
        pending: LearnRequest::default(),
        batch: a.batch,
        totals: Totals::default(),
    };
    match a.format.as_str() {
        "wordnet" => {
            let wn = wordnet::WordNet::load(&a.path)?;
            eprintln!("read {} synsets from {}", wn.synsets.len(), a.path.display());
            let mut p = Progress::new(wn.synsets.len() as u64, "synsets");
            for (i, s) in wn.synsets.iter().enumerate() {
                sender.push(Item::Concept(wn.concept(s))).await?;
                let (assocs, skipped) = wn.associations(s);
                sender.totals.skipped += skipped as u64;
                for x in assocs {
                    sender.push(Item::Association(x)).await?;
                }
                p.set(i as u64 + 1, sender.totals.concepts + sender.totals.associations);
            }
            sender.finish().await?;
            p.finish();
        }
        "jsonl" | "csv" => {
            let text = std::fs::read_to_string(&a.path).with_context(|| format!("cannot read {}", a.path.display()))?;
            let mut p = Progress::new(text.len() as u64, "bytes");
            let mut pos = 0u64;
            let mut errors = Vec::new();
            let mut header_checked = false;
            for (n, line) in text.lines().enumerate() {
                pos += line.len() as u64 + 1;
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
                let parsed = if a.format == "jsonl" {
                    parse_jsonl_line(line)
                } else {
                    if !header_checked {
                        header_checked = true;
                        if line.to_ascii_lowercase().starts_with("subject,") {
                            continue;
                        }
                    }
                    parse_csv_line(line)
                };
                match parsed {
                    Ok(item) => sender.push(item).await?,
                    Err(e) => {
                        sender.totals.skipped += 1;
                        if errors.len() < 20 {
                            errors.push(format!("line {}: {e}", n + 1));
                        }
                    }
                }
                p.set(pos, sender.totals.concepts + sender.totals.associations);
            }
            sender.finish().await?;
            p.finish();
            for e in &errors {
                eprintln!("skipped {e}");
            }
        }
        other => bail!("unknown format {other}"),
    }
    let s = started.elapsed().as_secs_f64();
    let t = &sender.totals;
    println!(
        "{}",
        json!({
            "format": a.format,
            "concepts": t.concepts,
            "associations": t.associations,
            "skipped": t.skipped,
            "requests": t.requests,
            "seconds": (s * 100.0).round() / 100.0,
            "items_per_s": ((t.concepts + t.associations) as f64 / s.max(1e-9)).round(),
        })
    );
    Ok(())
}
