//! The node: one tokio task that owns the engine, the store and the swarm,
//! and translates between them.
//!
//! Callers hold a cloneable [`NodeHandle`] and send it typed commands
//! ([`Command`]) or read closures over the replica. The owner task feeds
//! every command, swarm event, handler completion and timer to
//! [`Engine::handle`] and carries out the engine's outputs: it persists the
//! batches the engine hands out (group commit, one at a time, on a blocking
//! thread), publishes gossip, sends and answers sync messages, dials, runs
//! handlers and answers callers. Every protocol decision is the engine's.
//! If a commit fails nothing is acknowledged, and the engine is rebuilt from
//! the store so that memory and disk agree again.

use crate::config::NodeConfig;
use crate::core::engine::{
    Answer, BatchId, Command, Counter, EngineConfig, Input, LoadSample, MsgRef, Persist,
    ProtocolConfig, ReqId, SyncRef,
};
use crate::core::ids::{Fence, Millis, Mono, NodeId, Now, TaskId};
use crate::core::member::MemberRecord;
use crate::core::replica::{Outcome, ReplicaConfig, StartTask};
use crate::core::{Engine, EngineError, Output};
use crate::runtime::executor::{self, Handler, Handlers};
pub use crate::runtime::handle::NodeHandle;
use crate::runtime::handle::{Request, Waiter};
use crate::runtime::identity::{self, ClusterSecret, IdentityError};
use crate::runtime::metrics::Metrics;
use crate::runtime::net::{Net, NetEvent};
use crate::runtime::probe::{ProbeSocket, Received, Sealer};
use crate::runtime::store::{Store, StoreError};
use crate::runtime::sysload;
use futures::StreamExt;
use libp2p::gossipsub::MessageId;
use libp2p::request_response::ResponseChannel;
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tracing::{debug, error, info, info_span, warn, Instrument};

/// A node operation failed.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The engine refused the request; nothing changed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed; the change was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The p2p layer could not start.
    #[error(transparent)]
    Net(#[from] crate::runtime::net::NetError),
    /// The identity or secret could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The node is shutting down or stopped.
    #[error("the node is stopped")]
    Stopped,
}

/// The wall-clock time, as the core's timestamps use it.
pub fn now() -> Millis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Millis(ms)
}

/// Static facts about the node.
#[derive(Debug)]
pub struct NodeInfo {
    /// Node id (libp2p peer id).
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// The configuration it runs with.
    pub config: NodeConfig,
    /// Cluster secret fingerprint (never the secret).
    pub secret_fingerprint: String,
    /// p2p listen addresses, with `/p2p/ID`.
    pub p2p_addrs: Vec<String>,
    /// When it started.
    pub started: Instant,
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.fmt(f)
    }
}

impl Node {
    /// Opens the data dir (identity, secret, store) and starts the node with
    /// the command handlers of `cfg` plus `embedded` handlers.
    pub async fn start(cfg: NodeConfig, embedded: Handlers) -> Result<Node, NodeError> {
        let (key, _) = identity::load_or_create_identity(&cfg.data_dir)?;
        let env_secret = std::env::var("SHOAL_SECRET").ok();
        let secret: ClusterSecret = identity::load_or_create_secret(
            env_secret.as_deref(),
            cfg.secret_file.as_deref(),
            &cfg.data_dir,
        )?;
        let id = NodeId::from(key.public().to_peer_id().to_string());
        let keys = identity::signing_keys(&key, &cfg.data_dir)?;
        let name = cfg
            .name
            .clone()
            .unwrap_or_else(|| format!("node-{}", id.short()));
        let path = cfg.store_path();
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .map_err(|_| NodeError::Stopped)??;
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::default());
        let mut net = Net::new(
            &key,
            &secret,
            &cfg.listen,
            &cfg.bootstrap,
            cfg.mdns,
            idle_timeout(cfg.timing.heartbeat_interval_ms),
            metrics.clone(),
        )?;
        let p2p_addrs = net.wait_listening(Duration::from_secs(10)).await;
        let probe_at = cfg.probe_listen_addr();
        let (probe, probe_rx) =
            ProbeSocket::bind(probe_at, Sealer::new(&key, &secret), metrics.clone())
                .await
                .map_err(|e| {
                    NodeError::Net(crate::runtime::net::NetError(format!(
                        "probe socket {probe_at}: {e}"
                    )))
                })?;
        let mut record_addrs = p2p_addrs.clone();
        record_addrs.extend(probe.advertised(&p2p_addrs));
        let mut handlers: Handlers = cfg
            .handlers
            .iter()
            .map(|(cap, cmd)| (cap.clone(), Handler::Command(cmd.clone())))
            .collect();
        handlers.extend(embedded);
        let mut capabilities: Vec<String> = handlers.keys().cloned().collect();
        capabilities.extend(cfg.capabilities.iter().cloned());
        capabilities.sort();
        capabilities.dedup();
        let replica_cfg = ReplicaConfig {
            node: id.clone(),
            record: MemberRecord {
                name: name.clone(),
                addrs: record_addrs,
                api: Some(cfg.api.to_string()),
                capabilities,
                tags: cfg.tags.clone(),
                capacity: cfg.capacity,
                ..MemberRecord::default()
            },
            handlers: handlers.keys().cloned().collect(),
            claim_ttl_ms: cfg.claim_timeout_secs * 1000,
            failure: crate::core::failure::FailureConfig {
                heartbeat_interval_ms: cfg.timing.heartbeat_interval_ms,
                suspect_after_missed: cfg.timing.suspect_after_missed,
                removed_after_ms: cfg.timing.removed_after_ms,
            },
            keys,
        };
        let engine_cfg = EngineConfig {
            replica: replica_cfg,
            protocol: ProtocolConfig::for_heartbeat(cfg.timing.heartbeat_interval_ms),
            control: crate::core::lease::ControlConfig::for_probe_interval(
                cfg.timing.heartbeat_interval_ms,
                cfg.voters as usize,
                cfg.bootstrap_expect as usize,
            ),
        };
        let info = Arc::new(NodeInfo {
            id: id.clone(),
            name,
            config: cfg,
            secret_fingerprint: secret.fingerprint(),
            p2p_addrs,
            started: Instant::now(),
        });
        let (tx, rx) = mpsc::channel(8192);
        let (events, _) = broadcast::channel(4096);
        let handle = NodeHandle {
            tx,
            store: store.clone(),
            events: events.clone(),
            work: Arc::new(Notify::new()),
            info: info.clone(),
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            read_only: Arc::new(std::sync::RwLock::new(None)),
        };
        handle.metrics.store_writable.set(1);
        let (state, control) = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                Ok::<_, StoreError>((store.load()?, store.load_control()?))
            })
            .await
            .map_err(|_| NodeError::Stopped)??
        };
        let seed: u64 = rand::random();
        let engine = Engine::new(engine_cfg.clone(), state, seed).with_control(control);
        let span = info_span!("node", node = %id.short());
        span.in_scope(|| info!(seed, "engine seeded"));
        let (exec_tx, exec_rx) = mpsc::unbounded_channel();
        let mut owner = Owner {
            engine,
            engine_cfg,
            store,
            handle: handle.clone(),
            handlers,
            running: HashMap::new(),
            exec_tx,
            net,
            probe,
            origin: tokio::time::Instant::now(),
            waiters: HashMap::new(),
            next_req: 0,
            msgs: HashMap::new(),
            syncs: HashMap::new(),
            next_ref: 0,
            peer_ids: HashMap::new(),
            inflight: None,
            persisting: None,
            leaving_until: None,
            read_only: None,
        };
        owner.start_engine();
        owner.settle().await?;
        handle.ready.store(true, Ordering::Relaxed);
        let task = tokio::spawn(owner.run(rx, exec_rx, probe_rx).instrument(span));
        Ok(Node { handle, task })
    }

    /// A handle for callers.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Leaves gracefully and waits for the owner task to end.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let r = self.handle.shutdown().await;
        let _ = self.task.await;
        r
    }
}

type ExecDone = (TaskId, Fence, Option<Outcome>);

/// A commit on a blocking thread: the batch and how it went.
type Inflight = tokio::task::JoinHandle<(BatchId, Result<(), StoreError>)>;

/// Most requests fed to the engine before it hands out a batch.
const MAX_BATCH: usize = 8192;

/// How long a leaving node keeps its swarm running after its departure is
/// durable, so the departure and the handed-back tasks get on the wire.
const LEAVE_LINGER: Duration = Duration::from_millis(500);

struct Owner {
    engine: Engine,
    engine_cfg: EngineConfig,
    store: Arc<Store>,
    handle: NodeHandle,
    handlers: Handlers,
    running: HashMap<TaskId, (Fence, oneshot::Sender<()>)>,
    exec_tx: mpsc::UnboundedSender<ExecDone>,
    net: Net,
    /// Failure-detection datagrams.
    probe: ProbeSocket,
    /// The origin of the engine's monotonic clock.
    origin: tokio::time::Instant,
    waiters: HashMap<ReqId, Waiter>,
    next_req: u64,
    /// Gossip messages waiting for the engine's verdict.
    msgs: HashMap<MsgRef, (MessageId, PeerId)>,
    /// Sync requests waiting for the engine's answer.
    syncs: HashMap<SyncRef, ResponseChannel<Vec<u8>>>,
    next_ref: u64,
    /// Node ids the engine names, as peer ids.
    peer_ids: HashMap<NodeId, PeerId>,
    inflight: Option<Inflight>,
    /// The batch being committed.
    persisting: Option<BatchId>,
    /// Set once the graceful leave is durable: when to stop.
    leaving_until: Option<tokio::time::Instant>,
    /// Set while the store refuses writes (a full disk).
    read_only: Option<ReadOnly>,
}

/// A node whose store failed a write: it serves reads from what the store
/// holds, refuses every change, takes nothing from its peers, and tries to
/// reopen the store until a write succeeds again.
struct ReadOnly {
    /// The failed write's error.
    error: StoreError,
    since: tokio::time::Instant,
    /// When to try reopening the store next.
    retry_at: tokio::time::Instant,
    /// The wait after the next failed try.
    backoff: Duration,
}

/// The first wait before reopening a read-only store, doubled after each
/// failed try up to [`REOPEN_BACKOFF_MAX`].
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Free space a read-only store waits for before it takes writes again:
/// room for a memtable flush, not just the next journal record.
const REOPEN_MIN_FREE: u64 = 16 << 20;

impl Owner {
    /// Both clocks, now.
    fn now(&self) -> Now {
        Now {
            mono: Mono(self.origin.elapsed().as_millis() as u64),
            wall: now(),
        }
    }

    /// The instant of a monotonic engine time.
    fn instant(&self, at: Mono) -> tokio::time::Instant {
        self.origin + Duration::from_millis(at.0)
    }

    /// Starts the engine and tells it of every peer already connected: a
    /// connection made before the engine existed (the bootstrap, dialed
    /// while the swarm was coming up) or before it was rebuilt would
    /// otherwise never be a peer to it, and it would never pull from that
    /// peer (anti-entropy asks only the engine's peers).
    fn start_engine(&mut self) {
        self.input(Input::Start);
        for peer in self.net.peers() {
            let node = self.node_id(peer);
            self.input(Input::PeerUp(node));
        }
    }

    fn input(&mut self, input: Input) {
        if self.read_only.is_some()
            && !matches!(
                input,
                Input::Command(_, Command::Barrier)
                    | Input::Persisted(_)
                    | Input::PersistFailed { .. }
            )
        {
            // Read-only: the engine holds what the store holds and takes
            // nothing that would change it (peers still hold what they
            // sent; it comes back by anti-entropy once writable).
            return;
        }
        let now = self.now();
        self.engine.handle(now, input);
    }

    fn req(&mut self, waiter: Waiter) -> ReqId {
        self.next_req += 1;
        let id = ReqId(self.next_req);
        self.waiters.insert(id, waiter);
        id
    }

    /// The owner loop: each arm translates one thing into an engine input;
    /// after each, the engine's outputs are carried out.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        mut exec_rx: mpsc::UnboundedReceiver<ExecDone>,
        mut probe_rx: mpsc::Receiver<Received>,
    ) {
        let mut stopping: Option<oneshot::Sender<()>> = None;
        info!("node started");
        loop {
            // A read-only engine takes no timers: it is rebuilt on reopen.
            let timer = self
                .engine
                .poll_timeout()
                .filter(|_| self.read_only.is_none());
            let wake = timer.map_or_else(far_future, |(at, _)| self.instant(at));
            let reopen = self
                .read_only
                .as_ref()
                .map_or_else(far_future, |r| r.retry_at);
            let linger = self.leaving_until.unwrap_or_else(far_future);
            tokio::select! {
                done = async { self.inflight.as_mut().expect("guarded").await }, if self.inflight.is_some() => self.committed(done).await,
                req = rx.recv(), if stopping.is_none() => self.requests(req, &mut rx, &mut stopping),
                Some((id, fence, outcome)) = exec_rx.recv() => self.exec_done(id, fence, outcome),
                ev = self.net.swarm.select_next_some() => self.on_swarm(ev),
                Some(packet) = probe_rx.recv() => self.on_probe(packet),
                _ = tokio::time::sleep_until(wake), if timer.is_some() => self.input(Input::Timer(timer.expect("guarded").1)),
                _ = tokio::time::sleep_until(reopen), if self.read_only.is_some() && self.inflight.is_none() => self.try_reopen().await,
                _ = tokio::time::sleep_until(linger), if self.leaving_until.is_some() => {
                    if let Some(done) = stopping.take() {
                        let _ = done.send(());
                    }
                    return;
                }
            }
            self.carry_out();
        }
    }

    /// Feeds the waiting requests (up to [`MAX_BATCH`]) to the engine in
    /// one call, so that their changes share one commit.
    fn requests(
        &mut self,
        first: Option<Request>,
        rx: &mut mpsc::Receiver<Request>,
        stopping: &mut Option<oneshot::Sender<()>>,
    ) {
        let mut inputs = Vec::new();
        let closed = first.is_none();
        let mut next = first;
        while let Some(request) = next.take() {
            match request {
                Request::Command(_, tx) if self.read_only.is_some() => {
                    self.handle.metrics.reject("store_read_only");
                    let _ = tx.send(Err(NodeError::Store(self.read_only_error())));
                }
                Request::Shutdown(done) if self.read_only.is_some() => {
                    // Nothing can be committed: stop without the leave.
                    *stopping = Some(done);
                    self.leaving_until = Some(tokio::time::Instant::now());
                    break;
                }
                Request::Command(cmd, tx) => {
                    let req = self.req(Waiter::Command(tx));
                    inputs.push(Input::Command(req, cmd));
                }
                Request::Query(q, tx) => {
                    let found = self.engine.query(self.now(), &q);
                    let req = self.req(Waiter::Query(Box::new(found), tx));
                    inputs.push(Input::Command(req, Command::Barrier));
                }
                Request::Shutdown(done) => {
                    *stopping = Some(done);
                    info!("leaving: handing tasks back");
                    let req = self.req(Waiter::Leave);
                    inputs.push(Input::Command(req, Command::Leave));
                    break;
                }
            }
            if inputs.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if closed && self.read_only.is_some() {
            *stopping = Some(oneshot::channel().0);
            self.leaving_until = Some(tokio::time::Instant::now());
        } else if closed {
            // Every handle is gone: leave as if asked to.
            *stopping = Some(oneshot::channel().0);
            let req = self.req(Waiter::Leave);
            inputs.push(Input::Command(req, Command::Leave));
        }
        let now = self.now();
        self.engine.handle_all(now, inputs);
    }

    /// Carries out everything the engine asked for, feeding back what
    /// answers at once (load samples) until nothing is left.
    fn carry_out(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            self.output(out);
        }
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Reply(req, result) => self.reply(req, result),
            Output::Persist(batch) => self.persist(batch),
            Output::Publish(bytes) => self.net.publish(vec![bytes]),
            Output::Send { to, bytes } => {
                let sent = self
                    .peer_id(&to)
                    .is_some_and(|peer| self.net.request(peer, bytes));
                if !sent {
                    self.input(Input::SyncFailed { from: to });
                }
            }
            Output::Probe { to, addrs, bytes } => {
                if let Some(peer) = self.peer_id(&to) {
                    self.probe.send(peer, &addrs, &bytes);
                }
            }
            Output::Respond { id, bytes, .. } => {
                if let Some(channel) = self.syncs.remove(&id) {
                    self.net.respond(channel, bytes);
                }
            }
            Output::Verdict { msg, rejected, .. } => {
                if let Some((id, via)) = self.msgs.remove(&msg) {
                    match rejected {
                        None => self.net.accept(&id, &via),
                        Some(why) => self.net.reject(&id, &via, &why),
                    }
                }
            }
            Output::Dial { addrs, .. } => {
                self.handle.metrics.net("member_dialed");
                self.net.dial_known(&addrs)
            }
            Output::DialBootstrap => self.net.dial_bootstrap(),
            Output::Disconnect(node) => {
                if let Some(peer) = self.peer_id(&node) {
                    let _ = self.net.swarm.disconnect_peer_id(peer);
                }
            }
            Output::Start(task) => self.start_task(task),
            Output::Abort { task, fence } => {
                if self.running.get(&task).is_some_and(|(f, _)| *f == fence) {
                    if let Some((_, cancel)) = self.running.remove(&task) {
                        let _ = cancel.send(());
                    }
                }
            }
            Output::Event(e) => {
                let _ = self.handle.events.send(e);
            }
            Output::WorkAvailable => self.handle.work.notify_waiters(),
            Output::SampleLoad => {
                let (cpu, memory, disk) = sysload::sample(&self.handle.info.config.data_dir);
                self.input(Input::Load(LoadSample { cpu, memory, disk }));
            }
            Output::Count(counter, n) => self.count(counter, n),
        }
    }

    fn count(&self, counter: Counter, n: u64) {
        let m = &self.handle.metrics;
        match counter {
            Counter::AttemptSucceeded => m.attempt("succeeded"),
            Counter::AttemptFailed => m.attempt("failed"),
            Counter::AttemptRefused => m.attempt("refused"),
            Counter::SyncEntries => {
                m.sync_entries.inc_by(n);
            }
            Counter::SyncMalformed => {
                m.drop_reason_n("sync_malformed", n);
                debug!("malformed sync message");
            }
            Counter::DivergenceRepaired => {
                m.divergences.inc_by(n);
            }
            Counter::DeltaRefused => {
                m.drop_reason_n("delta_refused", n);
                debug!(n, "refused unsound deltas from a peer");
            }
            Counter::ProbeSent => m.detected("probe_sent", n),
            Counter::ProbeFailed => m.detected("probe_failed", n),
            Counter::IndirectProbe => m.detected("indirect_probe", n),
            Counter::SuspicionRaised => m.detected("suspicion_raised", n),
            Counter::SuspicionRefuted => m.detected("suspicion_refuted", n),
            Counter::ProbeMalformed => m.detected("probe_malformed", n),
        }
    }

    fn peer_id(&mut self, node: &NodeId) -> Option<PeerId> {
        if let Some(p) = self.peer_ids.get(node) {
            return Some(*p);
        }
        let peer: PeerId = node.as_str().parse().ok()?;
        self.peer_ids.insert(node.clone(), peer);
        Some(peer)
    }

    fn node_id(&mut self, peer: PeerId) -> NodeId {
        let node = NodeId::from(peer.to_string());
        self.peer_ids.entry(node.clone()).or_insert(peer);
        node
    }

    fn next_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref
    }

    /// A failure-detection packet, opened and verified by the socket's
    /// reader.
    fn on_probe(&mut self, packet: Received) {
        self.probe.seen(packet.from, packet.src);
        let from = self.node_id(packet.from);
        self.input(Input::Probe {
            from,
            bytes: packet.bytes,
        });
    }

    /// Translates what the swarm reported into an engine input.
    fn on_swarm(&mut self, ev: libp2p::swarm::SwarmEvent<crate::runtime::net::BehaviourEvent>) {
        let Some(event) = self.net.handle(ev) else {
            return;
        };
        if self.read_only.is_some() {
            // Taken by nobody: the sender still holds it.
            match event {
                NetEvent::Gossip { via, id, .. } => {
                    self.handle.metrics.drop_reason("store_read_only");
                    self.net.ignore(&id, &via);
                }
                NetEvent::SyncRequest { .. } => {
                    self.handle.metrics.drop_reason("store_read_only");
                }
                _ => {}
            }
            return;
        }
        let input = match event {
            NetEvent::Gossip { via, id, data } => {
                let msg = MsgRef(self.next_ref());
                self.msgs.insert(msg, (id, via));
                Input::Gossip {
                    from: self.node_id(via),
                    msg,
                    bytes: data,
                }
            }
            NetEvent::SyncRequest {
                peer,
                data,
                channel,
            } => {
                let id = SyncRef(self.next_ref());
                self.syncs.insert(id, channel);
                Input::SyncRequest {
                    from: self.node_id(peer),
                    id,
                    bytes: data,
                }
            }
            NetEvent::SyncResponse { peer, data } => Input::SyncResponse {
                from: self.node_id(peer),
                bytes: data,
            },
            NetEvent::SyncFailed(peer) => Input::SyncFailed {
                from: self.node_id(peer),
            },
            NetEvent::Connected(peer) => Input::PeerUp(self.node_id(peer)),
            NetEvent::Disconnected(peer) => Input::PeerDown(self.node_id(peer)),
        };
        self.input(input);
    }

    fn reply(&mut self, req: ReqId, result: Result<Answer, EngineError>) {
        let Some(waiter) = self.waiters.remove(&req) else {
            return;
        };
        let result = result.map_err(|e| self.node_error(e));
        match waiter {
            Waiter::Command(tx) => {
                if result.is_ok() {
                    self.handle.metrics.acknowledged.inc();
                }
                let _ = tx.send(result);
            }
            Waiter::Query(found, tx) => {
                let _ = tx.send(result.map(|_| *found));
            }
            Waiter::Leave => {
                if let Err(e) = result {
                    error!(error = %e, "final commit failed");
                }
                self.leaving_until = Some(tokio::time::Instant::now() + LEAVE_LINGER);
            }
        }
    }

    /// A store failure reaches callers as the store error it was.
    fn node_error(&self, e: EngineError) -> NodeError {
        match e {
            EngineError::NotDurable(_) if self.read_only.is_some() => {
                NodeError::Store(self.read_only_error())
            }
            EngineError::NotDurable(msg) => NodeError::Store(StoreError::Io {
                path: self.store.path().to_owned(),
                reason: format!("commit failed, change not acknowledged: {msg}"),
            }),
            other => NodeError::Engine(other),
        }
    }

    /// The error a read-only node answers a change with.
    fn read_only_error(&self) -> StoreError {
        let path = self.store.path().to_owned();
        match self.read_only.as_ref().map(|r| &r.error) {
            Some(StoreError::Full { reason, .. }) => StoreError::Full {
                path,
                reason: reason.clone(),
            },
            Some(e) => StoreError::Io {
                path,
                reason: format!("read-only after a failed write ({e}); writes resume once the store can be reopened"),
            },
            None => StoreError::Io {
                path,
                reason: "not read-only".into(),
            },
        }
    }

    /// A write failed: the node turns read-only (see [`ReadOnly`]).
    fn enter_read_only(&mut self, error: StoreError) {
        let now = tokio::time::Instant::now();
        *self
            .handle
            .read_only
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        self.handle.metrics.store_writable.set(0);
        error!(error = %error, "the store refused a write: read-only until it can be reopened; reads go on");
        self.read_only = Some(ReadOnly {
            error,
            since: now,
            retry_at: now + REOPEN_BACKOFF,
            backoff: REOPEN_BACKOFF,
        });
    }

    /// Reopens a read-only store and proves it takes a synced write; on
    /// success the engine is rebuilt from it and the node rejoins.
    async fn try_reopen(&mut self) {
        let store = self.store.clone();
        let tried = tokio::task::spawn_blocking(move || {
            // A tiny write can fit in the last page of a full disk: wait
            // for room, so the node does not flap between the two modes.
            let free = store.available_space().unwrap_or(0);
            if free < REOPEN_MIN_FREE {
                return Err(StoreError::Full {
                    path: store.path().to_owned(),
                    reason: format!(
                        "{} KiB free, writes resume at {} MiB",
                        free / 1024,
                        REOPEN_MIN_FREE >> 20
                    ),
                });
            }
            store.reopen()?;
            store.commit([], &[], true)
        })
        .await;
        let m = &self.handle.metrics;
        let Some(ro) = self.read_only.as_mut() else {
            return;
        };
        match tried {
            Ok(Ok(())) => {
                m.reopened("succeeded");
                m.store_writable.set(1);
                info!(
                    after_secs = ro.since.elapsed().as_secs(),
                    "the store takes writes again: rejoining"
                );
                self.read_only = None;
                *self
                    .handle
                    .read_only
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                self.rebuild().await;
            }
            Ok(Err(e)) => {
                m.reopened("failed");
                warn!(error = %e, retry_in_ms = ro.backoff.as_millis() as u64, "the store still refuses writes");
                ro.retry_at = tokio::time::Instant::now() + ro.backoff;
                ro.backoff = (ro.backoff * 2).min(REOPEN_BACKOFF_MAX);
            }
            Err(_) => {
                m.reopened("failed");
                error!("reopening the store panicked");
                ro.retry_at = tokio::time::Instant::now() + ro.backoff;
                ro.backoff = (ro.backoff * 2).min(REOPEN_BACKOFF_MAX);
            }
        }
    }

    /// Starts the commit of a batch on a blocking thread (the engine hands
    /// out one at a time).
    fn persist(&mut self, batch: Persist) {
        debug_assert!(self.inflight.is_none(), "one batch at a time");
        self.persisting = Some(batch.id);
        let store = self.store.clone();
        let metrics = self.handle.metrics.clone();
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let deltas = batch.changed.iter().chain(&batch.merged);
            let r = store.commit_with_control(
                deltas,
                &batch.audit,
                batch.control.as_deref(),
                batch.synced,
            );
            metrics.commit_seconds.observe(t0.elapsed().as_secs_f64());
            metrics
                .batch_size
                .observe((batch.changed.len() + batch.merged.len()) as f64);
            match &r {
                Ok(()) => metrics.commits.inc(),
                Err(_) => metrics.commit_failures.inc(),
            };
            (batch.id, r)
        }));
    }

    /// A commit finished: confirm it to the engine, or fail it and rebuild
    /// the engine from the store.
    async fn committed(
        &mut self,
        done: Result<(BatchId, Result<(), StoreError>), tokio::task::JoinError>,
    ) {
        self.inflight = None;
        let persisting = self.persisting.take();
        match done {
            Ok((id, Ok(()))) => self.input(Input::Persisted(id)),
            Ok((id, Err(e))) => {
                let reason = e.to_string();
                self.enter_read_only(e);
                self.input(Input::PersistFailed { batch: id, reason });
                self.carry_out();
                self.rebuild().await;
            }
            Err(_) => {
                // The batch's fate is unknown: fail what waits on it and
                // rebuild from what the store holds, as for a failed commit.
                self.enter_read_only(StoreError::Io {
                    path: self.store.path().to_owned(),
                    reason: "the commit panicked".into(),
                });
                if let Some(batch) = persisting {
                    self.input(Input::PersistFailed {
                        batch,
                        reason: "the commit panicked".into(),
                    });
                }
                self.carry_out();
                self.rebuild().await;
            }
        }
    }

    /// Carries out outputs and waits for commits until nothing is being
    /// persisted (used at start).
    async fn settle(&mut self) -> Result<(), NodeError> {
        loop {
            self.carry_out();
            let Some(inflight) = self.inflight.take() else {
                return Ok(());
            };
            self.persisting = None;
            let (id, r) = inflight.await.map_err(|_| NodeError::Stopped)?;
            r?;
            self.input(Input::Persisted(id));
        }
    }

    fn exec_done(&mut self, id: TaskId, fence: Fence, outcome: Option<Outcome>) {
        if self.running.get(&id).is_some_and(|(f, _)| *f == fence) {
            self.running.remove(&id);
        }
        if outcome.is_some() {
            self.input(Input::HandlerDone {
                task: id,
                fence,
                outcome,
            });
        }
    }

    /// After a failed commit, or a reopen: stop handlers and reload the
    /// engine from disk; a writable node starts it and rejoins its peers.
    async fn rebuild(&mut self) {
        for (_, (_, cancel)) in self.running.drain() {
            let _ = cancel.send(());
        }
        let read_only = self.read_only.is_some().then(|| self.read_only_error());
        for (_, waiter) in self.waiters.drain() {
            match waiter {
                Waiter::Command(tx) => {
                    let e = match &read_only {
                        Some(StoreError::Full { path, reason }) => {
                            NodeError::Store(StoreError::Full {
                                path: path.clone(),
                                reason: reason.clone(),
                            })
                        }
                        _ => NodeError::Stopped,
                    };
                    let _ = tx.send(Err(e));
                }
                Waiter::Query(_, tx) => {
                    let _ = tx.send(Err(NodeError::Stopped));
                }
                // A leave that lost its commit still ends the node.
                Waiter::Leave => {
                    self.leaving_until = Some(tokio::time::Instant::now() + LEAVE_LINGER);
                }
            }
        }
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.load()?, store.load_control()?))
        });
        match loaded.await {
            Ok(Ok((state, control))) => {
                let seed: u64 = rand::random();
                self.engine =
                    Engine::new(self.engine_cfg.clone(), state, seed).with_control(control);
                if self.read_only.is_none() {
                    self.start_engine();
                }
                info!(seed, "engine rebuilt from the store");
            }
            Ok(Err(e)) => error!(error = %e, "cannot reload the store"),
            Err(_) => error!("store reload panicked"),
        }
    }

    fn start_task(&mut self, task: StartTask) {
        let Some(handler) = self.handlers.get(&task.capability).cloned() else {
            let _ = self.exec_tx.send((
                task.id.clone(),
                task.fence,
                Some(Outcome::Failure("no handler".into())),
            ));
            return;
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.running
            .insert(task.id.clone(), (task.fence, cancel_tx));
        let done = self.exec_tx.clone();
        let node = self.engine.node().clone();
        let span = info_span!("task", task = %task.id, fence = %task.fence);
        tokio::spawn(
            async move {
                let (id, fence) = (task.id.clone(), task.fence);
                let outcome = executor::run(handler, task, node, cancel_rx).await;
                let _ = done.send((id, fence, outcome));
            }
            .instrument(span),
        );
    }
}

/// A deadline for a timer branch that is disabled.
/// How long a connection with no open stream stays open: four probe
/// intervals, 2 to 60 s. Once gossipsub has opened its streams on a
/// connection it never idles out (they stay open); the engine's
/// `max_connections` is what bounds those.
fn idle_timeout(probe_interval_ms: u64) -> Duration {
    Duration::from_millis(probe_interval_ms.saturating_mul(4).clamp(2_000, 60_000))
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
