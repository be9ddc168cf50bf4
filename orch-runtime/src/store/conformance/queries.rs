//! Operators' reads: search order and paging, statistics, the nodes.

use super::{T0, create_owned, node, record, register};
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
