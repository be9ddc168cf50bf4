//! Applying each [`WriteOp`] (and instance creation and signal delivery) inside the writer's
//! open transaction.
//!
//! The hot operations are one statement each: a CTE reads the instance's status (to tell "no
//! such instance" and "finished" apart, as the SQLite store does) and makes the change in the
//! same round trip, so the writer can pipeline many instances' operations on one connection.
//! Every function takes the transaction ([`Tx`]); what a write wakes (see
//! [`Wakeup`]) goes to `woken`, sent by the writer once the transaction committed. Fencing is
//! checked by the writer, per batch, before the ops run.

use super::notify;
use super::pg_error;
use super::read::{get_record, parse_status};
use crate::store::{
    AttemptRecord, Created, EntryKind, Fence, InstanceRecord, JournalEntry, Lease, LeaseTerms,
    Millis, Status, StoreError, Wakeup, WriteOp,
};
use deadpool_postgres::ClientWrapper;
use std::collections::HashMap;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// A statement parameter.
pub(crate) type Param<'a> = &'a (dyn ToSql + Sync);

/// A connection inside an open transaction (or a read-only snapshot, for reads). Statements
/// are prepared once per connection and cached.
#[derive(Clone, Copy)]
pub(crate) struct Tx<'a> {
    client: &'a ClientWrapper,
}

impl<'a> Tx<'a> {
    /// Wraps `client`, on which a transaction is open.
    pub(crate) fn new(client: &'a ClientWrapper) -> Tx<'a> {
        Tx { client }
    }

    /// Runs a statement; returns the rows it changed.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<u64, tokio_postgres::Error> {
        let st = self.client.prepare_cached(sql).await?;
        self.client.execute(&st, params).await
    }

    /// Runs a query.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let st = self.client.prepare_cached(sql).await?;
        self.client.query(&st, params).await
    }

    /// Runs a query that returns exactly one row.
    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Row, tokio_postgres::Error> {
        let st = self.client.prepare_cached(sql).await?;
        self.client.query_one(&st, params).await
    }

    /// Runs a query that returns at most one row.
    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let st = self.client.prepare_cached(sql).await?;
        self.client.query_opt(&st, params).await
    }

    /// Runs statements without parameters (transaction control).
    pub(crate) async fn batch(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute(sql).await
    }
}

/// The final statuses, for SQL.
macro_rules! final_in {
    () => {
        "('completed', 'failed', 'cancelled', 'terminated', 'incompatible')"
    };
}
pub(crate) use final_in;

/// Every status orch knows: a statement that checks its instance's status writes nothing when
/// the stored status is unknown (a damaged row), so the error it then reports changed nothing.
macro_rules! known {
    () => {
        "('queued', 'running', 'suspended', 'completed', 'failed', 'cancelled', 'terminated', 'incompatible')"
    };
}

/// The instance's status before the change, and the rows the change touched.
macro_rules! guarded {
    ($change:expr) => {
        concat!(
            "WITH i AS (SELECT status FROM instances WHERE id = $1::text), w AS (",
            $change,
            " RETURNING 1) SELECT (SELECT status FROM i), (SELECT count(*) FROM w)"
        )
    };
}

/// The CTE that cancels the open tasks of instance `$1` when the end `w` (returning `parent`)
/// happened at `$5` — no worker gets a task of an ended instance.
macro_rules! cancel_tasks {
    () => {
        "c AS (UPDATE tasks SET state = 'cancelled', error = 'its instance ended', \
         finished_at = $5::bigint WHERE instance = $1::text AND state IN ('pending', 'leased') \
         AND EXISTS (SELECT 1 FROM w))"
    };
}

const APPEND: &str = guarded!(concat!(
    "INSERT INTO journal (instance, seq, kind, name, outcome, attempts, started_at, \
     finished_at) SELECT $1::text, $2::bigint, $3::text, $4::text, $5::text, $6::bigint, \
     $7::bigint, $8::bigint FROM i WHERE i.status IN ",
    known!(),
    " ON CONFLICT (instance, seq) DO NOTHING"
));
/// A step's checkpoint under its fence, as one statement (one round trip, autocommit): the
/// instance row is locked (`FOR UPDATE`, so a claim by another node waits for this statement
/// or is seen by it), the entry is written only if this node still holds the lease, and the
/// row's owner and epoch come back so a refusal can say whose the instance is now.
const APPEND_FENCED: &str = concat!(
    "WITH i AS (SELECT status, owner, lease_epoch FROM instances WHERE id = $1::text FOR UPDATE), \
     w AS (INSERT INTO journal (instance, seq, kind, name, outcome, attempts, started_at, \
     finished_at) SELECT $1::text, $2::bigint, $3::text, $4::text, $5::text, $6::bigint, \
     $7::bigint, $8::bigint FROM i WHERE i.owner = $9::text AND i.lease_epoch = $10::bigint \
     AND i.status IN ",
    known!(),
    " ON CONFLICT (instance, seq) DO NOTHING RETURNING 1) SELECT (SELECT status FROM i), \
     (SELECT owner FROM i), (SELECT lease_epoch FROM i), (SELECT count(*) FROM w)"
);

/// Many instances' checkpoints in one multi-row statement (their fences already judged by the
/// batch's fence query, which keeps their rows locked): the `(instance, seq)` pairs it wrote;
/// an entry whose seq exists is not written (a conflict for its caller).
const APPEND_MANY: &str = "INSERT INTO journal (instance, seq, kind, name, outcome, attempts, \
     started_at, finished_at) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], \
     $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[]) \
     ON CONFLICT (instance, seq) DO NOTHING RETURNING instance, seq";

/// Writes `entries` (instance, entry) with one statement; returns the `(instance, seq)` pairs
/// written (those missing already existed).
pub(crate) async fn append_many(
    tx: Tx<'_>,
    entries: &[(&str, &JournalEntry)],
) -> Result<std::collections::HashSet<(String, i64)>, StoreError> {
    let ctx = || format!("appending {} journal entries", entries.len());
    let ids: Vec<&str> = entries.iter().map(|(id, _)| *id).collect();
    let seqs: Vec<i64> = entries.iter().map(|(_, e)| i64_of(e.seq)).collect();
    let kinds: Vec<&str> = entries.iter().map(|(_, e)| e.kind.as_str()).collect();
    let names: Vec<&str> = entries.iter().map(|(_, e)| e.name.as_str()).collect();
    let outcomes: Vec<&str> = entries.iter().map(|(_, e)| e.outcome.as_str()).collect();
    let attempts: Vec<i64> = entries.iter().map(|(_, e)| i64_of(e.attempts)).collect();
    let started: Vec<i64> = entries.iter().map(|(_, e)| e.started_at).collect();
    let finished: Vec<i64> = entries.iter().map(|(_, e)| e.finished_at).collect();
    let rows = tx
        .query(
            APPEND_MANY,
            &[
                &ids, &seqs, &kinds, &names, &outcomes, &attempts, &started, &finished,
            ],
        )
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<_, String>(0)
                    .map_err(|e| pg_error(&ctx(), &e))?,
                r.try_get::<_, i64>(1).map_err(|e| pg_error(&ctx(), &e))?,
            ))
        })
        .collect()
}

/// Many instances' ends in one statement (their fences judged and rows locked by the batch
/// query): like [`FINISH`] for each; the ids it ended, with their parents.
const FINISH_MANY: &str = "WITH w AS (UPDATE instances u SET status = v.status, \
     output = v.output, error = v.error, wake_at = NULL, updated_at = v.at, failed_step = v.step, \
     failed_seq = v.seq, owner = NULL, lease_epoch = u.lease_epoch + 1 \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], \
     $7::bigint[]) AS v(id, status, output, error, at, step, seq) \
     WHERE u.id = v.id AND u.status IN ('queued', 'running', 'suspended') RETURNING u.id, u.parent, v.at), \
     c AS (UPDATE tasks t SET state = 'cancelled', error = 'its instance ended', \
     finished_at = w.at FROM w WHERE t.instance = w.id AND t.state IN ('pending', 'leased')) \
     SELECT id, parent FROM w";

/// Ends the instances of `ends` (each a lone [`WriteOp::Finish`]) with one statement, as
/// [`apply`] ends one; what it wakes goes to `woken`. An instance already final is left
/// alone, as by one `Finish`.
pub(crate) async fn finish_many(
    tx: Tx<'_>,
    ends: &[&WriteOp],
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let ctx = || format!("finishing {} instances", ends.len());
    let mut ids = Vec::with_capacity(ends.len());
    let mut statuses = Vec::with_capacity(ends.len());
    let mut outputs: Vec<Option<&str>> = Vec::with_capacity(ends.len());
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(ends.len());
    let mut ats = Vec::with_capacity(ends.len());
    let mut steps: Vec<Option<&str>> = Vec::with_capacity(ends.len());
    let mut seqs: Vec<Option<i64>> = Vec::with_capacity(ends.len());
    let mut status_of = HashMap::new();
    for op in ends {
        let WriteOp::Finish {
            instance,
            status,
            output,
            error,
            failed_step,
            at,
        } = op
        else {
            return Err(StoreError::Backend(
                "internal error: finish_many called with something else than ends".into(),
            ));
        };
        ids.push(instance.as_str());
        statuses.push(status.as_str());
        outputs.push(output.as_deref());
        errors.push(error.as_deref());
        ats.push(*at);
        steps.push(failed_step.as_ref().map(|f| f.0.as_str()));
        seqs.push(failed_step.as_ref().map(|f| i64_of(f.1)));
        status_of.insert(instance.as_str(), *status);
    }
    let rows = tx
        .query(
            FINISH_MANY,
            &[&ids, &statuses, &outputs, &errors, &ats, &steps, &seqs],
        )
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    for row in rows {
        let id: String = row.try_get(0).map_err(|e| pg_error(&ctx(), &e))?;
        let parent: Option<String> = row.try_get(1).map_err(|e| pg_error(&ctx(), &e))?;
        if let Some(status) = status_of.get(id.as_str()) {
            woken.push(Wakeup::Finished {
                instance: id.clone(),
                status: *status,
            });
        }
        if let Some(parent) = parent {
            woken.push(Wakeup::ChildFinished { parent, child: id });
        }
    }
    Ok(())
}

/// Many owned instances created in one statement: the ids it inserted (the others existed),
/// with their owner's lease end.
const CREATE_MANY: &str = "WITH n AS (INSERT INTO instances (id, workflow, version, input, \
     status, output, error, custom_status, parent, created_at, updated_at, wake_at, failed_step, \
     failed_seq, cancel_requested, cancel_seq, retries, owner, lease_epoch) \
     SELECT *, 1 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[], \
     $13::text[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::text[]) \
     ON CONFLICT (id) DO NOTHING RETURNING id, owner) \
     SELECT n.id, d.lease_expires FROM n LEFT JOIN nodes d ON d.id = n.owner";

/// Creates owned instances with one statement, as [`create`] creates one; returns the ids it
/// created with their lease end (an id missing existed already: ask [`create`] for it).
pub(crate) async fn create_many(
    tx: Tx<'_>,
    creates: &[(&InstanceRecord, &LeaseTerms)],
) -> Result<HashMap<String, Millis>, StoreError> {
    let ctx = || format!("creating {} instances", creates.len());
    let col = |f: fn(&InstanceRecord) -> Option<&str>| -> Vec<Option<&str>> {
        creates.iter().map(|(r, _)| f(r)).collect()
    };
    let num = |f: fn(&InstanceRecord) -> Option<i64>| -> Vec<Option<i64>> {
        creates.iter().map(|(r, _)| f(r)).collect()
    };
    let ids = col(|r| Some(r.id.as_str()));
    let workflows = col(|r| Some(r.workflow.as_str()));
    let versions = col(|r| Some(r.version.as_str()));
    let inputs = col(|r| Some(r.input.as_str()));
    let statuses = col(|r| Some(r.status.as_str()));
    let outputs = col(|r| r.output.as_deref());
    let errors = col(|r| r.error.as_deref());
    let customs = col(|r| r.custom_status.as_deref());
    let parents = col(|r| r.parent.as_deref());
    let created = num(|r| Some(r.created_at));
    let updated = num(|r| Some(r.updated_at));
    let wakes = num(|r| r.wake_at);
    let failed_steps = col(|r| r.failed_step.as_deref());
    let failed_seqs = num(|r| r.failed_seq.map(i64::from));
    let cancels = num(|r| r.cancel_requested);
    let cancel_seqs = num(|r| r.cancel_seq.map(i64::from));
    let retries = num(|r| Some(i64::from(r.retries)));
    let owners: Vec<&str> = creates.iter().map(|(_, t)| t.node.as_str()).collect();
    let rows = tx
        .query(
            CREATE_MANY,
            &[
                &ids,
                &workflows,
                &versions,
                &inputs,
                &statuses,
                &outputs,
                &errors,
                &customs,
                &parents,
                &created,
                &updated,
                &wakes,
                &failed_steps,
                &failed_seqs,
                &cancels,
                &cancel_seqs,
                &retries,
                &owners,
            ],
        )
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get(0).map_err(|e| pg_error(&ctx(), &e))?;
            let expires: Option<i64> = r.try_get(1).map_err(|e| pg_error(&ctx(), &e))?;
            Ok((id, expires.unwrap_or(0)))
        })
        .collect()
}

/// Judges `fence` against the first columns a fenced statement returns (the instance's status,
/// owner and epoch as its row lock saw them): [`StoreError::LeaseLost`] unless it holds.
fn fence_held(row: &Row, fence: &Fence, ctx: &str) -> Result<(), StoreError> {
    let status: Option<String> = row.try_get(0).map_err(|e| pg_error(ctx, &e))?;
    let owner: Option<String> = row.try_get(1).map_err(|e| pg_error(ctx, &e))?;
    let epoch: Option<i64> = row.try_get(2).map_err(|e| pg_error(ctx, &e))?;
    let found = status.as_ref().map(|_| {
        let epoch = epoch.and_then(|e| u64::try_from(e).ok()).unwrap_or(0);
        (owner, epoch)
    });
    super::ownership::judge(fence, found.as_ref())?;
    if let Some(raw) = status {
        parse_status(&fence.instance, &raw)?;
    }
    Ok(())
}

/// Whether `ops` is a lone journal append, which [`append_fenced`] writes in one statement.
pub(crate) fn is_lone_append(ops: &[WriteOp]) -> bool {
    matches!(ops, [WriteOp::Append { .. }])
}

/// Writes a lone journal append (`ops`, see [`is_lone_append`]) under `fence` in one
/// statement: refused with [`StoreError::LeaseLost`] when the fence does not hold, as the
/// batch path refuses it, and changing nothing when refused.
pub(crate) async fn append_fenced(
    tx: Tx<'_>,
    fence: &Fence,
    ops: &[WriteOp],
) -> Result<(), StoreError> {
    let [WriteOp::Append { entry, .. }] = ops else {
        return Err(StoreError::Backend(
            "internal error: append_fenced called with something else than one append".into(),
        ));
    };
    let id = fence.instance.as_str();
    let ctx = || format!("appending a journal entry for instance `{id}`");
    let epoch = i64::try_from(fence.epoch).unwrap_or(i64::MAX);
    let node = fence.node.as_str();
    let columns = EntryColumns::new(entry);
    let mut params = columns.params(&id).to_vec();
    params.extend([&node as Param<'_>, &epoch]);
    let row = tx
        .query_one(APPEND_FENCED, &params)
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    fence_held(&row, fence, &ctx())?;
    let inserted: i64 = row.try_get(3).map_err(|e| pg_error(&ctx(), &e))?;
    if inserted == 0 {
        return Err(seq_taken(id, entry.seq));
    }
    Ok(())
}

/// Whether `ops` is a lone end, which [`finish_fenced`] writes (and announces) in one statement.
pub(crate) fn is_lone_finish(ops: &[WriteOp]) -> bool {
    matches!(ops, [WriteOp::Finish { .. }])
}

/// Ends an instance (`ops`, see [`is_lone_finish`]) under `fence` in one statement that also
/// tells the other nodes (`pg_notify` on `channel`, marked with this store's `token`):
/// refused with [`StoreError::LeaseLost`] when the fence does not hold, changing nothing and
/// announcing nothing. Returns what it woke, for this process's subscribers.
pub(crate) async fn finish_fenced(
    tx: Tx<'_>,
    fence: &Fence,
    ops: &[WriteOp],
    channel: &str,
    token: &str,
) -> Result<Vec<Wakeup>, StoreError> {
    let [
        WriteOp::Finish {
            status,
            output,
            error,
            failed_step,
            at,
            ..
        },
    ] = ops
    else {
        return Err(StoreError::Backend(
            "internal error: finish_fenced called with something else than one end".into(),
        ));
    };
    let id = fence.instance.as_str();
    let ctx = || format!("finishing instance `{id}`");
    let epoch = i64::try_from(fence.epoch).unwrap_or(i64::MAX);
    let node = fence.node.as_str();
    let step = failed_step.as_ref().map(|f| f.0.as_str());
    let seq = failed_step.as_ref().map(|f| i64_of(f.1));
    let payload = notify::finished_payload(token, id, *status);
    let row = tx
        .query_one(
            FINISH_FENCED,
            &[
                &id,
                &status.as_str(),
                output,
                error,
                at,
                &step,
                &seq,
                &node,
                &epoch,
                &channel,
                &payload,
            ],
        )
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    fence_held(&row, fence, &ctx())?;
    let changed: i64 = row.try_get(3).map_err(|e| pg_error(&ctx(), &e))?;
    let parent: Option<String> = row.try_get(4).map_err(|e| pg_error(&ctx(), &e))?;
    let mut woken = Vec::new();
    if changed > 0 {
        woken.push(Wakeup::Finished {
            instance: id.to_string(),
            status: *status,
        });
        if let Some(parent) = parent {
            woken.push(Wakeup::ChildFinished {
                parent,
                child: id.to_string(),
            });
        }
    }
    Ok(woken)
}

/// The refusal of a journal entry whose (instance, seq) is written already.
pub(crate) fn seq_taken(instance: &str, seq: u32) -> StoreError {
    StoreError::Conflict {
        instance: instance.to_string(),
        detail: format!("journal entry seq {seq} already exists"),
    }
}

/// A journal entry's columns as the append statements take them, after the instance id.
struct EntryColumns<'a> {
    seq: i64,
    kind: &'static str,
    attempts: i64,
    entry: &'a JournalEntry,
}

impl<'a> EntryColumns<'a> {
    fn new(entry: &'a JournalEntry) -> Self {
        EntryColumns {
            seq: i64_of(entry.seq),
            kind: entry.kind.as_str(),
            attempts: i64_of(entry.attempts),
            entry,
        }
    }

    /// `$1` … `$8`: the instance, then the entry.
    fn params(&'a self, id: &'a &'a str) -> [Param<'a>; 8] {
        [
            id,
            &self.seq,
            &self.kind,
            &self.entry.name,
            &self.entry.outcome,
            &self.attempts,
            &self.entry.started_at,
            &self.entry.finished_at,
        ]
    }
}

const ATTEMPT: &str = guarded!(concat!(
    "INSERT INTO attempts (instance, seq, attempt, error, started_at, finished_at) \
     SELECT $1::text, $2::bigint, $3::bigint, $4::text, $5::bigint, $6::bigint FROM i \
     WHERE i.status IN ",
    known!(),
    " ON CONFLICT (instance, seq, attempt) DO NOTHING"
));
const CONSUME: &str = guarded!(concat!(
    "UPDATE signals SET consumed_seq = $3::bigint \
     WHERE id = $2::bigint AND instance = $1::text AND consumed_seq IS NULL \
     AND EXISTS (SELECT 1 FROM i WHERE i.status IN ",
    known!(),
    ")"
));
const CUSTOM_STATUS: &str = guarded!(concat!(
    "UPDATE instances SET custom_status = $2::text, updated_at = $3::bigint WHERE id = $1::text \
     AND status IN ",
    known!()
));
const SUSPEND: &str = concat!(
    "WITH i AS (SELECT status FROM instances WHERE id = $1::text), w AS (",
    "UPDATE instances SET status = 'suspended', owner = NULL, ",
    "wake_at = LEAST(wake_at, $2::bigint), updated_at = $3::bigint ",
    "WHERE id = $1::text AND status IN ('queued', 'running', 'suspended') RETURNING wake_at) ",
    "SELECT (SELECT status FROM i), (SELECT count(*) FROM w), (SELECT wake_at FROM w)"
);
const SET_STATUS: &str = guarded!(concat!(
    "UPDATE instances SET status = $2::text, wake_at = $3::bigint, updated_at = $4::bigint ",
    "WHERE id = $1::text AND status IN ('queued', 'running', 'suspended')"
));
const FINISH: &str = concat!(
    "WITH i AS (SELECT status FROM instances WHERE id = $1::text), w AS (",
    "UPDATE instances SET status = $2::text, output = $3::text, error = $4::text, ",
    "wake_at = NULL, updated_at = $5::bigint, failed_step = $6::text, failed_seq = $7::bigint, ",
    "owner = NULL, lease_epoch = lease_epoch + 1 ",
    "WHERE id = $1::text AND status IN ('queued', 'running', 'suspended') RETURNING parent), ",
    cancel_tasks!(),
    " SELECT (SELECT status FROM i), (SELECT count(*) FROM w), (SELECT parent FROM w)"
);
/// An end under its fence, as one statement (one round trip, autocommit) that also announces
/// it: the instance row is locked (`FOR UPDATE`, as [`APPEND_FENCED`] does), ended only if this
/// node still holds the lease, and the end (`$11`: the payload's token and end line, from
/// [`notify::finished_payload`]) with its parent's wake-up (the line `["p", parent, child]`
/// that `notify` decodes, built here from the row's parent) goes out with `pg_notify` — sent by
/// PostgreSQL only when the statement commits, and only when it ended the instance.
const FINISH_FENCED: &str = concat!(
    "WITH i AS (SELECT status, owner, lease_epoch FROM instances WHERE id = $1::text FOR UPDATE), ",
    "w AS (UPDATE instances u SET status = $2::text, output = $3::text, error = $4::text, ",
    "wake_at = NULL, updated_at = $5::bigint, failed_step = $6::text, failed_seq = $7::bigint, ",
    "owner = NULL, lease_epoch = u.lease_epoch + 1 FROM i WHERE u.id = $1::text ",
    "AND i.owner = $8::text AND i.lease_epoch = $9::bigint ",
    "AND i.status IN ('queued', 'running', 'suspended') RETURNING u.parent), ",
    cancel_tasks!(),
    ", n AS (SELECT pg_notify($10::text, $11::text || coalesce(E'\\n' || ",
    "json_build_array('p', w.parent, $1::text)::text, '')) FROM w) ",
    "SELECT (SELECT status FROM i), (SELECT owner FROM i), (SELECT lease_epoch FROM i), ",
    "(SELECT count(*) FROM w), (SELECT parent FROM w), (SELECT count(*) FROM n)"
);
const ATTRIBUTE: &str = guarded!(concat!(
    "INSERT INTO attributes (instance, key, value, num, valid) \
     SELECT $1::text, $2::text, $3::text, $4::float8, $5::bool FROM i \
     WHERE i.status IN ",
    known!(),
    " \
     ON CONFLICT (instance, key) DO UPDATE SET value = excluded.value, num = excluded.num, \
     valid = excluded.valid"
));
const END_TIMER: &str = guarded!(concat!(
    "INSERT INTO ended_timers (instance, seq) SELECT $1::text, $2::bigint FROM i \
     WHERE i.status IN ",
    known!(),
    " ON CONFLICT DO NOTHING"
));
const REQUEST_CANCEL: &str = guarded!(concat!(
    "UPDATE instances SET cancel_requested = COALESCE(cancel_requested, $2::bigint), ",
    "updated_at = $2::bigint, wake_at = LEAST(wake_at, $2::bigint) ",
    "WHERE id = $1::text AND status IN ('queued', 'running', 'suspended')"
));
const CANCEL_DELIVERED: &str = guarded!(concat!(
    "UPDATE instances SET cancel_seq = $2::bigint WHERE id = $1::text AND status IN ",
    known!()
));
const WAKE: &str = "UPDATE instances SET wake_at = LEAST(wake_at, $2::bigint) \
     WHERE id = $1::text AND status IN ('queued', 'running', 'suspended')";
const AUDIT: &str =
    "INSERT INTO audit (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)";
const CREATE: &str = "WITH n AS (INSERT INTO instances (id, workflow, version, input, status, \
     output, error, custom_status, parent, created_at, updated_at, wake_at, failed_step, \
     failed_seq, cancel_requested, cancel_seq, retries, owner, lease_epoch) VALUES ($1, $2, $3, \
     $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18::text, $19::bigint) \
     ON CONFLICT (id) DO NOTHING RETURNING 1) SELECT (SELECT count(*) FROM n), \
     (SELECT lease_expires FROM nodes WHERE id = $18::text)";
const ADD_SIGNAL: &str = concat!(
    "WITH i AS (SELECT status FROM instances WHERE id = $1::text), ",
    "s AS (INSERT INTO signals (instance, name, payload, received_at) ",
    "SELECT $1::text, $2::text, $3::text, $4::bigint FROM i ",
    "WHERE i.status IN ('queued', 'running', 'suspended') RETURNING id), ",
    "w AS (UPDATE instances SET wake_at = LEAST(wake_at, $4::bigint) ",
    "WHERE id = $1::text AND status IN ('queued', 'running', 'suspended') AND EXISTS (SELECT 1 FROM s) ",
    "RETURNING 1) ",
    "SELECT (SELECT status FROM i), (SELECT id FROM s), (SELECT count(*) FROM w)"
);

/// Runs a [`guarded!`] statement: the instance's status (missing: [`StoreError::NotFound`])
/// and how many rows the change touched.
async fn guarded(
    tx: Tx<'_>,
    sql: &str,
    params: &[Param<'_>],
    id: &str,
    what: &str,
) -> Result<(Status, i64), StoreError> {
    let ctx = || format!("{what} for instance `{id}`");
    let row = tx
        .query_one(sql, params)
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    let status: Option<String> = row.try_get(0).map_err(|e| pg_error(&ctx(), &e))?;
    let changed: i64 = row.try_get(1).map_err(|e| pg_error(&ctx(), &e))?;
    match status {
        None => Err(StoreError::NotFound(id.to_string())),
        Some(s) => Ok((parse_status(id, &s)?, changed)),
    }
}

/// `value` as stored beside an attribute: its number (when it is a JSON number) and whether it
/// is JSON at all (SQLite's `json_type` and `json_valid`).
pub(crate) fn attribute_number(value: &str) -> (Option<f64>, bool) {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v) => (v.as_f64(), true),
        Err(_) => (None, false),
    }
}

fn i64_of(v: u32) -> i64 {
    i64::from(v)
}

/// Applies every op in order; the first failure stops (the caller rolls the command back).
pub(crate) async fn apply_all(
    tx: Tx<'_>,
    ops: &[WriteOp],
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    for op in ops {
        apply(tx, op, woken).await?;
    }
    Ok(())
}

/// Applies one write.
pub(crate) async fn apply(
    tx: Tx<'_>,
    op: &WriteOp,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let id = op.instance();
    match op {
        WriteOp::Append { entry, .. } => {
            let columns = EntryColumns::new(entry);
            let (_, inserted) = guarded(
                tx,
                APPEND,
                &columns.params(&id),
                id,
                "appending a journal entry",
            )
            .await?;
            if inserted == 0 {
                return Err(seq_taken(id, entry.seq));
            }
        }
        WriteOp::Attempt { record, .. } => {
            let (_, inserted) = guarded(
                tx,
                ATTEMPT,
                &[
                    &id,
                    &i64_of(record.seq),
                    &i64_of(record.attempt),
                    &record.error,
                    &record.started_at,
                    &record.finished_at,
                ],
                id,
                "recording a failed attempt",
            )
            .await?;
            if inserted == 0 {
                return Err(StoreError::Conflict {
                    instance: id.to_string(),
                    detail: format!(
                        "attempt {} of seq {} is already recorded",
                        record.attempt, record.seq
                    ),
                });
            }
        }
        WriteOp::ConsumeSignal { signal, seq, .. } => {
            let (_, changed) = guarded(
                tx,
                CONSUME,
                &[&id, signal, &i64_of(*seq)],
                id,
                "consuming a signal",
            )
            .await?;
            if changed == 0 {
                return Err(StoreError::Conflict {
                    instance: id.to_string(),
                    detail: format!("signal {signal} is consumed already (or unknown)"),
                });
            }
        }
        WriteOp::CustomStatus { value, at, .. } => {
            guarded(
                tx,
                CUSTOM_STATUS,
                &[&id, value, at],
                id,
                "setting the custom status",
            )
            .await?;
        }
        WriteOp::SetStatus {
            status,
            wake_at,
            at,
            ..
        } if *status == Status::Suspended => {
            // Released; a wake that arrived while it ran is kept (LEAST ignores NULL).
            let ctx = || format!("suspending instance `{id}`");
            let row = tx
                .query_one(SUSPEND, &[&id, wake_at, at])
                .await
                .map_err(|e| pg_error(&ctx(), &e))?;
            let found: Option<String> = row.try_get(0).map_err(|e| pg_error(&ctx(), &e))?;
            let merged: Option<i64> = row.try_get(2).map_err(|e| pg_error(&ctx(), &e))?;
            if found.is_none() {
                return Err(StoreError::NotFound(id.to_string()));
            }
            if merged.is_some_and(|w| w <= *at) {
                woken.push(Wakeup::Due {
                    instance: id.to_string(),
                });
            }
        }
        WriteOp::SetStatus {
            status,
            wake_at,
            at,
            ..
        } => {
            guarded(
                tx,
                SET_STATUS,
                &[&id, &status.as_str(), wake_at, at],
                id,
                "setting the status",
            )
            .await?;
        }
        WriteOp::EnqueueTask { task, .. } => {
            let status = super::tasks::enqueue(tx, task, woken).await?;
            match status {
                None => return Err(StoreError::NotFound(id.to_string())),
                Some(raw) => {
                    parse_status(id, &raw)?;
                }
            }
        }
        WriteOp::CancelTask { task, at, .. } => {
            match super::tasks::cancel(tx, id, task, *at).await? {
                None => return Err(StoreError::NotFound(id.to_string())),
                Some(raw) => {
                    parse_status(id, &raw)?;
                }
            }
        }
        WriteOp::Wake { at, .. } => {
            // A missing instance has nothing to wake.
            wake(tx, id, *at, woken).await?;
        }
        WriteOp::Finish {
            status,
            output,
            error,
            failed_step,
            at,
            ..
        } => {
            let step = failed_step.as_ref().map(|f| f.0.as_str());
            let seq = failed_step.as_ref().map(|f| i64_of(f.1));
            // Ends ownership too: a node still driving it (a termination) is fenced out.
            let ctx = || format!("finishing instance `{id}`");
            let row = tx
                .query_one(
                    FINISH,
                    &[&id, &status.as_str(), output, error, at, &step, &seq],
                )
                .await
                .map_err(|e| pg_error(&ctx(), &e))?;
            let found: Option<String> = row.try_get(0).map_err(|e| pg_error(&ctx(), &e))?;
            let changed: i64 = row.try_get(1).map_err(|e| pg_error(&ctx(), &e))?;
            let parent: Option<String> = row.try_get(2).map_err(|e| pg_error(&ctx(), &e))?;
            match found {
                None => return Err(StoreError::NotFound(id.to_string())),
                Some(raw) => {
                    parse_status(id, &raw)?;
                }
            }
            if changed > 0 {
                woken.push(Wakeup::Finished {
                    instance: id.to_string(),
                    status: *status,
                });
                if let Some(parent) = parent {
                    woken.push(Wakeup::ChildFinished {
                        parent,
                        child: id.to_string(),
                    });
                }
            }
        }
        WriteOp::EndTimer { seq, .. } => {
            guarded(
                tx,
                END_TIMER,
                &[&id, &i64_of(*seq)],
                id,
                "recording a timer ended early",
            )
            .await?;
        }
        WriteOp::Attribute { key, value, .. } => {
            let (num, valid) = attribute_number(value);
            guarded(
                tx,
                ATTRIBUTE,
                &[&id, key, value, &num, &valid],
                id,
                "setting an attribute",
            )
            .await?;
        }
        WriteOp::RequestCancel { at, .. } => {
            let (status, _) = guarded(
                tx,
                REQUEST_CANCEL,
                &[&id, at],
                id,
                "requesting cancellation",
            )
            .await?;
            if status.is_final() {
                return Err(StoreError::Finished {
                    id: id.to_string(),
                    status,
                });
            }
            // Due now, so a restart delivers the cancellation without waiting for a timer.
            woken.push(Wakeup::Due {
                instance: id.to_string(),
            });
            woken.push(Wakeup::Cancel {
                instance: id.to_string(),
                at: *at,
            });
        }
        WriteOp::CancelDelivered { seq, .. } => {
            guarded(
                tx,
                CANCEL_DELIVERED,
                &[&id, &i64_of(*seq)],
                id,
                "recording a delivered cancellation",
            )
            .await?;
        }
        WriteOp::Retry { from_seq, at, .. } => {
            let Some(current) = status_of(tx, id, "checking the instance").await? else {
                return Err(StoreError::NotFound(id.to_string()));
            };
            if !current.is_retryable() {
                return Err(StoreError::Conflict {
                    instance: id.to_string(),
                    detail: format!(
                        "the instance is {current}; only failed, cancelled, terminated or \
                         incompatible instances can be retried"
                    ),
                });
            }
            retry(tx, id, *from_seq, *at)
                .await
                .map_err(|e| pg_error(&format!("retrying for instance `{id}`"), &e))?;
            woken.push(Wakeup::Due {
                instance: id.to_string(),
            });
        }
        WriteOp::Fork {
            record,
            journal,
            attempts,
            ended_timers,
        } => {
            Box::pin(fork(tx, record, journal, attempts, ended_timers)).await?;
            woken.push(Wakeup::Due {
                instance: record.id.clone(),
            });
        }
        WriteOp::Audit(a) => {
            tx.execute(AUDIT, &[&a.at, &a.actor, &a.action, &a.target, &a.detail])
                .await
                .map_err(|e| pg_error("recording an audit entry", &e))?;
        }
    }
    Ok(())
}

/// The status of `id`, or `None` when it does not exist.
pub(crate) async fn status_of(
    tx: Tx<'_>,
    id: &str,
    what: &str,
) -> Result<Option<Status>, StoreError> {
    let raw: Option<String> = tx
        .query_opt("SELECT status FROM instances WHERE id = $1", &[&id])
        .await
        .and_then(|r| r.map(|r| r.try_get(0)).transpose())
        .map_err(|e| pg_error(&format!("{what} for instance `{id}`"), &e))?;
    raw.map(|s| parse_status(id, &s)).transpose()
}

/// Moves the journal from `from_seq` on aside and makes the instance run again.
async fn retry(
    tx: Tx<'_>,
    id: &str,
    from_seq: u32,
    at: Millis,
) -> Result<(), tokio_postgres::Error> {
    let from = i64_of(from_seq);
    let retry: i64 = tx
        .query_one("SELECT retries + 1 FROM instances WHERE id = $1", &[&id])
        .await?
        .try_get(0)?;
    // Attributes set by the entries moved aside go back to what earlier entries set (or away):
    // an attribute entry's name is the key, its outcome the value's text (see `journal`).
    let attribute = EntryKind::Attribute.as_str();
    tx.execute(
        "DELETE FROM attributes WHERE instance = $1 AND key IN (SELECT name FROM journal \
         WHERE instance = $1 AND seq >= $2 AND kind = $3)",
        &[&id, &from, &attribute],
    )
    .await?;
    let restore = tx
        .query(
            "SELECT j.name, j.outcome FROM journal j WHERE j.instance = $1 \
             AND j.kind = $3 AND j.seq < $2 AND NOT EXISTS (SELECT 1 FROM attributes a \
             WHERE a.instance = j.instance AND a.key = j.name) AND j.seq = (SELECT MAX(k.seq) \
             FROM journal k WHERE k.instance = j.instance AND k.kind = $3 \
             AND k.name = j.name AND k.seq < $2)",
            &[&id, &from, &attribute],
        )
        .await?;
    for row in restore {
        let key: String = row.try_get(0)?;
        let value: String = row.try_get(1)?;
        let (num, valid) = attribute_number(&value);
        tx.execute(
            "INSERT INTO attributes (instance, key, value, num, valid) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &key, &value, &num, &valid],
        )
        .await?;
    }
    tx.execute(
        "DELETE FROM ended_timers WHERE instance = $1 AND seq >= $2",
        &[&id, &from],
    )
    .await?;
    tx.execute(
        "INSERT INTO superseded (instance, retry, seq, kind, name, outcome, attempts, \
         started_at, finished_at) SELECT instance, $3::bigint, seq, kind, name, outcome, attempts, \
         started_at, finished_at FROM journal WHERE instance = $1 AND seq >= $2",
        &[&id, &from, &retry],
    )
    .await?;
    tx.execute(
        "DELETE FROM journal WHERE instance = $1 AND seq >= $2",
        &[&id, &from],
    )
    .await?;
    tx.execute(
        "INSERT INTO superseded_attempts (instance, retry, seq, attempt, error, started_at, \
         finished_at) SELECT instance, $3::bigint, seq, attempt, error, started_at, finished_at \
         FROM attempts WHERE instance = $1 AND seq >= $2",
        &[&id, &from, &retry],
    )
    .await?;
    tx.execute(
        "DELETE FROM attempts WHERE instance = $1 AND seq >= $2",
        &[&id, &from],
    )
    .await?;
    tx.execute(
        "UPDATE signals SET consumed_seq = NULL WHERE instance = $1 AND consumed_seq >= $2",
        &[&id, &from],
    )
    .await?;
    tx.execute(
        "UPDATE instances SET retries = $2, status = 'running', output = NULL, error = NULL, \
         failed_step = NULL, failed_seq = NULL, cancel_requested = NULL, cancel_seq = NULL, \
         wake_at = NULL, updated_at = $3, owner = NULL, lease_epoch = lease_epoch + 1 \
         WHERE id = $1",
        &[&id, &retry, &at],
    )
    .await?;
    Ok(())
}

/// Stores a forked instance with its copied journal.
async fn fork(
    tx: Tx<'_>,
    record: &InstanceRecord,
    journal: &[JournalEntry],
    attempts: &[AttemptRecord],
    ended_timers: &[u32],
) -> Result<(), StoreError> {
    if let Created::Existing(_) = create(tx, record, None).await? {
        return Err(StoreError::Conflict {
            instance: record.id.clone(),
            detail: "an instance with this id exists already".into(),
        });
    }
    let id = &record.id;
    for entry in journal {
        let op = WriteOp::Append {
            instance: id.clone(),
            entry: entry.clone(),
        };
        apply(tx, &op, &mut Vec::new()).await?;
    }
    for a in attempts {
        let op = WriteOp::Attempt {
            instance: id.clone(),
            record: a.clone(),
        };
        apply(tx, &op, &mut Vec::new()).await?;
    }
    for &seq in ended_timers {
        let op = WriteOp::EndTimer {
            instance: id.clone(),
            seq,
        };
        apply(tx, &op, &mut Vec::new()).await?;
    }
    Ok(())
}

/// Makes an unfinished instance due at `at` (earlier wake times stay; see [`WriteOp::Wake`]).
/// Makes an unfinished instance due at `now` because a task of it ended.
pub(crate) async fn wake_instance(
    tx: Tx<'_>,
    id: &str,
    now: Millis,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    wake(tx, id, now, woken).await
}

async fn wake(tx: Tx<'_>, id: &str, at: Millis, woken: &mut Vec<Wakeup>) -> Result<(), StoreError> {
    let changed = tx
        .execute(WAKE, &[&id, &at])
        .await
        .map_err(|e| pg_error(&format!("waking instance `{id}`"), &e))?;
    if changed > 0 {
        woken.push(Wakeup::Due {
            instance: id.to_string(),
        });
    }
    Ok(())
}

/// Stores a new instance (owned by `owner.node` at epoch 1 when given), or returns the existing
/// one unchanged.
pub(crate) async fn create(
    tx: Tx<'_>,
    rec: &InstanceRecord,
    owner: Option<&LeaseTerms>,
) -> Result<Created, StoreError> {
    let ctx = || format!("creating instance `{}`", rec.id);
    let node = owner.map(|t| t.node.as_str());
    let epoch = i64::from(owner.is_some());
    let row = tx
        .query_one(
            CREATE,
            &[
                &rec.id,
                &rec.workflow,
                &rec.version,
                &rec.input,
                &rec.status.as_str(),
                &rec.output,
                &rec.error,
                &rec.custom_status,
                &rec.parent,
                &rec.created_at,
                &rec.updated_at,
                &rec.wake_at,
                &rec.failed_step,
                &rec.failed_seq.map(i64::from),
                &rec.cancel_requested,
                &rec.cancel_seq.map(i64::from),
                &i64::from(rec.retries),
                &node,
                &epoch,
            ],
        )
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    let inserted: i64 = row.try_get(0).map_err(|e| pg_error(&ctx(), &e))?;
    let expires: Option<i64> = row.try_get(1).map_err(|e| pg_error(&ctx(), &e))?;
    if inserted == 1 {
        return Ok(Created::New(owner.map(|t| Lease {
            instance: rec.id.clone(),
            node: t.node.clone(),
            epoch: 1,
            expires_at: expires.unwrap_or(0),
        })));
    }
    match get_record(tx, &rec.id).await? {
        Some(existing) => Ok(Created::Existing(Box::new(existing))),
        None => Err(StoreError::Backend(format!(
            "{}: the insert was ignored but no instance with that id exists",
            ctx()
        ))),
    }
}

/// Stores a signal for a live instance and makes a suspended one due; returns its id.
pub(crate) async fn add_signal(
    tx: Tx<'_>,
    instance: &str,
    name: &str,
    payload: &str,
    at: Millis,
    woken: &mut Vec<Wakeup>,
) -> Result<i64, StoreError> {
    let ctx = || format!("delivering signal `{name}` for instance `{instance}`");
    let row = tx
        .query_one(ADD_SIGNAL, &[&instance, &name, &payload, &at])
        .await
        .map_err(|e| pg_error(&ctx(), &e))?;
    let status: Option<String> = row.try_get(0).map_err(|e| pg_error(&ctx(), &e))?;
    let id: Option<i64> = row.try_get(1).map_err(|e| pg_error(&ctx(), &e))?;
    let waked: i64 = row.try_get(2).map_err(|e| pg_error(&ctx(), &e))?;
    let Some(status) = status else {
        return Err(StoreError::NotFound(instance.to_string()));
    };
    let status = parse_status(instance, &status)?;
    if status.is_final() {
        return Err(StoreError::Finished {
            id: instance.to_string(),
            status,
        });
    }
    let id =
        id.ok_or_else(|| StoreError::Backend(format!("{}: no signal id was returned", ctx())))?;
    if waked > 0 {
        woken.push(Wakeup::Due {
            instance: instance.to_string(),
        });
    }
    woken.push(Wakeup::signal_added(instance, id, name, payload, at));
    Ok(id)
}

/// Writes a large row into `orch_meta` and deletes it again: fails as a real write would when
/// the database cannot grow.
pub(crate) async fn probe(tx: Tx<'_>) -> Result<(), StoreError> {
    let run = async {
        tx.execute(
            "INSERT INTO orch_meta (key, value) VALUES ('orch.write_probe', repeat('x', 16384)) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[],
        )
        .await?;
        tx.execute("DELETE FROM orch_meta WHERE key = 'orch.write_probe'", &[])
            .await
    };
    run.await
        .map(|_| ())
        .map_err(|e| pg_error("the write probe", &e))
}
