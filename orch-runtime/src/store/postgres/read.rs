//! Reads: records, whole instances (one snapshot), lists.

use super::apply::{Param, Tx};
use super::{Shared, pg_error};
use crate::store::{
    AttemptRecord, EntryKind, InstanceRecord, JournalEntry, ListFilter, LoadedInstance,
    SignalRecord, Status, StoreError,
};
use deadpool_postgres::Object;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub(crate) const INSTANCE_COLUMNS: &str = "id, workflow, version, input, status, output, error, \
     custom_status, parent, created_at, updated_at, wake_at, failed_step, failed_seq, \
     cancel_requested, cancel_seq, retries";

/// A pooled connection for a read.
pub(crate) async fn connection(shared: &Shared, what: &str) -> Result<Object, StoreError> {
    shared.pool.get().await.map_err(|e| {
        StoreError::Backend(format!(
            "{what}: no connection to {} ({e}); check that PostgreSQL is up and reachable",
            shared.shown
        ))
    })
}

/// Runs `f` in one read-only snapshot (REPEATABLE READ) on a pooled connection; the
/// transaction ends however `f` ends.
pub(crate) async fn in_snapshot<T, F>(shared: &Shared, what: &str, f: F) -> Result<T, StoreError>
where
    F: AsyncFnOnce(Tx<'_>) -> Result<T, StoreError>,
{
    let client = connection(shared, what).await?;
    let tx = Tx::new(&client);
    // BEGIN is pipelined with the reads (sent first on the connection, answered in order).
    let (begun, result) = futures_util::future::join(
        tx.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        f(tx),
    )
    .await;
    let result = begun.map_err(|e| pg_error(what, &e)).and(result);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    if let Err(e) = tx.batch(end).await {
        // A connection that cannot end its transaction must not go back to the pool.
        drop(Object::take(client));
        return result.and(Err(pg_error(what, &e)));
    }
    result
}

pub(crate) fn parse_status(id: &str, raw: &str) -> Result<Status, StoreError> {
    Status::parse(raw).ok_or_else(|| {
        StoreError::Backend(format!(
            "instance `{id}` has an unknown status `{raw}` in the database"
        ))
    })
}

/// Reads a column holding a `u32`, refusing out-of-range values instead of truncating.
pub(crate) fn get_u32(row: &Row, idx: usize, ctx: &str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(idx).map_err(|e| pg_error(ctx, &e))?;
    u32::try_from(v)
        .map_err(|_| StoreError::Backend(format!("{ctx}: column {idx} holds {v}, out of range")))
}

pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    ctx: &str,
) -> Result<T, StoreError> {
    row.try_get(idx).map_err(|e| pg_error(ctx, &e))
}

/// A record from the [`INSTANCE_COLUMNS`] of `row`.
pub(crate) fn record_from_row(row: &Row, ctx: &str) -> Result<InstanceRecord, StoreError> {
    let id: String = get(row, 0, ctx)?;
    let raw: String = get(row, 4, ctx)?;
    let opt_u32 = |idx: usize| -> Result<Option<u32>, StoreError> {
        Ok(get::<Option<i64>>(row, idx, ctx)?.map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    };
    Ok(InstanceRecord {
        status: parse_status(&id, &raw)?,
        workflow: get(row, 1, ctx)?,
        version: get(row, 2, ctx)?,
        input: get(row, 3, ctx)?,
        output: get(row, 5, ctx)?,
        error: get(row, 6, ctx)?,
        custom_status: get(row, 7, ctx)?,
        parent: get(row, 8, ctx)?,
        created_at: get(row, 9, ctx)?,
        updated_at: get(row, 10, ctx)?,
        wake_at: get(row, 11, ctx)?,
        failed_step: get(row, 12, ctx)?,
        failed_seq: opt_u32(13)?,
        cancel_requested: get(row, 14, ctx)?,
        cancel_seq: opt_u32(15)?,
        retries: get_u32(row, 16, ctx)?,
        id,
    })
}

pub(crate) async fn query_records(
    tx: Tx<'_>,
    sql: &str,
    params: &[Param<'_>],
    ctx: &str,
) -> Result<Vec<InstanceRecord>, StoreError> {
    tx.query(sql, params)
        .await
        .map_err(|e| pg_error(ctx, &e))?
        .iter()
        .map(|r| record_from_row(r, ctx))
        .collect()
}

pub(crate) async fn get_record(tx: Tx<'_>, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    let ctx = format!("reading instance `{id}`");
    const SQL: &str = "SELECT id, workflow, version, input, status, output, error, \
         custom_status, parent, created_at, updated_at, wake_at, failed_step, failed_seq, \
         cancel_requested, cancel_seq, retries FROM instances WHERE id = $1";
    tx.query_opt(SQL, &[&id])
        .await
        .map_err(|e| pg_error(&ctx, &e))?
        .map(|r| record_from_row(&r, &ctx))
        .transpose()
}

/// Journal rows `(group, seq, kind, name, outcome, attempts, started_at, finished_at)`.
pub(crate) async fn journal_rows(
    tx: Tx<'_>,
    sql: &str,
    id: &str,
    ctx: &str,
) -> Result<Vec<(u32, JournalEntry)>, StoreError> {
    let rows = tx.query(sql, &[&id]).await.map_err(|e| pg_error(ctx, &e))?;
    rows.iter()
        .map(|r| {
            let seq = get_u32(r, 1, ctx)?;
            let kind: String = get(r, 2, ctx)?;
            let kind = EntryKind::decode_stored(id, seq, &kind).map_err(StoreError::Backend)?;
            Ok((
                get_u32(r, 0, ctx)?,
                JournalEntry {
                    seq,
                    kind,
                    name: get(r, 3, ctx)?,
                    outcome: get(r, 4, ctx)?,
                    attempts: get_u32(r, 5, ctx)?,
                    started_at: get(r, 6, ctx)?,
                    finished_at: get(r, 7, ctx)?,
                },
            ))
        })
        .collect()
}

/// An attempt from the columns `seq, attempt, error, started_at, finished_at` at `first`.
pub(crate) fn attempt_from(r: &Row, first: usize, ctx: &str) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        seq: get_u32(r, first, ctx)?,
        attempt: get_u32(r, first + 1, ctx)?,
        error: get(r, first + 2, ctx)?,
        started_at: get(r, first + 3, ctx)?,
        finished_at: get(r, first + 4, ctx)?,
    })
}

/// Everything needed to resume `id`, read in the snapshot `tx` (the queries are pipelined).
pub(crate) async fn load_in(tx: Tx<'_>, id: &str) -> Result<Option<LoadedInstance>, StoreError> {
    let ctx = format!("loading instance `{id}`");
    let by_id: [Param<'_>; 1] = [&id];
    let (record, journal, attempts, signals, ended) = tokio::join!(
        get_record(tx, id),
        journal_rows(
            tx,
            "SELECT 0::bigint, seq, kind, name, outcome, attempts, started_at, finished_at \
             FROM journal WHERE instance = $1 ORDER BY seq",
            id,
            &ctx,
        ),
        tx.query(
            "SELECT seq, attempt, error, started_at, finished_at FROM attempts \
             WHERE instance = $1 ORDER BY seq, attempt",
            &by_id,
        ),
        tx.query(
            "SELECT id, name, payload, received_at FROM signals \
             WHERE instance = $1 AND consumed_seq IS NULL ORDER BY id",
            &by_id,
        ),
        tx.query(
            "SELECT seq FROM ended_timers WHERE instance = $1 ORDER BY seq",
            &by_id,
        ),
    );
    let Some(record) = record? else {
        return Ok(None);
    };
    let journal = journal?.into_iter().map(|(_, e)| e).collect();
    let attempts = attempts
        .map_err(|e| pg_error(&ctx, &e))?
        .iter()
        .map(|r| attempt_from(r, 0, &ctx))
        .collect::<Result<_, _>>()?;
    let signals = signals
        .map_err(|e| pg_error(&ctx, &e))?
        .iter()
        .map(|r| {
            Ok(SignalRecord {
                id: get(r, 0, &ctx)?,
                name: get(r, 1, &ctx)?,
                payload: get(r, 2, &ctx)?,
                received_at: get(r, 3, &ctx)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let ended_timers = ended
        .map_err(|e| pg_error(&ctx, &e))?
        .iter()
        .map(|r| get_u32(r, 0, &ctx))
        .collect::<Result<_, _>>()?;
    Ok(Some(LoadedInstance {
        record,
        journal,
        attempts,
        signals,
        ended_timers,
    }))
}

pub(crate) async fn load(shared: &Shared, id: &str) -> Result<Option<LoadedInstance>, StoreError> {
    in_snapshot(shared, &format!("loading instance `{id}`"), async |tx| {
        load_in(tx, id).await
    })
    .await
}

pub(crate) async fn get_one(
    shared: &Shared,
    id: &str,
) -> Result<Option<InstanceRecord>, StoreError> {
    let client = connection(shared, &format!("reading instance `{id}`")).await?;
    get_record(Tx::new(&client), id).await
}

pub(crate) async fn list(
    shared: &Shared,
    filter: &ListFilter,
) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE true");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut add = |sql: &mut String, clause: &str, p: Box<dyn ToSql + Sync + Send>| {
        params.push(p);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(workflow) = &filter.workflow {
        add(&mut sql, " AND workflow = ?", Box::new(workflow.clone()));
    }
    if let Some(status) = filter.status {
        add(&mut sql, " AND status = ?", Box::new(status.as_str()));
    }
    if let Some(parent) = &filter.parent {
        add(&mut sql, " AND parent = ?", Box::new(parent.clone()));
    }
    if let Some(after) = &filter.after_id {
        add(&mut sql, " AND id > ?", Box::new(after.clone()));
    }
    sql.push_str(" ORDER BY id");
    if filter.limit > 0 {
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        add(&mut sql, " LIMIT ?", Box::new(limit));
    }
    let client = connection(shared, "listing instances").await?;
    let refs: Vec<Param<'_>> = params.iter().map(|p| &**p as Param<'_>).collect();
    query_records(Tx::new(&client), &sql, &refs, "listing instances").await
}
