//! The test runtime itself: virtual time, mocks, crash-point exploration catching a
//! non-deterministic workflow, and readable journal assertions.

use orch_runtime::prelude::*;
use orch_runtime::testing::{TestRuntime, check_recovery};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

#[step]
async fn remind(user: String) -> Result<String, StepError> {
    Ok(format!("reminded {user}"))
}

#[workflow]
async fn three_day_wait(user: String) -> Result<String, StepError> {
    orch::sleep(3 * DAY).await;
    remind(user).await
}

#[tokio::test]
async fn three_days_pass_in_virtual_time() {
    let t = TestRuntime::new().await.expect("test runtime");
    let start = t.now();
    let run = t.start(ThreeDayWait, "bo".into()).await.expect("start");
    assert_eq!(
        run.result().await.expect("result"),
        Ok("reminded bo".into())
    );
    let elapsed = t.now().duration_since(start).expect("forward");
    assert!(
        elapsed >= 3 * DAY && elapsed < 3 * DAY + Duration::from_secs(1),
        "{elapsed:?}"
    );
    let h = t.history(run.id()).await.expect("history");
    assert_eq!(h.journal[0].kind, orch_runtime::EntryKind::Sleep);
}

#[tokio::test]
async fn time_can_be_advanced_by_hand_and_the_instance_inspected_in_between() {
    let t = TestRuntime::new().await.expect("test runtime");
    let run = t.start(ThreeDayWait, "cy".into()).await.expect("start");
    t.advance(2 * DAY).await;
    assert_eq!(run.status().await.expect("status"), Status::Suspended);
    assert_eq!(t.calls("remind"), 0);
    t.advance(DAY).await;
    assert_eq!(run.status().await.expect("status"), Status::Completed);
    assert_eq!(t.calls("remind"), 1);
}

#[workflow]
async fn approval_window() -> Option<bool> {
    orch::signal_with_timeout::<bool>("approve", 7 * DAY).await
}

#[tokio::test]
async fn a_week_long_signal_timeout_expires_at_once() {
    let t = TestRuntime::new().await.expect("test runtime");
    let run = t.start(ApprovalWindow, ()).await.expect("start");
    assert_eq!(run.result().await.expect("result"), None);
    let approved = t.start(ApprovalWindow, ()).await.expect("start");
    t.signal(approved.id(), "approve", true)
        .await
        .expect("signal");
    assert_eq!(approved.result().await.expect("result"), Some(true));
}

#[workflow]
async fn lucky(n: u32) -> (u64, String) {
    let r = orch::random().await;
    let u = orch::uuid().await;
    (r % u64::from(n.max(1)), u.to_string())
}

#[tokio::test]
async fn random_and_uuid_are_reproducible_in_the_test_runtime() {
    let a = TestRuntime::new().await.expect("test runtime");
    let b = TestRuntime::new().await.expect("test runtime");
    let x = a.start_with_id(Lucky, "same", 1000).await.expect("start");
    let y = b.start_with_id(Lucky, "same", 1000).await.expect("start");
    assert_eq!(x.result().await.expect("x"), y.result().await.expect("y"));
}

static EXECUTIONS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn path_a() -> Result<u32, StepError> {
    Ok(1)
}

#[step]
async fn path_b() -> Result<u32, StepError> {
    Ok(2)
}

/// Branches on state outside the journal: the bug crash-point exploration exists to find.
#[workflow]
async fn forgetful() -> Result<u32, StepError> {
    let first = EXECUTIONS.fetch_add(1, Ordering::SeqCst) == 0;
    let a = path_a().await?;
    let b = if first {
        path_a().await?
    } else {
        path_b().await?
    };
    Ok(a + b)
}

#[tokio::test]
async fn crash_point_exploration_catches_a_non_deterministic_workflow() {
    let err = check_recovery(Forgetful, ())
        .run()
        .await
        .expect_err("must be caught");
    let msg = err.to_string();
    assert!(
        msg.contains("after a crash following checkpoint 0"),
        "{msg}"
    );
    assert!(
        msg.contains(r#"the output differs: reference {"Ok":2}, after recovery {"Ok":3}"#),
        "{msg}"
    );
}

#[tokio::test]
async fn a_wrong_journal_assertion_prints_the_journal() {
    let t = TestRuntime::new().await.expect("test runtime");
    let run = t.start(ThreeDayWait, "di".into()).await.expect("start");
    run.result().await.expect("result").expect("ok");
    let h = t.history(run.id()).await.expect("history");
    let panic =
        std::panic::catch_unwind(|| h.assert_steps(&["remind", "remind"])).expect_err("mismatch");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains(r#"expected steps ["remind", "remind"], journaled ["remind"]"#),
        "{msg}"
    );
    assert!(msg.contains("sleep"), "the table lists every entry: {msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_thread_runtime_is_refused_with_a_fix() {
    let err = TestRuntime::new().await.err().expect("refused");
    assert!(err.to_string().contains("current-thread"), "{err}");
}

#[step]
async fn tick(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[workflow]
async fn daily(days: u32) -> Result<u32, StepError> {
    let mut total = 0;
    for d in 0..days {
        orch::sleep(DAY).await;
        total += tick(d).await?;
    }
    Ok(total)
}

#[tokio::test]
async fn advancing_fires_timers_set_along_the_way() {
    let t = TestRuntime::new().await.expect("test runtime");
    let run = t.start(Daily, 3).await.expect("start");
    t.advance(3 * DAY + Duration::from_secs(1)).await;
    assert_eq!(run.status().await.expect("status"), Status::Completed);
    assert_eq!(t.calls("tick"), 3);
}

#[step(retry = Retry::exponential(ms(100)).jitter(0.5).max_attempts(3))]
async fn charge(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[workflow]
async fn charges_three_times() -> Result<(u32, std::time::SystemTime), StepError> {
    let mut sum = 0;
    for n in 1..=3 {
        sum += charge(n).await?;
    }
    Ok((sum, orch::now().await))
}

#[tokio::test]
async fn retries_with_jitter_take_the_same_virtual_time_in_every_run() {
    let mut ends = Vec::new();
    for _ in 0..3 {
        let t = TestRuntime::builder()
            .mock(charge::fail_first(2, || Err(StepError::retryable("busy"))))
            .build()
            .await
            .expect("test runtime");
        let run = t
            .start_with_id(ChargesThreeTimes, "same", ())
            .await
            .expect("start");
        ends.push(run.result().await.expect("result").expect("ok"));
    }
    assert!(ends.windows(2).all(|w| w[0] == w[1]), "{ends:?}");
}

#[workflow]
async fn charge_sum() -> Result<u32, StepError> {
    let mut sum = 0;
    for n in 1..=3 {
        sum += charge(n).await?;
    }
    Ok(sum)
}

#[tokio::test]
async fn crash_point_exploration_accepts_a_double_whose_state_carries_over() {
    // A double that fails its first call: used up before a crash, it stays used up.
    let report = check_recovery(ChargeSum, ())
        .mocks(vec![charge::fail_first(1, || {
            Err(StepError::retryable("busy"))
        })])
        .run()
        .await
        .expect("recovers");
    assert_eq!(report.crash_points, 4); // before the first charge, and after each of the three
}

#[workflow]
async fn kid_of_export(n: u32) -> Result<u32, StepError> {
    tick(n).await
}

#[workflow]
async fn parent_of_export(n: u32) -> Result<u32, StepError> {
    kid_of_export(n).await
}

#[tokio::test]
async fn a_child_instance_export_replays_without_its_parent() {
    let t = TestRuntime::new().await.expect("test runtime");
    let run = t
        .start_with_id(ParentOfExport, "p", 4)
        .await
        .expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(4));
    let export = t.export("p/1").await.expect("export the child");
    let report = orch_runtime::testing::replay(&export)
        .await
        .expect("replays");
    assert!(report.finished);
    assert_eq!(report.same_output, Some(true));
}

static PAID_BY_WORKER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[step(queue = "payments", retry = Retry::fixed(ms(10)).max_attempts(3))]
async fn pay_on_queue(cents: u32) -> Result<u32, StepError> {
    PAID_BY_WORKER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(cents)
}

#[workflow]
async fn checkout_on_queue(cents: u32) -> Result<u32, StepError> {
    pay_on_queue(cents).await
}

#[tokio::test]
async fn a_queued_step_is_replaced_by_its_mock_and_no_task_is_enqueued() {
    let t = TestRuntime::builder()
        .mock(pay_on_queue::mock(|cents| async move { Ok(cents * 2) }))
        .build()
        .await
        .expect("test runtime");
    let before = PAID_BY_WORKER.load(std::sync::atomic::Ordering::SeqCst);
    let run = t
        .start_with_id(CheckoutOnQueue, "mocked", 21)
        .await
        .expect("start");
    assert_eq!(run.result().await.expect("result").expect("ok"), 42);
    assert_eq!(
        PAID_BY_WORKER.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "the real body never ran"
    );
    assert_eq!(t.calls("pay_on_queue"), 1);
}

#[tokio::test]
async fn a_queued_step_s_first_attempts_fail_by_its_double_then_a_worker_serves_it() {
    let t = TestRuntime::builder()
        .mock(pay_on_queue::fail_first(2, || {
            Err(StepError::retryable("card network down"))
        }))
        .build()
        .await
        .expect("test runtime");
    let run = t
        .start_with_id(CheckoutOnQueue, "flaky", 7)
        .await
        .expect("start");
    assert_eq!(run.result().await.expect("result").expect("ok"), 7);
    let attempts = t.attempts("flaky").await.expect("attempts");
    assert_eq!(attempts.len(), 2, "two failed attempts: {attempts:?}");
    assert!(
        attempts[0].error.contains("card network down"),
        "{attempts:?}"
    );
    assert_eq!(t.calls("pay_on_queue"), 3);
}
