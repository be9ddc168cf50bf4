//! A worker in another Rust process: it connects to an orch server over HTTP and serves the
//! `#[step(queue = "…")]` bodies compiled into its binary, through the worker protocol
//! (`/api/v1/tasks`, see the server's `docs/http-api.md`). Cargo feature `worker`.
//!
//! ```no_run
//! use orch_runtime::prelude::*;
//! use orch_runtime::worker::client::Worker;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize, JsonSchema)]
//! struct Charge { order: String, cents: u64 }
//!
//! #[step(queue = "payments")]
//! async fn charge(charge: Charge) -> Result<String, StepError> {
//!     // call the payment service with orch::idempotency_key() …
//!     Ok(format!("payment-{}", charge.order))
//! }
//!
//! # async fn run() -> Result<(), orch_runtime::worker::client::WorkerError> {
//! Worker::connect("http://orch.internal:8080")
//!     .token(std::env::var("ORCH_WORKER_TOKEN").unwrap_or_default())
//!     .queues(["payments"])
//!     .concurrency(16)
//!     .name("payments-1")
//!     .run() // until Ctrl-C or SIGTERM, then a graceful shutdown
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! What the worker does:
//!
//! - **Leasing.** It long-polls `POST /api/v1/tasks/lease` for its queues, asking for as many
//!   tasks as it has free slots ([`Worker::concurrency`]); with no free slot it does not ask.
//! - **Running.** Each task runs the step's body (which sees the task's idempotency key through
//!   `orch::idempotency_key()`), with a heartbeat every third of the lease
//!   ([`Worker::lease`]). A heartbeat refused with 409 `task_lost` (the lease ended and the task
//!   went to another worker, or the instance stopped waiting for it) stops the body at once and
//!   drops the task; so does a lease that may have ended because no heartbeat got an answer for
//!   a whole lease time.
//! - **Ending.** What the body returns completes the task — for a step returning
//!   `Result<T, E>` its `Err` too, which the workflow then judges by the step's policy exactly
//!   as a local step's error (retried if retryable, else the step's failure). A panic fails the
//!   task as retryable; arguments that do not fit the step's parameters fail it for good. An
//!   end that gets no answer is sent again until the lease would have ended.
//! - **A server that is down** (or answers 5xx) is asked again after a backoff of 100 ms,
//!   doubling to 5 s, with jitter; the worker never gives up on it. A token the server refuses
//!   (401/403) ends [`Worker::run`] with [`WorkerError::Refused`].
//! - **Shutdown** ([`RunningWorker::shutdown`], or the signal of [`Worker::run`] /
//!   [`Worker::run_until`]): the worker stops asking for tasks at once (a long-poll in flight is
//!   dropped; a task the server leased to it in that instant returns to its queue when its
//!   lease ends). Tasks already running may finish for up to the grace period
//!   ([`Worker::shutdown_grace`], 30 s by default) and are completed or failed as usual; those
//!   still running then are **abandoned**: their bodies are stopped and nothing is sent, so
//!   their leases run out and another worker runs the same attempt again, with the same
//!   idempotency key, exactly as after a crash.

use super::{Ended, Job, LeaseHolder, Outcome, QueuedStep, Renewed, run_leased};
use crate::store::task::{TaskResult, check_queue};
use futures_util::future::BoxFuture;
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Default number of tasks a worker runs at once.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default lease asked for each task (renewed every third of it while the task runs).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default time running tasks get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long one long-poll waits on the server for a task.
const POLL_WAIT: Duration = Duration::from_secs(20);
/// How long a heartbeat or an end may take before it counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff after a failed call: from the first, doubling, to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Longest failure message the server takes, in bytes (longer ones are cut).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most tasks asked for in one lease (the server's limit).
const MAX_PER_LEASE: usize = 100;

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker's settings are wrong (bad URL, no step for a queue asked, bad name); nothing
    /// was sent to the server.
    #[error("worker configuration: {0}")]
    Config(String),
    /// The server refused the worker for good: its token (401/403) or its request (400).
    #[error("the orch server refused this worker: {0}")]
    Refused(String),
    /// The worker's serving task ended unexpectedly (a panic in the worker itself, not in a
    /// step: a step's panic fails its task).
    #[error("the worker stopped unexpectedly: {0}")]
    Stopped(String),
}

/// A worker's settings; [`Worker::start`], [`Worker::run`] or [`Worker::run_until`] connect it.
#[derive(Clone, Debug)]
pub struct Worker {
    url: String,
    token: Option<String>,
    queues: Vec<String>,
    concurrency: usize,
    name: Option<String>,
    lease: Duration,
    grace: Duration,
}

/// What a worker did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Tasks leased.
    pub leased: u64,
    /// Tasks completed with the step's value.
    pub completed: u64,
    /// Tasks failed (a panic, arguments that do not fit; a step's own error value completes
    /// its task).
    pub failed: u64,
    /// Tasks dropped because their lease was lost (409 `task_lost`, or no answer for a lease
    /// time).
    pub lost: u64,
    /// Tasks abandoned at shutdown, still running when the grace period ended.
    pub abandoned: u64,
}

#[derive(Default)]
struct Counters {
    leased: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    abandoned: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            leased: self.leased.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

impl Worker {
    /// A worker of the server at `url` (its root: `http://host:port`, optionally with a path
    /// prefix; plain `http`, put TLS in a proxy). Nothing is sent before it starts.
    pub fn connect(url: impl Into<String>) -> Worker {
        Worker {
            url: url.into(),
            token: None,
            queues: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            name: None,
            lease: DEFAULT_LEASE,
            grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Sends `Authorization: Bearer <secret>`: a worker token (`HttpConfig::worker_token`,
    /// `ORCH_WORKER_TOKENS`) or an admin one. An empty secret sends none.
    pub fn token(mut self, secret: impl Into<String>) -> Self {
        self.token = Some(secret.into()).filter(|t| !t.is_empty());
        self
    }

    /// Serves these queues (each must have a queued step in this binary). By default: every
    /// queue of a `#[step(queue = "…")]` compiled into this binary.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Runs at most `n` tasks at once (default [`DEFAULT_CONCURRENCY`]; 0 counts as 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The worker's id, shown to operators (`GET /api/v1/queues`, the UI) and stored with each
    /// task it leases: 1 to 128 bytes without control characters. Default:
    /// `rust-<pid>@<host>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long each task stays this worker's without a heartbeat (1 s to 1 h; default
    /// [`DEFAULT_LEASE`]). A worker that dies holds its tasks this long before another worker
    /// gets them; heartbeats go every third of it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long running tasks may finish at shutdown before they are abandoned (default
    /// [`DEFAULT_SHUTDOWN_GRACE`]; see the [module documentation](self)).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves until Ctrl-C (or, on Unix, SIGTERM), then shuts down gracefully. Ends early with
    /// an error if the worker cannot start or the server refuses it.
    pub async fn run(self) -> Result<WorkerStats, WorkerError> {
        self.run_until(stop_signal()).await
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()>,
    ) -> Result<WorkerStats, WorkerError> {
        let mut running = self.start()?;
        tokio::select! {
            joined = &mut running.task => return ended(joined, &running.counters),
            _ = signal => {}
        }
        running.shutdown().await
    }

    /// Checks the settings and starts serving in a task of its own. Refused when a queue
    /// asked for has no queued step in this binary (or there is none at all), when the URL or
    /// the name is unusable; a server that does not answer yet is not an error (the worker
    /// keeps trying).
    pub fn start(self) -> Result<RunningWorker, WorkerError> {
        let base = parse_url(&self.url)?;
        let (queues, steps) = servable(&self.queues)?;
        let name = match self.name {
            Some(n) => n,
            None => default_name(),
        };
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(WorkerError::Config(format!(
                "the worker name {name:?} is unusable: use 1 to 128 bytes without control \
                 characters (e.g. `payments-1@host-2`)"
            )));
        }
        let lease_ms = self.lease.as_millis();
        if !(1_000..=3_600_000).contains(&lease_ms) {
            return Err(WorkerError::Config(format!(
                "the lease must be 1 s to 1 h, got {:?}",
                self.lease
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("orch-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WorkerError::Config(format!("cannot set up the HTTP client: {e}")))?;
        let api = Arc::new(Api {
            http,
            base,
            token: self.token,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let serve = Serving {
            api,
            name: name.clone(),
            queues: queues.clone(),
            steps: Arc::new(steps),
            lease: self.lease,
            grace: self.grace,
            slots: Arc::new(Semaphore::new(self.concurrency)),
            counters: counters.clone(),
        };
        tracing::info!(worker = %name, ?queues, "orch worker serving");
        let task = tokio::spawn(serve.run(stop_rx));
        Ok(RunningWorker {
            name,
            queues,
            stop: stop_tx,
            task,
            counters,
        })
    }
}

/// A worker serving in a task of its own.
pub struct RunningWorker {
    name: String,
    queues: Vec<String>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
    counters: Arc<Counters>,
}

impl RunningWorker {
    /// The worker's id as the server sees it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queues it serves.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// What it did so far.
    pub fn stats(&self) -> WorkerStats {
        self.counters.snapshot()
    }

    /// Stops asking for tasks, lets running ones finish for the grace period, abandons the
    /// rest (see the [module documentation](self)), and returns what the worker did.
    pub async fn shutdown(mut self) -> Result<WorkerStats, WorkerError> {
        let _ = self.stop.send(true);
        ended((&mut self.task).await, &self.counters)
    }

    /// Waits until the worker stops by itself: only when the server refuses it for good.
    pub async fn wait(mut self) -> Result<WorkerStats, WorkerError> {
        ended((&mut self.task).await, &self.counters)
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        // Dropped without a shutdown: stop at once, like a crash (leases run out).
        self.task.abort();
    }
}

fn ended(
    joined: Result<Result<(), WorkerError>, tokio::task::JoinError>,
    counters: &Counters,
) -> Result<WorkerStats, WorkerError> {
    match joined {
        Ok(Ok(())) => Ok(counters.snapshot()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(WorkerError::Stopped(e.to_string())),
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn default_name() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut name = format!("rust-{}@{host}", std::process::id());
    name.retain(|c| !c.is_control());
    name.truncate(128);
    while !name.is_char_boundary(name.len()) {
        name.pop();
    }
    name
}

fn parse_url(url: &str) -> Result<Url, WorkerError> {
    let base = Url::parse(url).map_err(|e| {
        WorkerError::Config(format!(
            "the server URL {url:?} is not a URL ({e}); expected e.g. http://127.0.0.1:8080"
        ))
    })?;
    if base.scheme() != "http" {
        return Err(WorkerError::Config(format!(
            "the server URL {url}: only http:// is supported (put a TLS-terminating proxy in \
             front of the server and reach it over http, or tunnel it)"
        )));
    }
    if base.cannot_be_a_base() || base.host_str().is_none() {
        return Err(WorkerError::Config(format!(
            "the server URL {url:?} has no host; expected e.g. http://127.0.0.1:8080"
        )));
    }
    Ok(base)
}

type Steps = HashMap<&'static str, &'static QueuedStep>;

/// The queues to serve (sorted) and their steps in this binary; refused when one asked for has
/// none, or none was asked for and this binary has no queued step.
fn servable(asked: &[String]) -> Result<(Vec<String>, Steps), WorkerError> {
    let all: Vec<&'static QueuedStep> = inventory::iter::<QueuedStep>.into_iter().collect();
    let have: BTreeSet<&str> = all.iter().map(|s| s.queue).collect();
    let queues: BTreeSet<String> = if asked.is_empty() {
        if have.is_empty() {
            return Err(WorkerError::Config(
                "this binary has no `#[step(queue = \"…\")]`, so it has nothing to serve; \
                 declare a queued step in it (or link the crate that has them)"
                    .into(),
            ));
        }
        have.iter().map(|q| q.to_string()).collect()
    } else {
        asked.iter().cloned().collect()
    };
    for q in &queues {
        check_queue(q).map_err(|e| WorkerError::Config(format!("queue {q:?}: {e}")))?;
    }
    let missing: Vec<&String> = queues
        .iter()
        .filter(|q| !have.contains(q.as_str()))
        .collect();
    if !missing.is_empty() {
        let listed = if have.is_empty() {
            "none".to_string()
        } else {
            have.iter()
                .map(|q| format!("`{q}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(WorkerError::Config(format!(
            "this binary has no step for queue {}: a worker serves only the \
             `#[step(queue = \"…\")]` bodies compiled into it (its queues: {listed})",
            missing
                .iter()
                .map(|q| format!("`{q}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let steps = all
        .into_iter()
        .filter(|s| queues.contains(s.queue))
        .map(|s| (s.name, s))
        .collect();
    Ok((queues.into_iter().collect(), steps))
}

// ---------------------------------------------------------------------------------------------
// HTTP.

struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

/// What one call came to.
enum Answer {
    Ok(Value),
    /// 409 `task_lost`.
    Lost(String),
    /// No answer, a timeout, a 5xx, 429: worth asking again.
    Transient(String),
    /// 401, 403: the token.
    Denied(String),
    /// Another 4xx: the request.
    Refused(String),
}

impl Api {
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    async fn post(&self, segments: &[&str], body: Value, timeout: Duration) -> Answer {
        let url = self.url(segments);
        let mut req = self.http.post(url.clone()).json(&body).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Answer::Transient(format!("{}: {}", url.path(), root_cause(&e))),
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Answer::Transient(format!("{}: {}", url.path(), root_cause(&e))),
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return match parsed {
                Some(v) => Answer::Ok(v),
                None => Answer::Transient(format!(
                    "{} answered {status} with a body that is not JSON",
                    url.path()
                )),
            };
        }
        let message = parsed
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                let snippet: String = text.trim().chars().take(200).collect();
                format!("{} answered {status}: {snippet}", url.path())
            });
        let code = parsed
            .as_ref()
            .and_then(|v| v["error"]["code"].as_str())
            .unwrap_or_default();
        match status {
            StatusCode::CONFLICT if code == "task_lost" => Answer::Lost(message),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Answer::Denied(message),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                Answer::Transient(message)
            }
            s if s.is_server_error() => Answer::Transient(message),
            _ => Answer::Refused(message),
        }
    }
}

/// The innermost cause ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Doubling backoff with jitter.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF.0)
    }

    fn reset(&mut self) {
        self.0 = BACKOFF.0;
    }

    /// The next pause: the current step, ±25 %.
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF.1);
        d.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
}

// ---------------------------------------------------------------------------------------------
// Serving.

struct Serving {
    api: Arc<Api>,
    name: String,
    queues: Vec<String>,
    steps: Arc<Steps>,
    lease: Duration,
    grace: Duration,
    slots: Arc<Semaphore>,
    counters: Arc<Counters>,
}

/// A task as the server handed it out.
#[derive(serde::Deserialize)]
struct Leased {
    id: String,
    queue: String,
    step: String,
    instance: String,
    seq: u32,
    attempt: u32,
    input: Value,
    token: u64,
}

impl Serving {
    async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let mut running = JoinSet::new();
        let ended = self.lease_loop(&mut stop, &mut running).await;
        // Stop asking; let what runs finish for the grace period; abandon the rest.
        if !running.is_empty() {
            tracing::info!(worker = %self.name, running = running.len(), grace = ?self.grace,
                "orch worker stopping: letting running tasks finish");
            let all_done = async { while running.join_next().await.is_some() {} };
            if tokio::time::timeout(self.grace, all_done).await.is_err() {
                let n = running.len() as u64;
                running.abort_all();
                while running.join_next().await.is_some() {}
                self.counters.abandoned.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(worker = %self.name, abandoned = n,
                    "orch worker abandoned running tasks at shutdown; their leases run out and \
                     another worker runs them again");
            }
        }
        tracing::info!(worker = %self.name, "orch worker stopped");
        ended
    }

    async fn lease_loop(
        &self,
        stop: &mut watch::Receiver<bool>,
        running: &mut JoinSet<()>,
    ) -> Result<(), WorkerError> {
        let mut backoff = Backoff::new();
        let mut down_since: Option<String> = None;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            // Reap what ended (keeps the set small).
            while running.try_join_next().is_some() {}
            // Wait for a free slot.
            if self.slots.available_permits() == 0 {
                tokio::select! {
                    permit = self.slots.acquire() => drop(permit),
                    _ = stop.changed() => return Ok(()),
                }
                continue;
            }
            let room = self.slots.available_permits().min(MAX_PER_LEASE);
            let body = json!({
                "worker": self.name,
                "queues": self.queues,
                "max_tasks": room,
                "wait_ms": POLL_WAIT.as_millis() as u64,
                "lease_ms": self.lease.as_millis() as u64,
            });
            let answer = tokio::select! {
                a = self.api.post(&["tasks", "lease"], body, POLL_WAIT + CALL_TIMEOUT) => a,
                _ = stop.changed() => return Ok(()),
            };
            match answer {
                Answer::Ok(v) => {
                    if let Some(was) = down_since.take() {
                        tracing::info!(worker = %self.name, after = %was,
                            "orch worker reached the server again");
                    }
                    backoff.reset();
                    let tasks: Vec<Leased> =
                        serde_json::from_value(v["tasks"].clone()).map_err(|e| {
                            WorkerError::Refused(format!(
                                "the server's answer to a lease is not the worker protocol's \
                                 (is {} an orch server of this version?): {e}",
                                self.api.base
                            ))
                        })?;
                    for task in tasks {
                        self.counters.leased.fetch_add(1, Ordering::Relaxed);
                        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                            // More than asked for: leave it to run out.
                            tracing::warn!(task = %task.id, "the server handed out more tasks \
                                than asked for; leaving this one to its lease end");
                            continue;
                        };
                        let (api, steps, counters, lease) = (
                            self.api.clone(),
                            self.steps.clone(),
                            self.counters.clone(),
                            self.lease,
                        );
                        running.spawn(async move {
                            let outcome = run_one(&api, &steps, task, lease).await;
                            let c = match outcome {
                                Outcome::Completed => &counters.completed,
                                Outcome::Failed => &counters.failed,
                                Outcome::Lost => &counters.lost,
                            };
                            c.fetch_add(1, Ordering::Relaxed);
                            drop(permit);
                        });
                    }
                }
                Answer::Transient(why) | Answer::Lost(why) => {
                    if down_since.is_none() {
                        tracing::warn!(worker = %self.name, error = %why,
                            "orch worker cannot lease from the server; trying again with backoff");
                        down_since = Some(why);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next()) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                }
                Answer::Denied(why) => {
                    return Err(WorkerError::Refused(format!(
                        "{why} (give the worker a worker or admin token: Worker::token)"
                    )));
                }
                Answer::Refused(why) => return Err(WorkerError::Refused(why)),
            }
        }
    }
}

/// Runs one leased task to its end through the shared runner.
async fn run_one(api: &Api, steps: &Steps, task: Leased, lease: Duration) -> Outcome {
    let holder = HttpLease {
        api,
        id: &task.id,
        token: task.token,
        lease,
    };
    let job = Job {
        step: &task.step,
        queue: &task.queue,
        instance: &task.instance,
        seq: task.seq,
        attempt: task.attempt,
        input: task.input.to_string(),
    };
    run_leased(steps, job, lease, &holder).await
}

/// A task's lease held on the server.
struct HttpLease<'a> {
    api: &'a Api,
    id: &'a str,
    token: u64,
    lease: Duration,
}

impl HttpLease<'_> {
    /// Sends an end until it is answered, refused, or the lease would have ended.
    async fn end(&self, action: &str, body: Value) -> Answer {
        let give_up = tokio::time::Instant::now() + self.lease;
        let mut backoff = Backoff::new();
        loop {
            let answer = self
                .api
                .post(&["tasks", self.id, action], body.clone(), CALL_TIMEOUT)
                .await;
            match answer {
                Answer::Transient(why) if tokio::time::Instant::now() < give_up => {
                    tracing::debug!(task = %self.id, error = %why, "a task's end got no answer; \
                        sending it again");
                    tokio::time::sleep(backoff.next()).await;
                }
                other => return other,
            }
        }
    }
}

impl LeaseHolder for HttpLease<'_> {
    fn renew(&self) -> BoxFuture<'_, Renewed> {
        Box::pin(async move {
            let body = json!({"token": self.token, "lease_ms": self.lease.as_millis() as u64});
            match self
                .api
                .post(
                    &["tasks", self.id, "heartbeat"],
                    body,
                    CALL_TIMEOUT.min(self.lease),
                )
                .await
            {
                Answer::Ok(_) => Renewed::Yes,
                Answer::Lost(why) => Renewed::Lost(why),
                Answer::Transient(why) => Renewed::Unsure(why),
                // The token was revoked, or the server no longer takes this task: either way
                // this worker cannot keep it.
                Answer::Denied(why) | Answer::Refused(why) => Renewed::Lost(why),
            }
        })
    }

    fn finish(&self, result: TaskResult) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            let answer = match result {
                TaskResult::Completed { output } => {
                    let output: Value =
                        serde_json::from_str(&output).unwrap_or(Value::String(output));
                    match self
                        .end("complete", json!({"token": self.token, "output": output}))
                        .await
                    {
                        // The output itself was refused (too large, …): fail the task for good
                        // rather than leave it to be run again and refused again.
                        Answer::Refused(why) => {
                            self.end(
                                "fail",
                                json!({"token": self.token, "retryable": false,
                                       "message": format!("the server refused the step's output: {why}")}),
                            )
                            .await
                        }
                        other => other,
                    }
                }
                TaskResult::Failed { message, retryable } => {
                    let mut message = message;
                    if message.len() > MAX_MESSAGE_BYTES {
                        let mut cut = MAX_MESSAGE_BYTES;
                        while !message.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        message.truncate(cut);
                    }
                    let message = message.replace('\0', "\u{fffd}");
                    self.end(
                        "fail",
                        json!({"token": self.token, "message": message, "retryable": retryable}),
                    )
                    .await
                }
            };
            match answer {
                Answer::Ok(_) => Ended::Done,
                Answer::Lost(why)
                | Answer::Transient(why)
                | Answer::Denied(why)
                | Answer::Refused(why) => Ended::Lost(why),
            }
        })
    }
}
