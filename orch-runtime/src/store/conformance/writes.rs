//! What each write does: journal seqs written once, signals taken once, the end written once,
//! live-only signals and cancellations, idempotent creation, wakes keeping the earliest time.

use super::{T0, append, create_free, create_owned, node, record, register};
use crate::store::{Backend, Created, Status, StoreError, WriteOp};
use std::sync::Arc;

/// Appending an existing (instance, seq) is a conflict and changes nothing.
pub async fn duplicate_seq_is_a_conflict(store: Arc<dyn Backend>) {
    create_free(&*store, "a").await;
    store
        .submit(None, vec![append("a", 1)])
        .await
        .expect("first append");
    let mut other = append("a", 1);
    if let WriteOp::Append { entry, .. } = &mut other {
        entry.outcome = "\"other\"".into();
    }
    let err = store
        .submit(None, vec![other])
        .await
        .expect_err("a second append of seq 1");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err}"
    );
    let loaded = store.load("a").await.expect("load").expect("exists");
    assert_eq!(loaded.journal.len(), 1);
    assert_eq!(
        loaded.journal[0].outcome, "1",
        "the first entry was overwritten"
    );

    // The same under the owner's fence (a step's checkpoint: the hot path of every backend).
    let n = node("node-a");
    register(&*store, &n, T0, 60_000).await;
    let fence = create_owned(&*store, &n, "b", T0).await;
    store
        .submit(Some(fence.clone()), vec![append("b", 1)])
        .await
        .expect("first fenced append");
    let mut other = append("b", 1);
    if let WriteOp::Append { entry, .. } = &mut other {
        entry.outcome = "\"other\"".into();
    }
    let err = store
        .submit(Some(fence), vec![other])
        .await
        .expect_err("a second fenced append of seq 1");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err}"
    );
    let loaded = store.load("b").await.expect("load").expect("exists");
    assert_eq!(loaded.journal.len(), 1);
    assert_eq!(
        loaded.journal[0].outcome, "1",
        "the first entry was overwritten"
    );
}

/// A signal is consumed once; consuming it again is a conflict.
pub async fn signals_are_taken_once(store: Arc<dyn Backend>) {
    create_free(&*store, "a").await;
    let id = store
        .add_signal("a", "go", "1".into(), T0, Vec::new())
        .await
        .expect("signal");
    let loaded = store.load("a").await.expect("load").expect("exists");
    assert_eq!(loaded.signals.len(), 1, "the stored signal is pending");
    let consume = || WriteOp::ConsumeSignal {
        instance: "a".into(),
        signal: id,
        seq: 1,
    };
    store.submit(None, vec![consume()]).await.expect("consume");
    let err = store
        .submit(None, vec![consume()])
        .await
        .expect_err("consume twice");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err}"
    );
    let loaded = store.load("a").await.expect("load").expect("exists");
    assert!(
        loaded.signals.is_empty(),
        "a consumed signal is still pending"
    );
}

fn finish(status: Status, output: &str) -> WriteOp {
    WriteOp::Finish {
        instance: "a".into(),
        status,
        output: Some(output.into()),
        error: None,
        failed_step: None,
        at: T0 + 1,
    }
}

/// The first end stands; a later one changes nothing.
pub async fn finish_is_written_once(store: Arc<dyn Backend>) {
    create_free(&*store, "a").await;
    store
        .submit(None, vec![finish(Status::Completed, "1")])
        .await
        .expect("finish");
    store
        .submit(None, vec![finish(Status::Failed, "2")])
        .await
        .expect("second finish is a no-op");
    let rec = store.get("a").await.expect("get").expect("exists");
    assert_eq!(
        (rec.status, rec.output.as_deref()),
        (Status::Completed, Some("1"))
    );
}

/// Signals and cancel requests go to live instances only; nothing is stored otherwise.
pub async fn signals_and_cancels_refuse_finished_and_missing(store: Arc<dyn Backend>) {
    let err = store
        .add_signal("ghost", "go", "1".into(), T0, Vec::new())
        .await
        .expect_err("missing");
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "expected NotFound, got {err}"
    );
    create_free(&*store, "a").await;
    store
        .submit(None, vec![finish(Status::Completed, "1")])
        .await
        .expect("finish");
    let err = store
        .add_signal("a", "go", "1".into(), T0, Vec::new())
        .await
        .expect_err("finished");
    assert!(
        matches!(err, StoreError::Finished { .. }),
        "expected Finished, got {err}"
    );
    let cancel = WriteOp::RequestCancel {
        instance: "a".into(),
        at: T0,
    };
    let err = store
        .submit(None, vec![cancel])
        .await
        .expect_err("cancel a finished one");
    assert!(
        matches!(err, StoreError::Finished { .. }),
        "expected Finished, got {err}"
    );
    let loaded = store.load("a").await.expect("load").expect("exists");
    assert!(loaded.signals.is_empty() && loaded.record.cancel_requested.is_none());
}

/// Creating an existing id returns it unchanged.
pub async fn create_is_idempotent(store: Arc<dyn Backend>) {
    create_free(&*store, "a").await;
    let mut again = record("a");
    again.input = "42".into();
    match store
        .create(again, None, Vec::new())
        .await
        .expect("create again")
    {
        Created::Existing(rec) => assert_eq!(rec.input, "null", "the existing input changed"),
        Created::New(_) => panic!("a second create of one id stored a new instance"),
    }
}

/// A wake keeps the earliest time, and a wake while running survives the suspension.
pub async fn wake_keeps_the_earliest_time(store: Arc<dyn Backend>) {
    create_free(&*store, "a").await;
    let wake = |at| WriteOp::Wake {
        instance: "a".into(),
        at,
    };
    store
        .submit(None, vec![wake(T0 + 50), wake(T0 + 70)])
        .await
        .expect("wake while running");
    let suspend = WriteOp::SetStatus {
        instance: "a".into(),
        status: Status::Suspended,
        wake_at: Some(T0 + 999),
        at: T0 + 1,
    };
    store.submit(None, vec![suspend]).await.expect("suspend");
    let rec = store.get("a").await.expect("get").expect("exists");
    assert_eq!(rec.status, Status::Suspended);
    assert_eq!(
        rec.wake_at,
        Some(T0 + 50),
        "a wake that came while it ran was lost"
    );
    // A missing instance has nothing to wake: not an error.
    let ghost = WriteOp::Wake {
        instance: "ghost".into(),
        at: T0,
    };
    store
        .submit(None, vec![ghost])
        .await
        .expect("waking a missing instance");
}
