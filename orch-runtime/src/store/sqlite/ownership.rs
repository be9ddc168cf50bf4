//! Leases in SQLite: claiming, renewing and releasing instances (see [`Store`](crate::Store)).
//!
//! An instance row carries `owner` and `epoch`; the `nodes` table carries each node's lease
//! end (`lease_expires`), renewed by its heartbeat. Everything here runs on the writer thread,
//! inside its transaction.

use super::backend;
use super::read::parse_status;
use crate::store::{
    Claimed, Fence, Lease, LeaseTerms, Millis, NodeId, NodeRecord, Renewal, Status, StoreError,
    Wakeup,
};
use rusqlite::{Connection, OptionalExtension, params};

/// The owner condition of a claimable row `i` (parameters: ?1 the claiming node, ?2 now): no
/// owner, or another node whose lease has ended (a node without a row has none).
const CLAIMABLE: &str = "(i.owner IS NULL OR (i.owner <> ?1 AND NOT EXISTS (SELECT 1 FROM nodes n \
     WHERE n.id = i.owner AND n.lease_expires > ?2)))";

/// When `node`'s leases end (0 when it never renewed).
pub(super) fn node_expiry(conn: &Connection, node: &NodeId) -> Result<Millis, StoreError> {
    conn.prepare_cached("SELECT lease_expires FROM nodes WHERE id = ?1")
        .and_then(|mut s| s.query_row([node.as_str()], |r| r.get(0)).optional())
        .map(Option::unwrap_or_default)
        .map_err(|e| backend(&format!("reading the lease of node `{node}`"), e))
}

/// Gives `id` to `terms.node` at the next epoch: running, no wake time.
fn take(
    conn: &Connection,
    terms: &LeaseTerms,
    id: &str,
    expires_at: Millis,
) -> Result<Option<Lease>, StoreError> {
    let epoch: Option<i64> = conn
        .prepare_cached(
            "UPDATE instances SET owner = ?2, epoch = epoch + 1, status = 'running', \
             wake_at = NULL WHERE id = ?1 RETURNING epoch",
        )
        .and_then(|mut s| {
            s.query_row(params![id, terms.node.as_str()], |r| r.get(0))
                .optional()
        })
        .map_err(|e| backend(&format!("claiming instance `{id}`"), e))?;
    Ok(epoch.map(|epoch| Lease {
        instance: id.to_string(),
        node: terms.node.clone(),
        epoch: u64::try_from(epoch).unwrap_or(0),
        expires_at,
    }))
}

pub(super) fn claim_due(
    conn: &Connection,
    terms: &LeaseTerms,
    limit: usize,
) -> Result<Claimed, StoreError> {
    let ctx = |e| {
        backend(
            &format!("claiming due instances for node `{}`", terms.node),
            e,
        )
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut ids: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT i.id FROM instances i WHERE i.status = 'running' AND {CLAIMABLE} LIMIT ?3"
        ))
        .and_then(|mut s| {
            s.query_map(params![terms.node.as_str(), terms.now, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(ctx)?;
    let left = limit - ids.len() as i64;
    if left > 0 {
        let woken: Vec<String> = conn
            .prepare_cached(&format!(
                "SELECT i.id FROM instances i WHERE i.status = 'suspended' AND i.wake_at <= ?2 \
                 AND {CLAIMABLE} ORDER BY i.wake_at LIMIT ?3"
            ))
            .and_then(|mut s| {
                s.query_map(params![terms.node.as_str(), terms.now, left], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(ctx)?;
        ids.extend(woken);
    }
    let next_wake: Option<Millis> = conn
        .prepare_cached(
            "SELECT MIN(wake_at) FROM instances WHERE status = 'suspended' AND wake_at > ?1",
        )
        .and_then(|mut s| s.query_row([terms.now], |r| r.get(0)))
        .map_err(ctx)?;
    let expires_at = node_expiry(conn, &terms.node)?;
    let mut leases = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(lease) = take(conn, terms, &id, expires_at)? {
            leases.push(lease);
        }
    }
    Ok(Claimed { leases, next_wake })
}

pub(super) fn claim(
    conn: &Connection,
    terms: &LeaseTerms,
    id: &str,
) -> Result<Option<Lease>, StoreError> {
    let ctx = |e| backend(&format!("claiming instance `{id}`"), e);
    let row: Option<(Option<String>, i64, bool)> = conn
        .prepare_cached(&format!(
            "SELECT i.owner, i.epoch, {CLAIMABLE} AND (i.status = 'running' OR \
             (i.status = 'suspended' AND COALESCE(i.wake_at <= ?2, 0))) FROM instances i WHERE i.id = ?3 \
             AND i.status NOT IN ('completed', 'failed', 'cancelled', 'terminated', 'incompatible')"
        ))
        .and_then(|mut s| {
            s.query_row(params![terms.node.as_str(), terms.now, id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(ctx)?;
    let expires_at = node_expiry(conn, &terms.node)?;
    match row {
        Some((Some(owner), epoch, _)) if owner == terms.node.as_str() => Ok(Some(Lease {
            instance: id.to_string(),
            node: terms.node.clone(),
            epoch: u64::try_from(epoch).unwrap_or(0),
            expires_at,
        })),
        Some((_, _, true)) => take(conn, terms, id, expires_at),
        _ => Ok(None),
    }
}

pub(super) fn renew(
    conn: &Connection,
    terms: &LeaseTerms,
    held: &[(String, u64)],
) -> Result<Renewal, StoreError> {
    let ctx = |e| backend(&format!("renewing the leases of node `{}`", terms.node), e);
    conn.prepare_cached(
        "INSERT INTO nodes (id, started_at, heartbeat_at, lease_expires) VALUES (?1, ?2, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
         lease_expires = excluded.lease_expires",
    )
    .and_then(|mut s| s.execute(params![terms.node.as_str(), terms.now, terms.expires_at()]))
    .map_err(ctx)?;
    conn.prepare_cached(
        "DELETE FROM nodes WHERE id <> ?1 AND lease_expires < ?2 \
         AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.status = 'running' \
         AND i.owner = nodes.id)",
    )
    .and_then(|mut s| {
        s.execute(params![
            terms.node.as_str(),
            terms.now.saturating_sub(crate::store::NODE_RETENTION_MS)
        ])
    })
    .map_err(ctx)?;
    let mut lost = Vec::new();
    let mut stmt = conn
        .prepare_cached("SELECT owner, epoch FROM instances WHERE id = ?1")
        .map_err(ctx)?;
    for (id, epoch) in held {
        let row: Option<(Option<String>, i64)> = stmt
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(ctx)?;
        let holds = row.is_some_and(|(owner, e)| {
            owner.as_deref() == Some(terms.node.as_str()) && u64::try_from(e).ok() == Some(*epoch)
        });
        if !holds {
            lost.push(id.clone());
        }
    }
    let next_due = conn
        .prepare_cached(NEXT_DUE)
        .and_then(|mut s| s.query_row([terms.node.as_str()], |r| r.get(0)))
        .map_err(ctx)?;
    Ok(Renewal { lost, next_due })
}

/// See [`Renewal::next_due`]: the earliest suspended timer, or the earliest lease end of
/// another node owning unfinished instances (only running ones have owners: suspending
/// releases, so the `instances_due` index finds them among the few in flight).
const NEXT_DUE: &str = "SELECT min(t) FROM (SELECT min(wake_at) AS t FROM instances \
     WHERE status = 'suspended' UNION ALL SELECT min(n.lease_expires) FROM nodes n \
     WHERE n.id <> ?1 AND EXISTS (SELECT 1 FROM instances i WHERE i.status = 'running' \
     AND i.owner = n.id))";

pub(super) fn release(
    conn: &Connection,
    node: &NodeId,
    ids: Option<&[String]>,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let ctx = |e| backend(&format!("releasing the instances of node `{node}`"), e);
    let released: Vec<String> = match ids {
        Some(ids) => {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE instances SET owner = NULL WHERE id = ?1 AND owner = ?2 RETURNING id",
                )
                .map_err(ctx)?;
            let mut out = Vec::new();
            for id in ids {
                if let Some(id) = stmt
                    .query_row(params![id, node.as_str()], |r| r.get(0))
                    .optional()
                    .map_err(ctx)?
                {
                    out.push(id);
                }
            }
            out
        }
        None => {
            conn.prepare_cached(
                "UPDATE nodes SET lease_expires = MIN(lease_expires, heartbeat_at) WHERE id = ?1",
            )
            .and_then(|mut s| s.execute([node.as_str()]))
            .map_err(ctx)?;
            conn.prepare_cached("UPDATE instances SET owner = NULL WHERE owner = ?1 RETURNING id")
                .and_then(|mut s| {
                    s.query_map([node.as_str()], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(ctx)?
        }
    };
    woken.extend(
        released
            .into_iter()
            .map(|instance| Wakeup::Due { instance }),
    );
    Ok(())
}

pub(super) fn nodes(conn: &mut Connection) -> Result<Vec<NodeRecord>, StoreError> {
    // One pass over the owned instances for all nodes (there is no index on `owner`, and the
    // table keeps every node that ever ran).
    conn.prepare_cached(
        "SELECT n.id, n.started_at, n.heartbeat_at, n.lease_expires, COALESCE(o.owned, 0) \
         FROM nodes n LEFT JOIN (SELECT owner, count(*) AS owned FROM instances \
         WHERE owner IS NOT NULL GROUP BY owner) o ON o.owner = n.id ORDER BY n.id",
    )
    .and_then(|mut s| {
        s.query_map([], |r| {
            Ok(NodeRecord {
                id: r.get(0)?,
                started_at: r.get(1)?,
                heartbeat_at: r.get(2)?,
                lease_expires: r.get(3)?,
                owned: r.get::<_, i64>(4).map(|n| u64::try_from(n).unwrap_or(0))?,
            })
        })?
        .collect::<rusqlite::Result<_>>()
    })
    .map_err(|e| backend("listing nodes", e))
}

/// Refuses the submission unless `fence` still holds (one primary-key read, inside the
/// transaction that applies the submission); answers the instance's status.
pub(super) fn check_fence(conn: &Connection, fence: &Fence) -> Result<Status, StoreError> {
    let found: Option<(Option<String>, i64, String)> = conn
        .prepare_cached("SELECT owner, epoch, status FROM instances WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([&fence.instance], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(|e| backend(&format!("checking the lease on `{}`", fence.instance), e))?;
    let (owner, epoch, status) = found.unwrap_or((None, 0, String::new()));
    let epoch = u64::try_from(epoch).unwrap_or(0);
    if owner.as_deref() == Some(fence.node.as_str()) && epoch == fence.epoch {
        return parse_status(&fence.instance, &status);
    }
    Err(StoreError::LeaseLost {
        instance: fence.instance.clone(),
        node: fence.node.to_string(),
        epoch: fence.epoch,
        current_owner: owner,
        current_epoch: epoch,
    })
}

/// The leases of those of `ids` that have an owner, in the order of `ids`.
pub(super) fn leases(conn: &mut Connection, ids: &[String]) -> Result<Vec<Lease>, StoreError> {
    let ctx = |e| backend("reading the owners of instances", e);
    let mut stmt = conn
        .prepare_cached(
            "SELECT i.owner, i.epoch, COALESCE(n.lease_expires, 0) FROM instances i \
             LEFT JOIN nodes n ON n.id = i.owner WHERE i.id = ?1 AND i.owner IS NOT NULL",
        )
        .map_err(ctx)?;
    let mut out = Vec::new();
    for id in ids {
        let row: Option<(String, i64, Millis)> = stmt
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(ctx)?;
        let Some((owner, epoch, expires_at)) = row else {
            continue;
        };
        let node = NodeId::new(owner).map_err(|e| {
            StoreError::Backend(format!(
                "instance `{id}` has a stored owner that is not a node id: {e}"
            ))
        })?;
        out.push(Lease {
            instance: id.clone(),
            node,
            epoch: u64::try_from(epoch).unwrap_or(0),
            expires_at,
        });
    }
    Ok(out)
}
