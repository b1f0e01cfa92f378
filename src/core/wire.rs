//! Messages between nodes, and their encoding: a version byte, then the
//! postcard encoding compressed with LZ4 (block format, uncompressed size
//! first). Deltas repeat node ids and names a great deal, so a batch shrinks
//! to a fraction, and every byte saved is a byte neither encrypted twice
//! (pnet, noise) nor hashed for a signature.
//!
//! Decoding checks the version, the size and the announced uncompressed size
//! before anything else; a message that fails is dropped and counted by the
//! caller, never applied.

use crate::core::lease::msg::RaftMsg;
use crate::core::lease::LeaseClaim;
use crate::core::state::Delta;
use crate::core::swim::Packet;
use serde::{Deserialize, Serialize};

/// The wire format version.
pub const WIRE_VERSION: u8 = 2;
/// Largest gossip message, bytes.
pub const MAX_GOSSIP_BYTES: usize = 1 << 20;
/// Largest sync request or response, bytes.
pub const MAX_SYNC_BYTES: usize = 16 << 20;

/// What nodes gossip: state deltas, in batches.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Gossip {
    /// New entry states.
    Deltas(Vec<Delta>),
    /// The lease holder's announcement.
    Lease(LeaseClaim),
}

/// What travels in a datagram (sealed and signed by the runtime): the
/// failure detector's packets and the control plane's Raft messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Datagram {
    /// A SWIM packet; an ack carries the lease as its sender knows it, so
    /// every node learns it within a few probe rounds even when gossip
    /// misses it (a node whose gossipsub mesh is still forming).
    Swim {
        /// The packet.
        packet: Packet,
        /// The sender's view of the lease.
        lease: Option<LeaseClaim>,
    },
    /// A Raft message.
    Raft(Box<RaftMsg>),
}

/// A state-sync request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// "Send me your bucket digests."
    Summary,
    /// "Send me the leaf digests of these buckets."
    Leaves(Vec<u16>),
    /// "Send me your entries in these cells that I lack or hold in another
    /// state; here is the (id, digest) pair of each entry I hold there."
    Diff {
        /// Cells: bucket in the low byte, leaf in the high byte.
        cells: Vec<u16>,
        /// (entry id, entry digest) of every entry the sender holds in them.
        have: Vec<(u64, u64)>,
    },
}

/// A state-sync response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SyncResponse {
    /// One 8-byte digest per bucket.
    Summary(Vec<[u8; 8]>),
    /// Per bucket asked for, one 8-byte digest per leaf.
    Leaves(Vec<(u16, Vec<[u8; 8]>)>),
    /// The entries asked for.
    Deltas {
        /// Entry states.
        deltas: Vec<Delta>,
        /// True when more were left out to keep the answer under the size
        /// limit: ask again.
        more: bool,
    },
    /// The request was refused.
    Refused(String),
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Larger than the limit.
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Empty or unknown version.
    #[error("unknown wire version {0:?}")]
    Version(Option<u8>),
    /// Not a valid encoding.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes a message: the version byte, then compressed postcard.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding in-memory values to a Vec cannot fail.
    seal(&postcard::to_stdvec(msg).unwrap_or_default())
}

/// Decodes a message, checking version and sizes (sent and uncompressed,
/// both at most `limit`) first.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let rest = match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => rest,
        Some((v, _)) => return Err(WireError::Version(Some(*v))),
        None => return Err(WireError::Version(None)),
    };
    let malformed = |e: &dyn std::fmt::Display| WireError::Malformed(e.to_string());
    let (size, _) = lz4_flex::block::uncompressed_size(rest).map_err(|e| malformed(&e))?;
    if size > limit {
        return Err(WireError::TooLarge(size));
    }
    let plain = lz4_flex::block::decompress_size_prepended(rest).map_err(|e| malformed(&e))?;
    postcard::from_bytes(&plain).map_err(|e| malformed(&e))
}

/// Version byte and compression around a plain postcard encoding.
fn seal(plain: &[u8]) -> Vec<u8> {
    let packed = lz4_flex::block::compress_prepend_size(plain);
    let mut out = Vec::with_capacity(packed.len() + 1);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&packed);
    out
}

/// Appends `n` as postcard's varint (LEB128).
fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Splits deltas into gossip messages whose plain (uncompressed) encoding is
/// at most `limit` bytes; a delta larger than that travels alone. Each delta
/// is serialised once: a message is postcard's form of
/// `Gossip::Deltas(v)` (the variant index, the length, then the elements),
/// put together here from the deltas' own encodings.
pub fn gossip_chunks<'a>(
    deltas: impl IntoIterator<Item = &'a Delta>,
    limit: usize,
) -> Vec<Vec<u8>> {
    const HEAD: usize = 1 + 10; // variant index and the longest varint
    let mut out = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut count = 0u64;
    let finish = |body: &[u8], count: u64, out: &mut Vec<Vec<u8>>| {
        let mut plain = Vec::with_capacity(body.len() + HEAD);
        plain.push(0); // Gossip::Deltas
        push_varint(&mut plain, count);
        plain.extend_from_slice(body);
        out.push(seal(&plain));
    };
    for d in deltas {
        let start = body.len();
        // Serialising an in-memory value into a Vec cannot fail.
        body = postcard::to_extend(d, body).unwrap_or_else(|_| Vec::new());
        if count > 0 && body.len() + HEAD > limit {
            let last = body.split_off(start);
            finish(&body, count, &mut out);
            body = last;
            count = 0;
        }
        count += 1;
    }
    if count > 0 {
        finish(&body, count, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_messages_are_refused() {
        assert_eq!(
            decode::<SyncRequest>(&[], 10).unwrap_err(),
            WireError::Version(None)
        );
        assert_eq!(
            decode::<SyncRequest>(&[9, 0], 10).unwrap_err(),
            WireError::Version(Some(9))
        );
        assert_eq!(
            decode::<SyncRequest>(&[1, 0], 10).unwrap_err(),
            WireError::Version(Some(1)),
            "the first format is no longer understood"
        );
        assert!(matches!(
            decode::<SyncRequest>(&[WIRE_VERSION, 77], 10),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            decode::<SyncRequest>(&[1; 11], 10).unwrap_err(),
            WireError::TooLarge(11)
        );
        // a small message announcing a large uncompressed size
        let mut bomb = vec![WIRE_VERSION];
        bomb.extend_from_slice(&(1u32 << 30).to_le_bytes());
        bomb.push(0);
        assert_eq!(
            decode::<SyncRequest>(&bomb, 1000).unwrap_err(),
            WireError::TooLarge(1 << 30)
        );
        let req = SyncRequest::Diff {
            cells: vec![1, 2],
            have: vec![(7, 9); 100],
        };
        let bytes = encode(&req);
        assert!(
            bytes.len() < 100,
            "repetition compresses: {} bytes",
            bytes.len()
        );
        assert_eq!(decode::<SyncRequest>(&bytes, 10_000).unwrap(), req);
    }

    fn kv(i: usize, len: usize) -> Delta {
        let mut entry = crate::core::knowledge::KvEntry::default();
        entry.put(
            crate::core::knowledge::Policy::Lww,
            "x".repeat(len),
            &crate::core::ids::NodeId::from("n"),
            crate::core::ids::Millis(1),
            i as u64 + 1,
        );
        Delta::Kv {
            ns: "ns".into(),
            key: format!("k{i}"),
            entry: entry.into(),
        }
    }

    #[test]
    fn gossip_chunks_are_what_encode_would_send() {
        // 300 deltas cross the varint's one-byte range; a limit of 4 KiB
        // makes several messages, and one delta larger than the limit
        // travels alone.
        let mut deltas: Vec<Delta> = (0..300).map(|i| kv(i, 20)).collect();
        deltas.insert(150, kv(1000, 5000));
        let chunks = gossip_chunks(&deltas, 4096);
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        let mut back = Vec::new();
        for c in &chunks {
            let Ok(Gossip::Deltas(part)) = decode::<Gossip>(c, MAX_GOSSIP_BYTES) else {
                panic!("not deltas");
            };
            let plain = postcard::to_stdvec(&Gossip::Deltas(part.clone())).unwrap();
            assert!(
                plain.len() <= 4096 || part.len() == 1,
                "{} bytes",
                plain.len()
            );
            back.extend(part);
        }
        let keys = |v: &[Delta]| -> Vec<String> {
            v.iter()
                .map(|d| match d {
                    Delta::Kv { key, .. } => key.clone(),
                    _ => unreachable!(),
                })
                .collect()
        };
        assert_eq!(keys(&back), keys(&deltas), "all deltas, in order");
        let all = gossip_chunks(&deltas, MAX_GOSSIP_BYTES);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], encode(&Gossip::Deltas(deltas)), "byte for byte");
    }

    proptest! {
        #[test]
        fn sync_requests_round_trip(
            cells in proptest::collection::vec(any::<u16>(), 0..300),
            have in proptest::collection::vec(any::<(u64, u64)>(), 0..300),
        ) {
            let req = SyncRequest::Diff { cells, have };
            prop_assert_eq!(decode::<SyncRequest>(&encode(&req), MAX_SYNC_BYTES).unwrap(), req);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<Gossip>(&bytes, MAX_GOSSIP_BYTES);
            let _ = decode::<SyncResponse>(&bytes, MAX_SYNC_BYTES);
        }
    }
}
