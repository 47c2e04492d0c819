//! Query execution across shards. [`router`] sends each key to its shard's primary and
//! batches per shard; distributed path search and vector search build on it (architecture.md §6).

pub mod paths;
pub mod router;

pub use router::{Router, RouterError, ShardWrite};
