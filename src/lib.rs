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
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod cli;
pub mod config;
pub mod core;
pub mod runtime;

pub use config::NodeConfig;
pub use runtime::{Node, NodeHandle};
