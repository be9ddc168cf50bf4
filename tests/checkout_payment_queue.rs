//! The checkout example with its payment step on a queue (`--payment-queue`), served by the
//! Python worker of `examples/workers/python/payment_worker.py` over the HTTP worker protocol,
//! all real processes: a worker killed with `kill -9` mid-batch, while it holds tasks, is
//! replaced by another one, which gets the killed worker's tasks once their leases end (same
//! idempotency key). Every order ends final, as without a queue (every seventh card declined,
//! for good: no retry), every charge was made by a Python worker, none by the example's node,
//! and no payment effect was applied twice.
//!
//! Needs python3; without it the test says so loudly and passes, unless
//! `ORCH_REQUIRE_CLIENTS=1` (set by `.ci/run`). The test waits for states (lines in the
//! service log and the processes' output), never for a fixed time.
#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/wait.rs"]
mod wait;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use support::example_binary;
use wait::wait_until;

/// Orders in the batch: `order-1` … (every seventh card is declined).
const ORDERS: u64 = 24;
/// Every service call takes this long (half before its effect, half after), so a worker
/// killed right after a charge was applied has not ended that task yet.
const STEP_DELAY_MS: u64 = 200;
/// The workers' task lease (the shortest the protocol allows): a killed worker's tasks go to
/// the next worker this long after its last heartbeat.
const LEASE_MS: u64 = 1000;
/// The first worker is killed once this many of its payment requests were applied.
const KILL_AFTER: usize = 5;

/// A child process of the test, its output in files, killed when dropped.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Proc {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.name,
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            self.name,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Fails the test (with the process's output) if it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}):\n{}", self.name, self.output());
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", self.name);
    }

    /// Waits for it to exit with success, failing with its output otherwise.
    async fn exits_cleanly(&mut self) {
        let status = wait_until(&format!("{} to exit", self.name), || {
            let polled = self.child.try_wait().unwrap();
            async move { polled.ok_or(()) }
        })
        .await;
        assert!(
            status.success(),
            "{} failed ({status}):\n{}",
            self.name,
            self.output()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service log's lines so far (a line being written is left for the next look).
fn read_log(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is whole JSON"))
        .collect()
}

/// The payment service's lines of the log.
fn payments(log: &[Value]) -> Vec<&Value> {
    log.iter().filter(|e| e["service"] == "payment").collect()
}

/// A task of queue `payments` as the store holds it.
#[derive(Debug)]
struct Task {
    instance: String,
    key: String,
    input: String,
    state: String,
    worker: Option<String>,
    token: i64,
    error: Option<String>,
    retryable: bool,
}

/// The tasks of queue `payments` in the example's SQLite store (read once it has exited).
fn payment_tasks(db: &Path) -> Vec<Task> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT instance, idempotency_key, input, state, worker, token, error, retryable \
             FROM tasks WHERE queue = 'payments' ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Task {
            instance: r.get(0)?,
            key: r.get(1)?,
            input: r.get(2)?,
            state: r.get(3)?,
            worker: r.get(4)?,
            token: r.get(5)?,
            error: r.get(6)?,
            retryable: r.get(7)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Whether python3 is missing, after saying so loudly (and failing the test when
/// `ORCH_REQUIRE_CLIENTS=1`).
fn python3_missing() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let msg = "python3 not found: the Python payment worker test did NOT run";
        if std::env::var("ORCH_REQUIRE_CLIENTS").as_deref() == Ok("1") {
            panic!("{msg}, and ORCH_REQUIRE_CLIENTS=1 requires it");
        }
        let bar = "!".repeat(100);
        let _ = writeln!(std::io::stderr(), "\n{bar}\n!!! {msg}\n{bar}\n");
    }
    !found
}

/// A file of `examples/workers/python/`.
fn python_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("workers")
        .join("python")
        .join(name)
}

fn worker(dir: &Path, url: &str, name: &str) -> Proc {
    Proc::spawn(
        dir,
        name,
        Command::new("python3")
            .arg("-B")
            .arg(python_file("payment_worker.py"))
            .args([
                "--url",
                url,
                "--worker",
                name,
                "--concurrency",
                "4",
                "--lease-ms",
                &LEASE_MS.to_string(),
                "--wait-ms",
                "5000",
            ]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_worker_killed_mid_batch_is_replaced_and_no_card_is_charged_twice() {
    if python3_missing() {
        return;
    }
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("services.log");
    let mut example = Proc::spawn(
        dir.path(),
        "checkout",
        Command::new(example_binary())
            .args([
                "--orders",
                &ORDERS.to_string(),
                "--json",
                "--payment-queue",
                "--http",
                "127.0.0.1:0",
                "--step-delay-ms",
                &STEP_DELAY_MS.to_string(),
            ])
            .arg("--db")
            .arg(dir.path().join("orch.db"))
            .arg("--service-log")
            .arg(&log_path),
    );

    // With --json the example tells on stderr how to start a worker: the URL to give it.
    let url = wait_until("the example to print the payment worker's command", || {
        let said = std::fs::read_to_string(&example.stderr).unwrap_or_default();
        example.assert_running();
        let url = said
            .split_once("payment_worker.py --url ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string);
        async move { url.ok_or(said) }
    })
    .await;

    // Without a worker, no card is charged: the node serves no queue itself.
    let mut py1 = worker(dir.path(), &url, "py-1");
    // The kill lands right after a charge of py-1 was applied, before its answer (half the
    // step delay away) reached py-1, so that task is in flight.
    wait_until("py-1 to charge a few cards", || {
        let log = read_log(&log_path);
        let by_py1 = payments(&log)
            .iter()
            .filter(|e| e["node"] == "py-1" && e["applied"] == true)
            .count();
        py1.assert_running();
        async move {
            if by_py1 >= KILL_AFTER {
                Ok(())
            } else {
                Err(by_py1)
            }
        }
    })
    .await;
    py1.signal("-KILL");
    let killed = py1.child.wait().unwrap();
    assert!(!killed.success(), "py-1 was killed, yet exited cleanly");
    let at_kill: BTreeSet<String> = payments(&read_log(&log_path))
        .iter()
        .filter(|e| e["applied"] == true)
        .map(|e| e["order"].as_str().unwrap().to_string())
        .collect();
    assert!(
        at_kill.len() < ORDERS as usize,
        "the kill must land mid-batch, yet every order was charged already"
    );
    example.assert_running();

    let mut py2 = worker(dir.path(), &url, "py-2");
    example.exits_cleanly().await;

    // Every order final, as without a queue: declined cards fail, the others complete.
    let stdout = std::fs::read_to_string(&example.stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("--json prints one JSON object ({e}):\n{}", example.output()));
    let orders = summary["orders"].as_object().unwrap();
    assert_eq!(orders.len(), ORDERS as usize, "{summary}");
    let declined = |n: u64| n.is_multiple_of(7);
    for n in 1..=ORDERS {
        let want = if declined(n) { "failed" } else { "completed" };
        assert_eq!(orders[&format!("order-{n}")], want, "order-{n}: {summary}");
    }

    let log = read_log(&log_path);
    let pay = payments(&log);
    // Every payment request came from a Python worker, none from the example's node.
    for e in &pay {
        assert!(
            e["node"] == "py-1" || e["node"] == "py-2",
            "a payment request not from a worker: {e}"
        );
    }
    // No effect applied twice: by idempotency key, and by (order, op) as business says.
    let mut per_key: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut per_op: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for e in log.iter().filter(|e| e["applied"] == true) {
        let (service, key) = (e["service"].as_str().unwrap(), e["key"].as_str().unwrap());
        *per_key.entry((service, key)).or_default() += 1;
        let (order, op) = (e["order"].as_str().unwrap(), e["op"].as_str().unwrap());
        *per_op.entry((service, order, op)).or_default() += 1;
    }
    for (k, n) in &per_key {
        assert_eq!(*n, 1, "{k:?} applied {n} times");
    }
    for n in 1..=ORDERS {
        let id = format!("order-{n}");
        let count = |op: &str| per_op.get(&("payment", id.as_str(), op)).copied();
        assert_eq!(count("charge"), (!declined(n)).then_some(1), "{id} charge");
        assert_eq!(count("decline"), declined(n).then_some(1), "{id} decline");
    }
    // One task per order (a task taken over after the kill is the same task, leased again):
    // it carried what the worker needed, and ended as the in-process step would, a declined
    // card failed for good (no retry, so no second task).
    let payment_url = std::fs::read_to_string(&example.stderr)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("payment service: ").map(str::to_string))
        .expect("the example names its payment service");
    let tasks = payment_tasks(&dir.path().join("orch.db"));
    for n in 1..=ORDERS {
        let id = format!("order-{n}");
        let of_order: Vec<&Task> = tasks.iter().filter(|t| t.instance == id).collect();
        assert_eq!(of_order.len(), 1, "{id}'s tasks: {of_order:?}");
        let task = of_order[0];
        let input: Value = serde_json::from_str(&task.input).unwrap();
        assert_eq!(input["payment_url"], payment_url.as_str(), "{task:?}");
        assert_eq!(input["charge"]["order"], id.as_str(), "{task:?}");
        assert!(
            input["charge"]["amount_cents"].as_u64().unwrap() > 0,
            "{task:?}"
        );
        if declined(n) {
            assert_eq!(task.state, "failed", "{task:?}");
            assert!(!task.retryable, "a declined card is final: {task:?}");
            assert_eq!(task.error.as_deref(), Some("card declined"), "{task:?}");
        } else {
            assert_eq!(task.state, "completed", "{task:?}");
        }
    }
    // The killed worker held a task whose charge it had applied: it went to py-2 when its
    // lease ended, with the same idempotency key, and the service answered from memory.
    let by_py1: BTreeSet<&str> = pay
        .iter()
        .filter(|e| e["node"] == "py-1" && e["applied"] == true)
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    let taken_over: Vec<&str> = pay
        .iter()
        .filter(|e| e["node"] == "py-2" && e["applied"] == false)
        .map(|e| e["key"].as_str().unwrap())
        .filter(|k| by_py1.contains(k))
        .collect();
    assert!(
        !taken_over.is_empty(),
        "no task of the killed worker came back to py-2 with its idempotency key:\n{}",
        py2.output()
    );
    assert!(
        pay.iter()
            .any(|e| e["node"] == "py-2" && e["applied"] == true),
        "py-2 charged nothing after the kill"
    );
    // Those tasks were leased again (a new fencing token) and ended by py-2.
    for key in &taken_over {
        let task = tasks.iter().find(|t| t.key == *key).unwrap();
        assert!(task.token >= 2, "{task:?}");
        assert_eq!(task.worker.as_deref(), Some("py-2"), "{task:?}");
    }

    // SIGTERM stops the worker cleanly (it is waiting in a long-poll).
    py2.signal("-TERM");
    py2.exits_cleanly().await;
    assert!(py2.output().contains("py-2: stopped"), "{}", py2.output());
    eprintln!(
        "{} payment requests, {} applied by py-1 (killed), {} of those sent again by py-2; {:.1} s",
        pay.len(),
        by_py1.len(),
        taken_over.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_worker_ends_each_kind_of_service_answer_as_the_in_process_step_does() {
    if python3_missing() {
        return;
    }
    // examples/workers/python/test_payment_worker.py: a stand-in payment service on loopback
    // answers a charge, a decline, 400, 503, 408, 429, garbage and nothing at all.
    let out = Command::new("python3")
        .args(["-B", "-m", "unittest", "-v"])
        .arg(python_file("test_payment_worker.py"))
        .output()
        .expect("run python3");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Ran 7 tests"), "{said}");
}

/// Runs the example with `args` in `dir` to its end; returns (success, stdout, stderr).
fn run_example(args: &[&str], dir: &Path) -> (bool, String, String) {
    let mut child = Command::new(example_binary())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("run.stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("run.stderr")).unwrap())
        .spawn()
        .expect("run the example");
    let status = support::wait_bounded(&mut child, std::time::Duration::from_secs(60));
    (
        status.success(),
        std::fs::read_to_string(dir.join("run.stdout")).unwrap(),
        std::fs::read_to_string(dir.join("run.stderr")).unwrap(),
    )
}

#[test]
fn payment_queue_without_the_http_server_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (args, why) in [
        (
            &["--payment-queue", "--no-http"][..],
            "--payment-queue: payment workers lease their tasks through this node's HTTP API",
        ),
        (
            &["--payment-queue", "--services-only"][..],
            "cannot be used",
        ),
    ] {
        let out = Command::new(example_binary())
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run the example");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "created {left:?}");
}

#[test]
fn orders_started_without_the_queue_keep_charging_in_process_when_rerun_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "--orders",
        "3",
        "--json",
        "--http",
        "127.0.0.1:0",
        "--db",
        "orch.db",
    ];
    let (ok, first, stderr) = run_example(&base, dir.path());
    assert!(ok, "{stderr}");
    // The same batch with --payment-queue: the orders exist, started without it, so the run
    // neither refuses them (their input differs) nor waits for a worker.
    let (ok, again, stderr) = run_example(&[&base[..], &["--payment-queue"]].concat(), dir.path());
    assert!(ok, "{stderr}");
    assert_eq!(again, first);
    assert!(
        stderr.contains("3 of these orders were started without --payment-queue"),
        "{stderr}"
    );
    let log = read_log(&dir.path().join("orch.db.services.log"));
    assert_eq!(payments(&log).len(), 3, "the rerun charged nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_started_with_the_queue_are_served_in_process_when_rerun_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "--orders",
        "2",
        "--json",
        "--http",
        "127.0.0.1:0",
        "--node",
        "n1",
    ];
    let db = ["--db", "orch.db"];
    // A run with --payment-queue and no worker: both orders wait for one. Then it dies.
    let mut waiting = Proc::spawn(
        dir.path(),
        "queued",
        Command::new(example_binary())
            .args(base)
            .args(db)
            .arg("--payment-queue")
            .current_dir(dir.path()),
    );
    let url = wait_until("the example to print the payment worker's command", || {
        let said = std::fs::read_to_string(&waiting.stderr).unwrap_or_default();
        waiting.assert_running();
        let url = said
            .split_once("payment_worker.py --url ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string);
        async move { url.ok_or(said) }
    })
    .await;
    let client = reqwest::Client::new();
    wait_until("both charges to wait on queue `payments`", || {
        let ask = client.get(format!("{url}api/v1/queues")).send();
        async move {
            let queues: Value = ask
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let waiting = queues["queues"]
                .as_array()
                .and_then(|qs| qs.iter().find(|q| q["queue"] == "payments"))
                .map(|q| q["waiting"].clone());
            if waiting == Some(Value::from(2)) {
                Ok(())
            } else {
                Err(queues.to_string())
            }
        }
    })
    .await;
    waiting.signal("-KILL");
    let _ = waiting.child.wait();

    // Rerun without the flag (same node id: it takes its orders back at once). The orders
    // still charge through the queue, as they started; this node serves it in-process. The
    // tasks waiting name the payment service of the dead run, whose port is gone: that
    // attempt fails retryably, and the next one carries this run's URL.
    let (ok, out, stderr) = run_example(&[&base[..], &db[..]].concat(), dir.path());
    assert!(ok, "{stderr}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["orders"]["order-1"], "completed", "{summary}");
    assert_eq!(summary["orders"]["order-2"], "completed", "{summary}");
    assert!(
        stderr.contains("2 of these orders were started with --payment-queue"),
        "{stderr}"
    );
    let log = read_log(&dir.path().join("orch.db.services.log"));
    let charges: Vec<&Value> = payments(&log)
        .into_iter()
        .filter(|e| e["applied"] == true)
        .collect();
    assert_eq!(charges.len(), 2, "{charges:?}");
    for e in charges {
        assert_eq!(e["op"], "charge", "{e}");
        assert_eq!(e["node"], "n1", "charged by this node's own worker: {e}");
    }
}
