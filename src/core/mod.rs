//! The engine core: ids, the replicated data model, digests, placement and
//! the per-node decision engine.
//!
//! Invariant: nothing in here does IO, reads a clock or uses a global random
//! source. Time comes in as [`ids::Millis`], randomness from a seeded
//! [`rng::Rng`]. No tokio, no libp2p, no HTTP.

pub mod canon;
pub mod engine;
pub mod error;
pub mod event;
pub mod failure;
pub mod ids;
pub mod knowledge;
pub mod lease;
pub mod member;
pub mod placement;
pub mod replica;
pub mod rng;
pub mod sign;
pub mod state;
pub mod swim;
pub mod sync;
pub mod task;
pub mod validate;
pub mod wire;

pub use engine::{Engine, EngineConfig, Input, Output};
pub use error::EngineError;
