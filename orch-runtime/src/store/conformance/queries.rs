//! Operators' reads: search order and paging, statistics, the nodes and who owns what.

use super::{T0, create_free, create_owned, node, record, register, terms};
use crate::store::{Backend, Cursor, Query, StatsQuery, Status, WriteOp};
use std::sync::Arc;

async fn create_at(store: &dyn Backend, id: &str, at: i64) {
    let mut rec = record(id);
    rec.created_at = at;
    rec.updated_at = at;
    store.create(rec, None, Vec::new()).await.expect("create");
}

/// Newest first; a cursor page continues exactly after the previous one.
pub async fn search_pages_newest_first(store: Arc<dyn Backend>) {
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        create_at(&*store, id, T0 + i as i64).await;
    }
    let page = |after: Option<Cursor>| Query {
        limit: 2,
        after,
        ..Default::default()
    };
    let first = store.search(page(None)).await.expect("search");
    let ids: Vec<_> = first.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["d", "c"]);
    let last = first.last().expect("two results");
    let cursor = Cursor {
        created_at: last.created_at,
        id: last.id.clone(),
    };
    let second = store.search(page(Some(cursor))).await.expect("search");
    let ids: Vec<_> = second.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["b", "a"]);
}

/// Counts by status agree with the window's totals.
pub async fn stats_and_counts_agree(store: Arc<dyn Backend>) {
    for id in ["a", "b", "c"] {
        create_at(&*store, id, T0).await;
    }
    let end = WriteOp::Finish {
        instance: "a".into(),
        status: Status::Completed,
        output: Some("1".into()),
        error: None,
        failed_step: None,
        at: T0,
    };
    store.submit(None, vec![end]).await.expect("finish");
    let counts = store.counts().await.expect("counts");
    let n = |st| {
        counts
            .iter()
            .filter(|c| c.status == st)
            .map(|c| c.count)
            .sum::<u64>()
    };
    assert_eq!(
        (n(Status::Completed), n(Status::Running)),
        (1, 2),
        "{counts:?}"
    );
    let q = StatsQuery {
        from: T0 - 1,
        to: T0 + 1,
        bucket_ms: 1_000,
        workflow: None,
    };
    let stats = store.stats(q).await.expect("stats");
    let mut totals: Vec<_> = stats.totals.iter().map(|c| (c.status, c.count)).collect();
    totals.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(totals, [(Status::Completed, 1), (Status::Running, 2)]);
}

/// Every node that renewed is listed with its heartbeat and what it owns.
pub async fn nodes_list_heartbeats_and_owned_instances(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 10_000).await;
    register(&*store, &b, T0 + 5, 10_000).await;
    create_owned(&*store, &a, "i", T0).await;
    let nodes = store.nodes().await.expect("nodes");
    let shown: Vec<_> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.heartbeat_at, n.owned))
        .collect();
    assert_eq!(shown, [("node-a", T0, 1), ("node-b", T0 + 5, 0)]);
    assert_eq!(nodes[0].lease_expires, T0 + 10_000);
}

/// Each owned instance is listed with its owner, epoch and the owner's lease end, in the order
/// asked; unowned and missing ones are left out. A claim shows the new owner and epoch, a lease
/// that ended still shows its owner until then, and suspending (a release) removes it.
pub async fn leases_name_each_instance_s_owner(store: Arc<dyn Backend>) {
    let (a, b) = (node("node-a"), node("node-b"));
    register(&*store, &a, T0, 1_000).await;
    register(&*store, &b, T0, 60_000).await;
    create_owned(&*store, &a, "i", T0).await;
    let k = create_owned(&*store, &b, "k", T0).await;
    create_free(&*store, "j").await;
    let ids = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let shown = |leases: Vec<crate::store::Lease>| {
        leases
            .into_iter()
            .map(|l| {
                (
                    l.instance,
                    l.node.as_str().to_string(),
                    l.epoch,
                    l.expires_at,
                )
            })
            .collect::<Vec<_>>()
    };
    let leases = store
        .leases(ids(&["k", "j", "missing", "i"]))
        .await
        .expect("leases");
    assert_eq!(
        shown(leases),
        [
            ("k".to_string(), "node-b".to_string(), 1, T0 + 60_000),
            ("i".to_string(), "node-a".to_string(), 1, T0 + 1_000),
        ],
        "owned instances in the order asked, unowned and missing ones left out"
    );
    // node-a's lease ended: `i` is still listed as its until someone claims it.
    let leases = store.leases(ids(&["i"])).await.expect("leases");
    assert_eq!(
        leases.len(),
        1,
        "an ended lease is listed until claimed: {leases:?}"
    );
    store
        .claim(terms(&b, T0 + 5_000, 60_000), "i")
        .await
        .expect("claim")
        .expect("node-a's lease ended");
    let leases = store.leases(ids(&["i"])).await.expect("leases");
    assert_eq!(
        shown(leases),
        [("i".to_string(), "node-b".to_string(), 2, T0 + 60_000)],
        "a claim shows the new owner and epoch"
    );
    let suspend = WriteOp::SetStatus {
        instance: "k".into(),
        status: Status::Suspended,
        wake_at: None,
        at: T0,
    };
    store.submit(Some(k), vec![suspend]).await.expect("suspend");
    let leases = store.leases(ids(&["k"])).await.expect("leases");
    assert!(
        leases.is_empty(),
        "a suspended instance has no owner: {leases:?}"
    );
}

/// Unfinished (running or suspended) instances page by id, after a cursor, by workflow;
/// finished ones are left out.
pub async fn unfinished_ids_page_in_id_order(store: Arc<dyn Backend>) {
    for id in ["b", "a", "d", "c"] {
        create_at(&*store, id, T0).await;
    }
    let mut other = record("e");
    other.workflow = "other".into();
    store.create(other, None, Vec::new()).await.expect("create");
    let ops = vec![
        WriteOp::Finish {
            instance: "c".into(),
            status: Status::Completed,
            output: Some("1".into()),
            error: None,
            failed_step: None,
            at: T0,
        },
        WriteOp::SetStatus {
            instance: "d".into(),
            status: Status::Suspended,
            wake_at: None,
            at: T0,
        },
    ];
    store.submit(None, ops).await.expect("finish c, suspend d");
    let page = |workflow: Option<&str>, after: Option<&str>, limit: usize| {
        store.unfinished(workflow.map(String::from), after.map(String::from), limit)
    };
    assert_eq!(
        page(None, None, 0).await.expect("all"),
        ["a", "b", "d", "e"]
    );
    assert_eq!(page(None, None, 2).await.expect("first page"), ["a", "b"]);
    assert_eq!(
        page(None, Some("b"), 2).await.expect("second page"),
        ["d", "e"]
    );
    assert!(
        page(None, Some("e"), 2)
            .await
            .expect("past the end")
            .is_empty()
    );
    assert_eq!(
        page(Some("other"), None, 0).await.expect("by workflow"),
        ["e"]
    );
    assert_eq!(
        page(Some("wf"), Some("a"), 0)
            .await
            .expect("by workflow, after"),
        ["b", "d"]
    );
}
