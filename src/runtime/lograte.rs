//! Warnings at most once per minute per source and peer.
//!
//! A node under stress must not fill its disk with logs: libp2p's
//! gossipsub, for one, warns once per dropped message or unexpected
//! delivery, and at 100 nodes that was 26 MB per node in 8 minutes. This
//! layer lets a `warn` or `error` event through once per minute for each
//! call site and peer (the value of a `peer`, `peer_id` or
//! `remote_peer_id` field, or else the message, which names the peer when
//! there is one) and drops the repeats; the counts live in the metrics of
//! whatever raised them. Events below `warn` are left alone
//! (their level filter already bounds them).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How long a repeat of the same warning is held back.
const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most; the table starts over past it.
const MAX_KEYS: usize = 65_536;

/// Warnings dropped as repeats, process-wide.
pub static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// The rate-limiting layer.
#[derive(Default)]
pub struct RateLimit {
    seen: Mutex<HashMap<(usize, String), Instant>>,
}

/// What tells one warning from another of the same call site: its peer
/// field, or else its message (which often names the peer in its text).
#[derive(Default)]
struct Key {
    peer: Option<String>,
    message: String,
}

impl Key {
    fn into_string(self) -> String {
        self.peer.unwrap_or(self.message)
    }
}

impl Visit for Key {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "peer" | "peer_id" | "remote_peer_id" => self.peer = Some(format!("{value:?}")),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "peer" | "peer_id" | "remote_peer_id" => self.peer = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            _ => {}
        }
    }
}

impl RateLimit {
    /// Whether an event with this call site and peer may be logged at `now`.
    fn admit(&self, callsite: usize, peer: String, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_KEYS {
            seen.clear();
        }
        match seen.entry((callsite, peer)) {
            Entry::Occupied(e) if now.duration_since(*e.get()) < WINDOW => false,
            Entry::Occupied(mut e) => {
                e.insert(now);
                true
            }
            Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let mut key = Key::default();
        event.record(&mut key);
        let callsite = meta as *const _ as usize;
        if self.admit(callsite, key.into_string(), Instant::now()) {
            true
        } else {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_is_held_back_per_call_site_and_peer() {
        let r = RateLimit::default();
        let t = Instant::now();
        assert!(r.admit(1, "a".into(), t));
        assert!(!r.admit(1, "a".into(), t + Duration::from_secs(59)));
        assert!(r.admit(1, "b".into(), t), "another peer");
        assert!(r.admit(2, "a".into(), t), "another call site");
        assert!(r.admit(1, "a".into(), t + WINDOW), "a minute later");
    }
}
