//! Operators' bookkeeping: retry moves entries aside (kept, never deleted) and makes the
//! instance run again unowned; fork copies a journal prefix into a new instance.

use super::{T0, append, create_free, create_owned, node, record, register};
use crate::store::{Backend, Status, StoreError, WriteOp};
use std::sync::Arc;

/// Retry from seq 2: entries from 2 on are superseded, signals they consumed pending again,
/// the instance running without owner, at a new epoch.
pub async fn retry_moves_the_journal_aside(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    let fence = create_owned(&*store, &a, "i", T0).await;
    let sig = store
        .add_signal("i", "go", "1".into(), T0, Vec::new())
        .await
        .expect("signal");
    let ops = vec![
        append("i", 1),
        append("i", 2),
        WriteOp::ConsumeSignal {
            instance: "i".into(),
            signal: sig,
            seq: 2,
        },
        WriteOp::Finish {
            instance: "i".into(),
            status: Status::Failed,
            output: None,
            error: Some("boom".into()),
            failed_step: Some(("step2".into(), 2)),
            at: T0 + 1,
        },
    ];
    store
        .submit(Some(fence.clone()), ops)
        .await
        .expect("run and fail");
    let running = WriteOp::Retry {
        instance: "i".into(),
        from_seq: 2,
        at: T0 + 2,
    };
    store
        .submit(None, vec![running.clone()])
        .await
        .expect("retry");
    let err = store
        .submit(None, vec![running])
        .await
        .expect_err("retry a running instance");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err}"
    );
    let d = store.details("i").await.expect("details").expect("exists");
    assert_eq!(d.record.status, Status::Running);
    assert_eq!((d.record.retries, d.record.failed_seq), (1, None));
    assert_eq!(d.journal.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    assert_eq!(
        d.superseded
            .iter()
            .map(|s| (s.retry, s.entry.seq))
            .collect::<Vec<_>>(),
        [(1, 2)]
    );
    assert_eq!(
        d.signals.len(),
        1,
        "the signal consumed by a superseded entry is not pending"
    );
    let err = store
        .submit(Some(fence), vec![append("i", 2)])
        .await
        .expect_err("old owner");
    assert!(
        matches!(err, StoreError::LeaseLost { .. }),
        "expected LeaseLost, got {err}"
    );
}

/// A fork is a new, unowned instance with the given journal; an existing id is a conflict.
pub async fn fork_copies_the_journal(store: Arc<dyn Backend>) {
    create_free(&*store, "src").await;
    let fork = |id: &str| WriteOp::Fork {
        record: Box::new(record(id)),
        journal: vec![super::entry(1), super::entry(2)],
        attempts: Vec::new(),
        ended_timers: vec![2],
    };
    store.submit(None, vec![fork("copy")]).await.expect("fork");
    let loaded = store.load("copy").await.expect("load").expect("exists");
    assert_eq!(loaded.journal.len(), 2);
    assert_eq!(loaded.ended_timers, [2]);
    let err = store
        .submit(None, vec![fork("src")])
        .await
        .expect_err("fork onto an existing id");
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "expected Conflict, got {err}"
    );
}
