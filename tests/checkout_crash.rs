//! The checkout example survives `kill -9`: killed several times in the middle of a batch
//! and restarted on the same database, it ends with the same per-order statuses as an
//! uninterrupted run, and every service effect was applied exactly once.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{example_binary, wait_bounded};

const ORDERS: u64 = 24;

struct Paths {
    db: PathBuf,
    log: PathBuf,
    stdout: PathBuf,
}

impl Paths {
    fn in_dir(dir: &Path) -> Paths {
        Paths {
            db: dir.join("orch.db"),
            log: dir.join("services.log"),
            stdout: dir.join("stdout.json"),
        }
    }
}

fn spawn(p: &Paths) -> Child {
    Command::new(example_binary())
        .args([
            "--orders",
            &ORDERS.to_string(),
            "--json",
            "--step-delay-ms",
            "40",
        ])
        .arg("--db")
        .arg(&p.db)
        .arg("--service-log")
        .arg(&p.log)
        .stdout(std::fs::File::create(&p.stdout).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example")
}

/// Runs the example to the end and returns its JSON summary.
fn run_to_completion(p: &Paths) -> Value {
    let mut child = spawn(p);
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    assert!(status.success(), "the example failed: {status:?}");
    let stdout = std::fs::read_to_string(&p.stdout).unwrap();
    let mut lines = stdout.lines();
    let summary: Value = serde_json::from_str(lines.next().expect("no output")).unwrap();
    assert_eq!(
        lines.next(),
        None,
        "--json prints exactly one line: {stdout}"
    );
    summary
}

fn log_lines(log: &Path) -> usize {
    std::fs::read(log)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn read_log(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is whole JSON"))
        .collect()
}

/// Starts the example and SIGKILLs it as soon as the service log has grown by `grow` lines
/// (that is, right after a service applied a request, before the step's answer could be
/// checkpointed). Panics if the example finished first: the kill must land mid-batch.
///
/// Kill points are chosen by progress rather than by wall-clock time: the whole batch takes
/// well under a second (less in a resumed run, more on a loaded machine), so fixed delays
/// would sometimes land before the first call or after the last.
fn run_and_kill(p: &Paths, grow: usize) {
    let start = log_lines(&p.log);
    let mut child = spawn(p);
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_lines(&p.log) < start + grow {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the example finished before the kill point (+{grow} log lines)"
        );
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("no progress in 60 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix: no cleanup, no flushing
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, yet exited cleanly: {status:?}");
}

/// (service, order, op) of every applied effect, counted.
fn applied_effects(log: &[Value]) -> BTreeMap<(String, String, String), usize> {
    let mut m = BTreeMap::new();
    for e in log.iter().filter(|e| e["applied"] == true) {
        let k = (
            e["service"].as_str().unwrap().to_string(),
            e["order"].as_str().unwrap().to_string(),
            e["op"].as_str().unwrap().to_string(),
        );
        *m.entry(k).or_default() += 1;
    }
    m
}

#[test]
fn killed_three_times_mid_batch_ends_like_an_uninterrupted_run() {
    let started = Instant::now();
    // The reference: one uninterrupted run.
    let ref_dir = tempfile::tempdir().unwrap();
    let reference = Paths::in_dir(ref_dir.path());
    let expected = run_to_completion(&reference);

    // The same batch, killed three times at different points, then run to the end.
    let dir = tempfile::tempdir().unwrap();
    let crashy = Paths::in_dir(dir.path());
    for grow in [15, 45, 30] {
        run_and_kill(&crashy, grow);
    }
    let got = run_to_completion(&crashy);

    // Every order reached a final state, the same as without crashes.
    let orders = got["orders"].as_object().unwrap();
    assert_eq!(orders.len(), ORDERS as usize);
    for (id, status) in orders {
        assert!(
            status == "completed" || status == "failed",
            "{id} ended {status}"
        );
    }
    assert_eq!(got["orders"], expected["orders"]);
    assert_eq!(got["counts"], expected["counts"]);
    let declined: HashSet<String> = (1..=ORDERS)
        .filter(|n| n.is_multiple_of(7))
        .map(|n| format!("order-{n}"))
        .collect();
    for (id, status) in orders {
        let want = if declined.contains(id) {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(status, want, "{id}");
    }

    // Exactly-once effects: no key applied twice by any service…
    let log = read_log(&crashy.log);
    let mut per_key: HashMap<(&str, &str), usize> = HashMap::new();
    for e in log.iter().filter(|e| e["applied"] == true) {
        *per_key
            .entry((e["service"].as_str().unwrap(), e["key"].as_str().unwrap()))
            .or_default() += 1;
    }
    for (k, n) in &per_key {
        assert_eq!(*n, 1, "{k:?} applied {n} times");
    }
    // …and each order's effects applied once per service, as business rules say.
    let effects = applied_effects(&log);
    let count = |service: &str, order: &str, op: &str| {
        effects
            .get(&(service.to_string(), order.to_string(), op.to_string()))
            .copied()
            .unwrap_or(0)
    };
    for n in 1..=ORDERS {
        let id = format!("order-{n}");
        let is_declined = declined.contains(&id);
        assert_eq!(count("orders", &id, "create"), 1, "{id} create");
        assert_eq!(count("inventory", &id, "reserve"), 1, "{id} reserve");
        assert_eq!(
            count("payment", &id, "charge"),
            usize::from(!is_declined),
            "{id} charge"
        );
        assert_eq!(
            count("payment", &id, "decline"),
            usize::from(is_declined),
            "{id} decline"
        );
        assert_eq!(
            count("inventory", &id, "release"),
            usize::from(is_declined),
            "{id} release"
        );
        assert_eq!(
            count("shipping", &id, "ship"),
            usize::from(!is_declined),
            "{id} ship"
        );
        assert!(count("analytics", &id, "event") <= 1, "{id} analytics");
    }
    // The same effects as the uninterrupted run, analytics included.
    assert_eq!(effects, applied_effects(&read_log(&reference.log)));

    // A run on a finished batch starts nothing and calls no service.
    let lines = log.len();
    assert_eq!(run_to_completion(&crashy), got);
    assert_eq!(
        read_log(&crashy.log).len(),
        lines,
        "a rerun called services"
    );

    // The kills did land between a service applying a request and the step's checkpoint:
    // after a restart the re-sent request was answered from the idempotency memory.
    let deduplicated = log
        .iter()
        .filter(|e| e["applied"] == false && e["op"] != "unavailable")
        .count();
    eprintln!(
        "{} log lines, {deduplicated} deduplicated requests, {:.1} s",
        log.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(deduplicated > 0, "no kill hit the apply→checkpoint window");
}
