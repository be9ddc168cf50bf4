//! The deploy check (`Runtime::check_compatibility`): instances that wait under one version of
//! a workflow are replayed against changed code on demand — without waking them, calling a
//! step or writing anything — and exactly those the new code would stop `incompatible` (or
//! could not run at all) are reported, each with where its journal and the code part ways;
//! the rest are counted compatible. Paged checks add up to the whole, and an instance the
//! check called incompatible ends `incompatible` with the same message when it wakes.
//!
//! A deploy is modelled as in `determinism.rs`: the runtime is shut down, a flag switches the
//! workflow's code, and a new runtime opens the same store (SQLite, and PostgreSQL when
//! `ORCH_TEST_DATABASE_URL` is set).

#[path = "support/backends.rs"]
mod backends;
#[path = "support/wait.rs"]
mod wait;

use orch_runtime::compatibility::{CompatibilityQuery, CompatibilityReport, Incompatibility};
use orch_runtime::prelude::*;
use orch_runtime::store::postgres::PostgresStore;
use orch_runtime::store::sqlite::{SqliteOptions, SqliteStore};
use orch_runtime::store::{Backend, WriteOp};
use orch_runtime::{InstanceRecord, JournalEntry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use wait::wait_until;

/// Switched to deploy version 2 of `compat.order`, which ships before it charges.
static DEPLOYED_V2: AtomicBool = AtomicBool::new(false);
static STEP_CALLS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn reserve() -> Result<u32, StepError> {
    STEP_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(1)
}

#[step]
async fn charge() -> Result<u32, StepError> {
    STEP_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(2)
}

#[step]
async fn ship() -> Result<u32, StepError> {
    STEP_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(3)
}

/// Where an instance is when the new code arrives.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, JsonSchema)]
enum Mode {
    /// Charged (seq 2), waits for `continue`: v2 calls `ship` at seq 2.
    Charged,
    /// Waits for `go` (seq 2) before the charge: v2 parts ways after the journal ends.
    Early,
    /// Sleeps a day (seq 2) before the charge: likewise.
    Napping,
    /// Slept a moment (seq 2, fired), charged (seq 3), waits for `continue`: v2 calls `ship` at
    /// seq 3, after the timer.
    Napped,
    /// Finishes at once (not waiting: not checked).
    Quick,
}

#[workflow(name = "compat.order")]
async fn order(mode: Mode) -> Result<u32, StepError> {
    let a = reserve().await?;
    match mode {
        Mode::Quick => return Ok(a),
        Mode::Early => {
            let _go: bool = orch::signal("go").await;
        }
        Mode::Napping => orch::sleep(Duration::from_secs(86_400)).await,
        Mode::Napped => orch::sleep(Duration::from_millis(1)).await,
        Mode::Charged => {}
    }
    let b = if DEPLOYED_V2.load(Ordering::SeqCst) {
        ship().await?
    } else {
        charge().await?
    };
    let _more: bool = orch::signal("continue").await;
    Ok(a + b)
}

/// A store the test can reopen: a SQLite file or a PostgreSQL schema of its own.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(backends::PgSchema),
}

impl Place {
    async fn runtime(&self) -> Runtime {
        let builder = match self {
            Place::Sqlite(dir) => Runtime::builder().sqlite(dir.path().join("orch.db")),
            Place::Postgres(schema) => {
                Runtime::builder().postgres_with(schema.url.clone(), schema.options())
            }
        };
        builder.build().await.expect("runtime")
    }

    /// The store itself, beside any runtime (to plant what older code left behind).
    async fn store(&self) -> Arc<dyn Backend> {
        match self {
            Place::Sqlite(dir) => Arc::new(
                SqliteStore::open(dir.path().join("orch.db"), SqliteOptions::default())
                    .expect("open the SQLite store"),
            ),
            Place::Postgres(schema) => Arc::new(
                PostgresStore::open(&schema.url, schema.options())
                    .await
                    .expect("open the PostgreSQL store"),
            ),
        }
    }
}

/// Stores a suspended instance (waiting for a signal, no timer) as other code left it.
async fn plant(store: &dyn Backend, id: &str, workflow: &str, input: &str) {
    let rec = InstanceRecord::new(id, workflow, "00000000000000aa", input, 1_000);
    let suspend = WriteOp::SetStatus {
        instance: id.into(),
        status: Status::Suspended,
        wake_at: None,
        at: 1_000,
    };
    store
        .create(rec, None, vec![suspend])
        .await
        .expect("plant an instance");
}

async fn wait_status(rt: &Runtime, id: &str, status: Status) {
    wait_until(&format!("`{id}` to be {status}"), || async {
        let rec = rt.instance(id).await.expect("read").expect("exists");
        if rec.status == status {
            Ok(())
        } else {
            Err((rec.status, rec.error))
        }
    })
    .await;
}

/// Status, last change and journal of every instance, and the audit log: what a check must
/// leave as it found it.
async fn snapshot(
    rt: &Runtime,
    ids: &[&str],
) -> (BTreeMap<String, (Status, i64, Vec<JournalEntry>)>, usize) {
    let mut out = BTreeMap::new();
    for id in ids {
        let rec = rt.instance(id).await.expect("read").expect("exists");
        let journal = rt.journal(id).await.expect("journal");
        out.insert(id.to_string(), (rec.status, rec.updated_at, journal));
    }
    (out, rt.audit_log(1000).await.expect("audit").len())
}

/// Checks everything, `limit` instances per call; returns the sum and how many calls it took.
async fn check_all(rt: &Runtime, limit: usize) -> (CompatibilityReport, usize) {
    let mut total = CompatibilityReport::default();
    let mut query = CompatibilityQuery {
        limit,
        ..Default::default()
    };
    let mut calls = 0;
    loop {
        let page = rt.check_compatibility(query.clone()).await.expect("check");
        calls += 1;
        assert!(
            limit == 0 || page.checked <= limit,
            "a page checked more than asked: {page:?}"
        );
        total.checked += page.checked;
        total.compatible += page.compatible;
        total.incompatible.extend(page.incompatible);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return (total, calls),
        }
    }
}

fn by_id(list: &[Incompatibility]) -> BTreeMap<&str, &Incompatibility> {
    list.iter().map(|i| (i.id.as_str(), i)).collect()
}

const WAITING: [&str; 9] = [
    "charged-1",
    "charged-2",
    "charged-3",
    "early-1",
    "early-2",
    "napping-1",
    "napped-1",
    "ghost-1",
    "garbled-1",
];

async fn a_check_after_a_deploy_reports_exactly_the_instances_the_new_code_cannot_run(
    place: Place,
) {
    DEPLOYED_V2.store(false, Ordering::SeqCst);
    // What an older deploy left: an instance of a workflow that is gone, and one whose stored
    // input no longer fits the input type.
    let store = place.store().await;
    plant(&*store, "ghost-1", "compat.retired", "null").await;
    plant(
        &*store,
        "garbled-1",
        "compat.order",
        r#"{"Mode": "sideways"}"#,
    )
    .await;
    store.close().await.expect("close");
    drop(store);

    // Version 1 runs the instances to where they wait.
    let rt = place.runtime().await;
    let modes = [
        ("charged-1", Mode::Charged),
        ("charged-2", Mode::Charged),
        ("charged-3", Mode::Charged),
        ("early-1", Mode::Early),
        ("early-2", Mode::Early),
        ("napping-1", Mode::Napping),
        ("napped-1", Mode::Napped),
        ("quick-1", Mode::Quick),
    ];
    for (id, mode) in modes {
        rt.start_with_id(Order, id, mode).await.expect("start");
    }
    for (id, mode) in modes {
        let status = match mode {
            Mode::Quick => Status::Completed,
            _ => Status::Suspended,
        };
        wait_status(&rt, id, status).await;
    }
    let napped: Vec<String> = rt
        .journal("napped-1")
        .await
        .expect("journal")
        .iter()
        .map(|e| format!("{} {}", e.kind, e.name))
        .collect();
    assert_eq!(napped, ["step reserve", "sleep ", "step charge"]);
    rt.shutdown().await.expect("shut down version 1");

    // Deploy version 2 on the same store.
    DEPLOYED_V2.store(true, Ordering::SeqCst);
    let rt = place.runtime().await;
    let before = snapshot(&rt, &WAITING).await;
    let calls_before = STEP_CALLS.load(Ordering::SeqCst);

    let (report, _) = check_all(&rt, 0).await;
    assert_eq!(
        report.checked, 9,
        "every waiting instance, no finished one: {report:?}"
    );
    assert_eq!(
        report.compatible, 3,
        "early-1, early-2, napping-1: {report:?}"
    );
    let found = by_id(&report.incompatible);
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        [
            "charged-1",
            "charged-2",
            "charged-3",
            "garbled-1",
            "ghost-1",
            "napped-1"
        ],
        "{report:#?}"
    );
    for id in ["charged-1", "charged-2", "charged-3"] {
        let i = found[id];
        assert_eq!(
            (i.workflow.as_str(), i.status, i.seq),
            ("compat.order", Status::Suspended, Some(2)),
            "{i:?}"
        );
        assert_eq!(i.current_version.as_deref(), Some(Order::VERSION), "{i:?}");
        assert!(
            i.message.starts_with(
                "at seq 2 the journal recorded step `charge` but the code now calls step `ship`"
            ),
            "{i:?}"
        );
    }
    let napped = found["napped-1"];
    assert_eq!(
        napped.seq,
        Some(3),
        "after the timer that fired: {napped:?}"
    );
    assert!(
        napped.message.starts_with(
            "at seq 3 the journal recorded step `charge` but the code now calls step `ship`"
        ),
        "{napped:?}"
    );
    let ghost = found["ghost-1"];
    assert_eq!(
        (ghost.seq, ghost.current_version.as_deref()),
        (None, None),
        "{ghost:?}"
    );
    assert!(
        ghost
            .message
            .starts_with("this binary cannot run it: unknown workflow `compat.retired`"),
        "{ghost:?}"
    );
    let garbled = found["garbled-1"];
    assert_eq!(garbled.seq, None, "{garbled:?}");
    assert!(
        garbled
            .message
            .starts_with("it would fail when it wakes: the stored input no longer deserializes"),
        "{garbled:?}"
    );

    // In id order.
    let order: Vec<&str> = report.incompatible.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(order, found.keys().copied().collect::<Vec<_>>());

    // Pages of 4 add up to the same answer.
    let (paged, calls) = check_all(&rt, 4).await;
    assert_eq!(calls, 3, "9 instances in pages of 4");
    assert_eq!((paged.checked, paged.compatible), (9, 3));
    assert_eq!(paged.incompatible, report.incompatible);

    // The check changed nothing and called no step.
    assert_eq!(snapshot(&rt, &WAITING).await, before);
    assert_eq!(
        STEP_CALLS.load(Ordering::SeqCst),
        calls_before,
        "a step ran"
    );

    // What it said is what waking them does: charged-1 stops incompatible with the same
    // message, early-1 continues under version 2.
    rt.signal("charged-1", "continue", true)
        .await
        .expect("signal");
    wait_status(&rt, "charged-1", Status::Incompatible).await;
    let woken = rt
        .instance("charged-1")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        woken.error.as_deref(),
        Some(found["charged-1"].message.as_str())
    );
    rt.signal("early-1", "go", true).await.expect("signal");
    wait_until("early-1 to ship under version 2", || async {
        let names: Vec<String> = rt
            .journal("early-1")
            .await
            .expect("journal")
            .iter()
            .map(|e| e.name.clone())
            .collect();
        if names == ["reserve", "go", "ship"] {
            Ok(())
        } else {
            Err(names)
        }
    })
    .await;
    wait_status(&rt, "early-1", Status::Suspended).await;
    rt.shutdown().await.expect("shut down version 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_after_a_deploy_reports_exactly_the_instances_the_new_code_cannot_run_on_sqlite_and_postgres()
 {
    // One test, one store after the other: the deploy flag is global to this binary.
    let dir = tempfile::tempdir().expect("tempdir");
    a_check_after_a_deploy_reports_exactly_the_instances_the_new_code_cannot_run(Place::Sqlite(
        dir,
    ))
    .await;
    if let Some(schema) = backends::PgSchema::new() {
        a_check_after_a_deploy_reports_exactly_the_instances_the_new_code_cannot_run(
            Place::Postgres(schema),
        )
        .await;
    }
}

#[tokio::test]
async fn a_check_refuses_pages_over_the_limit_and_an_empty_workflow_name() {
    let rt = Runtime::builder()
        .in_memory()
        .build()
        .await
        .expect("runtime");
    let err = rt
        .check_compatibility(CompatibilityQuery {
            limit: orch_runtime::compatibility::MAX_CHECK + 1,
            ..Default::default()
        })
        .await
        .expect_err("over the limit");
    assert!(err.to_string().contains("at most 10000"), "{err}");
    let err = rt
        .check_compatibility(CompatibilityQuery {
            workflow: Some(String::new()),
            ..Default::default()
        })
        .await
        .expect_err("empty name");
    assert!(
        err.to_string().contains("workflow filter is empty"),
        "{err}"
    );
    let empty = rt
        .check_compatibility(CompatibilityQuery::default())
        .await
        .expect("nothing waits");
    assert_eq!(empty, CompatibilityReport::default());
    rt.shutdown().await.expect("shutdown");
}
