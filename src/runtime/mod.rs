//! The runtime: tokio, the store and (later) libp2p around the engine core.
//!
//! Invariant: no protocol decisions here. One task owns the [`Engine`] and
//! the [`Store`]; everything else talks to it through a [`NodeHandle`] with
//! typed calls and gets a reply only after the change is on disk.
//!
//! [`Engine`]: crate::core::Engine

pub mod admit;
pub mod executor;
pub mod handle;
pub mod identity;
pub mod lograte;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod node;
pub mod probe;
pub mod store;
pub mod sysload;

pub use node::{Node, NodeError, NodeHandle, NodeInfo};
