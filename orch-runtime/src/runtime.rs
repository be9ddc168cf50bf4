//! The public runtime: build it, start workflows, look them up, signal them.

use crate::engine::{Clock, Inner, Outcome, TestHooks};
use crate::error::Error;
use crate::store::memory::MemoryStore;
#[cfg(feature = "sqlite")]
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Backend, InstanceRecord, JournalEntry, ListFilter, NodeId, Status, WriteOp};
use crate::workflow::{Registry, Workflow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

enum StoreChoice {
    Unset,
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(PathBuf, SqliteOptions),
    #[cfg(feature = "postgres")]
    Postgres(String, crate::store::postgres::PostgresOptions),
    Custom(Arc<dyn Backend>),
}

/// How to choose a store, for errors about a missing one: what this build offers.
#[cfg(all(feature = "sqlite", feature = "postgres"))]
const STORE_CALLS: &str = "call .sqlite(path), .postgres(url) or .in_memory() (tests) on \
     Runtime::builder(), or set ORCH_DATABASE_URL to a PostgreSQL URL";
#[cfg(all(feature = "sqlite", not(feature = "postgres")))]
const STORE_CALLS: &str = "call .sqlite(path) or .in_memory() (tests) on Runtime::builder() \
     (PostgreSQL, with .postgres(url) or ORCH_DATABASE_URL, needs the cargo feature `postgres` \
     of orch-runtime)";
#[cfg(all(not(feature = "sqlite"), feature = "postgres"))]
const STORE_CALLS: &str = "call .postgres(url) or .in_memory() (tests) on Runtime::builder(), \
     or set ORCH_DATABASE_URL to a PostgreSQL URL (this build has no SQLite store: .sqlite(path) \
     needs the cargo feature `sqlite` of orch-runtime, on by default)";
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
const STORE_CALLS: &str = "this build of orch-runtime has no durable store, so enable its \
     cargo feature `sqlite` (on by default) and call .sqlite(path), or `postgres` and call \
     .postgres(url), on Runtime::builder(); or pass a store of your own with .store(..), or call \
     .in_memory() in tests";

/// Configures a [`Runtime`]. Start with [`Runtime::builder`].
pub struct RuntimeBuilder {
    store: StoreChoice,
    node: Option<String>,
    /// `None`: leases never end (the test runtime).
    pub(crate) lease_ttl: Option<Duration>,
    max_running: usize,
    keep_loaded: crate::engine::KeepLoaded,
    pub(crate) clock: Clock,
    pub(crate) test: Option<TestHooks>,
    serve: crate::worker::Serve,
    queues: Vec<(String, crate::flow::QueueConfig)>,
    #[cfg(feature = "http")]
    http: Option<crate::server::HttpConfig>,
}

impl RuntimeBuilder {
    /// Serves no queue in this process: the attempts of `#[step(queue = "…")]` steps wait for
    /// workers elsewhere (other runtimes, the HTTP worker protocol). By default a runtime
    /// serves the queue of every queued step compiled into its binary.
    pub fn no_workers(mut self) -> Self {
        self.serve = crate::worker::Serve::Nothing;
        self
    }

    /// Serves only these queues in this process (those of queued steps compiled into its
    /// binary); the others wait for workers elsewhere.
    pub fn serve_queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.serve = crate::worker::Serve::Only(queues.into_iter().map(Into::into).collect());
        self
    }

    /// Stores everything in the SQLite file at `path` (created if missing), with every
    /// checkpoint fsync'd before the workflow continues.
    ///
    /// **Several runtimes may share one file**, in this process or in others on the same
    /// machine (e.g. the old and the new version during a rolling deploy). Each is a node
    /// (see [`node_id`](Self::node_id)) that drives only the instances it owns: those it
    /// started, and due ones it claimed. A runtime that shuts down gives its instances up at
    /// once; one that dies (`kill -9`) or stalls is taken over by the others after its
    /// [lease time-to-live](Self::lease_ttl). A runtime that lost an instance while paused
    /// has its late writes refused and stops driving it, so no checkpoint is ever overwritten.
    /// Signals, cancellations and [`Run::result`] work from any of them.
    ///
    /// Needs the cargo feature `sqlite` (on by default).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(self, path: impl Into<PathBuf>) -> Self {
        self.sqlite_with(path, SqliteOptions::default())
    }

    /// Like [`sqlite`](Self::sqlite) with explicit options, e.g. relaxed durability.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_with(mut self, path: impl Into<PathBuf>, options: SqliteOptions) -> Self {
        self.store = StoreChoice::Sqlite(path.into(), options);
        self
    }

    /// Stores everything in PostgreSQL at `url` (`postgres://user:password@host:port/db`),
    /// in the schema `orch` (created when missing). Needs the cargo feature `postgres`.
    ///
    /// Writes of many instances share one transaction (group commit). Any number of runtimes
    /// (nodes, on any number of machines) may share one schema: each drives the instances it
    /// owns by lease, claims due ones with `FOR UPDATE SKIP LOCKED`, and hears the others'
    /// signals, cancellations and ends through `LISTEN/NOTIFY` (see
    /// [`node_id`](Self::node_id) and [`lease_ttl`](Self::lease_ttl)). Choose the schema with
    /// [`postgres_with`](Self::postgres_with). Errors never show the URL's password.
    ///
    /// Without any store chosen, [`build`](Self::build) uses the `ORCH_DATABASE_URL`
    /// environment variable when it is set (schema `orch`).
    #[cfg(feature = "postgres")]
    pub fn postgres(self, url: impl Into<String>) -> Self {
        self.postgres_with(url, crate::store::postgres::PostgresOptions::default())
    }

    /// Like [`postgres`](Self::postgres) with options: the schema, the pool size.
    #[cfg(feature = "postgres")]
    pub fn postgres_with(
        mut self,
        url: impl Into<String>,
        options: crate::store::postgres::PostgresOptions,
    ) -> Self {
        self.store = StoreChoice::Postgres(url.into(), options);
        self
    }

    /// Configures workflow queue `name` (see [`Runtime::enqueue`]): the runtime writes
    /// `config` to the store when it starts, so it replaces what is stored (an earlier
    /// deployment's, or one set through the API) and applies on every node sharing the store.
    /// A queue not configured anywhere has no limits.
    pub fn queue(mut self, name: impl Into<String>, config: crate::flow::QueueConfig) -> Self {
        self.queues.push((name.into(), config));
        self
    }

    /// Keeps everything in memory: nothing survives the process. For tests.
    pub fn in_memory(mut self) -> Self {
        self.store = StoreChoice::Memory;
        self
    }

    /// Uses a store of your own: it implements the engine's
    /// [`Store`](crate::store::Store) and the operators'
    /// [`StoreAdmin`](crate::store::StoreAdmin) (check it with the `conformance` feature's
    /// `orch_runtime::store::conformance::run_all`).
    pub fn store(mut self, store: Arc<dyn Backend>) -> Self {
        self.store = StoreChoice::Custom(store);
        self
    }

    /// Names this runtime as a node of the cluster (default: host name, process id and a
    /// random suffix). Each runtime sharing a store needs its own id: two live runtimes with
    /// one id would take each other's instances for their own. A runtime started again under
    /// the id of one that crashed takes that one's instances over at once (others wait for
    /// its lease to end).
    /// An empty id, or one with whitespace or over 128 bytes, is refused by
    /// [`build`](Self::build).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node = Some(id.into());
        self
    }

    /// How long this runtime's ownership of its instances lasts without a heartbeat (default
    /// 10 s; it renews every third of it). Another runtime sharing the store takes over the
    /// instances of one that died after this long; a shorter time takes over sooner but
    /// costs more heartbeats and risks a stalled runtime losing its instances. At least
    /// 100 ms.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl.max(Duration::from_millis(100)));
        self
    }

    /// At most `n` instances are loaded and running at once on this runtime (default 10,000).
    /// This runtime owns no more than that: further instances it starts, and due ones beyond
    /// it, wait in the store without an owner, so another node sharing the store with room
    /// takes them, and this one claims them as its own instances finish or suspend.
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = n;
        self
    }

    /// Timers shorter than this keep the instance in memory; longer ones unload it until the
    /// timer fires (default one second).
    pub fn keep_loaded_below(mut self, d: Duration) -> Self {
        self.keep_loaded.timers = d;
        self
    }

    /// A workflow whose queued step has waited this long for a worker to end its task is
    /// unloaded until the task ends (default ten seconds): a short wait, the common case under
    /// load, costs no unload and reload.
    pub fn unload_task_waits_after(mut self, d: Duration) -> Self {
        self.keep_loaded.task_waits = d;
        self
    }

    /// Serves the HTTP API, the web UI, `/metrics` and `/healthz` on `addr` (e.g.
    /// `"127.0.0.1:8080"`; port 0 picks a free one, see [`Runtime::http_addr`]). A loopback
    /// address needs no token; any other address needs at least one (see
    /// [`HttpConfig`](crate::HttpConfig), or the `ORCH_ADMIN_TOKENS` / `ORCH_READ_TOKENS`
    /// environment variables).
    #[cfg(feature = "http")]
    pub fn http(self, addr: impl Into<String>) -> Self {
        self.http_with(crate::server::HttpConfig::new(addr))
    }

    /// Like [`http`](Self::http), with tokens and options.
    #[cfg(feature = "http")]
    pub fn http_with(mut self, config: crate::server::HttpConfig) -> Self {
        self.http = Some(config);
        self
    }

    /// Opens the store, finds every `#[workflow]` in the binary, registers this runtime as a
    /// node and claims the instances that are due (left running by a runtime that stopped,
    /// or whose timer, signal, child or cancellation came meanwhile); instances that still
    /// wait stay in the store until they are due. Must be called inside a tokio runtime.
    ///
    /// A store must be chosen: with none ([`sqlite`](Self::sqlite), `postgres`,
    /// [`in_memory`](Self::in_memory) or [`store`](Self::store)) and no `ORCH_DATABASE_URL`,
    /// `build` fails with an error saying which call to add; it never falls back to keeping
    /// workflows in memory, where a restart would lose them. The same holds in a build without
    /// the `sqlite` feature.
    pub async fn build(self) -> Result<Runtime, Error> {
        let registry = Registry::collect()?;
        let node = match self.node {
            None => NodeId::generate(),
            Some(id) => NodeId::new(id).map_err(Error::InvalidArgument)?,
        };
        #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
        let mut choice = self.store;
        if matches!(choice, StoreChoice::Unset)
            && let Some(url) = std::env::var_os("ORCH_DATABASE_URL")
        {
            #[cfg(feature = "postgres")]
            {
                choice = StoreChoice::Postgres(
                    url.to_string_lossy().into_owned(),
                    crate::store::postgres::PostgresOptions::default(),
                );
            }
            #[cfg(not(feature = "postgres"))]
            {
                let _ = url;
                return Err(Error::Store(crate::store::StoreError::Backend(format!(
                    "ORCH_DATABASE_URL is set but this build of orch has no PostgreSQL store: \
                     enable the cargo feature `postgres` of orch-runtime, or unset ORCH_DATABASE_URL \
                     and choose a store: {}",
                    STORE_CALLS
                ))));
            }
        }
        let store: Arc<dyn Backend> = match choice {
            StoreChoice::Unset => {
                return Err(Error::Store(crate::store::StoreError::Backend(format!(
                    "no store chosen: {STORE_CALLS}"
                ))));
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url, mut options) => {
                // A node paused in the middle of a write holds its instances' rows locked: the
                // server ends that transaction once it has idled as long as a lease lasts, so
                // the others take over as after a crash.
                if options.idle_in_transaction_timeout.is_none() {
                    options.idle_in_transaction_timeout = self.lease_ttl;
                }
                Arc::new(crate::store::postgres::PostgresStore::open(&url, options).await?)
            }
            StoreChoice::Memory => Arc::new(MemoryStore::new()),
            StoreChoice::Custom(s) => s,
            #[cfg(feature = "sqlite")]
            StoreChoice::Sqlite(path, options) => {
                let opened =
                    tokio::task::spawn_blocking(move || SqliteStore::open(path, options)).await;
                match opened {
                    Ok(store) => Arc::new(store?),
                    Err(e) => {
                        return Err(Error::Store(crate::store::StoreError::Backend(format!(
                            "opening the database failed: {e}"
                        ))));
                    }
                }
            }
        };
        for (name, config) in &self.queues {
            crate::store::task::check_queue(name)
                .and_then(|()| config.check())
                .map_err(|e| Error::InvalidArgument(format!("queue `{name}`: {e}")))?;
        }
        for (name, config) in self.queues {
            store.set_queue_config(name, config).await?;
        }
        let inner = Inner::new(
            store,
            node,
            self.lease_ttl,
            registry,
            self.max_running,
            self.keep_loaded,
            self.clock,
            self.test,
        );
        let resumed = match inner.recover().await {
            Ok(n) => n,
            Err(e) => {
                let _ = inner.shutdown().await;
                return Err(e);
            }
        };
        if resumed > 0 {
            tracing::info!(resumed, node = %inner.node, "resuming due instances");
        }
        if let Some(worker) = crate::worker::spawn(
            inner.store.clone(),
            inner.clock,
            format!("{}/in-process", inner.node),
            &self.serve,
            inner.lease_ttl,
        ) {
            inner.adopt(worker);
        }
        let rt = Runtime {
            inner,
            #[cfg(feature = "http")]
            http: Arc::new(std::sync::OnceLock::new()),
        };
        #[cfg(feature = "http")]
        if let Some(config) = self.http {
            match crate::server::start(rt.clone(), config).await {
                Ok(bound) => {
                    let _ = rt.http.set(bound);
                }
                Err(e) => {
                    let _ = rt.shutdown().await;
                    return Err(e);
                }
            }
        }
        Ok(rt)
    }
}

/// Runs workflows durably. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
    /// The HTTP server, when turned on. The runtime owns it: the engine below knows nothing
    /// of the server.
    #[cfg(feature = "http")]
    http: Arc<std::sync::OnceLock<crate::server::Bound>>,
}

impl Runtime {
    /// A builder; choose a store with `.sqlite(path)` (feature `sqlite`, on by default),
    /// `.postgres(url)` (feature `postgres`), `.store(..)` or, for tests, `.in_memory()`.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            store: StoreChoice::Unset,
            node: None,
            lease_ttl: Some(crate::engine::DEFAULT_LEASE_TTL),
            max_running: 10_000,
            keep_loaded: Default::default(),
            clock: Clock::System,
            test: None,
            serve: crate::worker::Serve::default(),
            queues: Vec::new(),
            #[cfg(feature = "http")]
            http: None,
        }
    }

    /// Where the HTTP server listens, when it was turned on with
    /// [`RuntimeBuilder::http`].
    #[cfg(feature = "http")]
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.get().map(|b| b.addr)
    }

    /// The web UI's address (`http://127.0.0.1:8080/`), when the server is on.
    #[cfg(feature = "http")]
    pub fn http_url(&self) -> Option<String> {
        self.http_addr().map(|a| format!("http://{a}/"))
    }

    /// Starts workflow `W` with `input` under a generated id.
    pub async fn start<W: Workflow>(&self, workflow: W, input: W::Input) -> Result<Run<W>, Error> {
        self.start_inner(workflow, None, input).await
    }

    /// Starts workflow `W` under `id`. If that instance exists already with the same input
    /// it is returned as is (idempotent start: nothing runs twice, and
    /// [`Run::created`] is `false`); with a different input the start is refused with
    /// [`Error::AlreadyStarted`] (and with [`Error::IdConflict`] when the id belongs to another
    /// workflow). Concurrent starts of one id agree: exactly one creates it.
    pub async fn start_with_id<W: Workflow>(
        &self,
        workflow: W,
        id: impl Into<String>,
        input: W::Input,
    ) -> Result<Run<W>, Error> {
        self.start_inner(workflow, Some(id.into()), input).await
    }

    async fn start_inner<W: Workflow>(
        &self,
        _workflow: W,
        id: Option<String>,
        input: W::Input,
    ) -> Result<Run<W>, Error> {
        let def = self.inner.registry.get(W::NAME)?;
        let json = serde_json::to_string(&input).map_err(|e| Error::InvalidInput {
            workflow: W::NAME.to_string(),
            detail: e.to_string(),
        })?;
        let (id, created) = self
            .inner
            .start(def, id, json, None, |_| Vec::new())
            .await?;
        let mut run = self.handle_unchecked(id);
        run.created = created;
        Ok(run)
    }

    /// Starts the workflow named `workflow` with a JSON input (validated against its input
    /// type). Returns the instance id.
    pub async fn start_json(
        &self,
        workflow: &str,
        id: Option<&str>,
        input: &str,
    ) -> Result<String, Error> {
        Ok(self.start_json_as(workflow, id, input, None).await?.0)
    }

    /// The definition of workflow `workflow`, once `input` (JSON) is within the payload limit
    /// and fits its input type: what a start or an enqueue of outside JSON checks first.
    pub(crate) fn checked_input(
        &self,
        workflow: &str,
        input: &str,
    ) -> Result<&'static crate::workflow::WorkflowDef, Error> {
        let def = self.inner.registry.get(workflow)?;
        crate::limits::check_payload("workflow input", input)?;
        (def.check_input)(input).map_err(|detail| Error::InvalidInput {
            workflow: def.name.to_string(),
            detail,
        })?;
        Ok(def)
    }

    /// Like [`start_json`](Self::start_json), also saying whether this call created the
    /// instance (`false`: an instance with that id and the same input existed and is returned
    /// as it is; a different input is [`Error::AlreadyStarted`]). When
    /// `actor` is given, a `start` audit entry naming it is written in the same transaction
    /// as the new instance.
    pub async fn start_json_as(
        &self,
        workflow: &str,
        id: Option<&str>,
        input: &str,
        actor: Option<&str>,
    ) -> Result<(String, bool), Error> {
        let def = self.checked_input(workflow, input)?;
        let audit = |new_id: &str| {
            actor
                .map(|actor| {
                    let detail = serde_json::json!({ "workflow": def.name });
                    WriteOp::Audit(self.audit_record(actor, "start", new_id, detail))
                })
                .into_iter()
                .collect()
        };
        self.inner
            .start(def, id.map(str::to_string), input.to_string(), None, audit)
            .await
    }

    /// A typed handle on an existing instance of `W`.
    pub async fn handle<W: Workflow>(&self, _workflow: W, id: &str) -> Result<Run<W>, Error> {
        let rec = self.record(id).await?;
        if rec.workflow != W::NAME {
            return Err(Error::WrongWorkflow {
                id: id.to_string(),
                actual: rec.workflow,
                expected: W::NAME.to_string(),
            });
        }
        Ok(self.handle_unchecked(id.to_string()))
    }

    /// A typed handle on `id`, saying whether the call that returned it created it.
    pub(crate) fn run_handle<W: Workflow>(&self, id: String, created: bool) -> Run<W> {
        let mut run = self.handle_unchecked(id);
        run.created = created;
        run
    }

    fn handle_unchecked<W: Workflow>(&self, id: String) -> Run<W> {
        Run {
            id,
            rt: self.clone(),
            created: false,
            _w: PhantomData,
        }
    }

    /// The stored record of an instance, if it exists.
    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, Error> {
        Ok(self.inner.store.get(id).await?)
    }

    async fn record(&self, id: &str) -> Result<InstanceRecord, Error> {
        self.instance(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// The journal of an instance, ordered by seq.
    pub async fn journal(&self, id: &str) -> Result<Vec<JournalEntry>, Error> {
        match self.inner.store.load(id).await? {
            Some(l) => Ok(l.journal),
            None => Err(Error::NotFound(id.to_string())),
        }
    }

    /// The failed attempts of an instance's steps, ordered by (seq, attempt).
    pub async fn attempts(&self, id: &str) -> Result<Vec<crate::store::AttemptRecord>, Error> {
        match self.inner.store.load(id).await? {
            Some(l) => Ok(l.attempts),
            None => Err(Error::NotFound(id.to_string())),
        }
    }

    /// Instances matching `filter`, ordered by id.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<InstanceRecord>, Error> {
        Ok(self.inner.store.list(filter).await?)
    }

    /// Sends signal `name` with `payload` to an instance. It is stored first, so it survives
    /// restarts, and kept until the workflow waits for it.
    ///
    /// When the workflow's body waits for `name` with one payload type (`orch::signal::<T>`
    /// with a literal name, see `#[workflow]`), a payload that does not deserialize into it is
    /// refused with [`Error::InvalidSignal`] naming the field, and nothing is stored. Where the
    /// name is waited for with several types, or one the macro cannot tell, the payload is
    /// stored, and one that does not fit is discarded when the workflow receives it and
    /// journaled on the instance as a failed attempt of that wait (with the reason). A name
    /// the body does not wait for by a literal name (computed at run time, or not waited for
    /// at all) is stored and kept pending.
    pub async fn signal<T: Serialize>(
        &self,
        id: &str,
        name: &str,
        payload: T,
    ) -> Result<(), Error> {
        let json = serde_json::to_value(&payload).map_err(|e| Error::InvalidInput {
            workflow: format!("signal `{name}`"),
            detail: e.to_string(),
        })?;
        self.signal_as(id, name, &json, None).await.map(|_| ())
    }

    /// Sends a signal with a JSON payload; returns the stored signal's id. When `actor` is
    /// given, a `signal` audit entry naming it is written in the same transaction as the
    /// signal.
    pub async fn signal_as(
        &self,
        id: &str,
        name: &str,
        payload: &serde_json::Value,
        actor: Option<&str>,
    ) -> Result<i64, Error> {
        if self.inner.is_closing() {
            return Err(Error::ShutDown);
        }
        crate::limits::check_text("signal name", name, crate::limits::MAX_SIGNAL_NAME_BYTES)?;
        let json = payload.to_string();
        crate::limits::check_payload("signal payload", &json)?;
        self.check_signal(id, name, payload).await?;
        let at = self.inner.clock.now_ms();
        let audit = actor
            .map(|actor| {
                let detail = serde_json::json!({ "name": name });
                WriteOp::Audit(self.audit_record(actor, "signal", id, detail))
            })
            .into_iter()
            .collect();
        // The store's wake-up hands it to the node that drives the instance (or makes one
        // claim it).
        let signal_id = self
            .inner
            .store
            .add_signal(id, name, json, at, audit)
            .await?;
        Ok(signal_id)
    }

    /// Refuses a payload that does not fit the one type the instance's workflow waits for
    /// under `name` (see [`WorkflowDef::signal_check`](crate::workflow::WorkflowDef::signal_check)).
    async fn check_signal(
        &self,
        id: &str,
        name: &str,
        payload: &serde_json::Value,
    ) -> Result<(), Error> {
        let rec = self.record(id).await?;
        // An instance of a workflow this binary lacks is refused by the store's own checks
        // (or kept until compatible code runs it); there is no type to check against here.
        let Ok(def) = self.inner.registry.get(&rec.workflow) else {
            return Ok(());
        };
        if let crate::workflow::SignalCheck::Typed(t) = def.signal_check(name) {
            (t.check)(payload).map_err(|detail| Error::InvalidSignal {
                id: id.to_string(),
                workflow: def.name.to_string(),
                name: name.to_string(),
                type_name: (t.type_name)().to_string(),
                detail,
            })?;
        }
        Ok(())
    }

    /// Waits until the instance has finished and returns its final record.
    pub async fn wait(&self, id: &str) -> Result<InstanceRecord, Error> {
        loop {
            let finished = self.inner.watch(id);
            let rec = self.record(id).await?;
            if rec.status.is_final() {
                return Ok(rec);
            }
            if finished.await.is_err() {
                return Err(Error::ShutDown);
            }
        }
    }

    /// Waits for the end of an instance; skips the store read while the instance is running
    /// here (its end is then announced with the outcome).
    pub(crate) async fn outcome(&self, id: &str) -> Result<Outcome, Error> {
        let finished = self.inner.watch(id);
        if !self.inner.is_loaded(id) {
            let rec = self.record(id).await?;
            if rec.status.is_final() {
                return Ok(Outcome::of(&rec));
            }
        }
        match finished.await {
            Ok(outcome) => Ok(outcome),
            Err(_) => Err(Error::ShutDown),
        }
    }

    /// Everything stored about an instance — record, journal, failed attempts, pending
    /// signals — as JSON, e.g. to replay it against new code with
    /// `orch_runtime::testing::replay` before deploying.
    pub async fn export(&self, id: &str) -> Result<String, Error> {
        let loaded = self
            .inner
            .store
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let export = crate::store::Export::from(loaded);
        serde_json::to_string_pretty(&export).map_err(|e| Error::Decode {
            id: id.to_string(),
            what: "export",
            detail: e.to_string(),
        })
    }

    /// This runtime's node id (see [`RuntimeBuilder::node_id`]).
    pub fn node_id(&self) -> &str {
        self.inner.node.as_str()
    }

    /// Names of the workflows compiled into this binary.
    pub fn workflows(&self) -> Vec<&'static str> {
        self.inner.registry.names()
    }

    /// Stops driving instances and gives them up, so another runtime sharing the store (or the
    /// next start) takes them over at once, then closes the store once every queued
    /// checkpoint is written.
    pub async fn shutdown(&self) -> Result<(), Error> {
        #[cfg(feature = "http")]
        if let Some(server) = self.http.get() {
            server.stop();
        }
        self.inner.shutdown().await
    }
}

/// A typed handle on one instance of workflow `W`.
pub struct Run<W> {
    id: String,
    rt: Runtime,
    created: bool,
    _w: PhantomData<fn() -> W>,
}

impl<W> Clone for Run<W> {
    fn clone(&self) -> Self {
        Run {
            id: self.id.clone(),
            rt: self.rt.clone(),
            created: self.created,
            _w: PhantomData,
        }
    }
}

impl<W: Workflow> Run<W> {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the start that returned this handle created the instance: `false` when
    /// [`Runtime::start_with_id`] found it existing (with the same input), and for handles
    /// from [`Runtime::handle`].
    pub fn created(&self) -> bool {
        self.created
    }

    /// The current status.
    pub async fn status(&self) -> Result<Status, Error> {
        Ok(self.rt.record(&self.id).await?.status)
    }

    /// The custom status last set with `set_status`, if any.
    pub async fn custom_status<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let rec = self.rt.record(&self.id).await?;
        rec.custom_status
            .map(|json| {
                serde_json::from_str(&json).map_err(|e| Error::Decode {
                    id: self.id.clone(),
                    what: "custom status",
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    /// Waits for the workflow to finish and returns its output.
    pub async fn result(&self) -> Result<W::Output, Error> {
        let rec = self.rt.outcome(&self.id).await?;
        let id = self.id.clone();
        match (rec.status, rec.output) {
            (Status::Completed | Status::Failed | Status::Cancelled, Some(out)) => {
                serde_json::from_str(&out).map_err(|e| Error::Decode {
                    id,
                    what: "output",
                    detail: e.to_string(),
                })
            }
            (Status::Incompatible, _) => Err(Error::Incompatible {
                id,
                message: rec.error.unwrap_or_default(),
            }),
            (Status::Failed | Status::Cancelled | Status::Terminated, None) => Err(Error::Failed {
                id,
                message: rec.error.unwrap_or_default(),
            }),
            (status, _) => Err(Error::NoOutput { id, status }),
        }
    }
}
