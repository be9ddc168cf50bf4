//! Workflow queues in the store: flow control for starting workflows.
//!
//! An instance **enqueued** ([`WorkflowQueues::enqueue_instance`]) is stored at once with
//! status [`Status::Queued`](super::Status::Queued) — durable, visible, cancellable — together
//! with its [`QueueEntry`] (queue, priority, concurrency key, deduplication key). Nobody claims
//! a queued instance: it waits until a node **admits** it ([`WorkflowQueues::admit`]), which
//! makes it `running`, unowned and due (so any node with room claims and drives it, as after a
//! plain start without an owner).
//!
//! Admission decides, per queue and inside one write transaction, under that queue's
//! [`QueueConfig`] stored in the store (so every node applies the same limits, and a change
//! takes effect on all of them at once):
//!
//! - **concurrency**: at most `concurrency` admitted instances of the queue are unfinished
//!   (running or suspended) at once;
//! - **rate**: at most `rate.limit` admissions in any window of `rate.period_ms`;
//! - **per key**: at most `per_key` unfinished admitted instances share one concurrency key;
//! - **order**: higher priority first, then first enqueued first (a queued instance whose key
//!   is at its limit is passed over, not waited for).
//!
//! Two nodes never admit past a limit together: SQLite and the memory store have one writer;
//! PostgreSQL locks the queue's configuration row (`FOR UPDATE`) for the admission.
//!
//! A **deduplication key** is unique among a queue's instances that are queued or unfinished:
//! enqueueing another one with a key in use stores nothing and answers the instance holding it
//! ([`Enqueued::Duplicate`]); once that instance has finished, the key is free again.
//!
//! An instance that finishes is announced ([`Wakeup::Finished`](super::Wakeup::Finished)) as
//! always: nodes with queued work admit again then. A retried instance runs again at once,
//! outside its queue's limits.

use super::{InstanceRecord, Millis, StoreError, WriteOp};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The queue an instance is enqueued on when none is named.
pub const DEFAULT_QUEUE: &str = "default";

/// Longest concurrency or deduplication key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// A rate limit: at most `limit` admissions in any window of `period_ms` milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Admissions per window (at least 1).
    pub limit: u32,
    /// The window, in milliseconds (at least 1).
    pub period_ms: Millis,
}

/// The limits of one workflow queue. The default has none: every enqueued instance is admitted
/// at once, in priority order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// At most this many admitted instances of the queue are unfinished at once (`None`:
    /// unlimited). `Some(0)` pauses the queue: nothing more is admitted.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// At most this many unfinished admitted instances share one concurrency key (`None`:
    /// unlimited). Instances enqueued without a key are not limited by it.
    #[serde(default)]
    pub per_key: Option<u32>,
    /// At most this many admissions per period (`None`: no rate limit).
    #[serde(default)]
    pub rate: Option<Rate>,
}

impl QueueConfig {
    /// No limits (the default).
    pub fn unlimited() -> QueueConfig {
        QueueConfig::default()
    }

    /// At most `n` instances of the queue unfinished at once.
    pub fn concurrency(mut self, n: u32) -> QueueConfig {
        self.concurrency = Some(n);
        self
    }

    /// At most `n` unfinished instances per concurrency key.
    pub fn per_key(mut self, n: u32) -> QueueConfig {
        self.per_key = Some(n);
        self
    }

    /// At most `limit` admissions per `period`.
    pub fn rate(mut self, limit: u32, period: std::time::Duration) -> QueueConfig {
        self.rate = Some(Rate {
            limit,
            period_ms: period.as_millis().min(i64::MAX as u128) as Millis,
        });
        self
    }

    /// Refuses a configuration that cannot work (a rate of 0 per period, an empty period),
    /// saying why.
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self.rate {
            if r.limit == 0 {
                return Err(
                    "a rate limit admits at least 1 instance per period; to stop the \
                     queue set its concurrency to 0"
                        .into(),
                );
            }
            if r.period_ms <= 0 {
                return Err("a rate limit's period is at least 1 ms".into());
            }
        }
        Ok(())
    }
}

/// Checks a concurrency or deduplication key: 1 to [`MAX_KEY_BYTES`] bytes without control
/// characters.
pub fn check_key(what: &str, key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "a {what} has 1 to {MAX_KEY_BYTES} bytes; got {} bytes",
            key.len()
        ));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(format!("the {what} holds the control character {c:?}"));
    }
    Ok(())
}

/// How an instance waits in its queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The queue (see [`check_queue`](super::task::check_queue)).
    pub queue: String,
    /// Higher is admitted first (default 0).
    pub priority: i32,
    /// The concurrency key ([`QueueConfig::per_key`]).
    pub key: Option<String>,
    /// The deduplication key.
    pub dedup: Option<String>,
}

/// The answer of [`WorkflowQueues::enqueue_instance`].
#[derive(Clone, Debug)]
pub enum Enqueued {
    /// The instance was stored, queued.
    New,
    /// An instance with that id existed already; it is returned unchanged and nothing was
    /// stored.
    Existing(Box<InstanceRecord>),
    /// An instance of the queue holds the deduplication key (queued or unfinished); it is
    /// returned and nothing was stored.
    Duplicate(Box<InstanceRecord>),
}

/// The answer of [`WorkflowQueues::admit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// The instances admitted now (running, unowned and due), in admission order.
    pub instances: Vec<String>,
    /// How many stay queued (in all queues).
    pub waiting: u64,
    /// The earliest time a rate limit lets a queue that still has queued instances admit
    /// again; `None` when no queued instance waits for a rate limit.
    pub next_at: Option<Millis>,
}

/// One workflow queue as operators see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowQueueStats {
    /// The queue.
    pub queue: String,
    /// Its limits.
    pub config: QueueConfig,
    /// Instances waiting to be admitted.
    pub queued: u64,
    /// Admitted instances not finished yet.
    pub running: u64,
    /// When the oldest queued instance was enqueued.
    pub oldest_queued: Option<Millis>,
}

/// The store's side of workflow queues. See the [module documentation](self).
pub trait WorkflowQueues: Send + Sync + 'static {
    /// Stores `record` (whose status is [`Status::Queued`](super::Status::Queued)) unowned,
    /// waiting in `entry.queue`, with `extra` (e.g. an audit entry) in the same transaction —
    /// unless an instance with its id exists ([`Enqueued::Existing`]) or the queue holds
    /// `entry.dedup` ([`Enqueued::Duplicate`]), in which case nothing is stored. Makes sure the
    /// queue has a configuration (the default when it has none).
    fn enqueue_instance(
        &self,
        record: InstanceRecord,
        entry: QueueEntry,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<Enqueued, StoreError>>;

    /// Admits up to `limit` queued instances, in all queues, under each queue's configuration
    /// at `now` (see the [module documentation](self)): each becomes running, unowned and due
    /// (announced as [`Wakeup::Due`](super::Wakeup::Due)).
    fn admit(&self, now: Millis, limit: usize) -> BoxFuture<'_, Result<Admitted, StoreError>>;

    /// Sets the configuration of `queue` (effective for the next admission, on every node).
    fn set_queue_config(
        &self,
        queue: String,
        config: QueueConfig,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every workflow queue that has a configuration or holds an instance, by name.
    fn workflow_queues(&self) -> BoxFuture<'_, Result<Vec<WorkflowQueueStats>, StoreError>>;
}

/// What admission knows of one queue: the input of [`plan`].
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    pub(crate) config: QueueConfig,
    /// Admitted instances not finished.
    pub(crate) running: u64,
    /// Of those, how many per concurrency key.
    pub(crate) running_by_key: HashMap<String, u64>,
    /// Admission times within the rate window ending at `now`, oldest first.
    pub(crate) recent: Vec<Millis>,
    /// Queued instances (id, concurrency key), best first: priority descending, then order
    /// of enqueueing.
    pub(crate) candidates: Vec<(String, Option<String>)>,
}

/// Which candidates of one queue to admit at `now` (at most `limit`), and when its rate limit
/// lets it admit again if candidates are left for want of rate. The one rule every backend
/// applies.
pub(crate) fn plan(q: &mut QueueState, now: Millis, limit: usize) -> (Vec<String>, Option<Millis>) {
    let mut admitted = Vec::new();
    let cfg = q.config;
    let mut rate_blocked = false;
    let candidates = std::mem::take(&mut q.candidates);
    let total = candidates.len();
    for (id, key) in candidates {
        if admitted.len() >= limit {
            break;
        }
        if cfg.concurrency.is_some_and(|c| q.running >= u64::from(c)) {
            break;
        }
        if let Some(r) = cfg.rate
            && q.recent.len() as u64 >= u64::from(r.limit)
        {
            rate_blocked = true;
            break;
        }
        if let (Some(per), Some(k)) = (cfg.per_key, key.as_ref())
            && q.running_by_key.get(k).copied().unwrap_or(0) >= u64::from(per)
        {
            continue;
        }
        q.running += 1;
        if let Some(k) = key {
            *q.running_by_key.entry(k).or_default() += 1;
        }
        q.recent.push(now);
        admitted.push(id);
    }
    let next_at = match cfg.rate {
        Some(r)
            if rate_blocked
                || (admitted.len() < total && q.recent.len() as u64 >= u64::from(r.limit)) =>
        {
            // The window frees its oldest admission first.
            let over = q.recent.len() - r.limit as usize;
            q.recent.get(over).map(|t| t.saturating_add(r.period_ms))
        }
        _ => None,
    };
    (admitted, next_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(config: QueueConfig, candidates: &[(&str, Option<&str>)]) -> QueueState {
        QueueState {
            config,
            candidates: candidates
                .iter()
                .map(|(id, k)| (id.to_string(), k.map(str::to_string)))
                .collect(),
            ..QueueState::default()
        }
    }

    #[test]
    fn concurrency_caps_admissions() {
        let mut q = state(
            QueueConfig::default().concurrency(2),
            &[("a", None), ("b", None), ("c", None)],
        );
        q.running = 1;
        assert_eq!(plan(&mut q, 0, 10).0, vec!["a"]);
    }

    #[test]
    fn a_busy_key_is_passed_over() {
        let mut q = state(
            QueueConfig::default().per_key(1),
            &[("a", Some("k")), ("b", Some("k")), ("c", Some("j"))],
        );
        assert_eq!(plan(&mut q, 0, 10).0, vec!["a", "c"]);
    }

    #[test]
    fn a_rate_limit_says_when_the_next_slot_opens() {
        let mut q = state(
            QueueConfig::default().rate(2, std::time::Duration::from_millis(1000)),
            &[("a", None), ("b", None)],
        );
        q.recent = vec![100];
        let (ids, next) = plan(&mut q, 500, 10);
        assert_eq!(ids, vec!["a"]);
        assert_eq!(next, Some(1100));
    }
}
