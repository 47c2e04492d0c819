//! Sutra Grid as a library: a distributed store and reasoning engine for concept graphs.
//!
//! Layout (architecture.md §1):
//! - [`limits`]: every bound and default, with the reason for its number.
//! - [`ids`], [`model`]: concept ids, the data model, label normalisation, batch validation.
//! - [`codec`]: bounds-checked binary encoding shared by the WAL and checkpoints.
//! - [`io`]: the seams to the world: `Disk` (real and simulated), seeded RNG, blocking work.
//! - [`wal`]: CRC-framed segmented log, recovery, group commit.
//! - [`store`]: one shard replica: mmap'd checkpoint + overlay, neighbours, BFS, path search.
//! - [`gossip`]: SWIM failure detection (pure state machine + UDP driver).
//! - [`node`]: the storage node: hosts shard replicas, serves the Storage gRPC service.
//! - [`master`]: membership, node states, the persisted shard map, the Master gRPC service.
//! - [`shardmap`]: key ranges, replica placement, validation and compare-and-set, as pure functions.
//! - [`agent`]: per-machine supervisor: spawns storage processes, restarts them, reports exits.
//! - [`query`]: the router (each key to its shard's primary, batched per shard).
//! - [`client`]: the Rust client every tool uses, with deadlines and bounded retries.
//! - [`api`]: the plain query and learning API the HTTP server wraps and the simulator calls.
//!
//! - [`replication`]: the per-shard replication rules as pure state machines (not wired in yet).

pub mod agent;
pub mod api;
pub mod client;
pub mod codec;
pub mod gossip;
pub mod ids;
pub mod io;
pub mod limits;
pub mod master;
pub mod model;
pub mod node;
pub mod query;
pub mod replication;
pub mod shardmap;
pub mod store;
pub mod wal;
pub mod wire;

pub use ids::{ConceptId, Epoch, Lsn, NodeId, ShardId};
