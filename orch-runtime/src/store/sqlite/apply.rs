//! Applying each [`WriteOp`] (and instance creation and signal delivery) inside the writer's
//! open transaction. What a write wakes (see [`Wakeup`]) goes to `woken`, sent by the writer
//! once the transaction committed.

use super::backend;
use super::ownership;
use super::read::{INSTANCE_COLUMNS, get_record, parse_status};
use crate::store::{
    AttemptRecord, Created, EntryKind, InstanceRecord, JournalEntry, Lease, LeaseTerms, Millis,
    Status, StoreError, Wakeup, WriteOp,
};
use rusqlite::{Connection, OptionalExtension, params};

/// The status of `id`, or `None` when it does not exist.
/// `what` names the operation in an error (formatted only then: this runs on every write).
fn status_of(conn: &Connection, id: &str, what: &str) -> Result<Option<Status>, StoreError> {
    let raw: Option<String> = conn
        .prepare_cached("SELECT status FROM instances WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(|e| backend(&format!("{what} for instance `{id}`"), e))?;
    raw.map(|s| parse_status(id, &s)).transpose()
}

/// `(?, ?, ?, ?, ?)` for the final statuses.
macro_rules! final_in {
    () => {
        "('completed', 'failed', 'cancelled', 'terminated', 'incompatible')"
    };
}

pub(super) fn apply(
    conn: &Connection,
    op: &WriteOp,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    apply_known(conn, op, woken, None)
}

/// [`apply`], with the instance's status when the caller read it already in this transaction.
pub(super) fn apply_known(
    conn: &Connection,
    op: &WriteOp,
    woken: &mut Vec<Wakeup>,
    status: Option<Status>,
) -> Result<(), StoreError> {
    let id = op.instance();
    let ctx = |what: &str| format!("{what} for instance `{id}`");
    match op {
        // A missing instance has nothing to wake.
        WriteOp::Wake { at, .. } => return wake(conn, id, *at, "waking", woken),
        WriteOp::Audit(a) => {
            conn.prepare_cached(
                "INSERT INTO audit (at, actor, action, target, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| s.execute(params![a.at, a.actor, a.action, a.target, a.detail]))
            .map_err(|e| backend("recording an audit entry", e))?;
            return Ok(());
        }
        WriteOp::Fork {
            record,
            journal,
            attempts,
            ended_timers,
        } => {
            fork(conn, record, journal, attempts, ended_timers)?;
            woken.push(Wakeup::Due {
                instance: record.id.clone(),
            });
            return Ok(());
        }
        _ => {}
    }
    let current = match status {
        Some(st) => Some(st),
        None => status_of(conn, id, "checking the instance")?,
    };
    let Some(current) = current else {
        return Err(StoreError::NotFound(id.to_string()));
    };
    match op {
        WriteOp::Append { entry, .. } => insert_once(
            conn,
            "INSERT INTO journal (instance, seq, kind, name, outcome, attempts, started_at, \
             finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (instance, seq) DO NOTHING",
            params![
                id,
                entry.seq,
                entry.kind.as_str(),
                entry.name,
                entry.outcome,
                entry.attempts,
                entry.started_at,
                entry.finished_at
            ],
            id,
            "appending a journal entry",
            || format!("journal entry seq {} already exists", entry.seq),
        )?,
        WriteOp::Attempt { record, .. } => insert_once(
            conn,
            "INSERT INTO attempts (instance, seq, attempt, error, started_at, finished_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (instance, seq, attempt) DO NOTHING",
            params![
                id,
                record.seq,
                record.attempt,
                record.error,
                record.started_at,
                record.finished_at
            ],
            id,
            "recording a failed attempt",
            || {
                format!(
                    "attempt {} of seq {} is already recorded",
                    record.attempt, record.seq
                )
            },
        )?,
        WriteOp::ConsumeSignal { signal, seq, .. } => {
            let changed = conn
                .prepare_cached(
                    "UPDATE signals SET consumed_seq = ?3 \
                     WHERE id = ?1 AND instance = ?2 AND consumed_seq IS NULL",
                )
                .and_then(|mut s| s.execute(params![signal, id, seq]))
                .map_err(|e| backend(&ctx("consuming a signal"), e))?;
            if changed == 0 {
                return Err(StoreError::Conflict {
                    instance: id.to_string(),
                    detail: format!("signal {signal} is consumed already (or unknown)"),
                });
            }
        }
        WriteOp::Wake { .. } => {}
        WriteOp::CustomStatus { value, at, .. } => {
            conn.prepare_cached(
                "UPDATE instances SET custom_status = ?2, updated_at = ?3 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, value, at]))
            .map_err(|e| backend(&ctx("setting the custom status"), e))?;
        }
        WriteOp::SetStatus {
            status,
            wake_at,
            at,
            ..
        } => {
            if *status == Status::Suspended {
                // Released; a wake that arrived while it ran is kept (MIN ignores NULL only
                // through the COALESCEs).
                let merged: Option<Option<Millis>> = conn
                    .prepare_cached(concat!(
                        "UPDATE instances SET status = 'suspended', owner = NULL, ",
                        "wake_at = MIN(COALESCE(wake_at, ?2), COALESCE(?2, wake_at)), ",
                        "updated_at = ?3 WHERE id = ?1 AND status NOT IN ",
                        final_in!(),
                        " RETURNING wake_at"
                    ))
                    .and_then(|mut s| {
                        s.query_row(params![id, wake_at, at], |r| r.get(0))
                            .optional()
                    })
                    .map_err(|e| backend(&ctx("suspending"), e))?;
                if merged.flatten().is_some_and(|w| w <= *at) {
                    woken.push(Wakeup::Due {
                        instance: id.to_string(),
                    });
                }
            } else {
                // A literal (no formatting) on this hot path.
                conn.prepare_cached(concat!(
                    "UPDATE instances SET status = ?2, wake_at = ?3, updated_at = ?4 ",
                    "WHERE id = ?1 AND status NOT IN ",
                    final_in!()
                ))
                .and_then(|mut s| s.execute(params![id, status.as_str(), wake_at, at]))
                .map_err(|e| backend(&ctx("setting the status"), e))?;
            }
        }
        WriteOp::Finish {
            status,
            output,
            error,
            failed_step,
            at,
            ..
        } => {
            // Ends ownership too: a node still driving it (a termination) is fenced out.
            // The parent is read first: `RETURNING` would buffer the row in a temporary
            // b-tree, which costs more than this point read on the hot path.
            let parent: Option<Option<String>> = conn
                .prepare_cached("SELECT parent FROM instances WHERE id = ?1")
                .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
                .map_err(|e| backend(&ctx("finishing"), e))?;
            let changed = conn
                .prepare_cached(concat!(
                    "UPDATE instances SET status = ?2, output = ?3, error = ?4, wake_at = NULL, ",
                    "updated_at = ?5, failed_step = ?6, failed_seq = ?7, owner = NULL, ",
                    "epoch = epoch + 1 WHERE id = ?1 AND status NOT IN ",
                    final_in!()
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        id,
                        status.as_str(),
                        output,
                        error,
                        at,
                        failed_step.as_ref().map(|f| &f.0),
                        failed_step.as_ref().map(|f| f.1)
                    ])
                })
                .map_err(|e| backend(&ctx("finishing"), e))?;
            let finished = parent.filter(|_| changed > 0);
            if let Some(parent) = finished {
                super::tasks::cancel_all(conn, id, *at)?;
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
        WriteOp::Attribute { key, value, .. } => {
            conn.prepare_cached(
                "INSERT INTO attributes (instance, key, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (instance, key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![id, key, value]))
            .map_err(|e| backend(&ctx("setting an attribute"), e))?;
        }
        WriteOp::EndTimer { seq, .. } => {
            conn.prepare_cached(
                "INSERT INTO ended_timers (instance, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id, seq]))
            .map_err(|e| backend(&ctx("recording a timer ended early"), e))?;
        }
        WriteOp::RequestCancel { at, .. } => {
            if current.is_final() {
                return Err(StoreError::Finished {
                    id: id.to_string(),
                    status: current,
                });
            }
            conn.prepare_cached(
                "UPDATE instances SET cancel_requested = COALESCE(cancel_requested, ?2), \
                 updated_at = ?2 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, at]))
            .map_err(|e| backend(&ctx("requesting cancellation"), e))?;
            // Due now, so a restart delivers the cancellation without waiting for a timer.
            wake(conn, id, *at, "requesting cancellation", woken)?;
            woken.push(Wakeup::Cancel {
                instance: id.to_string(),
                at: *at,
            });
        }
        WriteOp::CancelDelivered { seq, .. } => {
            conn.prepare_cached("UPDATE instances SET cancel_seq = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, seq]))
                .map_err(|e| backend(&ctx("recording a delivered cancellation"), e))?;
        }
        WriteOp::Retry { from_seq, at, .. } => {
            if !current.is_retryable() {
                return Err(StoreError::Conflict {
                    instance: id.to_string(),
                    detail: format!(
                        "the instance is {current}; only failed, cancelled, terminated or \
                         incompatible instances can be retried"
                    ),
                });
            }
            retry(conn, id, *from_seq, *at).map_err(|e| backend(&ctx("retrying"), e))?;
            woken.push(Wakeup::Due {
                instance: id.to_string(),
            });
        }
        WriteOp::EnqueueTask { task, .. } => {
            if !current.is_final() {
                super::tasks::enqueue(conn, task, woken)?;
            }
        }
        WriteOp::CancelTask { task, at, .. } => super::tasks::cancel(conn, id, task, *at)?,
        WriteOp::Fork { .. } | WriteOp::Audit(_) => {}
    }
    Ok(())
}

/// Runs an `INSERT … ON CONFLICT DO NOTHING`; a row that exists already is a conflict
/// described by `conflict`.
fn insert_once(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    instance: &str,
    what: &str,
    conflict: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    let inserted = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.execute(params))
        .map_err(|e| backend(&format!("{what} for instance `{instance}`"), e))?;
    if inserted == 0 {
        return Err(StoreError::Conflict {
            instance: instance.to_string(),
            detail: conflict(),
        });
    }
    Ok(())
}

/// Moves the journal from `from_seq` on aside and makes the instance run again.
fn retry(conn: &Connection, id: &str, from_seq: u32, at: Millis) -> rusqlite::Result<()> {
    let retry: i64 = conn
        .prepare_cached("SELECT retries + 1 FROM instances WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    // Attributes set by the entries moved aside go back to what earlier entries set (or away):
    // an attribute entry's name is the key, its outcome the value's text (see `journal`).
    let attribute = EntryKind::Attribute.as_str();
    conn.prepare_cached(
        "DELETE FROM attributes WHERE instance = ?1 AND key IN (SELECT name FROM journal \
         WHERE instance = ?1 AND seq >= ?2 AND kind = ?3)",
    )?
    .execute(params![id, from_seq, attribute])?;
    conn.prepare_cached(
        "INSERT INTO attributes (instance, key, value) SELECT j.instance, j.name, j.outcome \
         FROM journal j WHERE j.instance = ?1 AND j.kind = ?3 AND j.seq < ?2 \
         AND NOT EXISTS (SELECT 1 FROM attributes a WHERE a.instance = j.instance \
         AND a.key = j.name) AND j.seq = (SELECT MAX(k.seq) FROM journal k \
         WHERE k.instance = j.instance AND k.kind = ?3 AND k.name = j.name \
         AND k.seq < ?2)",
    )?
    .execute(params![id, from_seq, attribute])?;
    conn.prepare_cached("DELETE FROM ended_timers WHERE instance = ?1 AND seq >= ?2")?
        .execute(params![id, from_seq])?;
    conn.prepare_cached(
        "INSERT INTO superseded (instance, retry, seq, kind, name, outcome, attempts, \
         started_at, finished_at) SELECT instance, ?3, seq, kind, name, outcome, attempts, \
         started_at, finished_at FROM journal WHERE instance = ?1 AND seq >= ?2",
    )?
    .execute(params![id, from_seq, retry])?;
    conn.prepare_cached("DELETE FROM journal WHERE instance = ?1 AND seq >= ?2")?
        .execute(params![id, from_seq])?;
    conn.prepare_cached(
        "INSERT INTO superseded_attempts (instance, retry, seq, attempt, error, started_at, \
         finished_at) SELECT instance, ?3, seq, attempt, error, started_at, finished_at \
         FROM attempts WHERE instance = ?1 AND seq >= ?2",
    )?
    .execute(params![id, from_seq, retry])?;
    conn.prepare_cached("DELETE FROM attempts WHERE instance = ?1 AND seq >= ?2")?
        .execute(params![id, from_seq])?;
    conn.prepare_cached(
        "UPDATE signals SET consumed_seq = NULL WHERE instance = ?1 AND consumed_seq >= ?2",
    )?
    .execute(params![id, from_seq])?;
    conn.prepare_cached(
        "UPDATE instances SET retries = ?2, status = 'running', output = NULL, error = NULL, \
         failed_step = NULL, failed_seq = NULL, cancel_requested = NULL, cancel_seq = NULL, \
         wake_at = NULL, updated_at = ?3, owner = NULL, epoch = epoch + 1 WHERE id = ?1",
    )?
    .execute(params![id, retry, at])?;
    Ok(())
}

/// Stores a forked instance with its copied journal.
fn fork(
    conn: &Connection,
    record: &InstanceRecord,
    journal: &[JournalEntry],
    attempts: &[AttemptRecord],
    ended_timers: &[u32],
) -> Result<(), StoreError> {
    if let Created::Existing(_) = create(conn, record, None)? {
        return Err(StoreError::Conflict {
            instance: record.id.clone(),
            detail: "an instance with this id exists already".into(),
        });
    }
    let id = &record.id;
    for entry in journal {
        apply_quiet(
            conn,
            &WriteOp::Append {
                instance: id.clone(),
                entry: entry.clone(),
            },
        )?;
    }
    for a in attempts {
        apply_quiet(
            conn,
            &WriteOp::Attempt {
                instance: id.clone(),
                record: a.clone(),
            },
        )?;
    }
    for &seq in ended_timers {
        apply_quiet(
            conn,
            &WriteOp::EndTimer {
                instance: id.clone(),
                seq,
            },
        )?;
    }
    Ok(())
}

/// [`apply`] for ops that wake nothing (the parts of a fork).
fn apply_quiet(conn: &Connection, op: &WriteOp) -> Result<(), StoreError> {
    apply(conn, op, &mut Vec::new())
}

pub(super) fn create(
    conn: &Connection,
    rec: &InstanceRecord,
    owner: Option<&LeaseTerms>,
) -> Result<Created, StoreError> {
    let ctx = format!("creating instance `{}`", rec.id);
    let node = owner.map(|t| t.node.as_str());
    let inserted = conn
        .prepare_cached(&format!(
            "INSERT INTO instances ({INSTANCE_COLUMNS}, owner, epoch) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
             ?17, ?18, ?19) ON CONFLICT (id) DO NOTHING"
        ))
        .and_then(|mut s| {
            s.execute(params![
                rec.id,
                rec.workflow,
                rec.version,
                rec.input,
                rec.status.as_str(),
                rec.output,
                rec.error,
                rec.custom_status,
                rec.parent,
                rec.created_at,
                rec.updated_at,
                rec.wake_at,
                rec.failed_step,
                rec.failed_seq,
                rec.cancel_requested,
                rec.cancel_seq,
                rec.retries,
                node,
                i64::from(owner.is_some())
            ])
        })
        .map_err(|e| backend(&ctx, e))?;
    if inserted == 1 {
        let lease = match owner {
            Some(t) => Some(Lease {
                instance: rec.id.clone(),
                node: t.node.clone(),
                epoch: 1,
                expires_at: ownership::node_expiry(conn, &t.node)?,
            }),
            None => None,
        };
        return Ok(Created::New(lease));
    }
    match get_record(conn, &rec.id)? {
        Some(existing) => Ok(Created::Existing(Box::new(existing))),
        None => Err(StoreError::Backend(format!(
            "{ctx}: the insert was ignored but no instance with that id exists"
        ))),
    }
}

pub(super) fn add_signal(
    conn: &Connection,
    instance: &str,
    name: &str,
    payload: &str,
    at: Millis,
    woken: &mut Vec<Wakeup>,
) -> Result<i64, StoreError> {
    let what = format!("delivering signal `{name}`");
    match status_of(conn, instance, &what)? {
        None => return Err(StoreError::NotFound(instance.to_string())),
        Some(status) if status.is_final() => {
            return Err(StoreError::Finished {
                id: instance.to_string(),
                status,
            });
        }
        Some(_) => {}
    }
    conn.prepare_cached(
        "INSERT INTO signals (instance, name, payload, received_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![instance, name, payload, at]))
    .map_err(|e| backend(&format!("{what} for instance `{instance}`"), e))?;
    let id = conn.last_insert_rowid();
    wake(conn, instance, at, &what, woken)?;
    woken.push(Wakeup::signal_added(instance, id, name, payload, at));
    Ok(id)
}

/// Makes an unfinished instance due at `now` because a task of it ended.
pub(super) fn wake_instance(
    conn: &Connection,
    instance: &str,
    now: Millis,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    wake(conn, instance, now, "waking after a task ended", woken)
}

/// Makes an unfinished instance due at `at` (earlier wake times stay; see [`WriteOp::Wake`]).
fn wake(
    conn: &Connection,
    instance: &str,
    at: Millis,
    what: &str,
    woken: &mut Vec<Wakeup>,
) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(concat!(
            "UPDATE instances SET wake_at = MIN(COALESCE(wake_at, ?2), ?2) ",
            "WHERE id = ?1 AND status NOT IN ",
            final_in!()
        ))
        .and_then(|mut s| s.execute(params![instance, at]))
        .map_err(|e| backend(&format!("{what} for instance `{instance}`"), e))?;
    if changed > 0 {
        woken.push(Wakeup::Due {
            instance: instance.to_string(),
        });
    }
    Ok(())
}
