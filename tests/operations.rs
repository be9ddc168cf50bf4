//! Operating instances through the runtime, on a real SQLite file: cooperative cancellation
//! (delivered to the waiting call so compensation runs), termination, retry from the failed
//! step, restart, fork, attributes, search with cursors, stats and the audit log.

use orch_runtime::prelude::*;
use orch_runtime::store::{Cursor, Query, StatsQuery};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
#[path = "support/wait.rs"]
mod wait;
use wait::wait_until;

#[path = "support/backends.rs"]
mod backends;

/// The store this suite runs on; tests/operations_postgres.rs runs it on PostgreSQL (its own
/// `backend()` is the one `crate::backend` names there).
#[allow(dead_code)]
fn backend() -> &'static str {
    "sqlite"
}

async fn runtime(dir: &tempfile::TempDir) -> backends::TestRuntime {
    backends::suite_runtime_in(crate::backend(), Some(dir.path())).await
}

/// Polls until the instance reaches `status` (bounded).
async fn wait_status(rt: &Runtime, id: &str, status: Status) -> orch_runtime::InstanceRecord {
    wait_until(&format!("instance {id} to be {status}"), || async {
        match rt.instance(id).await.expect("read") {
            Some(rec) if rec.status == status => Ok(rec),
            rec => Err(rec.map(|r| (r.status, r.error))),
        }
    })
    .await
}

// ---------- cancellation ----------

static RESERVED: AtomicU32 = AtomicU32::new(0);
static CHARGED: AtomicU32 = AtomicU32::new(0);
static RELEASED: AtomicU32 = AtomicU32::new(0);

#[step]
async fn reserve(order: u32) -> Result<u32, StepError> {
    RESERVED.fetch_add(1, Ordering::SeqCst);
    Ok(order)
}

#[step]
async fn charge(order: u32) -> Result<u32, StepError> {
    CHARGED.fetch_add(1, Ordering::SeqCst);
    Ok(order * 100)
}

#[step]
async fn release(order: u32) -> Result<(), StepError> {
    RELEASED.fetch_add(1, Ordering::SeqCst);
    let _ = order;
    Ok(())
}

#[workflow]
async fn cancellable(order: u32) -> Result<u32, StepError> {
    reserve(order).await?;
    orch::sleep(Duration::from_secs(3600)).await; // unloads: cancellation reloads it
    match charge(order).await {
        Ok(cents) => Ok(cents),
        Err(e) => {
            // Compensation runs after the cancellation.
            release(order).await?;
            Err(e)
        }
    }
}

#[tokio::test]
async fn cancel_ends_a_sleep_early_and_the_next_step_receives_it_so_compensation_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    let run = rt.start(Cancellable, 7).await.expect("start");
    wait_status(&rt, run.id(), Status::Suspended).await;
    rt.cancel(run.id(), "ops", "customer changed their mind")
        .await
        .expect("cancel");
    let rec = wait_status(&rt, run.id(), Status::Cancelled).await;
    assert_eq!(RESERVED.load(Ordering::SeqCst), 1);
    assert_eq!(CHARGED.load(Ordering::SeqCst), 0, "the charge never ran");
    assert_eq!(RELEASED.load(Ordering::SeqCst), 1, "compensation ran once");
    assert_eq!(rec.failed_step.as_deref(), Some("charge"));
    let err = run.result().await.expect("output").expect_err("an error");
    assert!(err.is_cancelled(), "{err:?}");
    let journal = rt.journal(run.id()).await.expect("journal");
    let names: Vec<&str> = journal.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["reserve", "", "charge", "release"]);
    // A finished instance cannot be cancelled again; nothing changes.
    let again = rt.cancel(run.id(), "ops", "again").await;
    assert!(
        matches!(again, Err(OrchError::Conflict { .. })),
        "{again:?}"
    );
    assert_eq!(
        rt.journal(run.id()).await.expect("journal").len(),
        journal.len()
    );
    // The request and who made it are in the audit log.
    let audit = rt.audit_log(10).await.expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "cancel" && a.actor == "ops" && a.target == run.id()),
        "{audit:?}"
    );
    rt.shutdown().await.expect("shutdown");
}

#[workflow]
async fn waits_forever() -> u32 {
    orch::signal::<u32>("never").await
}

#[tokio::test]
async fn cancelling_a_wait_without_timeout_ends_the_instance_cancelled_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    let run = rt.start(WaitsForever, ()).await.expect("start");
    wait_status(&rt, run.id(), Status::Suspended).await;
    rt.cancel(run.id(), "ops", "").await.expect("cancel");
    let rec = wait_status(&rt, run.id(), Status::Cancelled).await;
    let error = rec.error.expect("an error");
    assert!(error.contains("signal `never`"), "{error}");
    assert!(error.contains("signal_with_timeout"), "{error}");
    rt.shutdown().await.expect("shutdown");
}

static AFTER_SIGNAL: AtomicU32 = AtomicU32::new(0);

#[step]
async fn after_signal() -> Result<u32, StepError> {
    AFTER_SIGNAL.fetch_add(1, Ordering::SeqCst);
    Ok(1)
}

#[workflow]
async fn approval() -> Result<String, StepError> {
    match orch::signal_with_timeout::<String>("approve", Duration::from_secs(3600)).await {
        Some(who) => Ok(who),
        None => {
            // A cancellation looks like a timeout here; the next step says which it was.
            after_signal().await?;
            Ok("timed out".into())
        }
    }
}

#[tokio::test]
async fn a_wait_with_timeout_returns_none_on_cancel_and_the_next_step_gets_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    let run = rt.start(Approval, ()).await.expect("start");
    wait_status(&rt, run.id(), Status::Suspended).await;
    rt.cancel(run.id(), "ops", "").await.expect("cancel");
    wait_status(&rt, run.id(), Status::Cancelled).await;
    assert_eq!(AFTER_SIGNAL.load(Ordering::SeqCst), 0);
    let err = run.result().await.expect("output").expect_err("cancelled");
    assert!(err.is_cancelled());
    rt.shutdown().await.expect("shutdown");
}

static BACKOFF_CALLS: AtomicU32 = AtomicU32::new(0);

#[step(retry = Retry::fixed(Duration::from_secs(3600)).max_attempts(10))]
async fn always_down() -> Result<u32, StepError> {
    BACKOFF_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(StepError::retryable("service down"))
}

#[workflow]
async fn backing_off() -> Result<u32, StepError> {
    always_down().await
}

#[tokio::test]
async fn cancel_interrupts_a_retry_back_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    let run = rt.start(BackingOff, ()).await.expect("start");
    wait_until("a failed attempt", || async {
        let attempts = rt.attempts(run.id()).await.expect("attempts");
        if attempts.is_empty() {
            Err(attempts)
        } else {
            Ok(())
        }
    })
    .await;
    rt.cancel(run.id(), "ops", "").await.expect("cancel");
    wait_status(&rt, run.id(), Status::Cancelled).await;
    assert_eq!(
        BACKOFF_CALLS.load(Ordering::SeqCst),
        1,
        "no further attempt"
    );
    rt.shutdown().await.expect("shutdown");
}

#[workflow]
async fn sleepy_child() -> Result<u32, StepError> {
    orch::sleep(Duration::from_secs(3600)).await;
    charge(1).await
}

#[workflow]
async fn parent_of_sleepy() -> Result<u32, StepError> {
    sleepy_child().await
}

#[tokio::test]
async fn cancel_reaches_children_and_the_parent_ends_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    let run = rt.start(ParentOfSleepy, ()).await.expect("start");
    let child = format!("{}/1", run.id());
    wait_status(&rt, &child, Status::Suspended).await;
    rt.cancel(run.id(), "ops", "").await.expect("cancel");
    wait_status(&rt, &child, Status::Cancelled).await;
    wait_status(&rt, run.id(), Status::Cancelled).await;
    rt.shutdown().await.expect("shutdown");
}

// ---------- termination ----------

static SLOW_STARTED: AtomicBool = AtomicBool::new(false);
static SLOW_FINISHED: AtomicBool = AtomicBool::new(false);

#[step(retry = Retry::none())]
async fn slow_call() -> Result<(), StepError> {
    SLOW_STARTED.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    SLOW_FINISHED.store(true, Ordering::SeqCst);
    Ok(())
}

#[workflow]
async fn slow() -> Result<(), StepError> {
    slow_call().await
}

#[tokio::test]
async fn terminate_stops_a_running_step_and_records_who_did_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    let run = rt.start(Slow, ()).await.expect("start");
    wait_until("slow_call to run", || async {
        let started = SLOW_STARTED.load(Ordering::SeqCst);
        if started { Ok(()) } else { Err("not yet") }
    })
    .await;
    rt.terminate(run.id(), "alice", "stuck payment")
        .await
        .expect("terminate");
    let rec = wait_status(&rt, run.id(), Status::Terminated).await;
    assert_eq!(
        rec.error.as_deref(),
        Some("terminated by alice: stuck payment")
    );
    assert!(!SLOW_FINISHED.load(Ordering::SeqCst));
    assert!(matches!(
        run.result().await,
        Err(OrchError::Failed { .. } | OrchError::NoOutput { .. })
    ));
    let again = rt.terminate(run.id(), "alice", "").await;
    assert!(
        matches!(again, Err(OrchError::Conflict { .. })),
        "{again:?}"
    );
    rt.shutdown().await.expect("shutdown");
    // Nothing resumes it after a restart.
    let rt = runtime(&dir).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec = rt.instance(run.id()).await.expect("read").expect("exists");
    assert_eq!(rec.status, Status::Terminated);
    rt.shutdown().await.expect("shutdown");
}

// ---------- retry, restart, fork ----------

static SHIPPING_UP: AtomicBool = AtomicBool::new(false);
static STEP_A: AtomicU32 = AtomicU32::new(0);
static STEP_B: AtomicU32 = AtomicU32::new(0);
static STEP_C: AtomicU32 = AtomicU32::new(0);

#[step]
async fn step_a(n: u32) -> Result<u32, StepError> {
    STEP_A.fetch_add(1, Ordering::SeqCst);
    Ok(n + 1)
}

#[step(retry = Retry::fixed(ms(1)).max_attempts(2))]
async fn step_b(n: u32) -> Result<u32, StepError> {
    STEP_B.fetch_add(1, Ordering::SeqCst);
    if SHIPPING_UP.load(Ordering::SeqCst) {
        Ok(n * 10)
    } else {
        Err(StepError::retryable("shipping is down"))
    }
}

#[step]
async fn step_c(n: u32) -> Result<u32, StepError> {
    STEP_C.fetch_add(1, Ordering::SeqCst);
    Ok(n + 5)
}

#[workflow]
async fn abc(n: u32) -> Result<u32, StepError> {
    let a = step_a(n).await?;
    let b = step_b(a).await?;
    step_c(b).await
}

#[tokio::test]
async fn retry_runs_a_failed_instance_again_from_its_failed_step_keeping_the_old_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    let run = rt.start(Abc, 1).await.expect("start");
    let rec = wait_status(&rt, run.id(), Status::Failed).await;
    assert_eq!(rec.failed_step.as_deref(), Some("step_b"));
    assert_eq!(rec.failed_seq, Some(2));
    // Retrying a failed instance from a seq past its journal is refused; nothing changes.
    let bad = rt.retry(run.id(), Some(9), "ops").await;
    assert!(matches!(bad, Err(OrchError::InvalidArgument(_))), "{bad:?}");
    assert_eq!(
        rt.instance(run.id())
            .await
            .expect("read")
            .expect("rec")
            .status,
        Status::Failed
    );

    SHIPPING_UP.store(true, Ordering::SeqCst);
    let from = rt.retry(run.id(), None, "ops").await.expect("retry");
    assert_eq!(from, 2);
    let rec = wait_status(&rt, run.id(), Status::Completed).await;
    assert_eq!(rec.retries, 1);
    assert_eq!(rec.failed_step, None);
    assert_eq!(run.result().await.expect("output"), Ok(25));
    assert_eq!(
        STEP_A.load(Ordering::SeqCst),
        1,
        "step_a is not called again"
    );
    assert_eq!(
        STEP_B.load(Ordering::SeqCst),
        3,
        "2 failed attempts, 1 after retry"
    );
    let d = rt.details(run.id()).await.expect("details");
    assert_eq!(d.journal.len(), 3);
    assert!(d.attempts.is_empty(), "the new run of step_b did not fail");
    assert_eq!(d.superseded.len(), 1);
    assert_eq!(d.superseded[0].retry, 1);
    assert_eq!(d.superseded[0].entry.name, "step_b");
    assert_eq!(
        d.superseded_attempts.len(),
        2,
        "both failed attempts are kept"
    );

    // A completed instance cannot be retried.
    let again = rt.retry(run.id(), None, "ops").await;
    assert!(
        matches!(again, Err(OrchError::Conflict { .. })),
        "{again:?}"
    );

    // Restart: a new instance with the same input.
    let new_id = rt.restart(run.id(), "ops").await.expect("restart");
    assert_ne!(new_id, run.id());
    wait_status(&rt, &new_id, Status::Completed).await;
    assert_eq!(
        rt.instance(&new_id)
            .await
            .expect("read")
            .expect("rec")
            .input,
        "1"
    );
    assert_eq!(STEP_A.load(Ordering::SeqCst), 2);

    // Fork from seq 2: step_a is copied, step_b and step_c run anew.
    let (b, c) = (STEP_B.load(Ordering::SeqCst), STEP_C.load(Ordering::SeqCst));
    let fork = rt.fork(run.id(), 2, "ops").await.expect("fork");
    wait_status(&rt, &fork, Status::Completed).await;
    assert_eq!(STEP_A.load(Ordering::SeqCst), 2, "the fork replays step_a");
    assert_eq!(STEP_B.load(Ordering::SeqCst), b + 1);
    assert_eq!(STEP_C.load(Ordering::SeqCst), c + 1);
    let bad = rt.fork(run.id(), 0, "ops").await;
    assert!(matches!(bad, Err(OrchError::InvalidArgument(_))), "{bad:?}");

    let actions: Vec<String> = rt
        .audit_log(10)
        .await
        .expect("audit")
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["fork", "restart", "retry"]);
    rt.shutdown().await.expect("shutdown");
}

// ---------- attributes, search, stats ----------

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Cart {
    customer: String,
    items: u32,
}

#[workflow]
async fn basket(b: Cart) -> u32 {
    orch::set_attribute("customer", &b.customer).await;
    orch::set_attribute("items", b.items).await;
    b.items
}

async fn search_and_aggregate(rt: &Runtime) {
    for i in 0..12u32 {
        let b = Cart {
            customer: format!("c{}", i % 3),
            items: i,
        };
        let run = rt
            .start_with_id(Basket, format!("basket-{i:02}"), b)
            .await
            .expect("start");
        run.result().await.expect("done");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let by_customer = rt
        .search(Query {
            attributes: vec![("customer".into(), "\"c1\"".into())],
            ..Default::default()
        })
        .await
        .expect("search");
    let ids: Vec<&str> = by_customer.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["basket-10", "basket-07", "basket-04", "basket-01"]);
    let by_number = rt
        .search(Query {
            attributes: vec![("items".into(), "7.0".into())],
            ..Default::default()
        })
        .await
        .expect("search");
    assert_eq!(by_number.len(), 1, "7.0 matches the stored 7");
    let agg = rt
        .aggregate(
            "items",
            Query {
                id_prefix: Some("basket-0".into()),
                ..Default::default()
            },
        )
        .await
        .expect("aggregate");
    assert_eq!((agg.count, agg.numeric), (10, 10));
    assert_eq!(agg.sum, 45.0);
    assert_eq!((agg.min, agg.max), (Some(0.0), Some(9.0)));

    // Changed since: only instances whose last change is at or after the given time.
    let ten = rt.instance("basket-10").await.expect("read").expect("rec");
    let changed = rt
        .search(Query {
            id_prefix: Some("basket-".into()),
            updated_after: Some(ten.updated_at),
            ..Default::default()
        })
        .await
        .expect("search");
    assert!(changed.iter().all(|r| r.updated_at >= ten.updated_at));
    assert!(changed.iter().any(|r| r.id == "basket-10"));
    assert!(!changed.iter().any(|r| r.id == "basket-00"), "{changed:?}");

    // Cursor paging, newest first, while new instances arrive between pages.
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    let mut extra = 0;
    loop {
        let page = rt
            .search(Query {
                id_prefix: Some("basket-".into()),
                after: after.clone(),
                limit: 5,
                ..Default::default()
            })
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| Cursor {
            created_at: r.created_at,
            id: r.id.clone(),
        });
        seen.extend(page.into_iter().map(|r| r.id));
        extra += 1;
        let b = Cart {
            customer: "late".into(),
            items: 1,
        };
        rt.start_with_id(Basket, format!("basket-late-{extra}"), b)
            .await
            .expect("start");
    }
    let expected: Vec<String> = (0..12).rev().map(|i| format!("basket-{i:02}")).collect();
    assert_eq!(seen, expected, "no gap, no repeat, newest first");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let stats = rt
        .stats(StatsQuery {
            from: now - 3_600_000,
            to: now + 1_000,
            bucket_ms: 60_000,
            workflow: Some("basket".into()),
        })
        .await
        .expect("stats");
    let completed: u64 = stats
        .totals
        .iter()
        .filter(|t| t.status == Status::Completed)
        .map(|t| t.count)
        .sum();
    assert!(completed >= 12, "{stats:?}");
    let in_series: u64 = stats.series.iter().map(|b| b.count).sum();
    let in_totals: u64 = stats.totals.iter().map(|t| t.count).sum();
    assert_eq!(in_series, in_totals);
}

#[tokio::test]
async fn attributes_search_cursors_and_aggregates_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir).await;
    search_and_aggregate(&rt).await;
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn attributes_search_cursors_and_aggregates_in_memory() {
    let rt = Runtime::builder().in_memory().build().await.expect("rt");
    search_and_aggregate(&rt).await;
    rt.shutdown().await.expect("shutdown");
}
