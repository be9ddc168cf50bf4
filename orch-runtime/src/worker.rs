//! Serving queued steps: a step declared `#[step(queue = "…")]` runs each attempt as a task
//! on that queue (see [`crate::store::task`]), and any worker that has the step's body may
//! serve it. A runtime serves the queues of every queued step compiled into its binary unless
//! told otherwise ([`RuntimeBuilder::no_workers`](crate::RuntimeBuilder::no_workers),
//! [`serve_queues`](crate::RuntimeBuilder::serve_queues)); workers in other processes and
//! languages use the HTTP worker protocol.

#[cfg(feature = "worker")]
pub mod client;

use crate::context::{self, Scope, StepInfo};
use crate::engine::{Clock, panic_text};
use crate::store::task::{TaskLease, TaskResult, WorkerTerms};
use crate::store::{Backend, StoreError, Wakeup};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

/// A queued step's body, as the worker runs it: the arguments as one JSON object in, the
/// step's return value as JSON out, or a failure (message, whether another attempt may help).
/// Registered by `#[step(queue = "…")]`.
pub struct QueuedStep {
    /// The step's name.
    pub name: &'static str,
    /// Its queue.
    pub queue: &'static str,
    /// Runs the body on the arguments (a JSON object keyed by parameter name).
    pub run: RunStep,
}

/// A queued step's body as a worker runs it: the arguments as one JSON object in; the return
/// value as JSON, or a failure's message and whether another attempt may help, out.
pub type RunStep = fn(String) -> BoxFuture<'static, Result<String, (String, bool)>>;

inventory::collect!(QueuedStep);

/// What the code `#[step(queue = "…")]` generates calls: a queued step's arguments as one
/// JSON object keyed by parameter name, and its output as JSON.
pub mod args {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// A queued step's arguments, by parameter name.
    #[derive(Default)]
    pub struct Args(serde_json::Map<String, serde_json::Value>);

    /// A failure of the worker's side: message, and whether another attempt may help.
    pub type Failure = (String, bool);

    impl Args {
        /// Adds argument `key`.
        pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), String> {
            let v = serde_json::to_value(value).map_err(|e| format!("argument `{key}`: {e}"))?;
            self.0.insert(key.to_string(), v);
            Ok(())
        }

        /// The arguments as JSON text (the task's input).
        pub fn json(self) -> String {
            serde_json::Value::Object(self.0).to_string()
        }

        /// Reads a task's input for step `step`.
        pub fn parse(input: &str, step: &str) -> Result<Args, Failure> {
            serde_json::from_str(input).map(Args).map_err(|e| {
                (
                    format!(
                        "step `{step}`: the task's input is not a JSON object of its arguments: {e}"
                    ),
                    false,
                )
            })
        }

        /// Takes argument `key` (a missing one reads as `null`).
        pub fn take<T: DeserializeOwned>(&mut self, key: &str, step: &str) -> Result<T, Failure> {
            let v = self.0.remove(key).unwrap_or(serde_json::Value::Null);
            serde_json::from_value(v).map_err(|e| {
                (
                    format!("step `{step}`: argument `{key}` does not fit its type: {e}"),
                    false,
                )
            })
        }
    }

    /// The step's return value as the task's output.
    pub fn output<T: Serialize>(value: &T, step: &str) -> Result<String, Failure> {
        serde_json::to_string(value).map_err(|e| {
            (
                format!("step `{step}`: its output cannot be serialized: {e}"),
                false,
            )
        })
    }
}

/// Which queues a runtime serves in-process.
#[derive(Clone, Debug, Default)]
pub(crate) enum Serve {
    /// Every queue of a queued step compiled into this binary.
    #[default]
    All,
    /// These queues only.
    Only(Vec<String>),
    /// None.
    Nothing,
}

/// How long a task is leased to this process at a time (renewed while it runs), when the
/// runtime's leases never end (the test runtime); else the runtime's lease time-to-live.
const LEASE: Duration = Duration::from_secs(30);
/// How many tasks this process runs at once.
const CONCURRENCY: usize = 64;
/// A look at the queues even when no wake-up came (e.g. one lost with a broken connection).
const SAFETY_POLL: Duration = Duration::from_secs(30);

/// The steps this binary can serve on `serve`'s queues, by name.
fn servable(serve: &Serve) -> HashMap<&'static str, &'static QueuedStep> {
    inventory::iter::<QueuedStep>
        .into_iter()
        .filter(|s| match serve {
            Serve::All => true,
            Serve::Only(queues) => queues.iter().any(|q| q == s.queue),
            Serve::Nothing => false,
        })
        .map(|s| (s.name, s))
        .collect()
}

/// Waits until a wake-up says a task of `queues` may be leasable: one was enqueued there, or
/// the store changed in a way this process did not see. `false`: the store is gone. (The
/// in-process worker and the HTTP long-poll both wait with it.)
pub(crate) async fn queue_stirred(wakeups: &mut crate::store::Wakeups, queues: &[String]) -> bool {
    loop {
        match wakeups.recv().await {
            Some(Wakeup::TaskQueued { queue }) if queues.contains(&queue) => return true,
            Some(Wakeup::Changed) => return true,
            Some(_) => {}
            None => return false,
        }
    }
}

/// Starts serving in a task of its own (none when there is nothing to serve).
pub(crate) fn spawn(
    store: Arc<dyn Backend>,
    clock: Clock,
    worker: String,
    serve: &Serve,
    lease: Option<Duration>,
) -> Option<tokio::task::AbortHandle> {
    let steps = servable(serve);
    if steps.is_empty() {
        return None;
    }
    let mut queues: Vec<String> = steps.values().map(|s| s.queue.to_string()).collect();
    queues.sort();
    queues.dedup();
    tracing::debug!(worker = %worker, ?queues, "serving queued steps in-process");
    let lease = lease.unwrap_or(LEASE).max(Duration::from_millis(30));
    let task = tokio::spawn(serve_loop(
        store,
        clock,
        worker,
        queues,
        Arc::new(steps),
        lease,
    ));
    Some(task.abort_handle())
}

async fn serve_loop(
    store: Arc<dyn Backend>,
    clock: Clock,
    worker: String,
    queues: Vec<String>,
    steps: Arc<HashMap<&'static str, &'static QueuedStep>>,
    lease: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut wakeups = store.wakeups();
    loop {
        let room = slots.available_permits();
        let mut next_expiry = None;
        if room > 0 {
            let terms = WorkerTerms {
                worker: worker.clone(),
                now: clock.now_ms(),
                ttl: lease.as_millis() as i64,
            };
            match store.lease_tasks(terms, queues.clone(), room).await {
                Ok(leased) => {
                    next_expiry = leased.next_expiry;
                    let got = !leased.tasks.is_empty();
                    for task in leased.tasks {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let (store, clock, worker, steps) =
                            (store.clone(), clock, worker.clone(), steps.clone());
                        tokio::spawn(async move {
                            run_task(&*store, &clock, &worker, &steps, task, lease).await;
                            drop(permit);
                        });
                    }
                    if got {
                        // There may be more.
                        continue;
                    }
                }
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "leasing queued steps failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // Wait for a task on one of the queues, a lease that ends, or a free slot.
        let until = next_expiry
            .map(|at| Duration::from_millis((at - clock.now_ms()).max(0) as u64))
            .unwrap_or(SAFETY_POLL)
            .min(SAFETY_POLL);
        let wait = queue_stirred(&mut wakeups, &queues);
        let free = async {
            if room == 0 {
                let _ = slots.acquire().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            open = wait => if !open { return },
            _ = tokio::time::sleep(until) => {}
            _ = free => {}
        }
    }
}

/// Runs one leased task to its end on the store, renewing its lease meanwhile; a lease lost on
/// the way stops the body (another worker has the task now).
async fn run_task(
    store: &dyn Backend,
    clock: &Clock,
    worker: &str,
    steps: &HashMap<&'static str, &'static QueuedStep>,
    leased: TaskLease,
    lease: Duration,
) {
    let task = &leased.task;
    let holder = StoreLease {
        store,
        clock,
        worker,
        id: &task.id,
        token: leased.token,
        lease,
    };
    let job = Job {
        step: &task.step,
        queue: &task.queue,
        instance: &task.instance,
        seq: task.seq,
        attempt: task.attempt,
        input: task.input.clone(),
    };
    run_leased(steps, job, lease, &holder).await;
}

/// A task's lease held in this process's store.
struct StoreLease<'a> {
    store: &'a dyn Backend,
    clock: &'a Clock,
    worker: &'a str,
    id: &'a str,
    token: u64,
    lease: Duration,
}

impl LeaseHolder for StoreLease<'_> {
    fn renew(&self) -> BoxFuture<'_, Renewed> {
        Box::pin(async move {
            let terms = WorkerTerms {
                worker: self.worker.to_string(),
                now: self.clock.now_ms(),
                ttl: self.lease.as_millis() as i64,
            };
            match self.store.heartbeat_task(self.id, self.token, terms).await {
                Ok(_) => Renewed::Yes,
                Err(e) => Renewed::Lost(e.to_string()),
            }
        })
    }

    fn finish(&self, result: TaskResult) -> BoxFuture<'_, Ended> {
        Box::pin(async move {
            match self
                .store
                .finish_task(self.id, self.token, result, self.clock.now_ms())
                .await
            {
                Ok(()) => Ended::Done,
                Err(e) => Ended::Lost(e.to_string()),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Running a leased task: shared by the in-process worker and the HTTP worker client.

/// One leased task as a worker runs it.
pub(crate) struct Job<'a> {
    /// The step's name.
    pub(crate) step: &'a str,
    /// Its queue.
    pub(crate) queue: &'a str,
    /// The instance whose step it runs.
    pub(crate) instance: &'a str,
    /// The step's seq in the instance's journal.
    pub(crate) seq: u32,
    /// 1-based attempt.
    pub(crate) attempt: u32,
    /// The arguments: a JSON object keyed by parameter name.
    pub(crate) input: String,
}

/// What renewing a lease came to.
#[cfg_attr(not(feature = "worker"), allow(dead_code))]
pub(crate) enum Renewed {
    /// The lease is extended.
    Yes,
    /// The lease is gone (another worker may have the task, or the instance stopped waiting).
    Lost(String),
    /// No answer (the server is unreachable): the lease may still be held until it ends.
    Unsure(String),
}

/// How a task ended for its worker.
pub(crate) enum Ended {
    /// The end was stored.
    Done,
    /// The end was refused: the lease was gone.
    Lost(String),
}

/// What ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "worker"), allow(dead_code))]
pub(crate) enum Outcome {
    /// The body returned and its end was stored as completed.
    Completed,
    /// The body failed (or panicked, or this binary has no such step) and the failure was
    /// stored.
    Failed,
    /// The lease was lost: the body was stopped or its end refused.
    Lost,
}

/// Whoever granted a task's lease: the store (in-process) or the server (HTTP).
pub(crate) trait LeaseHolder: Sync {
    /// Extends the lease by the lease time from now.
    fn renew(&self) -> BoxFuture<'_, Renewed>;
    /// Stores the task's end.
    fn finish(&self, result: TaskResult) -> BoxFuture<'_, Ended>;
}

/// Runs `job` with its step's body from `steps`, renewing the lease through `holder` every
/// third of `lease`, and stores its end. A lease lost on the way stops the body (another
/// worker has the task now); so does a lease that may have ended because no renewal got an
/// answer for `lease`. A step this binary lacks fails the task as retryable (another worker
/// may have it); a panic fails it as retryable with the panic's message.
pub(crate) async fn run_leased(
    steps: &HashMap<&'static str, &'static QueuedStep>,
    job: Job<'_>,
    lease: Duration,
    holder: &dyn LeaseHolder,
) -> Outcome {
    let Some(step) = steps.get(job.step) else {
        let result = TaskResult::Failed {
            message: format!(
                "this worker has no step `{}` for queue `{}`",
                job.step, job.queue
            ),
            retryable: true,
        };
        return match holder.finish(result).await {
            Ended::Done => Outcome::Failed,
            Ended::Lost(_) => Outcome::Lost,
        };
    };
    let info = Arc::new(StepInfo {
        instance: job.instance.to_string(),
        seq: job.seq,
        name: step.name,
        attempt: job.attempt,
    });
    let body = context::in_scope(
        Scope::Step(info),
        AssertUnwindSafe((step.run)(job.input)).catch_unwind(),
    );
    tokio::pin!(body);
    // The first renewal a third of the lease from now. (Not `interval` and a first tick:
    // that tick waits for the timer wheel's next millisecond, a delay on every task.)
    let every = lease / 3;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut renewed_at = tokio::time::Instant::now();
    let outcome = loop {
        tokio::select! {
            done = &mut body => break done,
            _ = beat.tick() => match holder.renew().await {
                Renewed::Yes => renewed_at = tokio::time::Instant::now(),
                Renewed::Lost(why) => {
                    tracing::warn!(step = step.name, instance = job.instance, seq = job.seq,
                        error = %why, "stopped a queued step: its lease is lost");
                    return Outcome::Lost;
                }
                Renewed::Unsure(why) if renewed_at.elapsed() >= lease => {
                    tracing::warn!(step = step.name, instance = job.instance, seq = job.seq,
                        error = %why, "stopped a queued step: its lease may have ended \
                        (no renewal got an answer for the lease time)");
                    return Outcome::Lost;
                }
                Renewed::Unsure(why) => {
                    tracing::debug!(error = %why, "a lease renewal got no answer; trying again");
                }
            },
        }
    };
    let (result, ok) = match outcome {
        Ok(Ok(output)) => (TaskResult::Completed { output }, Outcome::Completed),
        Ok(Err((message, retryable))) => {
            (TaskResult::Failed { message, retryable }, Outcome::Failed)
        }
        Err(panic) => (
            TaskResult::Failed {
                message: format!("step `{}` panicked: {}", step.name, panic_text(&*panic)),
                retryable: true,
            },
            Outcome::Failed,
        ),
    };
    match holder.finish(result).await {
        Ended::Done => ok,
        Ended::Lost(why) => {
            tracing::warn!(step = step.name, instance = job.instance, seq = job.seq,
                error = %why, "a queued step's end was refused");
            Outcome::Lost
        }
    }
}
