//! Every decoder of a peer's bytes in the engine core, and the checks a
//! decoded message goes through before it is applied: none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::core::ids::NodeId;
use shoal::core::sign::Keys;
use shoal::core::state::ReplicatedState;
use shoal::core::validate;
use shoal::core::wire::{self, Datagram, Gossip, SyncRequest, SyncResponse};

fuzz_target!(|data: &[u8]| {
    let keys = Keys::sim(&NodeId::from("fuzz"));
    let known = ReplicatedState::default();
    if let Ok(Gossip::Deltas(deltas)) = wire::decode::<Gossip>(data, wire::MAX_GOSSIP_BYTES) {
        for d in &deltas {
            let _ = validate::remote(d, &keys, &known);
        }
    }
    if let Ok(Gossip::Lease(claim)) = wire::decode::<Gossip>(data, wire::MAX_GOSSIP_BYTES) {
        let _ = validate::claim(&claim, &keys);
    }
    let _ = wire::decode::<SyncRequest>(data, wire::MAX_SYNC_BYTES);
    if let Ok(SyncResponse::Deltas { deltas, .. }) =
        wire::decode::<SyncResponse>(data, wire::MAX_SYNC_BYTES)
    {
        for d in &deltas {
            let _ = validate::remote(d, &keys, &known);
        }
    }
    let _ = wire::decode::<Datagram>(data, wire::MAX_GOSSIP_BYTES);
});
