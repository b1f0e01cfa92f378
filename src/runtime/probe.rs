//! Failure-detection packets as UDP datagrams, as memberlist sends them.
//!
//! SWIM probes a different member every interval, so over a round it talks
//! to every member once. Over libp2p each probe to a member it was not
//! connected to cost a TCP, private-network, noise and yamux handshake
//! (two X25519 exchanges and two signatures per side), and gossipsub then
//! kept the connection open for good: 100 processes ended with a full mesh
//! of 9,900 connections and a fifth of their CPU in curve25519 during the
//! join (docs/benchmarks.md). A probe here is one datagram and its ack one
//! more; no connection, no handshake.
//!
//! A datagram is `nonce (24 bytes) || XChaCha20-Poly1305(key, nonce,
//! envelope)`, where the key is derived from the cluster secret (so only
//! members can read or forge one, as with the private-network key), and the
//! envelope is the sender's and receiver's peer ids, the engine's encoded
//! [`Packet`](crate::core::swim::Packet), and the sender's ed25519
//! signature over the receiver and the packet: a member holding the secret
//! still cannot speak for another member, and a datagram replayed to
//! another node is refused. Datagrams are opened and verified on a task of
//! their own, off the owner task; only the sender's id and the packet bytes
//! reach the engine, which decodes and checks them like any peer input.
//!
//! A member's probe address is one of its record's addresses, written
//! `/ip4/A/udp/P` (or `/ip6/...`): an address with no `/p2p/` part, which the
//! libp2p dialer skips. A packet to a member whose record has none (it just
//! joined and its record has not arrived) goes to where its last datagram
//! came from.

use crate::core::swim::MAX_PACKET_BYTES;
use crate::runtime::identity::ClusterSecret;
use crate::runtime::metrics::Metrics;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

/// Domain separation for the key, the associated data and signatures.
const CONTEXT: &[u8] = b"shoal probe datagram v1";
/// Nonce length (XChaCha20).
const NONCE: usize = 24;
/// Largest datagram accepted or sent: a packet plus its envelope, within
/// UDP's limit.
pub const MAX_DATAGRAM: usize = 65_000;
/// Datagrams opened but not yet taken by the owner; more are dropped.
const QUEUE: usize = 1024;
/// Reply addresses remembered for members without a probe address.
const MAX_SOURCES: usize = 4096;

/// A datagram that was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// Shorter than a nonce and a tag, or longer than allowed.
    #[error("bad datagram size")]
    Size,
    /// Not sealed with this federation's key (another secret, or forged).
    #[error("not sealed with the cluster key")]
    Seal,
    /// The envelope does not decode.
    #[error("malformed envelope")]
    Envelope,
    /// Addressed to another node (a replay, or a stale address).
    #[error("addressed to another node")]
    NotForMe,
    /// The sender's id carries no usable public key.
    #[error("sender id has no ed25519 key")]
    Sender,
    /// The signature does not match the sender.
    #[error("bad signature")]
    Signature,
}

impl ProbeError {
    /// The metrics label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Size => "probe_datagram_size",
            ProbeError::Seal => "probe_datagram_unsealed",
            ProbeError::Envelope => "probe_datagram_malformed",
            ProbeError::NotForMe => "probe_datagram_misaddressed",
            ProbeError::Sender | ProbeError::Signature => "probe_datagram_forged",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: Vec<u8>,
    to: Vec<u8>,
    body: Vec<u8>,
    sig: Vec<u8>,
}

/// Seals and opens datagrams for one node.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    key: Keypair,
    /// This node's peer id, as envelopes carry it.
    me_bytes: Vec<u8>,
}

impl Sealer {
    /// The sealer of the node with `key` in the federation of `secret`.
    pub fn new(key: &Keypair, secret: &ClusterSecret) -> Sealer {
        let derived = blake3::derive_key("shoal 2026-12-02 probe datagram key", &secret.0);
        Sealer {
            cipher: XChaCha20Poly1305::new(&derived.into()),
            key: key.clone(),
            me_bytes: key.public().to_peer_id().to_bytes(),
        }
    }

    fn signed(to: &[u8], body: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(CONTEXT.len() + to.len() + body.len());
        msg.extend_from_slice(CONTEXT);
        msg.extend_from_slice(to);
        msg.extend_from_slice(body);
        msg
    }

    /// The datagram carrying `body` to `to`.
    pub fn seal(&self, to: &PeerId, body: &[u8]) -> Vec<u8> {
        let to = to.to_bytes();
        let sig = self.key.sign(&Self::signed(&to, body)).unwrap_or_default();
        let envelope = Envelope {
            from: self.me_bytes.clone(),
            to,
            body: body.to_vec(),
            sig,
        };
        let plain = postcard::to_allocvec(&envelope).unwrap_or_default();
        let nonce: [u8; NONCE] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: CONTEXT,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The sender and packet of a datagram, if it is sound and for us.
    pub fn open(&self, datagram: &[u8]) -> Result<(PeerId, Vec<u8>), ProbeError> {
        if datagram.len() < NONCE + 16 || datagram.len() > MAX_DATAGRAM {
            return Err(ProbeError::Size);
        }
        let (nonce, sealed) = datagram.split_at(NONCE);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: CONTEXT,
                },
            )
            .map_err(|_| ProbeError::Seal)?;
        self.open_envelope(&plain)
    }

    /// The second half of [`Sealer::open`]: the sender and packet of a
    /// decrypted envelope, if it is sound, signed by its sender and for us.
    pub fn open_envelope(&self, plain: &[u8]) -> Result<(PeerId, Vec<u8>), ProbeError> {
        let envelope: Envelope = postcard::from_bytes(plain).map_err(|_| ProbeError::Envelope)?;
        if envelope.to != self.me_bytes {
            return Err(ProbeError::NotForMe);
        }
        if envelope.body.len() > MAX_PACKET_BYTES {
            return Err(ProbeError::Size);
        }
        let from = PeerId::from_bytes(&envelope.from).map_err(|_| ProbeError::Sender)?;
        let public = public_key(&from).ok_or(ProbeError::Sender)?;
        if !public.verify(&Self::signed(&envelope.to, &envelope.body), &envelope.sig) {
            return Err(ProbeError::Signature);
        }
        Ok((from, envelope.body))
    }
}

/// The public key inlined in an ed25519 peer id (an identity multihash).
fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(hash.digest()).ok()
}

/// A datagram that was opened and verified.
#[derive(Debug)]
pub struct Received {
    /// The sender.
    pub from: PeerId,
    /// The encoded packet.
    pub bytes: Vec<u8>,
    /// Where it came from (the reply address while its record is unknown).
    pub src: SocketAddr,
}

/// The node's probe socket: sends sealed packets, and hands opened ones to
/// the owner through a channel.
pub struct ProbeSocket {
    socket: Arc<UdpSocket>,
    sealer: Sealer,
    metrics: Arc<Metrics>,
    /// Where each member's last datagram came from.
    sources: HashMap<PeerId, SocketAddr>,
}

impl ProbeSocket {
    /// Binds `addr` and starts the reader task.
    pub async fn bind(
        addr: SocketAddr,
        sealer: Sealer,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(ProbeSocket, mpsc::Receiver<Received>)> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(read_loop(
            socket.clone(),
            sealer.clone(),
            metrics.clone(),
            tx,
        ));
        Ok((
            ProbeSocket {
                socket,
                sealer,
                metrics,
                sources: HashMap::new(),
            },
            rx,
        ))
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The probe addresses to advertise in the member record: the bound
    /// address, or, when bound to every interface, its port on each IP the
    /// p2p listeners report.
    pub fn advertised(&self, p2p_addrs: &[String]) -> Vec<String> {
        let Ok(local) = self.local_addr() else {
            return Vec::new();
        };
        let mut ips: Vec<IpAddr> = if local.ip().is_unspecified() {
            p2p_addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
                .filter_map(|a| match a.iter().next() {
                    Some(Protocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
                    Some(Protocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
                    _ => None,
                })
                .filter(|ip| ip.is_ipv4() == local.is_ipv4())
                .collect()
        } else {
            vec![local.ip()]
        };
        ips.sort();
        ips.dedup();
        ips.into_iter()
            .map(|ip| probe_multiaddr(SocketAddr::new(ip, local.port())))
            .collect()
    }

    /// Remembers where a member's datagram came from.
    pub fn seen(&mut self, from: PeerId, src: SocketAddr) {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&from) {
            self.sources.clear();
        }
        self.sources.insert(from, src);
    }

    /// Sends `body` to `to`, at the probe address among `addrs` or where
    /// its last datagram came from. A packet with nowhere to go, or that
    /// the socket refuses, is counted: SWIM treats it as lost.
    pub fn send(&mut self, to: PeerId, addrs: &[String], body: &[u8]) {
        let Some(dest) = probe_addr(addrs).or_else(|| self.sources.get(&to).copied()) else {
            self.metrics.drop_reason("probe_no_address");
            return;
        };
        let datagram = self.sealer.seal(&to, body);
        if datagram.len() > MAX_DATAGRAM {
            self.metrics.drop_reason("probe_too_large");
            return;
        }
        if let Err(e) = self.socket.try_send_to(&datagram, dest) {
            self.metrics.drop_reason("probe_undeliverable");
            debug!(peer = %to, %dest, error = %e, "probe not sent");
        }
    }
}

async fn read_loop(
    socket: Arc<UdpSocket>,
    sealer: Sealer,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Received>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some
                // systems; they say nothing about this socket.
                debug!(error = %e, "probe socket receive error");
                continue;
            }
        };
        match sealer.open(&buf[..n]) {
            Ok((from, bytes)) => {
                let received = Received { from, bytes, src };
                match tx.try_send(received) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics.drop_reason("probe_queue_full")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Err(e) => {
                metrics.drop_reason(e.reason());
                debug!(%src, error = %e, "probe datagram refused");
            }
        }
    }
}

/// `/ip4/A/udp/P` for a socket address.
pub fn probe_multiaddr(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty()
        .with(ip)
        .with(Protocol::Udp(addr.port()))
        .to_string()
}

/// The first probe address (`/ipX/A/udp/P`, nothing after) among `addrs`.
pub fn probe_addr(addrs: &[String]) -> Option<SocketAddr> {
    addrs.iter().find_map(|a| {
        let addr: Multiaddr = a.parse().ok()?;
        let mut it = addr.iter();
        let ip = match it.next()? {
            Protocol::Ip4(ip) => IpAddr::V4(ip),
            Protocol::Ip6(ip) => IpAddr::V6(ip),
            _ => return None,
        };
        let Protocol::Udp(port) = it.next()? else {
            return None;
        };
        it.next().is_none().then_some(SocketAddr::new(ip, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Sealer {
        fn me(&self) -> PeerId {
            self.key.public().to_peer_id()
        }
    }

    fn pair() -> (Sealer, Sealer, ClusterSecret) {
        let secret = ClusterSecret([7; 32]);
        let a = Sealer::new(&Keypair::generate_ed25519(), &secret);
        let b = Sealer::new(&Keypair::generate_ed25519(), &secret);
        (a, b, secret)
    }

    #[test]
    fn a_sealed_packet_opens_at_its_receiver_only() {
        let (a, b, secret) = pair();
        let d = a.seal(&b.me(), b"ping");
        assert_eq!(b.open(&d), Ok((a.me(), b"ping".to_vec())));
        let c = Sealer::new(&Keypair::generate_ed25519(), &secret);
        assert_eq!(c.open(&d), Err(ProbeError::NotForMe));
        let other = Sealer::new(&Keypair::generate_ed25519(), &ClusterSecret([8; 32]));
        assert_eq!(
            other.open(&a.seal(&other.me(), b"x")),
            Err(ProbeError::Seal)
        );
    }

    #[test]
    fn tampered_truncated_or_impersonated_datagrams_are_refused() {
        let (a, b, secret) = pair();
        let mut d = a.seal(&b.me(), b"ping");
        let last = d.len() - 1;
        d[last] ^= 1;
        assert_eq!(b.open(&d), Err(ProbeError::Seal));
        assert_eq!(b.open(&d[..10]), Err(ProbeError::Size));
        // A member holding the secret seals a packet claiming to be `a`,
        // signed with its own key.
        let mallory = Keypair::generate_ed25519();
        let to = b.me().to_bytes();
        let envelope = Envelope {
            from: a.me().to_bytes(),
            to: to.clone(),
            body: b"suspect".to_vec(),
            sig: mallory.sign(&Sealer::signed(&to, b"suspect")).unwrap(),
        };
        let plain = postcard::to_allocvec(&envelope).unwrap();
        let cipher = Sealer::new(&mallory, &secret).cipher;
        let nonce = [1u8; NONCE];
        let mut forged = nonce.to_vec();
        forged.extend(
            cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &plain,
                        aad: CONTEXT,
                    },
                )
                .unwrap(),
        );
        assert_eq!(b.open(&forged), Err(ProbeError::Signature));
    }

    #[test]
    fn the_probe_address_is_the_plain_udp_one() {
        let addrs = vec![
            "/ip4/127.0.0.1/tcp/7000/p2p/12D3KooWGzXq5kYxKXRNm3g6MPPJsBRAmYnRnMqLiSdaGq6KZ7Fs"
                .to_owned(),
            "/ip4/127.0.0.1/udp/7000/quic-v1".to_owned(),
            "/ip4/127.0.0.1/udp/7001".to_owned(),
        ];
        assert_eq!(probe_addr(&addrs), Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(probe_addr(&addrs[..2]), None);
        assert_eq!(
            probe_multiaddr("[::1]:9".parse().unwrap()),
            "/ip6/::1/udp/9"
        );
    }
}
