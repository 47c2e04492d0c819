//! The deterministic simulation harness: runs the real `sutra-grid` code inside madsim.
//!
//! Layout:
//! - [`plan`]: node names and the address plan, written down once.
//! - [`boot`]: boots a role on a simulated node through the same functions the binary calls.
//! - [`scenarios`]: failure stories, each a workload with a recorded history, a nemesis, and
//!   checkers that read the history against the grid's final state.
//! - [`runner`]: one seed, a sweep of seeds (in parallel OS threads, one runtime each), and the
//!   determinism check. The `sutra-sim` binary wraps it.
//!
//! Everything except `plan` needs `RUSTFLAGS="--cfg madsim"`.

pub mod plan;

#[cfg(madsim)]
pub mod boot;
#[cfg(madsim)]
pub mod runner;
#[cfg(madsim)]
pub mod scenarios;
