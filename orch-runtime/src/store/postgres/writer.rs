//! The writer tasks: group commit.
//!
//! Each writer task owns one write connection and the commands [`route`] sends it (an
//! instance's always to the same writer; a command over several instances to writer 0, run
//! alone while the others wait at a barrier, see [`Queued`]). It takes the first queued
//! command, drains whatever else is queued (up to `max_batch`), and applies the batch in one
//! transaction:
//!
//! Fencing: the fences of a batch's submissions are checked with one query,
//! `SELECT id, owner, lease_epoch FROM instances WHERE id = ANY($1) ORDER BY id FOR UPDATE`,
//! sent with `BEGIN`; the rows stay locked until the commit, so no other node can claim them in
//! between. A submission whose fence does not hold is refused ([`StoreError::LeaseLost`]) and
//! not run; the others go on. A submission after a command of the same batch that may change
//! its instance's owner (a claim, a release, a termination…) checks its fence again when it runs.
//!
//! Wake-ups: what the batch wakes is sent to other nodes with `pg_notify` inside the
//! transaction (delivered by PostgreSQL only if it commits), and to this process's subscribers
//! after the commit.
//!
//! 0. A batch of one command that is one statement (a lone journal append or end — fenced
//!    too: the statement locks the instance row and checks the lease itself, and an end sends
//!    its own `pg_notify` —, status change, creation, signal…) runs as that statement alone, in
//!    autocommit: one round trip, as cheap as PostgreSQL's own one-row commit. Such statements
//!    check before they write, so a refused one changes nothing.
//! 1. **Pipelined**: commands are grouped into lanes by the instance they touch; lanes run
//!    concurrently (tokio-postgres pipelines their statements on the one connection), each lane
//!    in submission order, so one instance's writes keep their order. A command touching
//!    several instances (or the audit log beside an instance) runs alone between lanes.
//!    `BEGIN` is sent ahead of the statements without waiting for its answer.
//! 2. If every command succeeded, `COMMIT`, then every command is acknowledged.
//! 3. If one failed, the transaction is rolled back and the batch runs again, one command
//!    at a time, each in its own savepoint: the failing command is rolled back alone and the
//!    others commit, exactly as in the SQLite store.

use super::apply::{
    Tx, add_signal, append_fenced, append_many, apply_all, create, create_many, finish_fenced,
    finish_many, is_lone_append, is_lone_finish, probe, seq_taken,
};
use super::notify;
use super::ownership;
use super::{Shared, pg_error};
use crate::store::StoreError;
use crate::store::command::{Command, Outcome, reply};
use crate::store::{
    Created, Fence, InstanceRecord, JournalEntry, Lease, LeaseTerms, Wakeup, WriteOp,
};
use deadpool_postgres::Object;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, oneshot};

/// What a writer's queue holds: commands, and the two halves of a barrier between writers
/// (see [`PostgresStore`](super::PostgresStore)'s routing): a command that touches several
/// instances runs on writer 0 while every other writer waits, having committed everything
/// queued before it.
pub(crate) enum Queued {
    Cmd(Command),
    /// Say on `reached` that everything queued before is committed, then wait for `resume`
    /// (or for its sender to be dropped).
    Pause {
        reached: oneshot::Sender<()>,
        resume: oneshot::Receiver<()>,
    },
    /// Wait until every other writer `reached` its pause, run `cmd` alone, then let them go.
    Alone {
        reached: Vec<oneshot::Receiver<()>>,
        resume: Vec<oneshot::Sender<()>>,
        cmd: Command,
    },
}

/// One writer task: runs until every sender is gone.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    max_batch: usize,
) {
    let mut writer = Writer {
        conn: None,
        closed: false,
    };
    let mut pending: Option<Queued> = None;
    loop {
        let item = match pending.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        let first = match item {
            Queued::Cmd(cmd) => cmd,
            Queued::Pause { reached, resume } => {
                let _ = reached.send(());
                let _ = resume.await;
                continue;
            }
            Queued::Alone {
                reached,
                resume,
                cmd,
            } => {
                for r in reached {
                    let _ = r.await;
                }
                writer.write(vec![cmd], &shared).await;
                drop(resume);
                continue;
            }
        };
        let mut closing = matches!(first, Command::Close(_));
        let mut batch = vec![first];
        while !closing && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Queued::Cmd(cmd)) => {
                    closing = matches!(cmd, Command::Close(_));
                    batch.push(cmd);
                }
                Ok(barrier) => {
                    pending = Some(barrier);
                    break;
                }
                Err(_) => break,
            }
        }
        writer.write(batch, &shared).await;
    }
}

/// A writer's connection (taken from the pool when first needed, replaced when it broke) and
/// whether it was closed.
struct Writer {
    conn: Option<Object>,
    closed: bool,
}

impl Writer {
    /// Writes `batch` in one transaction (see the module doc) and answers every command.
    async fn write(&mut self, batch: Vec<Command>, shared: &Arc<Shared>) {
        if self.closed {
            for cmd in batch {
                let outcome = Outcome::failed(&cmd, StoreError::Closed);
                reply(cmd, outcome);
            }
            return;
        }
        let closing = batch.iter().any(|c| matches!(c, Command::Close(_)));
        // A connection that broke is replaced (PostgreSQL restarted, network blip).
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            match shared.pool.get().await {
                Ok(c) => self.conn = Some(c),
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
                    self.closed |= closing;
                    return;
                }
            }
        }
        let Some(client) = self.conn.as_ref() else {
            return;
        };
        let started = std::time::Instant::now();
        let size = batch.len();
        let (outcomes, woken) = run_batch(Tx::new(client), &batch, shared).await;
        shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        shared.metrics.batch_size.observe(size as f64);
        for (cmd, outcome) in batch.into_iter().zip(outcomes) {
            reply(cmd, outcome);
        }
        for w in woken {
            shared.hub.send(w);
        }
        self.closed |= closing;
    }
}

/// The writer (of `writers`) that runs `cmd`, or `None` when it touches several instances and
/// must run alone (see [`Queued::Alone`]). An instance's commands always go to the same
/// writer, so they keep their order.
pub(crate) fn route(cmd: &Command, writers: usize) -> Option<usize> {
    use std::hash::{Hash, Hasher};
    if writers <= 1 {
        return Some(0);
    }
    let key = lane_key(cmd)?;
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    Some((h.finish() % writers as u64) as usize)
}

/// How a submission's fence is checked.
#[derive(Clone, Copy)]
enum Check {
    /// No fence.
    None,
    /// Judged by the batch's fence query.
    Batch,
    /// Checked when it runs (an earlier command of the batch may have moved its instance).
    Now,
}

/// Which commands of `batch` need which check, and the instances the batch query looks at.
fn plan(batch: &[Command]) -> (Vec<Check>, Vec<String>) {
    let mut moved: HashSet<&str> = HashSet::new();
    let mut all_moved = false;
    let mut ids = Vec::new();
    let checks = batch
        .iter()
        .map(|cmd| {
            let check = match cmd {
                Command::Submit(Some(f), ..) => {
                    if all_moved || moved.contains(f.instance.as_str()) {
                        Check::Now
                    } else {
                        ids.push(f.instance.clone());
                        Check::Batch
                    }
                }
                _ => Check::None,
            };
            match cmd {
                Command::Submit(_, ops, _) => moved.extend(
                    ops.iter()
                        .filter(|op| {
                            matches!(
                                op,
                                WriteOp::Finish { .. }
                                    | WriteOp::Retry { .. }
                                    | WriteOp::SetStatus { .. }
                                    | WriteOp::Fork { .. }
                            )
                        })
                        .map(WriteOp::instance),
                ),
                Command::Create(rec, ..) | Command::Enqueue(rec, ..) => {
                    moved.insert(&rec.id);
                }
                Command::Claim(_, id, _) => {
                    moved.insert(id);
                }
                Command::ClaimDue(..) | Command::Release(..) | Command::Admit(..) => {
                    all_moved = true
                }
                _ => {}
            }
            check
        })
        .collect();
    ids.sort();
    ids.dedup();
    (checks, ids)
}

type Fences = HashMap<String, (Option<String>, u64)>;

fn fence_of(cmd: &Command) -> Option<&Fence> {
    match cmd {
        Command::Submit(Some(f), ..) => Some(f),
        _ => None,
    }
}

/// Runs one command; returns what it produced and what it woke.
async fn execute(tx: Tx<'_>, cmd: &Command, check: Check) -> (Outcome, Vec<Wakeup>) {
    let mut woken = Vec::new();
    let outcome = match cmd {
        Command::Submit(fence, ops, _) => Outcome::Unit(
            async {
                if let (Check::Now, Some(f)) = (check, fence) {
                    ownership::check(tx, f).await?;
                }
                apply_all(tx, ops, &mut woken).await
            }
            .await,
        ),
        Command::Create(record, owner, extra, _) => Outcome::Created(
            async {
                let c = create(tx, record, owner.as_ref()).await?;
                if matches!(c, Created::New(_)) {
                    apply_all(tx, extra, &mut woken).await?;
                }
                if matches!(c, Created::New(None)) {
                    woken.push(Wakeup::Due {
                        instance: record.id.clone(),
                    });
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
                let id = add_signal(tx, instance, name, payload, *at, &mut woken).await?;
                apply_all(tx, extra, &mut woken).await?;
                Ok(id)
            }
            .await,
        ),
        Command::ClaimDue(terms, limit, _) => {
            Outcome::Claimed(ownership::claim_due(tx, terms, *limit).await)
        }
        Command::Claim(terms, id, _) => Outcome::Lease(ownership::claim(tx, terms, id).await),
        Command::Renew(terms, held, _) => Outcome::Lost(ownership::renew(tx, terms, held).await),
        Command::Release(node, ids, _) => {
            Outcome::Unit(ownership::release(tx, node, ids.as_deref(), &mut woken).await)
        }
        Command::Close(_) => Outcome::Unit(Ok(())),
        Command::Probe(_) => Outcome::Unit(probe(tx).await),
        Command::LeaseTasks(terms, queues, limit, _) => {
            Outcome::Tasks(super::tasks::lease(tx, terms, queues, *limit).await)
        }
        Command::HeartbeatTask(id, token, terms, _) => {
            Outcome::Until(super::tasks::heartbeat(tx, id, *token, terms).await)
        }
        Command::RecordWorkers(seen, forget_before, _) => {
            Outcome::Unit(super::tasks::record_workers(tx, seen, *forget_before).await)
        }
        Command::FinishTask {
            task,
            token,
            result,
            now,
            ..
        } => Outcome::Unit(super::tasks::finish(tx, task, *token, result, *now, &mut woken).await),
        Command::Enqueue(record, entry, extra, _) => {
            Outcome::Enqueued(super::flow::enqueue(tx, record, entry, extra, &mut woken).await)
        }
        Command::Admit(now, limit, _) => {
            Outcome::Admitted(super::flow::admit(tx, *now, *limit, &mut woken).await)
        }
        Command::SetQueueConfig(queue, config, _) => {
            Outcome::Unit(super::flow::set_config(tx, queue, config).await)
        }
    };
    if !outcome.is_ok() {
        woken.clear();
    }
    (outcome, woken)
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
        Command::Submit(_, ops, _) => match ops.split_first() {
            Some((op, rest)) => (key(op), rest),
            None => return Some(""),
        },
        Command::Create(rec, _, extra, _) | Command::Enqueue(rec, _, extra, _) => (&rec.id, extra),
        Command::SetQueueConfig(..) => return Some("\u{0}queues"),
        Command::AddSignal {
            instance, extra, ..
        } => (instance, extra),
        Command::Claim(_, id, _) => (id, &[]),
        Command::Close(_) => return Some(""),
        Command::Probe(_) => return Some("\u{0}probe"),
        Command::Renew(..) => return Some("\u{0}renew"),
        Command::LeaseTasks(..) => return Some("\u{0}tasks"),
        Command::RecordWorkers(..) => return Some("\u{0}workers"),
        // A task's heartbeat and end go with its instance's writes (its id starts with it).
        Command::HeartbeatTask(id, ..) | Command::FinishTask { task: id, .. } => {
            return Some(crate::store::task::task_instance(id));
        }
        Command::ClaimDue(..) | Command::Release(..) | Command::Admit(..) => return None,
    };
    rest.iter().all(|op| key(op) == first).then_some(first)
}

/// Whether `cmd` is one statement that checks its own fence, if any, and tells other nodes
/// itself what it wakes (see `apply`): an unfenced lone write of one row, a fenced lone
/// checkpoint or end, or an owned creation without extra writes.
fn single_statement(cmd: &Command) -> bool {
    match cmd {
        // A step's checkpoint, an instance's end: the fence is checked by the statement itself
        // (`append_fenced`, `finish_fenced`, which also sends the end's NOTIFY).
        Command::Submit(Some(_), ops, _) => is_lone_append(ops) || is_lone_finish(ops),
        Command::Submit(None, ops, _) => match ops.as_slice() {
            [op] => matches!(
                op,
                WriteOp::Append { .. }
                    | WriteOp::Attempt { .. }
                    | WriteOp::ConsumeSignal { .. }
                    | WriteOp::CustomStatus { .. }
                    | WriteOp::Attribute { .. }
                    | WriteOp::EndTimer { .. }
                    | WriteOp::CancelDelivered { .. }
            ),
            _ => false,
        },
        Command::Create(_, Some(_), extra, _) => extra.is_empty(),
        Command::Renew(..) | Command::Close(_) => true,
        _ => false,
    }
}

async fn control(tx: Tx<'_>, sql: &str, shared: &Shared) -> Result<(), StoreError> {
    tx.batch(sql)
        .await
        .map_err(|e| pg_error(&format!("writing to {} ({sql})", shared.shown), &e))
}

/// Runs `batch` in one transaction; returns each command's outcome and what the batch woke.
async fn run_batch(tx: Tx<'_>, batch: &[Command], shared: &Shared) -> (Vec<Outcome>, Vec<Wakeup>) {
    let fail_all = |err: StoreError| -> (Vec<Outcome>, Vec<Wakeup>) {
        tracing::error!(error = %err, commands = batch.len(), "PostgreSQL write batch failed");
        let outcomes = batch
            .iter()
            .map(|cmd| Outcome::failed(cmd, err.clone()))
            .collect();
        (outcomes, Vec::new())
    };
    if let [only] = batch
        && single_statement(only)
    {
        // One statement is a transaction of its own (autocommit): one round trip, like a bare
        // INSERT. It changes nothing when it fails (every such statement checks before it
        // writes), so the outcome is the same as in a transaction; only an end wakes anything,
        // and its statement tells the other nodes itself.
        let (outcome, woken) = match only {
            Command::Submit(Some(fence), ops, _) if is_lone_finish(ops) => {
                match finish_fenced(tx, fence, ops, &shared.channel, &shared.token).await {
                    Ok(woken) => (Outcome::Unit(Ok(())), woken),
                    Err(e) => (Outcome::Unit(Err(e)), Vec::new()),
                }
            }
            Command::Submit(Some(fence), ops, _) => (
                Outcome::Unit(append_fenced(tx, fence, ops).await),
                Vec::new(),
            ),
            _ => execute(tx, only, Check::None).await,
        };
        if outcome.is_ok() {
            shared.commits.fetch_add(1, Ordering::Relaxed);
        }
        return (vec![outcome], woken);
    }
    let (checks, ids) = plan(batch);
    // BEGIN is pipelined with the fence query (sent first on the same connection).
    let (begun, fenced) = futures_util::future::join(control(tx, "BEGIN", shared), async {
        if ids.is_empty() {
            Ok(Fences::new())
        } else {
            ownership::fences(tx, &ids).await
        }
    })
    .await;
    let fenced = match begun.and(fenced) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.batch("ROLLBACK").await;
            return fail_all(e);
        }
    };
    // Submissions whose fence does not hold are refused here and not run.
    let refused: Vec<Option<Outcome>> = batch
        .iter()
        .zip(&checks)
        .map(|(cmd, check)| match (check, fence_of(cmd)) {
            (Check::Batch, Some(f)) => ownership::judge(f, fenced.get(&f.instance))
                .err()
                .map(|e| Outcome::Unit(Err(e))),
            _ => None,
        })
        .collect();
    // Lone checkpoints, lone ends and plain creations of instances nothing else in the batch
    // touches go in one statement each, pipelined beside the rest.
    let (bulk, ends, creates) = bulk_writes(batch, &checks, &refused);
    // What the lanes do not run: the refused, and (with a placeholder outcome, replaced
    // below by the multi-row statements' results) the bulk-written.
    let mut decided = refused;
    for &i in bulk.iter().chain(&ends) {
        decided[i] = Some(Outcome::Unit(Ok(())));
    }
    for &i in &creates {
        decided[i] = Some(Outcome::Created(Ok(Created::New(None))));
    }
    let (created, written, ended, (mut outcomes, mut woken)) = futures_util::future::join4(
        async {
            if creates.is_empty() {
                return Ok(Default::default());
            }
            let rows: Vec<(&InstanceRecord, &LeaseTerms)> = creates
                .iter()
                .filter_map(|&i| lone_create(&batch[i]))
                .collect();
            create_many(tx, &rows).await
        },
        async {
            if bulk.is_empty() {
                return Ok(Default::default());
            }
            let entries: Vec<(&str, &JournalEntry)> = bulk
                .iter()
                .filter_map(|&i| lone_append(&batch[i]))
                .collect();
            append_many(tx, &entries).await
        },
        async {
            let mut woken = Vec::new();
            if !ends.is_empty() {
                let ops: Vec<&WriteOp> = ends
                    .iter()
                    .filter_map(|&i| lone_finish(&batch[i]))
                    .collect();
                finish_many(tx, &ops, &mut woken).await?;
            }
            Ok::<_, StoreError>(woken)
        },
        pipelined(tx, batch, &checks, decided),
    )
    .await;
    for &i in &creates {
        let Some((rec, terms)) = lone_create(&batch[i]) else {
            continue;
        };
        outcomes[i] = Outcome::Created(match &created {
            Ok(made) => match made.get(&rec.id) {
                Some(&expires_at) => Ok(Created::New(Some(Lease {
                    instance: rec.id.clone(),
                    node: terms.node.clone(),
                    epoch: 1,
                    expires_at,
                }))),
                // It existed: the one-row path reads it.
                None => create(tx, rec, Some(terms)).await,
            },
            Err(e) => Err(e.clone()),
        });
    }
    match ended {
        Ok(w) => woken.extend(w),
        Err(e) => {
            for &i in &ends {
                outcomes[i] = Outcome::Unit(Err(e.clone()));
            }
        }
    }
    for &i in &bulk {
        outcomes[i] = match (&written, lone_append(&batch[i])) {
            (Ok(written), Some((id, entry)))
                if written.contains(&(id.to_string(), i64::from(entry.seq))) =>
            {
                Outcome::Unit(Ok(()))
            }
            (Ok(_), Some((id, entry))) => Outcome::Unit(Err(seq_taken(id, entry.seq))),
            (Err(e), _) => Outcome::Unit(Err(e.clone())),
            (Ok(_), None) => Outcome::Unit(Err(StoreError::Backend(
                "internal error: a bulk append that is not one".into(),
            ))),
        };
    }
    let ok = outcomes
        .iter()
        .zip(batch)
        .all(|(o, cmd)| o.is_ok() || is_refused_fence(o, cmd));
    if ok {
        // pg_notify inside the transaction: other nodes hear of it only if it commits. When it
        // fails, the transaction is aborted and COMMIT rolls back: report the failure.
        let (sent, committed) = futures_util::future::join(
            notify::send(tx, &shared.channel, &shared.token, &woken),
            control(tx, "COMMIT", shared),
        )
        .await;
        return match sent.and(committed) {
            Ok(()) => {
                shared.commits.fetch_add(1, Ordering::Relaxed);
                (outcomes, woken)
            }
            Err(e) => fail_all(e),
        };
    }
    if let Err(e) = control(tx, "ROLLBACK", shared).await {
        return fail_all(e);
    }
    if batch.len() == 1 {
        // One command: the transaction was its unit, and it failed alone.
        return (outcomes, Vec::new());
    }
    match one_by_one(tx, batch, shared).await {
        Ok(done) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            done
        }
        Err(e) => {
            let _ = tx.batch("ROLLBACK").await;
            fail_all(e)
        }
    }
}

/// The instance and entry of a lone journal append.
fn lone_append(cmd: &Command) -> Option<(&str, &JournalEntry)> {
    match cmd {
        Command::Submit(_, ops, _) => match ops.as_slice() {
            [WriteOp::Append { instance, entry }] => Some((instance.as_str(), entry)),
            _ => None,
        },
        _ => None,
    }
}

/// The record and terms of an owned creation without extra writes.
fn lone_create(cmd: &Command) -> Option<(&InstanceRecord, &LeaseTerms)> {
    match cmd {
        Command::Create(rec, Some(terms), extra, _) if extra.is_empty() => Some((rec, terms)),
        _ => None,
    }
}

/// The lone end (`Finish`) a command is, if it is one.
fn lone_finish(cmd: &Command) -> Option<&WriteOp> {
    match cmd {
        Command::Submit(_, ops, _) => match ops.as_slice() {
            [op @ WriteOp::Finish { .. }] => Some(op),
            _ => None,
        },
        _ => None,
    }
}

/// The commands of `batch` written by a multi-row statement — lone journal appends and lone
/// ends whose fence the batch's query judged (and locked), and owned creations without extra
/// writes —, of instances no other command of the batch touches (so no order between
/// commands of one instance is at stake).
/// None when the batch holds a command over many instances (a claim round, a release).
fn bulk_writes(
    batch: &[Command],
    checks: &[Check],
    refused: &[Option<Outcome>],
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let mut touches: HashMap<&str, usize> = HashMap::new();
    for cmd in batch {
        match lane_key(cmd) {
            Some(key) => *touches.entry(key).or_default() += 1,
            None => return (Vec::new(), Vec::new(), Vec::new()),
        }
    }
    let alone = |i: usize, cmd: &Command| {
        refused[i].is_none() && lane_key(cmd).is_some_and(|k| touches.get(k) == Some(&1))
    };
    let pick = |is: fn(&Command) -> bool, fenced: bool| {
        let picked: Vec<usize> = batch
            .iter()
            .enumerate()
            .filter(|&(i, cmd)| {
                alone(i, cmd) && is(cmd) && (!fenced || matches!(checks[i], Check::Batch))
            })
            .map(|(i, _)| i)
            .collect();
        // One alone gains nothing over its own statement.
        if picked.len() < 2 { Vec::new() } else { picked }
    };
    (
        pick(|c| lone_append(c).is_some(), true),
        pick(|c| lone_finish(c).is_some(), true),
        pick(|c| lone_create(c).is_some(), false),
    )
}

/// Whether `outcome` is a fence refusal decided before anything of `cmd` ran.
fn is_refused_fence(outcome: &Outcome, cmd: &Command) -> bool {
    fence_of(cmd).is_some() && matches!(outcome.error(), Some(StoreError::LeaseLost { .. }))
}

/// Runs the commands pipelined by lanes (see the module doc), except those `decided` already
/// holds an outcome for. Stops at the first failure.
async fn pipelined(
    tx: Tx<'_>,
    batch: &[Command],
    checks: &[Check],
    decided: Vec<Option<Outcome>>,
) -> (Vec<Outcome>, Vec<Wakeup>) {
    let mut outcomes: Vec<Option<(Outcome, Vec<Wakeup>)>> = decided
        .into_iter()
        .map(|o| o.map(|o| (o, Vec::new())))
        .collect();
    let mut next = 0;
    while next < batch.len() {
        // One segment: consecutive commands with one key each, as lanes by key.
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        let mut lane_of: HashMap<&str, usize> = HashMap::new();
        while next < batch.len() {
            if outcomes[next].is_some() {
                next += 1;
                continue;
            }
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
                let (outcome, woken) = execute(tx, &batch[index], checks[index]).await;
                let ok = outcome.is_ok();
                done.push((index, outcome, woken));
                if !ok {
                    break;
                }
            }
            done
        }))
        .await;
        let mut failed = false;
        for (index, outcome, woken) in results.into_iter().flatten() {
            failed |= !outcome.is_ok();
            outcomes[index] = Some((outcome, woken));
        }
        if failed {
            break;
        }
    }
    let mut all_woken = Vec::new();
    let outcomes = outcomes
        .into_iter()
        .zip(batch)
        .map(|(o, cmd)| match o {
            Some((o, woken)) => {
                all_woken.extend(woken);
                o
            }
            None => Outcome::failed(cmd, StoreError::Backend("not run: the batch failed".into())),
        })
        .collect();
    (outcomes, all_woken)
}

/// Runs the commands one at a time, each in a savepoint (each fence checked as it runs), and
/// commits the ones that succeeded.
async fn one_by_one(
    tx: Tx<'_>,
    batch: &[Command],
    shared: &Shared,
) -> Result<(Vec<Outcome>, Vec<Wakeup>), StoreError> {
    control(tx, "BEGIN", shared).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut all_woken = Vec::new();
    for cmd in batch {
        control(tx, "SAVEPOINT orch_cmd", shared).await?;
        let check = if fence_of(cmd).is_some() {
            Check::Now
        } else {
            Check::None
        };
        let (outcome, woken) = execute(tx, cmd, check).await;
        if outcome.is_ok() {
            control(tx, "RELEASE orch_cmd", shared).await?;
            all_woken.extend(woken);
        } else {
            control(tx, "ROLLBACK TO orch_cmd; RELEASE orch_cmd", shared).await?;
        }
        outcomes.push(outcome);
    }
    notify::send(tx, &shared.channel, &shared.token, &all_woken).await?;
    control(tx, "COMMIT", shared).await?;
    Ok((outcomes, all_woken))
}
