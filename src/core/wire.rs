//! Messages between nodes, and their encoding: a version byte, then the
//! postcard encoding compressed with LZ4 (block format, uncompressed size
//! first). Deltas repeat node ids and names a great deal, so a batch shrinks
//! to a fraction, and every byte saved is a byte neither encrypted twice
//! (pnet, noise) nor hashed for a signature.
//!
//! Decoding checks the version, the size and the announced uncompressed size
//! before anything else; a message that fails is dropped and counted by the
//! caller, never applied.

use crate::core::state::Delta;
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
    let plain = postcard::to_stdvec(msg).unwrap_or_default();
    let packed = lz4_flex::block::compress_prepend_size(&plain);
    let mut out = Vec::with_capacity(packed.len() + 1);
    out.push(WIRE_VERSION);
    out.extend_from_slice(&packed);
    out
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

/// Splits deltas into gossip messages of at most `limit` encoded bytes.
pub fn gossip_chunks(deltas: Vec<Delta>, limit: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk: Vec<Delta> = Vec::new();
    let mut size = 16;
    for d in deltas {
        let len = postcard::to_stdvec(&d).map(|b| b.len()).unwrap_or(0) + 8;
        if !chunk.is_empty() && size + len > limit {
            out.push(encode(&Gossip::Deltas(std::mem::take(&mut chunk))));
            size = 16;
        }
        size += len;
        chunk.push(d);
    }
    if !chunk.is_empty() {
        out.push(encode(&Gossip::Deltas(chunk)));
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
