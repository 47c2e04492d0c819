//! The `sutra` binary's integration tests, built as one test binary (one link, not five).
//! Each module was a test file of its own; `common` starts grids and processes for them.

mod api;
mod cluster;
mod common;
mod failover;
mod grpc;
mod kill9;
mod wordnet_paths;

// Modules of the binary with unit tests of their own, which run here (the binary has
// `test = false`; compiling it in test mode would build all of it twice).
#[path = "../../src/import/lines.rs"]
#[allow(dead_code)]
mod import_lines;
#[path = "../../src/sample.rs"]
#[allow(dead_code)]
mod sample;
#[path = "../../src/import/wordnet.rs"]
#[allow(dead_code)]
mod wordnet_import;
