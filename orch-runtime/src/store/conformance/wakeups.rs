//! Wake-ups: every write a node may act on is announced to subscribers after it committed.

use super::{T0, create_free, create_owned, node, register};
use crate::store::{Backend, Status, Wakeup, Wakeups, WriteOp};
use std::sync::Arc;
use std::time::Duration;

/// The next wake-up that `want` accepts, within a generous deadline.
async fn expect(rx: &mut Wakeups, what: &str, want: impl Fn(&Wakeup) -> bool) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(w) = rx.recv().await {
            if want(&w) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "no wake-up for {what}");
}

/// Signals, cancel requests, ends (with the parent's), retries and releases wake.
pub async fn writes_announce_themselves(store: Arc<dyn Backend>) {
    let mut rx = store.wakeups();
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    create_free(&*store, "p").await;
    let mut child = super::record("p/1");
    child.parent = Some("p".into());
    store
        .create(child, None, Vec::new())
        .await
        .expect("create child");

    store
        .add_signal("p", "go", "1".into(), T0, Vec::new())
        .await
        .expect("signal");
    expect(&mut rx, "a signal", |w| matches!(w, Wakeup::Signal { instance, signal } if instance == "p" && signal.name == "go")).await;

    let cancel = WriteOp::RequestCancel {
        instance: "p".into(),
        at: T0,
    };
    store.submit(None, vec![cancel]).await.expect("cancel");
    expect(
        &mut rx,
        "a cancel request",
        |w| matches!(w, Wakeup::Cancel { instance, .. } if instance == "p"),
    )
    .await;

    let end = WriteOp::Finish {
        instance: "p/1".into(),
        status: Status::Failed,
        output: None,
        error: Some("boom".into()),
        failed_step: None,
        at: T0,
    };
    store.submit(None, vec![end]).await.expect("finish");
    expect(
        &mut rx,
        "an end",
        |w| matches!(w, Wakeup::Finished { instance, status: Status::Failed } if instance == "p/1"),
    )
    .await;
    expect(
        &mut rx,
        "a child's end",
        |w| matches!(w, Wakeup::ChildFinished { parent, child } if parent == "p" && child == "p/1"),
    )
    .await;

    let retry = WriteOp::Retry {
        instance: "p/1".into(),
        from_seq: 1,
        at: T0,
    };
    store.submit(None, vec![retry]).await.expect("retry");
    expect(
        &mut rx,
        "a retry",
        |w| matches!(w, Wakeup::Due { instance } if instance == "p/1"),
    )
    .await;

    create_owned(&*store, &a, "owned", T0).await;
    store
        .release(&a, Some(vec!["owned".into()]))
        .await
        .expect("release");
    expect(
        &mut rx,
        "a release",
        |w| matches!(w, Wakeup::Due { instance } if instance == "owned"),
    )
    .await;
}
