//! Membership records: what each node says about itself, replicated.
//!
//! A record is a last-writer-wins register whose marker is
//! `(incarnation, status rank, seq, writer)`. A node that comes back after
//! being declared dead bumps its incarnation and so wins over the verdict, as
//! in SWIM. Load figures ride along but are ephemeral: they are left out of
//! the convergence digest.

use crate::core::ids::{Millis, NodeId};
use crate::core::sign::{Keys, Sig};
use crdts::{CvRDT, LWWReg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member's declared state. `suspect` is never declared: it is a local
/// verdict of the failure detector, shown in views only.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Up and taking work.
    #[default]
    Alive,
    /// Up, finishing its work, taking no new tasks.
    Draining,
    /// Left gracefully.
    Left,
    /// Declared failed (a confirmed failure): its tasks are moved.
    Dead,
    /// Dead or left for longer than the removal timeout, removed by the
    /// lease holder (or an operator): a tombstone that the node beats by
    /// coming back with a higher incarnation.
    Removed,
}

impl MemberStatus {
    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Draining => "draining",
            MemberStatus::Left => "left",
            MemberStatus::Dead => "dead",
            MemberStatus::Removed => "removed",
        }
    }

    /// Dead, left or removed: out of service, watched by nobody.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            MemberStatus::Dead | MemberStatus::Left | MemberStatus::Removed
        )
    }
}

/// Resource usage a node reports about itself (ephemeral).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Tasks assigned to or running on the node.
    pub running: u32,
    /// CPU use, 0.0 to 1.0.
    pub cpu: f32,
    /// Memory use, 0.0 to 1.0.
    pub memory: f32,
    /// Disk use of the data dir's file system, 0.0 to 1.0.
    pub disk: f32,
}

/// What a node says about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Human-readable name.
    pub name: String,
    /// p2p addresses (multiaddrs as text).
    pub addrs: Vec<String>,
    /// API address, if it serves one.
    pub api: Option<String>,
    /// Capabilities (task kinds) the node runs.
    pub capabilities: Vec<String>,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
    /// How many tasks it runs at once.
    pub capacity: u32,
    /// Declared state.
    pub status: MemberStatus,
    /// Bumped each time the node (re)starts or refutes a verdict about it.
    pub incarnation: u64,
    /// Latest reported load.
    pub load: Load,
    /// When the record was written.
    pub updated_at: Millis,
}

/// Orders record versions: incarnation, then status, then a per-record
/// sequence number, then the writer (so markers are unique). It carries
/// the writer's signature of the version (see [`MemberEntry::check`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberMarker {
    /// The record's incarnation.
    pub incarnation: u64,
    /// The declared status (later states win within an incarnation).
    pub status: MemberStatus,
    /// One more than the sequence of the version it replaced.
    pub seq: u64,
    /// Who wrote this version.
    pub writer: NodeId,
    /// For a verdict (written by another node): the member's own version it
    /// was written over.
    pub basis: Option<Basis>,
    /// The writer's signature of the id, the record and the fields above.
    pub sig: Sig,
}

/// The member's own version a verdict was written over: what, with the
/// verdict's record, rebuilds that version and its signature by the member.
/// A verdict changes only the status and the time, so a node holding the
/// cluster secret cannot rewrite another member's addresses or capabilities
/// by declaring it dead.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Basis {
    /// The status the member declared.
    pub status: MemberStatus,
    /// That version's sequence number.
    pub seq: u64,
    /// When the member wrote it.
    pub updated_at: Millis,
    /// The member's signature of it.
    pub sig: Sig,
}

/// What a writer signs: the member's id, the record and the marker's
/// fields (not the signature).
#[derive(Serialize)]
struct Signed<'a> {
    domain: &'static str,
    id: &'a NodeId,
    record: &'a MemberRecord,
    incarnation: u64,
    status: MemberStatus,
    seq: u64,
    writer: &'a NodeId,
    basis: Option<&'a Basis>,
}

fn signed_bytes(id: &NodeId, record: &MemberRecord, m: &MemberMarker) -> Vec<u8> {
    postcard::to_stdvec(&Signed {
        domain: "shoal member v1",
        id,
        record,
        incarnation: m.incarnation,
        status: m.status,
        seq: m.seq,
        writer: &m.writer,
        basis: m.basis.as_ref(),
    })
    .unwrap_or_default()
}

/// The replicated membership entry of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberEntry {
    reg: LWWReg<MemberRecord, MemberMarker>,
}

impl MemberEntry {
    /// The current record.
    pub fn record(&self) -> &MemberRecord {
        &self.reg.val
    }

    /// The current marker.
    pub fn marker(&self) -> &MemberMarker {
        &self.reg.marker
    }

    /// Writes a new version of member `id`'s record as `writer`, signed
    /// with `keys` (the writer's). Written by another node, it is a
    /// verdict and keeps the member's own version as its basis.
    pub fn write(&mut self, id: &NodeId, record: MemberRecord, writer: &NodeId, keys: &Keys) {
        let current = &self.reg;
        let basis = if writer == id {
            None
        } else if current.marker.writer == *id {
            Some(Basis {
                status: current.marker.status,
                seq: current.marker.seq,
                updated_at: current.val.updated_at,
                sig: current.marker.sig.clone(),
            })
        } else {
            current.marker.basis.clone()
        };
        let mut marker = MemberMarker {
            incarnation: record.incarnation,
            status: record.status,
            seq: current.marker.seq.saturating_add(1),
            writer: writer.clone(),
            basis,
            sig: Sig::default(),
        };
        marker.sig = keys.sign(&signed_bytes(id, &record, &marker));
        self.reg.merge(LWWReg {
            val: record,
            marker,
        });
    }

    /// Merges another replica's entry.
    pub fn merge(&mut self, other: MemberEntry) {
        self.reg.merge(other.reg);
    }

    /// Checks that this version of member `id`'s record was written by who
    /// may write it, in `keys`' scheme: the member itself, signed by it; or,
    /// for a verdict (`dead`, `removed`, or `draining` over `alive`: an
    /// operator's drain), any other member, signed by it, over a version the
    /// member signed, changing only status and time.
    pub fn check(&self, id: &NodeId, keys: &Keys) -> Result<(), String> {
        let (r, m) = (&self.reg.val, &self.reg.marker);
        if m.incarnation != r.incarnation || m.status != r.status {
            return Err(format!("member {id}: marker and record disagree"));
        }
        if !keys.verify(&m.writer, &signed_bytes(id, r, m), &m.sig) {
            return Err(format!(
                "member {id}: not signed by its writer {}",
                m.writer
            ));
        }
        if m.writer == *id {
            return match m.basis {
                None => Ok(()),
                Some(_) => Err(format!("member {id}: its own version has a basis")),
            };
        }
        let Some(basis) = &m.basis else {
            return Err(format!("member {id}: {} wrote it a record", m.writer));
        };
        let allowed = match r.status {
            MemberStatus::Dead => {
                !matches!(basis.status, MemberStatus::Dead | MemberStatus::Removed)
            }
            MemberStatus::Removed => basis.status != MemberStatus::Removed,
            MemberStatus::Draining => basis.status == MemberStatus::Alive,
            _ => false,
        };
        if !allowed {
            return Err(format!(
                "member {id}: {} may drain it, declare it dead or remove it, nothing else",
                m.writer
            ));
        }
        let own = MemberRecord {
            status: basis.status,
            updated_at: basis.updated_at,
            ..r.clone()
        };
        let own_marker = MemberMarker {
            incarnation: r.incarnation,
            status: basis.status,
            seq: basis.seq,
            writer: id.clone(),
            basis: None,
            sig: Sig::default(),
        };
        if !keys.verify(id, &signed_bytes(id, &own, &own_marker), &basis.sig) {
            return Err(format!(
                "member {id}: {}'s verdict is not over a version it signed",
                m.writer
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> (NodeId, Keys) {
        let id = NodeId::from(s);
        let keys = Keys::sim(&id);
        (id, keys)
    }

    /// `m`'s own record, alive at incarnation 3.
    fn own() -> (NodeId, MemberEntry) {
        let (m, keys) = node("m");
        let mut e = MemberEntry::default();
        let record = MemberRecord {
            name: "m".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/7000".into()],
            capabilities: vec!["echo".into()],
            incarnation: 3,
            ..Default::default()
        };
        e.write(&m, record, &m, &keys);
        (m, e)
    }

    #[test]
    fn a_member_writes_its_own_record_and_anyone_checks_it() {
        let (m, e) = own();
        let (_, checker) = node("checker");
        assert_eq!(e.check(&m, &checker), Ok(()));
        // The same record under another id does not check.
        assert!(e.check(&NodeId::from("other"), &checker).is_err());
    }

    #[test]
    fn nobody_writes_a_record_in_another_members_name() {
        let (m, mut e) = own();
        let (_, x_keys) = node("x");
        let mut r = e.record().clone();
        r.status = MemberStatus::Dead;
        r.incarnation = u64::MAX - 1;
        // Claimed as m's own, signed by x.
        e.write(&m, r, &m, &x_keys);
        let err = e.check(&m, &x_keys).unwrap_err();
        assert!(err.contains("not signed by its writer"), "{err}");
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let (m, e) = own();
        let mut bytes = postcard::to_stdvec(&e).unwrap();
        // Flip one byte of the name ("m") in the encoding.
        let at = bytes.iter().position(|b| *b == b'm').unwrap();
        bytes[at] = b'n';
        let tampered: MemberEntry = postcard::from_bytes(&bytes).unwrap();
        assert!(tampered.check(&m, &Keys::sim(&m)).is_err());
    }

    #[test]
    fn another_member_may_declare_it_dead_drain_it_or_remove_it_and_nothing_else() {
        let (x, x_keys) = node("x");
        for status in [
            MemberStatus::Dead,
            MemberStatus::Draining,
            MemberStatus::Removed,
        ] {
            let (m, mut e) = own();
            let mut r = e.record().clone();
            r.status = status;
            r.updated_at = Millis(99);
            e.write(&m, r, &x, &x_keys);
            assert_eq!(e.check(&m, &x_keys), Ok(()), "{status:?} by x");
            assert_eq!(e.marker().writer, x);
        }
        // A verdict on a verdict (an operator removing a node declared
        // dead) keeps the member's own version as its basis.
        let (m, mut e) = own();
        let mut r = e.record().clone();
        r.status = MemberStatus::Draining;
        e.write(&m, r.clone(), &x, &x_keys);
        let (y, y_keys) = node("y");
        r.status = MemberStatus::Dead;
        e.write(&m, r.clone(), &y, &y_keys);
        assert_eq!(e.check(&m, &y_keys), Ok(()));
        // And the lease holder removing it after the removal timeout.
        r.status = MemberStatus::Removed;
        e.write(&m, r.clone(), &x, &x_keys);
        assert_eq!(e.check(&m, &y_keys), Ok(()));
        // A removed member is not declared dead again: the tombstone wins.
        r.status = MemberStatus::Dead;
        e.write(&m, r, &y, &y_keys);
        assert_eq!(e.record().status, MemberStatus::Removed);

        for (status, what) in [(MemberStatus::Alive, "alive"), (MemberStatus::Left, "left")] {
            let (m, mut e) = own();
            let mut r = e.record().clone();
            r.status = status;
            e.write(&m, r, &x, &x_keys);
            assert!(e.check(&m, &x_keys).is_err(), "x declared m {what}");
        }
    }

    #[test]
    fn a_verdict_cannot_rewrite_what_the_member_said() {
        let (x, x_keys) = node("x");
        for edit in [
            (|r: &mut MemberRecord| r.addrs = vec!["/ip4/10.0.0.9/tcp/1".into()])
                as fn(&mut MemberRecord),
            |r| r.capabilities.push("shell".into()),
            |r| r.incarnation += 1,
            |r| r.name = "evil".into(),
        ] {
            let (m, mut e) = own();
            let mut r = e.record().clone();
            r.status = MemberStatus::Dead;
            edit(&mut r);
            e.write(&m, r, &x, &x_keys);
            let err = e.check(&m, &x_keys).unwrap_err();
            assert!(err.contains("not over a version it signed"), "{err}");
        }
        // With no version of m's own to stand on, a verdict is refused.
        let (m, _) = own();
        let mut e = MemberEntry::default();
        let r = MemberRecord {
            status: MemberStatus::Dead,
            ..Default::default()
        };
        e.write(&m, r, &x, &x_keys);
        assert!(e.check(&m, &x_keys).is_err());
    }

    use proptest::prelude::*;

    /// What a peer may do to member `m`'s signed record before passing it
    /// on: the honest acts (a member's verdict) and forgeries of each kind.
    #[derive(Clone, Debug)]
    enum Act {
        /// A member declares m dead, drains it or removes it, as the rules
        /// allow (0, 1, 2).
        Verdict { by: u8, kind: u8 },
        /// A record in m's name signed by another key.
        InMyName { by: u8 },
        /// A verdict of a status the rules forbid (alive, left).
        Forbidden { by: u8, left: bool },
        /// A verdict that also changes a field m wrote.
        Rewrite { by: u8, field: u8 },
        /// One byte of the signed encoding flipped in transit.
        Flip { at: usize },
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            (0..4u8, 0..3u8).prop_map(|(by, kind)| Act::Verdict { by, kind }),
            (0..4u8).prop_map(|by| Act::InMyName { by }),
            (0..4u8, any::<bool>()).prop_map(|(by, left)| Act::Forbidden { by, left }),
            (0..4u8, 0..4u8).prop_map(|(by, field)| Act::Rewrite { by, field }),
            (0..400usize).prop_map(|at| Act::Flip { at }),
        ]
    }

    proptest! {
        #[test]
        fn an_honest_node_accepts_a_member_record_only_as_the_rules_allow(
            incarnation in 1..1000u64,
            acts in proptest::collection::vec(act(), 1..4),
        ) {
            let (m, mut e) = own();
            let mut r = e.record().clone();
            r.incarnation += incarnation;
            e.write(&m, r, &m, &Keys::sim(&m));
            let checker = Keys::sim(&NodeId::from("checker"));
            let mut forged = false;
            for a in acts {
                let mut r = e.record().clone();
                let before = e.clone();
                match a {
                    Act::Verdict { by, kind } => {
                        let (x, keys) = node(&format!("x{by}"));
                        let (allowed, status) = match kind {
                            0 => (!r.status.is_gone(), MemberStatus::Dead),
                            1 => (r.status == MemberStatus::Alive, MemberStatus::Draining),
                            _ => (r.status != MemberStatus::Removed, MemberStatus::Removed),
                        };
                        if !allowed {
                            continue;
                        }
                        r.status = status;
                        e.write(&m, r, &x, &keys);
                    }
                    Act::InMyName { by } => {
                        r.capabilities.push("forged".into());
                        e.write(&m, r, &m, &Keys::sim(&NodeId::from(format!("x{by}").as_str())));
                        forged = true;
                    }
                    Act::Forbidden { by, left } => {
                        let (x, keys) = node(&format!("x{by}"));
                        r.status = if left { MemberStatus::Left } else { MemberStatus::Alive };
                        e.write(&m, r, &x, &keys);
                        forged = true;
                    }
                    Act::Rewrite { by, field } => {
                        let (x, keys) = node(&format!("x{by}"));
                        r.status = MemberStatus::Dead;
                        match field {
                            0 => r.addrs.push("/ip4/10.9.9.9/tcp/1".into()),
                            1 => r.capabilities.clear(),
                            2 => r.capacity += 1,
                            _ => r.name.push('!'),
                        }
                        e.write(&m, r, &x, &keys);
                        forged = true;
                    }
                    Act::Flip { at } => {
                        let mut bytes = postcard::to_stdvec(&e).unwrap();
                        let at = at % bytes.len();
                        bytes[at] ^= 0x01;
                        match postcard::from_bytes::<MemberEntry>(&bytes) {
                            Ok(t) if t != e => {
                                e = t;
                                forged = true;
                            }
                            _ => continue,
                        }
                    }
                }
                if forged && e == before {
                    // The forged version lost to the one held (a lower
                    // status within the incarnation): nothing was taken.
                    forged = false;
                    continue;
                }
                if forged {
                    break;
                }
            }
            prop_assert_eq!(e.check(&m, &checker).is_ok(), !forged, "{:?}", e);
        }
    }
}
