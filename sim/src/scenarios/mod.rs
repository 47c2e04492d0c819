//! Failure stories. Each returns a JSON report on success, or the checker's message.

pub mod crash_recovery;
pub mod gossip_scale;

use std::future::Future;
use std::pin::Pin;

/// What a scenario run leaves behind for the runner: its report and a hash of the end state
/// (compared between two runs of one seed by the determinism check).
pub struct Report {
    pub json: serde_json::Value,
    pub end_state_hash: u64,
}

pub type ScenarioFuture = Pin<Box<dyn Future<Output = Result<Report, String>>>>;

/// The YAML scenario the runner is working through. `check_determinism` takes a plain `fn`,
/// so the parsed file reaches the scenario future through this slot; the runner sets it
/// before each group of seeds and never runs two YAML scenarios at once.
static YAML: std::sync::Mutex<Option<std::sync::Arc<crate::scenario::Scenario>>> = std::sync::Mutex::new(None);

fn yaml_run() -> ScenarioFuture {
    let sc = YAML.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Box::pin(async move {
        match sc {
            Some(sc) => crate::chaos::run(sc).await,
            None => Err("no YAML scenario loaded".into()),
        }
    })
}

/// Directory of scenario files: `SUTRA_SCENARIOS_DIR`, else `chaos-scenarios`.
pub fn scenarios_dir() -> String {
    std::env::var("SUTRA_SCENARIOS_DIR").unwrap_or_else(|_| "chaos-scenarios".into())
}

/// A built-in scenario, or `DIR/NAME.yaml` (or a path to a .yaml file), parsed and loaded.
pub fn resolve(name: &str) -> Result<fn() -> ScenarioFuture, String> {
    if let Some(f) = by_name(name) {
        return Ok(f);
    }
    let path = if name.ends_with(".yaml") { name.to_string() } else { format!("{}/{name}.yaml", scenarios_dir()) };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("unknown scenario {name:?} (built-in: {}; no file {path}: {e})", NAMES.join(", ")))?;
    let sc = crate::scenario::parse(&text, &path)?;
    *YAML.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::new(sc));
    Ok(yaml_run)
}

/// Scenarios by name, as the runner and CI spell them.
pub fn by_name(name: &str) -> Option<fn() -> ScenarioFuture> {
    match name {
        "crash-recovery" => Some(|| Box::pin(crash_recovery::run())),
        "gossip-scale-10" => Some(|| Box::pin(gossip_scale::run(10))),
        "gossip-scale-100" => Some(|| Box::pin(gossip_scale::run(100))),
        "gossip-scale-1000" => Some(|| Box::pin(gossip_scale::run(1000))),
        _ => None,
    }
}

pub const NAMES: &[&str] = &["crash-recovery", "gossip-scale-10", "gossip-scale-100", "gossip-scale-1000"];
