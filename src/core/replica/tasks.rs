//! Task operations of the engine: submit, place, run, claim, complete,
//! retry, cancel.

use super::{Effect, LocalRun, Replica, StartTask};
use crate::core::error::EngineError;
use crate::core::event::Event;
use crate::core::ids::{Fence, Millis, NodeId, TaskId};
use crate::core::knowledge::canonical_json;
use crate::core::member::MemberStatus;
use crate::core::placement::{self, Candidate, Draw, Strategy};
use crate::core::task::{TaskEntry, TaskSpec, TaskState, TaskStatus};

/// Largest accepted `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Largest accepted per-attempt timeout (one day), in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// A submission.
#[derive(Clone, Debug, Default)]
pub struct SubmitRequest {
    /// Required capability.
    pub capability: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// Idempotency key.
    pub key: Option<String>,
    /// Strategy override.
    pub strategy: Option<Strategy>,
    /// Affinity key for `hash`.
    pub affinity: Option<String>,
    /// Attempts before failing (default 3).
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in seconds (default 300).
    pub timeout_secs: Option<u64>,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// With a result (JSON text).
    Success(String),
    /// With an error message.
    Failure(String),
}

/// A task handed to an external worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The task.
    pub id: TaskId,
    /// Its capability.
    pub capability: String,
    /// Payload JSON text.
    pub payload: String,
    /// The fence to report under.
    pub fence: Fence,
    /// The attempt.
    pub attempt: u32,
    /// How long the claim lives without a heartbeat, in ms.
    pub claim_ttl_ms: u64,
}

/// What one pass of [`Replica::migrate_orphans`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Tasks moved (or failed past their last attempt).
    pub moved: usize,
    /// The highest term of an orphan's fence above the holder's own term:
    /// such a task waits until the holder's term passes it.
    pub fenced_above: Option<crate::core::ids::Term>,
}

impl Replica {
    /// Accepts a task. Returns its id and whether it was created (false when
    /// the idempotency key named an existing task).
    pub fn submit(
        &mut self,
        now: Millis,
        req: SubmitRequest,
    ) -> Result<(TaskId, bool), EngineError> {
        let spec = self.validate_submit(now, req)?;
        if let Some(key) = &spec.key {
            if let Some(existing) = self.keys.get(key) {
                return Ok((existing.clone(), false));
            }
        }
        let id = TaskId(format!(
            "{:016x}{:06x}",
            self.rng.next_u64(),
            self.next_seq() & 0xff_ffff
        ));
        let mut entry = TaskEntry::new(&id, spec, &self.cfg.keys);
        let placed = self.placement(&id, &entry, None);
        let me = self.cfg.node.clone();
        let state = match placed {
            Ok(node) => assigned_state(
                now,
                node,
                1,
                Fence {
                    term: self.term,
                    seq: 1,
                },
            ),
            Err(reason) => TaskState {
                status: TaskStatus::Pending,
                reason: Some(reason),
                updated_at: now,
                ..TaskState::default()
            },
        };
        entry.transition(&id, state.clone(), "submitted", &me, &self.cfg.keys);
        self.announce_placement(&id, &state);
        self.put_task(now, id.clone(), entry, true);
        Ok((id, true))
    }

    fn validate_submit(&self, now: Millis, req: SubmitRequest) -> Result<TaskSpec, EngineError> {
        let invalid = |m: &str| Err(EngineError::Invalid(m.to_owned()));
        if req.capability.trim().is_empty() {
            return invalid("capability must not be empty");
        }
        if req.capability.len() > 128 {
            return invalid("capability is longer than 128 bytes");
        }
        let max_attempts = req.max_attempts.unwrap_or(3);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return invalid("max_attempts must be between 1 and 100");
        }
        let timeout_secs = req.timeout_secs.unwrap_or(300);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
            return invalid("timeout_secs must be between 1 and 86400");
        }
        if matches!(&req.key, Some(k) if k.is_empty() || k.len() > 256) {
            return invalid("key must be 1 to 256 bytes");
        }
        let payload = canonical_json(&req.payload);
        super::kv::check_size("payload", payload.len())?;
        Ok(TaskSpec {
            capability: req.capability,
            payload,
            key: req.key,
            strategy: req.strategy.map(|s| s.as_str().to_owned()),
            affinity: req.affinity,
            max_attempts,
            timeout_secs,
            submitted_by: self.cfg.node.clone(),
            submitted_at: now,
        })
    }

    /// Chooses a node for a task, or says why none can take it.
    fn placement(
        &mut self,
        id: &TaskId,
        entry: &TaskEntry,
        exclude: Option<&NodeId>,
    ) -> Result<NodeId, String> {
        let spec = entry.spec();
        let mut capable = 0;
        let mut candidates = Vec::new();
        for (node, member) in &self.state.members {
            let rec = member.record();
            if !self.can_take_work(node) || !rec.capabilities.contains(&spec.capability) {
                continue;
            }
            capable += 1;
            let running = self.active.get(node).copied().unwrap_or(0);
            if running >= rec.capacity || Some(node) == exclude {
                continue;
            }
            candidates.push(Candidate {
                id: node.clone(),
                capacity: rec.capacity,
                running,
                cpu: rec.load.cpu,
                memory: rec.load.memory,
            });
        }
        if candidates.is_empty() {
            return Err(if capable == 0 {
                format!("no alive node offers capability `{}`", spec.capability)
            } else {
                format!(
                    "all {capable} node(s) offering `{}` are full",
                    spec.capability
                )
            });
        }
        let strategy = spec
            .strategy
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| self.default_strategy());
        self.cursor = self.cursor.wrapping_add(1);
        let draw = Draw {
            cursor: self.cursor,
            random: self.rng.next_u64(),
            key: spec.affinity.as_deref().unwrap_or(id.as_str()),
        };
        let pick = placement::choose(strategy, &candidates, draw).unwrap_or(0);
        Ok(candidates.swap_remove(pick).id)
    }

    fn announce_placement(&mut self, id: &TaskId, state: &TaskState) {
        let event = match (&state.status, &state.node) {
            (TaskStatus::Assigned, Some(node)) => Event::TaskPlaced {
                task: id.clone(),
                node: node.clone(),
                fence: state.fence,
            },
            _ => Event::TaskPending {
                task: id.clone(),
                reason: state.reason.clone().unwrap_or_default(),
            },
        };
        self.emit(Effect::Event(event));
    }

    /// What this node does when a task's state changed: start it, queue it
    /// for workers, or stop a run whose fence is gone.
    pub(super) fn react(&mut self, now: Millis, id: &TaskId, st: &TaskState) {
        if let Some(run) = self.local.get(id) {
            let still_ours = st.status == TaskStatus::Running
                && st.fence == run.fence
                && st.node.as_ref() == Some(&self.cfg.node);
            if !still_ours {
                let fence = run.fence;
                self.local.remove(id);
                if !matches!(st.status, TaskStatus::Succeeded | TaskStatus::Failed)
                    || st.fence != fence
                {
                    self.emit(Effect::Abort {
                        task: id.clone(),
                        fence,
                    });
                }
            }
        }
        if st.status.is_terminal() || st.status == TaskStatus::Assigned {
            self.pending_dirty = true;
        }
        if st.status == TaskStatus::Assigned && st.node.as_ref() == Some(&self.cfg.node) {
            self.start_queued(now);
        }
    }

    /// Starts queued tasks that a handler runs, while handler slots are free,
    /// and wakes workers for the rest.
    pub(super) fn start_queued(&mut self, now: Millis) {
        if self.queued.is_empty() || self.holding() {
            return;
        }
        let capacity = self.cfg.record.capacity as usize;
        let queued: Vec<(Millis, TaskId)> = self.queued.iter().cloned().collect();
        let mut for_workers = false;
        for (_, id) in queued {
            let Some(entry) = self.state.tasks.get(&id) else {
                continue;
            };
            if !self.cfg.handlers.contains(&entry.spec().capability) {
                for_workers = true;
                continue;
            }
            if self.local.len() >= capacity {
                break;
            }
            let mut entry = entry.clone();
            let mut st = entry.state().clone();
            st.status = TaskStatus::Running;
            st.started_at = Some(now);
            st.updated_at = now;
            let me = self.cfg.node.clone();
            if !entry.transition(&id, st.clone(), "started by handler", &me, &self.cfg.keys) {
                continue;
            }
            self.local.insert(
                id.clone(),
                LocalRun {
                    fence: st.fence,
                    deadline: self
                        .mono
                        .plus(entry.spec().timeout_secs.saturating_mul(1000)),
                    claim: None,
                },
            );
            self.emit(Effect::Start(StartTask {
                id: id.clone(),
                capability: entry.spec().capability.clone(),
                payload: entry.spec().payload.clone(),
                fence: st.fence,
                attempt: st.attempt,
                timeout_secs: entry.spec().timeout_secs,
            }));
            self.emit(Effect::Event(Event::TaskStarted {
                task: id.clone(),
                node: me,
                attempt: st.attempt,
            }));
            self.put_task(now, id, entry, true);
        }
        if for_workers {
            self.emit(Effect::WorkAvailable);
        }
    }

    /// An external worker claims the oldest queued task of one of
    /// `capabilities` on this node.
    pub fn claim(
        &mut self,
        now: Millis,
        worker: &str,
        capabilities: &[String],
    ) -> Result<Option<Claimed>, EngineError> {
        if worker.is_empty() || worker.len() > 128 {
            return Err(EngineError::Invalid("worker must be 1 to 128 bytes".into()));
        }
        if self.is_draining() || self.holding() {
            return Ok(None);
        }
        let found = self.queued.iter().find_map(|(_, id)| {
            let spec = self.state.tasks.get(id)?.spec();
            (capabilities.contains(&spec.capability)
                && !self.cfg.handlers.contains(&spec.capability))
            .then(|| id.clone())
        });
        let Some(id) = found else { return Ok(None) };
        let mut entry = self.state.tasks[&id].clone();
        let mut st = entry.state().clone();
        st.status = TaskStatus::Running;
        st.worker = Some(worker.to_owned());
        st.started_at = Some(now);
        st.updated_at = now;
        let me = self.cfg.node.clone();
        entry.transition(
            &id,
            st.clone(),
            &format!("claimed by worker {worker}"),
            &me,
            &self.cfg.keys,
        );
        self.local.insert(
            id.clone(),
            LocalRun {
                fence: st.fence,
                deadline: self
                    .mono
                    .plus(entry.spec().timeout_secs.saturating_mul(1000)),
                claim: Some((worker.to_owned(), self.mono.plus(self.cfg.claim_ttl_ms))),
            },
        );
        let claimed = Claimed {
            id: id.clone(),
            capability: entry.spec().capability.clone(),
            payload: entry.spec().payload.clone(),
            fence: st.fence,
            attempt: st.attempt,
            claim_ttl_ms: self.cfg.claim_ttl_ms,
        };
        self.emit(Effect::Event(Event::TaskStarted {
            task: id.clone(),
            node: me,
            attempt: st.attempt,
        }));
        self.put_task(now, id, entry, true);
        Ok(Some(claimed))
    }

    fn is_draining(&self) -> bool {
        self.state
            .members
            .get(&self.cfg.node)
            .is_some_and(|m| m.record().status != MemberStatus::Alive)
    }

    fn check_fence(&self, id: &TaskId, fence: Fence) -> Result<&TaskEntry, EngineError> {
        let entry = self.task(id)?;
        let st = entry.state();
        if st.fence != fence {
            return Err(EngineError::StaleFence {
                task: id.clone(),
                given: fence,
                current: st.fence,
            });
        }
        if st.status != TaskStatus::Running || !self.local.contains_key(id) {
            return Err(EngineError::Conflict(format!(
                "task {id} is {} on {}, not running here",
                st.status.as_str(),
                st.node.as_ref().map(|n| n.as_str()).unwrap_or("no node")
            )));
        }
        Ok(entry)
    }

    /// A worker keeps its claim alive (the claim runs on the monotonic
    /// clock; `_now` is kept for symmetry with the other operations).
    /// Returns the claim's new lifetime in ms.
    pub fn heartbeat(
        &mut self,
        _now: Millis,
        id: &TaskId,
        fence: Fence,
    ) -> Result<u64, EngineError> {
        self.check_fence(id, fence)?;
        let ttl = self.cfg.claim_ttl_ms;
        if let Some(LocalRun {
            claim: Some((_, expires)),
            ..
        }) = self.local.get_mut(id)
        {
            *expires = self.mono.plus(ttl);
        }
        Ok(ttl)
    }

    /// Records how an attempt ended (from a handler or a worker). A success
    /// finishes the task; a failure retries it while attempts remain.
    pub fn complete(
        &mut self,
        now: Millis,
        id: &TaskId,
        fence: Fence,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        self.check_fence(id, fence)?;
        let (Outcome::Success(text) | Outcome::Failure(text)) = &outcome;
        super::kv::check_size("result", text.len())?;
        self.local.remove(id);
        self.finish_attempt(now, id, outcome);
        Ok(())
    }

    fn finish_attempt(&mut self, now: Millis, id: &TaskId, outcome: Outcome) {
        let Some(mut entry) = self.state.tasks.get(id).cloned() else {
            return;
        };
        let me = self.cfg.node.clone();
        let prev = entry.state().clone();
        let (state, note) = match outcome {
            Outcome::Success(result) => (
                TaskState {
                    status: TaskStatus::Succeeded,
                    result: Some(result),
                    error: None,
                    updated_at: now,
                    ..prev.clone()
                },
                "succeeded".to_owned(),
            ),
            Outcome::Failure(error) if prev.attempt < entry.spec().max_attempts => {
                let fence = self.next_fence(prev.fence);
                let placed = self.placement(id, &entry, None);
                let mut st = match placed {
                    Ok(node) => assigned_state(now, node, prev.attempt + 1, fence),
                    Err(reason) => TaskState {
                        status: TaskStatus::Pending,
                        attempt: prev.attempt,
                        fence,
                        reason: Some(reason),
                        updated_at: now,
                        ..TaskState::default()
                    },
                };
                st.error = Some(error.clone());
                self.announce_placement(id, &st);
                (
                    st,
                    format!("attempt {} failed: {error}; retrying", prev.attempt),
                )
            }
            Outcome::Failure(error) => (
                TaskState {
                    status: TaskStatus::Failed,
                    error: Some(error.clone()),
                    updated_at: now,
                    ..prev.clone()
                },
                format!("attempt {} failed: {error}; no attempts left", prev.attempt),
            ),
        };
        let status = state.status;
        entry.transition(id, state, &note, &me, &self.cfg.keys);
        if status.is_terminal() {
            self.emit(Effect::Event(Event::TaskFinished {
                task: id.clone(),
                status,
            }));
        }
        self.put_task(now, id.clone(), entry, true);
    }

    /// Cancels a task that has not finished.
    pub fn cancel(&mut self, now: Millis, id: &TaskId) -> Result<(), EngineError> {
        let entry = self.task(id)?;
        let prev = entry.state().clone();
        if prev.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "task {id} already {}",
                prev.status.as_str()
            )));
        }
        let mut entry = entry.clone();
        let me = self.cfg.node.clone();
        let st = TaskState {
            status: TaskStatus::Cancelled,
            updated_at: now,
            ..prev
        };
        entry.transition(id, st, "cancelled", &me, &self.cfg.keys);
        self.emit(Effect::Event(Event::TaskFinished {
            task: id.clone(),
            status: TaskStatus::Cancelled,
        }));
        self.put_task(now, id.clone(), entry, true);
        Ok(())
    }

    /// Fails attempts whose timeout passed and gives back claims whose worker
    /// stopped heartbeating.
    pub(super) fn expire_local(&mut self, now: Millis) {
        let mono = self.mono;
        let expired: Vec<(TaskId, Fence, String)> = self
            .local
            .iter()
            .filter_map(|(id, run)| {
                if mono >= run.deadline {
                    return Some((id.clone(), run.fence, "timed out".to_owned()));
                }
                match &run.claim {
                    Some((worker, expires)) if mono >= *expires => Some((
                        id.clone(),
                        run.fence,
                        format!("worker {worker} stopped heartbeating; claim given back"),
                    )),
                    _ => None,
                }
            })
            .collect();
        for (id, fence, why) in expired {
            self.local.remove(&id);
            self.emit(Effect::Abort {
                task: id.clone(),
                fence,
            });
            self.finish_attempt(now, &id, Outcome::Failure(why));
        }
    }

    /// Whether this node may place a pending task: one authority per task,
    /// so that two nodes never place it at once (each would start it under
    /// the same fence). Its submitter while it is a member in service (not
    /// leaving); once the submitter is dead, left or removed, the lease
    /// holder.
    fn may_place(&self, entry: &TaskEntry) -> bool {
        let submitter = &entry.spec().submitted_by;
        if *submitter == self.cfg.node {
            return !self.leaving;
        }
        self.holds_lease && self.unfit(submitter).is_some_and(|why| why != "draining")
    }

    /// Places the pending tasks this node is the authority for (see
    /// [`Replica::may_place`]), oldest first, while nodes can take them.
    pub(super) fn place_pending(&mut self, now: Millis) {
        let pending: Vec<(Millis, TaskId)> = self.pending.iter().cloned().collect();
        let mut blocked: Vec<String> = Vec::new();
        for (_, id) in pending {
            let Some(entry) = self.state.tasks.get(&id).cloned() else {
                continue;
            };
            if blocked.contains(&entry.spec().capability) || !self.may_place(&entry) {
                continue;
            }
            let prev = entry.state().clone();
            match self.placement(&id, &entry, None) {
                Ok(node) => {
                    let fence = self.next_fence(prev.fence);
                    let mut st = assigned_state(now, node, prev.attempt + 1, fence);
                    st.error = prev.error.clone();
                    let mut entry = entry;
                    let me = self.cfg.node.clone();
                    entry.transition(&id, st.clone(), "placed", &me, &self.cfg.keys);
                    self.announce_placement(&id, &st);
                    self.put_task(now, id, entry, true);
                }
                Err(_) => blocked.push(entry.spec().capability.clone()),
            }
        }
    }

    /// Hands this node's tasks back before it leaves: running and queued
    /// tasks get a new fence (so a late result of the old run is refused)
    /// and are placed on another node, or wait as pending.
    pub(super) fn requeue_local(&mut self, now: Millis) {
        let me = self.cfg.node.clone();
        let mine: Vec<TaskId> = self
            .state
            .tasks
            .iter()
            .filter(|(_, t)| {
                matches!(t.state().status, TaskStatus::Assigned | TaskStatus::Running)
                    && t.state().node.as_ref() == Some(&me)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in mine {
            let Some(mut entry) = self.state.tasks.get(&id).cloned() else {
                continue;
            };
            let prev = entry.state().clone();
            let fence = self.next_fence(prev.fence);
            let st = match self.placement(&id, &entry, Some(&me)) {
                Ok(node) => assigned_state(now, node, prev.attempt, fence),
                Err(reason) => TaskState {
                    status: TaskStatus::Pending,
                    attempt: prev.attempt.saturating_sub(1),
                    fence,
                    reason: Some(reason),
                    updated_at: now,
                    ..TaskState::default()
                },
            };
            entry.transition(
                &id,
                st.clone(),
                "handed back: node leaving",
                &me,
                &self.cfg.keys,
            );
            self.announce_placement(&id, &st);
            self.put_task(now, id, entry, true);
        }
    }

    /// The fence of a task's next assignment: a higher sequence, under the
    /// newer of this node's term and the task's (a fence never goes back,
    /// so a task a lease holder moved is never pulled back by an older one).
    fn next_fence(&self, prev: Fence) -> Fence {
        Fence {
            term: self.term.max(prev.term),
            seq: prev.seq + 1,
        }
    }

    /// Why a node cannot keep its tasks: `dead`, `left` or `removed` for
    /// every task on it, `draining` for tasks not started. A node not heard
    /// of yet is not unfit: a task can arrive before its node's record (from
    /// a plane that yielded to this one, say), and moving or placing it
    /// then would run it twice.
    fn unfit(&self, node: &NodeId) -> Option<&'static str> {
        match self.state.members.get(node).map(|m| m.record().status) {
            None => None,
            Some(MemberStatus::Dead) => Some("dead"),
            Some(MemberStatus::Left) => Some("left"),
            Some(MemberStatus::Removed) => Some("removed"),
            Some(MemberStatus::Draining) => Some("draining"),
            Some(MemberStatus::Alive) => None,
        }
    }

    /// As lease holder in `term`: moves every task assigned to or running
    /// on a node that cannot run it (dead, left or removed; not yet started
    /// on a draining node) to a healthy capable node, under a new fence
    /// `(term, seq + 1)`, keeping payload, attempts and history, with an
    /// audit record each. An interrupted run counts as an attempt; one past
    /// `max_attempts` fails the task. Idempotent: a task already moved is
    /// on a fit node. A task fenced by a newer term than `term` (this node
    /// is a stale holder, or a plane that yielded to this one had fenced it
    /// in a higher term) is left alone and reported. Returns how many
    /// moved.
    pub fn migrate_orphans(&mut self, now: Millis, term: crate::core::ids::Term) -> Migration {
        let holders: Vec<NodeId> = self
            .active
            .iter()
            .filter(|(n, c)| **c > 0 && self.unfit(n).is_some())
            .map(|(n, _)| n.clone())
            .collect();
        if holders.is_empty() {
            return Migration::default();
        }
        let orphans: Vec<TaskId> = self
            .state
            .tasks
            .iter()
            .filter(|(_, t)| {
                let st = t.state();
                let Some(node) = st.node.as_ref().filter(|n| holders.contains(n)) else {
                    return false;
                };
                match st.status {
                    TaskStatus::Assigned => true,
                    TaskStatus::Running => self.unfit(node) != Some("draining"),
                    _ => false,
                }
            })
            .map(|(id, _)| id.clone())
            .collect();
        let me = self.cfg.node.clone();
        let mut done = Migration::default();
        for id in orphans {
            let Some(mut entry) = self.state.tasks.get(&id).cloned() else {
                continue;
            };
            let prev = entry.state().clone();
            if prev.fence.term > term {
                done.fenced_above = done.fenced_above.max(Some(prev.fence.term));
                continue;
            }
            let Some(from) = prev.node.clone() else {
                continue;
            };
            let why = self.unfit(&from).unwrap_or("unfit");
            let fence = Fence {
                term,
                seq: prev.fence.seq + 1,
            };
            let interrupted = prev.status == TaskStatus::Running;
            let attempt = prev.attempt + u32::from(interrupted);
            let (st, note) = if attempt > entry.spec().max_attempts {
                let error = format!("node {from} is {why}; it ran the last attempt");
                let st = TaskState {
                    status: TaskStatus::Failed,
                    error: Some(error.clone()),
                    fence,
                    updated_at: now,
                    ..prev.clone()
                };
                (st, format!("failed: {error}"))
            } else {
                match self.placement(&id, &entry, Some(&from)) {
                    Ok(node) => {
                        let mut st = assigned_state(now, node, attempt, fence);
                        st.error = prev.error.clone();
                        (st, format!("migrated: node {from} is {why}"))
                    }
                    Err(reason) => (
                        TaskState {
                            status: TaskStatus::Pending,
                            attempt: attempt.saturating_sub(1),
                            fence,
                            reason: Some(reason),
                            error: prev.error.clone(),
                            updated_at: now,
                            ..TaskState::default()
                        },
                        format!("migrated: node {from} is {why}; waiting for a node"),
                    ),
                }
            };
            let (status, to) = (st.status, st.node.clone());
            entry.transition(&id, st.clone(), &note, &me, &self.cfg.keys);
            match (&to, status) {
                (Some(to), TaskStatus::Assigned) => {
                    self.emit(Effect::Event(Event::TaskMigrated {
                        task: id.clone(),
                        from: from.clone(),
                        to: to.clone(),
                        fence,
                    }));
                }
                (_, TaskStatus::Failed) => self.emit(Effect::Event(Event::TaskFinished {
                    task: id.clone(),
                    status,
                })),
                _ => self.announce_placement(&id, &st),
            }
            self.emit(Effect::Audit(crate::core::event::AuditRecord {
                at: now,
                by: me.clone(),
                action: "task_migrated".into(),
                subject: id.to_string(),
                detail: format!(
                    "from {from} ({why}) to {} under fence {fence}",
                    to.as_ref()
                        .map_or("none (pending)".to_owned(), |n| n.to_string())
                ),
            }));
            self.put_task(now, id, entry, true);
            done.moved += 1;
        }
        done
    }

    /// After a restart, tasks this node was running have lost their handler
    /// or worker: each such attempt is failed and retried.
    pub(super) fn recover_interrupted(&mut self, now: Millis) {
        let me = self.cfg.node.clone();
        let interrupted: Vec<TaskId> = self
            .state
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.state().status == TaskStatus::Running && t.state().node.as_ref() == Some(&me)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in interrupted {
            self.finish_attempt(
                now,
                &id,
                Outcome::Failure("node restarted while the task ran".into()),
            );
        }
    }
}

fn assigned_state(now: Millis, node: NodeId, attempt: u32, fence: Fence) -> TaskState {
    TaskState {
        status: TaskStatus::Assigned,
        node: Some(node),
        attempt,
        fence,
        updated_at: now,
        ..TaskState::default()
    }
}
