//! Task queues in the store: one attempt of a step bound to a queue is a **task** that a worker
//! (in this process, in another one, in any language over HTTP) leases, runs and finishes.
//!
//! The life of a task:
//!
//! 1. The instance's node enqueues it with [`WriteOp::EnqueueTask`](super::WriteOp::EnqueueTask)
//!    in a fenced submission — durable together with the instance's other writes, and
//!    idempotent: enqueueing an id that exists changes nothing, so a node that resumes the
//!    instance after a crash enqueues the same attempt again harmlessly and reads its state.
//! 2. A worker leases it ([`TaskQueue::lease_tasks`]): `pending` → `leased`, with a new
//!    **token** (the fencing token of this delivery) and a lease end. A leased task whose lease
//!    ended (its worker died, hung, or lost the network) is leased again to the next worker
//!    that asks — the same task, the same idempotency key, a new token.
//! 3. The worker keeps the lease with [`TaskQueue::heartbeat_task`] and ends it with
//!    [`TaskQueue::finish_task`] (completed with an output, or failed with a message and
//!    whether another attempt may help). Both are refused with [`StoreError::TaskLost`] and
//!    change nothing unless the worker still holds the lease: its token is the task's latest
//!    and the lease has not ended. A late worker can never overwrite what another one did.
//! 4. The end wakes the instance ([`Wakeup::TaskFinished`](super::Wakeup::TaskFinished); a
//!    suspended instance becomes due, as a signal makes it), whose step reads the outcome
//!    ([`TaskQueue::task`]) and journals it like a local step's. Retries are new attempts,
//!    hence new tasks; a task whose attempt the instance gave up on (a timeout, a
//!    cancellation) is cancelled with [`WriteOp::CancelTask`](super::WriteOp::CancelTask).

use super::{Millis, StoreError};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Longest queue name, in bytes.
pub const MAX_QUEUE_LEN: usize = 64;

/// Checks a queue name: 1..=64 bytes of `a-z A-Z 0-9 . _ -`.
pub fn check_queue(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_QUEUE_LEN {
        return Err(format!(
            "a queue name has 1 to {MAX_QUEUE_LEN} bytes; got {} bytes",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "queue name `{}` holds {c:?}; use letters, digits, `.`, `_` and `-`",
            name.escape_debug()
        )),
        None => Ok(()),
    }
}

/// The id of the task that runs `attempt` of the step at `seq` of `instance` in its run number
/// `generation` (the instance's [`retries`](super::InstanceRecord::retries): a retry from a
/// failed step runs the step again, as a new task): `instance:generation:seq:attempt`, which
/// needs no escaping in a URL path segment.
pub fn task_id(instance: &str, generation: u32, seq: u32, attempt: u32) -> String {
    format!("{instance}:{generation}:{seq}:{attempt}")
}

/// The instance of task `id` ([`task_id`]'s first part; instance ids may hold `:` too, the
/// last three parts are numbers); the whole id when it has another form.
pub fn task_instance(id: &str) -> &str {
    let mut parts = id.rsplitn(4, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(_), Some(instance)) => instance,
        _ => id,
    }
}

/// A task as enqueued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// `instance:generation:seq:attempt` ([`task_id`]).
    pub id: String,
    /// The queue it waits on.
    pub queue: String,
    /// The instance whose step it runs.
    pub instance: String,
    /// The step's seq in the instance's journal.
    pub seq: u32,
    /// 1-based attempt of the step.
    pub attempt: u32,
    /// The step's name.
    pub step: String,
    /// The step's arguments: a JSON object keyed by parameter name.
    pub input: String,
    /// The same on every attempt of the step and after every restart (`instance/seq`): what the
    /// worker hands the service it calls, so the service applies the effect once.
    pub idempotency_key: String,
    /// Higher first (default 0).
    pub priority: i32,
    /// When it was enqueued.
    pub created_at: Millis,
    /// When the instance stops waiting for it, if it ever does (the attempt's timeout): a task
    /// is not leased after this.
    pub deadline: Option<Millis>,
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Pending,
    /// A worker holds it (or held it: see [`TaskRecord::lease_expires_at`]).
    Leased,
    /// A worker finished it with an output.
    Completed,
    /// A worker finished it with an error.
    Failed,
    /// The instance stopped waiting for it (timeout, cancellation, end).
    Cancelled,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 5] = [
        TaskState::Pending,
        TaskState::Leased,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Leased => "leased",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Completed, failed or cancelled: nothing changes it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A task as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// What was enqueued.
    pub task: NewTask,
    /// Where it is.
    pub state: TaskState,
    /// The worker that holds (or last held) it.
    pub worker: Option<String>,
    /// The latest delivery's fencing token: how many times it was leased (0 before the first).
    pub token: u64,
    /// When the latest lease ends (or ended).
    pub lease_expires_at: Option<Millis>,
    /// The output JSON text, when completed.
    pub output: Option<String>,
    /// The error message, when failed or cancelled.
    pub error: Option<String>,
    /// Whether another attempt may succeed, when failed.
    pub retryable: bool,
    /// When it was completed, failed or cancelled.
    pub finished_at: Option<Millis>,
}

/// Who asks for tasks, when, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerTerms {
    /// The worker's id (chosen by the worker; shown to operators).
    pub worker: String,
    /// The time now.
    pub now: Millis,
    /// How long a lease lasts from `now` without a heartbeat (> 0).
    pub ttl: Millis,
}

impl WorkerTerms {
    /// When leases granted on these terms end.
    pub fn expires_at(&self) -> Millis {
        self.now.saturating_add(self.ttl.max(1))
    }
}

/// One task leased to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLease {
    /// The task (its record after the lease).
    pub task: NewTask,
    /// This delivery's fencing token, which heartbeats and the end must carry: the number of
    /// times the task was leased, this time included (above 1, an earlier worker's lease
    /// ended before it finished).
    pub token: u64,
    /// When the lease ends unless renewed.
    pub expires_at: Millis,
}

/// What [`TaskQueue::lease_tasks`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leased {
    /// The tasks leased now.
    pub tasks: Vec<TaskLease>,
    /// When the next task of these queues that is leased by someone else may be leased again
    /// (its lease ends): a worker that got nothing need not ask again before, unless told that
    /// a task was enqueued ([`Wakeup::TaskQueued`](super::Wakeup::TaskQueued)).
    pub next_expiry: Option<Millis>,
}

/// How a worker ended a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskResult {
    /// The step's output, as JSON text.
    Completed {
        /// The output.
        output: String,
    },
    /// The step failed.
    Failed {
        /// What went wrong.
        message: String,
        /// Whether another attempt may succeed (the step's retry policy decides whether one
        /// is made).
        retryable: bool,
    },
}

/// One queue as operators see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Tasks waiting for a worker (pending, or leased with an ended lease).
    pub waiting: u64,
    /// Tasks leased now.
    pub in_flight: u64,
    /// When the oldest waiting task was enqueued.
    pub oldest_waiting: Option<Millis>,
    /// Tasks completed in all.
    pub completed: u64,
    /// Tasks failed in all.
    pub failed: u64,
    /// Tasks completed or failed in the minute before the time asked about (the queue's
    /// throughput per minute).
    pub finished_last_minute: u64,
}

/// The window of [`QueueStats::finished_last_minute`], in milliseconds.
pub const THROUGHPUT_WINDOW: Millis = 60_000;

/// A worker as the nodes that served it saw it: recorded by each node at most every few
/// seconds ([`TaskQueue::record_workers`]), so that every node lists the workers polling any
/// node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The worker's id (chosen by the worker).
    pub id: String,
    /// The queues it last asked for.
    pub queues: Vec<String>,
    /// The node it last asked.
    pub node: String,
    /// When it last asked for tasks.
    pub last_poll: Millis,
    /// When it last sent a heartbeat or ended a task, if ever.
    pub last_heartbeat: Option<Millis>,
}

impl WorkerRecord {
    /// When it was last seen (a poll, a heartbeat, an end).
    pub fn last_seen(&self) -> Millis {
        self.last_poll
            .max(self.last_heartbeat.unwrap_or(Millis::MIN))
    }
}

/// The workers' side of task queues (the instances' side is [`WriteOp::EnqueueTask`] and
/// [`WriteOp::CancelTask`](super::WriteOp::CancelTask) through [`Store::submit`]). See the
/// [module documentation](self) for the life of a task.
///
/// [`WriteOp::EnqueueTask`]: super::WriteOp::EnqueueTask
/// [`Store::submit`]: super::Store::submit
pub trait TaskQueue: Send + Sync + 'static {
    /// Leases up to `limit` tasks of `queues` to `terms.worker`: pending ones and leased ones
    /// whose lease ended (before `terms.now`), whose deadline has not passed, highest priority
    /// first, then oldest; each with a new token and the lease end `terms.expires_at()`. Tasks
    /// whose deadline passed while pending are not handed out. Two callers never get the same
    /// task at the same time (on PostgreSQL: `FOR UPDATE SKIP LOCKED`).
    fn lease_tasks(
        &self,
        terms: WorkerTerms,
        queues: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Leased, StoreError>>;

    /// Extends the lease of task `id` to `terms.expires_at()`. Refused with
    /// [`StoreError::TaskLost`] (and nothing changed) unless `token` is the task's latest, the
    /// task is leased and its lease has not ended at `terms.now`.
    fn heartbeat_task(
        &self,
        id: &str,
        token: u64,
        terms: WorkerTerms,
    ) -> BoxFuture<'_, Result<Millis, StoreError>>;

    /// Ends task `id` with `result` at `now`, under the same condition as
    /// [`heartbeat_task`](Self::heartbeat_task) (else [`StoreError::TaskLost`], nothing
    /// changed), and wakes its instance (as [`WriteOp::Wake`](super::WriteOp::Wake) at `now`;
    /// [`Wakeup::TaskFinished`](super::Wakeup::TaskFinished)) in the same transaction.
    fn finish_task(
        &self,
        id: &str,
        token: u64,
        result: TaskResult,
        now: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Reads one task.
    fn task(&self, id: &str) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>>;

    /// Every queue that holds a task, by name, as seen at `now`.
    fn queue_stats(&self, now: Millis) -> BoxFuture<'_, Result<Vec<QueueStats>, StoreError>>;

    /// Records workers a node saw, by id: a worker not recorded yet is added; one recorded
    /// keeps the later of each time, and takes the given queues and node if the given
    /// `last_poll` is not older than the stored one. Then forgets every worker last seen
    /// before `forget_before`.
    fn record_workers(
        &self,
        seen: Vec<WorkerRecord>,
        forget_before: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The workers last seen (a poll, a heartbeat) at or after `since`, by id.
    fn workers(&self, since: Millis) -> BoxFuture<'_, Result<Vec<WorkerRecord>, StoreError>>;
}

impl WorkerRecord {
    /// Merges `given` into this record of the same worker (see
    /// [`TaskQueue::record_workers`]).
    pub(crate) fn merge(&mut self, given: WorkerRecord) {
        if given.last_poll >= self.last_poll {
            self.queues = given.queues;
            self.node = given.node;
        }
        self.last_poll = self.last_poll.max(given.last_poll);
        self.last_heartbeat = match (self.last_heartbeat, given.last_heartbeat) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

impl TaskRecord {
    /// A task just enqueued.
    pub(crate) fn pending(task: NewTask) -> TaskRecord {
        TaskRecord {
            task,
            state: TaskState::Pending,
            worker: None,
            token: 0,
            lease_expires_at: None,
            output: None,
            error: None,
            retryable: false,
            finished_at: None,
        }
    }

    /// `Some(None)` when a worker may lease it at `now`; `Some(Some(t))` when it is leased until
    /// `t` (a worker may lease it then); `None` when it is finished or past its deadline.
    pub(crate) fn leasable_or_later(&self, now: Millis) -> Option<Option<Millis>> {
        if self.state.is_final() || self.task.deadline.is_some_and(|d| d <= now) {
            return None;
        }
        match (self.state, self.lease_expires_at) {
            (TaskState::Leased, Some(end)) if end > now => Some(Some(end)),
            _ => Some(None),
        }
    }

    /// Leases it on `terms` (a new token).
    pub(crate) fn lease(&mut self, terms: &WorkerTerms) -> TaskLease {
        self.state = TaskState::Leased;
        self.worker = Some(terms.worker.clone());
        self.token += 1;
        self.lease_expires_at = Some(terms.expires_at());
        TaskLease {
            task: self.task.clone(),
            token: self.token,
            expires_at: terms.expires_at(),
        }
    }

    /// Whether the worker with `token` holds it at `now` (else [`StoreError::TaskLost`]).
    pub(crate) fn held(&self, token: u64, now: Millis) -> Result<(), StoreError> {
        let lease_on = self.lease_expires_at.is_some_and(|end| end > now);
        if self.state == TaskState::Leased && token == self.token && lease_on {
            return Ok(());
        }
        let where_now = match self.state {
            TaskState::Leased if token != self.token => format!(
                "it was leased again since, to `{}` with token {}",
                self.worker.as_deref().unwrap_or("?"),
                self.token
            ),
            TaskState::Leased => "its lease ended".to_string(),
            TaskState::Pending => "it waits for a worker".to_string(),
            state => format!("it is {} already", state.as_str()),
        };
        Err(StoreError::TaskLost {
            task: self.task.id.clone(),
            token,
            now: where_now,
        })
    }

    /// The refusal of a heartbeat or end of a task that does not exist.
    pub(crate) fn missing(id: &str, token: u64) -> StoreError {
        StoreError::TaskLost {
            task: id.to_string(),
            token,
            now: "there is no such task".into(),
        }
    }

    /// Ends it with `result` at `now` (its lease was checked).
    pub(crate) fn finish(&mut self, result: TaskResult, now: Millis) {
        match result {
            TaskResult::Completed { output } => {
                self.state = TaskState::Completed;
                self.output = Some(output);
            }
            TaskResult::Failed { message, retryable } => {
                self.state = TaskState::Failed;
                self.error = Some(message);
                self.retryable = retryable;
            }
        }
        self.finished_at = Some(now);
    }

    /// Cancels it at `at` (saying `why`) unless it is finished.
    pub(crate) fn cancel(&mut self, at: Millis, why: &str) {
        if !self.state.is_final() {
            self.state = TaskState::Cancelled;
            self.error = Some(why.to_string());
            self.finished_at = Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The instance comes back out of any task id made from it, whatever `:` it holds.
        #[test]
        fn a_task_id_names_its_instance(
            instance in "[A-Za-z0-9._:-]{1,40}",
            generation in any::<u32>(),
            seq in any::<u32>(),
            attempt in any::<u32>(),
        ) {
            let id = task_id(&instance, generation, seq, attempt);
            prop_assert_eq!(task_instance(&id), instance.as_str());
        }

        /// Any text is read without panicking.
        #[test]
        fn any_text_reads_as_some_instance(id in any::<String>()) {
            let _ = task_instance(&id);
        }
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(check_queue("payments").is_ok());
        assert!(check_queue("eu-west.payments_2").is_ok());
        assert!(check_queue("").is_err());
        assert!(check_queue(&"q".repeat(65)).is_err());
        let err = check_queue("pay ments");
        assert!(
            err.as_ref().is_err_and(|e| e.contains("letters, digits")),
            "{err:?}"
        );
    }
}
