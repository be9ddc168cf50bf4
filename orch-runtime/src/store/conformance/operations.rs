//! Operators' bookkeeping: retry moves entries aside (kept, never deleted) and makes the
//! instance run again unowned; fork copies a journal prefix into a new instance.

use super::{T0, append, create_free, create_owned, node, record, register};
use crate::journal::{EntryKind, JournalEntry};
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

/// Retry from seq 3: an attribute the moved entries set goes back to the value the kept
/// entries set last (an attribute entry's name is the key, its outcome the value), and one
/// only the moved entries set is gone.
pub async fn retry_restores_attributes_of_kept_entries(store: Arc<dyn Backend>) {
    create_free(&*store, "i").await;
    let set = |seq: u32, key: &str, value: &str| {
        let entry = JournalEntry::new(seq, EntryKind::Attribute, key, value.to_string(), T0);
        [
            WriteOp::Append {
                instance: "i".into(),
                entry,
            },
            WriteOp::Attribute {
                instance: "i".into(),
                key: key.to_string(),
                value: value.to_string(),
            },
        ]
    };
    let mut ops: Vec<WriteOp> = Vec::new();
    ops.extend(set(1, "stage", "\"packed\""));
    ops.extend(set(2, "items", "3"));
    ops.extend(set(3, "stage", "\"shipped\""));
    ops.extend(set(4, "carrier", "\"dhl\""));
    ops.push(WriteOp::Finish {
        instance: "i".into(),
        status: Status::Failed,
        output: None,
        error: Some("boom".into()),
        failed_step: None,
        at: T0 + 1,
    });
    store.submit(None, ops).await.expect("run and fail");
    let retry = WriteOp::Retry {
        instance: "i".into(),
        from_seq: 3,
        at: T0 + 2,
    };
    store.submit(None, vec![retry]).await.expect("retry");
    let d = store.details("i").await.expect("details").expect("exists");
    let attributes: Vec<(&str, &str)> = d
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        attributes,
        [("items", "3"), ("stage", "\"packed\"")],
        "after a retry from seq 3, the attributes the kept entries set"
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
