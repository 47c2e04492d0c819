//! The deterministic simulation harness: runs the real `sutra-grid` code inside madsim.
//!
//! Layout:
//! - [`plan`]: node names and the address plan, written down once.
//! - [`scenario`]: the YAML scenario format (serde-saphyr) and its validation.
//! - [`linear`]: the Wing–Gong linearizability checker for register histories.
//! - [`spawner`]: the simulated `Spawner`: an agent's storage processes as madsim nodes.
//! - [`chaos`]: runs a YAML scenario: cluster builder, nemesis, workload, observer, checkers.
//! - [`boot`]: boots a role on a simulated node through the same functions the binary calls.
//! - [`scenarios`]: failure stories, each a workload with a recorded history, a nemesis, and
//!   checkers that read the history against the grid's final state.
//! - [`runner`]: one seed, a sweep of seeds (in parallel OS threads, one runtime each), and the
//!   determinism check. The `sutra-sim` binary wraps it.
//!
//! Everything except `plan` and `scenario` needs `RUSTFLAGS="--cfg madsim"`.

pub mod linear;
pub mod plan;
pub mod scenario;

#[cfg(madsim)]
pub mod boot;
#[cfg(madsim)]
pub mod chaos;
#[cfg(madsim)]
pub mod runner;
#[cfg(madsim)]
pub mod scenarios;
#[cfg(madsim)]
pub mod spawner;
