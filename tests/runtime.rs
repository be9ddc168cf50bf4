//! The runtime's own contract: store selection and refusal of foreign files, the concurrency
//! limit, listing, shutdown, and resuming on build.

use orch_runtime::prelude::*;
use orch_runtime::store::Store;
use orch_runtime::{Error, ListFilter};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
#[path = "support/wait.rs"]
mod wait;

static RUNNING: AtomicU32 = AtomicU32::new(0);
static PEAK: AtomicU32 = AtomicU32::new(0);

#[step]
async fn busy(i: u32) -> Result<u32, StepError> {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    PEAK.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    Ok(i)
}

#[workflow]
async fn limited(i: u32) -> Result<u32, StepError> {
    busy(i).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_running_instances_run_at_once() {
    let rt = Runtime::builder()
        .in_memory()
        .max_running(2)
        .build()
        .await
        .expect("runtime");
    let mut runs = Vec::new();
    for i in 0..8 {
        runs.push(rt.start(Limited, i).await.expect("start"));
    }
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.result().await.expect("result"), Ok(i as u32));
    }
    assert_eq!(PEAK.load(Ordering::SeqCst), 2);
}

/// Opened by the test: until then `gated` holds every instance it runs.
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();
static GATE_OPEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[step]
async fn gated(i: u32) -> Result<u32, StepError> {
    while !GATE_OPEN.load(Ordering::SeqCst) {
        let opened = GATE.notified();
        if GATE_OPEN.load(Ordering::SeqCst) {
            break;
        }
        opened.await;
    }
    Ok(i)
}

#[workflow]
async fn waits_at_the_gate(i: u32) -> Result<u32, StepError> {
    gated(i).await
}

/// A runtime starting more instances than it may run keeps only what it can run; the rest wait
/// in the store, unowned, and another runtime sharing it with room takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_owns_no_more_than_it_may_run_and_another_takes_the_rest() {
    use orch_runtime::store::StoreAdmin;
    let store = std::sync::Arc::new(orch_runtime::store::memory::MemoryStore::new());
    let node = |id: &str, max: usize| {
        Runtime::builder()
            .store(store.clone())
            .node_id(id)
            .max_running(max)
            .build()
    };
    let small = node("small", 2).await.expect("runtime");
    let big = node("big", 100).await.expect("runtime");
    let mut runs = Vec::new();
    for i in 0..6 {
        runs.push(small.start(WaitsAtTheGate, i).await.expect("start"));
    }
    let owned = wait::wait_until("the other runtime to take the rest", || async {
        let nodes = store.nodes().await.expect("nodes");
        let owned: Vec<(String, u64)> = nodes.into_iter().map(|n| (n.id, n.owned)).collect();
        if owned.iter().map(|(_, n)| n).sum::<u64>() == 6 {
            Ok(owned)
        } else {
            Err(owned)
        }
    })
    .await;
    assert_eq!(owned, [("big".to_string(), 4), ("small".to_string(), 2)]);
    GATE_OPEN.store(true, Ordering::SeqCst);
    GATE.notify_waiters();
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.result().await.expect("result"), Ok(i as u32));
    }
    small.shutdown().await.expect("shutdown");
    let _ = big.shutdown().await; // (the store they share is closed already)
}

#[tokio::test]
async fn a_file_that_is_not_an_orch_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.db");
    std::fs::write(&path, "these are my notes, not a database\n").expect("write");
    let err = Runtime::builder()
        .sqlite(&path)
        .build()
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("is not an orch database"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "these are my notes, not a database\n"
    );
}

#[tokio::test]
async fn a_damaged_database_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.db");
    {
        // A real orch database, closed so that its WAL is folded into the file.
        let store = orch_runtime::store::sqlite::SqliteStore::open(&good, Default::default())
            .expect("open");
        store.close().await.expect("close");
    }
    assert!(!dir.path().join("good.db-wal").exists());
    // Keep the header page, replace the rest with garbage.
    let bytes = std::fs::read(&good).expect("read");
    let mut damaged = bytes[..4096.min(bytes.len())].to_vec();
    assert!(bytes.len() > 4096, "the schema spans several pages");
    damaged.extend(std::iter::repeat_n(0xA5u8, 8192));
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, &damaged).expect("write");
    let err = Runtime::builder()
        .sqlite(&bad)
        .build()
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("is damaged"), "{msg}");
    assert!(msg.contains("restore it from a backup"), "{msg}");
    assert_eq!(
        std::fs::read(&bad).expect("read"),
        damaged,
        "left untouched"
    );
}

#[tokio::test]
async fn a_builder_without_a_store_says_how_to_choose_one() {
    // (The test builds have the `sqlite` and `postgres` features, so both are offered; it
    // never falls back to the memory store.)
    let err = Runtime::builder().build().await.err().expect("refused");
    let msg = err.to_string();
    for call in [".sqlite(path)", ".postgres(url)", ".in_memory()"] {
        assert!(msg.contains(call), "{msg}");
    }
}

#[workflow]
async fn echo(x: u32) -> u32 {
    x
}

#[tokio::test]
async fn list_filters_by_workflow_and_status_and_pages_by_id() {
    let rt = Runtime::builder()
        .in_memory()
        .build()
        .await
        .expect("runtime");
    for i in 0..5 {
        let run = rt
            .start_with_id(Echo, format!("echo-{i}"), i)
            .await
            .expect("start");
        run.result().await.expect("result");
    }
    let page = rt
        .list(ListFilter::default().workflow("echo").limit(2))
        .await
        .expect("list");
    let ids: Vec<_> = page.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["echo-0", "echo-1"]);
    let next = rt
        .list(ListFilter {
            after_id: Some("echo-1".into()),
            ..ListFilter::default().workflow("echo").limit(2)
        })
        .await
        .expect("list");
    let ids: Vec<_> = next.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["echo-2", "echo-3"]);
    let completed = rt
        .list(ListFilter::default().status(Status::Completed))
        .await
        .expect("list");
    assert_eq!(completed.len(), 5);
    assert!(
        rt.list(ListFilter::default().workflow("limited"))
            .await
            .expect("list")
            .is_empty()
    );
}

#[workflow]
async fn dozing(x: u32) -> u32 {
    orch::sleep(Duration::from_millis(1500)).await;
    x + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_nothing_starts_and_a_new_runtime_resumes_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    let rt = Runtime::builder()
        .sqlite(&db)
        .build()
        .await
        .expect("runtime");
    rt.start_with_id(Dozing, "d-1", 41).await.expect("start");
    rt.shutdown().await.expect("shutdown");
    let err = rt.start(Dozing, 1).await.err().expect("shut down");
    assert!(matches!(err, Error::ShutDown), "{err}");

    let rt = Runtime::builder()
        .sqlite(&db)
        .build()
        .await
        .expect("restart");
    let run = rt.handle(Dozing, "d-1").await.expect("handle");
    assert_eq!(run.result().await.expect("result"), 42);
    let wrong = rt.handle(Echo, "d-1").await.err().expect("wrong workflow");
    assert!(
        wrong
            .to_string()
            .contains("is a `dozing` workflow, not `echo`"),
        "{wrong}"
    );
    rt.shutdown().await.expect("shutdown");
}
