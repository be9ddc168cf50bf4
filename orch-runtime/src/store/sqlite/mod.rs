//! The embedded default [`Store`]: one SQLite file in WAL mode, with group commit.
//!
//! One dedicated writer thread owns the write connection. Every write (submissions, instance
//! creation, signal delivery) is sent to it over a channel, in order. The writer takes one
//! command, drains whatever else is already queued (up to [`SqliteOptions::max_batch`]), runs
//! them all in one transaction — each inside its own savepoint, so one failing command is rolled
//! back alone — and acknowledges every command only after `COMMIT` returned. Under load, many
//! instances' checkpoints therefore share one fsync.
//!
//! Reads go through a second connection; WAL lets them run beside the writer.
//!
//! Several runtimes — in several processes, e.g. during a rolling deploy on one machine — may
//! share one file: each is a node that owns the instances it drives by lease (see
//! [`lease`](super::lease)), SQLite's write lock serialises their transactions (`BEGIN
//! IMMEDIATE` with a busy timeout), and every fenced write checks the instance's owner and
//! epoch in its own transaction. Wake-ups from this process's writes are sent after their
//! commit; while anyone listens, the writer also polls `PRAGMA data_version` (every
//! [`CHANGE_POLL`]) and announces other processes' commits as [`Wakeup::Changed`].
//!
//! Opening refuses files that are not orch databases ([`StoreError::Foreign`]) and databases
//! written by a newer orch ([`StoreError::TooNew`]) without changing them.

use super::{
    Aggregate, AttemptRecord, AuditRecord, BucketCount, Claimed, Commit, Created, Details,
    EntryKind, Fence, InstanceRecord, JournalEntry, Lease, LeaseTerms, ListFilter, LoadedInstance,
    Millis, NodeId, NodeRecord, Query, SignalRecord, Stats, StatsQuery, Status, StatusCount,
    StepCount, Store, StoreAdmin, StoreError, StoreMetrics, Superseded, Wakeup, WakeupHub, Wakeups,
    WriteOp,
};
use futures_util::future::BoxFuture;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

mod ownership;

use super::command::{Command, Outcome, reply};

/// Schema migrations, applied in order, each in its own transaction. Migration `i` brings the
/// database to schema version `i + 1`. Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE TABLE orch_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE instances (
        id            TEXT PRIMARY KEY,
        workflow      TEXT NOT NULL,
        version       TEXT NOT NULL,
        input         TEXT NOT NULL,
        status        TEXT NOT NULL,
        output        TEXT,
        error         TEXT,
        custom_status TEXT,
        parent        TEXT,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        wake_at       INTEGER
    );
    CREATE INDEX instances_status ON instances (status);
    CREATE INDEX instances_workflow_status ON instances (workflow, status);
    CREATE INDEX instances_parent ON instances (parent);
    CREATE TABLE journal (
        instance    TEXT NOT NULL REFERENCES instances (id),
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, seq)
    ) WITHOUT ROWID;
    CREATE TABLE attempts (
        instance    TEXT NOT NULL REFERENCES instances (id),
        seq         INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        error       TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, seq, attempt)
    );
    CREATE TABLE signals (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        instance     TEXT NOT NULL REFERENCES instances (id),
        name         TEXT NOT NULL,
        payload      TEXT NOT NULL,
        received_at  INTEGER NOT NULL,
        consumed_seq INTEGER
    );
    CREATE INDEX signals_instance ON signals (instance, consumed_seq);",
    // Version 2: search, attributes, cancellation, retries, the audit log.
    "ALTER TABLE instances ADD COLUMN failed_step TEXT;
    ALTER TABLE instances ADD COLUMN failed_seq INTEGER;
    ALTER TABLE instances ADD COLUMN cancel_requested INTEGER;
    ALTER TABLE instances ADD COLUMN cancel_seq INTEGER;
    ALTER TABLE instances ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX instances_created ON instances (created_at, id);
    CREATE INDEX instances_workflow_created ON instances (workflow, created_at, id);
    CREATE TABLE attributes (
        instance TEXT NOT NULL REFERENCES instances (id),
        key      TEXT NOT NULL,
        value    TEXT NOT NULL,
        PRIMARY KEY (instance, key)
    ) WITHOUT ROWID;
    CREATE INDEX attributes_key_value ON attributes (key, value);
    CREATE TABLE superseded (
        instance    TEXT NOT NULL REFERENCES instances (id),
        retry       INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, retry, seq)
    ) WITHOUT ROWID;
    CREATE TABLE superseded_attempts (
        instance    TEXT NOT NULL REFERENCES instances (id),
        retry       INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        error       TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, retry, seq, attempt)
    );
    CREATE TABLE ended_timers (
        instance TEXT NOT NULL REFERENCES instances (id),
        seq      INTEGER NOT NULL,
        PRIMARY KEY (instance, seq)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at     INTEGER NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );",
    // Version 3: ownership of instances by nodes (leases, fencing).
    "ALTER TABLE instances ADD COLUMN owner TEXT;
    ALTER TABLE instances ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX instances_due ON instances (status, wake_at);
    CREATE TABLE nodes (
        id            TEXT PRIMARY KEY,
        started_at    INTEGER NOT NULL,
        heartbeat_at  INTEGER NOT NULL,
        lease_expires INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

/// The schema version this build creates and understands.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const INSTANCE_COLUMNS: &str = "id, workflow, version, input, status, output, error, \
     custom_status, parent, created_at, updated_at, wake_at, failed_step, failed_seq, \
     cancel_requested, cancel_seq, retries";

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

fn is_not_a_database(err: &rusqlite::Error) -> bool {
    matches!(err.sqlite_error_code(), Some(ErrorCode::NotADatabase))
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
        let inspected = inspect(&conn, &shown);
        let _ = conn.execute_batch("COMMIT");
        let current = inspected?;

        let mode = wal_mode(&conn).map_err(|e| backend(&ctx("journal_mode=WAL"), e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %shown, mode = %mode, "SQLite refused WAL mode; using {mode}");
        }
        configure(&conn, options.synchronous).map_err(|e| backend(&ctx("pragmas"), e))?;
        migrate(&mut conn, current, &shown)?;
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
        let mut readers = Vec::with_capacity(READERS);
        for n in 0..READERS {
            let reader = Connection::open(&path).map_err(|e| backend(&ctx("open reader"), e))?;
            reader
                .busy_timeout(Duration::from_secs(5))
                .map_err(|e| backend(&ctx("reader busy_timeout"), e))?;
            configure(&reader, options.synchronous)
                .map_err(|e| backend(&ctx("reader pragmas"), e))?;
            reader
                .pragma_update(None, "query_only", "ON")
                .map_err(|e| backend(&ctx("reader query_only"), e))?;
            let queue = read_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("orch-sqlite-reader-{n}"))
                .spawn(move || reader_loop(reader, &queue))
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
                    let writer = Writer {
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

/// A read to run on a reader thread's connection.
type ReadJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// Reader threads (each with its own connection).
const READERS: usize = 2;

fn reader_loop(mut conn: Connection, queue: &Mutex<mpsc::Receiver<ReadJob>>) {
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

/// Switches the file to WAL mode. Another process opening the same new file at the same
/// moment can hold it busy, and SQLite does not wait for that change by itself: retry for a
/// while (as `busy_timeout` would).
fn wal_mode(conn: &Connection) -> rusqlite::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5 + u64::from(fastrand::u8(..20))));
            }
            other => return other,
        }
    }
}

fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", synchronous.pragma_value())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Reads the schema version without writing anything; refuses foreign and too-new files.
fn inspect(conn: &Connection, path: &str) -> Result<i64, StoreError> {
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_string(),
        detail,
    };
    let read_err = |what: &str, e: rusqlite::Error| {
        if is_not_a_database(&e) {
            foreign("file is not a database".into())
        } else if matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt)) {
            StoreError::Corrupt {
                path: path.to_string(),
                detail: e.to_string(),
            }
        } else {
            backend(&format!("opening `{path}`: {what}"), e)
        }
    };
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orch_meta')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| read_err("reading the schema", e))?;
    if !has_meta {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .map_err(|e| read_err("reading the schema", e))?;
        let tables = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| read_err("reading the schema", e))?;
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| read_err("reading the schema", e))?;
        if objects == 0 {
            return Ok(0);
        }
        return Err(foreign(super::meta::no_meta_table(
            "a SQLite database",
            &tables,
        )));
    }
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        conn.query_row("SELECT value FROM orch_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| read_err("reading orch_meta", e))
    };
    super::meta::schema_version(
        path,
        meta("application")?,
        meta("schema_version")?,
        SCHEMA_VERSION,
    )
}

/// Applies the migrations after `current`, one transaction each.
fn migrate(conn: &mut Connection, current: i64, path: &str) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if target <= current {
            continue;
        }
        let ctx = format!("migrating `{path}` to schema version {target}");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend(&ctx, e))?;
        // Another process may have migrated while we waited for the write lock.
        let now = inspect(&tx, path)?;
        if now >= target {
            tx.commit().map_err(|e| backend(&ctx, e))?;
            continue;
        }
        tx.execute_batch(sql).map_err(|e| backend(&ctx, e))?;
        let upsert = "INSERT INTO orch_meta (key, value) VALUES (?1, ?2)
                      ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        tx.execute(upsert, params!["application", super::meta::APPLICATION])
            .map_err(|e| backend(&ctx, e))?;
        tx.execute(upsert, params!["schema_version", target.to_string()])
            .map_err(|e| backend(&ctx, e))?;
        tx.commit().map_err(|e| backend(&ctx, e))?;
        tracing::debug!(path, version = target, "migrated orch database");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The writer.

/// The writer thread's state.
struct Writer<'a> {
    conn: Connection,
    max_batch: usize,
    commits: &'a AtomicU64,
    metrics: &'a StoreMetrics,
    hub: WakeupHub,
}

impl Writer<'_> {
    fn run(self, rx: mpsc::Receiver<Command>) {
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
            run_batch(&self.conn, batch, self.commits, &self.hub);
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

/// Runs `batch` in one transaction, replies to every command after it ended and sends the
/// wake-ups of the commands that took effect.
fn run_batch(conn: &Connection, batch: Vec<Command>, commits: &AtomicU64, hub: &WakeupHub) {
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
        if let [only] = batch.as_slice() {
            // One command: the transaction is its unit; a failure rolls it back alone.
            let outcome = execute(conn, only, &mut woken);
            if outcome.is_ok() {
                run("COMMIT", "committing a write transaction")?;
            } else {
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
            let outcome = execute(conn, cmd, &mut woken);
            if outcome.is_ok() {
                run("RELEASE orch_cmd", "releasing a savepoint")?;
            } else if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (e.g. the disk is full): every
                // command of the batch fails with this command's error.
                return Err(outcome.error().unwrap_or_else(|| {
                    StoreError::Backend("a write failed and SQLite rolled back the batch".into())
                }));
            } else {
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
fn execute(conn: &Connection, cmd: &Command, woken: &mut Vec<Wakeup>) -> Outcome {
    match cmd {
        Command::Submit(fence, ops, _) => Outcome::Unit((|| {
            // The fence check reads the fenced instance's status too: its ops need no read of
            // their own (until one of them changes the status).
            let mut known = match fence {
                Some(fence) => Some((fence.instance.as_str(), check_fence(conn, fence)?)),
                None => None,
            };
            ops.iter().try_for_each(|op| {
                let status = known
                    .filter(|(id, _)| *id == op.instance())
                    .map(|(_, st)| st);
                if matches!(
                    op,
                    WriteOp::SetStatus { .. } | WriteOp::Finish { .. } | WriteOp::Retry { .. }
                ) {
                    known = None;
                }
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

/// The status of `id`, or `None` when it does not exist.
/// `what` names the operation in an error (formatted only then: this runs on every write).
fn status_of(conn: &Connection, id: &str, what: &str) -> Result<Option<Status>, StoreError> {
    let raw: Option<String> = conn
        .prepare_cached("SELECT status FROM instances WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(|e| backend(&format!("{what} for instance `{id}`"), e))?;
    raw.map(|s| parse_status(id, &s)).transpose()
}

fn parse_status(id: &str, raw: &str) -> Result<Status, StoreError> {
    Status::parse(raw).ok_or_else(|| {
        StoreError::Backend(format!(
            "instance `{id}` has an unknown status `{raw}` in the database"
        ))
    })
}

/// `(?, ?, ?, ?, ?)` for the final statuses.
macro_rules! final_in {
    () => {
        "('completed', 'failed', 'cancelled', 'terminated', 'incompatible')"
    };
}

/// Refuses the submission unless `fence` still holds (one primary-key read, inside the
/// transaction that applies the submission); answers the instance's status.
fn check_fence(conn: &Connection, fence: &Fence) -> Result<Status, StoreError> {
    let found: Option<(Option<String>, i64, String)> = conn
        .prepare_cached("SELECT owner, epoch, status FROM instances WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([&fence.instance], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(|e| backend(&format!("checking the lease on `{}`", fence.instance), e))?;
    let (owner, epoch, status) = found.unwrap_or((None, 0, String::new()));
    let epoch = u64::try_from(epoch).unwrap_or(0);
    if owner.as_deref() == Some(fence.node.as_str()) && epoch == fence.epoch {
        return parse_status(&fence.instance, &status);
    }
    Err(StoreError::LeaseLost {
        instance: fence.instance.clone(),
        node: fence.node.to_string(),
        epoch: fence.epoch,
        current_owner: owner,
        current_epoch: epoch,
    })
}

fn apply(conn: &Connection, op: &WriteOp, woken: &mut Vec<Wakeup>) -> Result<(), StoreError> {
    apply_known(conn, op, woken, None)
}

/// [`apply`], with the instance's status when the caller read it already in this transaction.
fn apply_known(
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
            let finished: Option<Option<String>> = conn
                .prepare_cached(concat!(
                    "UPDATE instances SET status = ?2, output = ?3, error = ?4, wake_at = NULL, ",
                    "updated_at = ?5, failed_step = ?6, failed_seq = ?7, owner = NULL, ",
                    "epoch = epoch + 1 WHERE id = ?1 AND status NOT IN ",
                    final_in!(),
                    " RETURNING parent"
                ))
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            id,
                            status.as_str(),
                            output,
                            error,
                            at,
                            failed_step.as_ref().map(|f| &f.0),
                            failed_step.as_ref().map(|f| f.1)
                        ],
                        |r| r.get(0),
                    )
                    .optional()
                })
                .map_err(|e| backend(&ctx("finishing"), e))?;
            if let Some(parent) = finished {
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
    // Attributes set by the entries moved aside go back to what earlier entries set (or away).
    conn.prepare_cached(
        "DELETE FROM attributes WHERE instance = ?1 AND key IN (SELECT name FROM journal \
         WHERE instance = ?1 AND seq >= ?2 AND kind = 'attribute')",
    )?
    .execute(params![id, from_seq])?;
    conn.prepare_cached(
        "INSERT INTO attributes (instance, key, value) SELECT j.instance, j.name, j.outcome \
         FROM journal j WHERE j.instance = ?1 AND j.kind = 'attribute' AND j.seq < ?2 \
         AND NOT EXISTS (SELECT 1 FROM attributes a WHERE a.instance = j.instance \
         AND a.key = j.name) AND j.seq = (SELECT MAX(k.seq) FROM journal k \
         WHERE k.instance = j.instance AND k.kind = 'attribute' AND k.name = j.name \
         AND k.seq < ?2)",
    )?
    .execute(params![id, from_seq])?;
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

fn create(
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

fn add_signal(
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
    woken.push(Wakeup::Signal {
        instance: instance.to_string(),
        signal: SignalRecord {
            id,
            name: name.to_string(),
            payload: payload.to_string(),
            received_at: at,
        },
    });
    Ok(id)
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

// ---------------------------------------------------------------------------------------------
// Reads.

/// Reads a column holding a `u32`, refusing out-of-range values instead of truncating.
fn get_u32(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    let v: i64 = row.get(idx)?;
    u32::try_from(v).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Integer, e.into())
    })
}

/// An attempt from the columns `seq, attempt, error, started_at, finished_at` at `first`.
fn attempt_from(r: &Row<'_>, first: usize) -> rusqlite::Result<AttemptRecord> {
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

fn get_record(conn: &Connection, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row([id], record_from_row).optional())
    .map_err(|e| backend(&format!("reading instance `{id}`"), e))?
    .map(finish_record)
    .transpose()
}

fn load_instance(conn: &mut Connection, id: &str) -> Result<Option<LoadedInstance>, StoreError> {
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

fn query_records(
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

fn list_records(conn: &Connection, filter: &ListFilter) -> Result<Vec<InstanceRecord>, StoreError> {
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

fn search_records(conn: &Connection, q: &Query) -> Result<Vec<InstanceRecord>, StoreError> {
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

fn journal_rows(
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
                let kind = EntryKind::parse(&kind).ok_or_else(|| {
                    StoreError::Backend(format!(
                        "instance `{id}` has a journal entry (seq {seq}) of unknown kind \
                         `{kind}` in the database"
                    ))
                })?;
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

fn instance_details(conn: &mut Connection, id: &str) -> Result<Option<Details>, StoreError> {
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

fn attributes_of(conn: &Connection, ids: &[String]) -> Result<super::AttributeMap, StoreError> {
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

fn counts_all(conn: &Connection) -> Result<Vec<StatusCount>, StoreError> {
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

fn stats_window(conn: &Connection, q: &StatsQuery) -> Result<Stats, StoreError> {
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

fn aggregate_attribute(conn: &Connection, key: &str, q: &Query) -> Result<Aggregate, StoreError> {
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

fn audit_records(conn: &Connection, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
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

// ---------------------------------------------------------------------------------------------

impl SqliteStore {
    /// Sends a command built around a reply channel and waits for the reply.
    fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        super::command::request(|cmd| self.send(cmd), make)
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
        self.read(move |conn| load_instance(conn, &id))
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<InstanceRecord>, StoreError>> {
        let id = id.to_string();
        self.read(move |conn| get_record(conn, &id))
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        self.read(move |conn| list_records(conn, &filter))
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
        self.read(move |conn| search_records(conn, &query))
    }

    fn details(&self, id: &str) -> BoxFuture<'_, Result<Option<Details>, StoreError>> {
        let id = id.to_string();
        self.read(move |conn| instance_details(conn, &id))
    }

    fn attributes(
        &self,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<super::AttributeMap, StoreError>> {
        self.read(move |conn| attributes_of(conn, &ids))
    }

    fn counts(&self) -> BoxFuture<'_, Result<Vec<StatusCount>, StoreError>> {
        self.read(|conn| counts_all(conn))
    }

    fn stats(&self, query: StatsQuery) -> BoxFuture<'_, Result<Stats, StoreError>> {
        self.read(move |conn| stats_window(conn, &query))
    }

    fn aggregate(&self, key: String, query: Query) -> BoxFuture<'_, Result<Aggregate, StoreError>> {
        self.read(move |conn| aggregate_attribute(conn, &key, &query))
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        self.read(move |conn| audit_records(conn, limit))
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>, StoreError>> {
        self.read(ownership::nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn rec(id: &str) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            workflow: "wf".into(),
            version: "v1".into(),
            input: "{\"x\":1}".into(),
            created_at: 10,
            updated_at: 10,
            ..Default::default()
        }
    }

    fn entry(seq: u32) -> JournalEntry {
        JournalEntry {
            seq,
            kind: EntryKind::Step,
            name: format!("step{seq}"),
            outcome: format!("{{\"ok\":{seq}}}"),
            attempts: 1,
            started_at: 100 + i64::from(seq),
            finished_at: 200 + i64::from(seq),
        }
    }

    fn append(instance: &str, seq: u32) -> WriteOp {
        WriteOp::Append {
            instance: instance.into(),
            entry: entry(seq),
        }
    }

    fn open(path: &Path) -> SqliteStore {
        SqliteStore::open(path, SqliteOptions::default()).expect("open")
    }

    async fn snapshot(
        store: &SqliteStore,
    ) -> (
        Vec<(
            InstanceRecord,
            Vec<JournalEntry>,
            Vec<AttemptRecord>,
            Vec<SignalRecord>,
        )>,
        Vec<InstanceRecord>,
    ) {
        let mut all = Vec::new();
        for r in store.list(ListFilter::default()).await.expect("list") {
            let l = store.load(&r.id).await.expect("load").expect("exists");
            assert_eq!(l.record, r);
            all.push((l.record, l.journal, l.attempts, l.signals));
        }
        (all, unfinished(store).await)
    }

    async fn unfinished(store: &SqliteStore) -> Vec<InstanceRecord> {
        let all = store.list(ListFilter::default()).await.expect("list");
        all.into_iter().filter(|r| !r.status.is_final()).collect()
    }

    #[tokio::test]
    async fn roundtrip_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orch.db");
        let store = open(&path);

        let mut child = rec("b-child");
        child.parent = Some("a".into());
        child.workflow = "other".into();
        for r in [rec("a"), child.clone(), rec("c")] {
            assert!(matches!(
                store.create(r, None, Vec::new()).await,
                Ok(Created::New(None))
            ));
        }
        // Creating again returns the stored record unchanged.
        let mut again = rec("a");
        again.input = "\"different\"".into();
        match store
            .create(again, None, Vec::new())
            .await
            .expect("create again")
        {
            Created::Existing(r) => assert_eq!(*r, rec("a")),
            Created::New(_) => panic!("duplicate create stored a new instance"),
        }

        let s1 = store
            .add_signal("a", "go", "1".into(), 50, Vec::new())
            .await
            .expect("signal");
        let s2 = store
            .add_signal("a", "go", "2".into(), 51, Vec::new())
            .await
            .expect("signal");
        assert!(s2 > s1);
        let attempt = |seq, attempt| AttemptRecord {
            seq,
            attempt,
            error: format!("boom {seq}/{attempt}"),
            started_at: 1,
            finished_at: 2,
        };
        store
            .submit(
                None,
                vec![
                    WriteOp::Attempt {
                        instance: "a".into(),
                        record: attempt(1, 2),
                    },
                    WriteOp::Attempt {
                        instance: "a".into(),
                        record: attempt(1, 1),
                    },
                    append("a", 2),
                    append("a", 1),
                    WriteOp::ConsumeSignal {
                        instance: "a".into(),
                        signal: s1,
                        seq: 2,
                    },
                    WriteOp::CustomStatus {
                        instance: "a".into(),
                        value: "\"half\"".into(),
                        at: 60,
                    },
                    WriteOp::SetStatus {
                        instance: "a".into(),
                        status: Status::Suspended,
                        wake_at: Some(999),
                        at: 61,
                    },
                ],
            )
            .await
            .expect("submit a");
        store
            .submit(
                None,
                vec![
                    append("c", 1),
                    WriteOp::Finish {
                        instance: "c".into(),
                        status: Status::Completed,
                        output: Some("42".into()),
                        error: None,
                        failed_step: None,
                        at: 70,
                    },
                    // Ignored: c is final.
                    WriteOp::SetStatus {
                        instance: "c".into(),
                        status: Status::Running,
                        wake_at: Some(5),
                        at: 71,
                    },
                    WriteOp::Finish {
                        instance: "c".into(),
                        status: Status::Failed,
                        output: None,
                        error: Some("late".into()),
                        failed_step: None,
                        at: 72,
                    },
                ],
            )
            .await
            .expect("submit c");

        let a = store.load("a").await.expect("load").expect("a exists");
        let mut want_a = rec("a");
        want_a.status = Status::Suspended;
        // The signals that arrived while it ran (at 50) keep it due then, not at its timer.
        want_a.wake_at = Some(50);
        want_a.custom_status = Some("\"half\"".into());
        want_a.updated_at = 61;
        assert_eq!(a.record, want_a);
        assert_eq!(a.journal, vec![entry(1), entry(2)]);
        assert_eq!(a.attempts, vec![attempt(1, 1), attempt(1, 2)]);
        assert_eq!(
            a.signals,
            vec![SignalRecord {
                id: s2,
                name: "go".into(),
                payload: "2".into(),
                received_at: 51
            }]
        );

        let c = store.get("c").await.expect("get").expect("c exists");
        let mut want_c = rec("c");
        want_c.status = Status::Completed;
        want_c.output = Some("42".into());
        want_c.updated_at = 70;
        assert_eq!(c, want_c);
        assert!(store.get("nope").await.expect("get").is_none());
        assert!(store.load("nope").await.expect("load").is_none());

        let ids = |v: Vec<InstanceRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let list = |f: ListFilter| store.list(f);
        assert_eq!(
            ids(list(ListFilter::default()).await.expect("list")),
            ["a", "b-child", "c"]
        );
        assert_eq!(
            ids(list(ListFilter::default().workflow("wf")).await.expect("l")),
            ["a", "c"]
        );
        assert_eq!(
            ids(list(ListFilter::default().status(Status::Completed))
                .await
                .expect("l")),
            ["c"]
        );
        let by_parent = ListFilter {
            parent: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(ids(list(by_parent).await.expect("l")), ["b-child"]);
        let after = ListFilter {
            after_id: Some("a".into()),
            limit: 1,
            ..Default::default()
        };
        assert_eq!(ids(list(after).await.expect("l")), ["b-child"]);
        assert_eq!(
            ids(list(ListFilter::default().limit(2)).await.expect("l")),
            ["a", "b-child"]
        );
        assert_eq!(ids(unfinished(&store).await), ["a", "b-child"]);

        let before = snapshot(&store).await;
        drop(store);
        let store = open(&path);
        assert_eq!(snapshot(&store).await, before);
        // Signal ids keep increasing across reopen.
        let s3 = store
            .add_signal("a", "go", "3".into(), 52, Vec::new())
            .await
            .expect("signal");
        assert!(s3 > s2);
    }

    #[tokio::test]
    async fn conflicts_fail_alone_inside_a_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("orch.db"));
        for id in ["a", "b", "c"] {
            store
                .create(rec(id), None, Vec::new())
                .await
                .expect("create");
        }
        store
            .submit(None, vec![append("b", 1)])
            .await
            .expect("first");

        // Queue everything before awaiting anything so it lands in few transactions.
        let commits = vec![
            store.submit(None, vec![append("a", 1)]),
            store.submit(None, vec![append("b", 2), append("b", 1)]), // conflict: all-or-nothing
            store.submit(None, vec![append("c", 1)]),
            store.submit(None, vec![append("missing", 1)]),
            store.submit(None, vec![append("a", 2)]),
        ];
        let mut results = Vec::new();
        for c in commits {
            results.push(c.await);
        }
        assert!(results[0].is_ok());
        assert!(
            matches!(&results[1], Err(StoreError::Conflict { instance, .. }) if instance == "b"),
            "{:?}",
            results[1]
        );
        assert!(results[2].is_ok());
        assert!(matches!(&results[3], Err(StoreError::NotFound(id)) if id == "missing"));
        assert!(results[4].is_ok());

        let store = &store;
        let journal = |id: &'static str| async move {
            store.load(id).await.expect("load").expect("exists").journal
        };
        assert_eq!(journal("a").await, vec![entry(1), entry(2)]);
        assert_eq!(
            journal("b").await,
            vec![entry(1)],
            "the failed submission left nothing"
        );
        assert_eq!(journal("c").await, vec![entry(1)]);
    }

    #[tokio::test]
    async fn group_commit_batches_queued_submissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("orch.db"));
        store
            .create(rec("a"), None, Vec::new())
            .await
            .expect("create");
        let before = store.commits();
        let pending: Vec<_> = (1..=1000)
            .map(|seq| store.submit(None, vec![append("a", seq)]))
            .collect();
        for c in pending {
            c.await.expect("commit");
        }
        let used = store.commits() - before;
        eprintln!("group commit: 1000 submissions in {used} commits");
        assert!(
            (1..250).contains(&used),
            "1000 submissions took {used} commits"
        );
        let journal = store
            .load("a")
            .await
            .expect("load")
            .expect("exists")
            .journal;
        assert_eq!(journal, (1..=1000).map(entry).collect::<Vec<_>>());
    }

    #[test]
    fn refuses_foreign_files_without_changing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SqliteOptions::default;

        let text = dir.path().join("notes.txt");
        fs::write(&text, "hello, this is not a database\n".repeat(100)).expect("write");
        let bytes = fs::read(&text).expect("read");
        let err = SqliteStore::open(&text, opts())
            .err()
            .expect("text file refused");
        assert!(
            matches!(&err, StoreError::Foreign { detail, .. } if detail.contains("not a database")),
            "{err}"
        );
        assert_eq!(fs::read(&text).expect("read"), bytes);

        let other = dir.path().join("other.db");
        {
            let c = Connection::open(&other).expect("open");
            c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'x');")
                .expect("setup");
        }
        let bytes = fs::read(&other).expect("read");
        let err = SqliteStore::open(&other, opts())
            .err()
            .expect("foreign db refused");
        assert!(
            matches!(&err, StoreError::Foreign { detail, .. } if detail.contains("users")),
            "{err}"
        );
        assert_eq!(fs::read(&other).expect("read"), bytes);
        assert!(!dir.path().join("other.db-wal").exists());

        let newer = dir.path().join("newer.db");
        {
            let c = Connection::open(&newer).expect("open");
            c.execute_batch(
                "CREATE TABLE orch_meta (key TEXT PRIMARY KEY, value TEXT);
                 INSERT INTO orch_meta VALUES ('application', 'orch'), ('schema_version', '99');
                 CREATE TABLE instances_v99 (id TEXT);",
            )
            .expect("setup");
        }
        let bytes = fs::read(&newer).expect("read");
        let err = SqliteStore::open(&newer, opts())
            .err()
            .expect("newer db refused");
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 99,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(fs::read(&newer).expect("read"), bytes);
    }

    #[test]
    fn new_and_empty_files_get_the_schema_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.db");
        fs::write(&empty, b"").expect("write");
        for _ in 0..2 {
            let store = SqliteStore::open(
                &empty,
                SqliteOptions {
                    synchronous: Synchronous::Normal,
                    max_batch: 1,
                    max_bytes: None,
                },
            )
            .expect("open");
            drop(store);
        }
        let c = Connection::open(&empty).expect("open");
        let version: String = c
            .query_row(
                "SELECT value FROM orch_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION.to_string());
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn add_signal_refuses_missing_and_finished_instances() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("orch.db"));
        let err = store
            .add_signal("ghost", "go", "1".into(), 1, Vec::new())
            .await
            .expect_err("missing");
        assert!(
            matches!(&err, StoreError::NotFound(id) if id == "ghost"),
            "{err}"
        );

        store
            .create(rec("a"), None, Vec::new())
            .await
            .expect("create");
        store
            .submit(
                None,
                vec![WriteOp::Finish {
                    instance: "a".into(),
                    status: Status::Failed,
                    output: None,
                    error: Some("no".into()),
                    failed_step: None,
                    at: 5,
                }],
            )
            .await
            .expect("finish");
        let err = store
            .add_signal("a", "go", "1".into(), 6, Vec::new())
            .await
            .expect_err("finished");
        assert!(
            matches!(&err, StoreError::Finished { id, status: Status::Failed } if id == "a"),
            "{err}"
        );
        let loaded = store.load("a").await.expect("load").expect("exists");
        assert!(loaded.signals.is_empty());
    }

    #[tokio::test]
    async fn close_flushes_then_refuses_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orch.db");
        let store = open(&path);
        store
            .create(rec("a"), None, Vec::new())
            .await
            .expect("create");
        // Not awaited before close: close must still make them durable.
        let queued: Vec<_> = (1..=10)
            .map(|s| store.submit(None, vec![append("a", s)]))
            .collect();
        store.close().await.expect("close");
        for c in queued {
            c.await.expect("queued before close");
        }
        let err = store
            .submit(None, vec![append("a", 11)])
            .await
            .expect_err("closed");
        assert!(matches!(err, StoreError::Closed), "{err}");
        assert!(matches!(
            store.create(rec("b"), None, Vec::new()).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            store.add_signal("a", "x", "1".into(), 1, Vec::new()).await,
            Err(StoreError::Closed)
        ));
        store.close().await.expect("closing twice is fine");
        // Reads still work.
        assert_eq!(
            store
                .load("a")
                .await
                .expect("load")
                .expect("a")
                .journal
                .len(),
            10
        );
        drop(store);

        let store = open(&path);
        let journal = store
            .load("a")
            .await
            .expect("load")
            .expect("exists")
            .journal;
        assert_eq!(journal, (1..=10).map(entry).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn drop_finishes_queued_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orch.db");
        let store = open(&path);
        store
            .create(rec("a"), None, Vec::new())
            .await
            .expect("create");
        for s in 1..=5 {
            drop(store.submit(None, vec![append("a", s)]));
        }
        drop(store);
        let store = open(&path);
        assert_eq!(
            store
                .load("a")
                .await
                .expect("load")
                .expect("a")
                .journal
                .len(),
            5
        );
    }

    #[tokio::test]
    async fn bad_stored_values_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orch.db");
        let store = open(&path);
        store
            .create(rec("a"), None, Vec::new())
            .await
            .expect("create");
        store
            .submit(None, vec![append("a", 1)])
            .await
            .expect("append");
        drop(store);
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(
                "UPDATE instances SET status = 'sleeping' WHERE id = 'a';
                 UPDATE journal SET kind = 'teleport' WHERE instance = 'a';",
            )
            .expect("corrupt");
        }
        let store = open(&path);
        let err = store.get("a").await.expect_err("bad status");
        assert!(
            matches!(&err, StoreError::Backend(m) if m.contains("`a`") && m.contains("sleeping")),
            "{err}"
        );
        assert!(store.list(ListFilter::default()).await.is_err());
        assert!(
            store
                .add_signal("a", "x", "1".into(), 1, Vec::new())
                .await
                .is_err()
        );
        drop(store);
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch("UPDATE instances SET status = 'running' WHERE id = 'a';")
                .expect("fix");
        }
        let store = open(&path);
        let err = store.load("a").await.expect_err("bad kind");
        assert!(
            matches!(&err, StoreError::Backend(m) if m.contains("teleport")),
            "{err}"
        );
    }
}
