//! The Rust worker client (`orch_runtime::worker::client::Worker`, feature `worker`): another
//! process serves the `#[step(queue = "…")]` bodies compiled into it for an orch server it
//! reaches only over HTTP. Against a real server (SQLite, serving no queue itself): values,
//! step errors and panics (a retryable failure), a lost lease that stops the body, a server that comes up
//! after the worker, graceful shutdown (finish within the grace period, abandon after it), the
//! concurrency limit, a refusal at start without a step for the queue asked; and with real
//! processes, a worker killed with `kill -9` mid-task whose task another worker redoes with the
//! same idempotency key.

#[path = "support/wait.rs"]
mod wait;

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use orch_runtime::store::Backend;
use orch_runtime::store::task::{TaskState, task_id};
use orch_runtime::worker::client::{Worker, WorkerError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

#[path = "support/call_log.rs"]
mod call_log;
use call_log::{log_line, log_lines, wait_for_log};

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Receipt {
    order: String,
    key: String,
    attempt: u32,
}

// ---------------------------------------------------------------------------------------------
// Steps and workflows, one queue per test (the steps of a binary are global).

#[step(queue = "wc-complete")]
async fn charge(order: String) -> Result<Receipt, StepError> {
    Ok(Receipt {
        order,
        key: orch::idempotency_key(),
        attempt: 0,
    })
}

#[workflow]
async fn pay(order: String) -> Result<Receipt, StepError> {
    charge(order).await
}

static PANICKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[step(queue = "wc-fail", retry = Retry::fixed(Duration::from_millis(10)).max_attempts(3))]
async fn judge(mode: String) -> Result<String, StepError> {
    match mode.as_str() {
        "permanent" => Err(StepError::permanent("card declined")),
        _ if PANICKY_CALLS.fetch_add(1, Ordering::SeqCst) == 0 => {
            panic!("the card reader fell over")
        }
        _ => Ok(format!("judged {mode}")),
    }
}

#[workflow]
async fn judged(mode: String) -> Result<String, StepError> {
    judge(mode).await
}

/// Set when the body of `hang` is dropped (stopped by its worker).
static HANG_STOPPED: AtomicBool = AtomicBool::new(false);
static HANG_STARTED: AtomicBool = AtomicBool::new(false);

struct Stopped;

impl Drop for Stopped {
    fn drop(&mut self) {
        HANG_STOPPED.store(true, Ordering::SeqCst);
    }
}

#[step(queue = "wc-lost", timeout = Duration::from_millis(1500), retry = Retry::none())]
async fn hang(x: u32) -> Result<u32, StepError> {
    let _guard = Stopped;
    HANG_STARTED.store(true, Ordering::SeqCst);
    std::future::pending::<()>().await;
    Ok(x)
}

#[workflow]
async fn hung(x: u32) -> Result<u32, StepError> {
    hang(x).await
}

/// Released by the test: the body of `gated` waits for it.
static GATE: AtomicBool = AtomicBool::new(false);
static GATED_RUNNING: AtomicU32 = AtomicU32::new(0);

#[step(queue = "wc-gated")]
async fn gated(order: String) -> Result<Receipt, StepError> {
    GATED_RUNNING.fetch_add(1, Ordering::SeqCst);
    while !GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    GATED_RUNNING.fetch_sub(1, Ordering::SeqCst);
    Ok(Receipt {
        order,
        key: orch::idempotency_key(),
        attempt: 0,
    })
}

#[workflow]
async fn pay_gated(order: String) -> Result<Receipt, StepError> {
    gated(order).await
}

static BUSY_NOW: AtomicU32 = AtomicU32::new(0);
static BUSY_MAX: AtomicU32 = AtomicU32::new(0);

#[step(queue = "wc-busy")]
async fn busy(n: u32) -> Result<u32, StepError> {
    let now = BUSY_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    BUSY_MAX.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    BUSY_NOW.fetch_sub(1, Ordering::SeqCst);
    Ok(n)
}

#[workflow]
async fn keep_busy(n: u32) -> Result<u32, StepError> {
    busy(n).await
}

// ---------------------------------------------------------------------------------------------
// A server that serves no queue itself.

struct Server {
    rt: Runtime,
    store: Arc<dyn Backend>,
    url: String,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    server_on("127.0.0.1:0").await
}

async fn server_on(addr: &str) -> Server {
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
        .http_with(HttpConfig::new(addr).without_env_tokens())
        .build()
        .await
        .expect("runtime with HTTP server");
    let url = rt.http_url().expect("the server is on");
    Server {
        rt,
        store,
        url,
        _dir: dir,
    }
}

impl Server {
    async fn task_state(&self, id: &str) -> Option<TaskState> {
        self.store
            .task(id)
            .await
            .expect("read task")
            .map(|t| t.state)
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(wait::PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("waited {:?} for {what}", wait::PATIENCE))
}

// ---------------------------------------------------------------------------------------------
// Against a real server, in this process.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_client_serves_a_queued_step_and_its_value_is_the_step_s() {
    let s = server().await;
    let worker = Worker::connect(&s.url)
        .queues(["wc-complete"])
        .name("rust-worker-1")
        .start()
        .expect("worker starts");
    let run =
        s.rt.start_with_id(Pay, "order-1", "order-1".to_string())
            .await
            .expect("start");
    let receipt = within("the workflow", run.result())
        .await
        .expect("result")
        .expect("paid");
    assert_eq!(receipt.order, "order-1");
    assert_eq!(
        receipt.key, "order-1/1",
        "the body sees the idempotency key"
    );
    let task = s
        .store
        .task(&task_id("order-1", 0, 1, 1))
        .await
        .expect("task")
        .expect("stored");
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.worker.as_deref(), Some("rust-worker-1"));
    let stats = worker.shutdown().await.expect("shutdown");
    assert_eq!((stats.leased, stats.completed, stats.lost), (1, 1, 0));
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_error_is_judged_by_the_step_s_policy_and_a_panic_fails_the_task_as_retryable() {
    let s = server().await;
    let worker = Worker::connect(&s.url)
        .queues(["wc-fail"])
        .start()
        .expect("worker starts");
    // The step's own error value is its outcome (the task completes with it); a permanent one
    // ends the step: one attempt, the workflow fails with the step's message.
    let run =
        s.rt.start_with_id(Judged, "perm-1", "permanent".to_string())
            .await
            .expect("start");
    let err = within("the permanent failure", run.result())
        .await
        .expect("result")
        .expect_err("declined");
    assert!(err.to_string().contains("card declined"), "{err}");
    let first = s
        .store
        .task(&task_id("perm-1", 0, 1, 1))
        .await
        .expect("task")
        .expect("attempt 1");
    assert!(
        first
            .output
            .as_deref()
            .is_some_and(|o| o.contains("card declined")),
        "the task holds the step's error: {first:?}"
    );
    assert_eq!(
        s.task_state(&task_id("perm-1", 0, 1, 2)).await,
        None,
        "a permanent error is not tried again"
    );
    // A panic fails the task as retryable: a second attempt, as a new task, succeeds.
    PANICKY_CALLS.store(0, Ordering::SeqCst);
    let run =
        s.rt.start_with_id(Judged, "panicky-1", "panicky".to_string())
            .await
            .expect("start");
    let out = within("the retried step", run.result())
        .await
        .expect("result")
        .expect("succeeds on attempt 2");
    assert_eq!(out, "judged panicky");
    let first = s
        .store
        .task(&task_id("panicky-1", 0, 1, 1))
        .await
        .expect("task")
        .expect("attempt 1");
    assert_eq!(first.state, TaskState::Failed);
    assert!(first.retryable, "a panic is a retryable failure");
    assert!(
        first
            .error
            .as_deref()
            .is_some_and(|e| e.contains("the card reader fell over")),
        "the failure carries the panic's message: {first:?}"
    );
    assert_eq!(
        s.task_state(&task_id("panicky-1", 0, 1, 2)).await,
        Some(TaskState::Completed)
    );
    let stats = worker.shutdown().await.expect("shutdown");
    assert_eq!((stats.completed, stats.failed), (2, 1), "{stats:?}");
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_lease_is_lost_is_dropped_and_its_body_stopped() {
    let s = server().await;
    let worker = Worker::connect(&s.url)
        .queues(["wc-lost"])
        .lease(Duration::from_secs(1))
        .start()
        .expect("worker starts");
    let run = s.rt.start_with_id(Hung, "hung-1", 7).await.expect("start");
    // The attempt times out: the instance cancels the task, the next heartbeat is refused
    // with 409 task_lost and the worker stops the body.
    let err = within("the timeout", run.result())
        .await
        .expect("result")
        .expect_err("timed out");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        HANG_STARTED.load(Ordering::SeqCst),
        "the worker ran the body"
    );
    wait::wait_until("the worker to drop the task", || async {
        let st = worker.stats();
        if st.lost == 1 && HANG_STOPPED.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(st)
        }
    })
    .await;
    assert_eq!(
        s.task_state(&task_id("hung-1", 0, 1, 1)).await,
        Some(TaskState::Cancelled),
        "nothing the worker did changed the cancelled task"
    );
    let stats = worker.shutdown().await.expect("shutdown");
    assert_eq!((stats.completed, stats.failed, stats.lost), (0, 0, 1));
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_to_start_without_a_step_for_a_queue_it_is_asked_to_serve() {
    let err = Worker::connect("http://127.0.0.1:9")
        .queues(["wc-complete", "no-such-queue"])
        .start()
        .err()
        .expect("refused");
    assert!(matches!(err, WorkerError::Config(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`no-such-queue`"), "names the queue: {msg}");
    assert!(msg.contains("`wc-complete`"), "lists what it has: {msg}");
    let err = Worker::connect("ftp://example.com")
        .start()
        .err()
        .expect("refused");
    assert!(err.to_string().contains("http://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_server_serves_it_once_it_is_up() {
    // A free port, with nothing listening on it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let worker = Worker::connect(format!("http://{addr}"))
        .queues(["wc-complete"])
        .start()
        .expect("starts without a server");
    let s = server_on(&addr.to_string()).await;
    let run =
        s.rt.start_with_id(Pay, "late-1", "late-1".to_string())
            .await
            .expect("start");
    let receipt = within("the workflow", run.result())
        .await
        .expect("result")
        .expect("paid");
    assert_eq!(receipt.key, "late-1/1");
    worker.shutdown().await.expect("shutdown");
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_tasks_finish_and_leases_nothing_new_then_abandons_after_grace() {
    let s = server().await;
    GATE.store(false, Ordering::SeqCst);
    // 1. Within the grace period: the running task finishes; a task enqueued meanwhile stays.
    let worker = Worker::connect(&s.url)
        .queues(["wc-gated"])
        .name("graceful")
        .start()
        .expect("worker starts");
    let first =
        s.rt.start_with_id(PayGated, "g-1", "g-1".to_string())
            .await
            .expect("start");
    wait::wait_until("the body to run", || async {
        match GATED_RUNNING.load(Ordering::SeqCst) {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let stopping = tokio::spawn(worker.shutdown());
    // Not leased by the stopping worker.
    s.rt.start_with_id(PayGated, "g-2", "g-2".to_string())
        .await
        .expect("start");
    wait::wait_until("g-2's task to be enqueued", || async {
        s.task_state(&task_id("g-2", 0, 1, 1)).await.ok_or(())
    })
    .await;
    GATE.store(true, Ordering::SeqCst);
    let stats = within("the shutdown", stopping)
        .await
        .expect("join")
        .expect("shutdown");
    assert_eq!((stats.leased, stats.completed, stats.abandoned), (1, 1, 0));
    let receipt = within("g-1", first.result())
        .await
        .expect("result")
        .expect("paid");
    assert_eq!(receipt.key, "g-1/1");
    assert_eq!(
        s.task_state(&task_id("g-2", 0, 1, 1)).await,
        Some(TaskState::Pending),
        "a stopping worker leases nothing new"
    );
    // 2. Past the grace period: the running task is abandoned and another worker redoes it.
    GATE.store(false, Ordering::SeqCst);
    let worker = Worker::connect(&s.url)
        .queues(["wc-gated"])
        .lease(Duration::from_secs(1))
        .shutdown_grace(Duration::from_millis(50))
        .name("impatient")
        .start()
        .expect("worker starts");
    wait::wait_until("g-2's body to run", || async {
        match GATED_RUNNING.load(Ordering::SeqCst) {
            1 => Ok(()),
            n => Err(n),
        }
    })
    .await;
    let stats = within("the shutdown", worker.shutdown())
        .await
        .expect("shutdown");
    assert_eq!((stats.leased, stats.abandoned), (1, 1), "{stats:?}");
    // (The abandoned body was dropped where it waited: it never decremented.)
    GATED_RUNNING.store(0, Ordering::SeqCst);
    GATE.store(true, Ordering::SeqCst);
    let other = Worker::connect(&s.url)
        .queues(["wc-gated"])
        .name("successor")
        .start()
        .expect("worker starts");
    let receipt = within("g-2", async {
        s.rt.handle(PayGated, "g-2")
            .await
            .expect("handle")
            .result()
            .await
    })
    .await
    .expect("result")
    .expect("paid");
    assert_eq!(receipt.key, "g-2/1", "the same idempotency key");
    let task = s
        .store
        .task(&task_id("g-2", 0, 1, 1))
        .await
        .expect("task")
        .expect("stored");
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.worker.as_deref(), Some("successor"));
    assert_eq!(task.token, 2, "leased twice: abandoned, then redone");
    other.shutdown().await.expect("shutdown");
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_at_most_its_concurrency_at_once() {
    let s = server().await;
    let worker = Worker::connect(&s.url)
        .queues(["wc-busy"])
        .concurrency(2)
        .start()
        .expect("worker starts");
    let mut runs = Vec::new();
    for n in 0..6u32 {
        runs.push(
            s.rt.start_with_id(KeepBusy, &format!("busy-{n}"), n)
                .await
                .expect("start"),
        );
    }
    for (n, run) in runs.into_iter().enumerate() {
        let out = within("a busy workflow", run.result())
            .await
            .expect("result")
            .expect("ok");
        assert_eq!(out, n as u32);
    }
    assert!(
        BUSY_MAX.load(Ordering::SeqCst) <= 2,
        "at most 2 at once, saw {}",
        BUSY_MAX.load(Ordering::SeqCst)
    );
    assert_eq!(worker.stats().completed, 6);
    worker.shutdown().await.expect("shutdown");
    s.rt.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Real processes: a worker killed with `kill -9` in the middle of a task.

/// Logs its start (with the idempotency key and this process's id), waits until the file `go`
/// exists, logs its end.
#[step(queue = "wc-slow")]
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

/// The child side, run only when the test re-executes this binary with
/// `ORCH_WORKER_CLIENT_CHILD`: `server` serves no queue, prints its URL, starts `pay_slowly`
/// as `pay-1` and prints its result; `worker` serves `wc-slow` for the server at `ORCH_URL`
/// until killed.
#[test]
fn worker_client_child() {
    let Ok(role) = std::env::var("ORCH_WORKER_CLIENT_CHILD") else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async move {
        if role == "worker" {
            let out = Worker::connect(env("ORCH_URL"))
                .queues(["wc-slow"])
                .lease(Duration::from_secs(1))
                .run()
                .await;
            panic!("the worker stopped: {out:?}");
        }
        let (db, log, go) = (env("ORCH_DB"), env("ORCH_CALL_LOG"), env("ORCH_GO"));
        let orch = Runtime::builder()
            .sqlite(&db)
            .no_workers()
            .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
            .build()
            .await
            .expect("server runtime");
        println!("URL {}", orch.http_url().expect("url"));
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

fn spawn_child(role: &str, env: &[(&str, &str)]) -> Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "worker_client_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("ORCH_WORKER_CLIENT_CHILD", role)
    .env("RUST_LOG", "warn")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Child(cmd.spawn().expect("spawn child"))
}

#[test]
fn a_worker_process_killed_mid_task_is_replaced_and_the_task_redone_with_the_same_key() {
    if std::env::var("ORCH_WORKER_CLIENT_CHILD").is_ok() {
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, log, go) = (
        dir.path().join("orch.db"),
        dir.path().join("calls.log"),
        dir.path().join("go"),
    );
    let paths = [
        ("ORCH_DB", db.to_str().expect("utf-8")),
        ("ORCH_CALL_LOG", log.to_str().expect("utf-8")),
        ("ORCH_GO", go.to_str().expect("utf-8")),
    ];
    let mut server = spawn_child("server", &paths);
    // The server's stdout, line by line, on a thread of its own.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = server.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |prefix: &str| -> String {
        loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(90))
                .unwrap_or_else(|e| panic!("the server never printed {prefix}: {e}"));
            // (The test harness prints its own text before the child's on the same line.)
            if let Some((_, rest)) = line.split_once(prefix) {
                return rest.to_string();
            }
        }
    };
    let url = next_line("URL ");
    let first = spawn_child("worker", &[("ORCH_URL", &url)]);
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
    let second = spawn_child("worker", &[("ORCH_URL", &url)]);
    let second_pid = second.0.id();
    wait_for_log(&log, "the second worker took the task over", |l| {
        l.iter()
            .any(|x| x.starts_with("start ") && x.ends_with(&format!(" {second_pid}")))
    });
    std::fs::write(&go, "go").expect("go");
    let result = next_line("RESULT ");
    assert_eq!(
        result,
        format!("Ok(\"charged by {second_pid}\")"),
        "the workflow's result is the second worker's"
    );
    let lines = log_lines(&log);
    let starts: Vec<&String> = lines.iter().filter(|l| l.starts_with("start ")).collect();
    assert_eq!(starts.len(), 2, "one start per worker: {lines:#?}");
    assert!(
        starts.iter().all(|l| l.starts_with("start pay-1/1 ")),
        "both deliveries carry the same idempotency key: {lines:#?}"
    );
    assert!(starts[0].ends_with(&format!(" {first_pid}")));
    let dones: Vec<&String> = lines.iter().filter(|l| l.starts_with("done ")).collect();
    assert_eq!(
        dones.len(),
        1,
        "the task's effect happened once: {lines:#?}"
    );
    assert!(dones[0].ends_with(&format!(" {second_pid}")));
    drop(second);
    drop(server);
}
