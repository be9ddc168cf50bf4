//! Serving queued steps: a step declared `#[step(queue = "…")]` runs each attempt as a task
//! on that queue (see [`crate::store::task`]), and any worker that has the step's body may
//! serve it. A runtime serves the queues of every queued step compiled into its binary unless
//! told otherwise ([`RuntimeBuilder::no_workers`](crate::RuntimeBuilder::no_workers),
//! [`serve_queues`](crate::RuntimeBuilder::serve_queues)); workers in other processes and
//! languages use the HTTP worker protocol.

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

/// Runs one leased task to its end, renewing its lease meanwhile; a lease lost on the way
/// stops the body (another worker has the task now).
async fn run_task(
    store: &dyn Backend,
    clock: &Clock,
    worker: &str,
    steps: &HashMap<&'static str, &'static QueuedStep>,
    leased: TaskLease,
    lease: Duration,
) {
    let task = &leased.task;
    let Some(step) = steps.get(task.step.as_str()) else {
        let result = TaskResult::Failed {
            message: format!(
                "this worker has no step `{}` for queue `{}`",
                task.step, task.queue
            ),
            retryable: true,
        };
        let _ = store
            .finish_task(&task.id, leased.token, result, clock.now_ms())
            .await;
        return;
    };
    let info = Arc::new(StepInfo {
        instance: task.instance.clone(),
        seq: task.seq,
        name: step.name,
        attempt: task.attempt,
    });
    let body = context::in_scope(
        Scope::Step(info),
        AssertUnwindSafe((step.run)(task.input.clone())).catch_unwind(),
    );
    tokio::pin!(body);
    let mut beat = tokio::time::interval(lease / 3);
    beat.tick().await;
    let outcome = loop {
        tokio::select! {
            done = &mut body => break done,
            _ = beat.tick() => {
                let terms = WorkerTerms {
                    worker: worker.to_string(),
                    now: clock.now_ms(),
                    ttl: lease.as_millis() as i64,
                };
                if let Err(e) = store.heartbeat_task(&task.id, leased.token, terms).await {
                    tracing::warn!(task = %task.id, error = %e, "stopped a queued step: its lease is lost");
                    return;
                }
            }
        }
    };
    let result = match outcome {
        Ok(Ok(output)) => TaskResult::Completed { output },
        Ok(Err((message, retryable))) => TaskResult::Failed { message, retryable },
        Err(panic) => TaskResult::Failed {
            message: format!("step `{}` panicked: {}", step.name, panic_text(&*panic)),
            retryable: true,
        },
    };
    if let Err(e) = store
        .finish_task(&task.id, leased.token, result, clock.now_ms())
        .await
    {
        tracing::warn!(task = %task.id, error = %e, "a queued step's end was refused");
    }
}
