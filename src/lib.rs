//! Shoal: a peer-to-peer federation engine.
//!
//! Crate map:
//!
//! - [`core`]: the engine. Ids, the replicated CRDT model (membership, tasks,
//!   knowledge), canonical digests, placement strategies and the per-node
//!   [`core::Engine`]. No IO, no clock, no tokio.
//! - [`runtime`]: the node. Owns the engine in one tokio task, persists its
//!   deltas in the embedded store before acknowledging, runs handlers, and
//!   serves typed commands through a cloneable [`NodeHandle`].
//! - [`api`]: the HTTP API (axum): JSON routes, server-sent events,
//!   Prometheus metrics, the dashboard.
//! - [`cli`]: the `shoal` command line: the daemon and the HTTP client
//!   commands. The only place that formats for people.
//! - [`config`]: configuration with profiles, layering and validation.
//! - [`sim`]: the simulator: many engines over a seeded, simulated network
//!   and store (the `shoal-sim` binary).
//!
//! The default `runtime` feature brings in the node ([`runtime`], [`api`],
//! [`cli`], [`config`]: tokio, libp2p, fjall, axum, clap). Without it the
//! crate is [`core`] and [`sim`] alone.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "runtime")]
pub mod api;
#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod config;
pub mod core;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod sim;

#[cfg(feature = "runtime")]
pub use config::NodeConfig;
#[cfg(feature = "runtime")]
pub use runtime::{Node, NodeHandle};
