//! Regression tests for defects a review of the operations change found (cancel, terminate,
//! retry, fork, attributes, search, HTTP API), each named after its defect: timers a
//! cancellation ended early re-waited after a retry, a fork or a reload; SQLite and memory
//! disagreed on object-valued attributes; a retry kept attributes of superseded entries and
//! accepted an unknown workflow; far-future times panicked the API.
#![allow(clippy::unwrap_used)]

use orch_runtime::prelude::*;
use orch_runtime::store::memory::MemoryStore;
use orch_runtime::store::{Query, Store, WriteOp};
use orch_runtime::{EntryKind, InstanceRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
#[path = "support/wait.rs"]
mod wait;
use wait::wait_until;

async fn sqlite(dir: &tempfile::TempDir) -> Runtime {
    Runtime::builder()
        .sqlite(dir.path().join("review.db"))
        .build()
        .await
        .expect("runtime")
}

/// Polls until the instance reaches `status`. (What must not take long is an hour-long timer,
/// which the shared deadline is far below.)
async fn wait_status(rt: &Runtime, id: &str, status: Status) -> InstanceRecord {
    wait_until(&format!("instance {id} to be {status}"), || async {
        match rt.instance(id).await.expect("read") {
            Some(rec) if rec.status == status => Ok(rec),
            rec => Err(rec.map(|r| (r.status, r.wake_at, r.error))),
        }
    })
    .await
}

// ------------------------------------------------------------------------------------------
// 1. A sleep that a cancellation ended early waits its full time again after retry / fork.

static NAP_CHARGED: AtomicU32 = AtomicU32::new(0);

#[step]
async fn nap_reserve(order: u32) -> Result<u32, StepError> {
    Ok(order)
}

#[step]
async fn nap_charge(order: u32) -> Result<u32, StepError> {
    NAP_CHARGED.fetch_add(1, Ordering::SeqCst);
    Ok(order * 100)
}

#[workflow]
async fn nap_then_charge(order: u32) -> Result<u32, StepError> {
    nap_reserve(order).await?; // seq 1
    orch::sleep(Duration::from_secs(3600)).await; // seq 2: the cancellation ends it early
    nap_charge(order).await // seq 3: receives the cancellation
}

#[tokio::test]
async fn retry_after_cancel_rewaits_a_sleep_that_ended_early() {
    let dir = tempfile::tempdir().unwrap();
    let rt = sqlite(&dir).await;
    let run = rt.start(NapThenCharge, 7).await.unwrap();
    wait_status(&rt, run.id(), Status::Suspended).await;
    rt.cancel(run.id(), "ops", "test").await.unwrap();
    let rec = wait_status(&rt, run.id(), Status::Cancelled).await;
    assert_eq!(rec.failed_seq, Some(3));
    // Retry from the step that received the cancellation: entries 1 and 2 replay "at once"
    // (DESIGN §2), so the charge runs and the instance completes right away...
    let from = rt.retry(run.id(), None, "ops").await.unwrap();
    assert_eq!(from, 3);
    // ...but the sleep at seq 2, which had ended early, now waits its remaining hour.
    wait_status(&rt, run.id(), Status::Completed).await;
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn fork_after_cancel_rewaits_a_sleep_that_ended_early() {
    let dir = tempfile::tempdir().unwrap();
    let rt = sqlite(&dir).await;
    let run = rt.start(NapThenCharge, 8).await.unwrap();
    wait_status(&rt, run.id(), Status::Suspended).await;
    rt.cancel(run.id(), "ops", "test").await.unwrap();
    wait_status(&rt, run.id(), Status::Cancelled).await;
    let fork = rt.fork(run.id(), 3, "ops").await.unwrap();
    wait_status(&rt, &fork, Status::Completed).await;
    rt.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// 2. Attribute search: SQLite and the memory store disagree on object values.

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Address {
    // Declared out of alphabetical order: serde writes fields in declaration order.
    zip: String,
    city: String,
}

#[workflow]
async fn addressed(zip: String) -> u32 {
    orch::set_attribute(
        "address",
        Address {
            zip,
            city: "Lyon".into(),
        },
    )
    .await;
    1
}

async fn search_by_address(rt: &Runtime, zip: &str) -> usize {
    let run = rt.start(Addressed, zip.to_string()).await.unwrap();
    wait_status(rt, run.id(), Status::Completed).await;
    // What the HTTP API builds from `attr.address={"zip":"…","city":"Lyon"}` (attr_value:
    // parsed and re-serialized by serde_json, i.e. with sorted keys); key order does not
    // matter for JSON values (store::json_equal).
    let value = serde_json::json!({"zip": zip, "city": "Lyon"}).to_string();
    let found = rt
        .search(Query {
            attributes: vec![("address".into(), value)],
            ..Default::default()
        })
        .await
        .unwrap();
    found.len()
}

#[tokio::test]
async fn memory_store_finds_an_object_attribute_by_value() {
    let rt = Runtime::builder().in_memory().build().await.unwrap();
    assert_eq!(search_by_address(&rt, "69001").await, 1);
    rt.shutdown().await.unwrap();
}

#[tokio::test]
async fn sqlite_attribute_search_misses_object_values_the_memory_store_finds() {
    let dir = tempfile::tempdir().unwrap();
    let rt = sqlite(&dir).await;
    assert_eq!(search_by_address(&rt, "69002").await, 1);
    rt.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// 3. Retry keeps the attributes that superseded entries set.

static STAGED_RUNS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn staged_run_number() -> Result<u32, StepError> {
    Ok(STAGED_RUNS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[workflow]
async fn staged() -> Result<u32, StepError> {
    let n = staged_run_number().await?; // seq 1
    if n == 1 {
        orch::set_attribute("stage", "doomed").await; // seq 2
        return Err(StepError::permanent("first run fails"));
    }
    Ok(n)
}

#[tokio::test]
async fn retry_keeps_attributes_set_by_superseded_entries() {
    let dir = tempfile::tempdir().unwrap();
    let rt = sqlite(&dir).await;
    let run = rt.start(Staged, ()).await.unwrap();
    wait_status(&rt, run.id(), Status::Failed).await;
    assert_eq!(
        rt.details(run.id())
            .await
            .unwrap()
            .attributes
            .get("stage")
            .map(String::as_str),
        Some("\"doomed\"")
    );
    rt.retry(run.id(), Some(1), "ops").await.unwrap();
    wait_status(&rt, run.id(), Status::Completed).await;
    let d = rt.details(run.id()).await.unwrap();
    assert!(
        d.journal.iter().all(|e| e.kind != EntryKind::Attribute),
        "no current entry sets an attribute"
    );
    let found = rt
        .search(Query {
            attributes: vec![("stage".into(), "\"doomed\"".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        !d.attributes.contains_key("stage") && found.is_empty(),
        "the completed instance still carries stage=doomed from its superseded run: {:?}",
        d.attributes
    );
    rt.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// 4. Retry of an instance whose workflow is not in this binary flips it to running forever.

#[tokio::test]
async fn retry_of_an_unknown_workflow_leaves_the_instance_running_forever() {
    let store = Arc::new(MemoryStore::new());
    let now = 1_700_000_000_000;
    store
        .create(
            InstanceRecord::new("ghost", "no_such_workflow", "v0", "null", now),
            None,
            Vec::new(),
        )
        .await
        .unwrap();
    store
        .submit(
            None,
            vec![WriteOp::Finish {
                instance: "ghost".into(),
                status: Status::Failed,
                output: None,
                error: Some("boom".into()),
                failed_step: None,
                at: now,
            }],
        )
        .await
        .unwrap();
    let rt = Runtime::builder()
        .store(store.clone())
        .build()
        .await
        .unwrap();
    // Fork and restart refuse an unknown workflow; retry should too, changing nothing.
    assert!(rt.restart("ghost", "ops").await.is_err());
    let retried = rt.retry("ghost", None, "ops").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rec = rt.instance("ghost").await.unwrap().unwrap();
    assert!(
        retried.is_err() && rec.status == Status::Failed,
        "retry returned {retried:?} and left the instance {} (nothing will ever drive it)",
        rec.status
    );
    rt.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// 5. The HTTP API panics on a far-future timer (a "sleep forever").

#[workflow]
async fn sleeps_forever() -> u32 {
    orch::sleep(Duration::from_secs(u64::MAX)).await;
    1
}

#[tokio::test]
async fn http_search_fails_for_everyone_once_an_instance_sleeps_forever() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .sqlite(dir.path().join("http.db"))
        .http("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let run = rt.start(SleepsForever, ()).await.unwrap();
    wait_status(&rt, run.id(), Status::Suspended).await;
    let base = format!("http://{}", rt.http_addr().unwrap());
    let client = reqwest::Client::new();
    for path in [
        "/api/v1/instances".to_string(),
        format!("/api/v1/instances/{}", run.id()),
        format!("/api/v1/instances/{}/journal", run.id()),
    ] {
        let resp = client.get(format!("{base}{path}")).send().await;
        match resp {
            Ok(r) => assert_eq!(r.status().as_u16(), 200, "GET {path}"),
            Err(e) => panic!("GET {path}: no response ({e}); the handler panicked"),
        }
    }
    rt.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// 6. Cancellation in a `join!` of a backing-off step and a sleep: whether the sleep ends early
//    depends on which branch join! polls first (tokio::join! rotates its start each poll),
//    and replay does not reproduce it.

#[step(retry = Retry::fixed(Duration::from_secs(3600)).max_attempts(10))]
async fn join_flaky() -> Result<u32, StepError> {
    Err(StepError::retryable("down"))
}

#[workflow]
async fn join_race() -> Result<u32, StepError> {
    let (a, ()) = join!(join_flaky(), orch::sleep(Duration::from_secs(3600))); // seqs 1, 2
    orch::sleep(Duration::from_secs(2)).await; // seq 3: suspends, so seqs 1-2 replay after it
    a
}

#[tokio::test]
async fn cancel_in_a_join_ends_the_sleep_in_one_run_but_not_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let rt = sqlite(&dir).await;
    let mut ids = Vec::new();
    for noise in 0..4u32 {
        let run = rt.start(JoinRace, ()).await.unwrap();
        // In the join: the step failed once and backs off for an hour; the sleep lasts an hour.
        wait_until("join_flaky's first failure", || async {
            let attempts = rt.attempts(run.id()).await.unwrap();
            if attempts.is_empty() {
                Err(attempts)
            } else {
                Ok(())
            }
        })
        .await;
        // Extra wake-ups move tokio::join!'s rotation, so both poll orders occur.
        for _ in 0..noise {
            rt.signal(run.id(), "noise", 1).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rt.cancel(run.id(), "ops", "test").await.unwrap();
        ids.push(run.id().to_string());
    }
    // Every instance ends (the one after the join sleeps 2 s); one that ran past the joined
    // sleep and then waits for it again on replay stays suspended for an hour.
    let report = wait_until("every instance to end", || async {
        let mut report = Vec::new();
        let mut ended = true;
        for id in &ids {
            let rec = rt.instance(id).await.unwrap().unwrap();
            ended &= rec.status.is_final();
            let seqs: Vec<u32> = rt
                .journal(id)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            report.push(format!(
                "{id}: {} cancel_seq={:?} wake_at={:?} journal={seqs:?}",
                rec.status, rec.cancel_seq, rec.wake_at
            ));
        }
        if ended {
            Ok(report)
        } else {
            Err(report.join("\n"))
        }
    })
    .await;
    let passed_join_then_stuck = report
        .iter()
        .filter(|r| r.contains("3]") && !r.contains("cancelled"))
        .count();
    assert!(
        report.iter().all(|r| r.contains(": cancelled")),
        "not all cancelled ({passed_join_then_stuck} ran past the joined sleep, \
         then replay waits for it again):\n{}",
        report.join("\n")
    );
    rt.shutdown().await.unwrap();
}
