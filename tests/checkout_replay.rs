//! For the checkout flow, completed steps are not re-executed after a restart: the example
//! is killed (`kill -9`) mid-batch and rerun, and the services' call log shows that no step
//! that had been checkpointed before the kill was called again.
#![allow(clippy::unwrap_used)]

mod support;

use orch_runtime::store::EntryKind;
use orch_runtime::{JournalEntry, ListFilter, Runtime};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{example_binary, wait_bounded};

const ORDERS: u64 = 24;

fn example(db: &Path, log: &Path, stdout: &Path) -> Child {
    Command::new(example_binary())
        .args([
            "--orders",
            &ORDERS.to_string(),
            "--json",
            "--step-delay-ms",
            "60",
        ])
        .arg("--db")
        .arg(db)
        .arg("--service-log")
        .arg(log)
        .stdout(std::fs::File::create(stdout).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example")
}

/// The step that sends a request logged by `service` as `op` (each step of the checkout
/// calls one endpoint, and each order runs each step at most once).
fn step_of(service: &str, op: &str) -> &'static str {
    match (service, op) {
        ("orders", _) => "create_order",
        ("inventory", "release") => "release_inventory",
        ("inventory", _) => "reserve_inventory",
        ("payment", _) => "charge_payment",
        ("shipping", _) => "ship_order",
        ("analytics", _) => "record_analytics",
        _ => panic!("unknown service {service}"),
    }
}

fn read_log(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is whole JSON"))
        .collect()
}

/// Every step entry in the journals of the database at `db`, keyed by the idempotency key the
/// step used (`<instance>/<seq>`). The test binary has no `checkout` workflow compiled in, so
/// opening the database resumes nothing: unfinished instances are left as they are.
fn journaled_steps(db: &Path) -> HashMap<String, JournalEntry> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let orch = Runtime::builder().sqlite(db).build().await.unwrap();
        let mut steps = HashMap::new();
        for rec in orch.list(ListFilter::default()).await.unwrap() {
            for e in orch.journal(&rec.id).await.unwrap() {
                if e.kind == EntryKind::Step {
                    steps.insert(format!("{}/{}", rec.id, e.seq), e);
                }
            }
        }
        orch.shutdown().await.unwrap();
        steps
    })
}

/// The approach, and why it is exact:
///
/// 1. Run the batch with slow services and SIGKILL the process once mid-batch.
/// 2. With the process dead, copy its database (main file + WAL) aside and read the journals
///    of the copy: these are exactly the steps checkpointed before the kill, i.e. exactly what
///    the rerun starts from. Note how many lines the service log has at this point: every
///    line after it was written by the rerun.
/// 3. Rerun the batch to the end on the original database.
/// 4. A step's idempotency key is `<instance>/<seq>`, the same on every attempt and restart,
///    and every request a service receives is logged with its key (duplicates included). So
///    a checkpointed step that was executed again would show up as a log line after the
///    mark carrying its key. Assert there is none. Steps that were in flight at the kill
///    (called, not checkpointed) may and do appear again: the services deduplicate them.
///    The same check is made by meaning, (order, step) instead of key, so a re-execution that
///    lost its key would be caught too.
/// 5. Also assert that the final journals hold those entries unchanged (replayed, not
///    re-recorded).
#[test]
fn checkpointed_steps_are_not_called_again_after_a_restart() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orch.db");
    let log = dir.path().join("services.log");

    // 1. Kill mid-batch, once enough calls were made for many steps to be checkpointed.
    let stdout = dir.path().join("stdout.json");
    let mut child = example(&db, &log, &stdout);
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_log(&log).len() < 50 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("no progress in 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // 2. What the rerun starts from.
    let mark = read_log(&log).len();
    let snap = tempfile::tempdir().unwrap();
    let snap_db = snap.path().join("orch.db");
    std::fs::copy(&db, &snap_db).unwrap();
    let wal = dir.path().join("orch.db-wal");
    if wal.exists() {
        std::fs::copy(&wal, snap.path().join("orch.db-wal")).unwrap();
    }
    let checkpointed = journaled_steps(&snap_db);
    assert!(
        checkpointed.len() >= 10,
        "only {} steps checkpointed before the kill",
        checkpointed.len()
    );

    // 3. Rerun to the end.
    let status = wait_bounded(&mut example(&db, &log, &stdout), Duration::from_secs(60));
    assert!(status.success(), "rerun failed: {status:?}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&stdout).unwrap()).unwrap();
    let finished = summary["counts"]["completed"].as_u64().unwrap()
        + summary["counts"]["failed"].as_u64().unwrap();
    assert_eq!(finished, ORDERS, "{summary}");

    // 4. Count calls after the restart, per key.
    let all = read_log(&log);
    let rerun = &all[mark..];
    let before: HashSet<&str> = all[..mark]
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    let mut calls_after: HashMap<&str, usize> = HashMap::new();
    for e in rerun {
        *calls_after.entry(e["key"].as_str().unwrap()).or_default() += 1;
    }
    let called_again: Vec<(&str, usize)> = calls_after
        .iter()
        .filter(|(k, _)| checkpointed.contains_key(**k))
        .map(|(k, n)| (*k, *n))
        .collect();
    assert!(
        called_again.is_empty(),
        "checkpointed steps were executed again after the restart: {called_again:?}"
    );
    // The same by meaning rather than by key, in case a re-execution ran without its step's
    // key: no request of the rerun belongs to an (order, step) checkpointed before the kill.
    let checkpointed_steps: HashSet<(String, String)> = checkpointed
        .iter()
        .map(|(key, e)| (key.split('/').next().unwrap().to_string(), e.name.clone()))
        .collect();
    for e in rerun {
        let order = e["order"].as_str().unwrap().to_string();
        let step = step_of(e["service"].as_str().unwrap(), e["op"].as_str().unwrap());
        assert!(
            !checkpointed_steps.contains(&(order.clone(), step.to_string())),
            "step {step} of {order} was checkpointed before the kill, yet called again: {e}"
        );
    }
    assert!(
        !rerun.is_empty(),
        "the rerun made no calls: nothing was left to do"
    );
    // Each checkpointed step was called before the kill (the log has its key).
    for key in checkpointed.keys() {
        assert!(
            before.contains(key.as_str()),
            "{key} journaled but never called"
        );
    }

    // 5. The journal kept those entries as they were.
    let final_steps = journaled_steps(&db);
    for (key, entry) in &checkpointed {
        assert_eq!(final_steps.get(key), Some(entry), "{key} was re-recorded");
    }

    let resent = calls_after.keys().filter(|k| before.contains(*k)).count();
    eprintln!(
        "{} steps checkpointed before the kill, none called again; {} calls after the restart, \
         {resent} of them re-sending an in-flight step's key; {:.1} s",
        checkpointed.len(),
        rerun.len(),
        started.elapsed().as_secs_f64()
    );
}
