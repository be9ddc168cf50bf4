//! One SQLite file, several processes: each runtime is a node that drives only the instances it
//! owns (by lease). Two processes on one file both make progress and no step runs twice; one
//! killed with SIGKILL mid-batch is taken over by the other after the lease time-to-live, with
//! no checkpointed step run again; one stopped with SIGSTOP past its lease has its late writes
//! refused (fencing) when it continues, and nothing it wrote after losing the lease is visible.
//!
//! The processes are this same test binary, re-executed with `ORCH_WORKER` set (see `worker`).

use orch_runtime::ListFilter;
use orch_runtime::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The lease time-to-live of the worker processes: short, so a takeover is quick.
const LEASE_TTL: Duration = Duration::from_millis(1000);

/// Appends `line` to the file at `path`: each step records that it ran, and where.
fn log_call(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open call log");
    // One write per line: lines of concurrent writers never interleave.
    f.write_all(format!("{line}\n").as_bytes())
        .expect("write call log");
}

fn node_name() -> String {
    std::env::var("ORCH_NODE").unwrap_or_else(|_| "test".into())
}

#[step]
async fn first(log: String, id: String) -> Result<(), StepError> {
    log_call(&log, &format!("first {id} {}", node_name()));
    Ok(())
}

/// Records that it started, then holds until the file `go` exists; returns the node it ran
/// on, so the journal tells which node checkpointed it.
#[step]
async fn held(log: String, go: String, id: String) -> Result<String, StepError> {
    log_call(&log, &format!("held {id} {}", node_name()));
    while !Path::new(&go).exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log_call(&log, &format!("released {id} {}", node_name()));
    Ok(node_name())
}

#[step]
async fn last(log: String, id: String) -> Result<String, StepError> {
    log_call(&log, &format!("last {id} {}", node_name()));
    Ok(format!("{id} done by {}", node_name()))
}

#[workflow]
async fn paced(log: String, go: String, id: String) -> Result<String, StepError> {
    first(log.clone(), id.clone()).await?;
    held(log.clone(), go, id.clone()).await?;
    last(log, id).await
}

/// The worker side: runs only when re-executed by a test with `ORCH_WORKER=node`.
///
/// Builds a runtime named `ORCH_NODE` on `ORCH_DB` (lease [`LEASE_TTL`]), starts the `paced`
/// instances `ORCH_START` names (comma-separated), then waits until `ORCH_TOTAL` instances
/// exist and all have finished — whoever drove them — shuts down and exits 0.
#[test]
fn worker() {
    if std::env::var("ORCH_WORKER").is_err() {
        return;
    }
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let (db, log, go) = (env("ORCH_DB"), env("ORCH_CALL_LOG"), env("ORCH_GO"));
    let total: usize = env("ORCH_TOTAL").parse().expect("ORCH_TOTAL");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async move {
        let orch = Runtime::builder()
            .sqlite(&db)
            .node_id(node_name())
            .lease_ttl(LEASE_TTL)
            .build()
            .await
            .expect("runtime");
        for id in env("ORCH_START").split(',').filter(|s| !s.is_empty()) {
            let input = (log.clone(), go.clone(), id.to_string());
            orch.start_with_id(Paced, id, input).await.expect("start");
        }
        loop {
            let all = orch.list(ListFilter::default()).await.expect("list");
            if all.len() == total && all.iter().all(|r| r.status.is_final()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        orch.shutdown().await.expect("shutdown");
    });
}

/// A worker process, killed (SIGKILL) when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Paths {
    _dir: tempfile::TempDir,
    db: PathBuf,
    log: PathBuf,
    go: PathBuf,
}

fn setup() -> Paths {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().to_path_buf();
    Paths {
        _dir: dir,
        db: p.join("orch.db"),
        log: p.join("calls.log"),
        go: p.join("go"),
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn spawn_node(p: &Paths, node: &str, start: &[String], total: usize) -> Worker {
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
        .env("ORCH_WORKER", "node")
        .env("ORCH_NODE", node)
        .env("ORCH_DB", &p.db)
        .env("ORCH_CALL_LOG", &p.log)
        .env("ORCH_GO", &p.go)
        .env("ORCH_START", start.join(","))
        .env("ORCH_TOTAL", total.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(p.log.with_extension(format!("{node}.err")))
                .expect("stderr file"),
        )
        .spawn()
        .expect("spawn worker");
    Worker(child)
}

/// What the workers wrote to stderr.
fn worker_output(p: &Paths) -> String {
    ["node-a", "node-b"]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(p.log.with_extension(format!("{n}.err")));
            format!("--- {n}:\n{}", text.unwrap_or_default())
        })
        .collect()
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many log lines start with `prefix ` (e.g. `first paced-1`).
fn count(calls: &[String], prefix: &str) -> usize {
    let prefix = format!("{prefix} ");
    calls.iter().filter(|c| c.starts_with(&prefix)).count()
}

/// Waits (generous deadline) until `ready` holds for the call log.
fn wait_log(p: &Paths, what: &str, ready: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let calls = calls(&p.log);
        if ready(&calls) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {calls:#?}\nworker output: {}",
            worker_output(p)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the process to exit, failing after a generous deadline.
fn wait_exit(worker: &mut Worker, what: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = worker.0.try_wait().expect("poll worker") {
            return status;
        }
        if Instant::now() >= deadline {
            eprintln!("{what} did not exit in time: killed");
            let _ = worker.0.kill();
            return worker.0.wait().expect("reap");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every instance's status and output, and every journal row, read with a read-only
/// connection.
/// Instances as (id, status, output); journal rows as (instance, seq, outcome).
type Snapshot = (Vec<(String, String, String)>, Vec<(String, i64, String)>);

fn snapshot(db: &Path) -> Snapshot {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("read-only connection");
    let mut stmt = conn
        .prepare("SELECT id, status, coalesce(output, '') FROM instances ORDER BY id")
        .expect("prepare");
    let instances = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let mut stmt = conn
        .prepare("SELECT instance, seq, outcome FROM journal ORDER BY instance, seq")
        .expect("prepare");
    let journal = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    (instances, journal)
}

fn kill_signal(worker: &Worker, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &worker.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} failed");
}

#[test]
fn two_processes_on_one_file_both_make_progress_and_no_step_runs_twice() {
    let p = setup();
    std::fs::write(&p.go, "").expect("go");
    let (a_ids, b_ids) = (ids("a", 6), ids("b", 6));
    let mut a = spawn_node(&p, "node-a", &a_ids, 12);
    let mut b = spawn_node(&p, "node-b", &b_ids, 12);
    for (w, name) in [(&mut a, "node a"), (&mut b, "node b")] {
        let status = wait_exit(w, name);
        assert!(
            status.success(),
            "{name} failed ({status:?}): {:#?}\n{}\n{:#?}",
            calls(&p.log),
            worker_output(&p),
            snapshot(&p.db).0
        );
    }
    let calls = calls(&p.log);
    for id in a_ids.iter().chain(&b_ids) {
        for step in ["first", "held", "last"] {
            assert_eq!(count(&calls, &format!("{step} {id}")), 1, "{calls:#?}");
        }
    }
    for node in ["node-a", "node-b"] {
        assert!(
            calls.iter().any(|c| c.ends_with(&format!(" {node}"))),
            "{node} made no progress: {calls:#?}"
        );
    }
    let (instances, _) = snapshot(&p.db);
    assert_eq!(instances.len(), 12);
    assert!(
        instances.iter().all(|(_, st, _)| st == "completed"),
        "{instances:#?}"
    );
}

#[test]
fn a_node_killed_mid_batch_is_taken_over_after_its_lease_with_no_checkpointed_step_rerun() {
    let p = setup();
    let a_ids = ids("k", 4);
    let mut a = spawn_node(&p, "node-a", &a_ids, 4);
    let mut b = spawn_node(&p, "node-b", &[], 4);
    // Every instance sits in `held` on node a: `first` is checkpointed, `held` in flight.
    wait_log(&p, "all held on node a", |c| {
        a_ids
            .iter()
            .all(|id| c.contains(&format!("held {id} node-a")))
    });
    let killed = Instant::now();
    a.0.kill().expect("kill -9");
    a.0.wait().expect("reap");
    std::fs::write(&p.go, "").expect("go");
    assert!(wait_exit(&mut b, "node b").success(), "node b failed");
    let took = killed.elapsed();
    let calls = calls(&p.log);
    for id in &a_ids {
        assert_eq!(count(&calls, &format!("first {id}")), 1, "{calls:#?}");
        assert!(calls.contains(&format!("last {id} node-b")), "{calls:#?}");
        assert_eq!(count(&calls, &format!("last {id}")), 1, "{calls:#?}");
    }
    let (instances, _) = snapshot(&p.db);
    assert!(
        instances.iter().all(|(_, st, _)| st == "completed"),
        "{instances:#?}"
    );
    eprintln!("takeover and completion after kill -9: {took:?} (lease {LEASE_TTL:?})");
}

#[test]
fn a_node_paused_past_its_lease_has_its_late_writes_refused_and_drops_the_instances() {
    let p = setup();
    let a_ids = ids("s", 3);
    let mut a = spawn_node(&p, "node-a", &a_ids, 3);
    wait_log(&p, "all held on node a", |c| {
        a_ids
            .iter()
            .all(|id| c.contains(&format!("held {id} node-a")))
    });
    kill_signal(&a, "-STOP");
    // Node b takes the instances over once a's lease has ended: it runs `held` again
    // (in flight on a, so never checkpointed) and holds there too.
    let mut b = spawn_node(&p, "node-b", &[], 3);
    wait_log(&p, "all held on node b", |c| {
        a_ids
            .iter()
            .all(|id| c.contains(&format!("held {id} node-b")))
    });
    // Both may now finish `held`; a resumes too, late.
    std::fs::write(&p.go, "").expect("go");
    kill_signal(&a, "-CONT");
    assert!(wait_exit(&mut b, "node b").success(), "node b failed");
    assert!(wait_exit(&mut a, "node a").success(), "node a failed");
    let calls = calls(&p.log);
    let (instances, journal) = snapshot(&p.db);
    for id in &a_ids {
        // Node a never got past `held`: its checkpoint was refused and it dropped the instance.
        assert!(!calls.contains(&format!("last {id} node-a")), "{calls:#?}");
        assert_eq!(count(&calls, &format!("first {id}")), 1, "{calls:#?}");
        assert_eq!(count(&calls, &format!("last {id}")), 1, "{calls:#?}");
        let held: Vec<_> = journal
            .iter()
            .filter(|(i, seq, _)| i == id && *seq == 2)
            .collect();
        assert_eq!(
            held.iter()
                .map(|(_, _, out)| out.as_str())
                .collect::<Vec<_>>(),
            [r#"{"value":{"Ok":"node-b"}}"#],
            "the checkpoint of `held` is node b's: {journal:#?}"
        );
    }
    for (id, status, output) in &instances {
        assert_eq!(status, "completed", "{id}");
        assert!(output.contains("done by node-b"), "{id}: {output}");
    }
}
