//! Search, details, attributes, counts, stats, aggregates and the audit log.

use super::apply::{Param, Tx, attribute_number};
use super::read::{
    INSTANCE_COLUMNS, attempt_from, connection, get, get_u32, in_snapshot, journal_rows, load_in,
    parse_status, query_records,
};
use super::{Shared, pg_error};
use crate::store::{
    Aggregate, AttributeMap, AuditRecord, BucketCount, Details, InstanceRecord, Query, Stats,
    StatsQuery, StatusCount, StepCount, StoreError, Superseded,
};
use tokio_postgres::types::ToSql;

/// SQL with numbered parameters, built a clause at a time.
#[derive(Default)]
struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    /// Appends `clause`, each `?` in it taking the next of `values`.
    fn push(&mut self, clause: &str, values: Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut values = values.into_iter();
        for (n, part) in clause.split('?').enumerate() {
            if n > 0 {
                if let Some(v) = values.next() {
                    self.params.push(v);
                }
                self.text.push_str(&format!("${}", self.params.len()));
            }
            self.text.push_str(part);
        }
    }

    fn refs(&self) -> Vec<Param<'_>> {
        self.params.iter().map(|p| &**p as Param<'_>).collect()
    }
}

/// Appends the WHERE clause of a search (cursor aside) to `sql`.
fn query_where(sql: &mut Sql, q: &Query) {
    sql.push(" WHERE true", vec![]);
    if let Some(workflow) = &q.workflow {
        sql.push(" AND i.workflow = ?", vec![Box::new(workflow.clone())]);
    }
    if !q.statuses.is_empty() {
        let names: Vec<String> = q.statuses.iter().map(|s| s.as_str().to_string()).collect();
        sql.push(" AND i.status = ANY(?)", vec![Box::new(names)]);
    }
    if let Some(t) = q.created_after {
        sql.push(" AND i.created_at >= ?", vec![Box::new(t)]);
    }
    if let Some(t) = q.created_before {
        sql.push(" AND i.created_at < ?", vec![Box::new(t)]);
    }
    if let Some(t) = q.updated_after {
        sql.push(" AND i.updated_at >= ?", vec![Box::new(t)]);
    }
    if let Some(prefix) = &q.id_prefix {
        // left() instead of LIKE: no wildcard escaping, and case-sensitive like ids.
        let n = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
        sql.push(
            " AND left(i.id, ?) = ?",
            vec![Box::new(n), Box::new(prefix.clone())],
        );
    }
    if let Some(parent) = &q.parent {
        sql.push(" AND i.parent = ?", vec![Box::new(parent.clone())]);
    }
    for (key, value) in &q.attributes {
        // Stored values are canonical JSON text (serde_json), so text equality is value
        // equality for strings, bools and integers; numbers also compare numerically (the
        // `num` column holds each value's number).
        let canonical = serde_json::from_str::<serde_json::Value>(value)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| value.clone());
        let (num, _) = attribute_number(value);
        sql.push(
            " AND EXISTS (SELECT 1 FROM attributes a WHERE a.instance = i.id AND a.key = ? \
             AND (a.value = ? OR a.num = ?::float8))",
            vec![Box::new(key.clone()), Box::new(canonical), Box::new(num)],
        );
    }
}

pub(crate) async fn search(shared: &Shared, q: &Query) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut sql = Sql::default();
    sql.push(
        &format!("SELECT {INSTANCE_COLUMNS} FROM instances i"),
        vec![],
    );
    query_where(&mut sql, q);
    if let Some(c) = &q.after {
        sql.push(
            " AND (i.created_at < ? OR (i.created_at = ? AND i.id < ?))",
            vec![
                Box::new(c.created_at),
                Box::new(c.created_at),
                Box::new(c.id.clone()),
            ],
        );
    }
    sql.push(" ORDER BY i.created_at DESC, i.id DESC", vec![]);
    if q.limit > 0 {
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        sql.push(" LIMIT ?", vec![Box::new(limit)]);
    }
    let ctx = "searching instances";
    let client = connection(shared, ctx).await?;
    query_records(Tx::new(&client), &sql.text, &sql.refs(), ctx).await
}

async fn attributes_in(tx: Tx<'_>, ids: &[String]) -> Result<AttributeMap, StoreError> {
    let ctx = "reading attributes";
    let rows = tx
        .query(
            "SELECT instance, key, value FROM attributes WHERE instance = ANY($1) \
             ORDER BY instance, key",
            &[&ids],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    let mut out = AttributeMap::new();
    for r in &rows {
        let instance: String = get(r, 0, ctx)?;
        out.entry(instance)
            .or_default()
            .insert(get(r, 1, ctx)?, get(r, 2, ctx)?);
    }
    Ok(out)
}

pub(crate) async fn attributes(
    shared: &Shared,
    ids: &[String],
) -> Result<AttributeMap, StoreError> {
    let client = connection(shared, "reading attributes").await?;
    attributes_in(Tx::new(&client), ids).await
}

pub(crate) async fn details(shared: &Shared, id: &str) -> Result<Option<Details>, StoreError> {
    let ctx = format!("reading instance `{id}`");
    in_snapshot(shared, &ctx, async |tx| {
        let Some(loaded) = load_in(tx, id).await? else {
            return Ok(None);
        };
        let attributes = attributes_in(tx, &[id.to_string()])
            .await?
            .remove(id)
            .unwrap_or_default();
        let superseded = journal_rows(
            tx,
            "SELECT retry, seq, kind, name, outcome, attempts, started_at, finished_at \
             FROM superseded WHERE instance = $1 ORDER BY retry, seq",
            id,
            &ctx,
        )
        .await?
        .into_iter()
        .map(|(retry, entry)| Superseded { retry, entry })
        .collect();
        let superseded_attempts = tx
            .query(
                "SELECT retry, seq, attempt, error, started_at, finished_at FROM \
                 superseded_attempts WHERE instance = $1 ORDER BY retry, seq, attempt",
                &[&id],
            )
            .await
            .map_err(|e| pg_error(&ctx, &e))?
            .iter()
            .map(|r| Ok((get_u32(r, 0, &ctx)?, attempt_from(r, 1, &ctx)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(Details {
            record: loaded.record,
            journal: loaded.journal,
            attempts: loaded.attempts,
            signals: loaded.signals,
            attributes,
            superseded,
            superseded_attempts,
        }))
    })
    .await
}

/// Rows `(bucket, workflow, status, count)` as status counts.
fn status_counts(
    rows: &[tokio_postgres::Row],
    ctx: &str,
) -> Result<Vec<(i64, String, crate::store::Status, u64)>, StoreError> {
    rows.iter()
        .map(|r| {
            let workflow: String = get(r, 1, ctx)?;
            let status: String = get(r, 2, ctx)?;
            Ok((
                get(r, 0, ctx)?,
                parse_status(&workflow, &status)?,
                workflow,
                get::<i64>(r, 3, ctx)?.max(0) as u64,
            ))
        })
        .map(
            |r: Result<(i64, crate::store::Status, String, u64), StoreError>| {
                r.map(|(b, s, w, c)| (b, w, s, c))
            },
        )
        .collect()
}

pub(crate) async fn counts(shared: &Shared) -> Result<Vec<StatusCount>, StoreError> {
    let ctx = "counting instances";
    let client = connection(shared, ctx).await?;
    let rows = Tx::new(&client)
        .query(
            "SELECT 0::bigint, workflow, status, COUNT(*) FROM instances \
             GROUP BY workflow, status ORDER BY workflow, status",
            &[],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    Ok(status_counts(&rows, ctx)?
        .into_iter()
        .map(|(_, workflow, status, count)| StatusCount {
            workflow,
            status,
            count,
        })
        .collect())
}

pub(crate) async fn stats(shared: &Shared, q: &StatsQuery) -> Result<Stats, StoreError> {
    let ctx = "counting instances in a window";
    // $1 from, $2 to, $3 bucket width, $4 workflow (NULL: any).
    let bucket = q.bucket_ms.max(1);
    let filter = " WHERE created_at >= $1 AND created_at < $2 \
                  AND ($4::text IS NULL OR workflow = $4::text)";
    let params: [Param<'_>; 4] = [&q.from, &q.to, &bucket, &q.workflow];
    in_snapshot(shared, ctx, async |tx| {
        let totals_sql = format!(
            "SELECT 0::bigint, workflow, status, COUNT(*) FROM instances{filter} \
             AND $3::bigint IS NOT NULL GROUP BY workflow, status ORDER BY workflow, status"
        );
        let series_sql = format!(
            "SELECT $1 + ((created_at - $1) / $3::bigint) * $3::bigint AS b, workflow, status, \
             COUNT(*) FROM instances{filter} GROUP BY b, workflow, status \
             ORDER BY b, workflow, status"
        );
        let steps_sql = format!(
            "SELECT workflow, failed_step, COUNT(*) FROM instances{filter} \
             AND $3::bigint IS NOT NULL AND failed_step IS NOT NULL \
             AND status IN ('failed', 'cancelled') \
             GROUP BY workflow, failed_step ORDER BY workflow, failed_step"
        );
        let (totals, series, steps) = tokio::join!(
            tx.query(&totals_sql, &params),
            tx.query(&series_sql, &params),
            tx.query(&steps_sql, &params),
        );
        let totals = totals.map_err(|e| pg_error(ctx, &e))?;
        let series = series.map_err(|e| pg_error(ctx, &e))?;
        let steps = steps.map_err(|e| pg_error(ctx, &e))?;
        Ok(Stats {
            totals: status_counts(&totals, ctx)?
                .into_iter()
                .map(|(_, workflow, status, count)| StatusCount {
                    workflow,
                    status,
                    count,
                })
                .collect(),
            series: status_counts(&series, ctx)?
                .into_iter()
                .map(|(start, workflow, status, count)| BucketCount {
                    start,
                    workflow,
                    status,
                    count,
                })
                .collect(),
            failed_steps: steps
                .iter()
                .map(|r| {
                    Ok(StepCount {
                        workflow: get(r, 0, ctx)?,
                        step: get(r, 1, ctx)?,
                        count: get::<i64>(r, 2, ctx)?.max(0) as u64,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
        })
    })
    .await
}

pub(crate) async fn aggregate(
    shared: &Shared,
    key: &str,
    q: &Query,
) -> Result<Aggregate, StoreError> {
    let ctx = format!("aggregating attribute `{key}`");
    let mut sql = Sql::default();
    sql.push(
        "SELECT COUNT(*), COUNT(a.num), SUM(a.num), MIN(a.num), MAX(a.num) \
         FROM instances i JOIN attributes a ON a.instance = i.id AND a.key = ?",
        vec![Box::new(key.to_string())],
    );
    query_where(&mut sql, q);
    sql.push(" AND a.valid", vec![]);
    let client = connection(shared, &ctx).await?;
    let row = Tx::new(&client)
        .query_one(&sql.text, &sql.refs())
        .await
        .map_err(|e| pg_error(&ctx, &e))?;
    Ok(Aggregate {
        count: get::<i64>(&row, 0, &ctx)?.max(0) as u64,
        numeric: get::<i64>(&row, 1, &ctx)?.max(0) as u64,
        sum: get::<Option<f64>>(&row, 2, &ctx)?.unwrap_or(0.0),
        min: get(&row, 3, &ctx)?,
        max: get(&row, 4, &ctx)?,
    })
}

pub(crate) async fn audit(shared: &Shared, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
    let ctx = "reading the audit log";
    let client = connection(shared, ctx).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Tx::new(&client)
        .query(
            "SELECT at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(|e| pg_error(ctx, &e))?
        .iter()
        .map(|r| {
            Ok(AuditRecord {
                at: get(r, 0, ctx)?,
                actor: get(r, 1, ctx)?,
                action: get(r, 2, ctx)?,
                target: get(r, 3, ctx)?,
                detail: get(r, 4, ctx)?,
            })
        })
        .collect()
}

/// See [`StoreAdmin::unfinished`](crate::store::StoreAdmin::unfinished): a walk along the
/// primary key from `after`.
pub(crate) async fn unfinished(
    shared: &Shared,
    workflow: Option<String>,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let ctx = "listing unfinished instances";
    let client = connection(shared, ctx).await?;
    let mut sql = Sql::default();
    sql.push(
        "SELECT id FROM instances WHERE status IN ('queued', 'running', 'suspended')",
        vec![],
    );
    if let Some(w) = workflow {
        sql.push(" AND workflow = ?", vec![Box::new(w)]);
    }
    if let Some(a) = after {
        sql.push(" AND id > ?", vec![Box::new(a)]);
    }
    sql.push(" ORDER BY id", vec![]);
    if limit > 0 {
        sql.push(
            " LIMIT ?",
            vec![Box::new(i64::try_from(limit).unwrap_or(i64::MAX))],
        );
    }
    let rows = Tx::new(&client)
        .query(&sql.text, &sql.refs())
        .await
        .map_err(|e| pg_error(ctx, &e))?;
    rows.iter().map(|r| get(r, 0, ctx)).collect()
}
