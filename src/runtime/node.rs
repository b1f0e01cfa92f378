//! The node: one tokio task that owns the engine and the store.
//!
//! Callers hold a cloneable [`NodeHandle`] and send it closures over the
//! engine: [`NodeHandle::write`] for changes, [`NodeHandle::read`] for
//! queries. The owner task takes whatever commands are waiting, runs them,
//! commits all the deltas they produced in one durable transaction, and only
//! then answers them (group commit). If a commit fails nothing is
//! acknowledged, and the engine is rebuilt from the store so that memory and
//! disk agree again.

use crate::config::NodeConfig;
use crate::core::engine::{Claimed, Outcome, StartTask};
use crate::core::event::{AuditRecord, Event};
use crate::core::ids::{Fence, Millis, NodeId, TaskId};
use crate::core::member::MemberRecord;
use crate::core::state::Delta;
use crate::core::sync;
use crate::core::wire::{self, Gossip, SyncRequest, SyncResponse};
use crate::core::{Engine, EngineConfig, EngineError, Output};
use crate::runtime::executor::{self, Handler, Handlers};
use crate::runtime::identity::{self, ClusterSecret, IdentityError};
use crate::runtime::metrics::Metrics;
use crate::runtime::net::{Net, NetEvent};
use crate::runtime::store::{Store, StoreError};
use crate::runtime::sysload;
use futures::StreamExt;
use libp2p::PeerId;
use std::collections::HashMap;
use std::collections::HashSet;
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

/// The current time as the core sees it.
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

type Reply = Box<dyn FnOnce(Result<(), NodeError>) + Send>;
type WriteJob = Box<dyn FnOnce(&mut Engine, Millis) -> Reply + Send>;
type ReadJob = Box<dyn FnOnce(&Engine, &Store) -> Reply + Send>;

enum Command {
    Write(WriteJob),
    Read(ReadJob),
    Shutdown(oneshot::Sender<()>),
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    work: Arc<Notify>,
    info: Arc<NodeInfo>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("id", &self.info.id)
            .finish()
    }
}

impl NodeHandle {
    /// Runs `f` on the engine; answers once its changes are on disk.
    pub async fn write<T, F>(&self, f: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Engine, Millis) -> Result<T, EngineError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |engine, now| {
            let result = f(engine, now);
            Box::new(move |stored: Result<(), NodeError>| {
                let answer = match (result, stored) {
                    (Err(e), _) => Err(NodeError::Engine(e)),
                    (Ok(_), Err(e)) => Err(e),
                    (Ok(v), Ok(())) => Ok(v),
                };
                let _ = tx.send(answer);
            })
        });
        self.tx
            .send(Command::Write(job))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `f` against the engine (and store) and returns what it computes.
    pub async fn read<T, F>(&self, f: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&Engine, &Store) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |engine, store| {
            // Computed now, answered once every write it may have seen is durable.
            let value = f(engine, store);
            Box::new(move |stored: Result<(), NodeError>| {
                let _ = tx.send(stored.map(|()| value));
            })
        });
        self.tx
            .send(Command::Read(job))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Claims a task for an external worker, waiting up to `wait` for one.
    pub async fn claim(
        &self,
        worker: String,
        caps: Vec<String>,
        wait: Duration,
    ) -> Result<Option<Claimed>, NodeError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (w, c) = (worker.clone(), caps.clone());
            if let Some(task) = self.write(move |e, now| e.claim(now, &w, &c)).await? {
                return Ok(Some(task));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Subscribes to the event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Static facts about the node.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// True once the store is open and the node has announced itself.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Leaves gracefully: hands tasks back, announces departure, flushes to
    /// disk and stops the owner task.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.ready.store(false, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Shutdown(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }
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
            metrics.clone(),
        )?;
        let p2p_addrs = net.wait_listening(Duration::from_secs(10)).await;
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
        let engine_cfg = EngineConfig {
            node: id.clone(),
            record: MemberRecord {
                name: name.clone(),
                addrs: p2p_addrs.clone(),
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
            events: events.clone(),
            work: Arc::new(Notify::new()),
            info: info.clone(),
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        };
        let state = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load())
                .await
                .map_err(|_| NodeError::Stopped)??
        };
        let engine = Engine::new(engine_cfg.clone(), state, rand::random());
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
            initial_sync: HashSet::new(),
            resync: HashSet::new(),
            outbox: Outbox::default(),
        };
        owner.engine.start(now());
        owner.flush_now().await?;
        handle.ready.store(true, Ordering::Relaxed);
        let span = info_span!("node", node = %id.short());
        let task = tokio::spawn(owner.run(rx, exec_rx).instrument(span));
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

/// Keeps a sync answer under the size limit; what does not fit is sent in a
/// later round (the answer says there is more).
fn fit(mut deltas: Vec<Delta>) -> SyncResponse {
    let mut size = 64;
    let mut keep = 0;
    for d in &deltas {
        size += postcard::experimental::serialized_size(d).unwrap_or(0) + 8;
        if size > wire::MAX_SYNC_BYTES {
            break;
        }
        keep += 1;
    }
    let more = keep < deltas.len();
    deltas.truncate(keep);
    SyncResponse::Deltas { deltas, more }
}

struct Owner {
    engine: Engine,
    engine_cfg: EngineConfig,
    store: Arc<Store>,
    handle: NodeHandle,
    handlers: Handlers,
    running: HashMap<TaskId, (Fence, oneshot::Sender<()>)>,
    exec_tx: mpsc::UnboundedSender<ExecDone>,
    net: Net,
    /// Peers we are catching up with after connecting (what they send is
    /// not divergence).
    initial_sync: HashSet<PeerId>,
    /// Peers to ask for a summary again as soon as a diff is answered,
    /// because not every differing bucket fitted in it.
    resync: HashSet<PeerId>,
    /// Committed changes waiting to be gossiped.
    outbox: Outbox,
}

/// How long committed changes may wait to share a gossip message with the
/// next commits' changes. Each gossip message is signed by its sender and
/// verified by every receiver (an ed25519 signature each), so under load
/// fewer, larger messages save CPU on every node. A change made when nothing
/// was published for this long goes out at once: idle writes wait for
/// nothing.
const GOSSIP_WINDOW: Duration = Duration::from_millis(5);

/// A deadline for a timer branch that is disabled.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// Committed changes waiting to be gossiped, and when gossip last went out.
#[derive(Default)]
struct Outbox {
    deltas: Vec<Delta>,
    last: Option<tokio::time::Instant>,
}

impl Outbox {
    /// When the waiting changes are due, or `None` when nothing waits.
    fn due(&self) -> Option<tokio::time::Instant> {
        if self.deltas.is_empty() {
            return None;
        }
        Some(
            self.last
                .map_or_else(tokio::time::Instant::now, |t| t + GOSSIP_WINDOW),
        )
    }
}

/// Most commands answered by one commit.
const MAX_BATCH: usize = 8192;

/// What waits for one commit: the changes, the answers and the side effects.
#[derive(Default)]
struct Batch {
    /// True when the batch holds local changes or audit records, which must
    /// be fsynced before they are acknowledged.
    sync: bool,
    /// Local changes: stored, then published.
    changed: Vec<Delta>,
    /// Entries merged from peers: stored only.
    merged: Vec<Delta>,
    /// Published only (heartbeats).
    publish: Vec<Delta>,
    audit: Vec<AuditRecord>,
    replies: Vec<Reply>,
    effects: Vec<Output>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.publish.is_empty()
            && self.changed.is_empty()
            && self.merged.is_empty()
            && self.audit.is_empty()
            && self.replies.is_empty()
            && self.effects.is_empty()
    }
}

type Inflight = tokio::task::JoinHandle<(Result<(), StoreError>, Batch)>;

impl Owner {
    /// The owner loop. Commits are pipelined: while one batch is being made
    /// durable (on a blocking thread), the next one is built from the
    /// commands that keep arriving. Answers and side effects of a batch are
    /// released only after its commit, and commits happen in order.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut exec_rx: mpsc::UnboundedReceiver<ExecDone>,
    ) {
        let hb = self.handle.info.config.timing.heartbeat_interval_ms;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut load = tokio::time::interval(Duration::from_millis(hb));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut entropy =
            tokio::time::interval(Duration::from_millis((hb * 4).clamp(1_000, 30_000)));
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        let mut redial_backoff = 1u32;
        let mut redial_skip = 0u32;
        let mut next = Batch::default();
        let mut inflight: Option<Inflight> = None;
        let mut stopping: Option<oneshot::Sender<()>> = None;
        info!("node started");
        loop {
            tokio::select! {
                done = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    match done {
                        Ok((result, batch)) => self.finish(result, batch, &mut next).await,
                        Err(_) => error!("commit task panicked"),
                    }
                }
                cmd = rx.recv(), if stopping.is_none() => match cmd {
                    Some(Command::Shutdown(done)) => stopping = Some(done),
                    Some(cmd) => self.batch(cmd, &mut rx, &mut next, &mut stopping),
                    None => stopping = Some(oneshot::channel().0),
                },
                Some((id, fence, outcome)) = exec_rx.recv() => self.exec_done(id, fence, outcome),
                ev = self.net.swarm.select_next_some() => {
                    if let Some(e) = self.net.handle(ev) {
                        self.on_net(e);
                    }
                }
                _ = tokio::time::sleep_until(self.outbox.due().unwrap_or_else(far_future)),
                    if self.outbox.due().is_some() => self.flush_gossip(),
                _ = tick.tick() => self.engine.tick(now()),
                _ = load.tick() => self.report_load(),
                _ = entropy.tick() => self.anti_entropy(),
                _ = redial.tick() => {
                    if redial_skip > 0 {
                        redial_skip -= 1;
                    } else {
                        let alone = self.redial();
                        redial_backoff = if alone { (redial_backoff * 2).min(16) } else { 1 };
                        redial_skip = redial_backoff - 1;
                    }
                }
            }
            self.collect(&mut next);
            if inflight.is_none() {
                if let Some(done) = stopping.take() {
                    // Commit and answer what is pending, then leave.
                    let batch = std::mem::take(&mut next);
                    if let Ok((result, batch)) = self.start_commit(batch).await {
                        self.finish(result, batch, &mut next).await;
                    }
                    self.leave().await;
                    let _ = done.send(());
                    return;
                }
                if !next.is_empty() {
                    inflight = Some(self.start_commit(std::mem::take(&mut next)));
                }
            }
        }
    }

    /// Runs the waiting commands (up to [`MAX_BATCH`]) into `next`.
    fn batch(
        &mut self,
        first: Command,
        rx: &mut mpsc::Receiver<Command>,
        next: &mut Batch,
        stopping: &mut Option<oneshot::Sender<()>>,
    ) {
        let mut cmd = Some(first);
        let t = now();
        let mut n = 0;
        while let Some(c) = cmd.take() {
            match c {
                Command::Write(job) => next.replies.push(job(&mut self.engine, t)),
                Command::Read(job) => next.replies.push(job(&self.engine, &self.store)),
                Command::Shutdown(done) => {
                    *stopping = Some(done);
                    break;
                }
            }
            n += 1;
            if n < MAX_BATCH {
                cmd = rx.try_recv().ok();
            }
        }
    }

    /// Moves what the engine produced into `next`.
    fn collect(&mut self, next: &mut Batch) {
        for out in self.engine.drain_outputs() {
            match out {
                Output::Changed(d) => {
                    next.sync = true;
                    next.changed.push(d);
                }
                Output::Merged(d) => next.merged.push(d),
                Output::Gossip(d) => next.publish.push(d),
                Output::Audit(a) => {
                    next.sync = true;
                    next.audit.push(a);
                }
                other => next.effects.push(other),
            }
        }
    }

    fn start_commit(&self, batch: Batch) -> Inflight {
        let store = self.store.clone();
        let metrics = self.handle.metrics.clone();
        tokio::task::spawn_blocking(move || {
            if batch.changed.is_empty() && batch.merged.is_empty() && batch.audit.is_empty() {
                return (Ok(()), batch);
            }
            let t0 = Instant::now();
            // Replies to reads are released after this commit too; a batch of
            // only merged deltas needs no fsync.
            let deltas = batch.changed.iter().chain(&batch.merged);
            let r = store.commit(deltas, &batch.audit, batch.sync);
            metrics.commit_seconds.observe(t0.elapsed().as_secs_f64());
            metrics
                .batch_size
                .observe((batch.changed.len() + batch.merged.len()) as f64);
            match &r {
                Ok(()) => metrics.commits.inc(),
                Err(_) => metrics.commit_failures.inc(),
            };
            (r, batch)
        })
    }

    /// Answers a committed batch and carries out its side effects; after a
    /// failed commit, fails it and everything built on it, and rebuilds the
    /// engine from the store.
    async fn finish(&mut self, result: Result<(), StoreError>, batch: Batch, next: &mut Batch) {
        match result {
            Ok(()) => {
                self.handle
                    .metrics
                    .acknowledged
                    .inc_by(batch.replies.len() as u64);
                for r in batch.replies {
                    r(Ok(()));
                }
                self.publish(batch.changed, batch.publish);
                for e in batch.effects {
                    self.effect(e);
                }
            }
            Err(e) => {
                error!(error = %e, "store commit failed; nothing in it was acknowledged");
                let msg = e.to_string();
                let fail = |r: Reply| {
                    r(Err(NodeError::Store(StoreError::Io {
                        path: self.store.path().to_owned(),
                        reason: format!("commit failed, change not acknowledged: {msg}"),
                    })))
                };
                // The next batch was built on the lost changes: it fails too.
                let dependent = std::mem::take(next);
                batch
                    .replies
                    .into_iter()
                    .chain(dependent.replies)
                    .for_each(fail);
                self.rebuild().await;
            }
        }
    }

    /// Makes everything produced so far durable, outside the pipeline (used
    /// at start and when leaving).
    async fn flush_now(&mut self) -> Result<(), NodeError> {
        let mut batch = Batch::default();
        self.collect(&mut batch);
        let (result, batch) = self
            .start_commit(batch)
            .await
            .map_err(|_| NodeError::Stopped)?;
        result?;
        self.publish(batch.changed, batch.publish);
        self.flush_gossip();
        for e in batch.effects {
            self.effect(e);
        }
        Ok(())
    }

    /// Spreads committed local changes by gossip: at once when nothing was
    /// published within [`GOSSIP_WINDOW`], else with the changes that follow
    /// until the window has passed.
    fn publish(&mut self, changed: Vec<Delta>, gossip_only: Vec<Delta>) {
        self.outbox.deltas.extend(changed);
        self.outbox.deltas.extend(gossip_only);
        if self
            .outbox
            .due()
            .is_some_and(|due| due <= tokio::time::Instant::now())
        {
            self.flush_gossip();
        }
    }

    /// Publishes every change waiting in the outbox.
    fn flush_gossip(&mut self) {
        if self.outbox.deltas.is_empty() {
            return;
        }
        let messages = wire::gossip_chunks(&self.outbox.deltas, wire::MAX_GOSSIP_BYTES);
        self.outbox.deltas.clear();
        self.outbox.last = Some(tokio::time::Instant::now());
        self.net.publish(messages);
    }

    fn exec_done(&mut self, id: TaskId, fence: Fence, outcome: Option<Outcome>) {
        if self.running.get(&id).is_some_and(|(f, _)| *f == fence) {
            self.running.remove(&id);
        }
        let Some(outcome) = outcome else { return };
        let label = if matches!(outcome, Outcome::Success(_)) {
            "succeeded"
        } else {
            "failed"
        };
        match self.engine.complete(now(), &id, fence, outcome) {
            Ok(()) => self.handle.metrics.attempt(label),
            Err(e) => {
                self.handle.metrics.attempt("refused");
                debug!(task = %id, %fence, error = %e, "handler outcome refused");
            }
        }
    }

    fn report_load(&mut self) {
        let (cpu, mem, disk) = sysload::sample(&self.handle.info.config.data_dir);
        self.engine.report_load(now(), cpu, mem, disk);
    }

    async fn leave(&mut self) {
        info!("leaving: handing tasks back");
        self.engine.leave(now());
        if let Err(e) = self.flush_now().await {
            error!(error = %e, "final commit failed");
        }
        // Give the departure and the handed-back tasks a moment on the wire.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(ev) =
            tokio::time::timeout_at(deadline, self.net.swarm.select_next_some()).await
        {
            let _ = self.net.handle(ev);
        }
    }

    /// Acts on what the network reported.
    fn on_net(&mut self, event: NetEvent) {
        match event {
            NetEvent::Gossip { data, via, id } => {
                match wire::decode::<Gossip>(&data, wire::MAX_GOSSIP_BYTES) {
                    Ok(Gossip::Deltas(deltas)) => {
                        self.net.accept(&id, &via);
                        let t = now();
                        for d in deltas {
                            self.engine.apply_remote(t, d);
                        }
                    }
                    Err(e) => self.net.reject(&id, &via, &e.to_string()),
                }
            }
            NetEvent::SyncRequest {
                peer,
                data,
                channel,
            } => {
                let answer = match wire::decode::<SyncRequest>(&data, wire::MAX_SYNC_BYTES) {
                    Ok(SyncRequest::Summary) => SyncResponse::Summary(self.engine.sync_summary()),
                    Ok(SyncRequest::Leaves(buckets)) => {
                        SyncResponse::Leaves(self.engine.sync_leaves(&buckets))
                    }
                    Ok(SyncRequest::Diff { cells, have }) => {
                        fit(self.engine.sync_missing(&cells, &have))
                    }
                    Err(e) => {
                        self.handle.metrics.drop_reason("sync_malformed");
                        warn!(%peer, error = %e, "malformed sync request");
                        SyncResponse::Refused(e.to_string())
                    }
                };
                self.net.respond(channel, wire::encode(&answer));
            }
            NetEvent::SyncResponse { peer, data } => self.on_sync_response(peer, data),
            NetEvent::Connected(peer) => {
                self.initial_sync.insert(peer);
                self.net.request(peer, wire::encode(&SyncRequest::Summary));
            }
            NetEvent::SyncFailed(peer) => {
                // The exchange is over; a later round or reconnect starts anew.
                self.initial_sync.remove(&peer);
                self.resync.remove(&peer);
            }
        }
    }

    fn on_sync_response(&mut self, peer: PeerId, data: Vec<u8>) {
        match wire::decode::<SyncResponse>(&data, wire::MAX_SYNC_BYTES) {
            Ok(SyncResponse::Summary(theirs)) => {
                let diff = sync::differing(&self.engine.sync_summary(), &theirs);
                if diff.is_empty() {
                    self.initial_sync.remove(&peer);
                    return;
                }
                // Catching up after connecting, go on until nothing differs;
                // otherwise the next round takes the rest (under load every
                // bucket differs for a moment, and rounds must not run back
                // to back).
                if diff.len() == sync::MAX_PULL && self.initial_sync.contains(&peer) {
                    self.resync.insert(peer);
                }
                self.net
                    .request(peer, wire::encode(&SyncRequest::Leaves(diff)));
            }
            Ok(SyncResponse::Leaves(theirs)) => {
                let cells = self.engine.sync_differing_cells(&theirs);
                if cells.is_empty() {
                    // What differed is no longer different (it was in flight).
                    if self.resync.remove(&peer) {
                        self.net.request(peer, wire::encode(&SyncRequest::Summary));
                    } else {
                        self.initial_sync.remove(&peer);
                    }
                    return;
                }
                let (taken, have) = self.engine.sync_have(&cells);
                if taken.len() < cells.len() && self.initial_sync.contains(&peer) {
                    self.resync.insert(peer);
                }
                let cells = taken;
                debug!(%peer, cells = cells.len(), entries = have.len(), "asking for differing entries");
                self.net
                    .request(peer, wire::encode(&SyncRequest::Diff { cells, have }));
            }
            Ok(SyncResponse::Deltas { deltas, more }) => {
                self.handle.metrics.sync_entries.inc_by(deltas.len() as u64);
                let t = now();
                let mut changed = 0usize;
                for d in deltas {
                    changed += usize::from(self.engine.apply_remote(t, d));
                }
                let again = self.resync.remove(&peer) || more;
                let initial = if again {
                    self.initial_sync.contains(&peer)
                } else {
                    self.initial_sync.remove(&peer)
                };
                if changed > 0 && !initial {
                    // Entries that gossip had not brought: lost, or still in
                    // flight when the summaries were taken.
                    self.handle.metrics.divergences.inc();
                    let _ = self.handle.events.send(Event::Alert {
                        kind: "divergence_repaired".into(),
                        message: format!(
                            "anti-entropy with peer {peer} brought {changed} entr{} that gossip had not",
                            if changed == 1 { "y" } else { "ies" }
                        ),
                    });
                }
                if again {
                    self.net.request(peer, wire::encode(&SyncRequest::Summary));
                }
            }
            Ok(SyncResponse::Refused(why)) => warn!(%peer, %why, "peer refused our sync request"),
            Err(e) => {
                self.handle.metrics.drop_reason("sync_malformed");
                warn!(%peer, error = %e, "malformed sync response");
            }
        }
    }

    /// Compares digests with a random peer (which repairs what gossip lost).
    fn anti_entropy(&mut self) {
        let peers = self.net.peers();
        if peers.is_empty() {
            return;
        }
        let peer = peers[rand::random::<u32>() as usize % peers.len()];
        self.net.request(peer, wire::encode(&SyncRequest::Summary));
    }

    /// Dials bootstrap peers when alone, and known members we are not
    /// connected to (so that split groups find each other again). Returns
    /// true when this node has no peer.
    fn redial(&mut self) -> bool {
        let alone = self.net.peers().is_empty();
        if alone {
            self.net.dial_bootstrap();
        }
        let addrs: Vec<String> = self
            .engine
            .other_members_in_service()
            .iter()
            .filter_map(|id| self.engine.state().members.get(id))
            .flat_map(|m| m.record().addrs.clone())
            .collect();
        self.net.dial_known(&addrs);
        alone
    }

    /// After a failed commit: stop handlers and reload the engine from disk.
    async fn rebuild(&mut self) {
        for (_, (_, cancel)) in self.running.drain() {
            let _ = cancel.send(());
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.load()).await {
            Ok(Ok(state)) => {
                self.engine = Engine::new(self.engine_cfg.clone(), state, rand::random());
                self.engine.start(now());
                warn!("engine rebuilt from the store after a failed commit");
            }
            Ok(Err(e)) => error!(error = %e, "cannot reload the store"),
            Err(_) => error!("store reload panicked"),
        }
    }

    fn effect(&mut self, out: Output) {
        match out {
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
            Output::Changed(_) | Output::Merged(_) | Output::Gossip(_) | Output::Audit(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delta() -> Delta {
        Delta::Policy {
            ns: "n".into(),
            policy: Default::default(),
        }
    }

    #[tokio::test]
    async fn the_outbox_sends_at_once_after_quiet_and_holds_changes_within_the_window() {
        let mut outbox = Outbox::default();
        assert_eq!(outbox.due(), None, "nothing waits");
        outbox.deltas.push(delta());
        let now = tokio::time::Instant::now();
        assert!(
            outbox.due().expect("a change waits") <= tokio::time::Instant::now(),
            "first change after quiet is due at once"
        );
        outbox.last = Some(now);
        assert_eq!(outbox.due(), Some(now + GOSSIP_WINDOW));
        outbox.deltas.clear();
        assert_eq!(outbox.due(), None);
    }
}
