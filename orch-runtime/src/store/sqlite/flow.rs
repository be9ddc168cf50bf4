//! Workflow queues on SQLite (see [`crate::store::flow`]): the `workflow_queues` table (one
//! configuration per queue) and `queue_entries` (one row per enqueued instance: `queued`, then
//! `admitted`, then `done` once its instance finished, noted by the next admission). Everything
//! that writes runs on the writer thread inside its `BEGIN IMMEDIATE` transaction, which holds
//! the database's write lock across processes: one admission at a time, whoever makes it.

use super::apply::create;
use super::backend;
use super::read::get_record;
use crate::store::flow::{
    Admitted, Enqueued, QueueConfig, QueueEntry, QueueState, Rate, WorkflowQueueStats, plan,
};
use crate::store::{Created, InstanceRecord, Millis, StoreError, Wakeup, WriteOp};
use rusqlite::{Connection, OptionalExtension, params};

/// The final statuses, for SQL.
const FINAL: &str = "('completed', 'failed', 'cancelled', 'terminated', 'incompatible')";

fn ensure_queue(conn: &Connection, queue: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO workflow_queues (name) VALUES (?1) ON CONFLICT DO NOTHING")
        .and_then(|mut s| s.execute([queue]))
        .map_err(|e| backend(&format!("creating workflow queue `{queue}`"), e))?;
    Ok(())
}

/// [`WorkflowQueues::enqueue_instance`](crate::store::flow::WorkflowQueues::enqueue_instance).
pub(super) fn enqueue(
    conn: &Connection,
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
    if let Some(existing) = get_record(conn, &record.id)? {
        return Ok(Enqueued::Existing(Box::new(existing)));
    }
    if let Some(dedup) = &entry.dedup {
        let holder: Option<String> = conn
            .prepare_cached(&format!(
                "SELECT e.instance FROM queue_entries e JOIN instances i ON i.id = e.instance \
                 WHERE e.queue = ?1 AND e.dedup = ?2 AND e.state <> 'done' \
                 AND i.status NOT IN {FINAL} LIMIT 1"
            ))
            .and_then(|mut s| s.query_row([&entry.queue, dedup], |r| r.get(0)).optional())
            .map_err(|e| backend(&ctx(), e))?;
        if let Some(holder) = holder
            && let Some(rec) = get_record(conn, &holder)?
        {
            return Ok(Enqueued::Duplicate(Box::new(rec)));
        }
    }
    if let Created::Existing(existing) = create(conn, record, None)? {
        return Ok(Enqueued::Existing(existing));
    }
    ensure_queue(conn, &entry.queue)?;
    conn.prepare_cached(
        "INSERT INTO queue_entries (instance, queue, priority, ckey, dedup, seq, enqueued_at, \
         state) VALUES (?1, ?2, ?3, ?4, ?5, \
         (SELECT COALESCE(MAX(seq), 0) + 1 FROM queue_entries), ?6, 'queued')",
    )
    .and_then(|mut s| {
        s.execute(params![
            record.id,
            entry.queue,
            entry.priority,
            entry.key,
            entry.dedup,
            record.created_at
        ])
    })
    .map_err(|e| backend(&ctx(), e))?;
    extra
        .iter()
        .try_for_each(|op| super::apply::apply(conn, op, woken))?;
    Ok(Enqueued::New)
}

fn config_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<QueueConfig> {
    let n = |i: usize| -> rusqlite::Result<Option<u32>> {
        Ok(r.get::<_, Option<i64>>(at + i)?
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    };
    let rate = match (n(2)?, r.get::<_, Option<i64>>(at + 3)?) {
        (Some(limit), Some(period_ms)) => Some(Rate { limit, period_ms }),
        _ => None,
    };
    Ok(QueueConfig {
        concurrency: n(0)?,
        per_key: n(1)?,
        rate,
    })
}

/// [`WorkflowQueues::set_queue_config`](crate::store::flow::WorkflowQueues::set_queue_config).
pub(super) fn set_config(
    conn: &Connection,
    queue: &str,
    config: &QueueConfig,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO workflow_queues (name, concurrency, per_key, rate_limit, rate_period_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO UPDATE SET \
         concurrency = excluded.concurrency, per_key = excluded.per_key, \
         rate_limit = excluded.rate_limit, rate_period_ms = excluded.rate_period_ms",
    )
    .and_then(|mut s| {
        s.execute(params![
            queue,
            config.concurrency,
            config.per_key,
            config.rate.map(|r| r.limit),
            config.rate.map(|r| r.period_ms)
        ])
    })
    .map_err(|e| backend(&format!("configuring workflow queue `{queue}`"), e))?;
    Ok(())
}

fn rows<T>(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    conn.prepare_cached(sql)?
        .query_map(p, f)?
        .collect::<rusqlite::Result<_>>()
}

/// [`WorkflowQueues::admit`](crate::store::flow::WorkflowQueues::admit).
pub(super) fn admit(
    conn: &Connection,
    now: Millis,
    limit: usize,
    woken: &mut Vec<Wakeup>,
) -> Result<Admitted, StoreError> {
    let err = |e| backend("admitting queued instances", e);
    // Admitted instances that finished since give their room back.
    conn.prepare_cached(&format!(
        "UPDATE queue_entries SET state = 'done' WHERE state = 'admitted' AND EXISTS \
         (SELECT 1 FROM instances i WHERE i.id = queue_entries.instance AND i.status IN {FINAL})"
    ))
    .and_then(|mut s| s.execute([]))
    .map_err(err)?;
    let queues: Vec<String> = rows(
        conn,
        "SELECT DISTINCT queue FROM queue_entries WHERE state = 'queued' ORDER BY queue",
        [],
        |r| r.get(0),
    )
    .map_err(err)?;
    let mut admitted = Admitted::default();
    for queue in queues {
        let room = limit.saturating_sub(admitted.instances.len());
        if room == 0 {
            break;
        }
        let config = conn
            .prepare_cached(
                "SELECT concurrency, per_key, rate_limit, rate_period_ms FROM workflow_queues \
                 WHERE name = ?1",
            )
            .and_then(|mut s| s.query_row([&queue], |r| config_from(r, 0)).optional())
            .map_err(err)?
            .unwrap_or_default();
        let mut q = QueueState {
            config,
            ..QueueState::default()
        };
        q.running = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM queue_entries WHERE queue = ?1 AND state = 'admitted'",
            )
            .and_then(|mut s| s.query_row([&queue], |r| r.get::<_, i64>(0)))
            .map_err(err)? as u64;
        if config.per_key.is_some() {
            q.running_by_key = rows(
                conn,
                "SELECT ckey, COUNT(*) FROM queue_entries WHERE queue = ?1 \
                 AND state = 'admitted' AND ckey IS NOT NULL GROUP BY ckey",
                [&queue],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(err)?
            .into_iter()
            .collect();
        }
        if let Some(r) = config.rate {
            q.recent = rows(
                conn,
                "SELECT admitted_at FROM queue_entries WHERE queue = ?1 \
                 AND admitted_at > ?2 ORDER BY admitted_at",
                params![queue, now.saturating_sub(r.period_ms)],
                |r| r.get(0),
            )
            .map_err(err)?;
        }
        // Candidates whose key is at its limit are left out here, so a long run of them
        // does not hide the others.
        let want = i64::try_from(room.saturating_mul(4).saturating_add(16)).unwrap_or(i64::MAX);
        q.candidates = rows(
            conn,
            "SELECT e.instance, e.ckey FROM queue_entries e JOIN instances i \
             ON i.id = e.instance WHERE e.queue = ?1 AND e.state = 'queued' \
             AND i.status = 'queued' AND (?2 IS NULL OR e.ckey IS NULL OR \
             (SELECT COUNT(*) FROM queue_entries a WHERE a.queue = e.queue \
              AND a.state = 'admitted' AND a.ckey = e.ckey) < ?2) \
             ORDER BY e.priority DESC, e.seq LIMIT ?3",
            params![queue, config.per_key, want],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
        let (ids, next) = plan(&mut q, now, room);
        for id in &ids {
            conn.prepare_cached(
                "UPDATE queue_entries SET state = 'admitted', admitted_at = ?2 WHERE instance = ?1",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(err)?;
            conn.prepare_cached(
                "UPDATE instances SET status = 'running', wake_at = NULL, updated_at = ?2 \
                 WHERE id = ?1 AND status = 'queued'",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(err)?;
            woken.push(Wakeup::Due {
                instance: id.clone(),
            });
        }
        admitted.instances.extend(ids);
        if let Some(n) = next {
            admitted.next_at = Some(admitted.next_at.map_or(n, |a: Millis| a.min(n)));
        }
    }
    admitted.waiting = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM queue_entries e JOIN instances i ON i.id = e.instance \
             WHERE e.state = 'queued' AND i.status = 'queued'",
        )
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map_err(err)? as u64;
    Ok(admitted)
}

/// [`WorkflowQueues::workflow_queues`](crate::store::flow::WorkflowQueues::workflow_queues).
pub(super) fn stats(conn: &Connection) -> Result<Vec<WorkflowQueueStats>, StoreError> {
    rows(
        conn,
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
        [],
        |r| {
            Ok(WorkflowQueueStats {
                queue: r.get(0)?,
                config: config_from(r, 1)?,
                queued: r.get::<_, i64>(5)? as u64,
                running: r.get::<_, i64>(6)? as u64,
                oldest_queued: r.get(7)?,
            })
        },
    )
    .map_err(|e| backend("reading the workflow queues", e))
}

/// [`stats`] for the read pool's connections.
pub(super) fn stats_mut(conn: &mut Connection) -> Result<Vec<WorkflowQueueStats>, StoreError> {
    stats(conn)
}
