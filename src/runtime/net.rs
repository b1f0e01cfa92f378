//! The libp2p side of a node: transport, discovery, gossip and state sync.
//!
//! Transports: TCP, then the private-network handshake keyed by the cluster
//! secret (libp2p-pnet, XSalsa20), then noise and yamux; and QUIC, then
//! Shoal's admission handshake ([`crate::runtime::admit`]), in which each
//! side proves the cluster secret before the swarm sees the connection. A
//! peer without the secret fails either before any Shoal protocol runs; the
//! failure is logged and counted.
//!
//! Behaviours: connection limits, identify, ping, mDNS (optional), Kademlia,
//! gossipsub for deltas (signed, strict validation, blake3 message ids, size
//! limit), and request-response for state sync. This module only translates
//! swarm events into [`NetEvent`]s and carries out sends; the owner decides.

use crate::core::wire::{MAX_GOSSIP_BYTES, MAX_SYNC_BYTES};
use crate::runtime::admit::{Admission, Role};
use crate::runtime::identity::ClusterSecret;
use crate::runtime::metrics::Metrics;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, identify, kad, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm, Transport,
};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// The gossip topic carrying state deltas. Version 2: messages carry no
/// gossipsub signature (version 1 did); nodes of the two versions do not
/// gossip to each other, but still repair each other by anti-entropy.
pub const STATE_TOPIC: &str = "shoal/state/2";
/// The anti-entropy protocol.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/sync/1");
/// Failure detection: one SWIM packet per request, answered with nothing
/// (SWIM's own acks are packets too).
const IDENTIFY_PROTOCOL: &str = "/shoal/id/1";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1");

/// How long a node pruned from a peer's gossip mesh waits before grafting
/// that peer again (gossipsub's default is 60 s).
const PRUNE_BACKOFF: Duration = Duration::from_secs(10);

/// Gossip messages one peer may relay per second, and in a burst: far above
/// what a federation of a thousand writing nodes sends through one mesh
/// peer (changes go out in batches of a 5 ms window), far below a flood.
const GOSSIP_PER_PEER: (u32, u32) = (2_000, 4_000);
/// Sync requests one peer may send per second, and in a burst: an
/// anti-entropy session takes three or more, a joiner's catch-up pages one
/// after another.
const SYNC_PER_PEER: (u32, u32) = (50, 100);

/// What each peer may send per second, by kind; what goes past is dropped
/// and counted (a dropped gossip message is repaired by anti-entropy; a
/// dropped sync request fails at its sender, which retries later).
struct PeerLimits {
    gossip: governor::DefaultKeyedRateLimiter<PeerId>,
    sync: governor::DefaultKeyedRateLimiter<PeerId>,
}

impl PeerLimits {
    fn new() -> Self {
        let quota = |(rate, burst): (u32, u32)| {
            governor::Quota::per_second(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
        };
        PeerLimits {
            gossip: governor::RateLimiter::hashmap(quota(GOSSIP_PER_PEER)),
            sync: governor::RateLimiter::hashmap(quota(SYNC_PER_PEER)),
        }
    }

    /// Forgets the peers whose budget is full again (they sent nothing
    /// lately): the maps hold only peers that are sending.
    fn prune(&self) {
        self.gossip.retain_recent();
        self.sync.retain_recent();
    }
}

/// Raw, length-prefixed bytes, at most `limit` of them; the owner decodes
/// them with [`crate::core::wire`].
#[derive(Clone)]
pub struct SyncCodec {
    limit: usize,
}

impl Default for SyncCodec {
    fn default() -> Self {
        SyncCodec {
            limit: MAX_SYNC_BYTES,
        }
    }
}

async fn read_frame<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {limit}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: Vec<u8>,
) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_frame(io, self.limit).await
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_frame(io, self.limit).await
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        write_frame(io, req).await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        write_frame(io, res).await
    }
}

/// The composed behaviour (its derived event enum is generated code).
#[allow(missing_docs)]
mod composed {
    use super::*;

    /// The composed behaviour.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        pub(super) limits: connection_limits::Behaviour,
        pub(super) identify: identify::Behaviour,
        pub(super) ping: ping::Behaviour,
        pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
        pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
        pub(super) gossipsub: gossipsub::Behaviour,
        pub(super) sync: request_response::Behaviour<SyncCodec>,
    }
}
pub use composed::{Behaviour, BehaviourEvent};

/// What the network reports to the owner.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossip message (still encoded) from a peer.
    /// Gossipsub holds it until the owner calls [`Net::accept`] or
    /// [`Net::reject`]: only accepted messages are forwarded.
    Gossip {
        /// The peer it came from (the publisher or a forwarder).
        via: PeerId,
        /// Gossipsub's id of the message.
        id: gossipsub::MessageId,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A peer asks for sync data.
    SyncRequest {
        /// Who asks.
        peer: PeerId,
        /// Encoded request.
        data: Vec<u8>,
        /// Where to answer.
        channel: ResponseChannel<Vec<u8>>,
    },
    /// An answer to our sync request.
    SyncResponse {
        /// Who answered.
        peer: PeerId,
        /// Encoded response.
        data: Vec<u8>,
    },
    /// A new peer connection (first connection to it).
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A sync request of ours got no answer (timeout, connection closed).
    SyncFailed(PeerId),
}

/// A network setup failure.
#[derive(Debug, thiserror::Error)]
#[error("p2p: {0}")]
pub struct NetError(pub String);

/// The swarm and what the owner needs around it.
pub struct Net {
    /// The swarm.
    pub swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    bootstrap: Vec<Multiaddr>,
    metrics: Arc<Metrics>,
    /// When each warning (by peer and kind) was last logged at warn.
    warned: HashMap<String, std::time::Instant>,
    limits: PeerLimits,
    listen_count: usize,
}

/// An error and its sources, joined: libp2p's transport errors often say
/// nothing themselves and keep the cause (`Address already in use`) below.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        parts.push(cause.to_string());
        next = cause.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.dedup();
    if parts.is_empty() {
        format!("{e:?}")
    } else {
        parts.join(": ")
    }
}

fn err(e: impl std::fmt::Display) -> NetError {
    NetError(e.to_string())
}

impl Net {
    /// Builds the swarm, starts listening on `listen` and dials `bootstrap`.
    pub fn new(
        key: &Keypair,
        secret: &ClusterSecret,
        listen: &[String],
        bootstrap: &[String],
        mdns_on: bool,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Net, NetError> {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_other_transport(|key| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(tcp_transport(key, secret)?)
            })
            .map_err(err)?
            .with_other_transport(|key| quic_transport(key, secret))
            .map_err(err)?
            .with_behaviour(|key| behaviour(key, mdns_on, &metrics))
            .map_err(err)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build();
        let topic = IdentTopic::new(STATE_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(err)?;
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        for addr in listen {
            let addr: Multiaddr = addr
                .parse()
                .map_err(|e| NetError(format!("listen address `{addr}`: {e}")))?;
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError(format!("cannot listen on `{addr}`: {}", chain(&e))))?;
        }
        let mut parsed = Vec::new();
        for addr in bootstrap {
            parsed.push(
                addr.parse::<Multiaddr>()
                    .map_err(|e| NetError(format!("bootstrap address `{addr}`: {e}")))?,
            );
        }
        let mut net = Net {
            swarm,
            topic,
            bootstrap: parsed,
            metrics,
            warned: HashMap::new(),
            limits: PeerLimits::new(),
            listen_count: listen.len(),
        };
        net.dial_bootstrap();
        Ok(net)
    }

    /// Waits (at most `limit`) until the swarm listens on every configured
    /// address, and returns the listen addresses with `/p2p/ID`.
    pub async fn wait_listening(&mut self, limit: Duration) -> Vec<String> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + limit;
        while self.swarm.listeners().count() < self.listen_count {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => {
                    // Early events (before the owner runs) matter here only
                    // for listening; a connection made meanwhile (the
                    // bootstrap's) is handed to the engine from `peers()`
                    // when it starts.
                    let _ = self.handle(event);
                }
                Err(_) => break,
            }
        }
        self.listen_addrs()
    }

    /// Our listen addresses, with `/p2p/ID`.
    pub fn listen_addrs(&self) -> Vec<String> {
        let me = *self.swarm.local_peer_id();
        self.swarm
            .listeners()
            .map(|a| a.clone().with(Protocol::P2p(me)).to_string())
            .collect()
    }

    /// Dials the bootstrap addresses (again).
    pub fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                if self.swarm.is_connected(&peer) {
                    continue;
                }
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                debug!(%addr, error = %e, "dial failed");
            }
        }
    }

    /// Dials known member addresses we are not connected to.
    pub fn dial_known(&mut self, addrs: &[String]) {
        for a in addrs {
            let Ok(addr) = a.parse::<Multiaddr>() else {
                continue;
            };
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
                    continue;
                }
                let _ = self.swarm.dial(addr);
            }
        }
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<PeerId> {
        self.swarm.connected_peers().copied().collect()
    }

    /// Publishes encoded gossip messages; failures are counted, never silent.
    pub fn publish(&mut self, messages: Vec<Vec<u8>>) {
        for m in messages {
            let len = m.len() as u64;
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.topic.clone(), m)
            {
                Ok(_) => {
                    self.metrics.net("gossip_published");
                    self.metrics
                        .network
                        .get_or_create(&crate::runtime::metrics::Label {
                            value: "gossip_bytes_published".into(),
                        })
                        .inc_by(len);
                }
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                    // Nobody to tell yet: anti-entropy delivers it when peers come.
                    self.metrics.drop_reason("publish_no_peers");
                }
                Err(gossipsub::PublishError::Duplicate) => {}
                Err(e) => {
                    self.metrics.drop_reason("publish_failed");
                    self.warn_once("publish", format!("gossip publish failed: {e}"));
                }
            }
        }
    }

    /// A gossip message decoded: gossipsub may forward it now.
    pub fn accept(&mut self, id: &gossipsub::MessageId, via: &PeerId) {
        self.validated(id, via, MessageAcceptance::Accept);
    }

    /// Lets a message go without judging it (the node could not take it):
    /// not forwarded, and its sender is not penalised.
    pub fn ignore(&mut self, id: &gossipsub::MessageId, via: &PeerId) {
        self.validated(id, via, MessageAcceptance::Ignore);
    }

    /// A gossip message that does not decode: it is not forwarded, it counts
    /// against the peer it came from (see [`invalid_messages_only`]), and it
    /// is counted and logged (once per peer).
    pub fn reject(&mut self, id: &gossipsub::MessageId, via: &PeerId, why: &str) {
        self.metrics.drop_reason("gossip_malformed");
        self.warn_once(
            &format!("malformed:{via}"),
            format!("dropped a malformed gossip message from peer {via}: {why}"),
        );
        self.validated(id, via, MessageAcceptance::Reject);
    }

    fn validated(&mut self, id: &gossipsub::MessageId, via: &PeerId, verdict: MessageAcceptance) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, via, verdict);
    }

    /// Sends a sync request.
    ///
    /// Only over a connection that is open: the engine chooses whom to be
    /// connected to, and a request that dialed would reopen what it closed.
    /// Returns false (nothing sent) when the peer is not connected.
    pub fn request(&mut self, peer: PeerId, data: Vec<u8>) -> bool {
        if !self.swarm.is_connected(&peer) {
            self.metrics.drop_reason("sync_peer_gone");
            return false;
        }
        self.swarm.behaviour_mut().sync.send_request(&peer, data);
        self.metrics.net("sync_requests_sent");
        true
    }

    /// Answers a sync request.
    pub fn respond(&mut self, channel: ResponseChannel<Vec<u8>>, data: Vec<u8>) {
        if self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, data)
            .is_err()
        {
            self.metrics.drop_reason("sync_response_undeliverable");
        }
    }

    /// Logs `msg` at warn at most once a minute per `key` (a peer and a
    /// kind of trouble), at debug otherwise. The keys kept are bounded: past
    /// 4,096 the ones older than a minute are dropped, and if none is, all.
    fn warn_once(&mut self, key: &str, msg: String) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        let now = std::time::Instant::now();
        if self.warned.get(key).is_some_and(|at| now - *at < EVERY) {
            debug!("{msg}");
            return;
        }
        if self.warned.len() >= 4096 {
            self.warned.retain(|_, at| now - *at < EVERY);
            if self.warned.len() >= 4096 {
                self.warned.clear();
            }
        }
        self.warned.insert(key.to_owned(), now);
        warn!("{msg}");
    }

    /// Translates a swarm event; returns what the owner must act on.
    pub fn handle(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetEvent> {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.on_sync(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        debug!(%peer, %addr, "discovered by mDNS");
                        let _ = self.swarm.dial(addr);
                    }
                }
                None
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                self.metrics
                    .peers
                    .set(self.swarm.connected_peers().count() as i64);
                self.metrics.net(if endpoint.is_dialer() {
                    "connection_dialed"
                } else {
                    "connection_accepted"
                });
                if num_established.get() == 1 {
                    info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    return Some(NetEvent::Connected(peer_id));
                }
                None
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                self.metrics
                    .peers
                    .set(self.swarm.connected_peers().count() as i64);
                if num_established == 0 {
                    self.limits.prune();
                    info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "peer disconnected");
                    return Some(NetEvent::Disconnected(peer_id));
                }
                None
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.metrics.drop_reason("connection_failed");
                let key = format!("out:{peer_id:?}");
                let peer = peer_id.map_or_else(|| "an unknown peer".to_owned(), |p| p.to_string());
                let error = error.to_string();
                // A refused connection means nothing listens there (a node
                // that stopped); a handshake that fails may be a secret that
                // differs.
                let hint = if error.contains("Connection refused") {
                    "nothing listens at its address"
                } else {
                    "a peer with another cluster secret fails this way"
                };
                self.warn_once(
                    &key,
                    format!("connection to {peer} failed: {error} ({hint})"),
                );
                None
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                self.metrics.drop_reason("connection_refused");
                self.warn_once(&format!("in:{send_back_addr}"), format!(
                    "incoming connection from {send_back_addr} refused: {error} (wrong cluster secret?)"
                ));
                None
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                None
            }
            _ => None,
        }
    }

    fn on_gossip(&mut self, e: gossipsub::Event) -> Option<NetEvent> {
        match e {
            gossipsub::Event::Message {
                message,
                message_id,
                propagation_source,
            } => {
                self.metrics.net("gossip_received");
                if message.data.len() > MAX_GOSSIP_BYTES {
                    self.metrics.drop_reason("gossip_too_large");
                    self.validated(&message_id, &propagation_source, MessageAcceptance::Reject);
                    return None;
                }
                if self.limits.gossip.check_key(&propagation_source).is_err() {
                    // Not forwarded and not held against it (a burst of
                    // honest traffic may get here too).
                    self.metrics.drop_reason("gossip_rate_limited");
                    self.validated(&message_id, &propagation_source, MessageAcceptance::Ignore);
                    self.warn_once(
                        &format!("gossip-rate:{propagation_source}"),
                        format!(
                            "peer {propagation_source} relays more than {} gossip messages a second: the excess is dropped",
                            GOSSIP_PER_PEER.0
                        ),
                    );
                    return None;
                }
                Some(NetEvent::Gossip {
                    via: propagation_source,
                    id: message_id,
                    data: message.data,
                })
            }
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                let n = failed_messages.priority + failed_messages.non_priority;
                self.metrics.drop_reason_n("gossip_slow_peer", n as u64);
                self.warn_once(
                    &format!("slow:{peer_id}"),
                    format!("peer {peer_id} is too slow: {n} gossip messages dropped for it"),
                );
                None
            }
            gossipsub::Event::Subscribed { .. } | gossipsub::Event::Unsubscribed { .. } => None,
            gossipsub::Event::GossipsubNotSupported { peer_id } => {
                self.warn_once(
                    &format!("nogossip:{peer_id}"),
                    format!("peer {peer_id} does not speak gossipsub"),
                );
                None
            }
        }
    }

    fn on_sync(&mut self, e: request_response::Event<Vec<u8>, Vec<u8>>) -> Option<NetEvent> {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if self.limits.sync.check_key(&peer).is_err() {
                        // Dropping the channel fails the request at its
                        // sender, which retries later.
                        drop(channel);
                        self.metrics.drop_reason("sync_rate_limited");
                        self.warn_once(
                            &format!("sync-rate:{peer}"),
                            format!(
                                "peer {peer} sends more than {} sync requests a second: the excess is refused",
                                SYNC_PER_PEER.0
                            ),
                        );
                        return None;
                    }
                    Some(NetEvent::SyncRequest {
                        peer,
                        data: request,
                        channel,
                    })
                }
                request_response::Message::Response { response, .. } => {
                    Some(NetEvent::SyncResponse {
                        peer,
                        data: response,
                    })
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                self.metrics.drop_reason("sync_request_failed");
                debug!(%peer, %error, "sync request failed");
                Some(NetEvent::SyncFailed(peer))
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.metrics.drop_reason("sync_inbound_failed");
                debug!(%peer, %error, "sync inbound failure");
                None
            }
            _ => None,
        }
    }
}

/// TCP, then the private-network handshake keyed by the cluster secret
/// (libp2p-pnet), then noise and yamux.
pub fn tcp_transport(
    key: &Keypair,
    secret: &ClusterSecret,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let psk = PreSharedKey::new(secret.0);
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(20))
            .boxed(),
    )
}

/// QUIC (libp2p-tls proves both peer ids), then the admission handshake
/// (both sides prove the cluster secret); only admitted connections reach
/// the swarm.
pub fn quic_transport(key: &Keypair, secret: &ClusterSecret) -> Boxed<(PeerId, StreamMuxerBox)> {
    let admission = Admission::new(secret, key.public().to_peer_id());
    libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
        .and_then(move |(peer, conn), endpoint| {
            let role = if endpoint.is_dialer() {
                Role::Dialer
            } else {
                Role::Listener
            };
            admission.clone().admit(peer, conn, role)
        })
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
        .boxed()
}

/// Peer scoring that penalises only what a peer provably did wrong: gossip
/// messages that fail validation (a bad or missing signature, or contents
/// that do not decode, see [`Net::reject`]). One such
/// message puts a peer below the graylist threshold, so gossipsub ignores
/// what it sends until the penalty decays (about 2 s after its last invalid
/// message). Everything else scoring can weigh is off: loopback and NATed
/// federations share IP addresses, peers fall behind under load (slow-peer
/// events) and drop gossip promises then; none of that is hostile, and
/// anti-entropy repairs what it costs. Gossipsub counts and logs invalid
/// messages only while scoring is on.
fn invalid_messages_only() -> gossipsub::PeerScoreParams {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    gossipsub::PeerScoreParams {
        topics: [(IdentTopic::new(STATE_TOPIC).hash(), topic)].into(),
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        slow_peer_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    }
}

fn behaviour(
    key: &Keypair,
    mdns_on: bool,
    metrics: &Metrics,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer = key.public().to_peer_id();
    // Anonymous: gossipsub neither signs a message nor checks a signature
    // on it. What a message carries is signed by its writers and checked
    // before it is applied or forwarded (docs/security.md); gossipsub's own
    // signature was checked again on every copy received, before its
    // duplicate filter, which at 100 nodes cost about six signature checks
    // per message per node and tipped the start into a storm of false
    // suspicions that never ended (docs/benchmarks.md, session 14).
    // Which peer relayed a message (`propagation_source`) is still known
    // from the connection, and is what scoring and rate limits use.
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        .max_transmit_size(MAX_GOSSIP_BYTES + 4096)
        // Forward a message only once the owner has decoded it.
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(700))
        // A node pruned from a peer's mesh may not graft that peer again
        // for this long. Gossipsub's default (60 s) let a node that joined
        // late, pruned by every peer whose mesh had overflowed, sit outside
        // every mesh for a minute, getting each write only by gossip's lazy
        // push at a heartbeat, hundreds of ms late (docs/benchmarks.md,
        // session 19).
        .prune_backoff(PRUNE_BACKOFF)
        .graft_flood_threshold(PRUNE_BACKOFF / 2)
        .build()
        .map_err(|e| e.to_string())?;
    // Messages gossipsub rejects itself (carrying a source, sequence number
    // or signature, malformed protobuf) reach no event; its metrics count them
    // (`shoal_gossipsub_invalid_messages_per_topic_total`), and it logs each
    // with its reason.
    let mut gossipsub = metrics.register_library("gossipsub", |registry| {
        gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_cfg)
            .map(|b| b.with_metrics(registry, gossipsub::MetricsConfig::default()))
    })?;
    gossipsub.with_peer_score(
        invalid_messages_only(),
        gossipsub::PeerScoreThresholds::default(),
    )?;
    let mdns = if mdns_on {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
    } else {
        None
    };
    let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
    // Kademlia's routing table holds the bootstrap and mDNS peers only
    // (manual inserts): the member records carry every member's addresses,
    // and the engine keeps a bounded set of connections. Fed from every
    // connection, Kademlia dialed far more than the engine: a bootstrap
    // (every bucket refreshed, about a hundred dials at 100 members) each
    // time its table was under 20 entries, and a liveness dial of a full
    // bucket's oldest disconnected entry for each new peer, which reopened
    // every connection the engine closed. 100 processes spent most of the
    // join's CPU in noise handshakes (docs/benchmarks.md).
    kad_cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
    kad_cfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established_per_peer(Some(4))
                .with_max_established(Some(1024))
                .with_max_pending_incoming(Some(256)),
        ),
        identify: identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.into(),
            key.public(),
        )),
        ping: ping::Behaviour::new(ping::Config::new()),
        mdns: mdns.into(),
        kad: kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_cfg),
        gossipsub,
        sync: request_response::Behaviour::with_codec(
            SyncCodec::default(),
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        ),
    })
}
