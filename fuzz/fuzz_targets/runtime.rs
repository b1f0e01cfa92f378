//! Every decoder of what a node reads back from its own disk or receives
//! outside the engine, fed arbitrary bytes: none may panic, and what the
//! store decodes must apply to a state. The first byte picks the decoder:
//! a stored row of each table (then a key of up to 255 bytes, its length
//! first), the control plane's stored state, the config file's text, the
//! identity key file, the secret file, and a probe datagram's envelope
//! (as decrypted, and whole).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::config::ConfigLayer;
use shoal::core::lease::ControlDisk;
use shoal::core::state::ReplicatedState;
use shoal::runtime::identity::ClusterSecret;
use shoal::runtime::probe::Sealer;
use shoal::runtime::store::{decode_entry, decode_row, Table};
use std::sync::OnceLock;

fn sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| {
        let mut secret = [7u8; 32];
        let key = libp2p_identity::Keypair::ed25519_from_bytes(&mut secret).expect("a key");
        Sealer::new(&key, &ClusterSecret([9; 32]))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let row = |table: Table| {
        let Some((&n, rest)) = rest.split_first() else {
            return;
        };
        let (key, value) = rest.split_at(usize::from(n).min(rest.len()));
        if let Ok(delta) = decode_row(table, key, value) {
            let mut state = ReplicatedState::default();
            state.apply(delta.clone());
            state.apply(delta);
        }
    };
    match pick % 9 {
        0 => row(Table::Members),
        1 => row(Table::Tasks),
        2 => row(Table::Policies),
        3 => row(Table::Kv),
        4 => {
            let _ = decode_entry::<ControlDisk>(rest);
        }
        5 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(layer) = ConfigLayer::from_toml(text) {
                    let _ = layer.build();
                }
            }
        }
        6 => {
            let _ = libp2p_identity::Keypair::from_protobuf_encoding(rest);
        }
        7 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = ClusterSecret::parse(text, "fuzz");
            }
        }
        _ => {
            let _ = sealer().open_envelope(rest);
            let _ = sealer().open(rest);
        }
    }
});
