//! Persistence: the engine's contract with storage ([`Store`]), the operators' one
//! ([`StoreAdmin`]), and the backends.
//!
//! The engine talks to storage only through [`Store`]: it creates instances, submits their
//! writes, claims and renews ownership of them ([`lease`]), and listens for wake-ups. Search,
//! statistics, the audit log and the cluster view are behind [`StoreAdmin`], used by the
//! runtime's operator methods and the server. A backend implements both (a runtime takes a
//! [`Backend`]); neither trait has a method that may answer "unsupported" at run time.
//!
//! Backends: [`memory::MemoryStore`] for tests and benchmarks, `sqlite::SqliteStore` (the
//! embedded default, cargo feature `sqlite`; several processes may share one file) and
//! `postgres::PostgresStore` (cargo feature `postgres`; several machines share one database).
//! `conformance` (feature `conformance`) checks a backend against this contract.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod command;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod flow;
pub mod lease;
pub mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod meta;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod task;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

pub use crate::journal::{EntryKind, JournalEntry, Millis};
pub use lease::{
    Claimed, Fence, Lease, LeaseTerms, NODE_RETENTION_MS, NodeId, NodeRecord, Renewal, Wakeup,
    WakeupHub, Wakeups,
};

/// Where an instance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Enqueued on a workflow queue (see [`flow`]) and not admitted yet: stored, but nothing
    /// runs until its queue has room.
    Queued,
    /// Loaded (or waiting to be loaded) and making progress.
    Running,
    /// Waiting for a timer, a signal or a child workflow; unloaded from memory.
    Suspended,
    /// Finished with a successful output.
    Completed,
    /// Finished with an error output, or stopped by a failure it could not handle.
    Failed,
    /// Its journal no longer matches the code; stopped until compatible code is deployed.
    Incompatible,
    /// Cancelled on request: the workflow received the cancellation and returned an error (or
    /// could not receive it).
    Cancelled,
    /// Stopped hard by an operator; nothing more runs.
    Terminated,
}

impl Status {
    /// Every status, in display order.
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Running,
        Status::Suspended,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::Terminated,
        Status::Incompatible,
    ];

    /// The statuses an instance ends in.
    pub const FINAL: [Status; 5] = [
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::Terminated,
        Status::Incompatible,
    ];

    /// True once the instance will make no further progress by itself.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed
                | Status::Failed
                | Status::Incompatible
                | Status::Cancelled
                | Status::Terminated
        )
    }

    /// Whether `Runtime::retry` (and [`WriteOp::Retry`]) applies: failed, cancelled,
    /// terminated or incompatible.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::Failed | Status::Cancelled | Status::Terminated | Status::Incompatible
        )
    }

    /// The lower-case name used in storage and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Suspended => "suspended",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Incompatible => "incompatible",
            Status::Cancelled => "cancelled",
            Status::Terminated => "terminated",
        }
    }

    /// Parses [`Status::as_str`] back.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One workflow instance as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Unique instance id.
    pub id: String,
    /// Registered workflow name.
    pub workflow: String,
    /// Code version (hash of the workflow body) that started the instance.
    pub version: String,
    /// Input, as JSON text.
    pub input: String,
    /// Current status.
    pub status: Status,
    /// Output as JSON text, once finished.
    pub output: Option<String>,
    /// Human-readable error, when failed or incompatible.
    pub error: Option<String>,
    /// Custom status set by the workflow (`set_status`), as JSON text.
    pub custom_status: Option<String>,
    /// The parent instance, for child workflows.
    pub parent: Option<String>,
    /// When it was created.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
    /// When a suspended instance's earliest timer fires.
    pub wake_at: Option<Millis>,
    /// The step the instance failed at (its last step whose final attempt failed, background
    /// work aside), for failed and cancelled instances.
    #[serde(default)]
    pub failed_step: Option<String>,
    /// That step's seq: where a retry starts by default.
    #[serde(default)]
    pub failed_seq: Option<u32>,
    /// When cancellation was requested (cooperative; see `Runtime::cancel`).
    #[serde(default)]
    pub cancel_requested: Option<Millis>,
    /// The seq of the call that received the cancellation, once one did.
    #[serde(default)]
    pub cancel_seq: Option<u32>,
    /// How many times the instance was retried (`Runtime::retry`).
    #[serde(default)]
    pub retries: u32,
}

impl InstanceRecord {
    /// A new, running instance with nothing recorded yet.
    pub fn new(
        id: impl Into<String>,
        workflow: impl Into<String>,
        version: impl Into<String>,
        input: impl Into<String>,
        now: Millis,
    ) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            workflow: workflow.into(),
            version: version.into(),
            input: input.into(),
            status: Status::Running,
            output: None,
            error: None,
            custom_status: None,
            parent: None,
            created_at: now,
            updated_at: now,
            wake_at: None,
            failed_step: None,
            failed_seq: None,
            cancel_requested: None,
            cancel_seq: None,
            retries: 0,
        }
    }
}

/// One failed attempt of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The step's seq.
    pub seq: u32,
    /// 1-based attempt number.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// When the attempt started.
    pub started_at: Millis,
    /// When it ended.
    pub finished_at: Millis,
}

/// A signal delivered to an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalRecord {
    /// Store-assigned id, increasing in delivery order.
    pub id: i64,
    /// Signal name.
    pub name: String,
    /// Payload as JSON text.
    pub payload: String,
    /// When it arrived.
    pub received_at: Millis,
}

/// Everything needed to resume an instance.
#[derive(Clone, Debug)]
pub struct LoadedInstance {
    /// The instance.
    pub record: InstanceRecord,
    /// Its journal, ordered by seq.
    pub journal: Vec<JournalEntry>,
    /// Failed attempts, ordered by (seq, attempt).
    pub attempts: Vec<AttemptRecord>,
    /// Signals not yet consumed, in delivery order.
    pub signals: Vec<SignalRecord>,
    /// Seqs of durable timers that a cancellation ended early (see [`WriteOp::EndTimer`]).
    pub ended_timers: Vec<u32>,
}

/// An instance as exported by `Runtime::export`: everything needed to replay it elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Export {
    /// The instance.
    pub record: InstanceRecord,
    /// Its journal, ordered by seq.
    pub journal: Vec<JournalEntry>,
    /// Failed attempts.
    pub attempts: Vec<AttemptRecord>,
    /// Signals not yet consumed.
    pub signals: Vec<SignalRecord>,
    /// Seqs of timers a cancellation ended early.
    #[serde(default)]
    pub ended_timers: Vec<u32>,
}

impl From<LoadedInstance> for Export {
    fn from(l: LoadedInstance) -> Export {
        Export {
            record: l.record,
            journal: l.journal,
            attempts: l.attempts,
            signals: l.signals,
            ended_timers: l.ended_timers,
        }
    }
}

/// A write, applied in submission order.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Append a journal entry. Appending an existing (instance, seq) is an error.
    Append {
        /// Instance id.
        instance: String,
        /// The entry.
        entry: JournalEntry,
    },
    /// Record a failed attempt.
    Attempt {
        /// Instance id.
        instance: String,
        /// The attempt.
        record: AttemptRecord,
    },
    /// Mark a signal consumed by the journal entry at `seq` (0: discarded). A signal that is
    /// consumed already is a conflict: no signal is taken twice.
    ConsumeSignal {
        /// Instance id.
        instance: String,
        /// The signal's id.
        signal: i64,
        /// The consuming entry.
        seq: u32,
    },
    /// Change the custom status.
    CustomStatus {
        /// Instance id.
        instance: String,
        /// JSON text.
        value: String,
        /// When.
        at: Millis,
    },
    /// Move between running and suspended. Suspending releases the instance (it has no owner
    /// while suspended) and keeps an earlier wake time a [`WriteOp::Wake`] set meanwhile.
    SetStatus {
        /// Instance id.
        instance: String,
        /// `Running` or `Suspended`.
        status: Status,
        /// Earliest timer, when suspended on one.
        wake_at: Option<Millis>,
        /// When.
        at: Millis,
    },
    /// Makes the instance due at `at` (a signal or a child's result arrived for it): a
    /// suspended instance at once, a running one when it next suspends (the node driving it
    /// may not have seen what arrived). Earlier wake times stay; finished instances and
    /// missing ones are left alone.
    Wake {
        /// Instance id.
        instance: String,
        /// When it is due.
        at: Millis,
    },
    /// Finish the instance (completed, failed, cancelled, terminated or incompatible); its
    /// pending and leased tasks are cancelled (no worker gets them any more). Does nothing to an
    /// instance that has finished already.
    Finish {
        /// Instance id.
        instance: String,
        /// The final status.
        status: Status,
        /// Output JSON text.
        output: Option<String>,
        /// Error message.
        error: Option<String>,
        /// The step it failed at, with its seq.
        failed_step: Option<(String, u32)>,
        /// When.
        at: Millis,
    },
    /// The durable timer (sleep or signal deadline) at `seq` ended early because the workflow
    /// was cancelled: replay ends it at once too, whatever the cancellation state is then.
    EndTimer {
        /// Instance id.
        instance: String,
        /// The timer's seq.
        seq: u32,
    },
    /// Sets (or replaces) a searchable attribute (`set_attribute`).
    Attribute {
        /// Instance id.
        instance: String,
        /// Key.
        key: String,
        /// Value as JSON text.
        value: String,
    },
    /// Asks a live instance to cancel (cooperatively). A finished instance is a conflict; a
    /// second request keeps the first one's time.
    RequestCancel {
        /// Instance id.
        instance: String,
        /// When.
        at: Millis,
    },
    /// The call at `seq` received the cancellation.
    CancelDelivered {
        /// Instance id.
        instance: String,
        /// The call's seq.
        seq: u32,
    },
    /// Runs a finished (failed, cancelled, terminated or incompatible) instance again from
    /// `from_seq`: journal entries and failed attempts from that seq on are moved aside as
    /// superseded by retry number `retries + 1` (kept, never deleted), signals consumed by
    /// them become pending again, attributes they set go back to the values earlier entries
    /// set (or away), and the instance is running with no output. Anything else is a conflict.
    Retry {
        /// Instance id.
        instance: String,
        /// The first seq to run again.
        from_seq: u32,
        /// When.
        at: Millis,
    },
    /// Stores a new instance with a journal copied from another (a fork). An existing id is a
    /// conflict.
    Fork {
        /// The new instance.
        record: Box<InstanceRecord>,
        /// Its journal.
        journal: Vec<JournalEntry>,
        /// Failed attempts of those entries.
        attempts: Vec<AttemptRecord>,
        /// Timers among those entries that a cancellation ended early.
        ended_timers: Vec<u32>,
    },
    /// Enqueues a task for a step of the instance (see [`task`]): stored `pending` and
    /// announced ([`Wakeup::TaskQueued`]) when the instance is live and no task has its id;
    /// otherwise nothing changes (enqueueing again after a restart is harmless). A missing
    /// instance is [`StoreError::NotFound`].
    EnqueueTask {
        /// Instance id (the task's).
        instance: String,
        /// The task.
        task: Box<task::NewTask>,
    },
    /// The instance stops waiting for task `task` (a timeout, a cancellation): a pending or
    /// leased task becomes cancelled (its worker's heartbeat and end are refused from now on);
    /// a finished or missing one is left alone.
    CancelTask {
        /// Instance id (the task's).
        instance: String,
        /// The task's id.
        task: String,
        /// When.
        at: Millis,
    },
    /// Appends to the audit log (who did what to which instance).
    Audit(AuditRecord),
}

/// One operator action, as recorded in the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When.
    pub at: Millis,
    /// Who (the API token's name, or `local`).
    pub actor: String,
    /// What (`start`, `signal`, `cancel`, `terminate`, `retry`, `restart`, `fork`, …).
    pub action: String,
    /// The instance acted on (or a description of a bulk filter).
    pub target: String,
    /// Details as JSON text.
    pub detail: String,
}

impl WriteOp {
    /// The instance this write touches.
    pub fn instance(&self) -> &str {
        match self {
            WriteOp::Append { instance, .. }
            | WriteOp::Attempt { instance, .. }
            | WriteOp::ConsumeSignal { instance, .. }
            | WriteOp::CustomStatus { instance, .. }
            | WriteOp::SetStatus { instance, .. }
            | WriteOp::Wake { instance, .. }
            | WriteOp::Finish { instance, .. }
            | WriteOp::Attribute { instance, .. }
            | WriteOp::EndTimer { instance, .. }
            | WriteOp::RequestCancel { instance, .. }
            | WriteOp::CancelDelivered { instance, .. }
            | WriteOp::Retry { instance, .. }
            | WriteOp::EnqueueTask { instance, .. }
            | WriteOp::CancelTask { instance, .. } => instance,
            WriteOp::Fork { record, .. } => &record.id,
            WriteOp::Audit(a) => &a.target,
        }
    }
}

/// The result of [`Store::create`].
#[derive(Clone, Debug)]
pub enum Created {
    /// A new instance was stored; with the creating node's lease when an owner was asked for.
    New(Option<Lease>),
    /// An instance with that id already existed; it is returned unchanged.
    Existing(Box<InstanceRecord>),
}

/// Which instances [`Store::list`] returns.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only children of this instance.
    pub parent: Option<String>,
    /// Only ids strictly greater than this (cursor, ids ordered bytewise).
    pub after_id: Option<String>,
    /// At most this many (0 = no limit).
    pub limit: usize,
}

impl ListFilter {
    /// Only instances of `workflow`.
    pub fn workflow(mut self, workflow: impl Into<String>) -> Self {
        self.workflow = Some(workflow.into());
        self
    }
    /// Only instances in `status`.
    pub fn status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }
    /// At most `limit` instances.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
    /// Whether `rec` passes the filter (cursor and limit aside).
    pub fn matches(&self, rec: &InstanceRecord) -> bool {
        self.workflow.as_ref().is_none_or(|w| *w == rec.workflow)
            && self.status.is_none_or(|s| s == rec.status)
            && self
                .parent
                .as_ref()
                .is_none_or(|p| rec.parent.as_ref() == Some(p))
            && self.after_id.as_ref().is_none_or(|a| rec.id > *a)
    }
}

/// Where a page of [`StoreAdmin::search`] ended: the next page starts after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The last instance's creation time.
    pub created_at: Millis,
    /// The last instance's id.
    pub id: String,
}

/// A search over instances, newest first (by creation time, then id), paged by [`Cursor`]:
/// instances created while paging appear before the first page, never inside or between
/// pages, so a page boundary never skips or repeats an instance.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only these statuses (empty: any).
    pub statuses: Vec<Status>,
    /// Created at or after this time.
    pub created_after: Option<Millis>,
    /// Created before this time.
    pub created_before: Option<Millis>,
    /// Changed (status, custom status, end, retry, cancel request) at or after this time.
    pub updated_after: Option<Millis>,
    /// Ids starting with this.
    pub id_prefix: Option<String>,
    /// Attributes equal to these values (key, JSON text).
    pub attributes: Vec<(String, String)>,
    /// Only children of this instance.
    pub parent: Option<String>,
    /// Only instances after this cursor (older).
    pub after: Option<Cursor>,
    /// At most this many (0 = no limit).
    pub limit: usize,
}

impl Query {
    /// Whether `rec`, with attributes `attrs`, passes the filter (cursor and limit aside).
    pub fn matches(&self, rec: &InstanceRecord, attrs: &BTreeMap<String, String>) -> bool {
        self.workflow.as_ref().is_none_or(|w| *w == rec.workflow)
            && (self.statuses.is_empty() || self.statuses.contains(&rec.status))
            && self.created_after.is_none_or(|t| rec.created_at >= t)
            && self.created_before.is_none_or(|t| rec.created_at < t)
            && self.updated_after.is_none_or(|t| rec.updated_at >= t)
            && self
                .id_prefix
                .as_ref()
                .is_none_or(|p| rec.id.starts_with(p.as_str()))
            && self
                .parent
                .as_ref()
                .is_none_or(|p| rec.parent.as_ref() == Some(p))
            && self
                .attributes
                .iter()
                .all(|(k, v)| attrs.get(k).is_some_and(|have| json_equal(have, v)))
    }

    /// Whether `rec` comes after the cursor in newest-first order.
    pub fn after_cursor(&self, rec: &InstanceRecord) -> bool {
        self.after.as_ref().is_none_or(|c| {
            rec.created_at < c.created_at || (rec.created_at == c.created_at && rec.id < c.id)
        })
    }
}

/// Compares two JSON texts as values (so `1` equals `1.0` and key order does not matter).
pub fn json_equal(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p == q,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// Attributes per instance: id → (key → JSON text).
pub type AttributeMap = HashMap<String, BTreeMap<String, String>>;

/// A journal entry replaced by a retry (kept for the record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Superseded {
    /// The retry that replaced it (1 for the first retry).
    pub retry: u32,
    /// The entry as it was.
    pub entry: JournalEntry,
}

/// Everything known about one instance, for display.
#[derive(Clone, Debug)]
pub struct Details {
    /// The instance.
    pub record: InstanceRecord,
    /// Its journal, ordered by seq.
    pub journal: Vec<JournalEntry>,
    /// Failed attempts of the current journal, ordered by (seq, attempt).
    pub attempts: Vec<AttemptRecord>,
    /// Signals not yet consumed, in delivery order.
    pub signals: Vec<SignalRecord>,
    /// Attributes (key → JSON text).
    pub attributes: BTreeMap<String, String>,
    /// Entries replaced by retries, ordered by (retry, seq).
    pub superseded: Vec<Superseded>,
    /// Failed attempts of superseded entries: (retry, attempt).
    pub superseded_attempts: Vec<(u32, AttemptRecord)>,
}

/// What [`StoreAdmin::stats`] counts.
#[derive(Clone, Debug)]
pub struct StatsQuery {
    /// Instances created at or after this.
    pub from: Millis,
    /// And before this.
    pub to: Millis,
    /// Width of one series bucket (> 0).
    pub bucket_ms: Millis,
    /// Only this workflow.
    pub workflow: Option<String>,
}

/// A count of instances of one workflow in one status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCount {
    /// Workflow name.
    pub workflow: String,
    /// Status.
    pub status: Status,
    /// How many.
    pub count: u64,
}

/// A [`StatusCount`] in one time bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCount {
    /// Start of the bucket.
    pub start: Millis,
    /// Workflow name.
    pub workflow: String,
    /// Status.
    pub status: Status,
    /// How many created in the bucket are in that status now.
    pub count: u64,
}

/// Failed (or cancelled) instances by the step they failed at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCount {
    /// Workflow name.
    pub workflow: String,
    /// Step name.
    pub step: String,
    /// How many.
    pub count: u64,
}

/// Counts over a time window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Per workflow and status.
    pub totals: Vec<StatusCount>,
    /// Per bucket, workflow and status (empty buckets left out).
    pub series: Vec<BucketCount>,
    /// Failed instances per failing step.
    pub failed_steps: Vec<StepCount>,
}

/// Aggregates of one attribute over the instances matching a [`Query`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Instances that have the attribute.
    pub count: u64,
    /// Of those, how many hold a number.
    pub numeric: u64,
    /// Sum of the numbers.
    pub sum: f64,
    /// Smallest number.
    pub min: Option<f64>,
    /// Largest number.
    pub max: Option<f64>,
}

/// Histograms a store fills as it commits, exported at `/metrics`.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Seconds per write transaction.
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Commands per write transaction (group commit).
    pub batch_size: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        StoreMetrics {
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        }
    }
}

/// A storage failure.
#[derive(Debug, thiserror::Error, Clone)]
pub enum StoreError {
    /// The file is not an orch database (or not a database at all).
    #[error(
        "`{path}` is not an orch database ({detail}); point orch at a new file or at a database orch created"
    )]
    Foreign {
        /// The file.
        path: String,
        /// What was found.
        detail: String,
    },
    /// The database file is damaged.
    #[error(
        "`{path}` is damaged ({detail}); restore it from a backup or point orch at a new file (nothing was changed)"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// What SQLite said.
        detail: String,
    },
    /// The database was written by a newer orch.
    #[error(
        "`{path}` has schema version {found}, but this build of orch supports up to {supported}; upgrade orch to open it (nothing was changed)"
    )]
    TooNew {
        /// The file.
        path: String,
        /// Version in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A fenced write was refused: the node no longer owns the instance at the epoch it
    /// wrote under (its lease ended and another node claimed the instance, or an operator
    /// terminated or retried it). Nothing of the submission was applied; the node must stop
    /// driving the instance.
    #[error(
        "node `{node}` no longer owns instance `{instance}` (it wrote under epoch {epoch}; the \
         store has {}, epoch {current_epoch}): the write was refused and nothing of it was \
         stored; this node stops driving the instance and whoever owns it now continues",
        .current_owner.as_deref().map_or("no owner".to_string(), |o| format!("owner `{o}`"))
    )]
    LeaseLost {
        /// The instance.
        instance: String,
        /// The node that wrote.
        node: String,
        /// The epoch it wrote under.
        epoch: u64,
        /// The owner now, if any.
        current_owner: Option<String>,
        /// The epoch now.
        current_epoch: u64,
    },
    /// A write conflicted with what is stored (e.g. a journal seq written twice).
    #[error("conflicting write for instance `{instance}`: {detail}")]
    Conflict {
        /// Instance id.
        instance: String,
        /// What conflicted.
        detail: String,
    },
    /// The instance does not exist.
    #[error("no instance with id `{0}`")]
    NotFound(String),
    /// The instance has finished; it accepts no more signals.
    #[error("instance `{id}` has already finished ({status}); it accepts no signals")]
    Finished {
        /// Instance id.
        id: String,
        /// Its final status.
        status: Status,
    },
    /// A worker's heartbeat or end of a task was refused: it no longer holds the task's lease
    /// (its lease ended and the task may have gone to another worker, the instance stopped
    /// waiting for it, or it is finished). Nothing was changed.
    #[error(
        "task `{task}` is no longer leased to this worker (it held token {token}; {now}): \
         nothing was changed; stop working on it — whoever holds it now finishes it"
    )]
    TaskLost {
        /// The task.
        task: String,
        /// The token the worker held.
        token: u64,
        /// Where the task is now, in words.
        now: String,
    },
    /// The store was closed.
    #[error("the store is closed (the runtime was shut down)")]
    Closed,
    /// The store has no room for the write (the disk, or the database's configured size, is
    /// full). Nothing of the refused write was stored; earlier checkpoints are intact.
    #[error(
        "the store is full and took nothing of this write ({0}); free disk space or raise the \
         database's size limit, then try again"
    )]
    Full(String),
    /// The backend failed.
    #[error("storage error: {0}")]
    Backend(String),
}

/// Acknowledgement of submitted writes: resolves once they are durable.
#[must_use = "a commit does nothing unless awaited, but the writes are queued regardless"]
pub struct Commit(CommitInner);

enum CommitInner {
    Done(Option<Result<(), StoreError>>),
    Waiting(oneshot::Receiver<Result<(), StoreError>>),
}

impl Commit {
    /// An already-finished commit.
    pub fn ready(result: Result<(), StoreError>) -> Self {
        Commit(CommitInner::Done(Some(result)))
    }
    /// A commit finished by sending on the matching sender.
    pub fn channel() -> (oneshot::Sender<Result<(), StoreError>>, Self) {
        let (tx, rx) = oneshot::channel();
        (tx, Commit(CommitInner::Waiting(rx)))
    }
}

impl Future for Commit {
    type Output = Result<(), StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            CommitInner::Done(r) => Poll::Ready(r.take().unwrap_or(Err(StoreError::Closed))),
            CommitInner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(StoreError::Closed))),
        }
    }
}

/// What the engine needs from storage: instances, their journals and signals, ownership of
/// instances by nodes, and wake-ups.
///
/// # Writes and their order
///
/// [`submit`](Self::submit) queues a group of [`WriteOp`]s that applies atomically (all or
/// nothing) and returns a [`Commit`] that resolves once it is durable. Order is guaranteed
/// **per instance**, not globally: two submissions touching the same instance, made one after
/// the other from one store handle, apply in that order, so an acknowledged commit implies that
/// every earlier submission for that instance is durable too (or failed). Submissions for
/// different instances may apply in any order, and a backend may commit many of them in one
/// transaction (group commit).
///
/// # Ownership
///
/// Each unfinished instance is owned by at most one node (see [`lease`]). Its record carries
/// `(owner, epoch)`; a node's leases all end at the node's expiry, set by
/// [`renew`](Self::renew) (the heartbeat) to `now + ttl`. The store moves ownership only in
/// these ways:
///
/// - [`create`](Self::create) with terms: the creating node owns the new instance (epoch 1).
/// - [`claim_due`](Self::claim_due) / [`claim`](Self::claim): an unowned instance, or one whose
///   owner's lease has ended, becomes the claimer's; the epoch is bumped and the instance is
///   marked running with no wake time (the claimer loads it next).
/// - A fenced [`WriteOp::SetStatus`] to `Suspended` releases the instance (a suspended
///   instance is owned by nobody; it is claimed again when due).
/// - [`WriteOp::Finish`] and [`WriteOp::Retry`] clear the owner and bump the epoch, fenced or
///   not: an operator's termination or retry fences out a node still driving the instance.
/// - [`release`](Self::release) gives instances up (graceful shutdown).
///
/// An instance is **due** when it is unfinished, not owned by a live node other than the
/// claimer, and either running (a node was driving it, or it was just created, retried or
/// forked) or suspended with a wake time at or before `now` (its timer fired, or a signal, a
/// cancellation request or a child's end woke it).
///
/// # Fencing
///
/// A submission with a [`Fence`] is applied only if, inside the same transaction, the fenced
/// instance's owner is `fence.node` and its epoch is `fence.epoch`; otherwise the whole
/// submission is refused with [`StoreError::LeaseLost`] and nothing of it is applied. Ops in a
/// fenced submission that touch *other* instances must be control writes ([`WriteOp::Wake`],
/// [`WriteOp::Audit`]). Submissions without a fence are control writes any node may make:
/// cancel requests, terminations ([`WriteOp::Finish`] of a live instance), retries, forks,
/// wakes, attributes and audit entries of operator actions.
///
/// # Wake-ups
///
/// Every committed write that may let a node act sends a [`Wakeup`] to every subscriber of
/// [`wakeups`](Self::wakeups) in this process, after the commit: a signal stored
/// ([`Wakeup::Signal`]), a cancellation requested, an instance finished (and its parent's
/// [`Wakeup::ChildFinished`]), an instance that became due (created or retried unowned,
/// released, woken). Changes made by other processes sharing the store are announced too —
/// precisely, or as [`Wakeup::Changed`] when the backend only knows that something changed
/// (SQLite polls for that while anyone is subscribed; PostgreSQL can use `LISTEN/NOTIFY`).
/// A wake-up is a hint: the truth is what the store answers next.
pub trait Store: Send + Sync + 'static {
    /// Queues `ops` to be applied atomically; see the trait's documentation for the order,
    /// and for the fence, which refuses the whole submission with [`StoreError::LeaseLost`]
    /// when `fence` no longer holds.
    fn submit(&self, fence: Option<Fence>, ops: Vec<WriteOp>) -> Commit;

    /// Stores a new instance, or returns the existing one with the same id unchanged
    /// ([`Created::Existing`]). When new, `extra` (e.g. an audit entry, attributes of the new
    /// instance) is applied in the same transaction, and with `owner` the instance is owned by
    /// `owner.node` at epoch 1 ([`Created::New`] carries the lease); without, it is unowned and
    /// due at once.
    fn create(
        &self,
        record: InstanceRecord,
        owner: Option<LeaseTerms>,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<Created, StoreError>>;

    /// Stores a signal for a live instance and returns its id; the instance is woken (see
    /// [`WriteOp::Wake`]) and `extra` (e.g. an audit entry) applied in the same transaction.
    /// Fails with [`StoreError::NotFound`] or [`StoreError::Finished`] and stores nothing.
    fn add_signal(
        &self,
        instance: &str,
        name: &str,
        payload: String,
        at: Millis,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Loads an instance with its journal, failed attempts and unconsumed signals, from one
    /// consistent snapshot.
    fn load(&self, id: &str) -> BoxFuture<'_, Result<Option<LoadedInstance>, StoreError>>;

    /// Reads one instance record.
    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<InstanceRecord>, StoreError>>;

    /// Lists instances ordered by id.
    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>>;

    /// Claims up to `limit` due instances for `terms.node` (see the trait's documentation),
    /// running ones first; each gets a bumped epoch and `terms`' expiry. Also answers when the
    /// next suspended instance's timer falls due.
    fn claim_due(
        &self,
        terms: LeaseTerms,
        limit: usize,
    ) -> BoxFuture<'_, Result<Claimed, StoreError>>;

    /// Claims one instance the node was told about (a wake-up, its own timer): `Some` with the
    /// new lease when it is due and unowned or its owner's lease has ended; `Some` with the
    /// current lease, unchanged, when `terms.node` owns it already; `None` otherwise (finished,
    /// missing, not due, or owned by a live node).
    fn claim(
        &self,
        terms: LeaseTerms,
        instance: &str,
    ) -> BoxFuture<'_, Result<Option<Lease>, StoreError>>;

    /// The heartbeat: records `terms.node` as alive until `terms.expires_at()` (extending every
    /// lease it holds, in one write) and returns those of `held` (instance, epoch) it no
    /// longer holds at that epoch, and when it should next look for due instances
    /// ([`Renewal::next_due`]: so an idle node polls nothing between heartbeats). It also
    /// forgets nodes whose lease ended over [`NODE_RETENTION_MS`] ago and that own nothing. A node
    /// renews once before it creates or claims anything: a node the store never heard of has
    /// no live lease.
    fn renew(
        &self,
        terms: LeaseTerms,
        held: Vec<(String, u64)>,
    ) -> BoxFuture<'_, Result<Renewal, StoreError>>;

    /// Gives up `node`'s ownership of `instances` (`None`: of all its instances, and its lease
    /// ends now — a graceful shutdown), so other nodes can claim them at once. Instances it does
    /// not own are left alone.
    fn release(
        &self,
        node: &NodeId,
        instances: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A new subscription to wake-ups.
    fn wakeups(&self) -> Wakeups;

    /// Proves the store can still write: a small write that leaves nothing behind, queued
    /// behind earlier writes (used by `/readyz`).
    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Waits until everything submitted so far is durable, then stops accepting writes.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Commit histograms, when the store keeps them (`None`: it keeps none).
    fn metrics(&self) -> Option<std::sync::Arc<StoreMetrics>>;
}

/// What operators and the server need from storage beyond the engine's [`Store`]: search,
/// details, analytics, the audit log and the cluster's nodes. (The bookkeeping of operator
/// actions — retry, fork, terminate — is written through [`Store::submit`] as unfenced
/// [`WriteOp::Retry`], [`WriteOp::Fork`] and [`WriteOp::Finish`].)
pub trait StoreAdmin: Send + Sync + 'static {
    /// Instances matching `query`, newest first.
    fn search(&self, query: Query) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>>;

    /// Everything about one instance, superseded entries included.
    fn details(&self, id: &str) -> BoxFuture<'_, Result<Option<Details>, StoreError>>;

    /// The attributes of each of `ids` (key → JSON text); ids without any are left out.
    fn attributes(&self, ids: Vec<String>) -> BoxFuture<'_, Result<AttributeMap, StoreError>>;

    /// Counts by workflow and status (all instances).
    fn counts(&self) -> BoxFuture<'_, Result<Vec<StatusCount>, StoreError>>;

    /// Counts of instances created in a window.
    fn stats(&self, query: StatsQuery) -> BoxFuture<'_, Result<Stats, StoreError>>;

    /// Aggregates attribute `key` over the instances matching `query` (cursor and limit
    /// ignored).
    fn aggregate(&self, key: String, query: Query) -> BoxFuture<'_, Result<Aggregate, StoreError>>;

    /// The newest `limit` audit records, newest first.
    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>>;

    /// Every node that renewed a lease and was not forgotten since (see
    /// [`NODE_RETENTION_MS`]), by id, with how many unfinished instances each owns now.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>, StoreError>>;

    /// The current lease of each of `ids` that has an owner (its node, epoch and the node's
    /// lease end; 0 when that node never renewed), in the order of `ids`. Unowned (suspended,
    /// finished, released) and missing ids are left out. A lease whose end has passed is still
    /// listed: its instance keeps that owner until another node claims it.
    fn leases(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>>;

    /// The ids of unfinished (running or suspended) instances — of `workflow` when given —
    /// after the id `after`, in id order (bytewise), at most `limit` (0: no limit). Paging
    /// through them with the last id as `after` visits every instance that stays unfinished
    /// once, at a cost that grows with the instances passed, not with the pages: the deploy
    /// check (`Runtime::check_compatibility`) walks 100,000 waiting instances this way.
    fn unfinished(
        &self,
        workflow: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
}

/// A complete backend: the engine's [`Store`], the operators' [`StoreAdmin`], the workers'
/// [`TaskQueue`](task::TaskQueue) and the [`WorkflowQueues`](flow::WorkflowQueues).
/// Implemented for every type that implements all four.
pub trait Backend: Store + StoreAdmin + task::TaskQueue + flow::WorkflowQueues {}

impl<T: Store + StoreAdmin + task::TaskQueue + flow::WorkflowQueues> Backend for T {}
