//! Workflow queues ([`WorkflowQueues`](crate::store::flow::WorkflowQueues)): enqueued
//! instances wait unclaimable until admitted; admission follows priority then order of
//! enqueueing, and never passes a queue's concurrency, per-key or rate limit, even when
//! admissions run at once; deduplication keys; stored configurations.

use super::{T0, node, register, terms};
use crate::store::flow::{Admitted, Enqueued, QueueConfig, QueueEntry};
use crate::store::{Backend, InstanceRecord, Status, WriteOp};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn queued(id: &str, at: i64) -> InstanceRecord {
    InstanceRecord {
        status: Status::Queued,
        ..InstanceRecord::new(id, "wf", "v1", "null", at)
    }
}

fn on(queue: &str, priority: i32, key: Option<&str>, dedup: Option<&str>) -> QueueEntry {
    QueueEntry {
        queue: queue.to_string(),
        priority,
        key: key.map(str::to_string),
        dedup: dedup.map(str::to_string),
    }
}

async fn enqueue(store: &dyn Backend, id: &str, entry: QueueEntry) -> Enqueued {
    store
        .enqueue_instance(queued(id, T0), entry, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("enqueueing `{id}` failed: {e}"))
}

async fn enqueue_new(store: &dyn Backend, id: &str, entry: QueueEntry) {
    let got = enqueue(store, id, entry).await;
    assert!(
        matches!(got, Enqueued::New),
        "enqueueing `{id}`: expected New, got {got:?}"
    );
}

async fn admit(store: &dyn Backend, now: i64) -> Admitted {
    store
        .admit(now, 100)
        .await
        .unwrap_or_else(|e| panic!("admitting failed: {e}"))
}

async fn configure(store: &dyn Backend, queue: &str, config: QueueConfig) {
    store
        .set_queue_config(queue.to_string(), config)
        .await
        .unwrap_or_else(|e| panic!("configuring `{queue}` failed: {e}"));
}

async fn finish(store: &dyn Backend, id: &str) {
    store
        .submit(
            None,
            vec![WriteOp::Finish {
                instance: id.to_string(),
                status: Status::Completed,
                output: Some("null".into()),
                error: None,
                failed_step: None,
                at: T0,
            }],
        )
        .await
        .unwrap_or_else(|e| panic!("finishing `{id}` failed: {e}"));
}

async fn status(store: &dyn Backend, id: &str) -> Status {
    store
        .get(id)
        .await
        .unwrap_or_else(|e| panic!("reading `{id}` failed: {e}"))
        .unwrap_or_else(|| panic!("`{id}` is missing"))
        .status
}

/// A queued instance is stored at once, is not due (no claim takes it), and once admitted it
/// is running and due for any node.
pub async fn enqueued_instances_wait_until_admitted(store: Arc<dyn Backend>) {
    let s = &*store;
    let a = node("node-a");
    register(s, &a, T0, 600_000).await;
    enqueue_new(s, "q1", on("jobs", 0, None, None)).await;
    assert_eq!(status(s, "q1").await, Status::Queued);
    let claimed = s
        .claim_due(terms(&a, T0, 600_000), 10)
        .await
        .expect("claim_due");
    assert!(
        claimed.leases.is_empty(),
        "a queued instance was claimed before admission: {:?}",
        claimed.leases
    );
    assert!(
        s.claim(terms(&a, T0, 600_000), "q1")
            .await
            .expect("claim")
            .is_none(),
        "a queued instance was claimed by id before admission"
    );
    let mut wakeups = s.wakeups();
    let got = admit(s, T0).await;
    assert_eq!(got.instances, vec!["q1".to_string()]);
    assert_eq!(got.waiting, 0);
    assert_eq!(status(s, "q1").await, Status::Running);
    let w = tokio::time::timeout(Duration::from_secs(5), wakeups.recv())
        .await
        .expect("admission announced nothing");
    assert!(
        matches!(&w, Some(crate::store::Wakeup::Due { instance }) if instance == "q1"),
        "admission announced {w:?}, not q1 due"
    );
    let claimed = s
        .claim_due(terms(&a, T0, 600_000), 10)
        .await
        .expect("claim_due");
    assert_eq!(claimed.leases.len(), 1, "the admitted instance is due");
    // Enqueueing an existing id stores nothing and returns it.
    let again = enqueue(s, "q1", on("jobs", 0, None, None)).await;
    assert!(
        matches!(&again, Enqueued::Existing(r) if r.id == "q1" && r.status == Status::Running),
        "enqueueing an existing id: {again:?}"
    );
    // A queued instance that was terminated is never admitted.
    enqueue_new(s, "q2", on("jobs", 0, None, None)).await;
    finish(s, "q2").await;
    assert!(admit(s, T0).await.instances.is_empty());
}

/// Higher priority first, then the order of enqueueing; never more unfinished than the
/// concurrency limit; an end gives its room back.
pub async fn admission_follows_priority_within_the_concurrency_limit(store: Arc<dyn Backend>) {
    let s = &*store;
    configure(s, "jobs", QueueConfig::default().concurrency(2)).await;
    for (id, prio) in [("a", 0), ("b", 5), ("c", 5), ("d", 1)] {
        enqueue_new(s, id, on("jobs", prio, None, None)).await;
    }
    let first = admit(s, T0).await;
    assert_eq!(first.instances, vec!["b".to_string(), "c".to_string()]);
    assert_eq!(first.waiting, 2);
    assert!(
        admit(s, T0).await.instances.is_empty(),
        "admitted past the concurrency limit"
    );
    finish(s, "b").await;
    assert_eq!(admit(s, T0).await.instances, vec!["d".to_string()]);
    finish(s, "c").await;
    finish(s, "d").await;
    assert_eq!(admit(s, T0).await.instances, vec!["a".to_string()]);
    // Another queue is not limited by this one's.
    enqueue_new(s, "x", on("other", 0, None, None)).await;
    assert_eq!(admit(s, T0).await.instances, vec!["x".to_string()]);
}

/// At most `per_key` unfinished instances share a concurrency key; a busy key is passed over,
/// not waited for.
pub async fn a_busy_key_is_passed_over(store: Arc<dyn Backend>) {
    let s = &*store;
    configure(s, "jobs", QueueConfig::default().per_key(1)).await;
    enqueue_new(s, "a", on("jobs", 0, Some("alice"), None)).await;
    enqueue_new(s, "b", on("jobs", 0, Some("alice"), None)).await;
    enqueue_new(s, "c", on("jobs", 0, Some("bob"), None)).await;
    enqueue_new(s, "d", on("jobs", 0, None, None)).await;
    assert_eq!(
        admit(s, T0).await.instances,
        vec!["a".to_string(), "c".to_string(), "d".to_string()]
    );
    assert!(admit(s, T0).await.instances.is_empty());
    finish(s, "a").await;
    assert_eq!(admit(s, T0).await.instances, vec!["b".to_string()]);
}

/// A deduplication key held by a queued or unfinished instance returns that instance and
/// stores nothing; once it has finished the key is free.
pub async fn a_held_deduplication_key_returns_its_holder(store: Arc<dyn Backend>) {
    let s = &*store;
    enqueue_new(s, "first", on("jobs", 0, None, Some("order-1"))).await;
    let dup = enqueue(s, "second", on("jobs", 0, None, Some("order-1"))).await;
    assert!(
        matches!(&dup, Enqueued::Duplicate(r) if r.id == "first"),
        "a second enqueue with a held key: {dup:?}"
    );
    assert!(
        s.get("second").await.expect("get").is_none(),
        "the duplicate was stored"
    );
    // Another queue has its own keys.
    enqueue_new(s, "elsewhere", on("other", 0, None, Some("order-1"))).await;
    admit(s, T0).await;
    let dup = enqueue(s, "third", on("jobs", 0, None, Some("order-1"))).await;
    assert!(
        matches!(&dup, Enqueued::Duplicate(r) if r.id == "first"),
        "the key is held while its instance runs: {dup:?}"
    );
    finish(s, "first").await;
    enqueue_new(s, "fourth", on("jobs", 0, None, Some("order-1"))).await;
}

/// At most `limit` admissions per window; the answer says when the next slot opens.
pub async fn a_rate_limit_admits_n_per_period(store: Arc<dyn Backend>) {
    let s = &*store;
    configure(
        s,
        "jobs",
        QueueConfig::default().rate(2, Duration::from_millis(1000)),
    )
    .await;
    for id in ["a", "b", "c"] {
        enqueue_new(s, id, on("jobs", 0, None, None)).await;
    }
    let first = admit(s, T0).await;
    assert_eq!(first.instances, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(
        first.next_at,
        Some(T0 + 1000),
        "when the window frees a slot"
    );
    assert!(admit(s, T0 + 500).await.instances.is_empty());
    assert_eq!(admit(s, T0 + 1000).await.instances, vec!["c".to_string()]);
}

/// Admissions made at once never pass a concurrency limit together.
pub async fn concurrent_admissions_never_pass_the_limit(store: Arc<dyn Backend>) {
    configure(&*store, "jobs", QueueConfig::default().concurrency(3)).await;
    for i in 0..20 {
        enqueue_new(&*store, &format!("i{i:02}"), on("jobs", 0, None, None)).await;
    }
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        handles.push(tokio::spawn(async move { admit(&*s, T0).await.instances }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("admission task"));
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 3, "admitted {all:?} under a limit of 3");
    assert_eq!(distinct.len(), 3, "an instance was admitted twice: {all:?}");
}

/// The stored configuration is what every admission uses and what the listing shows, with
/// each queue's queued and running counts.
pub async fn configurations_are_stored_and_listed(store: Arc<dyn Backend>) {
    let s = &*store;
    let limits = QueueConfig::default()
        .concurrency(1)
        .per_key(1)
        .rate(10, Duration::from_secs(60));
    configure(s, "jobs", limits).await;
    enqueue_new(s, "a", on("jobs", 0, None, None)).await;
    enqueue_new(s, "b", on("jobs", 0, None, None)).await;
    enqueue_new(s, "c", on("plain", 0, None, None)).await;
    admit(s, T0).await;
    let listed = s.workflow_queues().await.expect("workflow_queues");
    let jobs = listed
        .iter()
        .find(|q| q.queue == "jobs")
        .unwrap_or_else(|| panic!("`jobs` is not listed: {listed:?}"));
    assert_eq!(jobs.config, limits);
    assert_eq!((jobs.queued, jobs.running), (1, 1), "{jobs:?}");
    assert_eq!(jobs.oldest_queued, Some(T0));
    let plain = listed
        .iter()
        .find(|q| q.queue == "plain")
        .unwrap_or_else(|| panic!("`plain` is not listed: {listed:?}"));
    assert_eq!(plain.config, QueueConfig::default(), "no limits by default");
    assert_eq!((plain.queued, plain.running), (0, 1), "{plain:?}");
    // A change applies to the next admission.
    configure(s, "jobs", limits.concurrency(2)).await;
    assert_eq!(admit(s, T0).await.instances, vec!["b".to_string()]);
}
