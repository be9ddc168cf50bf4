//! Crash and recovery across processes: a worker process runs a workflow on a SQLite file and
//! is killed with SIGKILL while the instance sleeps or waits for a signal; a new runtime on the
//! same file finishes it. Completed steps are never executed again.
//!
//! The worker is this same test binary, re-executed with `ORCH_WORKER` set (see `worker`).

use orch_runtime::prelude::*;
use orch_runtime::store::Store;
use orch_runtime::store::sqlite::{SqliteOptions, SqliteStore};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
#[path = "support/wait.rs"]
mod wait;
use wait::{PATIENCE, wait_until};

/// How long the `nap` scenario sleeps: longer than a busy machine can take between the
/// worker suspending and the test killing it, so the kill lands while it sleeps.
const NAP_MS: u64 = 5000;

/// Appends `line` to the file at `path`: each step records that it ran.
fn log_call(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open call log");
    writeln!(f, "{line}").expect("write call log");
}

#[step]
async fn before(log: String, tag: String) -> Result<String, StepError> {
    log_call(&log, &format!("before {tag}"));
    Ok(format!("{tag}-before"))
}

#[step]
async fn after(log: String, tag: String) -> Result<String, StepError> {
    log_call(&log, &format!("after {tag}"));
    Ok(format!("{tag}-after"))
}

#[workflow]
async fn nap(ms_to_sleep: u64, log: String) -> Result<Vec<String>, StepError> {
    let a = before(log.clone(), "nap".into()).await?;
    let t0 = orch::now().await;
    let r = orch::random().await;
    orch::sleep(Duration::from_millis(ms_to_sleep)).await;
    let t1 = orch::now().await;
    let b = after(log, "nap".into()).await?;
    let slept = t1.duration_since(t0).unwrap_or_default().as_millis() as u64;
    Ok(vec![
        a,
        b,
        format!("slept>={}", slept >= ms_to_sleep),
        format!("r={r}"),
    ])
}

#[workflow]
async fn gate(log: String) -> Result<Vec<String>, StepError> {
    let a = before(log.clone(), "gate".into()).await?;
    let who: String = orch::signal("approve").await;
    let b = after(log, who).await?;
    Ok(vec![a, b])
}

#[step]
async fn undo(log: String, tag: String) -> Result<String, StepError> {
    log_call(&log, &format!("undo {tag}"));
    Ok(format!("{tag}-undone"))
}

#[workflow]
async fn hold(log: String) -> Result<String, StepError> {
    before(log.clone(), "hold".into()).await?;
    orch::sleep(Duration::from_secs(3600)).await;
    match after(log.clone(), "hold".into()).await {
        Ok(v) => Ok(v),
        Err(e) => {
            undo(log, "hold".into()).await?;
            Err(e)
        }
    }
}

/// The worker side: runs only when re-executed by a test with `ORCH_WORKER` set.
#[test]
fn worker() {
    let Ok(scenario) = std::env::var("ORCH_WORKER") else {
        return;
    };
    let db = std::env::var("ORCH_DB").expect("ORCH_DB");
    let log = std::env::var("ORCH_CALL_LOG").expect("ORCH_CALL_LOG");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async move {
        let orch = Runtime::builder()
            .sqlite(db)
            .build()
            .await
            .expect("runtime");
        match scenario.as_str() {
            "nap" => drop(
                orch.start_with_id(Nap, "nap-1", (NAP_MS, log))
                    .await
                    .expect("start"),
            ),
            "gate" => drop(
                orch.start_with_id(Gate, "gate-1", log)
                    .await
                    .expect("start"),
            ),
            "hold" => drop(
                orch.start_with_id(Hold, "hold-1", log)
                    .await
                    .expect("start"),
            ),
            other => panic!("unknown scenario {other}"),
        }
        // Run until killed.
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(scenario: &str, db: &Path, log: &Path) -> Worker {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
        .env("ORCH_WORKER", scenario)
        .env("ORCH_DB", db)
        .env("ORCH_CALL_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    Worker(child)
}

/// Polls the database until the instance is suspended. The worker holds the store, so this
/// reads with a plain read-only SQLite connection beside it (WAL allows it).
async fn wait_suspended(db: &Path, id: &str) {
    wait_until(&format!("{id} to suspend"), || async {
        if !db.exists() {
            return Err("no database yet".to_string());
        }
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let status: Result<String, _> =
            rusqlite::Connection::open_with_flags(db, flags).and_then(|c| {
                c.query_row("SELECT status FROM instances WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
            });
        match status {
            Ok(s) if s == "suspended" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// SIGKILL (`Child::kill`), then reap.
fn kill_9(mut worker: Worker) {
    worker.0.kill().expect("kill -9");
    worker.0.wait().expect("reap");
}

/// A new runtime on the crashed worker's database (it resumes what was unfinished).
async fn reopen(db: &Path) -> Runtime {
    Runtime::builder()
        .sqlite(db)
        .build()
        .await
        .expect("restart")
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    let log = dir.path().join("calls.log");
    (dir, db, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_workflow_survives_kill_9_and_wakes_when_its_timer_fires() {
    let (_dir, db, log) = setup();
    let worker = spawn_worker("nap", &db, &log);
    wait_suspended(&db, "nap-1").await;
    kill_9(worker);
    assert_eq!(calls(&log), ["before nap"]);

    let rt = reopen(&db).await;
    let run = rt.handle(Nap, "nap-1").await.expect("handle");
    let out = tokio::time::timeout(PATIENCE, run.result())
        .await
        .expect("woken when its timer fires")
        .expect("result")
        .expect("ok");
    assert_eq!(out[0], "nap-before");
    assert_eq!(out[1], "nap-after");
    assert_eq!(
        out[2], "slept>=true",
        "the timer kept its original fire time"
    );
    // The step that completed before the crash ran once; the one after ran once.
    assert_eq!(calls(&log), ["before nap", "after nap"]);
    // Recorded values replay identically: the random number in the output equals the journal's.
    let journal = rt.journal("nap-1").await.expect("journal");
    let random = journal
        .iter()
        .find(|e| e.kind == orch_runtime::EntryKind::Random)
        .expect("random recorded");
    assert_eq!(out[3], format!("r={}", random.outcome));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_waiting_for_a_signal_survives_kill_9_and_takes_the_signal_after_restart() {
    let (_dir, db, log) = setup();
    let worker = spawn_worker("gate", &db, &log);
    wait_suspended(&db, "gate-1").await;
    kill_9(worker);
    assert_eq!(calls(&log), ["before gate"]);

    let rt = reopen(&db).await;
    let run = rt.handle(Gate, "gate-1").await.expect("handle");
    rt.signal("gate-1", "approve", "bob").await.expect("signal");
    let out = run.result().await.expect("result").expect("ok");
    assert_eq!(out, ["gate-before", "bob-after"]);
    assert_eq!(calls(&log), ["before gate", "after bob"]);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_cancellation_survives_kill_9_and_is_delivered_after_restart() {
    let (_dir, db, log) = setup();
    let worker = spawn_worker("hold", &db, &log);
    wait_suspended(&db, "hold-1").await;
    // The worker, which has the instance unloaded until its one-hour timer, is killed; then
    // the cancellation is recorded in the store before any runtime runs on it again.
    kill_9(worker);
    {
        let store = SqliteStore::open(&db, SqliteOptions::default()).expect("open");
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        store
            .submit(
                None,
                vec![orch_runtime::store::WriteOp::RequestCancel {
                    instance: "hold-1".into(),
                    at,
                }],
            )
            .await
            .expect("request cancel");
        store.close().await.expect("close");
    }
    assert_eq!(calls(&log), ["before hold"]);

    let rt = reopen(&db).await;
    let run = rt.handle(Hold, "hold-1").await.expect("handle");
    let err = tokio::time::timeout(PATIENCE, run.result())
        .await
        .expect("delivered at restart, not when the one-hour timer fires")
        .expect("result")
        .expect_err("cancelled");
    assert!(err.is_cancelled(), "{err:?}");
    let rec = rt.instance("hold-1").await.expect("read").expect("rec");
    assert_eq!(rec.status, Status::Cancelled);
    // The step after the sleep never ran; its compensation ran once.
    assert_eq!(calls(&log), ["before hold", "undo hold"]);
    rt.shutdown().await.expect("shutdown");
}
