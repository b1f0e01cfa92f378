//! Who wrote a record, checkable by every node from the record itself.
//!
//! A node signs what it writes with its node key, and the signature travels
//! with the record through gossip, anti-entropy and the store: a record
//! relayed by a third node is still its writer's, and a peer holding the
//! cluster secret cannot write in another node's name. Node ids are libp2p
//! peer ids, which hold the ed25519 public key, so any node checks any
//! writer with no key exchange.
//!
//! The simulator runs thousands of nodes in one process with ids that are
//! not peer ids. Its nodes sign with [`Keys::Sim`], a keyed hash whose key
//! is derived from the node id: it models signatures (a simulated node
//! signs only as itself) at a fraction of ed25519's cost, and protects
//! nothing between real processes. A node checks every record in its own
//! scheme, so a real node refuses a simulated signature.

use crate::core::ids::NodeId;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A signature: 64 bytes for ed25519, 32 for the simulator's keyed hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sig(pub Vec<u8>);

/// The longest signature a peer may send (ed25519's).
pub const MAX_SIG_BYTES: usize = 64;

/// Public keys decoded from peer ids, kept so that a writer's key is
/// decoded once (base58 and point decompression are about a fifth of a
/// check: docs/benchmarks.md).
/// Cleared when full: a peer sending records of ever new writers costs
/// decoding, never memory.
#[derive(Default)]
pub struct KeyCache(std::sync::Mutex<BTreeMap<NodeId, VerifyingKey>>);

/// Writers whose keys [`KeyCache`] keeps at most.
const KEY_CACHE: usize = 4096;

impl KeyCache {
    fn get(&self, writer: &NodeId) -> Option<VerifyingKey> {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = known.get(writer) {
            return Some(*key);
        }
        let key = public_key(writer)?;
        if known.len() >= KEY_CACHE {
            known.clear();
        }
        known.insert(writer.clone(), key);
        Some(key)
    }
}

/// A node's signing key, and the scheme it checks others' signatures in.
#[derive(Clone)]
pub enum Keys {
    /// The node's ed25519 key (the one its peer id is derived from), and
    /// the public keys of writers it has checked.
    Ed25519(Box<SigningKey>, std::sync::Arc<KeyCache>),
    /// The simulator's keyed hash, keyed by the node id.
    Sim([u8; 32]),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::Ed25519(k, _) => write!(f, "Keys::Ed25519({:?})", k.verifying_key()),
            Keys::Sim(_) => f.write_str("Keys::Sim"),
        }
    }
}

impl Keys {
    /// Real keys from an ed25519 secret key's 32 bytes.
    pub fn ed25519(secret: [u8; 32]) -> Keys {
        Keys::Ed25519(
            Box::new(SigningKey::from_bytes(&secret)),
            std::sync::Arc::default(),
        )
    }

    /// The simulator's keys for `node`.
    pub fn sim(node: &NodeId) -> Keys {
        Keys::Sim(sim_key(node))
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Sig {
        match self {
            Keys::Ed25519(k, _) => Sig(k.sign(msg).to_bytes().to_vec()),
            Keys::Sim(key) => Sig(blake3::keyed_hash(key, msg).as_bytes().to_vec()),
        }
    }

    /// Whether `sig` is `writer`'s signature of `msg`, in this node's scheme.
    pub fn verify(&self, writer: &NodeId, msg: &[u8], sig: &Sig) -> bool {
        match self {
            Keys::Ed25519(_, known) => {
                let (Some(key), Ok(sig)) = (
                    known.get(writer),
                    ed25519_dalek::Signature::from_slice(&sig.0),
                ) else {
                    return false;
                };
                key.verify_strict(msg, &sig).is_ok()
            }
            Keys::Sim(_) => sig.0 == blake3::keyed_hash(&sim_key(writer), msg).as_bytes(),
        }
    }
}

fn sim_key(node: &NodeId) -> [u8; 32] {
    blake3::derive_key("shoal simulated node key v1", node.as_str().as_bytes())
}

/// The ed25519 public key inside a peer id's text: base58 of an identity
/// multihash (code 0, 36 bytes) of the protobuf `PublicKey` (type 1,
/// Ed25519; 32 bytes of key). None for anything else.
pub fn public_key(node: &NodeId) -> Option<VerifyingKey> {
    const PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    let s = node.as_str();
    if s.len() > 64 {
        return None;
    }
    let bytes = bs58::decode(s).into_vec().ok()?;
    let key: &[u8; 32] = bytes.strip_prefix(&PREFIX)?.try_into().ok()?;
    VerifyingKey::from_bytes(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_signature_is_its_writers_only() {
        let (a, b) = (NodeId::from("sim00001"), NodeId::from("sim00002"));
        let keys = Keys::sim(&a);
        let sig = keys.sign(b"record");
        assert!(keys.verify(&a, b"record", &sig));
        assert!(!keys.verify(&b, b"record", &sig), "another writer");
        assert!(!keys.verify(&a, b"other record", &sig), "another message");
        assert!(!keys.verify(&a, b"record", &Sig(vec![0; 32])));
    }

    /// The peer id text of ed25519 secret `secret`, as libp2p derives it.
    fn peer_id(secret: [u8; 32]) -> NodeId {
        let public = SigningKey::from_bytes(&secret).verifying_key().to_bytes();
        let mut mh = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        mh.extend_from_slice(&public);
        NodeId::from(bs58::encode(mh).into_string())
    }

    #[test]
    fn writers_keys_are_kept_bounded_and_checks_hold_across_a_clear() {
        let me = Keys::ed25519([1; 32]);
        let Keys::Ed25519(_, known) = &me else {
            unreachable!()
        };
        let writer = |i: u32| {
            let mut secret = [0u8; 32];
            secret[..4].copy_from_slice(&i.to_le_bytes());
            secret[31] = 9;
            (peer_id(secret), Keys::ed25519(secret))
        };
        let (first, first_keys) = writer(0);
        let sig = first_keys.sign(b"m");
        assert!(me.verify(&first, b"m", &sig));
        assert!(
            !me.verify(&first, b"other", &sig),
            "a cached key still checks"
        );
        for i in 1..=KEY_CACHE as u32 {
            let (id, keys) = writer(i);
            assert!(me.verify(&id, b"m", &keys.sign(b"m")));
        }
        let size = known.0.lock().unwrap().len();
        assert!(size <= KEY_CACHE, "{size} keys kept");
        assert!(me.verify(&first, b"m", &sig), "after the clear");
        let (second, _) = writer(1);
        assert!(
            !me.verify(&second, b"m", &sig),
            "another writer's signature"
        );
    }

    #[test]
    fn an_id_that_is_not_an_ed25519_peer_id_has_no_key() {
        assert!(public_key(&NodeId::from("sim00001")).is_none());
        assert!(public_key(&NodeId::from("")).is_none());
        assert!(public_key(&NodeId::from("0OIl")).is_none(), "not base58");
        let keys = Keys::ed25519([7; 32]);
        let sig = keys.sign(b"x");
        assert!(!keys.verify(&NodeId::from("sim00001"), b"x", &sig));
    }
}
