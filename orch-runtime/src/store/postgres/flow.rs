//! Workflow queues on PostgreSQL (see [`crate::store::flow`]): the `workflow_queues` table (one
//! configuration per queue) and `queue_entries` (one row per enqueued instance: `queued`, then
//! `admitted`, then `done` once its instance finished, noted by the next admission). Run by the
//! writers, inside their transaction. An admission locks each queue's configuration row
//! (`FOR UPDATE`) before it counts, so nodes admitting at once take turns per queue and never
//! pass a limit together; a deduplication key is unique among a queue's open entries (a partial
//! unique index), so concurrent enqueues with one key store one instance.

use super::apply::{Param, Tx, create};
use super::pg_error;
use super::read::{get, get_record};
use crate::store::flow::{
    Admitted, Enqueued, QueueConfig, QueueEntry, QueueState, Rate, WorkflowQueueStats, plan,
};
use crate::store::{Created, InstanceRecord, Millis, StoreError, Wakeup, WriteOp};
use tokio_postgres::Row;

const FINAL: &str = "('completed', 'failed', 'cancelled', 'terminated', 'incompatible')";

fn n32(v: Option<u32>) -> Option<i64> {
    v.map(i64::from)
}

/// [`WorkflowQueues::enqueue_instance`](crate::store::flow::WorkflowQueues::enqueue_instance).
pub(super) async fn enqueue(
    tx: Tx<'_>,
    record: &InstanceRecord,
    entry: &QueueEntry,
    extra: &[WriteOp],
    woken: &mut Vec<Wakeup>,
) -> Result<Enqueued, StoreError> {
    let ctx = || {
        format!(
            "enqueueing instance `{}` on queue `{}`",
            record.id, entry.queue
        )
    };
    let e = |err: tokio_postgres::Error| pg_error(&ctx(), &err);
    if let Some(existing) = get_record(tx, &record.id).await? {
        return Ok(Enqueued::Existing(Box::new(existing)));
    }
    tx.execute(
        "INSERT INTO workflow_queues (name) VALUES ($1::text) ON CONFLICT DO NOTHING",
        &[&entry.queue],
    )
    .await
    .map_err(e)?;
    if let Some(dedup) = &entry.dedup {
        // An open entry whose instance finished frees its key.
        tx.execute(
            &format!(
                "UPDATE queue_entries e SET state = 'done' FROM instances i \
                 WHERE i.id = e.instance AND e.queue = $1::text AND e.dedup = $2::text \
                 AND e.state <> 'done' AND i.status IN {FINAL}"
            ),
            &[&entry.queue, dedup],
        )
        .await
        .map_err(e)?;
    }
    if let Created::Existing(existing) = create(tx, record, None).await? {
        return Ok(Enqueued::Existing(existing));
    }
    let params: [Param<'_>; 6] = [
        &record.id,
        &entry.queue,
        &entry.priority,
        &entry.key,
        &entry.dedup,
        &record.created_at,
    ];
    let inserted = tx
        .execute(
            "INSERT INTO queue_entries (instance, queue, priority, ckey, dedup, enqueued_at, \
             state) VALUES ($1::text, $2::text, $3::int, $4::text, $5::text, $6::bigint, \
             'queued') ON CONFLICT DO NOTHING",
            &params,
        )
        .await
        .map_err(e)?;
    if inserted == 0 {
        // The key is held (by an entry committed since this transaction began, or earlier):
        // the instance just stored goes again.
        tx.execute("DELETE FROM instances WHERE id = $1::text", &[&record.id])
            .await
            .map_err(e)?;
        let holder = tx
            .query_opt(
                "SELECT instance FROM queue_entries WHERE queue = $1::text AND dedup = $2::text \
                 AND state <> 'done' LIMIT 1",
                &[&entry.queue, &entry.dedup],
            )
            .await
            .map_err(e)?;
        let holder: Option<String> = holder.map(|r| get(&r, 0, &ctx())).transpose()?;
        if let Some(holder) = holder
            && let Some(rec) = get_record(tx, &holder).await?
        {
            return Ok(Enqueued::Duplicate(Box::new(rec)));
        }
        return Err(StoreError::Conflict {
            instance: record.id.clone(),
            detail: "its queue entry could not be stored; try again".into(),
        });
    }
    super::apply::apply_all(tx, extra, woken).await?;
    Ok(Enqueued::New)
}

fn config_from(r: &Row, at: usize, ctx: &str) -> Result<QueueConfig, StoreError> {
    let n = |i: usize| -> Result<Option<u32>, StoreError> {
        Ok(get::<Option<i64>>(r, at + i, ctx)?.map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    };
    let rate = match (n(2)?, get::<Option<i64>>(r, at + 3, ctx)?) {
        (Some(limit), Some(period_ms)) => Some(Rate { limit, period_ms }),
        _ => None,
    };
    Ok(QueueConfig {
        concurrency: n(0)?,
        per_key: n(1)?,
        rate,
    })
}

fn count(r: &Row, i: usize, ctx: &str) -> Result<u64, StoreError> {
    Ok(u64::try_from(get::<i64>(r, i, ctx)?).unwrap_or(0))
}

/// [`WorkflowQueues::set_queue_config`](crate::store::flow::WorkflowQueues::set_queue_config).
pub(super) async fn set_config(
    tx: Tx<'_>,
    queue: &str,
    config: &QueueConfig,
) -> Result<(), StoreError> {
    let (limit, period) = (
        config.rate.map(|r| i64::from(r.limit)),
        config.rate.map(|r| r.period_ms),
    );
    let params: [Param<'_>; 5] = [
        &queue,
        &n32(config.concurrency),
        &n32(config.per_key),
        &limit,
        &period,
    ];
    tx.execute(
        "INSERT INTO workflow_queues (name, concurrency, per_key, rate_limit, rate_period_ms) \
         VALUES ($1::text, $2::bigint, $3::bigint, $4::bigint, $5::bigint) \
         ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, \
         per_key = excluded.per_key, rate_limit = excluded.rate_limit, \
         rate_period_ms = excluded.rate_period_ms",
        &params,
    )
    .await
    .map_err(|e| pg_error(&format!("configuring workflow queue `{queue}`"), &e))?;
    Ok(())
}

/// [`WorkflowQueues::admit`](crate::store::flow::WorkflowQueues::admit).
pub(super) async fn admit(
    tx: Tx<'_>,
    now: Millis,
    limit: usize,
    woken: &mut Vec<Wakeup>,
) -> Result<Admitted, StoreError> {
    const CTX: &str = "admitting queued instances";
    let e = |err: tokio_postgres::Error| pg_error(CTX, &err);
    let queues: Vec<String> = tx
        .query(
            "SELECT DISTINCT queue FROM queue_entries WHERE state = 'queued' ORDER BY queue",
            &[],
        )
        .await
        .map_err(e)?
        .iter()
        .map(|r| get(r, 0, CTX))
        .collect::<Result<_, _>>()?;
    let mut admitted = Admitted::default();
    for queue in queues {
        let room = limit.saturating_sub(admitted.instances.len());
        if room == 0 {
            break;
        }
        // The queue's turn: whoever admits for it next counts after this commits.
        let config = tx
            .query_opt(
                "SELECT concurrency, per_key, rate_limit, rate_period_ms FROM workflow_queues \
                 WHERE name = $1::text FOR UPDATE",
                &[&queue],
            )
            .await
            .map_err(e)?
            .map(|r| config_from(&r, 0, CTX))
            .transpose()?
            .unwrap_or_default();
        // Admitted instances that finished since give their room back.
        tx.execute(
            &format!(
                "UPDATE queue_entries e SET state = 'done' FROM instances i \
                 WHERE i.id = e.instance AND e.queue = $1::text AND e.state = 'admitted' \
                 AND i.status IN {FINAL}"
            ),
            &[&queue],
        )
        .await
        .map_err(e)?;
        let mut q = QueueState {
            config,
            ..QueueState::default()
        };
        let running = tx
            .query_one(
                "SELECT COUNT(*) FROM queue_entries WHERE queue = $1::text AND state = 'admitted'",
                &[&queue],
            )
            .await
            .map_err(e)?;
        q.running = count(&running, 0, CTX)?;
        if config.per_key.is_some() {
            q.running_by_key = tx
                .query(
                    "SELECT ckey, COUNT(*) FROM queue_entries WHERE queue = $1::text \
                     AND state = 'admitted' AND ckey IS NOT NULL GROUP BY ckey",
                    &[&queue],
                )
                .await
                .map_err(e)?
                .iter()
                .map(|r| Ok((get::<String>(r, 0, CTX)?, count(r, 1, CTX)?)))
                .collect::<Result<_, StoreError>>()?;
        }
        if let Some(r) = config.rate {
            let from = now.saturating_sub(r.period_ms);
            q.recent = tx
                .query(
                    "SELECT admitted_at FROM queue_entries WHERE queue = $1::text \
                     AND admitted_at > $2::bigint ORDER BY admitted_at",
                    &[&queue, &from],
                )
                .await
                .map_err(e)?
                .iter()
                .map(|r| get(r, 0, CTX))
                .collect::<Result<_, _>>()?;
        }
        let want = i64::try_from(room.saturating_mul(4).saturating_add(16)).unwrap_or(i64::MAX);
        let per_key = n32(config.per_key);
        q.candidates = tx
            .query(
                "SELECT e.instance, e.ckey FROM queue_entries e JOIN instances i \
                 ON i.id = e.instance WHERE e.queue = $1::text AND e.state = 'queued' \
                 AND i.status = 'queued' AND ($2::bigint IS NULL OR e.ckey IS NULL OR \
                 (SELECT COUNT(*) FROM queue_entries a WHERE a.queue = e.queue \
                  AND a.state = 'admitted' AND a.ckey = e.ckey) < $2::bigint) \
                 ORDER BY e.priority DESC, e.seq LIMIT $3::bigint",
                &[&queue, &per_key, &want],
            )
            .await
            .map_err(e)?
            .iter()
            .map(|r| Ok((get(r, 0, CTX)?, get(r, 1, CTX)?)))
            .collect::<Result<_, StoreError>>()?;
        let (ids, next) = plan(&mut q, now, room);
        if !ids.is_empty() {
            tx.execute(
                "UPDATE queue_entries SET state = 'admitted', admitted_at = $2::bigint \
                 WHERE instance = ANY($1::text[])",
                &[&ids, &now],
            )
            .await
            .map_err(e)?;
            tx.execute(
                "UPDATE instances SET status = 'running', wake_at = NULL, updated_at = $2::bigint \
                 WHERE id = ANY($1::text[]) AND status = 'queued'",
                &[&ids, &now],
            )
            .await
            .map_err(e)?;
        }
        woken.extend(ids.iter().map(|id| Wakeup::Due {
            instance: id.clone(),
        }));
        admitted.instances.extend(ids);
        if let Some(n) = next {
            admitted.next_at = Some(admitted.next_at.map_or(n, |a: Millis| a.min(n)));
        }
    }
    let waiting = tx
        .query_one(
            "SELECT COUNT(*) FROM queue_entries e JOIN instances i ON i.id = e.instance \
             WHERE e.state = 'queued' AND i.status = 'queued'",
            &[],
        )
        .await
        .map_err(e)?;
    admitted.waiting = count(&waiting, 0, CTX)?;
    Ok(admitted)
}

/// [`WorkflowQueues::workflow_queues`](crate::store::flow::WorkflowQueues::workflow_queues).
pub(super) async fn stats(tx: Tx<'_>) -> Result<Vec<WorkflowQueueStats>, StoreError> {
    let rows = tx
        .query(
            &format!(
                "SELECT q.name, q.concurrency, q.per_key, q.rate_limit, q.rate_period_ms, \
                 (SELECT COUNT(*) FROM queue_entries e JOIN instances i ON i.id = e.instance \
                  WHERE e.queue = q.name AND e.state = 'queued' AND i.status = 'queued'), \
                 (SELECT COUNT(*) FROM queue_entries e JOIN instances i ON i.id = e.instance \
                  WHERE e.queue = q.name AND e.state = 'admitted' AND i.status NOT IN {FINAL}), \
                 (SELECT MIN(e.enqueued_at) FROM queue_entries e JOIN instances i \
                  ON i.id = e.instance WHERE e.queue = q.name AND e.state = 'queued' \
                  AND i.status = 'queued') \
                 FROM workflow_queues q ORDER BY q.name"
            ),
            &[],
        )
        .await
        .map_err(|e| pg_error("reading the workflow queues", &e))?;
    const STATS: &str = "reading the workflow queues";
    rows.iter()
        .map(|r| {
            Ok(WorkflowQueueStats {
                queue: get(r, 0, STATS)?,
                config: config_from(r, 1, STATS)?,
                queued: count(r, 5, STATS)?,
                running: count(r, 6, STATS)?,
                oldest_queued: get(r, 7, STATS)?,
            })
        })
        .collect()
}
