//! The writer thread: group commit.
//!
//! One thread owns the write connection. It takes one command, drains whatever else is queued
//! (up to `max_batch`), runs them all in one `BEGIN IMMEDIATE` transaction — each inside its own
//! savepoint, so one failing command is rolled back alone — and replies to every command after
//! `COMMIT` returned; the wake-ups of the commands that took effect are sent after that. While
//! anyone listens it also polls `PRAGMA data_version` to hear of other processes' commits.

use super::apply::{add_signal, apply, apply_known, create};
use super::ownership::{self, check_fence};
use super::{CHANGE_POLL, backend};
use crate::store::command::{Command, Outcome, reply};
use crate::store::{Created, StoreError, StoreMetrics, Wakeup, WakeupHub, WriteOp};
use crate::store::{Fence, Status};
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// The writer thread's state.
pub(super) struct Writer<'a> {
    pub(super) conn: Connection,
    pub(super) max_batch: usize,
    pub(super) commits: &'a AtomicU64,
    pub(super) metrics: &'a StoreMetrics,
    pub(super) hub: WakeupHub,
}

impl Writer<'_> {
    pub(super) fn run(self, rx: mpsc::Receiver<Command>) {
        let mut fences = Fences::default();
        // After a Close every command is refused, but the connection stays open until the
        // store is dropped: closing it last lets SQLite fold the WAL into the database file.
        let mut closed = false;
        // Other processes' commits change `data_version` as this connection sees it; our own
        // do not.
        let mut seen_version = self.data_version();
        let mut last_poll = std::time::Instant::now();
        loop {
            let first = if self.hub.watched() && !closed {
                match rx.recv_timeout(CHANGE_POLL) {
                    Ok(cmd) => Some(cmd),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(cmd) => Some(cmd),
                    Err(_) => return,
                }
            };
            if !closed && last_poll.elapsed() >= CHANGE_POLL {
                last_poll = std::time::Instant::now();
                let now = self.data_version();
                if now != seen_version {
                    seen_version = now;
                    self.hub.send(Wakeup::Changed);
                }
            }
            let Some(first) = first else { continue };
            if closed {
                let outcome = Outcome::failed(&first, StoreError::Closed);
                reply(first, outcome);
                continue;
            }
            let mut closing = matches!(first, Command::Close(_));
            let mut batch = vec![first];
            while !closing && batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(cmd) => {
                        closing = matches!(cmd, Command::Close(_));
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let size = batch.len();
            run_batch(&self.conn, &mut fences, batch, self.commits, &self.hub);
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(size as f64);
            closed |= closing;
        }
    }

    fn data_version(&self) -> i64 {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap_or(0)
    }
}

/// The fences this writer checked, with the instance's status then: a fenced write whose
/// fence is here needs no read of the instance row.
///
/// Exact, not a guess: an entry is what the row holds. Other processes' commits change the
/// connection's `PRAGMA data_version` (read once the transaction holds the write lock, so none
/// can commit after it), which empties the cache; this writer's own writes that may change an
/// instance's owner, epoch or status drop its entry (every command but a fenced submit of
/// ops that touch none of them drops them all); a rollback empties it, since an entry read
/// after a rolled-back write would describe that write.
#[derive(Default)]
struct Fences {
    version: Option<i64>,
    held: HashMap<String, (String, u64, Status)>,
}

impl Fences {
    /// At the start of a write transaction.
    fn begin(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let now: i64 = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| backend("reading the data version", e))?;
        if self.version != Some(now) {
            self.held.clear();
            self.version = Some(now);
        }
        Ok(())
    }

    /// The instance's status if `fence` still holds; a read of the row unless known.
    fn check(&mut self, conn: &Connection, fence: &Fence) -> Result<Status, StoreError> {
        if let Some((node, epoch, status)) = self.held.get(&fence.instance)
            && node == fence.node.as_str()
            && *epoch == fence.epoch
        {
            return Ok(*status);
        }
        let status = check_fence(conn, fence)?;
        self.held.insert(
            fence.instance.clone(),
            (fence.node.to_string(), fence.epoch, status),
        );
        Ok(status)
    }

    /// After `op` was applied: forgets its instance unless `op` leaves owner, epoch and
    /// status alone.
    fn applied(&mut self, op: &WriteOp) {
        if !leaves_lease_and_status(op) {
            self.held.remove(op.instance());
        }
    }

    fn forget(&mut self) {
        self.held.clear();
    }
}

/// Whether `op` leaves its instance's owner, epoch and status as they were (what a fence check
/// read stays true after it).
fn leaves_lease_and_status(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::Append { .. }
            | WriteOp::Attempt { .. }
            | WriteOp::ConsumeSignal { .. }
            | WriteOp::CustomStatus { .. }
            | WriteOp::EndTimer { .. }
            | WriteOp::Attribute { .. }
            | WriteOp::CancelDelivered { .. }
            | WriteOp::EnqueueTask { .. }
            | WriteOp::CancelTask { .. }
            | WriteOp::Audit(_)
    )
}

/// Runs `batch` in one transaction, replies to every command after it ended and sends the
/// wake-ups of the commands that took effect.
fn run_batch(
    conn: &Connection,
    fences: &mut Fences,
    batch: Vec<Command>,
    commits: &AtomicU64,
    hub: &WakeupHub,
) {
    let size = batch.len();
    let mut outcomes = Vec::with_capacity(size);
    let mut woken = Vec::new();
    let result = (|| -> Result<(), StoreError> {
        let run = |sql: &str, what: &str| {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map_err(|e| backend(what, e))
        };
        run("BEGIN IMMEDIATE", "beginning a write transaction")?;
        fences.begin(conn)?;
        if let [only] = batch.as_slice() {
            // One command: the transaction is its unit; a failure rolls it back alone.
            let outcome = execute(conn, fences, only, &mut woken);
            if outcome.is_ok() {
                run("COMMIT", "committing a write transaction")?;
            } else {
                fences.forget();
                woken.clear();
                if !conn.is_autocommit() {
                    // (SQLite rolls back on its own after some errors, e.g. a full disk.)
                    run("ROLLBACK", "rolling back a failed write")?;
                }
            }
            outcomes.push(outcome);
            return Ok(());
        }
        for cmd in &batch {
            run("SAVEPOINT orch_cmd", "opening a savepoint")?;
            let mark = woken.len();
            let outcome = execute(conn, fences, cmd, &mut woken);
            if outcome.is_ok() {
                run("RELEASE orch_cmd", "releasing a savepoint")?;
            } else if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (e.g. the disk is full): every
                // command of the batch fails with this command's error.
                return Err(outcome.error().unwrap_or_else(|| {
                    StoreError::Backend("a write failed and SQLite rolled back the batch".into())
                }));
            } else {
                fences.forget();
                woken.truncate(mark);
                run("ROLLBACK TO orch_cmd", "rolling back a failed write")?;
                run("RELEASE orch_cmd", "releasing a savepoint")?;
            }
            outcomes.push(outcome);
        }
        run("COMMIT", "committing a write transaction")?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(commands = size, "committed a batch");
        }
        Err(err) => {
            fences.forget();
            tracing::error!(error = %err, commands = size, "SQLite write batch failed");
            let rollback = if conn.is_autocommit() {
                Ok(())
            } else {
                conn.execute_batch("ROLLBACK")
            };
            if let Err(e) = rollback {
                tracing::error!(error = %e, "rolling back a failed batch");
            }
            woken.clear();
            outcomes.clear();
            outcomes.extend(batch.iter().map(|cmd| Outcome::failed(cmd, err.clone())));
        }
    }
    for (cmd, outcome) in batch.into_iter().zip(outcomes) {
        reply(cmd, outcome);
    }
    for w in woken {
        hub.send(w);
    }
}

/// Runs one command inside the current savepoint; what it wakes goes to `woken`.
fn execute(
    conn: &Connection,
    fences: &mut Fences,
    cmd: &Command,
    woken: &mut Vec<Wakeup>,
) -> Outcome {
    match cmd {
        Command::Submit(..) => {}
        // Anything else may change owners, epochs or statuses.
        _ => fences.forget(),
    }
    match cmd {
        Command::Submit(fence, ops, _) => Outcome::Unit((|| {
            // The fence check reads the fenced instance's status too: its ops need no read of
            // their own (until one of them changes the status).
            let mut known = match fence {
                Some(fence) => Some((fence.instance.as_str(), fences.check(conn, fence)?)),
                None => None,
            };
            ops.iter().try_for_each(|op| {
                let status = known
                    .filter(|(id, _)| *id == op.instance())
                    .map(|(_, st)| st);
                if !leaves_lease_and_status(op) {
                    known = None;
                }
                fences.applied(op);
                apply_known(conn, op, woken, status)
            })
        })()),
        Command::Create(record, owner, extra, _) => {
            Outcome::Created(create(conn, record, owner.as_ref()).and_then(|c| {
                if matches!(c, Created::New(_)) {
                    extra.iter().try_for_each(|op| apply(conn, op, woken))?;
                }
                if matches!(c, Created::New(None)) {
                    woken.push(Wakeup::Due {
                        instance: record.id.clone(),
                    });
                }
                Ok(c)
            }))
        }
        Command::AddSignal {
            instance,
            name,
            payload,
            at,
            extra,
            ..
        } => Outcome::Signal(
            add_signal(conn, instance, name, payload, *at, woken).and_then(|id| {
                extra.iter().try_for_each(|op| apply(conn, op, woken))?;
                Ok(id)
            }),
        ),
        Command::ClaimDue(terms, limit, _) => {
            Outcome::Claimed(ownership::claim_due(conn, terms, *limit))
        }
        Command::Claim(terms, id, _) => Outcome::Lease(ownership::claim(conn, terms, id)),
        Command::Renew(terms, held, _) => Outcome::Lost(ownership::renew(conn, terms, held)),
        Command::Release(node, ids, _) => {
            Outcome::Unit(ownership::release(conn, node, ids.as_deref(), woken))
        }
        Command::Close(_) => Outcome::Unit(Ok(())),
        Command::Probe(_) => Outcome::Unit(probe(conn)),
        Command::LeaseTasks(terms, queues, limit, _) => {
            Outcome::Tasks(super::tasks::lease(conn, terms, queues, *limit))
        }
        Command::HeartbeatTask(id, token, terms, _) => {
            Outcome::Until(super::tasks::heartbeat(conn, id, *token, terms))
        }
        Command::RecordWorkers(seen, forget_before, _) => {
            Outcome::Unit(super::tasks::record_workers(conn, seen, *forget_before))
        }
        Command::FinishTask {
            task,
            token,
            result,
            now,
            ..
        } => Outcome::Unit(super::tasks::finish(
            conn, task, *token, result, *now, woken,
        )),
        Command::Enqueue(record, entry, extra, _) => {
            Outcome::Enqueued(super::flow::enqueue(conn, record, entry, extra, woken))
        }
        Command::Admit(now, limit, _) => {
            Outcome::Admitted(super::flow::admit(conn, *now, *limit, woken))
        }
        Command::SetQueueConfig(queue, config, _) => {
            Outcome::Unit(super::flow::set_config(conn, queue, config))
        }
    }
}

/// Writes a row of [`PROBE_BYTES`] into `orch_meta` and deletes it again (the transaction
/// leaves nothing behind): it fails as a real write would when the disk or the database's
/// size cap is full.
fn probe(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO orch_meta (key, value) VALUES ('orch.write_probe', zeroblob(?1)) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute([PROBE_BYTES]))
    .and_then(|_| {
        conn.prepare_cached("DELETE FROM orch_meta WHERE key = 'orch.write_probe'")
            .and_then(|mut s| s.execute([]))
    })
    .map(|_| ())
    .map_err(|e| backend("the write probe", e))
}

/// The size of the write probe's row: a few pages, so the probe must allocate.
const PROBE_BYTES: i64 = 16 * 1024;
