//! `sutra-sim`: run simulation scenarios by seed. Build with `RUSTFLAGS="--cfg madsim"`;
//! `ci/sim.sh` does that and wraps this binary.

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
        /// Seeds in a sweep: seed, seed+1, …
        #[arg(long, default_value_t = 1)]
        seeds: u64,
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
        let jobs: Vec<(String, u64)> = if a.scenario == "regressions" {
            match regressions(&a.list) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
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
            let count = if a.seed.is_some() && a.seeds == 1 { 1 } else { a.seeds.max(1) };
            (0..count).map(|i| (a.scenario.clone(), base.wrapping_add(i))).collect()
        };
        if let Some(&(ref name, first)) = jobs.first() {
            println!("scenario {name}: {} seed(s) from {first}, {} job(s)", jobs.len(), a.jobs);
        }
        let start = Instant::now();
        let mut failures = Vec::new();
        let mut sim_secs = 0.0;
        let mut runs = 0usize;
        let mut by_scenario: Vec<(String, Vec<u64>)> = Vec::new();
        for (name, seed) in &jobs {
            match by_scenario.last_mut() {
                Some((n, seeds)) if n == name => seeds.push(*seed),
                _ => by_scenario.push((name.clone(), vec![*seed])),
            }
        }
        for (name, seeds) in by_scenario {
            let scenario = match scenarios::resolve(&name) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let done = std::sync::atomic::AtomicUsize::new(0);
            let total = seeds.len();
            let outcomes = runner::sweep(scenario, seeds, a.jobs, |o| {
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                match &o.result {
                    Err(e) => println!("FAIL {name} seed {}: {e}\n  replay: {}", o.seed, replay_cmd(&name, o.seed)),
                    Ok(r) if a.verbose || total == 1 => println!("ok {name} seed {}: {r}", o.seed),
                    Ok(_) => {}
                }
                if total >= 50 && n.is_multiple_of(total / 10) {
                    println!("  {n}/{total} seeds done");
                }
            });
            for o in outcomes {
                sim_secs += o.sim_secs;
                runs += 1;
                if o.result.is_err() {
                    failures.push((name.clone(), o.seed));
                }
            }
            if let Some(n) = a.check_determinism {
                let first = a.seed.unwrap_or(1);
                for seed in first..first + n {
                    match runner::check_determinism(scenario, seed) {
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
