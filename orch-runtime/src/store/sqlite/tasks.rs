//! Task queues on SQLite (see [`crate::store::task`]): the `tasks` table, written inside the
//! writer's transaction. A write transaction holds the database's write lock (`BEGIN
//! IMMEDIATE`, across processes too), so each operation reads the rows it decides on and
//! writes them back with the same rules as every backend ([`TaskRecord`]'s methods).

use super::backend;
use super::read::get_u32;
use crate::store::task::{
    Leased, NewTask, QueueStats, THROUGHPUT_WINDOW, TaskRecord, TaskResult, TaskState,
    WorkerRecord, WorkerTerms,
};
use crate::store::{Millis, StoreError, Wakeup};
use rusqlite::{Connection, OptionalExtension, Row, params};

const COLUMNS: &str = "id, queue, instance, seq, attempt, step, input, idempotency_key, \
     priority, created_at, deadline, state, worker, token, lease_expires_at, output, error, \
     retryable, finished_at";

fn task_from(r: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let state: String = r.get(11)?;
    let state = TaskState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            11,
            rusqlite::types::Type::Text,
            format!("unknown task state `{}`", state.escape_debug()).into(),
        )
    })?;
    let token: i64 = r.get(13)?;
    Ok(TaskRecord {
        task: NewTask {
            id: r.get(0)?,
            queue: r.get(1)?,
            instance: r.get(2)?,
            seq: get_u32(r, 3)?,
            attempt: get_u32(r, 4)?,
            step: r.get(5)?,
            input: r.get(6)?,
            idempotency_key: r.get(7)?,
            priority: r.get(8)?,
            created_at: r.get(9)?,
            deadline: r.get(10)?,
        },
        state,
        worker: r.get(12)?,
        token: u64::try_from(token).unwrap_or(0),
        lease_expires_at: r.get(14)?,
        output: r.get(15)?,
        error: r.get(16)?,
        retryable: r.get(17)?,
        finished_at: r.get(18)?,
    })
}

/// Reads task `id`.
pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<TaskRecord>, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], task_from).optional())
        .map_err(|e| backend(&format!("reading task `{id}`"), e))
}

/// Writes back what may change of a task.
fn put(conn: &Connection, t: &TaskRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE tasks SET state = ?2, worker = ?3, token = ?4, lease_expires_at = ?5, \
         output = ?6, error = ?7, retryable = ?8, finished_at = ?9 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            t.task.id,
            t.state.as_str(),
            t.worker,
            i64::try_from(t.token).unwrap_or(i64::MAX),
            t.lease_expires_at,
            t.output,
            t.error,
            t.retryable,
            t.finished_at
        ])
    })
    .map_err(|e| backend(&format!("updating task `{}`", t.task.id), e))?;
    Ok(())
}

/// [`WriteOp::EnqueueTask`](crate::store::WriteOp::EnqueueTask) of a live instance.
pub(super) fn enqueue(
    conn: &Connection,
    task: &NewTask,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO tasks (id, queue, instance, seq, attempt, step, input, \
             idempotency_key, priority, created_at, deadline, state) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending') \
             ON CONFLICT (id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                task.id,
                task.queue,
                task.instance,
                task.seq,
                task.attempt,
                task.step,
                task.input,
                task.idempotency_key,
                task.priority,
                task.created_at,
                task.deadline
            ])
        })
        .map_err(|e| backend(&format!("enqueueing task `{}`", task.id), e))?;
    if inserted > 0 {
        woken.push(Wakeup::TaskQueued {
            queue: task.queue.clone(),
        });
    }
    Ok(())
}

/// [`WriteOp::CancelTask`](crate::store::WriteOp::CancelTask).
pub(super) fn cancel(
    conn: &Connection,
    instance: &str,
    id: &str,
    at: Millis,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE tasks SET state = 'cancelled', error = 'the instance stopped waiting for it', \
         finished_at = ?3 WHERE id = ?1 AND instance = ?2 AND state IN ('pending', 'leased')",
    )
    .and_then(|mut s| s.execute(params![id, instance, at]))
    .map_err(|e| backend(&format!("cancelling task `{id}`"), e))?;
    Ok(())
}

/// Cancels the open tasks of `instance`, which just ended at `at`.
pub(super) fn cancel_all(conn: &Connection, instance: &str, at: Millis) -> Result<(), StoreError> {
    // Most instances have no open task: look first. (The update alone would collect the rows
    // in a temporary b-tree even when there are none, since it changes the column of the
    // partial index it searches.)
    let open: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE instance = ?1 \
             AND state IN ('pending', 'leased'))",
        )
        .and_then(|mut s| s.query_row([instance], |r| r.get(0)))
        .map_err(|e| backend(&format!("reading the tasks of instance `{instance}`"), e))?;
    if !open {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE tasks SET state = 'cancelled', error = 'its instance ended', finished_at = ?2 \
         WHERE instance = ?1 AND state IN ('pending', 'leased')",
    )
    .and_then(|mut s| s.execute(params![instance, at]))
    .map_err(|e| backend(&format!("cancelling the tasks of instance `{instance}`"), e))?;
    Ok(())
}

/// [`TaskQueue::lease_tasks`](crate::store::task::TaskQueue::lease_tasks).
pub(super) fn lease(
    conn: &Connection,
    terms: &WorkerTerms,
    queues: &[String],
    limit: usize,
) -> Result<Leased, StoreError> {
    let ctx = || format!("leasing tasks for worker `{}`", terms.worker);
    let mut leased = Leased::default();
    for queue in queues {
        let later: Option<Millis> = conn
            .prepare_cached(
                // `state IN (…)` as the partial index has it, so the index serves the query
                // (else every task ever stored is read).
                "SELECT MIN(lease_expires_at) FROM tasks WHERE queue = ?1 \
                 AND state IN ('pending', 'leased') AND state = 'leased' \
                 AND lease_expires_at > ?2 AND (deadline IS NULL OR deadline > ?2)",
            )
            .and_then(|mut s| s.query_row(params![queue, terms.now], |r| r.get(0)))
            .map_err(|e| backend(&ctx(), e))?;
        if let Some(later) = later {
            leased.next_expiry = Some(leased.next_expiry.map_or(later, |n| n.min(later)));
        }
        let room = limit.saturating_sub(leased.tasks.len());
        let open: Vec<TaskRecord> = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tasks WHERE queue = ?1 AND state IN ('pending', 'leased') \
                 AND (state = 'pending' OR lease_expires_at <= ?2) \
                 AND (deadline IS NULL OR deadline > ?2) \
                 ORDER BY priority DESC, created_at LIMIT ?3"
            ))
            .and_then(|mut s| {
                s.query_map(
                    params![queue, terms.now, i64::try_from(room).unwrap_or(i64::MAX)],
                    task_from,
                )?
                .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| backend(&ctx(), e))?;
        for mut t in open {
            if t.leasable_or_later(terms.now) == Some(None) {
                leased.tasks.push(t.lease(terms));
                put(conn, &t)?;
            }
        }
    }
    // Queues were read one by one: hand out the best of all of them first.
    leased
        .tasks
        .sort_by_key(|l| (-i64::from(l.task.priority), l.task.created_at));
    Ok(leased)
}

/// [`TaskQueue::heartbeat_task`](crate::store::task::TaskQueue::heartbeat_task).
pub(super) fn heartbeat(
    conn: &Connection,
    id: &str,
    token: u64,
    terms: &WorkerTerms,
) -> Result<Millis, StoreError> {
    let mut t = get(conn, id)?.ok_or_else(|| TaskRecord::missing(id, token))?;
    t.held(token, terms.now)?;
    t.lease_expires_at = Some(terms.expires_at());
    put(conn, &t)?;
    Ok(terms.expires_at())
}

/// [`TaskQueue::finish_task`](crate::store::task::TaskQueue::finish_task): ends the task and
/// wakes its instance.
pub(super) fn finish(
    conn: &Connection,
    id: &str,
    token: u64,
    result: &TaskResult,
    now: Millis,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let mut t = get(conn, id)?.ok_or_else(|| TaskRecord::missing(id, token))?;
    t.held(token, now)?;
    t.finish(result.clone(), now);
    put(conn, &t)?;
    super::apply::wake_instance(conn, &t.task.instance, now, woken)?;
    woken.push(Wakeup::TaskFinished {
        instance: t.task.instance,
        task: id.to_string(),
    });
    Ok(())
}

/// [`TaskQueue::queue_stats`](crate::store::task::TaskQueue::queue_stats).
pub(super) fn stats(conn: &Connection, now: Millis) -> Result<Vec<QueueStats>, StoreError> {
    conn.prepare_cached(
        "SELECT queue, \
         SUM(state = 'pending' OR (state = 'leased' AND lease_expires_at <= ?1)), \
         SUM(state = 'leased' AND lease_expires_at > ?1), \
         MIN(CASE WHEN state = 'pending' OR (state = 'leased' AND lease_expires_at <= ?1) \
             THEN created_at END), \
         SUM(state = 'completed'), SUM(state = 'failed'), \
         SUM(state IN ('completed', 'failed') AND finished_at > ?2 AND finished_at <= ?1) \
         FROM tasks GROUP BY queue ORDER BY queue",
    )
    .and_then(|mut s| {
        s.query_map([now, now - THROUGHPUT_WINDOW], |r| {
            let n = |i: usize| -> rusqlite::Result<u64> {
                Ok(u64::try_from(r.get::<_, Option<i64>>(i)?.unwrap_or(0)).unwrap_or(0))
            };
            Ok(QueueStats {
                queue: r.get(0)?,
                waiting: n(1)?,
                in_flight: n(2)?,
                oldest_waiting: r.get(3)?,
                completed: n(4)?,
                failed: n(5)?,
                finished_last_minute: n(6)?,
            })
        })?
        .collect()
    })
    .map_err(|e| backend("reading the queues", e))
}

/// [`TaskQueue::record_workers`](crate::store::task::TaskQueue::record_workers).
pub(super) fn record_workers(
    conn: &Connection,
    seen: &[WorkerRecord],
    forget_before: Millis,
) -> Result<(), StoreError> {
    let ctx = "recording workers";
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO workers (id, queues, node, last_poll, last_heartbeat) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (id) DO UPDATE SET \
             queues = CASE WHEN excluded.last_poll >= workers.last_poll \
                 THEN excluded.queues ELSE workers.queues END, \
             node = CASE WHEN excluded.last_poll >= workers.last_poll \
                 THEN excluded.node ELSE workers.node END, \
             last_poll = MAX(workers.last_poll, excluded.last_poll), \
             last_heartbeat = CASE WHEN workers.last_heartbeat IS NULL THEN excluded.last_heartbeat \
                 WHEN excluded.last_heartbeat IS NULL THEN workers.last_heartbeat \
                 ELSE MAX(workers.last_heartbeat, excluded.last_heartbeat) END",
        )
        .map_err(|e| backend(ctx, e))?;
    for w in seen {
        let queues = serde_json::to_string(&w.queues).unwrap_or_else(|_| "[]".into());
        upsert
            .execute(params![w.id, queues, w.node, w.last_poll, w.last_heartbeat])
            .map_err(|e| backend(ctx, e))?;
    }
    conn.prepare_cached(
        "DELETE FROM workers WHERE MAX(last_poll, COALESCE(last_heartbeat, last_poll)) < ?1",
    )
    .and_then(|mut s| s.execute([forget_before]))
    .map_err(|e| backend(ctx, e))?;
    Ok(())
}

/// [`TaskQueue::workers`](crate::store::task::TaskQueue::workers).
pub(super) fn workers(conn: &Connection, since: Millis) -> Result<Vec<WorkerRecord>, StoreError> {
    conn.prepare_cached(
        "SELECT id, queues, node, last_poll, last_heartbeat FROM workers \
         WHERE MAX(last_poll, COALESCE(last_heartbeat, last_poll)) >= ?1 ORDER BY id",
    )
    .and_then(|mut s| {
        s.query_map([since], |r| {
            let queues: String = r.get(1)?;
            Ok(WorkerRecord {
                id: r.get(0)?,
                queues: serde_json::from_str(&queues).unwrap_or_default(),
                node: r.get(2)?,
                last_poll: r.get(3)?,
                last_heartbeat: r.get(4)?,
            })
        })?
        .collect()
    })
    .map_err(|e| backend("reading the workers", e))
}
