//! All or nothing: a submission, or a creation with its extra writes, applies whole or not at
//! all.

use super::{T0, append, create_free, create_owned, node, record, register, terms};
use crate::store::{Backend, StoreError, WriteOp};
use std::sync::Arc;

/// A batch whose last op conflicts leaves no trace of its first ops.
pub async fn a_refused_batch_applies_nothing(store: Arc<dyn Backend>) {
    create_free(&*store, "a").await;
    store
        .submit(None, vec![append("a", 1)])
        .await
        .expect("append 1");
    let batch = vec![
        append("a", 2),
        WriteOp::CustomStatus {
            instance: "a".into(),
            value: "\"x\"".into(),
            at: T0 + 1,
        },
        append("a", 1),
    ];
    store.submit(None, batch).await.expect_err("seq 1 twice");
    let loaded = store.load("a").await.expect("load").expect("exists");
    assert_eq!(
        loaded.journal.len(),
        1,
        "part of a refused batch was applied"
    );
    assert_eq!(
        loaded.record.custom_status, None,
        "part of a refused batch was applied"
    );
    // A later batch still applies.
    store
        .submit(None, vec![append("a", 2)])
        .await
        .expect("append 2");
}

/// A creation whose extra writes are refused stores no instance.
pub async fn a_refused_create_stores_nothing(store: Arc<dyn Backend>) {
    let bad = vec![WriteOp::ConsumeSignal {
        instance: "a".into(),
        signal: 999,
        seq: 1,
    }];
    store
        .create(record("a"), None, bad)
        .await
        .expect_err("extra write refers to no signal");
    assert!(
        store.get("a").await.expect("get").is_none(),
        "the refused instance was stored"
    );
}

/// Many instances' checkpoints submitted at once (a backend may write them together): each is
/// judged on its own — the good ones are written, a duplicate seq is a conflict, a stale fence
/// is refused — and a refusal costs the others nothing.
pub async fn concurrent_checkpoints_are_judged_one_by_one(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 1_000).await;
    register(&*store, &b, T0, 60_000).await;
    let mut fences = Vec::new();
    for k in 0..20 {
        let fence = create_owned(&*store, &a, &format!("i{k}"), T0).await;
        if k == 0 {
            store
                .submit(Some(fence.clone()), vec![append("i0", 1)])
                .await
                .expect("first append of i0");
        }
        fences.push(fence);
    }
    // i19 is taken over by b: a's fence on it is stale.
    store
        .claim(terms(&b, T0 + 5_000, 60_000), "i19")
        .await
        .expect("claim")
        .expect("a's lease ended");
    let commits: Vec<_> = fences
        .iter()
        .enumerate()
        .map(|(k, f)| store.submit(Some(f.clone()), vec![append(&format!("i{k}"), 1)]))
        .collect();
    let results = futures_util::future::join_all(commits).await;
    for (k, r) in results.iter().enumerate() {
        match k {
            0 => assert!(
                matches!(r, Err(StoreError::Conflict { .. })),
                "i0 seq 1 twice: expected Conflict, got {r:?}"
            ),
            19 => assert!(
                matches!(r, Err(StoreError::LeaseLost { .. })),
                "i19 under a stale fence: expected LeaseLost, got {r:?}"
            ),
            _ => assert!(r.is_ok(), "i{k}: expected written, got {r:?}"),
        }
    }
    for k in 0..20 {
        let loaded = store
            .load(&format!("i{k}"))
            .await
            .expect("load")
            .expect("exists");
        let want = if k == 19 { 0 } else { 1 };
        assert_eq!(loaded.journal.len(), want, "journal of i{k}");
    }
}
