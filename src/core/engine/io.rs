//! What goes into the engine and what comes out of it.
//!
//! Everything here is plain data: a simulator or a test can generate,
//! record, print and replay inputs, and check outputs, without a runtime.

use crate::core::error::EngineError;
use crate::core::event::{AuditRecord, Event};
use crate::core::ids::{Fence, NodeId, TaskId};
use crate::core::knowledge::Policy;
use crate::core::lease::ControlDisk;
use crate::core::placement::Strategy;
use crate::core::replica::{Claimed, KvWrite, Outcome, StartTask, SubmitRequest};
use crate::core::state::Delta;
use std::sync::Arc;

/// A request's id, chosen by the caller; its [`Output::Reply`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);

/// A batch of changes the engine asked to persist ([`Output::Persist`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

/// The caller's handle on a gossip message that waits for the engine's
/// verdict (gossipsub forwards a message only once it is accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgRef(pub u64);

/// The caller's handle on an inbound sync request, to route the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncRef(pub u64);

/// The engine's timers. Each kind is armed at most once at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Deadlines and claims, queued and pending tasks.
    Tick,
    /// The failure detector: the next probe, a probe's timeout, a
    /// suspicion running out (armed for whichever is due first).
    Detect,
    /// A look at this node's load: reported in its member record when it
    /// changed by more than a threshold.
    Load,
    /// An anti-entropy round with a random peer.
    AntiEntropy,
    /// Dialing members this node is not connected to (and bootstrap peers
    /// when it has none).
    Redial,
    /// Publishing changes that waited for the gossip window.
    GossipFlush,
    /// The control plane's Raft tick.
    Control,
}

impl TimerKind {
    /// Every kind, in a fixed order.
    pub const ALL: [TimerKind; 7] = [
        TimerKind::Tick,
        TimerKind::Detect,
        TimerKind::Load,
        TimerKind::AntiEntropy,
        TimerKind::Redial,
        TimerKind::GossipFlush,
        TimerKind::Control,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A timer's token: its kind and the generation it was armed with. A token
/// whose timer was re-armed or cancelled since is stale and is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token {
    /// Which timer.
    pub kind: TimerKind,
    /// When it was armed (a counter, not a time).
    pub generation: u64,
}

/// An operation asked of the node (by the API, the CLI or a test).
#[derive(Clone, Debug)]
pub enum Command {
    /// Write a knowledge value.
    KvPut {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Value.
        value: serde_json::Value,
    },
    /// Delete a knowledge key.
    KvDel {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// Set a namespace's conflict policy.
    SetPolicy {
        /// Namespace.
        ns: String,
        /// Policy.
        policy: Policy,
    },
    /// Set the cluster's default placement strategy.
    SetStrategy(Strategy),
    /// Submit a task.
    Submit(SubmitRequest),
    /// Cancel a task.
    Cancel(TaskId),
    /// An external worker claims the next task it can run.
    Claim {
        /// The worker's name.
        worker: String,
        /// What it runs.
        capabilities: Vec<String>,
    },
    /// A worker keeps its claim alive.
    Heartbeat {
        /// The task.
        task: TaskId,
        /// The fence it was given.
        fence: Fence,
    },
    /// A worker reports how an attempt ended.
    Complete {
        /// The task.
        task: TaskId,
        /// The fence it was given.
        fence: Fence,
        /// Result or error.
        outcome: Outcome,
    },
    /// Drain a node (stop placing on it).
    Drain(NodeId),
    /// Force-remove a dead or departed member.
    Remove(NodeId),
    /// Answered once every change before it is durable: what a read that
    /// must see its own writes waits for.
    Barrier,
    /// Leave gracefully: hand tasks back and announce departure.
    Leave,
    /// An operator's recovery from a lost majority of the control plane's
    /// voters (see `Control::recover`).
    RecoverControl,
}

/// A successful command's answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Done; nothing to return.
    Done,
    /// A knowledge write, as written (resolve it outside the owner).
    Written(KvWrite),
    /// A submission: the task and whether it was created (false for a
    /// repeated idempotency key).
    Submitted {
        /// The task.
        id: TaskId,
        /// True when new.
        created: bool,
    },
    /// A claim: the task, or none waiting.
    Claimed(Option<Claimed>),
    /// A claim heartbeat: the claim's new lifetime in ms.
    ClaimTtl(u64),
    /// The control plane recovered: this node holds the lease in `term`,
    /// `lost` were left out.
    Recovered {
        /// The new term.
        term: u64,
        /// The voters left out as lost.
        lost: Vec<NodeId>,
    },
}

/// A load sample of this node, fractions of 0.0 to 1.0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadSample {
    /// CPU.
    pub cpu: f32,
    /// Memory.
    pub memory: f32,
    /// Disk of the data dir.
    pub disk: f32,
}

/// What the engine is told.
#[derive(Clone, Debug)]
pub enum Input {
    /// The node starts: announce a new incarnation, arm the timers.
    Start,
    /// An operation with the id its reply will carry.
    Command(ReqId, Command),
    /// A gossip message from a peer (still encoded).
    Gossip {
        /// The peer it came from (publisher or forwarder).
        from: NodeId,
        /// The caller's handle for the verdict.
        msg: MsgRef,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A peer asks for sync data.
    SyncRequest {
        /// Who asks.
        from: NodeId,
        /// Where the answer goes.
        id: SyncRef,
        /// The encoded request.
        bytes: Vec<u8>,
    },
    /// A failure-detection packet from a peer (SWIM: ping, ack, ping
    /// request, nack, with membership updates).
    Probe {
        /// The peer.
        from: NodeId,
        /// The encoded packet.
        bytes: Vec<u8>,
    },
    /// A peer answered our sync request.
    SyncResponse {
        /// Who answered.
        from: NodeId,
        /// The encoded answer.
        bytes: Vec<u8>,
    },
    /// A sync request of ours got no answer (timeout, connection closed).
    SyncFailed {
        /// The peer asked.
        from: NodeId,
    },
    /// A first connection to a peer.
    PeerUp(NodeId),
    /// The last connection to a peer closed.
    PeerDown(NodeId),
    /// A timer fired.
    Timer(Token),
    /// A handler finished (or was aborted: `outcome` is `None`).
    HandlerDone {
        /// The task.
        task: TaskId,
        /// The fence it ran under.
        fence: Fence,
        /// How it ended.
        outcome: Option<Outcome>,
    },
    /// A batch is durable (synced if it asked to be).
    Persisted(BatchId),
    /// A batch could not be persisted; nothing in it may be acknowledged.
    /// The caller rebuilds the engine from its store afterwards.
    PersistFailed {
        /// The batch.
        batch: BatchId,
        /// Why, for the replies.
        reason: String,
    },
    /// The latest load sample (answers [`Output::SampleLoad`]).
    Load(LoadSample),
}

/// A batch of changes to make durable.
#[derive(Clone, Debug)]
pub struct Persist {
    /// Which batch: answer with [`Input::Persisted`] or
    /// [`Input::PersistFailed`].
    pub id: BatchId,
    /// This node's own changes. Shared: the engine gossips them once the
    /// batch is durable.
    pub changed: Arc<Vec<Delta>>,
    /// Entries merged from peers.
    pub merged: Vec<Delta>,
    /// Audit records.
    pub audit: Vec<AuditRecord>,
    /// True when the batch must be synced to disk before it is confirmed
    /// (it holds local changes, audit records or control state); merged
    /// entries alone may be buffered.
    pub synced: bool,
    /// The control plane's state, to store whole (replacing the last).
    pub control: Option<Box<ControlDisk>>,
}

/// A counter the caller keeps (metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// A handler's attempt succeeded.
    AttemptSucceeded,
    /// A handler's attempt failed.
    AttemptFailed,
    /// A handler's outcome was refused (stale fence, task moved on).
    AttemptRefused,
    /// Entries received by anti-entropy.
    SyncEntries,
    /// A sync message that did not decode.
    SyncMalformed,
    /// An anti-entropy exchange that repaired what gossip had not brought.
    DivergenceRepaired,
    /// Deltas from peers refused as unsound (see `core::validate`).
    DeltaRefused,
    /// Direct probes sent.
    ProbeSent,
    /// Probes that got no ack, direct or relayed.
    ProbeFailed,
    /// Indirect probes asked of other members.
    IndirectProbe,
    /// Suspicions raised here or first heard of here.
    SuspicionRaised,
    /// Suspicions refuted (about other members or about this node).
    SuspicionRefuted,
    /// Failure-detection packets that did not decode or were unsound.
    ProbeMalformed,
}

/// What the engine asks the caller to do.
#[derive(Clone, Debug)]
pub enum Output {
    /// The answer to a command (success only once its changes are durable).
    Reply(ReqId, Result<Answer, EngineError>),
    /// Make a batch durable, then confirm it.
    Persist(Persist),
    /// Publish one encoded gossip message.
    Publish(Vec<u8>),
    /// Send an encoded sync request to a peer.
    Send {
        /// The peer.
        to: NodeId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Send an encoded failure-detection packet to a member: a datagram,
    /// not a connection (the runtime picks the probe address among
    /// `addrs`).
    Probe {
        /// The member.
        to: NodeId,
        /// The addresses of its member record (empty when unknown).
        addrs: Vec<String>,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Answer a peer's sync request.
    Respond {
        /// The peer.
        to: NodeId,
        /// Which request.
        id: SyncRef,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The verdict on a gossip message: forward it, or drop it and count it
    /// against the peer.
    Verdict {
        /// The message.
        msg: MsgRef,
        /// The peer it came from.
        from: NodeId,
        /// `None` to accept, else why it was rejected.
        rejected: Option<String>,
    },
    /// Dial a member at its addresses.
    Dial {
        /// The member.
        node: NodeId,
        /// Its addresses.
        addrs: Vec<String>,
    },
    /// Dial the configured bootstrap peers (this node has no peer).
    DialBootstrap,
    /// Close the connection to a peer (more than `max_connections`).
    Disconnect(NodeId),
    /// Run a task with a handler.
    Start(StartTask),
    /// Stop a running handler.
    Abort {
        /// The task.
        task: TaskId,
        /// The fence of the run to stop.
        fence: Fence,
    },
    /// An event for the stream (after the changes it reports are durable).
    Event(Event),
    /// Tasks wait for external workers: wake long-polling claims.
    WorkAvailable,
    /// Take a load sample and hand it back with [`Input::Load`].
    SampleLoad,
    /// Add to a counter.
    Count(Counter, u64),
}
