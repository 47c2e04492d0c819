//! Wire types for Sutra Grid's gRPC services, generated from `grid.proto` for both the real
//! (tonic) and the simulated (madsim) runtime.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("sutra.grid.v1");
}
pub use v1::*;
