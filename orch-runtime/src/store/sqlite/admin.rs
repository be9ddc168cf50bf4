//! Search, details, attributes, counts, stats, aggregates and the audit log.

use super::backend;
use super::read::{
    INSTANCE_COLUMNS, attempt_from, get_u32, journal_rows, load_instance, parse_status,
    query_records,
};
use crate::store::{
    Aggregate, AttributeMap, AuditRecord, BucketCount, Details, InstanceRecord, Query, Stats,
    StatsQuery, StatusCount, StepCount, StoreError, Superseded,
};
use rusqlite::Connection;
use rusqlite::types::Value;
use std::collections::{BTreeMap, HashMap};

/// The WHERE clause (without cursor) and parameters of a search.
fn query_where(q: &Query) -> (String, Vec<Value>) {
    let mut sql = String::from(" WHERE 1 = 1");
    let mut params = Vec::new();
    if let Some(workflow) = &q.workflow {
        sql.push_str(" AND i.workflow = ?");
        params.push(Value::Text(workflow.clone()));
    }
    if !q.statuses.is_empty() {
        sql.push_str(" AND i.status IN (");
        for (n, st) in q.statuses.iter().enumerate() {
            sql.push_str(if n == 0 { "?" } else { ", ?" });
            params.push(Value::Text(st.as_str().to_string()));
        }
        sql.push(')');
    }
    if let Some(t) = q.created_after {
        sql.push_str(" AND i.created_at >= ?");
        params.push(Value::Integer(t));
    }
    if let Some(t) = q.created_before {
        sql.push_str(" AND i.created_at < ?");
        params.push(Value::Integer(t));
    }
    if let Some(t) = q.updated_after {
        sql.push_str(" AND i.updated_at >= ?");
        params.push(Value::Integer(t));
    }
    if let Some(prefix) = &q.id_prefix {
        // substr instead of LIKE: no wildcard escaping, and case-sensitive like ids.
        sql.push_str(" AND substr(i.id, 1, ?) = ?");
        params.push(Value::Integer(prefix.chars().count() as i64));
        params.push(Value::Text(prefix.clone()));
    }
    if let Some(parent) = &q.parent {
        sql.push_str(" AND i.parent = ?");
        params.push(Value::Text(parent.clone()));
    }
    for (key, value) in &q.attributes {
        // Stored values are canonical JSON text (serde_json), so text equality is value
        // equality for strings, bools and integers; numbers also compare numerically.
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM attributes a WHERE a.instance = i.id AND a.key = ? \
             AND (a.value = ? OR (json_valid(a.value) AND json_valid(?) \
             AND json_type(a.value) IN ('integer', 'real') \
             AND json_type(?) IN ('integer', 'real') AND CAST(a.value AS REAL) = CAST(? AS REAL))))",
        );
        params.push(Value::Text(key.clone()));
        let canonical = serde_json::from_str::<serde_json::Value>(value)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| value.clone());
        params.push(Value::Text(canonical));
        params.push(Value::Text(value.clone()));
        params.push(Value::Text(value.clone()));
        params.push(Value::Text(value.clone()));
    }
    (sql, params)
}

pub(super) fn search_records(
    conn: &Connection,
    q: &Query,
) -> Result<Vec<InstanceRecord>, StoreError> {
    let (mut where_sql, mut params) = query_where(q);
    if let Some(c) = &q.after {
        where_sql.push_str(" AND (i.created_at < ? OR (i.created_at = ? AND i.id < ?))");
        params.push(Value::Integer(c.created_at));
        params.push(Value::Integer(c.created_at));
        params.push(Value::Text(c.id.clone()));
    }
    // The only table in the outer query is `instances i`, so its columns need no prefix.
    let mut sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances i{where_sql} \
         ORDER BY i.created_at DESC, i.id DESC"
    );
    if q.limit > 0 {
        sql.push_str(" LIMIT ?");
        params.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    }
    query_records(conn, &sql, params, "searching instances")
}

pub(super) fn instance_details(
    conn: &mut Connection,
    id: &str,
) -> Result<Option<Details>, StoreError> {
    let ctx = format!("reading instance `{id}`");
    let Some(loaded) = load_instance(conn, id)? else {
        return Ok(None);
    };
    let attributes = attributes_of(conn, &[id.to_string()])?
        .remove(id)
        .unwrap_or_default();
    let superseded = journal_rows(
        conn,
        "SELECT retry, seq, kind, name, outcome, attempts, started_at, finished_at \
         FROM superseded WHERE instance = ?1 ORDER BY retry, seq",
        id,
        &ctx,
    )?
    .into_iter()
    .map(|(retry, entry)| Superseded { retry, entry })
    .collect();
    let superseded_attempts = conn
        .prepare_cached(
            "SELECT retry, seq, attempt, error, started_at, finished_at FROM \
             superseded_attempts WHERE instance = ?1 ORDER BY retry, seq, attempt",
        )
        .and_then(|mut s| {
            s.query_map([id], |r| Ok((get_u32(r, 0)?, attempt_from(r, 1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(&ctx, e))?;
    Ok(Some(Details {
        record: loaded.record,
        journal: loaded.journal,
        attempts: loaded.attempts,
        signals: loaded.signals,
        attributes,
        superseded,
        superseded_attempts,
    }))
}

pub(super) fn attributes_of(conn: &Connection, ids: &[String]) -> Result<AttributeMap, StoreError> {
    let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM attributes WHERE instance = ?1 ORDER BY key")
        .map_err(|e| backend("reading attributes", e))?;
    for id in ids {
        let rows = stmt
            .query_map([id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| backend("reading attributes", e))?;
        if !rows.is_empty() {
            out.insert(id.clone(), rows.into_iter().collect());
        }
    }
    Ok(out)
}

fn status_counts(
    conn: &Connection,
    sql: &str,
    params: Vec<Value>,
    ctx: &str,
) -> Result<Vec<(i64, String, String, u64)>, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(params), |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)?.max(0) as u64,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(ctx, e))
}

pub(super) fn counts_all(conn: &Connection) -> Result<Vec<StatusCount>, StoreError> {
    status_counts(
        conn,
        "SELECT 0, workflow, status, COUNT(*) FROM instances GROUP BY workflow, status \
         ORDER BY workflow, status",
        Vec::new(),
        "counting instances",
    )?
    .into_iter()
    .map(|(_, workflow, status, count)| {
        Ok(StatusCount {
            status: parse_status(&workflow, &status)?,
            workflow,
            count,
        })
    })
    .collect()
}

pub(super) fn stats_window(conn: &Connection, q: &StatsQuery) -> Result<Stats, StoreError> {
    let mut where_sql = String::from(" WHERE created_at >= ? AND created_at < ?");
    let mut params = vec![Value::Integer(q.from), Value::Integer(q.to)];
    if let Some(w) = &q.workflow {
        where_sql.push_str(" AND workflow = ?");
        params.push(Value::Text(w.clone()));
    }
    let ctx = "counting instances in a window";
    let totals = status_counts(
        conn,
        &format!(
            "SELECT 0, workflow, status, COUNT(*) FROM instances{where_sql} \
             GROUP BY workflow, status ORDER BY workflow, status"
        ),
        params.clone(),
        ctx,
    )?;
    let bucket = q.bucket_ms.max(1);
    let mut series_params = vec![Value::Integer(q.from), Value::Integer(bucket)];
    series_params.extend(params.iter().cloned());
    let series = status_counts(
        conn,
        &format!(
            "SELECT ?1 + ((created_at - ?1) / ?2) * ?2 AS b, workflow, status, COUNT(*) \
             FROM instances{} GROUP BY b, workflow, status ORDER BY b, workflow, status",
            where_sql
                .replacen("created_at >= ?", "created_at >= ?3", 1)
                .replacen("created_at < ?", "created_at < ?4", 1)
                .replacen("workflow = ?", "workflow = ?5", 1)
        ),
        series_params,
        ctx,
    )?;
    let steps = conn
        .prepare_cached(&format!(
            "SELECT workflow, failed_step, COUNT(*) FROM instances{where_sql} \
             AND failed_step IS NOT NULL AND status IN ('failed', 'cancelled') \
             GROUP BY workflow, failed_step ORDER BY workflow, failed_step"
        ))
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(params), |r| {
                Ok(StepCount {
                    workflow: r.get(0)?,
                    step: r.get(1)?,
                    count: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| backend(ctx, e))?;
    let status = |w: &str, s: &str| parse_status(w, s);
    Ok(Stats {
        totals: totals
            .into_iter()
            .map(|(_, workflow, st, count)| {
                Ok(StatusCount {
                    status: status(&workflow, &st)?,
                    workflow,
                    count,
                })
            })
            .collect::<Result<_, StoreError>>()?,
        series: series
            .into_iter()
            .map(|(start, workflow, st, count)| {
                Ok(BucketCount {
                    start,
                    status: status(&workflow, &st)?,
                    workflow,
                    count,
                })
            })
            .collect::<Result<_, StoreError>>()?,
        failed_steps: steps,
    })
}

pub(super) fn aggregate_attribute(
    conn: &Connection,
    key: &str,
    q: &Query,
) -> Result<Aggregate, StoreError> {
    let (where_sql, mut params) = query_where(q);
    let sql = format!(
        "SELECT COUNT(*), \
         SUM(json_type(a.value) IN ('integer', 'real')), \
         SUM(CASE WHEN json_type(a.value) IN ('integer', 'real') THEN CAST(a.value AS REAL) END), \
         MIN(CASE WHEN json_type(a.value) IN ('integer', 'real') THEN CAST(a.value AS REAL) END), \
         MAX(CASE WHEN json_type(a.value) IN ('integer', 'real') THEN CAST(a.value AS REAL) END) \
         FROM instances i JOIN attributes a ON a.instance = i.id AND a.key = ?{where_sql} \
         AND json_valid(a.value)"
    );
    params.insert(0, Value::Text(key.to_string()));
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(rusqlite::params_from_iter(params), |r| {
                Ok(Aggregate {
                    count: r.get::<_, i64>(0)?.max(0) as u64,
                    numeric: r.get::<_, Option<i64>>(1)?.unwrap_or(0).max(0) as u64,
                    sum: r.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
                    min: r.get(3)?,
                    max: r.get(4)?,
                })
            })
        })
        .map_err(|e| backend(&format!("aggregating attribute `{key}`"), e))
}

pub(super) fn audit_records(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<AuditRecord>, StoreError> {
    conn.prepare_cached(
        "SELECT at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
    )
    .and_then(|mut s| {
        s.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(AuditRecord {
                at: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                target: r.get(3)?,
                detail: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(|e| backend("reading the audit log", e))
}

/// See [`StoreAdmin::unfinished`](crate::store::StoreAdmin::unfinished). The scan follows the
/// primary key from `after` (the `+` keeps the planner off the status indexes, which would sort
/// every unfinished instance again for each page), so a walk over all pages reads each row once.
pub(super) fn unfinished(
    conn: &mut Connection,
    workflow: Option<String>,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut sql = String::from(
        "SELECT id FROM instances WHERE +status IN ('queued', 'running', 'suspended')",
    );
    let mut params = Vec::new();
    if let Some(w) = workflow {
        sql.push_str(" AND +workflow = ?");
        params.push(Value::Text(w));
    }
    if let Some(a) = after {
        sql.push_str(" AND id > ?");
        params.push(Value::Text(a));
    }
    sql.push_str(" ORDER BY id");
    if limit > 0 {
        sql.push_str(" LIMIT ?");
        params.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    }
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(params), |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(|e| backend("listing unfinished instances", e))
}
