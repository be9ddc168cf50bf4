//! Ownership: creation, claims of due instances, lease expiry, renewal, release, bounds.

use super::{T0, create_free, create_owned, node, register, terms};
use crate::store::{Backend, Status, WriteOp};
use std::sync::Arc;

/// The creator owns a new instance at epoch 1; claiming it again returns the same lease.
pub async fn created_instances_are_owned_by_their_creator(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 10_000).await;
    let fence = create_owned(&*store, &a, "i", T0).await;
    assert_eq!(fence.epoch, 1);
    let again = store
        .claim(terms(&a, T0, 10_000), "i")
        .await
        .expect("claim")
        .expect("own");
    assert_eq!(
        again.epoch, 1,
        "claiming an instance it owns bumped the epoch"
    );
}

/// Another node's live lease is not claimed, due or not.
pub async fn live_leases_are_not_claimed(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 10_000).await;
    register(&*store, &b, T0, 10_000).await;
    create_owned(&*store, &a, "i", T0).await;
    let claimed = store
        .claim_due(terms(&b, T0 + 5_000, 10_000), 10)
        .await
        .expect("claim_due");
    assert!(
        claimed.leases.is_empty(),
        "claimed a live lease: {:?}",
        claimed.leases
    );
    let one = store
        .claim(terms(&b, T0 + 5_000, 10_000), "i")
        .await
        .expect("claim");
    assert!(one.is_none(), "claimed a live lease: {one:?}");
}

/// Once the owner's lease has ended, another node claims its running instances at a bumped
/// epoch.
pub async fn ended_leases_are_claimed_with_a_new_epoch(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 1_000).await;
    register(&*store, &b, T0, 60_000).await;
    create_owned(&*store, &a, "i", T0).await;
    let claimed = store
        .claim_due(terms(&b, T0 + 1_001, 60_000), 10)
        .await
        .expect("claim_due");
    assert_eq!(claimed.leases.len(), 1, "the ended lease was not claimed");
    let lease = &claimed.leases[0];
    assert_eq!(
        (lease.instance.as_str(), &lease.node, lease.epoch),
        ("i", &b, 2)
    );
    // Nobody else gets it now.
    let again = store
        .claim_due(terms(&a, T0 + 1_002, 1_000), 10)
        .await
        .expect("claim_due");
    assert!(again.leases.is_empty(), "{:?}", again.leases);
}

/// Renewal keeps the leases a node holds and names those it lost.
pub async fn renew_reports_lost_instances(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 1_000).await;
    register(&*store, &b, T0, 60_000).await;
    create_owned(&*store, &a, "kept", T0).await;
    create_owned(&*store, &a, "taken", T0).await;
    store
        .claim(terms(&b, T0 + 2_000, 60_000), "taken")
        .await
        .expect("claim")
        .expect("ended");
    let held = vec![("kept".to_string(), 1), ("taken".to_string(), 1)];
    let lost = store
        .renew(terms(&a, T0 + 2_001, 1_000), held)
        .await
        .expect("renew")
        .lost;
    assert_eq!(lost, vec!["taken".to_string()]);
    // Renewed: `kept` is live again for a.
    let claimed = store
        .claim_due(terms(&b, T0 + 2_500, 60_000), 10)
        .await
        .expect("claim_due");
    assert!(
        claimed.leases.is_empty(),
        "claimed a renewed lease: {:?}",
        claimed.leases
    );
}

/// Released instances are claimed by another node at once; a full release ends the node's
/// lease.
pub async fn release_lets_others_claim_at_once(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 60_000).await;
    register(&*store, &b, T0, 60_000).await;
    create_owned(&*store, &a, "one", T0).await;
    create_owned(&*store, &a, "two", T0).await;
    store
        .release(&a, Some(vec!["one".into()]))
        .await
        .expect("release one");
    let claimed = store
        .claim_due(terms(&b, T0 + 1, 60_000), 10)
        .await
        .expect("claim_due");
    let ids: Vec<_> = claimed.leases.iter().map(|l| l.instance.as_str()).collect();
    assert_eq!(ids, ["one"]);
    store.release(&a, None).await.expect("release all");
    let claimed = store
        .claim_due(terms(&b, T0 + 2, 60_000), 10)
        .await
        .expect("claim_due");
    let ids: Vec<_> = claimed.leases.iter().map(|l| l.instance.as_str()).collect();
    assert_eq!(ids, ["two"]);
}

/// The heartbeat tells a node when to look for work nobody will announce: the earliest
/// suspended timer, or the lease end of another node that owns unfinished instances — not
/// its own, and not that of a node owning nothing.
pub async fn renew_says_when_work_falls_due(store: Arc<dyn Backend>) {
    let (a, b, idle) = (node("node-a"), node("node-b"), node("node-idle"));
    register(&*store, &a, T0, 60_000).await;
    register(&*store, &idle, T0, 5_000).await;
    let next = |r: crate::store::Renewal| r.next_due;
    let renew = |n: &crate::store::NodeId, now| store.renew(terms(n, now, 60_000), Vec::new());
    assert_eq!(
        next(renew(&a, T0 + 1).await.expect("renew")),
        None,
        "nothing pending"
    );
    create_owned(&*store, &a, "mine", T0).await;
    assert_eq!(
        next(renew(&a, T0 + 2).await.expect("renew")),
        None,
        "a node's own instances are not work for it to look for"
    );
    register(&*store, &b, T0, 20_000).await;
    create_owned(&*store, &b, "theirs", T0).await;
    assert_eq!(
        next(renew(&a, T0 + 3).await.expect("renew")),
        Some(T0 + 20_000),
        "another node's lease end, when it owns unfinished instances"
    );
    create_free(&*store, "sleeper").await;
    let suspend = WriteOp::SetStatus {
        instance: "sleeper".into(),
        status: Status::Suspended,
        wake_at: Some(T0 + 9_000),
        at: T0,
    };
    store.submit(None, vec![suspend]).await.expect("suspend");
    assert_eq!(
        next(renew(&a, T0 + 4).await.expect("renew")),
        Some(T0 + 9_000),
        "the earliest suspended timer"
    );
    // b's lease ended long ago and nobody claimed its instance: due now (in the past).
    let late = next(renew(&a, T0 + 50_000).await.expect("renew"));
    assert!(
        late.is_some_and(|t| t <= T0 + 50_000),
        "work claimable now must be due now, got {late:?}"
    );
}

/// A suspended instance is claimed once its wake time has come, not before; `next_wake`
/// says when.
pub async fn suspended_instances_are_claimed_when_due(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    create_free(&*store, "sleeper").await;
    let suspend = WriteOp::SetStatus {
        instance: "sleeper".into(),
        status: Status::Suspended,
        wake_at: Some(T0 + 30_000),
        at: T0,
    };
    store.submit(None, vec![suspend]).await.expect("suspend");
    let early = store
        .claim_due(terms(&a, T0 + 1, 60_000), 10)
        .await
        .expect("claim_due");
    assert!(
        early.leases.is_empty(),
        "claimed before its time: {:?}",
        early.leases
    );
    assert_eq!(early.next_wake, Some(T0 + 30_000));
    let due = store
        .claim_due(terms(&a, T0 + 30_000, 60_000), 10)
        .await
        .expect("claim_due");
    assert_eq!(due.leases.len(), 1);
    let rec = store.get("sleeper").await.expect("get").expect("exists");
    assert_eq!(
        (rec.status, rec.wake_at),
        (Status::Running, None),
        "a claim marks it running"
    );
}

/// A claim takes at most `limit` instances.
pub async fn claims_are_bounded(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    for i in 0..5 {
        create_free(&*store, &format!("i{i}")).await;
    }
    let first = store
        .claim_due(terms(&a, T0, 60_000), 3)
        .await
        .expect("claim_due");
    assert_eq!(first.leases.len(), 3);
    let rest = store
        .claim_due(terms(&a, T0, 60_000), 3)
        .await
        .expect("claim_due");
    assert_eq!(
        rest.leases.len(),
        2,
        "instances it owns were claimed again, or some were lost"
    );
}

/// A single claim takes a due instance, not one that waits; an instance the node owns comes
/// back with its lease unchanged.
pub async fn single_claims_take_only_due_instances(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    create_free(&*store, "waits").await;
    let suspend = WriteOp::SetStatus {
        instance: "waits".into(),
        status: Status::Suspended,
        wake_at: None,
        at: T0,
    };
    store.submit(None, vec![suspend]).await.expect("suspend");
    let early = store
        .claim(terms(&a, T0 + 1, 60_000), "waits")
        .await
        .expect("claim");
    assert!(early.is_none(), "claimed an instance that waits: {early:?}");
    store
        .add_signal("waits", "go", "1".into(), T0 + 2, Vec::new())
        .await
        .expect("signal");
    let woken = store
        .claim(terms(&a, T0 + 3, 60_000), "waits")
        .await
        .expect("claim");
    let lease = woken.expect("a signal makes it due");
    let again = store
        .claim(terms(&a, T0 + 4, 60_000), "waits")
        .await
        .expect("claim");
    assert_eq!(again.map(|l| l.epoch), Some(lease.epoch));
}

/// Many instances created at once (a backend may write them together): each new one owned
/// by its creator at epoch 1 until the creator's lease end, an existing id answered with the
/// stored instance and left as it was.
pub async fn concurrent_creations_are_each_owned(store: Arc<dyn Backend>) {
    let a = node("node-a");
    register(&*store, &a, T0, 60_000).await;
    create_free(&*store, "taken").await;
    let ids: Vec<String> = (0..15)
        .map(|k| format!("n{k}"))
        .chain(["taken".to_string()])
        .collect();
    let creates: Vec<_> = ids
        .iter()
        .map(|id| store.create(super::record(id), Some(terms(&a, T0, 60_000)), Vec::new()))
        .collect();
    let results = futures_util::future::join_all(creates).await;
    for (id, r) in ids.iter().zip(results) {
        match (id.as_str(), r) {
            ("taken", Ok(crate::store::Created::Existing(rec))) => {
                assert_eq!(rec.id, "taken");
            }
            (_, Ok(crate::store::Created::New(Some(lease)))) => {
                assert_eq!(
                    (lease.instance.as_str(), lease.node.as_str(), lease.epoch),
                    (id.as_str(), "node-a", 1),
                    "the lease of {id}"
                );
                assert_eq!(lease.expires_at, T0 + 60_000, "the lease end of {id}");
            }
            (_, other) => panic!("creating {id}: unexpected {other:?}"),
        }
    }
    // Owned by a live node: nobody else claims them; the existing one kept no owner.
    let b = node("node-b");
    register(&*store, &b, T0 + 1, 60_000).await;
    let claimed = store
        .claim_due(terms(&b, T0 + 1, 60_000), 100)
        .await
        .expect("claim_due");
    let names: Vec<&str> = claimed.leases.iter().map(|l| l.instance.as_str()).collect();
    assert_eq!(
        names,
        vec!["taken"],
        "only the unowned instance is claimable"
    );
}

/// A heartbeat forgets nodes whose lease ended over `NODE_RETENTION_MS` ago and that own
/// nothing; a node that still owns an instance, or ended recently, stays listed.
pub async fn long_gone_nodes_are_forgotten(store: Arc<dyn Backend>) {
    use crate::store::NODE_RETENTION_MS;
    let (gone, owning, recent, a) = (
        node("node-gone"),
        node("node-owning"),
        node("node-recent"),
        node("node-a"),
    );
    register(&*store, &gone, T0, 1_000).await;
    register(&*store, &owning, T0, 1_000).await;
    create_owned(&*store, &owning, "held", T0).await;
    let later = T0 + NODE_RETENTION_MS + 10_000;
    register(&*store, &recent, later - 5_000, 1_000).await;
    register(&*store, &a, later, 60_000).await;
    let mut listed: Vec<String> = store
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec!["node-a", "node-owning", "node-recent"],
        "only the node gone for over a day and owning nothing is forgotten"
    );
}
