//! Replay determinism: a journal that no longer matches the code stops the instance in the
//! visible `incompatible` state with a message naming the seq, the recorded and the current
//! call, and both code versions. Nothing is guessed and no step runs.

use orch_runtime::prelude::*;
use orch_runtime::store::sqlite::{SqliteOptions, SqliteStore};
use orch_runtime::store::{Store, WriteOp};
use orch_runtime::{EntryKind, InstanceRecord, JournalEntry, Workflow};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
#[path = "support/wait.rs"]
mod wait;
use wait::wait_until;

/// Polls until the instance is suspended.
async fn wait_suspended<W: Workflow>(run: &orch_runtime::Run<W>) {
    wait_until("the instance to suspend", || async {
        let status = run.status().await.expect("status");
        if status == Status::Suspended {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
}

/// Flipped to simulate deploying new code under an in-flight instance.
static DEPLOYED_V2: AtomicBool = AtomicBool::new(false);
static CHARGES: AtomicU32 = AtomicU32::new(0);

#[step]
async fn reserve_stock() -> Result<u32, StepError> {
    Ok(1)
}

#[step]
async fn charge_card() -> Result<u32, StepError> {
    CHARGES.fetch_add(1, Ordering::SeqCst);
    Ok(2)
}

#[step]
async fn ship_parcel() -> Result<u32, StepError> {
    Ok(3)
}

#[workflow]
async fn evolving() -> Result<u32, StepError> {
    let a = reserve_stock().await?;
    // Version 2 of this workflow ships before charging.
    let b = if DEPLOYED_V2.load(Ordering::SeqCst) {
        ship_parcel().await?
    } else {
        charge_card().await?
    };
    let go: bool = orch::signal("continue").await;
    Ok(a + b + u32::from(go))
}

#[tokio::test]
async fn changing_the_step_sequence_under_an_in_flight_instance_makes_it_incompatible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    let rt = Runtime::builder().sqlite(&db).build().await.expect("v1");
    let run = rt.start_with_id(Evolving, "e-1", ()).await.expect("start");
    wait_suspended(&run).await;
    rt.shutdown().await.expect("shutdown v1");

    // "Deploy" code that calls a different step at seq 2, then restart on the same file.
    DEPLOYED_V2.store(true, Ordering::SeqCst);
    let rt = Runtime::builder().sqlite(&db).build().await.expect("v2");
    let run = rt.handle(Evolving, "e-1").await.expect("handle");
    // Waiting for a signal, it is not loaded at the restart (restarts cost what is due): the
    // incompatibility is found when it wakes.
    assert_eq!(run.status().await.expect("status"), Status::Suspended);
    rt.signal("e-1", "continue", true).await.expect("signal");
    let err = run.result().await.expect_err("incompatible");
    let msg = err.to_string();
    assert!(msg.contains("at seq 2"), "{msg}");
    assert!(msg.contains("recorded step `charge_card`"), "{msg}");
    assert!(msg.contains("now calls step `ship_parcel`"), "{msg}");
    assert!(
        msg.contains(&format!("version {}", Evolving::VERSION)),
        "{msg}"
    );
    assert_eq!(run.status().await.expect("status"), Status::Incompatible);
    assert_eq!(CHARGES.load(Ordering::SeqCst), 1, "no step re-ran");
    // The journal is untouched.
    let journal = rt.journal("e-1").await.expect("journal");
    let names: Vec<_> = journal.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["reserve_stock", "charge_card"]);
    rt.shutdown().await.expect("shutdown v2");
}

#[step]
async fn only_step() -> Result<u32, StepError> {
    Ok(5)
}

#[workflow]
async fn short_flow() -> Result<u32, StepError> {
    only_step().await
}

fn entry(seq: u32, name: &str, outcome: &str) -> JournalEntry {
    JournalEntry {
        seq,
        kind: EntryKind::Step,
        name: name.into(),
        outcome: outcome.into(),
        attempts: 1,
        started_at: 0,
        finished_at: 0,
    }
}

/// Writes an instance of `short_flow` as an older version of the code left it.
async fn plant(db: &std::path::Path, id: &str, journal: Vec<JournalEntry>) {
    let store = SqliteStore::open(db, SqliteOptions::default()).expect("open");
    let rec = InstanceRecord::new(id, "short_flow", "00000000000000aa", "null", 0);
    store.create(rec, None, Vec::new()).await.expect("create");
    let ops = journal
        .into_iter()
        .map(|entry| WriteOp::Append {
            instance: id.into(),
            entry,
        })
        .collect();
    store.submit(None, ops).await.expect("journal");
    store.close().await.expect("close");
}

#[tokio::test]
async fn the_message_names_both_code_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    plant(
        &db,
        "old-1",
        vec![entry(1, "legacy_step", r#"{"value":{"Ok":1}}"#)],
    )
    .await;
    let rt = Runtime::builder()
        .sqlite(&db)
        .build()
        .await
        .expect("runtime");
    let rec = rt.wait("old-1").await.expect("wait");
    assert_eq!(rec.status, Status::Incompatible);
    let msg = rec.error.expect("message");
    assert!(msg.contains("at seq 1"), "{msg}");
    assert!(msg.contains("recorded step `legacy_step`"), "{msg}");
    assert!(msg.contains("now calls step `only_step`"), "{msg}");
    assert!(msg.contains("version 00000000000000aa"), "{msg}");
    assert!(msg.contains(ShortFlow::VERSION), "{msg}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_journal_longer_than_the_code_is_incompatible_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    plant(
        &db,
        "old-2",
        vec![
            entry(1, "only_step", r#"{"value":{"Ok":5}}"#),
            entry(2, "removed_step", r#"{"value":{"Ok":6}}"#),
        ],
    )
    .await;
    let rt = Runtime::builder()
        .sqlite(&db)
        .build()
        .await
        .expect("runtime");
    let rec = rt.wait("old-2").await.expect("wait");
    assert_eq!(rec.status, Status::Incompatible);
    let msg = rec.error.expect("message");
    assert!(msg.contains("removed_step"), "{msg}");
    assert!(msg.contains("journal records 2 operations"), "{msg}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_recorded_output_that_no_longer_fits_the_type_is_incompatible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    plant(
        &db,
        "old-3",
        vec![entry(1, "only_step", r#"{"value":{"Ok":"five"}}"#)],
    )
    .await;
    let rt = Runtime::builder()
        .sqlite(&db)
        .build()
        .await
        .expect("runtime");
    let rec = rt.wait("old-3").await.expect("wait");
    assert_eq!(rec.status, Status::Incompatible);
    let msg = rec.error.expect("message");
    assert!(msg.contains("does not deserialize"), "{msg}");
    rt.shutdown().await.expect("shutdown");
}

static PATCH_DEPLOYED: AtomicBool = AtomicBool::new(false);

#[step]
async fn pay() -> Result<u32, StepError> {
    Ok(2)
}

#[step]
async fn send() -> Result<u32, StepError> {
    Ok(3)
}

#[workflow]
async fn patchable() -> Result<Vec<u32>, StepError> {
    let a = reserve_stock().await?;
    let b = if PATCH_DEPLOYED.load(Ordering::SeqCst) && orch::patched("ship-first") {
        send().await?
    } else {
        pay().await?
    };
    let _: bool = orch::signal("continue").await;
    Ok(vec![a, b])
}

#[tokio::test]
async fn patched_keeps_old_instances_on_the_old_branch_and_new_ones_on_the_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    let rt = Runtime::builder().sqlite(&db).build().await.expect("v1");
    let old = rt.start_with_id(Patchable, "old", ()).await.expect("start");
    wait_suspended(&old).await;
    rt.shutdown().await.expect("shutdown v1");

    PATCH_DEPLOYED.store(true, Ordering::SeqCst);
    let rt = Runtime::builder().sqlite(&db).build().await.expect("v2");
    let new = rt.start_with_id(Patchable, "new", ()).await.expect("start");
    for id in ["old", "new"] {
        rt.signal(id, "continue", true).await.expect("signal");
    }
    let old = rt.handle(Patchable, "old").await.expect("handle");
    assert_eq!(old.result().await.expect("old result"), Ok(vec![1, 2]));
    assert_eq!(new.result().await.expect("new result"), Ok(vec![1, 3]));
    let kinds: Vec<_> = rt
        .journal("new")
        .await
        .expect("journal")
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EntryKind::Step,
            EntryKind::Patch,
            EntryKind::Step,
            EntryKind::Signal
        ]
    );
    rt.shutdown().await.expect("shutdown v2");
}
