//! The master: the single source of truth for membership and the shard map (architecture.md §4).
//!
//! - [`state`]: the pure state machine (registrations, heartbeats, exit reports, node states,
//!   shard map, status).
//! - [`meta`]: its metadata on disk (WAL + snapshot), so a restart loses nothing.
//! - [`service`]: the Master gRPC service and [`serve`], which the binary and the simulator
//!   both boot through.

pub mod failover;
pub mod meta;
pub mod scale;
pub mod service;
pub mod state;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use service::{serve, MasterService};
pub use state::{
    MasterError, MasterState, MemberChange, MembershipConfig, MergeStep, Meta, MetaOp, NodeRecord, NodeState,
    Transition,
};

use crate::io::{blocking, Disk};
use crate::limits;
use meta::{MetaError, MetaLog};

struct Inner {
    state: MasterState,
    log: MetaLog,
}

/// The master's state plus its log. Every change to persisted metadata is logged and fsynced
/// before it is applied and acknowledged.
pub struct Master {
    inner: Arc<Mutex<Inner>>,
    start: tokio::time::Instant,
    /// Set after a failed metadata write: the master stops serving (fail-stop; an fsync error
    /// means the log can no longer be trusted).
    failed: AtomicBool,
    pub failure: tokio::sync::Notify,
    pub membership: MembershipConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterFailure {
    #[error(transparent)]
    State(#[from] MasterError),
    #[error("the master's metadata log failed ({0}); it has stopped accepting changes")]
    Log(String),
}

impl Master {
    /// Opens the metadata under `dir` on `disk` (creating it on first start).
    pub async fn open(disk: Arc<dyn Disk>, dir: &str) -> Result<Arc<Master>, MetaError> {
        Master::open_with(disk, dir, MembershipConfig::default()).await
    }

    /// As [`Master::open`], with its own membership-change settings.
    pub async fn open_with(
        disk: Arc<dyn Disk>,
        dir: &str,
        membership: MembershipConfig,
    ) -> Result<Arc<Master>, MetaError> {
        let dir = dir.to_string();
        let (log, meta) = blocking(move || MetaLog::open(disk, &dir)).await?;
        tracing::info!(
            nodes = meta.nodes.len(),
            agents = meta.agents.len(),
            map_version = meta.map.version,
            "master metadata recovered"
        );
        Ok(Arc::new(Master {
            inner: Arc::new(Mutex::new(Inner {
                state: {
                    let mut st = MasterState::new(meta);
                    st.set_split_threshold(membership.split_requests_per_s);
                    st.set_merge_threshold(membership.merge_requests_per_s);
                    st
                },
                log,
            })),
            start: tokio::time::Instant::now(),
            failed: AtomicBool::new(false),
            failure: tokio::sync::Notify::new(),
            membership,
        }))
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Reads or changes live state (nothing persisted).
    pub fn with<T>(&self, f: impl FnOnce(&mut MasterState, u64) -> T) -> T {
        let now = self.now_ms();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g.state, now)
    }

    /// Runs `f`; if it returns an op, logs it durably, then applies it. Runs off the async
    /// workers because the log fsyncs.
    pub async fn mutate<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut MasterState, u64) -> Result<(T, Option<MetaOp>), MasterError> + Send + 'static,
    ) -> Result<T, MasterFailure> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(MasterFailure::Log("an earlier metadata write failed".into()));
        }
        let now = self.now_ms();
        let inner = self.inner.clone();
        let r = blocking(move || {
            let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
            let Inner { state, log } = &mut *g;
            let (out, op) = f(state, now)?;
            if let Some(op) = op {
                let mut after = state.meta().clone();
                after.apply(&op);
                // A map change is logged as what changed (`MetaOp::logged_against`).
                let logged = op.logged_against(state.meta());
                log.append(&logged, &after).map_err(|e| MasterFailure::Log(e.to_string()))?;
                state.commit(&op);
            }
            state.evaluate(now);
            Ok(out)
        })
        .await;
        if let Err(MasterFailure::Log(e)) = &r {
            tracing::error!(error = %e, "master metadata write failed; stopping");
            self.failed.store(true, Ordering::Relaxed);
            // A stored permit: the server's stop future sees it even if it polls later.
            self.failure.notify_one();
        }
        r
    }

    /// Re-evaluates node states every `MASTER_TICK_MS` until dropped.
    pub async fn run_ticks(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(limits::MASTER_TICK_MS)).await;
            self.with(|s, now| s.evaluate(now));
        }
    }
}
