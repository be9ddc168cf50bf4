//! The embedded default [`Store`]: one SQLite file in WAL mode, with group commit.
//!
//! One dedicated writer thread owns the write connection. Every write (submissions, instance
//! creation, signal delivery) is sent to it over a channel, in order. The writer takes one
//! command, drains whatever else is already queued (up to [`SqliteOptions::max_batch`]), runs
//! them all in one transaction — each inside its own savepoint, so one failing command is rolled
//! back alone — and acknowledges every command only after `COMMIT` returned. Under load, many
//! instances' checkpoints therefore share one fsync.
//!
//! Reads go through a small pool of reader threads, each with its own connection; WAL lets
//! them run beside the writer.
//!
//! Several runtimes — in several processes, e.g. during a rolling deploy on one machine — may
//! share one file: each is a node that owns the instances it drives by lease (see
//! [`lease`](super::lease)), SQLite's write lock serialises their transactions (`BEGIN
//! IMMEDIATE` with a busy timeout), and every fenced write checks the instance's owner and
//! epoch in its own transaction. Wake-ups from this process's writes are sent after their
//! commit; while anyone listens, the writer also polls `PRAGMA data_version` (every
//! [`CHANGE_POLL`]) and announces other processes' commits as [`Wakeup::Changed`](super::Wakeup::Changed).
//!
//! Opening refuses files that are not orch databases ([`StoreError::Foreign`]) and databases
//! written by a newer orch ([`StoreError::TooNew`]) without changing them.
//!
//! The files, one concept each (the PostgreSQL store has the same layout): `schema.rs`
//! (migrations, pragmas, the foreign/too-new check), `writer.rs` (the writer thread, group
//! commit), `apply.rs` (each write inside the writer's transaction), `ownership.rs` (leases and
//! the fence check), `read.rs` (reader threads, records, whole instances, lists) and `admin.rs`
//! (search, details, stats, aggregates, the audit log).

mod admin;
mod apply;
mod flow;
mod ownership;
mod read;
mod schema;
mod tasks;
mod writer;

#[cfg(test)]
mod tests;

use super::command::Command;
use super::{
    Aggregate, AttributeMap, AuditRecord, Claimed, Commit, Created, Details, Fence, InstanceRecord,
    Lease, LeaseTerms, ListFilter, LoadedInstance, Millis, NodeId, NodeRecord, Query, Stats,
    StatsQuery, StatusCount, Store, StoreAdmin, StoreError, StoreMetrics, WakeupHub, Wakeups,
    WriteOp,
};
use futures_util::future::BoxFuture;
use read::ReadJob;
use rusqlite::{Connection, ErrorCode};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// How hard SQLite works to make each commit survive a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// `synchronous=FULL`: every commit is fsync'd before it is acknowledged, so no acknowledged
    /// checkpoint can be lost, even on power failure. The default.
    #[default]
    Full,
    /// WAL with `synchronous=NORMAL`: commits survive a crash of the process, but the last ones
    /// may be lost on power loss or an OS crash (the database stays consistent). Faster.
    Normal,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Settings for [`SqliteStore::open`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Durability of each commit; see [`Synchronous`].
    pub synchronous: Synchronous,
    /// The most commands the writer puts in one transaction (at least 1 is used).
    pub max_batch: usize,
    /// The most bytes the database file may grow to (`PRAGMA max_page_count`; `None`: no cap
    /// beyond the disk). Past it, writes fail with "database or disk is full", as on a full
    /// disk, and `/readyz` reports it. A cap below the current size keeps the current size.
    pub max_bytes: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            max_batch: 1024,
            max_bytes: None,
        }
    }
}

/// A [`Store`] in one SQLite file (WAL mode), with a group-committing writer thread.
pub struct SqliteStore {
    path: PathBuf,
    /// The writer's queue; `None` only while dropping.
    tx: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    /// The readers' queue; `None` only while dropping.
    read_tx: Option<mpsc::Sender<ReadJob>>,
    readers: Vec<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
    metrics: Arc<StoreMetrics>,
    closed: AtomicBool,
    hub: WakeupHub,
}

/// How often the writer looks for commits of other processes while anyone listens for
/// wake-ups (`PRAGMA data_version`: no disk I/O).
pub const CHANGE_POLL: Duration = Duration::from_millis(200);

fn backend(context: &str, err: impl std::fmt::Display + 'static) -> StoreError {
    let sqlite = (&err as &dyn std::any::Any).downcast_ref::<rusqlite::Error>();
    if sqlite.and_then(rusqlite::Error::sqlite_error_code) == Some(ErrorCode::DiskFull) {
        return StoreError::Full(format!("{context}: {err}"));
    }
    StoreError::Backend(format!("{context}: {err}"))
}

impl SqliteStore {
    /// Opens (or creates) the orch database at `path`, migrating it to the current schema.
    ///
    /// Blocking: call it from `spawn_blocking` in async code. Fails with
    /// [`StoreError::Foreign`] when the file is not an orch database and with
    /// [`StoreError::TooNew`] when a newer orch wrote it; in both cases nothing is changed.
    ///
    /// Other stores — in this process or others — may have the same file open: ownership of
    /// each instance is decided by leases in the file (see [`Store`]).
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let ctx = |what: &str| format!("opening `{shown}`: {what}");

        let mut conn = Connection::open(&path).map_err(|e| backend(&ctx("open"), e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| backend(&ctx("busy_timeout"), e))?;

        // Read-only inspection first: nothing is written before we know the file is ours.
        // One read transaction, so a process creating the schema at this moment is seen
        // before or after, never halfway.
        conn.execute_batch("BEGIN")
            .map_err(|e| backend(&ctx("reading the schema"), e))?;
        let inspected = schema::inspect(&conn, &shown);
        let _ = conn.execute_batch("COMMIT");
        let current = inspected?;

        let mode = schema::wal_mode(&conn).map_err(|e| backend(&ctx("journal_mode=WAL"), e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %shown, mode = %mode, "SQLite refused WAL mode; using {mode}");
        }
        schema::configure(&conn, options.synchronous).map_err(|e| backend(&ctx("pragmas"), e))?;
        schema::migrate(&mut conn, current, &shown)?;
        if let Some(max) = options.max_bytes {
            let page: u64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(|e| backend(&ctx("page_size"), e))?;
            let pages = (max / page.max(1)).max(1);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(|e| backend(&ctx("max_page_count"), e))?;
        }
        conn.set_prepared_statement_cache_capacity(64);

        // A small fixed pool of reader threads, each with its own connection (WAL lets them
        // read beside the writer). Reads queue here instead of growing a blocking pool.
        let (read_tx, read_rx) = mpsc::channel::<ReadJob>();
        let read_rx = Arc::new(Mutex::new(read_rx));
        let mut readers = Vec::with_capacity(read::READERS);
        for n in 0..read::READERS {
            let reader = Connection::open(&path).map_err(|e| backend(&ctx("open reader"), e))?;
            reader
                .busy_timeout(Duration::from_secs(5))
                .map_err(|e| backend(&ctx("reader busy_timeout"), e))?;
            schema::configure(&reader, options.synchronous)
                .map_err(|e| backend(&ctx("reader pragmas"), e))?;
            reader
                .pragma_update(None, "query_only", "ON")
                .map_err(|e| backend(&ctx("reader query_only"), e))?;
            let queue = read_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("orch-sqlite-reader-{n}"))
                .spawn(move || read::reader_loop(reader, &queue))
                .map_err(|e| backend(&ctx("spawning a reader thread"), e))?;
            readers.push(handle);
        }

        let commits = Arc::new(AtomicU64::new(0));
        let metrics = Arc::new(StoreMetrics::default());
        let hub = WakeupHub::default();
        let (tx, rx) = mpsc::channel();
        let max_batch = options.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("orch-sqlite-writer".into())
            .spawn({
                let commits = commits.clone();
                let metrics = metrics.clone();
                let hub = hub.clone();
                move || {
                    let writer = writer::Writer {
                        conn,
                        max_batch,
                        commits: &commits,
                        metrics: &metrics,
                        hub,
                    };
                    writer.run(rx)
                }
            })
            .map_err(|e| backend(&ctx("spawning the writer thread"), e))?;

        Ok(SqliteStore {
            path,
            tx: Some(tx),
            writer: Some(writer),
            read_tx: Some(read_tx),
            readers,
            commits,
            metrics,
            closed: AtomicBool::new(false),
            hub,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many write transactions the writer has committed since [`SqliteStore::open`]. With
    /// group commit this grows slower than the number of submissions under load.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues `cmd`; false when the writer is gone (the command is dropped, so any reply
    /// channel in it reports `Closed`).
    fn send(&self, cmd: Command) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(cmd).is_ok())
    }

    /// Runs `f` on one of the reader threads.
    fn read<T, F>(&self, f: F) -> BoxFuture<'_, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let sent = self.read_tx.as_ref().is_some_and(|q| q.send(job).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.unwrap_or(Err(StoreError::Closed))
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Readers first, the writer last: the last connection to close folds the WAL into
        // the database file, and only the writer may write it. Disconnecting lets the writer
        // finish everything queued, then exit.
        drop(self.read_tx.take());
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        drop(self.tx.take());
        if self.writer.take().is_some_and(|w| w.join().is_err()) {
            tracing::error!(path = %self.path.display(), "the SQLite writer thread panicked");
        }
    }
}

impl SqliteStore {
    /// Sends a command built around a reply channel and waits for the reply.
    fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        super::command::request(|cmd| self.send(cmd), make)
    }
}

impl crate::store::task::TaskQueue for SqliteStore {
    fn lease_tasks(
        &self,
        terms: crate::store::task::WorkerTerms,
        queues: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::store::task::Leased, StoreError>> {
        self.ask(|tx| Command::LeaseTasks(terms, queues, limit, tx))
    }

    fn heartbeat_task(
        &self,
        id: &str,
        token: u64,
        terms: crate::store::task::WorkerTerms,
    ) -> BoxFuture<'_, Result<Millis, StoreError>> {
        let id = id.to_string();
        self.ask(|tx| Command::HeartbeatTask(id, token, terms, tx))
    }

    fn finish_task(
        &self,
        id: &str,
        token: u64,
        result: crate::store::task::TaskResult,
        now: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let task = id.to_string();
        self.ask(|reply| Command::FinishTask {
            task,
            token,
            result,
            now,
            reply,
        })
    }

    fn task(
        &self,
        id: &str,
    ) -> BoxFuture<'_, Result<Option<crate::store::task::TaskRecord>, StoreError>> {
        let id = id.to_string();
        self.read(move |conn| tasks::get(conn, &id))
    }

    fn queue_stats(
        &self,
        now: Millis,
    ) -> BoxFuture<'_, Result<Vec<crate::store::task::QueueStats>, StoreError>> {
        self.read(move |conn| tasks::stats(conn, now))
    }

    fn record_workers(
        &self,
        seen: Vec<crate::store::task::WorkerRecord>,
        forget_before: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.ask(|tx| Command::RecordWorkers(seen, forget_before, tx))
    }

    fn workers(
        &self,
        since: Millis,
    ) -> BoxFuture<'_, Result<Vec<crate::store::task::WorkerRecord>, StoreError>> {
        self.read(move |conn| tasks::workers(conn, since))
    }
}

impl crate::store::flow::WorkflowQueues for SqliteStore {
    fn enqueue_instance(
        &self,
        record: InstanceRecord,
        entry: crate::store::flow::QueueEntry,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<crate::store::flow::Enqueued, StoreError>> {
        self.ask(|tx| Command::Enqueue(Box::new(record), entry, extra, tx))
    }

    fn admit(
        &self,
        now: Millis,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::store::flow::Admitted, StoreError>> {
        self.ask(|tx| Command::Admit(now, limit, tx))
    }

    fn set_queue_config(
        &self,
        queue: String,
        config: crate::store::flow::QueueConfig,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.ask(|tx| Command::SetQueueConfig(queue, config, tx))
    }

    fn workflow_queues(
        &self,
    ) -> BoxFuture<'_, Result<Vec<crate::store::flow::WorkflowQueueStats>, StoreError>> {
        self.read(flow::stats_mut)
    }
}

impl Store for SqliteStore {
    fn submit(&self, fence: Option<Fence>, ops: Vec<WriteOp>) -> Commit {
        super::command::submit(|cmd| self.send(cmd), fence, ops)
    }

    fn create(
        &self,
        record: InstanceRecord,
        owner: Option<LeaseTerms>,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        self.ask(|tx| Command::Create(Box::new(record), owner, extra, tx))
    }

    fn add_signal(
        &self,
        instance: &str,
        name: &str,
        payload: String,
        at: Millis,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<i64, StoreError>> {
        let (instance, name) = (instance.to_string(), name.to_string());
        self.ask(|reply| Command::AddSignal {
            instance,
            name,
            payload,
            at,
            extra,
            reply,
        })
    }

    fn load(&self, id: &str) -> BoxFuture<'_, Result<Option<LoadedInstance>, StoreError>> {
        let id = id.to_string();
        self.read(move |conn| read::load_instance(conn, &id))
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<InstanceRecord>, StoreError>> {
        let id = id.to_string();
        self.read(move |conn| read::get_record(conn, &id))
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        self.read(move |conn| read::list_records(conn, &filter))
    }

    fn claim_due(
        &self,
        terms: LeaseTerms,
        limit: usize,
    ) -> BoxFuture<'_, Result<Claimed, StoreError>> {
        self.ask(|tx| Command::ClaimDue(terms, limit, tx))
    }

    fn claim(
        &self,
        terms: LeaseTerms,
        instance: &str,
    ) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        let instance = instance.to_string();
        self.ask(|tx| Command::Claim(terms, instance, tx))
    }

    fn renew(
        &self,
        terms: LeaseTerms,
        held: Vec<(String, u64)>,
    ) -> BoxFuture<'_, Result<crate::store::Renewal, StoreError>> {
        self.ask(|tx| Command::Renew(terms, held, tx))
    }

    fn release(
        &self,
        node: &NodeId,
        instances: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let node = node.clone();
        self.ask(|tx| Command::Release(node, instances, tx))
    }

    fn wakeups(&self) -> Wakeups {
        self.hub.subscribe()
    }

    fn metrics(&self) -> Option<Arc<StoreMetrics>> {
        Some(self.metrics.clone())
    }

    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.ask(Command::Probe)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let was_closed = self.closed.swap(true, Ordering::SeqCst);
        let sent = self.send(Command::Close(tx));
        Box::pin(async move {
            if !sent {
                // Closing twice is fine; a writer that died on its own is not.
                return if was_closed {
                    Ok(())
                } else {
                    Err(StoreError::Closed)
                };
            }
            match rx.await {
                // Closing twice is fine.
                Ok(Err(StoreError::Closed)) if was_closed => Ok(()),
                Ok(result) => result,
                // Dropped unanswered: an earlier close got there first.
                Err(_) if was_closed => Ok(()),
                Err(_) => Err(StoreError::Closed),
            }
        })
    }
}

impl StoreAdmin for SqliteStore {
    fn search(&self, query: Query) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        self.read(move |conn| admin::search_records(conn, &query))
    }

    fn details(&self, id: &str) -> BoxFuture<'_, Result<Option<Details>, StoreError>> {
        let id = id.to_string();
        self.read(move |conn| admin::instance_details(conn, &id))
    }

    fn attributes(&self, ids: Vec<String>) -> BoxFuture<'_, Result<AttributeMap, StoreError>> {
        self.read(move |conn| admin::attributes_of(conn, &ids))
    }

    fn counts(&self) -> BoxFuture<'_, Result<Vec<StatusCount>, StoreError>> {
        self.read(|conn| admin::counts_all(conn))
    }

    fn stats(&self, query: StatsQuery) -> BoxFuture<'_, Result<Stats, StoreError>> {
        self.read(move |conn| admin::stats_window(conn, &query))
    }

    fn aggregate(&self, key: String, query: Query) -> BoxFuture<'_, Result<Aggregate, StoreError>> {
        self.read(move |conn| admin::aggregate_attribute(conn, &key, &query))
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        self.read(move |conn| admin::audit_records(conn, limit))
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>, StoreError>> {
        self.read(ownership::nodes)
    }

    fn leases(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        self.read(move |conn| ownership::leases(conn, &ids))
    }

    fn unfinished(
        &self,
        workflow: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.read(move |conn| admin::unfinished(conn, workflow, after, limit))
    }
}
