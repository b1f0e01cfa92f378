//! Admission on QUIC: a peer proves that it holds the cluster secret before
//! its connection reaches the swarm.
//!
//! TCP connections are private by libp2p-pnet, which encrypts the byte
//! stream with the cluster secret before noise runs. QUIC has no byte stream
//! to wrap, so a QUIC connection (already authenticated by libp2p-tls: both
//! peer ids are proven) runs this handshake as a transport upgrade, on the
//! first bidirectional stream, before any behaviour (gossip, sync, identify,
//! Kademlia) sees it:
//!
//! ```text
//! dialer  → listener   MAGIC, nonce_d                      (16 + 32 bytes)
//! listener → dialer    nonce_l, mac("listener")            (32 + 32)
//! dialer  → listener   mac("dialer")                       (32)
//! listener → dialer    ACCEPTED                            (1)
//! mac(role) = blake3 keyed by derive_key(secret) over
//!             role, dialer id, listener id, nonce_d, nonce_l
//! ```
//!
//! Each side proves the secret over both fresh nonces and both peer ids, so
//! a recorded handshake cannot be replayed (the other side's nonce differs),
//! reflected (the roles are in the MAC) or relayed to another peer (the ids
//! are). A side that fails the check closes the connection: it surfaces as
//! a failed incoming or outgoing connection, which the swarm logs and counts
//! like a pnet failure. The key is derived from the secret, never sent, and
//! the MACs are compared in constant time (`blake3::Hash`'s `PartialEq`).

use crate::runtime::identity::ClusterSecret;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerExt};
use libp2p::PeerId;
use std::time::Duration;
use thiserror::Error;

/// First bytes the dialer sends: the protocol and its version.
const MAGIC: &[u8; 16] = b"shoal/admit/1\0\0\0";
/// What the listener sends when it admits the dialer.
const ACCEPTED: u8 = 1;
/// How long the whole handshake may take.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection was not admitted. The connection is closed in every case.
#[derive(Debug, Error)]
pub enum AdmitError {
    /// The peer's proof did not match: it holds another cluster secret.
    #[error("peer {0} did not prove the cluster secret (another secret?)")]
    BadProof(PeerId),
    /// The peer closed the connection before admitting us: it could not
    /// verify our proof, so it holds another cluster secret.
    #[error("peer {0} refused our proof of the cluster secret (another secret?)")]
    Refused(PeerId),
    /// The peer does not speak this handshake.
    #[error("peer {0} does not speak Shoal's admission protocol")]
    Protocol(PeerId),
    /// The handshake did not finish in time.
    #[error("admission of peer {0} timed out")]
    Timeout(PeerId),
    /// The connection failed during the handshake.
    #[error("admission of peer {peer}: {source}")]
    Io {
        /// The peer.
        peer: PeerId,
        /// What failed.
        source: std::io::Error,
    },
}

/// Which end of the connection this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This node dialed.
    Dialer,
    /// This node accepted.
    Listener,
}

/// The admission key (derived from the cluster secret) and this node's id.
#[derive(Clone)]
pub struct Admission {
    key: [u8; 32],
    local: PeerId,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The admission of node `local` into the federation of `secret`.
    pub fn new(secret: &ClusterSecret, local: PeerId) -> Admission {
        Admission {
            key: blake3::derive_key("shoal 2026-11 quic admission v1", &secret.0),
            local,
        }
    }

    /// Runs the handshake on a fresh connection to `remote` and returns the
    /// connection once both sides have proven the secret. Nothing else may
    /// have used the connection yet.
    pub async fn admit<M>(
        self,
        remote: PeerId,
        mut conn: M,
        role: Role,
    ) -> Result<(PeerId, M), AdmitError>
    where
        M: StreamMuxer + Unpin,
        M::Substream: AsyncRead + AsyncWrite + Unpin,
        M::Error: std::error::Error + Send + Sync + 'static,
    {
        let run = async {
            let stream = match role {
                Role::Dialer => futures::future::poll_fn(|cx| conn.poll_outbound_unpin(cx)).await,
                Role::Listener => futures::future::poll_fn(|cx| conn.poll_inbound_unpin(cx)).await,
            }
            .map_err(|e| AdmitError::Io {
                peer: remote,
                source: std::io::Error::other(e),
            })?;
            self.handshake(stream, remote, role).await
        };
        match tokio::time::timeout(ADMISSION_TIMEOUT, run).await {
            Ok(Ok(())) => Ok((remote, conn)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AdmitError::Timeout(remote)),
        }
    }

    /// The handshake itself, over one stream.
    pub async fn handshake<S>(&self, s: S, remote: PeerId, role: Role) -> Result<(), AdmitError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match role {
            Role::Dialer => self.dial(s, remote).await,
            Role::Listener => self.listen(s, remote).await,
        }
    }

    /// The dialer's side: hello, check the listener's proof, send ours, wait
    /// for admission.
    async fn dial<S>(&self, mut s: S, remote: PeerId) -> Result<(), AdmitError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let io = io_error(remote, Role::Dialer);
        let nonce_d: [u8; 32] = rand::random();
        let mut hello = [0u8; 48];
        hello[..16].copy_from_slice(MAGIC);
        hello[16..].copy_from_slice(&nonce_d);
        s.write_all(&hello).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        let mut answer = [0u8; 64];
        s.read_exact(&mut answer).await.map_err(io)?;
        let nonce_l: [u8; 32] = answer[..32].try_into().expect("32 bytes");
        let theirs = blake3::Hash::from_bytes(answer[32..].try_into().expect("32 bytes"));
        let transcript = (self.local, remote, nonce_d, nonce_l);
        if theirs != self.mac(Role::Listener, transcript) {
            return Err(AdmitError::BadProof(remote));
        }
        let mine = self.mac(Role::Dialer, transcript);
        s.write_all(mine.as_bytes()).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        let mut accepted = [0u8; 1];
        s.read_exact(&mut accepted).await.map_err(io)?;
        if accepted[0] != ACCEPTED {
            return Err(AdmitError::Refused(remote));
        }
        let _ = s.close().await;
        Ok(())
    }

    /// The listener's side: answer the hello with our proof, check the
    /// dialer's, admit it.
    async fn listen<S>(&self, mut s: S, remote: PeerId) -> Result<(), AdmitError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let io = io_error(remote, Role::Listener);
        let mut hello = [0u8; 48];
        s.read_exact(&mut hello).await.map_err(io)?;
        if &hello[..16] != MAGIC {
            return Err(AdmitError::Protocol(remote));
        }
        let nonce_d: [u8; 32] = hello[16..].try_into().expect("32 bytes");
        let nonce_l: [u8; 32] = rand::random();
        let transcript = (remote, self.local, nonce_d, nonce_l);
        let mut answer = [0u8; 64];
        answer[..32].copy_from_slice(&nonce_l);
        answer[32..].copy_from_slice(self.mac(Role::Listener, transcript).as_bytes());
        s.write_all(&answer).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        let mut proof = [0u8; 32];
        s.read_exact(&mut proof).await.map_err(io)?;
        if blake3::Hash::from_bytes(proof) != self.mac(Role::Dialer, transcript) {
            return Err(AdmitError::BadProof(remote));
        }
        s.write_all(&[ACCEPTED]).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        // The dialer may already have read the answer and dropped the
        // stream; the proof is checked, so how the close goes does not
        // matter.
        let _ = s.close().await;
        Ok(())
    }

    /// The proof of `role` over the handshake's transcript.
    fn mac(&self, role: Role, (dialer, listener, nonce_d, nonce_l): Transcript) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(match role {
            Role::Dialer => b"dialer",
            Role::Listener => b"listnr",
        });
        for id in [dialer, listener] {
            let bytes = id.to_bytes();
            h.update(&[bytes.len() as u8]);
            h.update(&bytes);
        }
        h.update(&nonce_d);
        h.update(&nonce_l);
        h.finalize()
    }
}

/// Dialer id, listener id, dialer nonce, listener nonce.
type Transcript = (PeerId, PeerId, [u8; 32], [u8; 32]);

/// Maps an IO failure during the handshake: a dialer whose stream ends
/// early was refused (the listener could not verify its proof).
fn io_error(remote: PeerId, role: Role) -> impl Fn(std::io::Error) -> AdmitError + Copy {
    move |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::UnexpectedEof if role == Role::Dialer => AdmitError::Refused(remote),
        _ => AdmitError::Io {
            peer: remote,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use futures::{SinkExt, TryStreamExt};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// One end of an in-memory byte pipe.
    struct End {
        rx: Pin<Box<dyn AsyncRead + Send>>,
        tx: mpsc::UnboundedSender<std::io::Result<Vec<u8>>>,
    }

    fn pipe() -> (End, End) {
        let (a_tx, a_rx) = mpsc::unbounded();
        let (b_tx, b_rx) = mpsc::unbounded();
        let end = |tx, rx: mpsc::UnboundedReceiver<std::io::Result<Vec<u8>>>| End {
            rx: Box::pin(rx.into_async_read()),
            tx,
        };
        (end(a_tx, b_rx), end(b_tx, a_rx))
    }

    impl AsyncRead for End {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            self.rx.as_mut().poll_read(cx, buf)
        }
    }

    impl AsyncWrite for End {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let sent = self.tx.unbounded_send(Ok(buf.to_vec()));
            Poll::Ready(sent.map(|()| buf.len()).map_err(std::io::Error::other))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.tx.close_channel();
            Poll::Ready(Ok(()))
        }
    }

    /// Runs a dialer and a listener against each other.
    async fn both(d: Admission, l: Admission) -> (Result<(), AdmitError>, Result<(), AdmitError>) {
        let (de, le) = pipe();
        let (dl, ll) = (d.local, l.local);
        futures::join!(
            async move { d.handshake(de, ll, Role::Dialer).await },
            async move { l.handshake(le, dl, Role::Listener).await }
        )
    }

    #[tokio::test]
    async fn holders_of_the_same_secret_admit_each_other() {
        let (d, l) = both(admission(7), admission(7)).await;
        assert!(d.is_ok(), "dialer: {d:?}");
        assert!(l.is_ok(), "listener: {l:?}");
    }

    #[tokio::test]
    async fn a_dialer_with_another_secret_rejects_the_listener_and_is_never_admitted() {
        let (d, l) = both(admission(1), admission(2)).await;
        assert!(matches!(d, Err(AdmitError::BadProof(_))), "dialer: {d:?}");
        assert!(
            l.is_err(),
            "the listener admitted a dialer with another secret"
        );
    }

    #[tokio::test]
    async fn a_listener_refuses_a_forged_or_replayed_proof() {
        let listener = admission(3);
        let dialer_id = PeerId::random();
        // A recorded proof from an earlier, honest handshake (other nonces).
        let honest = admission(3);
        let old = honest.mac(Role::Dialer, (dialer_id, listener.local, [9; 32], [8; 32]));
        for proof in [[0u8; 32], *old.as_bytes()] {
            let (mut hostile, end) = pipe();
            let l = listener.clone();
            let (r, accepted) =
                futures::join!(l.handshake(end, dialer_id, Role::Listener), async {
                    let mut hello = MAGIC.to_vec();
                    hello.extend([9u8; 32]);
                    hostile.send_all_bytes(&hello).await;
                    let mut answer = [0u8; 64];
                    hostile.read_exact(&mut answer).await.unwrap();
                    hostile.send_all_bytes(&proof).await;
                    let mut rest = Vec::new();
                    let _ = hostile.read_to_end(&mut rest).await;
                    rest
                });
            assert!(matches!(r, Err(AdmitError::BadProof(_))), "{r:?}");
            assert!(
                accepted.is_empty(),
                "the listener answered a bad proof with {accepted:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_listener_refuses_another_protocol() {
        let (mut other, end) = pipe();
        let l = admission(4);
        let (r, ()) = futures::join!(l.handshake(end, PeerId::random(), Role::Listener), async {
            other.send_all_bytes(&[b'x'; 48]).await;
        });
        assert!(matches!(r, Err(AdmitError::Protocol(_))), "{r:?}");
    }

    impl End {
        async fn send_all_bytes(&mut self, bytes: &[u8]) {
            self.tx.send(Ok(bytes.to_vec())).await.unwrap();
        }
    }

    fn admission(secret: u8) -> Admission {
        Admission::new(&ClusterSecret([secret; 32]), PeerId::random())
    }

    #[test]
    fn the_proof_binds_the_secret_the_role_the_peers_and_both_nonces() {
        let a = admission(1);
        let (d, l) = (PeerId::random(), PeerId::random());
        let t = (d, l, [1; 32], [2; 32]);
        let base = a.mac(Role::Dialer, t);
        assert_eq!(base, a.mac(Role::Dialer, t), "deterministic");
        assert_ne!(base, admission(2).mac(Role::Dialer, t), "another secret");
        assert_ne!(
            base,
            a.mac(Role::Listener, t),
            "reflected to the other role"
        );
        assert_ne!(
            base,
            a.mac(Role::Dialer, (l, d, [1; 32], [2; 32])),
            "peers swapped"
        );
        let other = PeerId::random();
        assert_ne!(
            base,
            a.mac(Role::Dialer, (d, other, [1; 32], [2; 32])),
            "relayed"
        );
        assert_ne!(
            base,
            a.mac(Role::Dialer, (d, l, [3; 32], [2; 32])),
            "dialer nonce"
        );
        assert_ne!(
            base,
            a.mac(Role::Dialer, (d, l, [1; 32], [3; 32])),
            "listener nonce"
        );
    }
}
