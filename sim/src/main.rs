//! `sutra-sim`: run simulation scenarios by seed. Build with `RUSTFLAGS="--cfg madsim"`;
//! `ci/sim.sh` does that and wraps this binary.

/// mimalloc: a write-heavy seed spends about a fifth of its time in glibc's malloc and free
/// (every simulated RPC and spawned task allocates). Addresses never reach the simulation's
/// decisions, so the allocator does not affect determinism.
#[cfg(madsim)]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(not(madsim))]
fn main() {
    eprintln!("sutra-sim must be built with RUSTFLAGS=\"--cfg madsim\"; use ci/sim.sh");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(madsim)]
mod cli {
    use std::process::ExitCode;
    use std::time::Instant;

    use clap::Parser;
    use sutra_sim::{runner, scenarios};

    #[derive(Parser)]
    #[command(name = "sutra-sim", about = "Deterministic simulation runner for Sutra Grid")]
    struct Args {
        /// Scenario name, or "regressions" to run the committed regression list.
        scenario: String,
        /// Run exactly this seed (replay). Without it a sweep starts at a fresh seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Seeds in a sweep: seed, seed+1, … (with --budget-s: at most this many; default 1, or
        /// unbounded under a budget).
        #[arg(long)]
        seeds: Option<u64>,
        /// Run fresh seeds until this many wall-clock seconds are spent (a seed under way
        /// finishes), then report how many ran.
        #[arg(long, value_name = "S")]
        budget_s: Option<f64>,
        /// Start no new seed after the first failure (the planted-bug catalogue uses it).
        #[arg(long)]
        fail_fast: bool,
        /// Parallel seeds (OS threads, one runtime each).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Run each of the first N seeds twice and compare (madsim RNG log + end-state hash).
        #[arg(long, value_name = "N")]
        check_determinism: Option<u64>,
        /// Regression list file (with the `regressions` scenario).
        #[arg(long, default_value = "chaos-scenarios/regressions.txt")]
        list: String,
        /// Print every seed's report, not just failures.
        #[arg(long)]
        verbose: bool,
        /// Log the simulated nodes' tracing output (replaying one seed).
        #[arg(long)]
        trace: bool,
    }

    fn replay_cmd(scenario: &str, seed: u64) -> String {
        format!("ci/sim.sh run {scenario} --seed {seed} --trace")
    }

    fn regressions(path: &str) -> Result<Vec<(String, u64)>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut f = line.split_whitespace();
            let (Some(name), Some(seed), None) = (f.next(), f.next(), f.next()) else {
                return Err(format!("{path}:{}: expected `SCENARIO SEED`", n + 1));
            };
            if let Err(e) = scenarios::resolve(name) {
                return Err(format!("{path}:{}: {e}", n + 1));
            }
            let seed = seed.parse().map_err(|_| format!("{path}:{}: seed {seed:?} is not a number", n + 1))?;
            out.push((name.to_string(), seed));
        }
        Ok(out)
    }

    pub fn main() -> ExitCode {
        let a = Args::parse();
        if a.trace {
            let _ = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .try_init();
        }
        if a.budget_s.is_some_and(|b| !(b > 0.0 && b.is_finite())) {
            eprintln!("error: --budget-s must be a positive number of seconds");
            return ExitCode::from(2);
        }
        // (scenario, seeds): the regression list, or one scenario's range from a base seed.
        let mut groups: Vec<(String, Vec<u64>)> = Vec::new();
        let mut range: Option<(u64, u64)> = None;
        if a.scenario == "regressions" {
            let list = match regressions(&a.list) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            for (name, seed) in list {
                match groups.last_mut() {
                    Some((n, seeds)) if *n == name => seeds.push(seed),
                    _ => groups.push((name, vec![seed])),
                }
            }
            if let Some((name, seeds)) = groups.first() {
                println!("scenario {name}: {} seed(s) from {}, {} job(s)", seeds.len(), seeds[0], a.jobs);
            }
        } else {
            if let Err(e) = scenarios::resolve(&a.scenario) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let base = a.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            let count = match (a.seeds, a.budget_s) {
                (Some(n), _) => n.max(1),
                (None, Some(_)) => u64::MAX,
                (None, None) => 1,
            };
            match a.budget_s {
                Some(b) => println!(
                    "scenario {}: seeds from {base} for {b} s{}, {} job(s)",
                    a.scenario,
                    a.seeds.map(|n| format!(" (at most {n})")).unwrap_or_default(),
                    a.jobs
                ),
                None => println!("scenario {}: {count} seed(s) from {base}, {} job(s)", a.scenario, a.jobs),
            }
            range = Some((base, count));
            groups.push((a.scenario.clone(), Vec::new()));
        }
        let start = Instant::now();
        let deadline = a.budget_s.map(|b| start + std::time::Duration::from_secs_f64(b));
        let mut failures = Vec::new();
        let mut sim_secs = 0.0;
        let mut runs = 0usize;
        for (name, list) in groups {
            let scenario = match scenarios::resolve(&name) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let seed_at = |i: usize| match range {
                Some((base, count)) => ((i as u64) < count).then(|| base.wrapping_add(i as u64)),
                None => list.get(i).copied(),
            };
            let total = match range {
                Some((_, count)) if deadline.is_none() => count as usize,
                Some(_) => 0,
                None => list.len(),
            };
            let done = std::sync::atomic::AtomicUsize::new(0);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let seeds = runner::Seeds { seed_at: &seed_at, deadline, stop: &stop };
            let outcomes = runner::sweep(scenario, seeds, a.jobs, |o| {
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if o.result.is_err() && a.fail_fast {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                match &o.result {
                    Err(e) => println!("FAIL {name} seed {}: {e}\n  replay: {}", o.seed, replay_cmd(&name, o.seed)),
                    Ok(r) if a.verbose || total == 1 => println!("ok {name} seed {}: {r}", o.seed),
                    Ok(_) => {}
                }
                if total >= 50 && n.is_multiple_of(total / 10) {
                    println!("  {n}/{total} seeds done");
                } else if total == 0 && n.is_multiple_of(100) {
                    println!("  {n} seeds done ({:.0} s)", start.elapsed().as_secs_f64());
                }
            });
            if let (Some(b), Some(&(base, _))) = (a.budget_s, range.as_ref()) {
                let last = outcomes.iter().map(|o| o.seed).max().unwrap_or(base);
                println!("budget {b} s: ran {} seed(s) of {name}, {base}..={last}", outcomes.len());
            }
            for o in &outcomes {
                sim_secs += o.sim_secs;
                runs += 1;
                if o.result.is_err() {
                    failures.push((name.clone(), o.seed));
                }
            }
            if let Some(n) = a.check_determinism {
                let first = range.map_or(1, |r| r.0);
                for seed in (0..n).map(|i| first.wrapping_add(i)) {
                    let plain = outcomes.iter().find(|o| o.seed == seed);
                    match runner::check_determinism(scenario, seed, plain) {
                        Ok(h) => println!("deterministic {name} seed {seed}: end-state hash {h:016x}"),
                        Err(e) => {
                            println!("FAIL determinism {e}\n  replay: {}", replay_cmd(&name, seed));
                            failures.push((name.clone(), seed));
                        }
                    }
                }
            }
        }
        let wall = start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "seeds": runs,
                "failed": failures.len(),
                "wall_s": (wall * 100.0).round() / 100.0,
                "sim_s": (sim_secs * 100.0).round() / 100.0,
                "sim_s_per_wall_s": if wall > 0.0 { (sim_secs / wall).round() } else { 0.0 },
            })
        );
        println!("{} passed, {} failed", runs - failures.len(), failures.len());
        if failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
