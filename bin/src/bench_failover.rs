//! `sutra bench failover`: failover as a user sees it, on a real local grid. Starts `sutra dev`
//! (this binary) on free ports in a scratch directory, writes one concept to shard 0 every
//! `--interval-ms` through `POST /learn`, and over `--trials` takes shard 0's primary process
//! away: `kill` sends SIGKILL (the agent restarts the process with its backoff), `stop` sends
//! SIGSTOP and, once writes recovered (or the trial timed out), SIGCONT. A trial's recovery time
//! runs from the signal to the acknowledgement of the first write *sent after* it. Between
//! trials the grid must report healthy again and the writes flow; the process's restart count
//! is reported, so a figure that tracks the agent's backoff shows. Every write creates its own
//! concept; at the end each acknowledged one is read back (strong), and any missing is lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sutra_grid::ids::ConceptId;

use crate::http_client::HttpClient;

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// kill (SIGKILL the primary) or stop (SIGSTOP it, SIGCONT after recovery).
    #[arg(long, default_value = "kill")]
    story: String,
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// One write every this many milliseconds.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Seconds of healthy writing before each trial.
    #[arg(long, default_value_t = 3.0)]
    settle_s: f64,
    /// A trial that has not recovered after this long is reported as not recovered.
    #[arg(long, default_value_t = 30.0)]
    trial_timeout_s: f64,
    /// Use this running local grid (its storage processes on this machine) instead of starting
    /// a scratch one.
    #[arg(long)]
    api: Option<String>,
    /// Where the scratch grid lives (a fresh subdirectory, removed after).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Print only the JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One write: when it was sent, when it was answered, whether it succeeded, and the label it
/// created if it did.
#[derive(Clone)]
struct Write {
    sent: Instant,
    done: Instant,
    ok: bool,
    label: Option<String>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A base port with 3 free TCP ports and their UDP gossip ports (+1000).
fn free_base() -> Result<u16> {
    for _ in 0..200 {
        let base = free_port()?;
        if base > 60_000 {
            continue;
        }
        let ok = (0..3).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", base + 1000 + i)).is_ok()
        });
        if ok {
            return Ok(base);
        }
    }
    bail!("no free range of ports on 127.0.0.1")
}

/// The pid of the storage process serving `addr` (its `--listen` argument), from /proc.
fn pid_serving(addr: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let storage = args.get(1).is_some_and(|a| *a == b"storage");
        if storage && args.windows(2).any(|w| w[0] == b"--listen" && w[1] == addr.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn signal(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) on a process this bench's grid spawned.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Shard 0's primary: (node id, storage address, restarts of its process so far).
fn primary_of_shard0(st: &Value) -> Option<(u64, String, u64)> {
    let shard = st["shards"].as_array()?.iter().find(|s| s["id"] == 0)?;
    let node = shard["primary"].as_u64()?;
    let n = st["nodes"].as_array()?.iter().find(|n| n["id"] == node)?;
    let slot = n["slot"].as_u64()?;
    let restarts = st["agents"]
        .as_array()?
        .iter()
        .flat_map(|a| a["processes"].as_array().cloned().unwrap_or_default())
        .find(|p| p["slot"] == slot)
        .and_then(|p| p["restarts"].as_u64())
        .unwrap_or(0);
    Some((node, n["storage_addr"].as_str()?.to_string(), restarts))
}

/// Shard 0's key range.
fn shard0_range(st: &Value) -> Result<std::ops::RangeInclusive<u64>> {
    let shard = st["shards"].as_array().and_then(|a| a.iter().find(|s| s["id"] == 0)).context("no shard 0")?;
    let range = |k: &str| u64::from_str_radix(shard[k].as_str().unwrap_or(""), 16);
    Ok(range("key_start")?..=range("key_end")?)
}

/// A fresh label after `*next` whose placement key falls in `range` (each write creates its own
/// concept, so every acknowledged write can be looked up afterwards).
fn next_label(range: &std::ops::RangeInclusive<u64>, run: u32, next: &mut u64) -> String {
    loop {
        let l = format!("failover-{run}-{next}");
        *next += 1;
        if range.contains(&ConceptId::from_label(&l).placement_key()) {
            return l;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

pub async fn bench_failover(a: &FailoverArgs) -> Result<Value> {
    let say = |m: &str| {
        if !a.json {
            eprintln!("  {m}");
        }
    };
    let (sig, resume) = match a.story.as_str() {
        "kill" => (libc::SIGKILL, None),
        "stop" => (libc::SIGSTOP, Some(libc::SIGCONT)),
        other => bail!("--story {other}: must be kill or stop"),
    };
    if a.trials == 0 || a.interval_ms == 0 {
        bail!("--trials and --interval-ms must be at least 1");
    }
    if let Some(api) = &a.api {
        return run_trials(a, &say, sig, resume, api).await;
    }
    let scratch = a.dir.join(format!("sutra-bench-failover-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let (api_port, master_port, base) = (free_port()?, free_port()?, free_base()?);
    let exe = std::env::current_exe().context("cannot find the sutra executable")?;
    let mut dev = std::process::Command::new(&exe)
        .args(["dev", "--data-dir", &scratch.join("data").display().to_string()])
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .args(["--master-listen", &format!("127.0.0.1:{master_port}")])
        .args(["--base-port", &base.to_string()])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawning sutra dev")?;
    let result = run_trials(a, &say, sig, resume, &format!("http://127.0.0.1:{api_port}")).await;
    // SAFETY: kill(2) on our own child; SIGINT lets `sutra dev` stop its processes.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && dev.try_wait().ok().flatten().is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = dev.kill();
    let _ = dev.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The API's count of write parts it sent again (`/metrics`), if it answers.
async fn write_resends(client: &HttpClient) -> Option<u64> {
    let (code, body) = client.send(hyper::Method::GET, "/metrics", None).await.ok()?;
    if code != 200 {
        return None;
    }
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("sutra_api_write_resends_total "))
        .and_then(|v| v.trim().parse().ok())
}

async fn status(client: &HttpClient) -> Result<Value> {
    client.get("/cluster/status").await
}

async fn run_trials(a: &FailoverArgs, say: &dyn Fn(&str), sig: i32, resume: Option<i32>, api: &str) -> Result<Value> {
    let client = HttpClient::new(api)?;
    let t0 = Instant::now();
    loop {
        if client.get("/readyz").await.is_ok() && status(&client).await.is_ok_and(|s| s["healthy"] == true) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(90) {
            bail!("the scratch grid did not become ready within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(&format!("grid ready after {:.1} s", t0.elapsed().as_secs_f64()));
    let resends_before = write_resends(&client).await;
    let range = shard0_range(&status(&client).await?)?;
    let run = std::process::id();

    // The writer: one write every interval, each in its own task so a slow one does not
    // delay the next send.
    let log: Arc<Mutex<Vec<Write>>> = Arc::new(Mutex::new(Vec::new()));
    // Why writes failed (the answer's status and body, or the client's error), with counts.
    let failures: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, log, stop, failures) = (client.clone(), log.clone(), stop.clone(), failures.clone());
        let interval = Duration::from_millis(a.interval_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut i, mut next) = (0usize, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let label = next_label(&range, run, &mut next);
                let body = json!({"concepts": [{"label": label, "content": format!("write {i}")}], "embed": false});
                let (client, log, failures) = (client.clone(), log.clone(), failures.clone());
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let r = client.send(hyper::Method::POST, "/learn", Some(body.to_string().into_bytes())).await;
                    let ok = matches!(r, Ok((200, _)));
                    if !ok {
                        let why = match r {
                            Ok((code, b)) => format!("{code} {}", String::from_utf8_lossy(&b)),
                            Err(e) => format!("{e:#}"),
                        };
                        let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                        *f.entry(why).or_insert(0usize) += 1;
                    }
                    let label = ok.then_some(label);
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(Write { sent, done: Instant::now(), ok, label });
                });
                i += 1;
            }
        })
    };

    let mut trials = Vec::new();
    let mut signals = Vec::new();
    let mut recoveries = Vec::new();
    for t in 0..a.trials {
        // Healthy, writing, for the settle time.
        let settle_from = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let healthy = status(&client).await.is_ok_and(|s| s["healthy"] == true);
            if healthy && settle_from.elapsed().as_secs_f64() >= a.settle_s {
                break;
            }
            if settle_from.elapsed().as_secs_f64() > a.trial_timeout_s + a.settle_s {
                bail!("trial {t}: the grid did not become healthy again");
            }
        }
        let st = status(&client).await?;
        let (node, addr, restarts) = primary_of_shard0(&st).context("shard 0 has no primary in the status")?;
        let pid = pid_serving(&addr).with_context(|| format!("no storage process listens on {addr}"))?;
        let at = Instant::now();
        signal(pid, sig)?;
        // Recovered: a write sent after the signal was acknowledged.
        let recovered = loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let first = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|w| w.ok && w.sent >= at)
                .map(|w| w.done)
                .min();
            if let Some(done) = first {
                break Some(done.duration_since(at).as_secs_f64() * 1e3);
            }
            if at.elapsed().as_secs_f64() > a.trial_timeout_s {
                break None;
            }
        };
        if let Some(s) = resume {
            signal(pid, s)?;
        }
        let failed = log.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|w| !w.ok && w.sent >= at).count();
        say(&format!(
            "trial {t}: node {node} (pid {pid}, {restarts} restart(s) so far): {}",
            recovered.map_or("not recovered".into(), |ms| format!("recovered in {ms:.0} ms"))
        ));
        if let Some(ms) = recovered {
            recoveries.push(ms);
        }
        trials.push(json!({"trial": t, "node": node, "restarts_before": restarts, "recovery_ms": recovered,
                           "failed_writes_since_signal": failed}));
        signals.push(at);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Every failed write, by trial (the last signal before it was sent): when it was sent
    // relative to the signal, and how long it took to fail.
    for (i, t) in trials.iter_mut().enumerate() {
        let from = signals[i];
        let to = signals.get(i + 1).copied();
        let failed: Vec<&Write> =
            log.iter().filter(|w| !w.ok && w.sent >= from && to.is_none_or(|to| w.sent < to)).collect();
        let offs = |f: fn(&Write, Instant) -> f64| {
            let mut v: Vec<f64> = failed.iter().map(|w| f(w, from)).collect();
            v.sort_by(f64::total_cmp);
            json!([v.first(), v.last()])
        };
        t["failed_writes"] = json!(failed.len());
        t["failed_sent_after_signal_ms"] = offs(|w, at| w.sent.duration_since(at).as_secs_f64() * 1e3);
        t["failed_took_ms"] = offs(|w, _| w.done.duration_since(w.sent).as_secs_f64() * 1e3);
    }
    let before_first = signals.first().map_or(0, |f| log.iter().filter(|w| !w.ok && w.sent < *f).count());
    // Lost: acknowledged, but its concept is not there (a strong read from the primary).
    let healthy_from = Instant::now();
    while !status(&client).await.is_ok_and(|s| s["healthy"] == true) && healthy_from.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say("reading every acknowledged write back");
    let (mut lost, mut unreadable) = (Vec::new(), 0usize);
    for l in log.iter().filter_map(|w| w.label.as_ref()) {
        match client.send(hyper::Method::GET, &format!("/concepts?label={l}&consistency=strong"), None).await {
            Ok((200, _)) => {}
            Ok((404, _)) => lost.push(l.clone()),
            _ => unreadable += 1,
        }
    }
    recoveries.sort_by(f64::total_cmp);
    let mut by_node: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &trials {
        *by_node.entry(t["node"].as_u64().unwrap_or(0)).or_default() += 1;
    }
    Ok(json!({
        "bench": "failover",
        "story": a.story,
        "trials": a.trials,
        "recovered": recoveries.len(),
        "recovery_ms_p50": percentile(&recoveries, 0.5),
        "recovery_ms_p99": percentile(&recoveries, 0.99),
        "recovery_ms_max": recoveries.last(),
        "writes": log.len(),
        "writes_failed": log.iter().filter(|w| !w.ok).count(),
        "writes_failed_before_first_signal": before_first,
        "writes_acked": log.iter().filter(|w| w.ok).count(),
        // Sends again, not writes: one write may be resent several times (each retry counts).
        "write_resends": write_resends(&client).await.zip(resends_before).map(|(a, b)| a.saturating_sub(b)),
        "acked_writes_lost": lost.len(),
        "acked_writes_unreadable": unreadable,
        "lost_examples": lost.iter().take(5).collect::<Vec<_>>(),
        "write_failures": failures.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "write_interval_ms": a.interval_ms,
        "primaries_hit": by_node,
        "per_trial": trials,
    }))
}
