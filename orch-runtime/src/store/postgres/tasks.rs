//! Task queues on PostgreSQL (see [`crate::store::task`]): the `tasks` table, written by the
//! writers. Leasing takes the best open tasks with `FOR UPDATE SKIP LOCKED`, so workers served
//! by several nodes never get the same task at once; a heartbeat or an end locks its task's row
//! and decides with the same rules as every backend ([`TaskRecord`]'s methods).

use super::apply::{Param, Tx};
use super::pg_error;
use super::read::get_u32;
use crate::store::task::{
    Leased, NewTask, QueueStats, THROUGHPUT_WINDOW, TaskRecord, TaskResult, TaskState,
    WorkerRecord, WorkerTerms,
};
use crate::store::{Millis, StoreError, Wakeup};
use tokio_postgres::Row;

const COLUMNS: &str = "id, queue, instance, seq, attempt, step, input, idempotency_key, \
     priority, created_at, deadline, state, worker, token, lease_expires_at, output, error, \
     retryable, finished_at";

fn task_from(r: &Row, ctx: &str) -> Result<TaskRecord, StoreError> {
    let e = |err: tokio_postgres::Error| pg_error(ctx, &err);
    let state: String = r.try_get(11).map_err(e)?;
    let state = TaskState::parse(&state).ok_or_else(|| {
        StoreError::Backend(format!(
            "{ctx}: unknown task state `{}` in the database",
            state.escape_debug()
        ))
    })?;
    let priority: i32 = r.try_get(8).map_err(e)?;
    let token: i64 = r.try_get(13).map_err(e)?;
    Ok(TaskRecord {
        task: NewTask {
            id: r.try_get(0).map_err(e)?,
            queue: r.try_get(1).map_err(e)?,
            instance: r.try_get(2).map_err(e)?,
            seq: get_u32(r, 3, ctx)?,
            attempt: get_u32(r, 4, ctx)?,
            step: r.try_get(5).map_err(e)?,
            input: r.try_get(6).map_err(e)?,
            idempotency_key: r.try_get(7).map_err(e)?,
            priority,
            created_at: r.try_get(9).map_err(e)?,
            deadline: r.try_get(10).map_err(e)?,
        },
        state,
        worker: r.try_get(12).map_err(e)?,
        token: u64::try_from(token).unwrap_or(0),
        lease_expires_at: r.try_get(14).map_err(e)?,
        output: r.try_get(15).map_err(e)?,
        error: r.try_get(16).map_err(e)?,
        retryable: r.try_get(17).map_err(e)?,
        finished_at: r.try_get(18).map_err(e)?,
    })
}

/// Reads task `id` (`lock`: and locks its row until the transaction ends).
pub(super) async fn get(
    tx: Tx<'_>,
    id: &str,
    lock: bool,
) -> Result<Option<TaskRecord>, StoreError> {
    let ctx = format!("reading task `{id}`");
    let lock = if lock { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE id = $1::text{lock}");
    let row = tx
        .query_opt(&sql, &[&id])
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    row.map(|r| task_from(&r, &ctx)).transpose()
}

/// Writes back what may change of a task.
async fn put(tx: Tx<'_>, t: &TaskRecord) -> Result<(), StoreError> {
    let token = i64::try_from(t.token).unwrap_or(i64::MAX);
    let params: [Param<'_>; 9] = [
        &t.task.id,
        &t.state.as_str(),
        &t.worker,
        &token,
        &t.lease_expires_at,
        &t.output,
        &t.error,
        &t.retryable,
        &t.finished_at,
    ];
    tx.execute(
        "UPDATE tasks SET state = $2::text, worker = $3::text, token = $4::bigint, \
         lease_expires_at = $5::bigint, output = $6::text, error = $7::text, \
         retryable = $8::bool, finished_at = $9::bigint WHERE id = $1::text",
        &params,
    )
    .await
    .map_err(|e| pg_error(&format!("updating task `{}`", t.task.id), &e))?;
    Ok(())
}

/// [`WriteOp::EnqueueTask`](crate::store::WriteOp::EnqueueTask): stored when its instance is
/// live and the id is new. Returns the instance's status (`None`: missing).
pub(super) async fn enqueue(
    tx: Tx<'_>,
    task: &NewTask,
    woken: &mut Vec<Wakeup>,
) -> Result<Option<String>, StoreError> {
    let ctx = format!("enqueueing task `{}`", task.id);
    let seq = i64::from(task.seq);
    let attempt = i64::from(task.attempt);
    let params: [Param<'_>; 11] = [
        &task.instance,
        &task.id,
        &task.queue,
        &seq,
        &attempt,
        &task.step,
        &task.input,
        &task.idempotency_key,
        &task.priority,
        &task.created_at,
        &task.deadline,
    ];
    let row = tx
        .query_one(
            "WITH i AS (SELECT status FROM instances WHERE id = $1::text), \
             w AS (INSERT INTO tasks (id, queue, instance, seq, attempt, step, input, \
             idempotency_key, priority, created_at, deadline, state) \
             SELECT $2::text, $3::text, $1::text, $4::bigint, $5::bigint, $6::text, $7::text, \
             $8::text, $9::int4, $10::bigint, $11::bigint, 'pending' FROM i \
             WHERE i.status IN ('running', 'suspended') \
             ON CONFLICT (id) DO NOTHING RETURNING 1) \
             SELECT (SELECT status FROM i), (SELECT count(*) FROM w)",
            &params,
        )
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    let status: Option<String> = row.try_get(0).map_err(|e| pg_error(&ctx, &e))?;
    let inserted: i64 = row.try_get(1).map_err(|e| pg_error(&ctx, &e))?;
    if inserted > 0 {
        woken.push(Wakeup::TaskQueued {
            queue: task.queue.clone(),
        });
    }
    Ok(status)
}

/// [`WriteOp::CancelTask`](crate::store::WriteOp::CancelTask). Returns the instance's status
/// (`None`: missing).
pub(super) async fn cancel(
    tx: Tx<'_>,
    instance: &str,
    id: &str,
    at: Millis,
) -> Result<Option<String>, StoreError> {
    let ctx = format!("cancelling task `{id}`");
    let row = tx
        .query_one(
            "WITH i AS (SELECT status FROM instances WHERE id = $1::text), \
             w AS (UPDATE tasks SET state = 'cancelled', \
             error = 'the instance stopped waiting for it', finished_at = $3::bigint \
             WHERE id = $2::text AND instance = $1::text AND state IN ('pending', 'leased') \
             RETURNING 1) SELECT (SELECT status FROM i), (SELECT count(*) FROM w)",
            &[&instance, &id, &at],
        )
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    row.try_get(0).map_err(|e| pg_error(&ctx, &e))
}

/// [`TaskQueue::lease_tasks`](crate::store::task::TaskQueue::lease_tasks).
pub(super) async fn lease(
    tx: Tx<'_>,
    terms: &WorkerTerms,
    queues: &[String],
    limit: usize,
) -> Result<Leased, StoreError> {
    let ctx = format!("leasing tasks for worker `{}`", terms.worker);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let later: Option<i64> = tx
        .query_one(
            "SELECT min(lease_expires_at) FROM tasks WHERE queue = ANY($1::text[]) \
             AND state = 'leased' AND lease_expires_at > $2::bigint \
             AND (deadline IS NULL OR deadline > $2::bigint)",
            &[&queues, &terms.now],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| pg_error(&ctx, &e))?;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE queue = ANY($1::text[]) \
                 AND (state = 'pending' OR (state = 'leased' AND lease_expires_at <= $2::bigint)) \
                 AND (deadline IS NULL OR deadline > $2::bigint) \
                 ORDER BY priority DESC, created_at LIMIT $3::bigint FOR UPDATE SKIP LOCKED"
            ),
            &[&queues, &terms.now, &limit],
        )
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    let mut leased = Leased {
        tasks: Vec::with_capacity(rows.len()),
        next_expiry: later,
    };
    for row in rows {
        let mut t = task_from(&row, &ctx)?;
        if t.leasable_or_later(terms.now) == Some(None) {
            leased.tasks.push(t.lease(terms));
            put(tx, &t).await?;
        }
    }
    Ok(leased)
}

/// [`TaskQueue::heartbeat_task`](crate::store::task::TaskQueue::heartbeat_task).
pub(super) async fn heartbeat(
    tx: Tx<'_>,
    id: &str,
    token: u64,
    terms: &WorkerTerms,
) -> Result<Millis, StoreError> {
    let mut t = get(tx, id, true)
        .await?
        .ok_or_else(|| TaskRecord::missing(id, token))?;
    t.held(token, terms.now)?;
    t.lease_expires_at = Some(terms.expires_at());
    put(tx, &t).await?;
    Ok(terms.expires_at())
}

/// [`TaskQueue::finish_task`](crate::store::task::TaskQueue::finish_task): ends the task and
/// wakes its instance.
pub(super) async fn finish(
    tx: Tx<'_>,
    id: &str,
    token: u64,
    result: &TaskResult,
    now: Millis,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let mut t = get(tx, id, true)
        .await?
        .ok_or_else(|| TaskRecord::missing(id, token))?;
    t.held(token, now)?;
    t.finish(result.clone(), now);
    put(tx, &t).await?;
    super::apply::wake_instance(tx, &t.task.instance, now, woken).await?;
    woken.push(Wakeup::TaskFinished {
        instance: t.task.instance,
        task: id.to_string(),
    });
    Ok(())
}

/// [`TaskQueue::queue_stats`](crate::store::task::TaskQueue::queue_stats).
pub(super) async fn stats(tx: Tx<'_>, now: Millis) -> Result<Vec<QueueStats>, StoreError> {
    let ctx = "reading the queues";
    let rows = tx
        .query(
            "SELECT queue, \
             count(*) FILTER (WHERE state = 'pending' OR (state = 'leased' \
                 AND lease_expires_at <= $1::bigint)), \
             count(*) FILTER (WHERE state = 'leased' AND lease_expires_at > $1::bigint), \
             min(created_at) FILTER (WHERE state = 'pending' OR (state = 'leased' \
                 AND lease_expires_at <= $1::bigint)), \
             count(*) FILTER (WHERE state = 'completed'), \
             count(*) FILTER (WHERE state = 'failed'), \
             count(*) FILTER (WHERE state IN ('completed', 'failed') \
                 AND finished_at > $2::bigint AND finished_at <= $1::bigint) \
             FROM tasks GROUP BY queue ORDER BY queue",
            &[&now, &(now - THROUGHPUT_WINDOW)],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    rows.iter()
        .map(|r| {
            let e = |err: tokio_postgres::Error| pg_error(ctx, &err);
            let n = |i: usize| -> Result<u64, StoreError> {
                Ok(u64::try_from(r.try_get::<_, i64>(i).map_err(e)?).unwrap_or(0))
            };
            Ok(QueueStats {
                queue: r.try_get(0).map_err(e)?,
                waiting: n(1)?,
                in_flight: n(2)?,
                oldest_waiting: r.try_get(3).map_err(e)?,
                completed: n(4)?,
                failed: n(5)?,
                finished_last_minute: n(6)?,
            })
        })
        .collect()
}

/// [`TaskQueue::record_workers`](crate::store::task::TaskQueue::record_workers).
pub(super) async fn record_workers(
    tx: Tx<'_>,
    seen: &[WorkerRecord],
    forget_before: Millis,
) -> Result<(), StoreError> {
    let ctx = "recording workers";
    for w in seen {
        let queues = serde_json::to_string(&w.queues).unwrap_or_else(|_| "[]".into());
        tx.execute(
            "INSERT INTO workers (id, queues, node, last_poll, last_heartbeat) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET \
             queues = CASE WHEN excluded.last_poll >= workers.last_poll \
                 THEN excluded.queues ELSE workers.queues END, \
             node = CASE WHEN excluded.last_poll >= workers.last_poll \
                 THEN excluded.node ELSE workers.node END, \
             last_poll = GREATEST(workers.last_poll, excluded.last_poll), \
             last_heartbeat = GREATEST(workers.last_heartbeat, excluded.last_heartbeat)",
            &[&w.id, &queues, &w.node, &w.last_poll, &w.last_heartbeat],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    }
    tx.execute(
        "DELETE FROM workers \
         WHERE GREATEST(last_poll, COALESCE(last_heartbeat, last_poll)) < $1::bigint",
        &[&forget_before],
    )
    .await
    .map_err(|e| pg_error(ctx, &e))?;
    Ok(())
}

/// [`TaskQueue::workers`](crate::store::task::TaskQueue::workers).
pub(super) async fn workers(tx: Tx<'_>, since: Millis) -> Result<Vec<WorkerRecord>, StoreError> {
    let ctx = "reading the workers";
    let rows = tx
        .query(
            "SELECT id, queues, node, last_poll, last_heartbeat FROM workers \
             WHERE GREATEST(last_poll, COALESCE(last_heartbeat, last_poll)) >= $1::bigint \
             ORDER BY id",
            &[&since],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    rows.iter()
        .map(|r| {
            let e = |err: tokio_postgres::Error| pg_error(ctx, &err);
            let queues: String = r.try_get(1).map_err(e)?;
            Ok(WorkerRecord {
                id: r.try_get(0).map_err(e)?,
                queues: serde_json::from_str(&queues).unwrap_or_default(),
                node: r.try_get(2).map_err(e)?,
                last_poll: r.try_get(3).map_err(e)?,
                last_heartbeat: r.try_get(4).map_err(e)?,
            })
        })
        .collect()
}
