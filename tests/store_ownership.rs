//! One SQLite file, one owner: while a runtime holds a database, a second runtime on the same
//! file (in another process or in the same one) is refused at once with an error naming the
//! file and the holder, and changes nothing. A holder killed with SIGKILL does not block the
//! next start, and a runtime that was shut down lets the file go.
//!
//! The processes are this same test binary, re-executed with `ORCH_WORKER` set (see `worker`).

use orch_runtime::Error;
use orch_runtime::prelude::*;
use orch_runtime::store::StoreError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const INSTANCES: usize = 4;

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
async fn first(log: String, id: String) -> Result<(), StepError> {
    log_call(&log, &format!("first {id}"));
    Ok(())
}

/// Records that it started, then holds until the file `go` exists: while every instance sits
/// here the database does not change.
#[step]
async fn held(log: String, go: String, id: String) -> Result<(), StepError> {
    log_call(&log, &format!("held {id}"));
    while !Path::new(&go).exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[step]
async fn last(log: String, id: String) -> Result<String, StepError> {
    log_call(&log, &format!("last {id}"));
    Ok(format!("{id} done"))
}

#[workflow]
async fn paced(log: String, go: String, id: String) -> Result<String, StepError> {
    first(log.clone(), id.clone()).await?;
    held(log.clone(), go, id.clone()).await?;
    last(log, id).await
}

fn ids() -> Vec<String> {
    (0..INSTANCES).map(|i| format!("paced-{i}")).collect()
}

/// The worker side: runs only when re-executed by a test with `ORCH_WORKER` set.
///
/// - `owner`: builds a runtime on `ORCH_DB`, starts the `paced` instances and waits for all
///   of them, then shuts down and exits 0.
/// - `intruder`: builds a runtime on `ORCH_DB`; if that fails, writes the error to `ORCH_OUT`
///   and exits 2. If it succeeds it runs (resuming whatever it found) until killed.
#[test]
fn worker() {
    let Ok(role) = std::env::var("ORCH_WORKER") else {
        return;
    };
    let db = std::env::var("ORCH_DB").expect("ORCH_DB");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async move {
        let built = Runtime::builder().sqlite(&db).build().await;
        match role.as_str() {
            "owner" => {
                let orch = built.expect("runtime");
                let log = std::env::var("ORCH_CALL_LOG").expect("ORCH_CALL_LOG");
                let go = std::env::var("ORCH_GO").expect("ORCH_GO");
                let mut runs = Vec::new();
                for id in ids() {
                    let input = (log.clone(), go.clone(), id.clone());
                    runs.push(orch.start_with_id(Paced, id, input).await.expect("start"));
                }
                for run in runs {
                    run.result().await.expect("result").expect("completed");
                }
                orch.shutdown().await.expect("shutdown");
            }
            "intruder" => match built {
                Err(e) => {
                    let out = std::env::var("ORCH_OUT").expect("ORCH_OUT");
                    std::fs::write(out, e.to_string()).expect("write the error");
                    std::process::exit(2);
                }
                Ok(_orch) => tokio::time::sleep(Duration::from_secs(600)).await,
            },
            other => panic!("unknown role {other}"),
        }
    });
}

/// A worker process, killed (SIGKILL) when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Paths {
    _dir: tempfile::TempDir,
    db: PathBuf,
    log: PathBuf,
    go: PathBuf,
    out: PathBuf,
}

fn setup() -> Paths {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().to_path_buf();
    Paths {
        _dir: dir,
        db: p.join("orch.db"),
        log: p.join("calls.log"),
        go: p.join("go"),
        out: p.join("intruder.txt"),
    }
}

fn spawn_worker(role: &str, p: &Paths) -> Worker {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
        .env("ORCH_WORKER", role)
        .env("ORCH_DB", &p.db)
        .env("ORCH_CALL_LOG", &p.log)
        .env("ORCH_GO", &p.go)
        .env("ORCH_OUT", &p.out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker");
    Worker(child)
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn count(calls: &[String], line: &str) -> usize {
    calls.iter().filter(|c| *c == line).count()
}

/// Waits until every instance is inside `held` (its first step checkpointed, nothing more
/// to write until `go` appears).
fn wait_all_held(p: &Paths, worker: &mut Worker) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let calls = calls(&p.log);
        if ids()
            .iter()
            .all(|id| count(&calls, &format!("held {id}")) == 1)
        {
            return;
        }
        assert!(
            worker.0.try_wait().expect("poll worker").is_none(),
            "the owner exited early"
        );
        assert!(Instant::now() < deadline, "never all held: {calls:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the process to exit, failing (and killing it) after a generous deadline.
fn wait_exit(worker: &mut Worker, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = worker.0.try_wait().expect("poll worker") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every instance and journal row, read with a read-only connection beside the owner.
fn snapshot(db: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("read-only connection");
    let mut rows = Vec::new();
    let mut stmt = conn
        .prepare(
            "SELECT id, status, coalesce(output, ''), updated_at, coalesce(wake_at, 0) \
             FROM instances ORDER BY id",
        )
        .expect("prepare");
    let found = stmt
        .query_map([], |r| {
            Ok(format!(
                "instance {} {} {} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?
            ))
        })
        .expect("query");
    rows.extend(found.map(|r| r.expect("row")));
    let mut stmt = conn
        .prepare("SELECT instance, seq, kind, name, outcome FROM journal ORDER BY instance, seq")
        .expect("prepare");
    let found = stmt
        .query_map([], |r| {
            Ok(format!(
                "journal {} {} {} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?
            ))
        })
        .expect("query");
    rows.extend(found.map(|r| r.expect("row")));
    rows
}

fn dir_listing(dir: &Path) -> Vec<(String, u64)> {
    let mut names: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let len = e.metadata().expect("metadata").len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .filter(|(name, _)| !name.ends_with("-wal") && !name.ends_with("-shm"))
        .collect();
    names.sort();
    names
}

fn host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[test]
fn a_second_process_on_a_held_file_is_refused_at_once_and_changes_nothing() {
    let p = setup();
    let mut owner = spawn_worker("owner", &p);
    wait_all_held(&p, &mut owner);
    let before = snapshot(&p.db);
    assert_eq!(
        before
            .iter()
            .filter(|r| r.starts_with("journal ") && r.contains(" first "))
            .count(),
        INSTANCES,
        "{before:#?}"
    );
    let files_before = dir_listing(p._dir.path());

    // A second process on the same file fails right away and says who holds it.
    let mut intruder = spawn_worker("intruder", &p);
    let status = wait_exit(&mut intruder, "the second process");
    assert_eq!(status.code(), Some(2), "the second process must fail");
    let msg = std::fs::read_to_string(&p.out).expect("the second process's error");
    assert!(msg.contains(&p.db.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("pid {}", owner.0.id())), "{msg}");
    assert!(msg.contains(&format!("host `{}`", host())), "{msg}");
    assert!(msg.contains("since 20"), "{msg}");
    assert!(msg.contains("stop that process"), "{msg}");

    // It changed nothing: same rows, same files.
    assert_eq!(snapshot(&p.db), before);
    assert_eq!(
        dir_listing(p._dir.path())
            .into_iter()
            .filter(|(name, _)| name != "intruder.txt")
            .collect::<Vec<_>>(),
        files_before
    );

    // The owner goes on and completes every instance; no step ran twice.
    std::fs::write(&p.go, "").expect("go");
    let status = wait_exit(&mut owner, "the owner");
    assert!(status.success(), "the owner failed: {status:?}");
    let calls = calls(&p.log);
    for id in ids() {
        for step in ["first", "held", "last"] {
            assert_eq!(count(&calls, &format!("{step} {id}")), 1, "{calls:?}");
        }
    }
    assert!(
        snapshot(&p.db)
            .iter()
            .filter(|r| r.starts_with("instance "))
            .all(|r| r.contains(" completed ")),
        "{:#?}",
        snapshot(&p.db)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_with_sigkill_does_not_block_the_next_start() {
    let p = setup();
    let mut owner = spawn_worker("owner", &p);
    wait_all_held(&p, &mut owner);
    owner.0.kill().expect("kill -9");
    owner.0.wait().expect("reap");
    drop(owner);

    std::fs::write(&p.go, "").expect("go");
    let rt = Runtime::builder()
        .sqlite(&p.db)
        .build()
        .await
        .expect("a crashed holder must not block the next start");
    for id in ids() {
        let run = rt.handle(Paced, &id).await.expect("handle");
        let out = run.result().await.expect("result").expect("completed");
        assert_eq!(out, format!("{id} done"));
    }
    let calls = calls(&p.log);
    for id in ids() {
        // Checkpointed before the kill: not run again. `held` was in flight: it may run again.
        assert_eq!(count(&calls, &format!("first {id}")), 1, "{calls:?}");
        assert_eq!(count(&calls, &format!("last {id}")), 1, "{calls:?}");
    }
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_runtime_in_the_same_process_is_refused_until_the_first_shuts_down() {
    let p = setup();
    let rt = Runtime::builder()
        .sqlite(&p.db)
        .build()
        .await
        .expect("runtime");
    let err = Runtime::builder()
        .sqlite(&p.db)
        .build()
        .await
        .err()
        .expect("a second runtime on the same file is refused");
    let msg = err.to_string();
    match &err {
        Error::Store(StoreError::Locked { path, holder, .. }) => {
            assert_eq!(path, &p.db.display().to_string());
            let holder = holder.as_ref().expect("the holder is known");
            assert_eq!(holder.pid, std::process::id());
            assert_eq!(holder.host, host());
        }
        other => panic!("expected StoreError::Locked, got {other:?}"),
    }
    assert!(msg.contains("this process"), "{msg}");
    assert!(msg.contains("shutdown"), "{msg}");

    // The first runtime still works.
    let log = p.log.display().to_string();
    let go = p.go.display().to_string();
    std::fs::write(&p.go, "").expect("go");
    let run = rt
        .start_with_id(Paced, "same-1", (log, go, "same-1".into()))
        .await
        .expect("start");
    run.result().await.expect("result").expect("completed");

    // After shutdown the file is free again, in this process too.
    rt.shutdown().await.expect("shutdown");
    let again = Runtime::builder()
        .sqlite(&p.db)
        .build()
        .await
        .expect("rebuild after shutdown");
    let rec = again.instance("same-1").await.expect("read").expect("rec");
    assert_eq!(rec.status, Status::Completed);
    again.shutdown().await.expect("shutdown");
}
