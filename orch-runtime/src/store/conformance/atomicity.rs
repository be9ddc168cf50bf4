//! All or nothing: a submission, or a creation with its extra writes, applies whole or not at
//! all.

use super::{T0, append, create_free, record};
use crate::store::{Backend, WriteOp};
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
