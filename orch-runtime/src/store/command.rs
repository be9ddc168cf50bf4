//! The commands a group-committing writer (SQLite's writer thread, PostgreSQL's writer task)
//! receives, and what each produced: one definition for both backends.

use super::flow::{Admitted, Enqueued, QueueConfig, QueueEntry};
use super::task::{Leased, TaskResult, WorkerRecord, WorkerTerms};
use super::{
    Claimed, Commit, Created, Fence, InstanceRecord, Lease, LeaseTerms, Millis, NodeId, Renewal,
    StoreError, WriteOp,
};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

/// Queues a submission through `send` (see [`request`]): its [`Commit`] resolves when the
/// writer has made it durable, or at once with [`StoreError::Closed`] when the writer is gone.
pub(crate) fn submit(
    send: impl FnOnce(Command) -> bool,
    fence: Option<Fence>,
    ops: Vec<WriteOp>,
) -> Commit {
    let (tx, commit) = Commit::channel();
    if send(Command::Submit(fence, ops, tx)) {
        commit
    } else {
        Commit::ready(Err(StoreError::Closed))
    }
}

/// Sends the command `make` builds around a reply channel (`send` hands it to the writer and
/// says whether the writer took it) and resolves with the writer's reply; a writer that is
/// gone answers [`StoreError::Closed`].
pub(crate) fn request<T: Send + 'static>(
    send: impl FnOnce(Command) -> bool,
    make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
) -> BoxFuture<'static, Result<T, StoreError>> {
    let (tx, rx) = oneshot::channel();
    let sent = send(make(tx));
    Box::pin(async move {
        if !sent {
            return Err(StoreError::Closed);
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    })
}

/// A command for a writer.
pub(crate) enum Command {
    Submit(
        Option<Fence>,
        Vec<WriteOp>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    /// Create an instance (owned when terms are given), then apply the writes when it is new.
    Create(
        Box<InstanceRecord>,
        Option<LeaseTerms>,
        Vec<WriteOp>,
        oneshot::Sender<Result<Created, StoreError>>,
    ),
    AddSignal {
        instance: String,
        name: String,
        payload: String,
        at: Millis,
        extra: Vec<WriteOp>,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    ClaimDue(
        LeaseTerms,
        usize,
        oneshot::Sender<Result<Claimed, StoreError>>,
    ),
    Claim(
        LeaseTerms,
        String,
        oneshot::Sender<Result<Option<Lease>, StoreError>>,
    ),
    Renew(
        LeaseTerms,
        Vec<(String, u64)>,
        oneshot::Sender<Result<Renewal, StoreError>>,
    ),
    Release(
        NodeId,
        Option<Vec<String>>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    Close(oneshot::Sender<Result<(), StoreError>>),
    /// Write and delete a page-sized row: fails when the database cannot grow.
    Probe(oneshot::Sender<Result<(), StoreError>>),
    /// [`TaskQueue::lease_tasks`](super::task::TaskQueue::lease_tasks).
    LeaseTasks(
        WorkerTerms,
        Vec<String>,
        usize,
        oneshot::Sender<Result<Leased, StoreError>>,
    ),
    /// [`TaskQueue::heartbeat_task`](super::task::TaskQueue::heartbeat_task).
    HeartbeatTask(
        String,
        u64,
        WorkerTerms,
        oneshot::Sender<Result<Millis, StoreError>>,
    ),
    /// [`TaskQueue::record_workers`](super::task::TaskQueue::record_workers).
    RecordWorkers(
        Vec<WorkerRecord>,
        Millis,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    /// [`TaskQueue::finish_task`](super::task::TaskQueue::finish_task).
    FinishTask {
        task: String,
        token: u64,
        result: TaskResult,
        now: Millis,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// [`WorkflowQueues::enqueue_instance`](super::flow::WorkflowQueues::enqueue_instance).
    Enqueue(
        Box<InstanceRecord>,
        QueueEntry,
        Vec<WriteOp>,
        oneshot::Sender<Result<Enqueued, StoreError>>,
    ),
    /// [`WorkflowQueues::admit`](super::flow::WorkflowQueues::admit).
    Admit(Millis, usize, oneshot::Sender<Result<Admitted, StoreError>>),
    /// [`WorkflowQueues::set_queue_config`](super::flow::WorkflowQueues::set_queue_config).
    SetQueueConfig(String, QueueConfig, oneshot::Sender<Result<(), StoreError>>),
}

/// What a command produced inside the transaction, sent once the transaction is over.
pub(crate) enum Outcome {
    Unit(Result<(), StoreError>),
    Created(Result<Created, StoreError>),
    Signal(Result<i64, StoreError>),
    Claimed(Result<Claimed, StoreError>),
    Lease(Result<Option<Lease>, StoreError>),
    Lost(Result<Renewal, StoreError>),
    Tasks(Result<Leased, StoreError>),
    Until(Result<Millis, StoreError>),
    Enqueued(Result<Enqueued, StoreError>),
    Admitted(Result<Admitted, StoreError>),
}

impl Outcome {
    pub(crate) fn is_ok(&self) -> bool {
        match self {
            Outcome::Unit(r) => r.is_ok(),
            Outcome::Created(r) => r.is_ok(),
            Outcome::Signal(r) => r.is_ok(),
            Outcome::Claimed(r) => r.is_ok(),
            Outcome::Lease(r) => r.is_ok(),
            Outcome::Lost(r) => r.is_ok(),
            Outcome::Tasks(r) => r.is_ok(),
            Outcome::Until(r) => r.is_ok(),
            Outcome::Enqueued(r) => r.is_ok(),
            Outcome::Admitted(r) => r.is_ok(),
        }
    }

    pub(crate) fn error(&self) -> Option<StoreError> {
        match self {
            Outcome::Unit(r) => r.as_ref().err().cloned(),
            Outcome::Created(r) => r.as_ref().err().cloned(),
            Outcome::Signal(r) => r.as_ref().err().cloned(),
            Outcome::Claimed(r) => r.as_ref().err().cloned(),
            Outcome::Lease(r) => r.as_ref().err().cloned(),
            Outcome::Lost(r) => r.as_ref().err().cloned(),
            Outcome::Tasks(r) => r.as_ref().err().cloned(),
            Outcome::Until(r) => r.as_ref().err().cloned(),
            Outcome::Enqueued(r) => r.as_ref().err().cloned(),
            Outcome::Admitted(r) => r.as_ref().err().cloned(),
        }
    }

    pub(crate) fn failed(cmd: &Command, err: StoreError) -> Outcome {
        match cmd {
            Command::Submit(..)
            | Command::Close(_)
            | Command::Probe(_)
            | Command::Release(..)
            | Command::FinishTask { .. }
            | Command::RecordWorkers(..)
            | Command::SetQueueConfig(..) => Outcome::Unit(Err(err)),
            Command::Enqueue(..) => Outcome::Enqueued(Err(err)),
            Command::Admit(..) => Outcome::Admitted(Err(err)),
            Command::LeaseTasks(..) => Outcome::Tasks(Err(err)),
            Command::HeartbeatTask(..) => Outcome::Until(Err(err)),
            Command::Create(..) => Outcome::Created(Err(err)),
            Command::AddSignal { .. } => Outcome::Signal(Err(err)),
            Command::ClaimDue(..) => Outcome::Claimed(Err(err)),
            Command::Claim(..) => Outcome::Lease(Err(err)),
            Command::Renew(..) => Outcome::Lost(Err(err)),
        }
    }
}

/// Sends `outcome` to whoever is waiting for `cmd` (who may have stopped waiting).
pub(crate) fn reply(cmd: Command, outcome: Outcome) {
    match (cmd, outcome) {
        (
            Command::Submit(_, _, tx)
            | Command::Close(tx)
            | Command::Probe(tx)
            | Command::Release(_, _, tx)
            | Command::FinishTask { reply: tx, .. }
            | Command::RecordWorkers(_, _, tx)
            | Command::SetQueueConfig(_, _, tx),
            Outcome::Unit(r),
        ) => {
            let _ = tx.send(r);
        }
        (Command::Enqueue(_, _, _, tx), Outcome::Enqueued(r)) => {
            let _ = tx.send(r);
        }
        (Command::Admit(_, _, tx), Outcome::Admitted(r)) => {
            let _ = tx.send(r);
        }
        (Command::LeaseTasks(_, _, _, tx), Outcome::Tasks(r)) => {
            let _ = tx.send(r);
        }
        (Command::HeartbeatTask(_, _, _, tx), Outcome::Until(r)) => {
            let _ = tx.send(r);
        }
        (Command::Create(_, _, _, tx), Outcome::Created(r)) => {
            let _ = tx.send(r);
        }
        (Command::ClaimDue(_, _, tx), Outcome::Claimed(r)) => {
            let _ = tx.send(r);
        }
        (Command::Claim(_, _, tx), Outcome::Lease(r)) => {
            let _ = tx.send(r);
        }
        (Command::Renew(_, _, tx), Outcome::Lost(r)) => {
            let _ = tx.send(r);
        }
        (Command::AddSignal { reply, .. }, Outcome::Signal(r)) => {
            let _ = reply.send(r);
        }
        // Outcomes are built from their own command, so the kinds always match; a mismatch
        // drops the sender, which the waiter sees as `Closed`.
        _ => tracing::error!("internal error: store writer's outcome does not match its command"),
    }
}
