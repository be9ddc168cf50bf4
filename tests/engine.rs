//! Engine behaviour on the in-memory store: retries, timeouts, panics, compensation,
//! background work, parallel steps, child workflows, idempotent start, signals, custom status,
//! recorded values and bad input.

use orch_runtime::prelude::*;
use orch_runtime::{EntryKind, ListFilter};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
#[path = "support/wait.rs"]
mod wait;
use wait::wait_until;

#[path = "support/backends.rs"]
mod backends;

/// The store this suite runs on; tests/engine_postgres.rs runs it on PostgreSQL (its own
/// `backend()` is the one `crate::backend` names there).
#[allow(dead_code)]
fn backend() -> &'static str {
    "memory"
}

async fn runtime() -> backends::TestRuntime {
    backends::suite_runtime(crate::backend()).await
}

// ---------- retries ----------

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[step(retry = Retry::fixed(ms(5)).max_attempts(4))]
async fn flaky() -> Result<u32, StepError> {
    let n = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if n < 3 {
        Err(StepError::retryable(format!(
            "service unavailable (call {n})"
        )))
    } else {
        Ok(n)
    }
}

#[workflow]
async fn retrying() -> Result<u32, StepError> {
    flaky().await
}

#[tokio::test]
async fn a_failing_step_is_retried_and_every_failed_attempt_is_journaled() {
    let rt = runtime().await;
    let run = rt.start(Retrying, ()).await.expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(3));
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    let journal = rt.journal(run.id()).await.expect("journal");
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].attempts, 3);
    let attempts = rt.attempts(run.id()).await.expect("attempts");
    let errors: Vec<_> = attempts.iter().map(|a| a.error.as_str()).collect();
    assert_eq!(
        errors,
        [
            "service unavailable (call 1)",
            "service unavailable (call 2)"
        ]
    );
}

static PERMANENT_CALLS: AtomicU32 = AtomicU32::new(0);

#[step(retry = Retry::fixed(ms(1)).max_attempts(5))]
async fn bad_request() -> Result<u32, StepError> {
    PERMANENT_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(StepError::permanent("400 bad request"))
}

#[workflow]
async fn permanent_failure() -> Result<u32, StepError> {
    bad_request().await
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let rt = runtime().await;
    let run = rt.start(PermanentFailure, ()).await.expect("start");
    let out = run.result().await.expect("result");
    assert_eq!(out, Err(StepError::permanent("400 bad request")));
    assert_eq!(PERMANENT_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(run.status().await.expect("status"), Status::Failed);
}

/// A service's answer is outside text: it may hold any character, NUL included.
#[step(retry = Retry::fixed(ms(1)).max_attempts(2))]
async fn odd_answer() -> Result<u32, StepError> {
    Err(StepError::permanent(
        "502 from upstream: \u{0}\u{1}é\u{0}end",
    ))
}

#[workflow]
async fn odd_failure() -> Result<u32, StepError> {
    odd_answer().await
}

#[tokio::test]
async fn an_error_text_with_any_characters_is_recorded_and_ends_the_instance() {
    let rt = runtime().await;
    let run = rt.start(OddFailure, ()).await.expect("start");
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run.result())
        .await
        .expect("the instance ends (its end was recorded)")
        .expect("result");
    let err = out.expect_err("the step failed");
    assert!(err.to_string().contains("502 from upstream"), "{err}");
    assert_eq!(run.status().await.expect("status"), Status::Failed);
}

// ---------- timeouts and panics ----------

static SLOW_CALLS: AtomicU32 = AtomicU32::new(0);

#[step(retry = Retry::fixed(ms(1)).max_attempts(2), timeout = ms(30))]
async fn slow() -> Result<u32, StepError> {
    SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(1)
}

#[workflow]
async fn timing_out() -> Result<u32, StepError> {
    slow().await
}

#[tokio::test]
async fn each_attempt_is_limited_by_the_timeout() {
    let rt = runtime().await;
    let run = rt.start(TimingOut, ()).await.expect("start");
    let err = run.result().await.expect("result").expect_err("timed out");
    assert!(err.message.contains("timed out after 30ms"), "{err}");
    assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 2);
    let attempts = rt.attempts(run.id()).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
}

static PANICKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[step(retry = Retry::fixed(ms(1)).max_attempts(3))]
async fn panics_once() -> Result<u32, StepError> {
    if PANICKY_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("index out of bounds");
    }
    Ok(7)
}

#[step(retry = Retry::none())]
async fn always_panics() -> u32 {
    panic!("the parser exploded")
}

#[workflow]
async fn panicking(fatal: bool) -> Result<u32, StepError> {
    if fatal {
        return Ok(always_panics().await);
    }
    panics_once().await
}

#[tokio::test]
async fn a_panic_is_a_failed_attempt_and_is_retried() {
    let rt = runtime().await;
    let run = rt.start(Panicking, false).await.expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(7));
    let attempts = rt.attempts(run.id()).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert!(
        attempts[0].error.contains("index out of bounds"),
        "{attempts:?}"
    );
}

#[tokio::test]
async fn a_panic_the_step_type_cannot_hold_fails_the_instance_visibly() {
    let rt = runtime().await;
    let run = rt.start(Panicking, true).await.expect("start");
    let err = run.result().await.expect_err("fails");
    let msg = err.to_string();
    assert!(msg.contains("the parser exploded"), "{msg}");
    assert!(msg.contains("always_panics"), "{msg}");
    assert_eq!(run.status().await.expect("status"), Status::Failed);
}

// ---------- compensation ----------

static RELEASED: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
enum ShopError {
    #[error("card declined")]
    Declined,
    #[error("{0}")]
    Step(#[from] StepError),
}

impl Retryable for ShopError {
    fn is_retryable(&self) -> bool {
        !matches!(self, ShopError::Declined)
    }
}

#[step]
async fn reserve(qty: u32) -> Result<String, ShopError> {
    Ok(format!("res-{qty}"))
}

#[step(retry = Retry::fixed(ms(1)).max_attempts(5))]
async fn charge(card: String) -> Result<String, ShopError> {
    if card == "declined" {
        return Err(ShopError::Declined);
    }
    Ok("paid".into())
}

#[step]
async fn release(reservation: String) -> Result<(), ShopError> {
    assert!(reservation.starts_with("res-"));
    RELEASED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[workflow]
async fn buy(card: String) -> Result<String, ShopError> {
    let reservation = reserve(2).await?;
    match charge(card).await {
        Ok(p) => Ok(p),
        Err(e) => {
            release(reservation).await?;
            Err(e)
        }
    }
}

#[tokio::test]
async fn a_declined_payment_is_compensated_and_not_retried() {
    let rt = runtime().await;
    let ok = rt.start(Buy, "4242".into()).await.expect("start");
    assert_eq!(ok.result().await.expect("result"), Ok("paid".into()));
    let declined = rt.start(Buy, "declined".into()).await.expect("start");
    assert_eq!(
        declined.result().await.expect("result"),
        Err(ShopError::Declined)
    );
    assert_eq!(RELEASED.load(Ordering::SeqCst), 1);
    let journal = rt.journal(declined.id()).await.expect("journal");
    let names: Vec<_> = journal.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["reserve", "charge", "release"]);
    assert_eq!(journal[1].attempts, 1, "declined is permanent");
}

// ---------- background ----------

static ANALYTICS_CALLS: AtomicU32 = AtomicU32::new(0);

#[step(retry = Retry::fixed(ms(1)).max_attempts(2))]
async fn record_analytics(order: u32) -> Result<(), StepError> {
    ANALYTICS_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(StepError::retryable(format!(
        "analytics is down (order {order})"
    )))
}

#[workflow]
async fn with_background(order: u32) -> Result<u32, StepError> {
    orch::background(record_analytics(order));
    Ok(order * 2)
}

#[tokio::test]
async fn background_failure_is_recorded_but_never_fails_the_workflow() {
    let rt = runtime().await;
    let run = rt.start(WithBackground, 21).await.expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(42));
    assert_eq!(run.status().await.expect("status"), Status::Completed);
    assert_eq!(ANALYTICS_CALLS.load(Ordering::SeqCst), 2);
    let journal = rt.journal(run.id()).await.expect("journal");
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].name, "record_analytics");
    assert!(
        journal[0].outcome.contains("analytics is down"),
        "{journal:?}"
    );
}

// ---------- parallel ----------

#[step]
async fn ship(ms_delay: u64) -> Result<String, StepError> {
    tokio::time::sleep(Duration::from_millis(ms_delay)).await;
    Ok("label".into())
}

#[step]
async fn email(ms_delay: u64) -> Result<String, StepError> {
    tokio::time::sleep(Duration::from_millis(ms_delay)).await;
    Ok("sent".into())
}

#[workflow]
async fn parallel(ship_ms: u64, email_ms: u64) -> Result<(String, String), StepError> {
    let (label, mail) = join!(ship(ship_ms), email(email_ms));
    Ok((label?, mail?))
}

#[tokio::test]
async fn parallel_steps_get_seqs_in_the_order_they_are_written() {
    let rt = runtime().await;
    // Whichever finishes first, `ship` is seq 1 and `email` seq 2.
    for (a, b) in [(40, 1), (1, 40)] {
        let run = rt.start(Parallel, (a, b)).await.expect("start");
        assert_eq!(
            run.result().await.expect("result"),
            Ok(("label".into(), "sent".into()))
        );
        let journal = rt.journal(run.id()).await.expect("journal");
        let seqs: Vec<_> = journal.iter().map(|e| (e.seq, e.name.as_str())).collect();
        assert_eq!(seqs, [(1, "ship"), (2, "email")]);
    }
}

// ---------- child workflows ----------

#[step]
async fn double(x: u32) -> Result<u32, StepError> {
    Ok(x * 2)
}

#[workflow]
async fn child(x: u32) -> Result<u32, StepError> {
    double(x).await
}

#[workflow]
async fn parent(x: u32) -> Result<u32, StepError> {
    let a = child(x).await?;
    let b = child(a).await?;
    Ok(a + b)
}

#[tokio::test]
async fn a_workflow_awaiting_another_starts_a_durable_child() {
    let rt = runtime().await;
    let run = rt.start_with_id(Parent, "p-1", 5).await.expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(30));
    let children = rt
        .list(ListFilter::default().workflow("child"))
        .await
        .expect("list");
    let ids: Vec<_> = children.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["p-1/1", "p-1/2"]);
    assert!(children.iter().all(|c| c.parent.as_deref() == Some("p-1")));
    let journal = rt.journal("p-1").await.expect("journal");
    assert!(journal.iter().all(|e| e.kind == EntryKind::Child));
    // Outside a runtime the same call is a plain function call.
    assert_eq!(parent(5).await, Ok(30));
}

// ---------- idempotent start ----------

static ONCE_CALLS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn count_once() -> Result<u32, StepError> {
    Ok(ONCE_CALLS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[workflow]
async fn once(x: u32) -> Result<u32, StepError> {
    let n = count_once().await?;
    Ok(x + n)
}

#[tokio::test]
async fn starting_an_existing_id_returns_the_existing_instance() {
    let rt = runtime().await;
    let a = rt.start_with_id(Once, "order-1", 10).await.expect("start");
    assert_eq!(a.result().await.expect("result"), Ok(11));
    assert!(a.created());
    // The same input again: the same instance (a different input is refused, see
    // tests/idempotent_start.rs).
    let b = rt.start_with_id(Once, "order-1", 10).await.expect("again");
    assert_eq!(b.id(), "order-1");
    assert!(!b.created());
    assert_eq!(b.result().await.expect("result"), Ok(11));
    assert_eq!(ONCE_CALLS.load(Ordering::SeqCst), 1);
    let err = rt
        .start_with_id(Retrying, "order-1", ())
        .await
        .err()
        .expect("id taken by another workflow");
    assert!(
        err.to_string()
            .contains("already belongs to workflow `once`"),
        "{err}"
    );
}

// ---------- signals, timers, custom status, recorded values ----------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Approver {
    by: String,
}

#[workflow]
async fn approval(timeout_ms: u64) -> Option<String> {
    orch::set_status("waiting for approval").await;
    let a: Option<Approver> =
        orch::signal_with_timeout("approve", Duration::from_millis(timeout_ms)).await;
    orch::set_status("decided").await;
    a.map(|a| a.by)
}

#[tokio::test]
async fn a_signal_is_delivered_and_a_missing_one_times_out() {
    let rt = runtime().await;
    let run = rt.start(Approval, 60_000).await.expect("start");
    wait_for_status(&rt, run.id(), Status::Suspended).await;
    assert_eq!(
        run.custom_status::<String>().await.expect("custom"),
        Some("waiting for approval".into())
    );
    rt.signal(run.id(), "approve", Approver { by: "ann".into() })
        .await
        .expect("signal");
    assert_eq!(run.result().await.expect("result"), Some("ann".into()));
    assert_eq!(
        run.custom_status::<String>().await.expect("custom"),
        Some("decided".into())
    );

    let timed_out = rt.start(Approval, 20).await.expect("start");
    assert_eq!(timed_out.result().await.expect("result"), None);
}

#[workflow]
async fn early_signal() -> u32 {
    orch::sleep(ms(50)).await;
    orch::signal::<u32>("go").await
}

#[tokio::test]
async fn a_signal_sent_before_the_workflow_waits_is_kept() {
    let rt = runtime().await;
    let run = rt.start(EarlySignal, ()).await.expect("start");
    rt.signal(run.id(), "go", 9).await.expect("signal");
    assert_eq!(run.result().await.expect("result"), 9);
}

#[tokio::test]
async fn signals_to_unknown_or_finished_instances_are_refused() {
    let rt = runtime().await;
    let err = rt.signal("nope", "go", 1).await.expect_err("unknown");
    assert!(
        err.to_string().contains("no instance with id `nope`"),
        "{err}"
    );
    let run = rt.start(Child, 1).await.expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(2));
    let err = rt.signal(run.id(), "go", 1).await.expect_err("finished");
    assert!(err.to_string().contains("already finished"), "{err}");
}

#[workflow]
async fn long_sleeper() -> u32 {
    orch::sleep(Duration::from_secs(3600)).await;
    1
}

#[tokio::test]
async fn a_long_sleep_suspends_the_instance() {
    let rt = runtime().await;
    let run = rt.start(LongSleeper, ()).await.expect("start");
    wait_for_status(&rt, run.id(), Status::Suspended).await;
    let rec = rt.instance(run.id()).await.expect("get").expect("exists");
    let wake = rec.wake_at.expect("wake_at recorded");
    assert!(wake - rec.created_at >= 3_599_000, "{rec:?}");
}

async fn wait_for_status(rt: &Runtime, id: &str, status: Status) {
    wait_until(&format!("instance {id} to be {status}"), || async {
        let rec = rt.instance(id).await.expect("get").expect("exists");
        if rec.status == status {
            Ok(())
        } else {
            Err(rec.status)
        }
    })
    .await;
}

// ---------- bad input ----------

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct TypedInput {
    qty: u32,
    sku: String,
}

#[workflow]
async fn typed(input: TypedInput) -> u32 {
    input.qty + input.sku.len() as u32
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let rt = runtime().await;
    let err = rt
        .start_json("typed", Some("t-1"), r#"{"qty": "three", "sku": "A"}"#)
        .await
        .expect_err("wrong type");
    let msg = err.to_string();
    assert!(
        msg.contains("input for workflow `typed` is invalid"),
        "{msg}"
    );
    assert!(msg.contains("invalid type: string \"three\""), "{msg}");
    assert!(rt.instance("t-1").await.expect("get").is_none());

    let err = rt
        .start_json("nope", None, "{}")
        .await
        .expect_err("unknown workflow");
    assert!(err.to_string().contains("unknown workflow `nope`"), "{err}");
    assert!(
        err.to_string().contains("typed"),
        "lists known workflows: {err}"
    );

    let err = rt
        .start_json("typed", Some("bad id!"), r#"{"qty": 1, "sku": "A"}"#)
        .await
        .expect_err("bad id");
    assert!(err.to_string().contains("invalid instance id"), "{err}");

    let huge = format!(
        r#"{{"qty": 1, "sku": "{}"}}"#,
        "x".repeat(orch_runtime::limits::MAX_PAYLOAD_BYTES)
    );
    let err = rt
        .start_json("typed", Some("t-2"), &huge)
        .await
        .expect_err("too big");
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert!(
        rt.list(ListFilter::default())
            .await
            .expect("list")
            .is_empty()
    );

    let id = rt
        .start_json("typed", Some("t-3"), r#"{"qty": 1, "sku": "AB"}"#)
        .await
        .expect("good input");
    let rec = rt.wait(&id).await.expect("wait");
    assert_eq!(rec.output.as_deref(), Some("3"));
}
