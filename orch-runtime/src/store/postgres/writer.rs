//! The writer task: group commit.
//!
//! One task owns the write connection. It takes the first queued command, drains whatever
//! else is queued (up to `max_batch`), and applies the batch in one transaction:
//!
//! 0. A batch of one command that is one statement (a lone journal append, status change,
//!    creation, signal…) runs as that statement alone, in autocommit: one round trip, as cheap
//!    as PostgreSQL's own one-row commit. Such statements check before they write, so a refused
//!    one changes nothing.
//! 1. **Pipelined**: commands are grouped into lanes by the instance they touch; lanes run
//!    concurrently (tokio-postgres pipelines their statements on the one connection), each lane
//!    in submission order, so one instance's writes keep their order. A command touching
//!    several instances (or the audit log beside an instance) runs alone between lanes.
//!    `BEGIN` is sent ahead of the statements without waiting for its answer.
//! 2. If every command succeeded, `COMMIT`, then every command is acknowledged.
//! 3. If one failed, the transaction is rolled back and the batch runs again, one command
//!    at a time, each in its own savepoint: the failing command is rolled back alone and the
//!    others commit, exactly as in the SQLite store.

use super::Shared;
use super::apply::{Tx, add_signal, apply_all, create, probe};
use super::pg_error;
use crate::store::{Created, InstanceRecord, Millis, StoreError, WriteOp};
use deadpool_postgres::Object;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};

/// A command for the writer.
pub(crate) enum Command {
    Submit(Vec<WriteOp>, oneshot::Sender<Result<(), StoreError>>),
    /// Create an instance, then apply the writes when it is new.
    Create(
        Box<InstanceRecord>,
        Vec<WriteOp>,
        oneshot::Sender<Result<Created, StoreError>>,
    ),
    AddSignal {
        instance: String,
        name: String,
        payload: String,
        at: Millis,
        extra: Vec<WriteOp>,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    Close(oneshot::Sender<Result<(), StoreError>>),
    /// Write and delete a large row: fails when the database cannot grow.
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

/// What a command produced inside the transaction, sent once the transaction is over.
enum Outcome {
    Unit(Result<(), StoreError>),
    Created(Result<Created, StoreError>),
    Signal(Result<i64, StoreError>),
}

impl Outcome {
    fn is_ok(&self) -> bool {
        match self {
            Outcome::Unit(r) => r.is_ok(),
            Outcome::Created(r) => r.is_ok(),
            Outcome::Signal(r) => r.is_ok(),
        }
    }

    fn failed(cmd: &Command, err: StoreError) -> Outcome {
        match cmd {
            Command::Submit(..) | Command::Close(_) | Command::Probe(_) => Outcome::Unit(Err(err)),
            Command::Create(..) => Outcome::Created(Err(err)),
            Command::AddSignal { .. } => Outcome::Signal(Err(err)),
        }
    }
}

/// Sends `outcome` to whoever is waiting for `cmd` (who may have stopped waiting).
fn reply(cmd: Command, outcome: Outcome) {
    match (cmd, outcome) {
        (Command::Submit(_, tx) | Command::Close(tx) | Command::Probe(tx), Outcome::Unit(r)) => {
            let _ = tx.send(r);
        }
        (Command::Create(_, _, tx), Outcome::Created(r)) => {
            let _ = tx.send(r);
        }
        (Command::AddSignal { reply, .. }, Outcome::Signal(r)) => {
            let _ = reply.send(r);
        }
        _ => {
            tracing::error!("internal error: PostgreSQL writer outcome does not match its command")
        }
    }
}

/// The writer task: runs until every sender is gone.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    max_batch: usize,
) {
    let mut conn: Option<Object> = None;
    let mut closed = false;
    while let Some(first) = rx.recv().await {
        if closed {
            let outcome = Outcome::failed(&first, StoreError::Closed);
            reply(first, outcome);
            continue;
        }
        let mut closing = matches!(first, Command::Close(_));
        let mut batch = vec![first];
        while !closing && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(cmd) => {
                    closing = matches!(cmd, Command::Close(_));
                    batch.push(cmd);
                }
                Err(_) => break,
            }
        }
        // A connection that broke is replaced (PostgreSQL restarted, network blip).
        if conn.as_ref().is_some_and(|c| c.is_closed()) {
            conn = None;
        }
        if conn.is_none() {
            match shared.pool.get().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    let err = StoreError::Backend(format!(
                        "writing to {}: no connection ({e}); check that PostgreSQL is up and \
                         reachable",
                        shared.shown
                    ));
                    for cmd in batch {
                        let outcome = Outcome::failed(&cmd, err.clone());
                        reply(cmd, outcome);
                    }
                    closed |= closing;
                    continue;
                }
            }
        }
        let Some(client) = conn.as_ref() else {
            continue;
        };
        let started = std::time::Instant::now();
        let size = batch.len();
        let outcomes = run_batch(Tx::new(client), &batch, &shared).await;
        shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        shared.metrics.batch_size.observe(size as f64);
        for (cmd, outcome) in batch.into_iter().zip(outcomes) {
            reply(cmd, outcome);
        }
        closed |= closing;
    }
}

/// Runs one command.
async fn execute(tx: Tx<'_>, cmd: &Command) -> Outcome {
    match cmd {
        Command::Submit(ops, _) => Outcome::Unit(apply_all(tx, ops).await),
        Command::Create(record, extra, _) => Outcome::Created(
            async {
                let c = create(tx, record).await?;
                if matches!(c, Created::New) {
                    apply_all(tx, extra).await?;
                }
                Ok(c)
            }
            .await,
        ),
        Command::AddSignal {
            instance,
            name,
            payload,
            at,
            extra,
            ..
        } => Outcome::Signal(
            async {
                let id = add_signal(tx, instance, name, payload, *at).await?;
                apply_all(tx, extra).await?;
                Ok(id)
            }
            .await,
        ),
        Command::Close(_) => Outcome::Unit(Ok(())),
        Command::Probe(_) => Outcome::Unit(probe(tx).await),
    }
}

/// The one thing `cmd` touches (an instance, the audit log, the probe row), or `None` when
/// it touches several.
fn lane_key(cmd: &Command) -> Option<&str> {
    fn key(op: &WriteOp) -> &str {
        match op {
            WriteOp::Audit(_) => "\u{0}audit",
            op => op.instance(),
        }
    }
    let (first, rest): (&str, &[WriteOp]) = match cmd {
        Command::Submit(ops, _) => match ops.split_first() {
            Some((op, rest)) => (key(op), rest),
            None => return Some(""),
        },
        Command::Create(rec, extra, _) => (&rec.id, extra),
        Command::AddSignal {
            instance, extra, ..
        } => (instance, extra),
        Command::Close(_) => return Some(""),
        Command::Probe(_) => return Some("\u{0}probe"),
    };
    rest.iter().all(|op| key(op) == first).then_some(first)
}

/// Whether `cmd` is one statement (see `apply`): a lone write of one row, or a creation
/// without extra writes.
fn single_statement(cmd: &Command) -> bool {
    match cmd {
        Command::Submit(ops, _) => match ops.as_slice() {
            [op] => !matches!(op, WriteOp::Retry { .. } | WriteOp::Fork { .. }),
            _ => false,
        },
        Command::Create(_, extra, _) => extra.is_empty(),
        Command::AddSignal { extra, .. } => extra.is_empty(),
        Command::Close(_) => true,
        Command::Probe(_) => false,
    }
}

async fn control(tx: Tx<'_>, sql: &str, shared: &Shared) -> Result<(), StoreError> {
    tx.batch(sql)
        .await
        .map_err(|e| pg_error(&format!("writing to {} ({sql})", shared.shown), &e))
}

/// Runs `batch` in one transaction; returns each command's outcome.
async fn run_batch(tx: Tx<'_>, batch: &[Command], shared: &Shared) -> Vec<Outcome> {
    let fail_all = |err: StoreError| -> Vec<Outcome> {
        tracing::error!(error = %err, commands = batch.len(), "PostgreSQL write batch failed");
        batch
            .iter()
            .map(|cmd| Outcome::failed(cmd, err.clone()))
            .collect()
    };
    if let [only] = batch
        && single_statement(only)
    {
        // One statement is a transaction of its own (autocommit): one round trip, like a bare
        // INSERT. It changes nothing when it fails (every such statement checks before it
        // writes), so the outcome is the same as in a transaction.
        let outcome = execute(tx, only).await;
        if outcome.is_ok() {
            shared.commits.fetch_add(1, Ordering::Relaxed);
        }
        return vec![outcome];
    }
    // BEGIN is pipelined with the batch's statements: sent first on the same connection, so
    // they run inside it, without waiting a round trip for its answer. (BEGIN fails only on a
    // broken connection, where the statements fail too.)
    let (begun, outcomes) =
        futures_util::future::join(control(tx, "BEGIN", shared), pipelined(tx, batch)).await;
    if let Err(e) = begun {
        let _ = tx.batch("ROLLBACK").await;
        return fail_all(e);
    }
    if outcomes.iter().all(Outcome::is_ok) {
        return match control(tx, "COMMIT", shared).await {
            Ok(()) => {
                shared.commits.fetch_add(1, Ordering::Relaxed);
                outcomes
            }
            Err(e) => fail_all(e),
        };
    }
    if let Err(e) = control(tx, "ROLLBACK", shared).await {
        return fail_all(e);
    }
    if batch.len() == 1 {
        // One command: the transaction was its unit, and it failed alone.
        return outcomes;
    }
    match one_by_one(tx, batch, shared).await {
        Ok(outcomes) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            outcomes
        }
        Err(e) => {
            let _ = tx.batch("ROLLBACK").await;
            fail_all(e)
        }
    }
}

/// Runs the commands pipelined by lanes (see the module doc). Stops at the first failure.
async fn pipelined(tx: Tx<'_>, batch: &[Command]) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = batch.iter().map(|_| None).collect();
    let mut next = 0;
    while next < batch.len() {
        // One segment: consecutive commands with one key each, as lanes by key.
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        let mut lane_of: HashMap<&str, usize> = HashMap::new();
        while next < batch.len() {
            match lane_key(&batch[next]) {
                Some(key) => {
                    let lane = *lane_of.entry(key).or_insert_with(|| {
                        lanes.push(Vec::new());
                        lanes.len() - 1
                    });
                    lanes[lane].push(next);
                    next += 1;
                }
                None if lanes.is_empty() => {
                    lanes.push(vec![next]);
                    next += 1;
                    break;
                }
                None => break,
            }
        }
        let results = futures_util::future::join_all(lanes.iter().map(|lane| async move {
            let mut done = Vec::with_capacity(lane.len());
            for &index in lane {
                let outcome = execute(tx, &batch[index]).await;
                let ok = outcome.is_ok();
                done.push((index, outcome));
                if !ok {
                    break;
                }
            }
            done
        }))
        .await;
        let mut failed = false;
        for (index, outcome) in results.into_iter().flatten() {
            failed |= !outcome.is_ok();
            outcomes[index] = Some(outcome);
        }
        if failed {
            break;
        }
    }
    outcomes
        .into_iter()
        .zip(batch)
        .map(|(o, cmd)| {
            o.unwrap_or_else(|| {
                Outcome::failed(cmd, StoreError::Backend("not run: the batch failed".into()))
            })
        })
        .collect()
}

/// Runs the commands one at a time, each in a savepoint, and commits the ones that succeeded.
async fn one_by_one(
    tx: Tx<'_>,
    batch: &[Command],
    shared: &Shared,
) -> Result<Vec<Outcome>, StoreError> {
    control(tx, "BEGIN", shared).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for cmd in batch {
        control(tx, "SAVEPOINT orch_cmd", shared).await?;
        let outcome = execute(tx, cmd).await;
        if outcome.is_ok() {
            control(tx, "RELEASE orch_cmd", shared).await?;
        } else {
            control(tx, "ROLLBACK TO orch_cmd; RELEASE orch_cmd", shared).await?;
        }
        outcomes.push(outcome);
    }
    control(tx, "COMMIT", shared).await?;
    Ok(outcomes)
}
