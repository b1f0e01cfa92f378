//! What a peer sends is checked here before it is applied, stored or
//! forwarded: the same name rules as the API, and bounds that keep the
//! counters a node adds to from overflowing. A delta that fails is refused
//! whole; the engine counts it, and a gossip message holding one is
//! rejected (gossipsub then does not forward it and scores its sender).
//!
//! [`delta`] is the shape check (issue 12, point 2); [`writer`] checks who
//! wrote it (signatures, core/sign.rs): member records and tasks. Knowledge
//! is not bound to its writers yet (docs/security.md).

use crate::core::replica::{check_name, MAX_ATTEMPTS_LIMIT, MAX_TIMEOUT_SECS, RESERVED_NS};
use crate::core::sign::{Keys, MAX_SIG_BYTES};
use crate::core::state::{Delta, ReplicatedState};
use crate::core::swim::{alive_bytes, Packet, Probe, Update};
use crate::core::task::MAX_HISTORY;

/// Updates one failure-detection packet may carry.
pub const MAX_PACKET_UPDATES: usize = 64;

/// Checks a failure-detection packet from a peer: node ids well formed, a
/// bounded number of updates, incarnations below their limit, and each
/// `alive` signed by the node it is about (in `keys`' scheme).
pub fn packet(p: &Packet, keys: &Keys) -> Result<(), Refusal> {
    if p.updates.len() > MAX_PACKET_UPDATES {
        return Err(format!(
            "{} updates in one probe packet (at most {MAX_PACKET_UPDATES})",
            p.updates.len()
        ));
    }
    if let Probe::PingReq { target, .. } = &p.probe {
        name("node id", target.as_str())?;
    }
    for u in &p.updates {
        let (node, incarnation) = match u {
            Update::Suspect {
                node,
                incarnation,
                by,
            } => {
                name("node id", by.as_str())?;
                (node, *incarnation)
            }
            Update::Alive {
                node,
                incarnation,
                sig,
            } => {
                if sig.0.len() > MAX_SIG_BYTES
                    || !keys.verify(node, &alive_bytes(node, *incarnation), sig)
                {
                    return Err(format!(
                        "member {node}: an alive at incarnation {incarnation} it did not sign"
                    ));
                }
                (node, *incarnation)
            }
        };
        name("node id", node.as_str())?;
        if incarnation == u64::MAX {
            return Err(format!("member {node}: incarnation at its limit"));
        }
    }
    Ok(())
}

/// Checks a lease announcement from a peer: ids well formed, a bounded
/// voter list that holds the holder, signed by the holder.
pub fn claim(c: &crate::core::lease::LeaseClaim, keys: &Keys) -> Result<(), Refusal> {
    if c.voters.is_empty()
        || c.voters.len() > 9
        || c.learners.len() > 9
        || !c.voters.contains(&c.holder)
    {
        return Err("a lease announcement with an unsound voter list".into());
    }
    for v in c.voters.iter().chain(&c.learners) {
        name("node id", v.as_str())?;
    }
    if c.plane == 0 || c.term == u64::MAX {
        return Err("a lease announcement with an unsound plane or term".into());
    }
    if c.sig.0.len() > MAX_SIG_BYTES {
        return Err(format!("a lease signature over {MAX_SIG_BYTES} bytes"));
    }
    c.check(keys)
}

/// Why a delta from a peer was refused.
pub type Refusal = String;

fn name(what: &str, s: &str) -> Result<(), Refusal> {
    check_name(what, s).map_err(|e| e.to_string())
}

/// Checks one delta from a peer.
pub fn delta(d: &Delta) -> Result<(), Refusal> {
    match d {
        Delta::Member(id, entry) => {
            name("node id", id.as_str())?;
            let m = entry.marker();
            name("writer", m.writer.as_str())?;
            if m.incarnation == u64::MAX || entry.record().incarnation == u64::MAX {
                return Err(format!("member {id}: incarnation at its limit"));
            }
            let basis = m.basis.as_ref().map_or(0, |b| b.sig.0.len());
            if m.sig.0.len() > MAX_SIG_BYTES || basis > MAX_SIG_BYTES {
                return Err(format!("member {id}: signature over {MAX_SIG_BYTES} bytes"));
            }
            Ok(())
        }
        Delta::Task(id, entry) => {
            name("task id", id.as_str())?;
            let spec = entry.spec();
            name("capability", &spec.capability)?;
            name("submitter", spec.submitted_by.as_str())?;
            if !(1..=MAX_ATTEMPTS_LIMIT).contains(&spec.max_attempts)
                || !(1..=MAX_TIMEOUT_SECS).contains(&spec.timeout_secs)
            {
                return Err(format!("task {id}: attempts or timeout out of range"));
            }
            let st = entry.state();
            if st.fence.seq == u64::MAX || st.fence.term.0 == u64::MAX || st.attempt == u32::MAX {
                return Err(format!("task {id}: fence or attempt at its limit"));
            }
            if let Some(node) = &st.node {
                name("task node", node.as_str())?;
            }
            if entry.history().len() > MAX_HISTORY {
                return Err(format!("task {id}: over {MAX_HISTORY} history lines"));
            }
            if entry.longest_signature() > MAX_SIG_BYTES {
                return Err(format!("task {id}: signature over {MAX_SIG_BYTES} bytes"));
            }
            Ok(())
        }
        Delta::Kv { ns, key, .. } => {
            name("namespace", ns)?;
            name("key", key)?;
            if ns == RESERVED_NS && key != "strategy" {
                return Err(format!("namespace `{RESERVED_NS}` holds no key `{key}`"));
            }
            Ok(())
        }
        Delta::Policy { ns, .. } => name("namespace", ns),
    }
}

/// Checks who wrote a delta (after [`delta`]): a member record must be
/// signed by who may write it ([`crate::core::member::MemberEntry::check`]),
/// and so must every part of a task
/// ([`crate::core::task::TaskEntry::check`]; what `known`, this node's
/// state, already holds was checked when it came). Knowledge is not bound
/// to its writers yet.
pub fn writer(d: &Delta, keys: &Keys, known: &ReplicatedState) -> Result<(), Refusal> {
    match d {
        Delta::Member(id, entry) => entry.check(id, keys),
        Delta::Task(id, entry) => entry.check(id, keys, known.tasks.get(id)),
        _ => Ok(()),
    }
}

/// [`delta`], then [`writer`].
pub fn remote(d: &Delta, keys: &Keys, known: &ReplicatedState) -> Result<(), Refusal> {
    delta(d)?;
    writer(d, keys, known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::{Millis, NodeId};
    use crate::core::knowledge::{KvEntry, Policy};
    use std::sync::Arc;

    #[test]
    fn empty_over_long_and_control_names_are_refused_and_sound_ones_pass() {
        let policy = |ns: &str| Delta::Policy {
            ns: ns.into(),
            policy: crdts::LWWReg {
                val: Policy::Mv,
                marker: (Millis(1), NodeId::from("n")),
            },
        };
        assert!(delta(&policy("")).is_err(), "the one-message crash");
        assert!(delta(&policy(&"x".repeat(300))).is_err());
        assert!(delta(&policy("a\0b")).is_err());
        assert!(delta(&policy("facts")).is_ok());
        let kv = |ns: &str, key: &str| Delta::Kv {
            ns: ns.into(),
            key: key.into(),
            entry: Arc::new(KvEntry::default()),
        };
        assert!(delta(&kv("facts", "")).is_err());
        assert!(delta(&kv(RESERVED_NS, "other")).is_err());
        assert!(delta(&kv(RESERVED_NS, "strategy")).is_ok());
        assert!(delta(&kv("facts", "a")).is_ok());
    }

    #[test]
    fn an_alive_passes_only_signed_by_the_node_it_is_about() {
        let (x, y) = (NodeId::from("x"), NodeId::from("y"));
        let alive = |signer: &NodeId, incarnation: u64| Packet {
            probe: Probe::Ping { seq: 1 },
            updates: vec![Update::Alive {
                node: x.clone(),
                incarnation,
                sig: Keys::sim(signer).sign(&alive_bytes(&x, incarnation)),
            }],
        };
        let keys = Keys::sim(&NodeId::from("receiver"));
        assert!(packet(&alive(&x, 7), &keys).is_ok());
        // y clearing a suspicion of x, or raising x's incarnation: refused.
        let err = packet(&alive(&y, 7), &keys).unwrap_err();
        assert!(err.contains("did not sign"), "{err}");
        // x's signature of another incarnation does not carry over.
        let mut p = alive(&x, 7);
        if let Update::Alive { incarnation, .. } = &mut p.updates[0] {
            *incarnation = 8;
        }
        assert!(packet(&p, &keys).is_err());
    }
}
