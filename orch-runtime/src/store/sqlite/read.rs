//! Reads: the reader threads, records, whole instances (one snapshot), lists.

use super::backend;
use crate::store::{
    AttemptRecord, EntryKind, InstanceRecord, JournalEntry, ListFilter, LoadedInstance,
    SignalRecord, Status, StoreError,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row};
use std::sync::{Mutex, mpsc};

pub(super) const INSTANCE_COLUMNS: &str = "id, workflow, version, input, status, output, error, \
     custom_status, parent, created_at, updated_at, wake_at, failed_step, failed_seq, \
     cancel_requested, cancel_seq, retries";

/// A read to run on a reader thread's connection.
pub(super) type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// Reader threads (each with its own connection).
pub(super) const READERS: usize = 2;

pub(super) fn reader_loop(mut conn: Connection, queue: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        let job = {
            let rx = queue.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        match job {
            // A panicking read must not take the thread down with the queue still in use.
            Ok(job) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)))
                    .is_err()
                {
                    tracing::error!("a SQLite read panicked");
                }
            }
            Err(_) => return,
        }
    }
}

pub(super) fn parse_status(id: &str, raw: &str) -> Result<Status, StoreError> {
    Status::parse(raw).ok_or_else(|| {
        StoreError::Backend(format!(
            "instance `{id}` has an unknown status `{raw}` in the database"
        ))
    })
}

/// Reads a column holding a `u32`, refusing out-of-range values instead of truncating.
pub(super) fn get_u32(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    let v: i64 = row.get(idx)?;
    u32::try_from(v).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Integer, e.into())
    })
}

/// An attempt from the columns `seq, attempt, error, started_at, finished_at` at `first`.
pub(super) fn attempt_from(r: &Row<'_>, first: usize) -> rusqlite::Result<AttemptRecord> {
    Ok(AttemptRecord {
        seq: get_u32(r, first)?,
        attempt: get_u32(r, first + 1)?,
        error: r.get(first + 2)?,
        started_at: r.get(first + 3)?,
        finished_at: r.get(first + 4)?,
    })
}

/// A record as read, with the status still raw so a bad value becomes an error, not a panic.
fn record_from_row(row: &Row<'_>) -> rusqlite::Result<(InstanceRecord, String)> {
    let raw_status: String = row.get(4)?;
    Ok((
        InstanceRecord {
            id: row.get(0)?,
            workflow: row.get(1)?,
            version: row.get(2)?,
            input: row.get(3)?,
            status: Status::Running,
            output: row.get(5)?,
            error: row.get(6)?,
            custom_status: row.get(7)?,
            parent: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
            wake_at: row.get(11)?,
            failed_step: row.get(12)?,
            failed_seq: row
                .get::<_, Option<i64>>(13)?
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            cancel_requested: row.get(14)?,
            cancel_seq: row
                .get::<_, Option<i64>>(15)?
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            retries: get_u32(row, 16)?,
        },
        raw_status,
    ))
}

fn finish_record((mut rec, raw): (InstanceRecord, String)) -> Result<InstanceRecord, StoreError> {
    rec.status = parse_status(&rec.id, &raw)?;
    Ok(rec)
}

pub(super) fn get_record(
    conn: &Connection,
    id: &str,
) -> Result<Option<InstanceRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row([id], record_from_row).optional())
    .map_err(|e| backend(&format!("reading instance `{id}`"), e))?
    .map(finish_record)
    .transpose()
}

pub(super) fn load_instance(
    conn: &mut Connection,
    id: &str,
) -> Result<Option<LoadedInstance>, StoreError> {
    let ctx = format!("loading instance `{id}`");
    // One read transaction: record, journal and signals come from the same snapshot.
    let tx = conn.transaction().map_err(|e| backend(&ctx, e))?;
    let Some(record) = get_record(&tx, id)? else {
        return Ok(None);
    };
    let journal = journal_rows(
        &tx,
        "SELECT 0, seq, kind, name, outcome, attempts, started_at, finished_at \
         FROM journal WHERE instance = ?1 ORDER BY seq",
        id,
        &ctx,
    )?
    .into_iter()
    .map(|(_, e)| e)
    .collect();
    let attempts = tx
        .prepare_cached(
            "SELECT seq, attempt, error, started_at, finished_at FROM attempts \
             WHERE instance = ?1 ORDER BY seq, attempt",
        )
        .and_then(|mut s| {
            s.query_map([id], |r| attempt_from(r, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(&ctx, e))?;
    let signals = tx
        .prepare_cached(
            "SELECT id, name, payload, received_at FROM signals \
             WHERE instance = ?1 AND consumed_seq IS NULL ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([id], |r| {
                Ok(SignalRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    payload: r.get(2)?,
                    received_at: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(&ctx, e))?;
    let ended_timers = tx
        .prepare_cached("SELECT seq FROM ended_timers WHERE instance = ?1 ORDER BY seq")
        .and_then(|mut s| {
            s.query_map([id], |r| get_u32(r, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(&ctx, e))?;
    tx.commit().map_err(|e| backend(&ctx, e))?;
    Ok(Some(LoadedInstance {
        record,
        journal,
        attempts,
        signals,
        ended_timers,
    }))
}

pub(super) fn query_records(
    conn: &Connection,
    sql: &str,
    params: Vec<Value>,
    ctx: &str,
) -> Result<Vec<InstanceRecord>, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(params), record_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(ctx, e))?
        .into_iter()
        .map(finish_record)
        .collect()
}

pub(super) fn list_records(
    conn: &Connection,
    filter: &ListFilter,
) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE 1 = 1");
    let mut params = Vec::new();
    if let Some(workflow) = &filter.workflow {
        sql.push_str(" AND workflow = ?");
        params.push(Value::Text(workflow.clone()));
    }
    if let Some(status) = filter.status {
        sql.push_str(" AND status = ?");
        params.push(Value::Text(status.as_str().to_string()));
    }
    if let Some(parent) = &filter.parent {
        sql.push_str(" AND parent = ?");
        params.push(Value::Text(parent.clone()));
    }
    if let Some(after) = &filter.after_id {
        sql.push_str(" AND id > ?");
        params.push(Value::Text(after.clone()));
    }
    sql.push_str(" ORDER BY id");
    if filter.limit > 0 {
        sql.push_str(" LIMIT ?");
        params.push(Value::Integer(
            i64::try_from(filter.limit).unwrap_or(i64::MAX),
        ));
    }
    query_records(conn, &sql, params, "listing instances")
}

pub(super) fn journal_rows(
    conn: &Connection,
    sql: &str,
    id: &str,
    ctx: &str,
) -> Result<Vec<(u32, JournalEntry)>, StoreError> {
    let raw = conn
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map([id], |r| {
                Ok((
                    get_u32(r, 0)?,
                    get_u32(r, 1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    get_u32(r, 5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(ctx, e))?;
    raw.into_iter()
        .map(
            |(group, seq, kind, name, outcome, attempts, started_at, finished_at)| {
                let kind = EntryKind::decode_stored(id, seq, &kind).map_err(StoreError::Backend)?;
                Ok((
                    group,
                    JournalEntry {
                        seq,
                        kind,
                        name,
                        outcome,
                        attempts,
                        started_at,
                        finished_at,
                    },
                ))
            },
        )
        .collect()
}
