//! Fencing: a write under an epoch that no longer holds is refused whole.

use super::{T0, append, create_owned, node, register, terms};
use crate::store::{Backend, Status, StoreError, WriteOp};
use std::sync::Arc;

/// After another node claimed the instance, the old owner's writes are refused with
/// `LeaseLost` and leave nothing behind — not even their ops on other instances.
pub async fn a_stale_epoch_is_refused_whole(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 1_000).await;
    register(&*store, &b, T0, 60_000).await;
    let old = create_owned(&*store, &a, "i", T0).await;
    store
        .submit(Some(old.clone()), vec![append("i", 1)])
        .await
        .expect("owner writes");
    let lease = store
        .claim(terms(&b, T0 + 5_000, 60_000), "i")
        .await
        .expect("claim")
        .expect("ended");
    let late = vec![
        append("i", 2),
        WriteOp::CustomStatus {
            instance: "i".into(),
            value: "1".into(),
            at: T0,
        },
    ];
    match store.submit(Some(old.clone()), late).await {
        Err(StoreError::LeaseLost {
            instance,
            current_epoch,
            ..
        }) => {
            assert_eq!((instance.as_str(), current_epoch), ("i", lease.epoch));
        }
        other => panic!("a write under a lost lease: expected LeaseLost, got {other:?}"),
    }
    // A lone checkpoint (the step's hot path) is refused the same way.
    match store.submit(Some(old), vec![append("i", 2)]).await {
        Err(StoreError::LeaseLost {
            current_owner,
            current_epoch,
            ..
        }) => {
            assert_eq!(
                (current_owner.as_deref(), current_epoch),
                (Some("node-b"), lease.epoch)
            );
        }
        other => panic!("a lone write under a lost lease: expected LeaseLost, got {other:?}"),
    }
    let loaded = store.load("i").await.expect("load").expect("exists");
    assert_eq!(loaded.journal.len(), 1, "a fenced-out write was applied");
    assert_eq!(
        loaded.record.custom_status, None,
        "a fenced-out write was applied"
    );
    store
        .submit(Some(lease.fence()), vec![append("i", 2)])
        .await
        .expect("the new owner writes");
}

/// An operator's termination (an unfenced end) fences out the node driving the instance.
pub async fn termination_fences_out_the_owner(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    let fence = create_owned(&*store, &a, "i", T0).await;
    let end = WriteOp::Finish {
        instance: "i".into(),
        status: Status::Terminated,
        output: None,
        error: Some("terminated by ops".into()),
        failed_step: None,
        at: T0 + 1,
    };
    store.submit(None, vec![end]).await.expect("terminate");
    let err = store
        .submit(Some(fence), vec![append("i", 1)])
        .await
        .expect_err("late write");
    assert!(
        matches!(err, StoreError::LeaseLost { .. }),
        "expected LeaseLost, got {err}"
    );
}

/// Suspending releases the instance; writes under the old lease are refused after that.
pub async fn suspending_releases(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 60_000).await;
    register(&*store, &b, T0, 60_000).await;
    let fence = create_owned(&*store, &a, "i", T0).await;
    let suspend = WriteOp::SetStatus {
        instance: "i".into(),
        status: Status::Suspended,
        wake_at: Some(T0 + 10),
        at: T0,
    };
    store
        .submit(Some(fence.clone()), vec![suspend])
        .await
        .expect("suspend");
    let claimed = store
        .claim_due(terms(&b, T0 + 10, 60_000), 10)
        .await
        .expect("claim_due");
    assert_eq!(
        claimed.leases.len(),
        1,
        "a suspended, due instance was not claimable"
    );
    let err = store
        .submit(Some(fence), vec![append("i", 1)])
        .await
        .expect_err("late write");
    assert!(
        matches!(err, StoreError::LeaseLost { .. }),
        "expected LeaseLost, got {err}"
    );
}
