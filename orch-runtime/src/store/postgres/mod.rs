//! The PostgreSQL [`Store`] (cargo feature `postgres`): one schema of one database, written by a
//! group-committing writer task, read through a small connection pool.
//!
//! - **Driver**: [`tokio-postgres`](https://docs.rs/tokio-postgres) (async; queries issued
//!   concurrently on one connection are pipelined), pooled by
//!   [`deadpool-postgres`](https://docs.rs/deadpool-postgres) (each pooled connection caches its
//!   prepared statements). Plain TCP: TLS is not supported yet, so use it on a trusted network
//!   or through a local socket/tunnel.
//! - **Group commit** (`writer.rs`): every write (submissions, instance creation, signals) goes
//!   over a channel to one of [`PostgresOptions::writers`] writer tasks, each with its own
//!   connection: an instance's writes always to the same one, in order; a write touching
//!   several instances to the first, while the others wait. A writer takes what is queued (up
//!   to [`PostgresOptions::max_batch`] commands), applies it in one transaction and
//!   acknowledges every command after `COMMIT`. Commands for different instances are pipelined
//!   on the connection; commands for one instance keep their order. When a command fails, the
//!   transaction is rolled back and run again with each command in its own savepoint, so the
//!   failing one is refused alone — the same semantics as the SQLite store.
//! - **Schema** (`schema.rs`): versioned migrations in a schema of your choice
//!   ([`PostgresOptions::schema`], default `orch`); a schema written by a newer orch is refused
//!   with [`StoreError::TooNew`], a schema holding other tables with [`StoreError::Foreign`].
//! - **Several nodes per schema** (`ownership.rs`): each runtime is a node owning the instances
//!   it drives by lease, exactly as on SQLite. Due instances are claimed in bounded batches with
//!   `FOR UPDATE SKIP LOCKED`; every fenced write is checked, per batch, by one locking read of
//!   the fenced rows inside the write transaction. Migrations are safe when nodes open the
//!   schema together (an advisory transaction lock).
//! - **Wake-ups** (`notify.rs`): every write transaction that wakes something sends a `NOTIFY`
//!   on the schema's channel before it commits; each store `LISTEN`s on one dedicated
//!   connection and passes other nodes' wake-ups to its subscribers. No polling.
//!
//! The URL is never shown with its password: errors name the store as
//! `postgres://user@host:port/db (schema orch)`.

mod admin;
mod apply;
mod flow;
mod notify;
mod nul;
mod ownership;
mod read;
mod schema;
mod tasks;
mod writer;

use super::command::Command;
use super::{
    Aggregate, AttributeMap, AuditRecord, Claimed, Commit, Created, Details, Fence, InstanceRecord,
    Lease, LeaseTerms, ListFilter, LoadedInstance, Millis, NodeId, NodeRecord, Query, Stats,
    StatsQuery, StatusCount, Store, StoreAdmin, StoreError, StoreMetrics, WakeupHub, Wakeups,
    WriteOp,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::BoxFuture;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Settings for [`PostgresStore::open`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The schema holding orch's tables (created when missing): lower-case letters, digits and
    /// `_`, starting with a letter or `_`, at most 63 bytes. Default `orch`. Any number of
    /// runtimes (nodes) may share one schema.
    pub schema: String,
    /// Connections for reads (each writer and the listener have one more). Default 4.
    pub pool_size: usize,
    /// Writers: each a task with its own connection that group-commits what is queued for it
    /// (at least 1 is used). An instance's writes always go to the same writer, so they keep
    /// their order; a write that touches several instances (a claim round, a release) runs
    /// while the other writers wait. One connection's transactions run one after the other,
    /// each waiting for its commit to reach the disk; several overlap, and PostgreSQL flushes
    /// their commits together. Default 3.
    pub writers: usize,
    /// The most commands a writer puts in one transaction (at least 1 is used). Default 1024.
    pub max_batch: usize,
    /// How long connecting may take before it fails, unless the URL sets `connect_timeout`.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// How long PostgreSQL lets a transaction of this store wait for its next statement before
    /// it ends the session (`idle_in_transaction_session_timeout`; at least 1 s is used). A
    /// node paused in the middle of a write (a long stall, `SIGSTOP`, a VM pause) would
    /// otherwise keep the rows it locked — its instances — from every other node until it
    /// continues. Default `None`: a runtime uses its lease time-to-live, so that a paused node
    /// is taken over like a crashed one; a store opened directly keeps the server's setting.
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "orch".into(),
            pool_size: 4,
            writers: 3,
            max_batch: 1024,
            connect_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: None,
        }
    }
}

impl PostgresOptions {
    /// These options with `schema`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
}

/// The shortest [`PostgresOptions::idle_in_transaction_timeout`] used: a busy machine may
/// leave a healthy writer this long between two statements of one transaction.
const MIN_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(1);

/// A notification received by `LISTEN` on the store's dedicated connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The channel it was sent on.
    pub channel: String,
    /// Its payload.
    pub payload: String,
}

/// A [`Store`] in a PostgreSQL schema, with a group-committing writer task.
pub struct PostgresStore {
    shared: Arc<Shared>,
    /// The writers' queues (see [`PostgresOptions::writers`] and [`writer::route`]).
    writers: Vec<mpsc::UnboundedSender<writer::Queued>>,
    /// Held while a barrier is queued on every writer, so that two barriers queue in the same
    /// order everywhere (else each could wait for the other).
    barrier: Mutex<()>,
    closed: AtomicBool,
    /// The task listening for other nodes' wake-ups; aborted on close.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// A connection for [`listen`](Self::listen)ed channels, opened on first use.
    extra: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    config: tokio_postgres::Config,
    notifications: broadcast::Sender<Notification>,
}

/// What the writer and the readers share.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    /// `postgres://user@host:port/db (schema x)`, for messages.
    pub(crate) shown: String,
    pub(crate) commits: AtomicU64,
    pub(crate) metrics: Arc<StoreMetrics>,
    /// This process's wake-ups.
    pub(crate) hub: WakeupHub,
    /// The schema's NOTIFY channel.
    pub(crate) channel: String,
    /// Marks this store's own notifications (ignored when they come back).
    pub(crate) token: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("store", &self.shared.shown)
            .finish_non_exhaustive()
    }
}

/// Checks a schema name: an unquoted PostgreSQL identifier, so it needs no quoting anywhere.
fn check_schema(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "`{schema}` is not a usable PostgreSQL schema name for orch: use lower-case letters, \
             digits and `_`, starting with a letter or `_`, at most 63 bytes (e.g. `orch` or \
             `orch_staging`)"
        )))
    }
}

/// The connection settings as shown in messages: no password, ever.
fn describe(config: &tokio_postgres::Config, schema: &str) -> String {
    use tokio_postgres::config::Host;
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("postgres://{at}{host}:{port}/{db} (schema {schema})")
}

/// Removes the URL's password from `text` (an error message that may quote it).
fn scrub(text: &str, password: Option<&[u8]>) -> String {
    match password.map(String::from_utf8_lossy) {
        Some(p) if !p.is_empty() => text.replace(p.as_ref(), "***"),
        _ => text.to_string(),
    }
}

/// A driver error as a [`StoreError`]: "disk full" is [`StoreError::Full`], anything else
/// [`StoreError::Backend`], both prefixed by `context`.
pub(crate) fn pg_error(context: &str, err: &tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    let detail = match err.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            s
        }
        None => {
            let mut s = err.to_string();
            let mut src = std::error::Error::source(err);
            while let Some(e) = src {
                s.push_str(&format!(": {e}"));
                src = e.source();
            }
            s
        }
    };
    let full = matches!(
        err.code(),
        Some(c) if *c == SqlState::DISK_FULL || *c == SqlState::INSUFFICIENT_RESOURCES
    );
    if full {
        StoreError::Full(format!("{context}: {detail}"))
    } else {
        StoreError::Backend(format!("{context}: {detail}"))
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, or
    /// the `key=value` form), creates [`PostgresOptions::schema`] when missing, takes it for this
    /// runtime and migrates it to the current schema version.
    ///
    /// Any number of stores (nodes) may open one schema. Fails with [`StoreError::TooNew`] when
    /// a newer orch wrote it and
    /// [`StoreError::Foreign`] when it holds tables that are not orch's; in these cases
    /// nothing is changed. Must be called inside a tokio runtime; the writer task runs on it.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        check_schema(&options.schema)?;
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            // The parser's message may quote part of the URL; it is not shown.
            let _ = e;
            StoreError::Backend(
                "the PostgreSQL URL is not valid: expected \
                 `postgres://user:password@host:port/database` or `host=… user=… dbname=…` \
                 (the URL is not repeated here because it may hold a password)"
                    .into(),
            )
        })?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let shown = describe(&config, &options.schema);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("orch");
        }
        // Every connection works in the schema; pg_catalog stays implicitly first.
        let mut settings = format!("-c search_path={}", options.schema);
        if let Some(idle) = options.idle_in_transaction_timeout {
            let ms = idle.max(MIN_IDLE_IN_TRANSACTION).as_millis();
            settings.push_str(&format!(" -c idle_in_transaction_session_timeout={ms}"));
        }
        config.options(settings);
        let scrubbed = |e: StoreError| match e {
            StoreError::Backend(m) => StoreError::Backend(scrub(&m, password.as_deref())),
            StoreError::Full(m) => StoreError::Full(scrub(&m, password.as_deref())),
            e => e,
        };

        let (notifications, _) = broadcast::channel(1024);
        {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| pg_error(&format!("connecting to {shown}"), &e))
                .map_err(scrubbed)?;
            let driver = tokio::spawn(connection);
            let prepared = schema::prepare(&client, &options.schema, &shown).await;
            drop(client);
            let _ = driver.await;
            prepared.map_err(scrubbed)?;
        }
        let hub = WakeupHub::default();
        let channel = notify::channel(&options.schema);
        let token = format!(
            "{}-{}-{:016x}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id(),
            fastrand::u64(..)
        );
        let (ready, listening) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(notify::listen(
            config.clone(),
            channel.clone(),
            token.clone(),
            hub.clone(),
            shown.clone(),
            ready,
        ));
        // Not handed out before it hears the other nodes: a wake-up sent between here and a
        // late LISTEN would be lost.
        let listened = match listening.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the listening task ended".to_string()),
        };
        if let Err(e) = listened {
            listener.abort();
            return Err(scrubbed(StoreError::Backend(format!(
                "opening {shown}: cannot LISTEN for other nodes' wake-ups on channel `{channel}`: \
                 {e}; check that the server accepts one more connection (max_connections)"
            ))));
        }

        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1) + options.writers.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("opening {shown}: building the pool: {e}")))?;
        let shared = Arc::new(Shared {
            pool,
            shown,
            commits: AtomicU64::new(0),
            metrics: Arc::new(StoreMetrics::default()),
            hub,
            channel,
            token,
        });
        let writers = (0..options.writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(writer::run(shared.clone(), rx, options.max_batch.max(1)));
                tx
            })
            .collect();
        Ok(PostgresStore {
            shared,
            writers,
            barrier: Mutex::new(()),
            closed: AtomicBool::new(false),
            listener: Mutex::new(Some(listener)),
            extra: tokio::sync::Mutex::new(None),
            config,
            notifications,
        })
    }

    /// How many write transactions the writers have committed since [`PostgresStore::open`].
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// The store as shown in messages (`postgres://user@host:port/db (schema orch)`; never
    /// the password).
    pub fn describe(&self) -> &str {
        &self.shared.shown
    }

    /// Starts listening on `channel` on a dedicated connection; notifications arrive
    /// on [`subscribe`](Self::subscribe)'s receivers. `channel` is an identifier (letters,
    /// digits, `_`).
    pub async fn listen(&self, channel: &str) -> Result<(), StoreError> {
        let ok = !channel.is_empty()
            && channel.len() <= 63
            && channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(StoreError::Backend(format!(
                "`{channel}` is not a usable LISTEN channel: use letters, digits and `_`"
            )));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let client = {
            let mut extra = self.extra.lock().await;
            match &*extra {
                Some(c) if !c.is_closed() => c.clone(),
                _ => {
                    let (client, mut connection) = self
                        .config
                        .connect(tokio_postgres::NoTls)
                        .await
                        .map_err(|e| {
                            pg_error(&format!("connecting to {}", self.shared.shown), &e)
                        })?;
                    let notify = self.notifications.clone();
                    tokio::spawn(async move {
                        while let Some(Ok(m)) =
                            std::future::poll_fn(|cx| connection.poll_message(cx)).await
                        {
                            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                                let _ = notify.send(Notification {
                                    channel: n.channel().to_string(),
                                    payload: n.payload().to_string(),
                                });
                            }
                        }
                    });
                    let client = Arc::new(client);
                    *extra = Some(client.clone());
                    client
                }
            }
        };
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(|e| {
                pg_error(
                    &format!("listening on `{channel}` in {}", self.shared.shown),
                    &e,
                )
            })
    }

    /// Notifications received on the channels [`listen`](Self::listen)ed to.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }

    /// Queues `cmd` on its writer, or, when it touches several instances, on writer 0 behind a
    /// barrier that every other writer reaches once it committed what was queued before (call
    /// order is queue order, as with one writer). Whether the writers took it.
    fn send(&self, cmd: Command) -> bool {
        let Some(index) = writer::route(&cmd, self.writers.len()) else {
            let _queued_together = self.barrier.lock().unwrap_or_else(|e| e.into_inner());
            let (mut reached, mut resume) = (Vec::new(), Vec::new());
            for w in &self.writers[1..] {
                let (reached_tx, reached_rx) = oneshot::channel();
                let (resume_tx, resume_rx) = oneshot::channel();
                let pause = writer::Queued::Pause {
                    reached: reached_tx,
                    resume: resume_rx,
                };
                if w.send(pause).is_ok() {
                    reached.push(reached_rx);
                    resume.push(resume_tx);
                }
            }
            let alone = writer::Queued::Alone {
                reached,
                resume,
                cmd,
            };
            return self.writers[0].send(alone).is_ok();
        };
        self.writers[index].send(writer::Queued::Cmd(cmd)).is_ok()
    }

    fn command<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        super::command::request(|cmd| self.send(cmd), make)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            l.abort();
        }
    }
}

impl Store for PostgresStore {
    fn submit(&self, fence: Option<Fence>, mut ops: Vec<WriteOp>) -> Commit {
        nul::ops(&mut ops);
        super::command::submit(|cmd| self.send(cmd), fence, ops)
    }

    fn create(
        &self,
        mut record: InstanceRecord,
        owner: Option<LeaseTerms>,
        mut extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        nul::record(&mut record);
        nul::ops(&mut extra);
        self.command(move |tx| Command::Create(Box::new(record), owner, extra, tx))
    }

    fn add_signal(
        &self,
        instance: &str,
        name: &str,
        payload: String,
        at: Millis,
        mut extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<i64, StoreError>> {
        let (instance, mut name) = (instance.to_string(), name.to_string());
        nul::text(&mut name);
        nul::ops(&mut extra);
        self.command(move |reply| Command::AddSignal {
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
        Box::pin(async move { read::load(&self.shared, &id).await })
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<InstanceRecord>, StoreError>> {
        let id = id.to_string();
        Box::pin(async move { read::get_one(&self.shared, &id).await })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        Box::pin(async move { read::list(&self.shared, &filter).await })
    }

    fn claim_due(
        &self,
        terms: LeaseTerms,
        limit: usize,
    ) -> BoxFuture<'_, Result<Claimed, StoreError>> {
        self.command(move |tx| Command::ClaimDue(terms, limit, tx))
    }

    fn claim(
        &self,
        terms: LeaseTerms,
        instance: &str,
    ) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        let instance = instance.to_string();
        self.command(move |tx| Command::Claim(terms, instance, tx))
    }

    fn renew(
        &self,
        terms: LeaseTerms,
        held: Vec<(String, u64)>,
    ) -> BoxFuture<'_, Result<crate::store::Renewal, StoreError>> {
        self.command(move |tx| Command::Renew(terms, held, tx))
    }

    fn release(
        &self,
        node: &NodeId,
        instances: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let node = node.clone();
        self.command(move |tx| Command::Release(node, instances, tx))
    }

    fn wakeups(&self) -> Wakeups {
        self.shared.hub.subscribe()
    }

    fn metrics(&self) -> Option<Arc<StoreMetrics>> {
        Some(self.shared.metrics.clone())
    }

    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.command(Command::Probe)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let was_closed = self.closed.swap(true, Ordering::SeqCst);
        // Every writer commits what was queued before, then refuses what comes after.
        let replies: Vec<_> = self
            .writers
            .iter()
            .map(|w| {
                let (tx, rx) = oneshot::channel();
                w.send(writer::Queued::Cmd(Command::Close(tx)))
                    .is_ok()
                    .then_some(rx)
            })
            .collect();
        Box::pin(async move {
            let mut result = Ok(());
            for reply in replies {
                let one = match reply {
                    None if was_closed => Ok(()),
                    None => Err(StoreError::Closed),
                    Some(rx) => match rx.await {
                        Ok(Err(StoreError::Closed)) if was_closed => Ok(()),
                        Ok(r) => r,
                        Err(_) if was_closed => Ok(()),
                        Err(_) => Err(StoreError::Closed),
                    },
                };
                if result.is_ok() {
                    result = one;
                }
            }
            let listener = self
                .listener
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(l) = listener {
                l.abort();
            }
            *self.extra.lock().await = None;
            result
        })
    }
}

impl crate::store::task::TaskQueue for PostgresStore {
    fn lease_tasks(
        &self,
        terms: crate::store::task::WorkerTerms,
        queues: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::store::task::Leased, StoreError>> {
        self.command(move |tx| Command::LeaseTasks(terms, queues, limit, tx))
    }

    fn heartbeat_task(
        &self,
        id: &str,
        token: u64,
        terms: crate::store::task::WorkerTerms,
    ) -> BoxFuture<'_, Result<Millis, StoreError>> {
        let id = id.to_string();
        self.command(move |tx| Command::HeartbeatTask(id, token, terms, tx))
    }

    fn finish_task(
        &self,
        id: &str,
        token: u64,
        mut result: crate::store::task::TaskResult,
        now: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        nul::result(&mut result);
        let task = id.to_string();
        self.command(move |reply| Command::FinishTask {
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
        Box::pin(async move {
            let client = read::connection(&self.shared, &format!("reading task `{id}`")).await?;
            tasks::get(apply::Tx::new(&client), &id, false).await
        })
    }

    fn queue_stats(
        &self,
        now: Millis,
    ) -> BoxFuture<'_, Result<Vec<crate::store::task::QueueStats>, StoreError>> {
        Box::pin(async move {
            let client = read::connection(&self.shared, "reading the queues").await?;
            tasks::stats(apply::Tx::new(&client), now).await
        })
    }

    fn record_workers(
        &self,
        seen: Vec<crate::store::task::WorkerRecord>,
        forget_before: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.command(move |tx| Command::RecordWorkers(seen, forget_before, tx))
    }

    fn workers(
        &self,
        since: Millis,
    ) -> BoxFuture<'_, Result<Vec<crate::store::task::WorkerRecord>, StoreError>> {
        Box::pin(async move {
            let client = read::connection(&self.shared, "reading the workers").await?;
            tasks::workers(apply::Tx::new(&client), since).await
        })
    }
}

impl crate::store::flow::WorkflowQueues for PostgresStore {
    fn enqueue_instance(
        &self,
        record: InstanceRecord,
        entry: crate::store::flow::QueueEntry,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<crate::store::flow::Enqueued, StoreError>> {
        self.command(|tx| Command::Enqueue(Box::new(record), entry, extra, tx))
    }

    fn admit(
        &self,
        now: Millis,
        limit: usize,
    ) -> BoxFuture<'_, Result<crate::store::flow::Admitted, StoreError>> {
        self.command(|tx| Command::Admit(now, limit, tx))
    }

    fn set_queue_config(
        &self,
        queue: String,
        config: crate::store::flow::QueueConfig,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.command(|tx| Command::SetQueueConfig(queue, config, tx))
    }

    fn workflow_queues(
        &self,
    ) -> BoxFuture<'_, Result<Vec<crate::store::flow::WorkflowQueueStats>, StoreError>> {
        Box::pin(async move {
            let client = read::connection(&self.shared, "reading the workflow queues").await?;
            flow::stats(apply::Tx::new(&client)).await
        })
    }
}

impl StoreAdmin for PostgresStore {
    fn search(&self, query: Query) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        Box::pin(async move { admin::search(&self.shared, &query).await })
    }

    fn details(&self, id: &str) -> BoxFuture<'_, Result<Option<Details>, StoreError>> {
        let id = id.to_string();
        Box::pin(async move { admin::details(&self.shared, &id).await })
    }

    fn attributes(&self, ids: Vec<String>) -> BoxFuture<'_, Result<AttributeMap, StoreError>> {
        Box::pin(async move { admin::attributes(&self.shared, &ids).await })
    }

    fn counts(&self) -> BoxFuture<'_, Result<Vec<StatusCount>, StoreError>> {
        Box::pin(admin::counts(&self.shared))
    }

    fn stats(&self, query: StatsQuery) -> BoxFuture<'_, Result<Stats, StoreError>> {
        Box::pin(async move { admin::stats(&self.shared, &query).await })
    }

    fn aggregate(&self, key: String, query: Query) -> BoxFuture<'_, Result<Aggregate, StoreError>> {
        Box::pin(async move { admin::aggregate(&self.shared, &key, &query).await })
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        Box::pin(async move { admin::audit(&self.shared, limit).await })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>, StoreError>> {
        Box::pin(async move {
            let client = read::connection(&self.shared, "listing nodes").await?;
            ownership::nodes(apply::Tx::new(&client)).await
        })
    }

    fn unfinished(
        &self,
        workflow: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move { admin::unfinished(&self.shared, workflow, after, limit).await })
    }

    fn leases(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        Box::pin(async move {
            let client = read::connection(&self.shared, "reading the owners of instances").await?;
            ownership::leases_of(apply::Tx::new(&client), &ids).await
        })
    }
}
