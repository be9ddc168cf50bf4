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

/// Many instances ended at once (a backend may write them together) each end, each with its
/// own status, each announced once with its parent's wake-up; an end under a fence another
/// end already cleared is refused.
pub async fn concurrent_ends_are_each_applied_and_announced(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    create_free(&*store, "parent").await;
    let mut fences = Vec::new();
    for k in 0..12 {
        let mut rec = super::record(&format!("c{k}"));
        if k == 3 {
            rec.parent = Some("parent".into());
        }
        let lease = match store
            .create(rec, Some(super::terms(&a, T0, 60_000)), Vec::new())
            .await
            .expect("create")
        {
            crate::store::Created::New(Some(lease)) => lease,
            other => panic!("expected a new owned instance, got {other:?}"),
        };
        fences.push(lease.fence());
    }
    // c11 is terminated by an operator first: its owner's end comes too late.
    let end = |k: usize, status: Status| WriteOp::Finish {
        instance: format!("c{k}"),
        status,
        output: (status == Status::Completed).then(|| k.to_string()),
        error: (status != Status::Completed).then(|| format!("e{k}")),
        failed_step: None,
        at: T0 + 1,
    };
    store
        .submit(None, vec![end(11, Status::Terminated)])
        .await
        .expect("terminate c11");
    let mut rx = store.wakeups();
    let status_of = |k: usize| {
        if k.is_multiple_of(2) {
            Status::Completed
        } else {
            Status::Failed
        }
    };
    let commits: Vec<_> = fences
        .iter()
        .enumerate()
        .map(|(k, f)| store.submit(Some(f.clone()), vec![end(k, status_of(k))]))
        .collect();
    let results = futures_util::future::join_all(commits).await;
    for (k, r) in results.iter().enumerate() {
        if k == 11 {
            assert!(
                matches!(r, Err(crate::store::StoreError::LeaseLost { .. })),
                "c11's end after its termination: expected LeaseLost, got {r:?}"
            );
        } else {
            assert!(r.is_ok(), "c{k}: expected ended, got {r:?}");
        }
    }
    for k in 0..11 {
        let rec = store
            .get(&format!("c{k}"))
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(rec.status, status_of(k), "status of c{k}");
        let want = status_of(k) == Status::Completed;
        assert_eq!(rec.output.is_some(), want, "output of c{k}");
        assert_eq!(rec.error.is_some(), !want, "error of c{k}");
    }
    // Wake-ups between instances come in no promised order: gather them.
    let mut want: std::collections::HashSet<String> = (0..11)
        .map(|k| format!("end c{k} {}", status_of(k).as_str()))
        .collect();
    want.insert("child c3 of parent".into());
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        while !want.is_empty() {
            match rx.recv().await {
                Some(Wakeup::Finished { instance, status }) => {
                    want.remove(&format!("end {instance} {}", status.as_str()));
                }
                Some(Wakeup::ChildFinished { parent, child }) => {
                    want.remove(&format!("child {child} of {parent}"));
                }
                Some(_) => {}
                None => break,
            }
        }
        want
    })
    .await;
    match heard {
        Ok(missing) => assert!(missing.is_empty(), "wake-ups never sent: {missing:?}"),
        Err(_) => panic!("wake-ups missing after 10 s"),
    }
}
