//! Leases in PostgreSQL: claiming, renewing and releasing instances, and the fence check (see
//! [`Store`](crate::Store)). The same rules as the SQLite store (`sqlite/ownership.rs`): an
//! instance row carries `owner` and `lease_epoch`, the `nodes` table each node's lease end
//! (`lease_expires`), renewed by its heartbeat. Everything here runs in the writer's
//! transaction; due instances are claimed with `FOR UPDATE SKIP LOCKED`, so nodes claiming at
//! the same time take disjoint sets without waiting for each other.

use super::apply::{Tx, final_in};
use super::pg_error;
use crate::store::{
    Claimed, Fence, Lease, LeaseTerms, Millis, NodeId, NodeRecord, Renewal, StoreError, Wakeup,
};
use std::collections::HashMap;

/// The owner condition of a claimable row `i` ($1 the claiming node, $2 now): no owner, or
/// another node whose lease has ended (a node without a row has none).
macro_rules! claimable {
    () => {
        "(i.owner IS NULL OR (i.owner <> $1::text AND NOT EXISTS (SELECT 1 FROM nodes n \
         WHERE n.id = i.owner AND n.lease_expires > $2::bigint)))"
    };
}

const CLAIM_RUNNING: &str = concat!(
    "WITH c AS (SELECT i.id FROM instances i WHERE i.status = 'running' AND ",
    claimable!(),
    " LIMIT $3::bigint FOR UPDATE SKIP LOCKED) UPDATE instances u SET owner = $1::text, ",
    "lease_epoch = u.lease_epoch + 1, status = 'running', wake_at = NULL FROM c ",
    "WHERE u.id = c.id RETURNING u.id, u.lease_epoch"
);
const CLAIM_WOKEN: &str = concat!(
    "WITH c AS (SELECT i.id FROM instances i WHERE i.status = 'suspended' ",
    "AND i.wake_at <= $2::bigint AND ",
    claimable!(),
    " ORDER BY i.wake_at LIMIT $3::bigint FOR UPDATE SKIP LOCKED) UPDATE instances u ",
    "SET owner = $1::text, lease_epoch = u.lease_epoch + 1, status = 'running', wake_at = NULL ",
    "FROM c WHERE u.id = c.id RETURNING u.id, u.lease_epoch"
);
const CLAIM_ONE: &str = concat!(
    "SELECT i.owner, i.lease_epoch, ",
    claimable!(),
    " AND (i.status = 'running' OR (i.status = 'suspended' AND COALESCE(i.wake_at <= $2::bigint, \
     false))) FROM instances i WHERE i.id = $3::text AND i.status NOT IN ",
    final_in!(),
    " FOR UPDATE"
);
const TAKE: &str = "UPDATE instances SET owner = $2::text, lease_epoch = lease_epoch + 1, \
     status = 'running', wake_at = NULL WHERE id = $1::text RETURNING lease_epoch";
const NEXT_WAKE: &str =
    "SELECT MIN(wake_at) FROM instances WHERE status = 'suspended' AND wake_at > $1::bigint";
const EXPIRY: &str = "SELECT lease_expires FROM nodes WHERE id = $1::text";
/// The heartbeat (one statement): the node row's new expiry, forgetting long-gone nodes that
/// own nothing, those held leases that no longer hold, and `next_due` (see [`Renewal`]; only
/// unfinished instances have owners: an end clears it).
const RENEW: &str = "WITH n AS (INSERT INTO nodes (id, host, pid, started_at, heartbeat_at, \
     lease_expires) VALUES ($1::text, $4::text, $5::bigint, $2::bigint, $2::bigint, $3::bigint) \
     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
     lease_expires = excluded.lease_expires RETURNING 1), \
     gone AS (DELETE FROM nodes g WHERE g.id <> $1::text AND g.lease_expires < $8::bigint \
     AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.owner = g.id)) \
     SELECT ARRAY(SELECT h.id FROM unnest($6::text[], $7::bigint[]) AS h(id, epoch) \
     WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = h.id AND i.owner = $1::text \
     AND i.lease_epoch = h.epoch)), LEAST((SELECT min(wake_at) FROM instances \
     WHERE status = 'suspended'), (SELECT min(o.lease_expires) FROM nodes o WHERE o.id <> $1::text \
     AND EXISTS (SELECT 1 FROM instances i WHERE i.owner = o.id))), (SELECT count(*) FROM n)";
/// The fence check of a whole batch: locks the fenced rows (in id order) until the commit.
pub(super) const FENCES: &str = "SELECT id, owner, lease_epoch FROM instances WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";

fn epoch_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The rows of `ids` as `(owner, epoch)`, locked until the transaction ends.
pub(super) async fn fences(
    tx: Tx<'_>,
    ids: &[String],
) -> Result<HashMap<String, (Option<String>, u64)>, StoreError> {
    let rows = tx
        .query(FENCES, &[&ids])
        .await
        .map_err(|e| pg_error("checking the leases of a write batch", &e))?;
    rows.iter()
        .map(|r| {
            let ctx = "checking the leases of a write batch";
            let id: String = r.try_get(0).map_err(|e| pg_error(ctx, &e))?;
            let owner: Option<String> = r.try_get(1).map_err(|e| pg_error(ctx, &e))?;
            let epoch: i64 = r.try_get(2).map_err(|e| pg_error(ctx, &e))?;
            Ok((id, (owner, epoch_of(epoch))))
        })
        .collect()
}

/// Refuses the submission unless `fence` holds against `found` (the row's owner and epoch).
pub(super) fn judge(
    fence: &Fence,
    found: Option<&(Option<String>, u64)>,
) -> Result<(), StoreError> {
    let (owner, epoch) = found.cloned().unwrap_or((None, 0));
    if owner.as_deref() == Some(fence.node.as_str()) && epoch == fence.epoch {
        return Ok(());
    }
    Err(StoreError::LeaseLost {
        instance: fence.instance.clone(),
        node: fence.node.to_string(),
        epoch: fence.epoch,
        current_owner: owner,
        current_epoch: epoch,
    })
}

/// Checks one fence now (locking the row until the commit).
pub(super) async fn check(tx: Tx<'_>, fence: &Fence) -> Result<(), StoreError> {
    let ids = [fence.instance.clone()];
    let found = fences(tx, &ids).await?;
    judge(fence, found.get(&fence.instance))
}

async fn node_expiry(tx: Tx<'_>, node: &NodeId) -> Result<Millis, StoreError> {
    let row = tx
        .query_opt(EXPIRY, &[&node.as_str()])
        .await
        .map_err(|e| pg_error(&format!("reading the lease of node `{node}`"), &e))?;
    Ok(row.and_then(|r| r.try_get(0).ok()).unwrap_or(0))
}

fn leases(
    rows: &[tokio_postgres::Row],
    terms: &LeaseTerms,
    expires_at: Millis,
    ctx: &str,
) -> Result<Vec<Lease>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(Lease {
                instance: r.try_get(0).map_err(|e| pg_error(ctx, &e))?,
                node: terms.node.clone(),
                epoch: epoch_of(r.try_get(1).map_err(|e| pg_error(ctx, &e))?),
                expires_at,
            })
        })
        .collect()
}

pub(super) async fn claim_due(
    tx: Tx<'_>,
    terms: &LeaseTerms,
    limit: usize,
) -> Result<Claimed, StoreError> {
    let ctx = format!("claiming due instances for node `{}`", terms.node);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let node = terms.node.as_str();
    let (expires_at, next_wake) = futures_util::future::join(
        node_expiry(tx, &terms.node),
        tx.query_one(NEXT_WAKE, &[&terms.now]),
    )
    .await;
    let expires_at = expires_at?;
    let next_wake: Option<Millis> = next_wake
        .and_then(|r| r.try_get(0))
        .map_err(|e| pg_error(&ctx, &e))?;
    let running = tx
        .query(CLAIM_RUNNING, &[&node, &terms.now, &limit])
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    let mut claimed = leases(&running, terms, expires_at, &ctx)?;
    let left = limit - claimed.len() as i64;
    if left > 0 {
        let woken = tx
            .query(CLAIM_WOKEN, &[&node, &terms.now, &left])
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
        claimed.extend(leases(&woken, terms, expires_at, &ctx)?);
    }
    Ok(Claimed {
        leases: claimed,
        next_wake,
    })
}

pub(super) async fn claim(
    tx: Tx<'_>,
    terms: &LeaseTerms,
    id: &str,
) -> Result<Option<Lease>, StoreError> {
    let ctx = format!("claiming instance `{id}`");
    let node = terms.node.as_str();
    let row = tx
        .query_opt(CLAIM_ONE, &[&node, &terms.now, &id])
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    let Some(row) = row else { return Ok(None) };
    let owner: Option<String> = row.try_get(0).map_err(|e| pg_error(&ctx, &e))?;
    let epoch: i64 = row.try_get(1).map_err(|e| pg_error(&ctx, &e))?;
    let claimable: bool = row.try_get(2).map_err(|e| pg_error(&ctx, &e))?;
    let expires_at = node_expiry(tx, &terms.node).await?;
    if owner.as_deref() == Some(node) {
        return Ok(Some(Lease {
            instance: id.to_string(),
            node: terms.node.clone(),
            epoch: epoch_of(epoch),
            expires_at,
        }));
    }
    if !claimable {
        return Ok(None);
    }
    let taken = tx
        .query_opt(TAKE, &[&id, &node])
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    Ok(match taken {
        Some(r) => Some(Lease {
            instance: id.to_string(),
            node: terms.node.clone(),
            epoch: epoch_of(r.try_get(0).map_err(|e| pg_error(&ctx, &e))?),
            expires_at,
        }),
        None => None,
    })
}

pub(super) async fn renew(
    tx: Tx<'_>,
    terms: &LeaseTerms,
    held: &[(String, u64)],
) -> Result<Renewal, StoreError> {
    let ctx = format!("renewing the leases of node `{}`", terms.node);
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let pid = i64::from(std::process::id());
    let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
    let epochs: Vec<i64> = held
        .iter()
        .map(|(_, e)| i64::try_from(*e).unwrap_or(i64::MAX))
        .collect();
    let row = tx
        .query_one(
            RENEW,
            &[
                &terms.node.as_str(),
                &terms.now,
                &terms.expires_at(),
                &host,
                &pid,
                &ids,
                &epochs,
                &terms.now.saturating_sub(crate::store::NODE_RETENTION_MS),
            ],
        )
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    Ok(Renewal {
        lost: row.try_get(0).map_err(|e| pg_error(&ctx, &e))?,
        next_due: row.try_get(1).map_err(|e| pg_error(&ctx, &e))?,
    })
}

pub(super) async fn release(
    tx: Tx<'_>,
    node: &NodeId,
    ids: Option<&[String]>,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let ctx = format!("releasing the instances of node `{node}`");
    let rows = match ids {
        Some(ids) => tx
            .query(
                "UPDATE instances SET owner = NULL WHERE id = ANY($1::text[]) AND owner = $2::text \
                 RETURNING id",
                &[&ids, &node.as_str()],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?,
        None => {
            tx.execute(
                "UPDATE nodes SET lease_expires = LEAST(lease_expires, heartbeat_at) \
                 WHERE id = $1::text",
                &[&node.as_str()],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?;
            tx.query(
                "UPDATE instances SET owner = NULL WHERE owner = $1::text RETURNING id",
                &[&node.as_str()],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?
        }
    };
    for r in rows {
        woken.push(Wakeup::Due {
            instance: r.try_get(0).map_err(|e| pg_error(&ctx, &e))?,
        });
    }
    Ok(())
}

pub(super) async fn nodes(tx: Tx<'_>) -> Result<Vec<NodeRecord>, StoreError> {
    let ctx = "listing nodes";
    let rows = tx
        .query(
            "SELECT n.id, n.started_at, n.heartbeat_at, n.lease_expires, \
             (SELECT count(*) FROM instances i WHERE i.owner = n.id) FROM nodes n ORDER BY n.id",
            &[],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    rows.iter()
        .map(|r| {
            Ok(NodeRecord {
                id: r.try_get(0).map_err(|e| pg_error(ctx, &e))?,
                started_at: r.try_get(1).map_err(|e| pg_error(ctx, &e))?,
                heartbeat_at: r.try_get(2).map_err(|e| pg_error(ctx, &e))?,
                lease_expires: r.try_get(3).map_err(|e| pg_error(ctx, &e))?,
                owned: u64::try_from(r.try_get::<_, i64>(4).map_err(|e| pg_error(ctx, &e))?)
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// The leases of those of `ids` that have an owner, in the order of `ids`.
pub(super) async fn leases_of(tx: Tx<'_>, ids: &[String]) -> Result<Vec<Lease>, StoreError> {
    let ctx = "reading the owners of instances";
    let rows = tx
        .query(
            "SELECT i.id, i.owner, i.lease_epoch, COALESCE(n.lease_expires, 0) \
             FROM instances i LEFT JOIN nodes n ON n.id = i.owner \
             WHERE i.id = ANY($1::text[]) AND i.owner IS NOT NULL",
            &[&ids],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    let mut found = HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get(0).map_err(|e| pg_error(ctx, &e))?;
        let owner: String = r.try_get(1).map_err(|e| pg_error(ctx, &e))?;
        let node = NodeId::new(owner).map_err(|e| {
            StoreError::Backend(format!(
                "instance `{id}` has a stored owner that is not a node id: {e}"
            ))
        })?;
        let lease = Lease {
            instance: id.clone(),
            node,
            epoch: epoch_of(r.try_get(2).map_err(|e| pg_error(ctx, &e))?),
            expires_at: r.try_get(3).map_err(|e| pg_error(ctx, &e))?,
        };
        found.insert(id, lease);
    }
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}
