//! Runs scenarios: one seed, a sweep of seeds, and the determinism check. Each seed gets a
//! fresh OS thread and runtime (std's HashMap keys are seeded per thread; MADSIM.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use madsim::runtime::Runtime;
use madsim::Config;

use crate::scenarios::{Report, ScenarioFuture};

/// A seed that takes longer than this in simulated time has hung: a liveness failure.
pub const SIM_TIME_LIMIT: Duration = Duration::from_secs(300);

pub struct SeedOutcome {
    pub seed: u64,
    /// The report, or the checker's message / panic text.
    pub result: Result<serde_json::Value, String>,
    pub end_state_hash: u64,
    pub sim_secs: f64,
    pub wall_secs: f64,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs one seed on a fresh thread and runtime.
pub fn run_seed(scenario: fn() -> ScenarioFuture, seed: u64) -> SeedOutcome {
    let wall = Instant::now();
    let joined = std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        .spawn(move || {
            let mut rt = Runtime::with_seed_and_config(seed, Config::default());
            rt.set_time_limit(SIM_TIME_LIMIT);
            rt.block_on(async move {
                let t0 = madsim::time::Instant::now();
                let r: Result<Report, String> = scenario().await;
                let sim_secs = t0.elapsed().as_secs_f64();
                drop_all_tasks().await;
                (r, sim_secs)
            })
        })
        .map(|h| h.join());
    let wall_secs = wall.elapsed().as_secs_f64();
    match joined {
        Ok(Ok((Ok(report), sim_secs))) => {
            SeedOutcome { seed, end_state_hash: report.end_state_hash, result: Ok(report.json), sim_secs, wall_secs }
        }
        Ok(Ok((Err(msg), sim_secs))) => SeedOutcome { seed, result: Err(msg), end_state_hash: 0, sim_secs, wall_secs },
        Ok(Err(p)) => SeedOutcome {
            seed,
            result: Err(format!("panicked: {}", panic_text(p))),
            end_state_hash: 0,
            sim_secs: 0.0,
            wall_secs,
        },
        Err(e) => SeedOutcome {
            seed,
            result: Err(format!("could not start a thread: {e}")),
            end_state_hash: 0,
            sim_secs: 0.0,
            wall_secs,
        },
    }
}

/// Kills every node but the main one, so the executor drops their tasks. madsim does not
/// cancel tasks when its runtime is dropped (madsim issue 242): a task that holds a handle to
/// its own node leaks, with all it owns, and a 1,000-seed sweep of `scale-out` grew past
/// 24 GiB (about 16 MB a seed) until the kernel killed it.
async fn drop_all_tasks() {
    let h = madsim::runtime::Handle::current();
    // Every node the scenarios make is named, and once (restarts reuse it); an unnamed one
    // is listed as `node-{id}`, a name `kill` cannot find.
    for name in h.metrics().num_tasks_by_node().into_keys() {
        if !name.starts_with("node-") {
            h.kill(name.as_str());
        }
    }
    // The killed tasks are dropped when the executor next picks them up.
    madsim::time::sleep(Duration::from_millis(1)).await;
}

/// Which seeds a sweep runs: `seed_at(i)` is the i-th seed, `None` past the last.
/// With a `deadline`, no seed starts after it (those started finish), so a sweep can be given
/// a wall-clock budget instead of a count.
pub struct Seeds<'a> {
    pub seed_at: &'a (dyn Fn(usize) -> Option<u64> + Sync),
    pub deadline: Option<Instant>,
    /// Start no more seeds once this is set (a fail-fast sweep sets it on the first failure).
    pub stop: &'a std::sync::atomic::AtomicBool,
}

/// Runs seeds in parallel on `jobs` threads; `on_done` sees each outcome as it finishes.
pub fn sweep(
    scenario: fn() -> ScenarioFuture,
    seeds: Seeds<'_>,
    jobs: usize,
    on_done: impl Fn(&SeedOutcome) + Sync,
) -> Vec<SeedOutcome> {
    let next = AtomicU64::new(0);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                if seeds.deadline.is_some_and(|d| Instant::now() >= d) || seeds.stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(seed) = (seeds.seed_at)(i) else { return };
                let o = run_seed(scenario, seed);
                on_done(&o);
                out.lock().unwrap_or_else(|p| p.into_inner()).push(o);
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_else(|p| p.into_inner());
    v.sort_by_key(|o| o.seed);
    v
}

/// The scenario under a determinism check. madsim's check takes a plain `fn` (no captures) and
/// runs it on its own threads, so the choice is passed through this one process-global slot;
/// `check_determinism` holds the lock for the whole check, so checks never interleave.
static CHECKED: Mutex<Option<fn() -> ScenarioFuture>> = Mutex::new(None);

fn checked_run() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>>>> {
    let scenario = *CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    Box::pin(async move {
        match scenario {
            Some(f) => f().await.map(|r| r.end_state_hash),
            None => Err("no scenario selected".into()),
        }
    })
}

/// Runs `seed` twice under madsim's RNG-log check (any divergence in random draws or timing
/// panics), and compares its end state with a plain run: `plain` if the sweep already ran this
/// seed (saves a run), else one run here. A failing plain run is reported by the sweep itself.
pub fn check_determinism(
    scenario: fn() -> ScenarioFuture,
    seed: u64,
    plain: Option<&SeedOutcome>,
) -> Result<u64, String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    *CHECKED.lock().unwrap_or_else(|p| p.into_inner()) = Some(scenario);
    let checked = std::thread::spawn(move || Runtime::check_determinism(seed, Config::default(), checked_run))
        .join()
        .map_err(|p| format!("seed {seed}: non-determinism: {}", panic_text(p)))?;
    let fresh;
    let a = match plain {
        Some(o) => o,
        None => {
            fresh = run_seed(scenario, seed);
            &fresh
        }
    };
    match (&a.result, &checked) {
        (Ok(_), Ok(h)) if *h == a.end_state_hash => Ok(*h),
        (Ok(_), Ok(h)) => Err(format!("seed {seed}: two runs differ: end-state hashes {:x} / {h:x}", a.end_state_hash)),
        (Err(e), _) | (_, Err(e)) => Err(format!("seed {seed}: run failed: {e}")),
    }
}
