//! Steps bound to a queue (`#[step(queue = "…")]`): each attempt is a durable task that a
//! worker runs — the runtime's own in-process worker, or one elsewhere that leases the task
//! from the store — and the step's outcome, retries, timeouts and journal are those of a local
//! step.

use orch_runtime::prelude::*;
use orch_runtime::store::Backend;
use orch_runtime::store::task::{TaskResult, TaskState, WorkerTerms, task_id};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[path = "support/call_log.rs"]
mod call_log;
use call_log::{log_line, log_lines, wait_for_log};

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Charge {
    order: String,
    cents: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Receipt {
    order: String,
    cents: u64,
    key: String,
}

static CHARGES: AtomicU32 = AtomicU32::new(0);

#[step(queue = "payments")]
async fn charge(charge: Charge, note: String) -> Result<Receipt, StepError> {
    let n = CHARGES.fetch_add(1, Ordering::SeqCst);
    if note == "flaky" && n == 0 {
        return Err(StepError::retryable("card network timeout"));
    }
    Ok(Receipt {
        order: charge.order,
        cents: charge.cents,
        key: orch::idempotency_key(),
    })
}

#[workflow]
async fn pay(order: String) -> Result<Receipt, StepError> {
    charge(
        Charge {
            order: order.clone(),
            cents: 1250,
        },
        if order.starts_with("flaky") {
            "flaky".to_string()
        } else {
            "once".to_string()
        },
    )
    .await
}

#[step(queue = "nobody-serves-this", timeout = Duration::from_millis(300), retry = Retry::none())]
async fn unserved(x: u32) -> Result<u32, StepError> {
    Ok(x)
}

#[workflow]
async fn wait_for_unserved(x: u32) -> Result<u32, StepError> {
    unserved(x).await
}

/// Which queues the runtime serves itself.
enum Serve {
    All,
    Only(&'static str),
    Nothing,
}

async fn sqlite_runtime(dir: &tempfile::TempDir, serve: Serve) -> (Runtime, Arc<dyn Backend>) {
    let store: Arc<dyn Backend> = Arc::new(
        orch_runtime::store::sqlite::SqliteStore::open(
            dir.path().join("orch.db"),
            Default::default(),
        )
        .expect("open"),
    );
    let b = Runtime::builder().store(store.clone());
    let b = match serve {
        Serve::All => b,
        Serve::Only(queue) => b.serve_queues([queue]),
        Serve::Nothing => b.no_workers(),
    };
    (b.build().await.expect("runtime"), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_serves_its_own_queued_steps_and_journals_the_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, store) = sqlite_runtime(&dir, Serve::All).await;
    let run = rt
        .start_with_id(Pay, "order-1", "order-1".to_string())
        .await
        .expect("start");
    let receipt = tokio::time::timeout(Duration::from_secs(60), run.result())
        .await
        .expect("the queued step finished")
        .expect("result")
        .expect("paid");
    assert_eq!(receipt.order, "order-1");
    assert_eq!(
        receipt.key, "order-1/1",
        "the body sees the step's idempotency key"
    );
    let journal = rt.journal("order-1").await.expect("journal");
    assert_eq!(journal.len(), 1, "one checkpoint: {journal:?}");
    assert_eq!(journal[0].name, "charge");
    let task = store
        .task(&task_id("order-1", 0, 1, 1))
        .await
        .expect("task")
        .expect("the attempt's task is stored");
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.task.queue, "payments");
    assert_eq!(
        task.task.input, r#"{"charge":{"cents":1250,"order":"order-1"},"note":"once"}"#,
        "the arguments, as one JSON object keyed by parameter name"
    );
    assert!(
        task.worker
            .as_deref()
            .is_some_and(|w| w.ends_with("/in-process")),
        "served in-process: {:?}",
        task.worker
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_as_a_new_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, store) = sqlite_runtime(&dir, Serve::All).await;
    CHARGES.store(0, Ordering::SeqCst);
    let run = rt
        .start_with_id(Pay, "flaky-1", "flaky-1".to_string())
        .await
        .expect("start");
    let receipt = tokio::time::timeout(Duration::from_secs(60), run.result())
        .await
        .expect("finished")
        .expect("result");
    assert!(receipt.is_ok(), "{receipt:?}");
    let first = store
        .task(&task_id("flaky-1", 0, 1, 1))
        .await
        .expect("task")
        .expect("attempt 1");
    assert!(
        first
            .output
            .as_deref()
            .is_some_and(|o| o.contains("card network timeout")),
        "the first attempt's task holds the step's error: {:?}",
        first.output
    );
    let second = store
        .task(&task_id("flaky-1", 0, 1, 2))
        .await
        .expect("task")
        .expect("attempt 2 is a new task");
    assert_eq!(second.state, TaskState::Completed);
    let attempts = rt.attempts("flaky-1").await.expect("attempts");
    assert_eq!(
        attempts.len(),
        1,
        "one failed attempt recorded: {attempts:?}"
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_elsewhere_leases_the_task_and_its_output_is_the_step_s_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, store) = sqlite_runtime(&dir, Serve::Nothing).await;
    let run = rt
        .start_with_id(Pay, "order-2", "order-2".to_string())
        .await
        .expect("start");
    // A worker in another language: it polls the queue, reads the arguments and answers with
    // the step's value (the `T` of `Result<T, E>`).
    let leased = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let terms = WorkerTerms {
                worker: "python-1".into(),
                now: now_ms(),
                ttl: 30_000,
            };
            let got = store
                .lease_tasks(terms, vec!["payments".into()], 1)
                .await
                .expect("lease");
            if let Some(t) = got.tasks.into_iter().next() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the step's task was enqueued");
    assert_eq!(leased.task.step, "charge");
    assert_eq!(leased.task.idempotency_key, "order-2/1");
    let output = r#"{"order":"order-2","cents":1250,"key":"from-python"}"#;
    store
        .finish_task(
            &leased.task.id,
            leased.token,
            TaskResult::Completed {
                output: output.into(),
            },
            now_ms(),
        )
        .await
        .expect("complete");
    let receipt = tokio::time::timeout(Duration::from_secs(60), run.result())
        .await
        .expect("finished")
        .expect("result")
        .expect("paid");
    assert_eq!(receipt.key, "from-python");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_nobody_serves_times_out_and_its_task_is_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rt, store) = sqlite_runtime(&dir, Serve::Only("payments")).await;
    let run = rt
        .start_with_id(WaitForUnserved, "u-1", 7)
        .await
        .expect("start");
    let out = tokio::time::timeout(Duration::from_secs(60), run.result())
        .await
        .expect("finished")
        .expect("result");
    let err = out.expect_err("no worker serves the queue");
    assert!(
        err.to_string().contains("timed out"),
        "the step's error says why: {err}"
    );
    let task = store
        .task(&task_id("u-1", 0, 1, 1))
        .await
        .expect("task")
        .expect("stored");
    assert_eq!(
        task.state,
        TaskState::Cancelled,
        "a late worker cannot finish it"
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_waiting_long_for_a_worker_is_unloaded_and_its_task_s_end_resumes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || async {
        let store: Arc<dyn Backend> = Arc::new(
            orch_runtime::store::sqlite::SqliteStore::open(
                dir.path().join("orch.db"),
                Default::default(),
            )
            .expect("open"),
        );
        let rt = Runtime::builder()
            .store(store.clone())
            .no_workers()
            .unload_task_waits_after(Duration::from_millis(20))
            .build()
            .await
            .expect("runtime");
        (rt, store)
    };
    let (rt, _) = open().await;
    rt.start_with_id(Pay, "order-3", "order-3".to_string())
        .await
        .expect("start");
    // Nobody serves the queue: the waiting instance is unloaded (suspended in the store),
    // not kept in memory.
    let suspended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let rec = rt.instance("order-3").await.expect("read").expect("stored");
            if rec.status == Status::Suspended {
                return rec;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the instance waiting for its task is suspended");
    assert_eq!(suspended.wake_at, None, "no timer: the task's end wakes it");
    // The process goes away meanwhile; a new one has nothing loaded.
    rt.shutdown().await.expect("shutdown");
    let (rt, store) = open().await;
    let terms = WorkerTerms {
        worker: "elsewhere".into(),
        now: now_ms(),
        ttl: 30_000,
    };
    let leased = store
        .lease_tasks(terms, vec!["payments".into()], 10)
        .await
        .expect("lease");
    assert_eq!(leased.tasks.len(), 1, "one task: {:?}", leased.tasks);
    let leased = &leased.tasks[0];
    assert_eq!(leased.task.id, task_id("order-3", 0, 1, 1));
    let output = r#"{"order":"order-3","cents":1250,"key":"late"}"#;
    store
        .finish_task(
            &leased.task.id,
            leased.token,
            TaskResult::Completed {
                output: output.into(),
            },
            now_ms(),
        )
        .await
        .expect("complete");
    let run = rt.handle(Pay, "order-3").await.expect("handle");
    let receipt = tokio::time::timeout(Duration::from_secs(60), run.result())
        .await
        .expect("the task's end resumed the instance")
        .expect("result")
        .expect("paid");
    assert_eq!(receipt.key, "late");
    let journal = rt.journal("order-3").await.expect("journal");
    assert_eq!(journal.len(), 1, "one checkpoint: {journal:?}");
    let second = store
        .task(&task_id("order-3", 0, 1, 2))
        .await
        .expect("task");
    assert!(
        second.is_none(),
        "no second attempt was enqueued: {second:?}"
    );
    rt.shutdown().await.expect("shutdown");
}

static REFUNDS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn refund(order: String) -> Result<(), StepError> {
    let _ = order;
    REFUNDS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[workflow]
async fn pay_or_refund(order: String) -> Result<Receipt, StepError> {
    let c = Charge {
        order: order.clone(),
        cents: 500,
    };
    match charge(c, "cancellable".into()).await {
        Ok(r) => Ok(r),
        Err(e) => {
            refund(order).await?;
            Err(e)
        }
    }
}

/// Cancels an instance whose queued step waits for a worker, kept loaded (`unload_after` long)
/// or unloaded (short): the step receives the cancellation, its compensation runs, and the
/// task is cancelled so no worker runs it later.
async fn cancel_while_waiting_for_a_worker(id: &str, unload_after: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Backend> = Arc::new(
        orch_runtime::store::sqlite::SqliteStore::open(
            dir.path().join("orch.db"),
            Default::default(),
        )
        .expect("open"),
    );
    let rt = Runtime::builder()
        .store(store.clone())
        .no_workers()
        .unload_task_waits_after(unload_after)
        .build()
        .await
        .expect("runtime");
    let run = rt
        .start_with_id(PayOrRefund, id, id.to_string())
        .await
        .expect("start");
    let task = task_id(id, 0, 1, 1);
    let want = if unload_after > Duration::from_secs(60) {
        Status::Running
    } else {
        Status::Suspended
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let queued = store.task(&task).await.expect("task").is_some();
            let rec = rt.instance(id).await.expect("read").expect("stored");
            if queued && rec.status == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the task is queued and the instance waits");
    let refunds = REFUNDS.load(Ordering::SeqCst);
    rt.cancel(id, "ops", "customer left").await.expect("cancel");
    let err = tokio::time::timeout(Duration::from_secs(60), run.result())
        .await
        .expect("the cancellation ended the wait")
        .expect("result")
        .expect_err("cancelled");
    assert!(err.is_cancelled(), "{err:?}");
    assert_eq!(
        REFUNDS.load(Ordering::SeqCst),
        refunds + 1,
        "the compensation ran once"
    );
    let t = store.task(&task).await.expect("task").expect("stored");
    assert_eq!(t.state, TaskState::Cancelled, "no worker may run it now");
    let terms = WorkerTerms {
        worker: "late".into(),
        now: now_ms(),
        ttl: 30_000,
    };
    let leased = store
        .lease_tasks(terms, vec!["payments".into()], 10)
        .await
        .expect("lease");
    assert!(leased.tasks.is_empty(), "{:?}", leased.tasks);
    let rec = rt.instance(id).await.expect("read").expect("stored");
    assert_eq!(rec.status, Status::Cancelled);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_workflow_whose_queued_step_waits_loaded_cancels_the_task_and_compensates() {
    cancel_while_waiting_for_a_worker("cancel-loaded", Duration::from_secs(3600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_workflow_whose_queued_step_waits_unloaded_cancels_the_task_and_compensates() {
    cancel_while_waiting_for_a_worker("cancel-unloaded", Duration::from_millis(20)).await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Real processes: a worker killed with `kill -9` in the middle of a task.

/// Logs its start (with the idempotency key and this process's id), waits until the file `go`
/// exists, logs its end.
#[step(queue = "slow-payments")]
async fn slow_charge(log: String, go: String) -> Result<String, StepError> {
    let key = orch::idempotency_key();
    log_line(&log, &format!("start {key} {}", std::process::id()));
    while !std::path::Path::new(&go).exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log_line(&log, &format!("done {key} {}", std::process::id()));
    Ok(format!("charged by {}", std::process::id()))
}

#[workflow]
async fn pay_slowly(log: String, go: String) -> Result<String, StepError> {
    slow_charge(log, go).await
}

/// The child side, run only when a test re-executes this binary with `ORCH_QUEUED_CHILD`:
/// `worker` serves `slow-payments` until killed; `orchestrator` serves nothing, starts
/// `pay_slowly` as `pay-1` and exits once it finished.
#[test]
fn queued_child() {
    let Ok(role) = std::env::var("ORCH_QUEUED_CHILD") else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let (db, log, go) = (env("ORCH_DB"), env("ORCH_CALL_LOG"), env("ORCH_GO"));
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async move {
        let b = Runtime::builder()
            .sqlite(&db)
            .lease_ttl(Duration::from_millis(1_000));
        if role == "worker" {
            let _orch = b
                .serve_queues(["slow-payments"])
                .build()
                .await
                .expect("worker runtime");
            return std::future::pending::<()>().await;
        }
        let orch = b.no_workers().build().await.expect("orchestrator runtime");
        let run = orch
            .start_with_id(PaySlowly, "pay-1", (log, go))
            .await
            .expect("start");
        let out = run.result().await.expect("result");
        println!("RESULT {out:?}");
        orch.shutdown().await.expect("shutdown");
    });
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(
    role: &str,
    db: &std::path::Path,
    log: &std::path::Path,
    go: &std::path::Path,
) -> Child {
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["queued_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("ORCH_QUEUED_CHILD", role)
        .env("ORCH_DB", db)
        .env("ORCH_CALL_LOG", log)
        .env("ORCH_GO", go)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    Child(child)
}

#[test]
fn a_worker_killed_mid_task_loses_its_lease_and_another_worker_finishes_the_task() {
    if std::env::var("ORCH_QUEUED_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, log, go) = (
        dir.path().join("orch.db"),
        dir.path().join("calls.log"),
        dir.path().join("go"),
    );
    let mut orchestrator = spawn_child("orchestrator", &db, &log, &go);
    let first = spawn_child("worker", &db, &log, &go);
    let first_pid = first.0.id();
    wait_for_log(&log, "a worker started the task", |l| {
        l.iter().any(|x| x.starts_with("start "))
    });
    // kill -9, in the middle of the task.
    let status = std::process::Command::new("kill")
        .args(["-9", &first_pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    drop(first);
    let second = spawn_child("worker", &db, &log, &go);
    let second_pid = second.0.id();
    wait_for_log(&log, "the second worker took the task over", |l| {
        l.iter()
            .any(|x| x.starts_with("start ") && x.ends_with(&format!(" {second_pid}")))
    });
    std::fs::write(&go, "go").expect("go");
    wait_for_log(&log, "the task finished", |l| {
        l.iter().any(|x| x.starts_with("done "))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = orchestrator.0.try_wait().expect("orchestrator") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the orchestrator never heard that the task finished: {:#?}",
            log_lines(&log)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    if let Some(mut stdout) = orchestrator.0.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    assert!(status.success(), "the orchestrator failed: {out}");
    assert!(
        out.contains(&format!("RESULT Ok(\"charged by {second_pid}\")")),
        "the workflow's result is the second worker's: {out}"
    );
    let lines = log_lines(&log);
    let starts: Vec<&String> = lines.iter().filter(|l| l.starts_with("start ")).collect();
    assert_eq!(starts.len(), 2, "one start per worker: {lines:#?}");
    assert!(
        starts.iter().all(|l| l.starts_with("start pay-1/1 ")),
        "both deliveries carry the same idempotency key: {lines:#?}"
    );
    let dones: Vec<&String> = lines.iter().filter(|l| l.starts_with("done ")).collect();
    assert_eq!(dones.len(), 1, "the task finished once: {lines:#?}");
    assert!(dones[0].ends_with(&format!(" {second_pid}")));
    drop(second);
}
