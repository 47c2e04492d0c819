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
