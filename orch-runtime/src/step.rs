//! Executing `#[step]` calls: replay, attempts, retries, timeouts, panics, checkpoints.

use crate::context::{self, Halt, Scope, StepInfo, WorkflowCtx};
use crate::journal::{self, EntryKind, JournalEntry, StepOutcome};
use crate::replay::{Fresh, Slot};
use crate::retry::{Retry, StepError};
use crate::store::{AttemptRecord, WriteOp};
use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

/// Options of one step, from the `#[step(...)]` attribute.
#[derive(Clone, Debug, Default)]
pub struct StepOptions {
    /// Retry policy.
    pub retry: Retry,
    /// Limit on each attempt.
    pub timeout: Option<Duration>,
}

/// How a step's attempts run: its body here, or a task on a queue that a worker serves.
pub(crate) enum How {
    /// Each attempt runs the body here.
    Local,
    /// Each attempt is a task on `queue` (unless a test double takes it); `input` is the
    /// arguments as one JSON object (or why they could not be serialized).
    Queued {
        queue: &'static str,
        input: Result<String, String>,
    },
}

/// What one attempt came to.
enum Tried<R> {
    /// The step returned (a value or its own error value, judged by the policy).
    Value(R),
    /// It panicked, timed out, or its worker failed it.
    Failed { message: String, retryable: bool },
    /// The workflow's cancellation reached a queued step waiting for its task: these writes
    /// (the delivery, the task's cancellation) go with the step's cancelled outcome.
    Cancelled(Vec<WriteOp>),
}

/// A step call as decided when the call expression is evaluated.
pub struct StepCall(Call);

pub(crate) enum Call {
    /// Outside a workflow: run the body once, plainly.
    Plain,
    /// Inside a workflow, not yet journaled: execute and checkpoint.
    Fresh {
        /// The call.
        call: Fresh,
        /// Step name.
        name: &'static str,
    },
    /// Inside a workflow and already journaled: return the recorded outcome.
    Replay {
        /// The instance.
        ctx: Arc<WorkflowCtx>,
        /// The recorded entry.
        entry: JournalEntry,
    },
    /// The instance is halting: never complete.
    Halted,
}

impl StepCall {
    /// The test runtime's mock for the step with this type id (fresh calls only).
    pub(crate) fn mock(
        &self,
        step: std::any::TypeId,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        match &self.0 {
            Call::Fresh { call, .. } => call.ctx().engine.mock(step),
            _ => None,
        }
    }
}

/// Reserves the step's seq (or decides it is a plain call).
pub fn begin(name: &'static str) -> StepCall {
    StepCall(match context::current() {
        // A step called from inside another step is part of that step's work.
        None | Some(Scope::Step(_)) => Call::Plain,
        // The outcome's type is known when the call runs: replay decodes it there.
        Some(Scope::Workflow(ctx)) => {
            match ctx.replay_or_execute(EntryKind::Step, name, |_, e| Ok(e)) {
                Slot::Execute(call) => Call::Fresh { call, name },
                Slot::Replay(entry) => Call::Replay { ctx, entry },
                Slot::Halt(_) => Call::Halted,
            }
        }
    })
}

/// How the generated code classifies a step's own error values.
pub struct ErrorPolicy<R> {
    /// `Some((message, retryable))` when `R` is an error value.
    pub judge: fn(&R) -> Option<(String, bool)>,
    /// Turns a panic or timeout into an `R`, when the error type can hold one.
    pub rescue: fn(StepError) -> Option<R>,
}

/// Runs a step call to its outcome. `make` starts one attempt.
pub async fn run<R, F, Fut>(
    call: StepCall,
    options: StepOptions,
    make: F,
    policy: ErrorPolicy<R>,
) -> R
where
    R: Serialize + DeserializeOwned,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    match call.0 {
        Call::Plain => {
            let mut make = make;
            make().await
        }
        Call::Halted => std::future::pending().await,
        Call::Replay { ctx, entry } => replayed(&ctx, &entry, &policy).await,
        Call::Fresh { call, name } => {
            let mut make = make;
            execute(call, name, options, How::Local, || Some(make()), policy).await
        }
    }
}

/// Runs a call of a step bound to `queue` to its outcome: each attempt is a task a worker
/// runs (see [`crate::store::task`]); `input` is the arguments as one JSON object. Replay,
/// retries, timeouts, cancellation and the journal are those of a local step. `double` is the
/// test runtime's double for one attempt, when it takes that attempt (it runs here then).
pub async fn run_queued<R, D, Fut>(
    call: StepCall,
    options: StepOptions,
    queue: &'static str,
    input: Result<String, String>,
    local: impl AsyncFnOnce() -> R,
    double: D,
    policy: ErrorPolicy<R>,
) -> R
where
    R: Serialize + DeserializeOwned,
    D: FnMut() -> Option<Fut>,
    Fut: Future<Output = R>,
{
    match call.0 {
        // Outside a workflow (a plain call, a step inside a step) the body runs here.
        Call::Plain => local().await,
        Call::Halted => std::future::pending().await,
        Call::Replay { ctx, entry } => replayed(&ctx, &entry, &policy).await,
        Call::Fresh { call, name } => {
            let how = How::Queued { queue, input };
            execute(call, name, options, how, double, policy).await
        }
    }
}

/// A journaled call's recorded outcome; an error value marks the step failed (for retry).
async fn replayed<R: DeserializeOwned>(
    ctx: &WorkflowCtx,
    entry: &JournalEntry,
    policy: &ErrorPolicy<R>,
) -> R {
    let value = replay(ctx, entry).await;
    if (policy.judge)(&value).is_some() {
        ctx.note_failed_step(&entry.name, entry.seq);
    }
    value
}

/// Never returns: parks the operation after a halt (the engine stops polling the instance),
/// or unwinds a background task whose failure must not reach the workflow.
async fn stop<R>(ctx: &WorkflowCtx, halt: Halt) -> R {
    if context::in_background() && matches!(halt, Halt::Failed(_)) {
        std::panic::resume_unwind(Box::new(BackgroundFailed));
    }
    ctx.halt(halt);
    std::future::pending().await
}

/// Panic payload that ends a failed background step quietly.
pub(crate) struct BackgroundFailed;

async fn replay<R: DeserializeOwned>(ctx: &WorkflowCtx, entry: &JournalEntry) -> R {
    match entry.value::<StepOutcome<R>>() {
        Ok(StepOutcome::Value(value)) => value,
        Ok(StepOutcome::Failed(message)) => {
            ctx.note_failed_step(&entry.name, entry.seq);
            stop(ctx, Halt::Failed(message)).await
        }
        Err(detail) => {
            let msg = format!(
                "at seq {} the recorded output of step `{}` does not deserialize into the step's \
                 current output type ({detail}); {}",
                entry.seq,
                entry.name,
                ctx.mismatch_advice()
            );
            stop(
                ctx,
                Halt::Incompatible {
                    seq: entry.seq,
                    message: msg,
                },
            )
            .await
        }
    }
}

async fn execute<R, F, Fut>(
    mut call: Fresh,
    name: &'static str,
    options: StepOptions,
    how: How,
    mut make: F,
    policy: ErrorPolicy<R>,
) -> R
where
    R: Serialize + DeserializeOwned,
    F: FnMut() -> Option<Fut>,
    Fut: Future<Output = R>,
{
    let ctx = &call.ctx().clone();
    let seq = call.seq;
    let _busy = ctx.inflight();
    // Values replay cannot reproduce (now, random, uuid) must be durable before a side
    // effect may depend on them.
    for commit in ctx.take_values() {
        if let Err(e) = commit.await {
            return stop(ctx, Halt::Store(e)).await;
        }
    }
    let started = ctx.now_ms();
    let max = options.retry.attempts();
    let mut attempt = ctx.failed_attempts(seq) + 1;
    call.started_at = Some(started);
    if let Some(delivered) = ctx.receive_cancel(seq) {
        call.attempts = attempt - 1;
        let mut ops = vec![delivered];
        if let How::Queued { .. } = how {
            // Its task may wait in the queue (enqueued before a restart or an unload): no
            // worker may run it now.
            let task = crate::store::task::task_id(&ctx.id, ctx.retries, seq, attempt);
            ops.push(cancel_task(ctx, task));
        }
        return cancelled(&call, name, ops, &policy).await;
    }
    let (result, last_failure) = loop {
        let attempt_start = ctx.now_ms();
        let info = Arc::new(StepInfo {
            instance: ctx.id.clone(),
            seq,
            name,
            attempt,
        });
        ctx.engine.count_call(name);
        let tried = match (make(), &how) {
            (Some(attempt_body), _) => {
                let body = context::in_scope(
                    Scope::Step(info),
                    AssertUnwindSafe(attempt_body).catch_unwind(),
                );
                let outcome = match options.timeout {
                    Some(limit) => tokio::time::timeout(limit, body).await.map_err(|_| limit),
                    None => Ok(body.await),
                };
                match outcome {
                    Ok(Ok(value)) => Tried::Value(value),
                    Ok(Err(panic)) => Tried::Failed {
                        message: format!(
                            "step `{name}` panicked: {}",
                            crate::engine::panic_text(&*panic)
                        ),
                        retryable: true,
                    },
                    Err(limit) => Tried::Failed {
                        message: format!(
                            "step `{name}` timed out after {limit:?} (attempt {attempt})"
                        ),
                        retryable: true,
                    },
                }
            }
            (None, How::Queued { queue, input }) => match input {
                Ok(input) => {
                    let task = queued_attempt(ctx, seq, name, queue, input, attempt, &options);
                    match task.await {
                        Ok(tried) => tried,
                        Err(halt) => return stop(ctx, halt).await,
                    }
                }
                Err(e) => Tried::Failed {
                    message: format!(
                        "step `{name}`: its arguments cannot be sent to a worker as JSON ({e})"
                    ),
                    retryable: false,
                },
            },
            // A local step always has a body to run.
            (None, How::Local) => Tried::Failed {
                message: format!("step `{name}` has no body to run"),
                retryable: false,
            },
        };
        let (message, retryable, value) = match tried {
            Tried::Value(value) => match (policy.judge)(&value) {
                None => break (Ok(value), None),
                Some((message, retryable)) => (message, retryable, Some(value)),
            },
            Tried::Failed { message, retryable } => (message, retryable, None),
            Tried::Cancelled(ops) => {
                call.attempts = attempt;
                return cancelled(&call, name, ops, &policy).await;
            }
        };
        let record = AttemptRecord {
            seq,
            attempt,
            error: message.clone(),
            started_at: attempt_start,
            finished_at: ctx.now_ms(),
        };
        tracing::debug!(instance = %ctx.id, seq, step = name, attempt, error = %message, "step attempt failed");
        if !retryable || attempt >= max {
            let result = match value {
                Some(v) => Ok(v),
                None => match (policy.rescue)(if retryable {
                    StepError::retryable(&message)
                } else {
                    StepError::permanent(&message)
                }) {
                    Some(v) => Ok(v),
                    None => Err(format!(
                        "{message}; gave up after {attempt} attempt(s), and the step's error type \
                         cannot hold this failure (implement From<orch_runtime::StepError> for it \
                         to handle panics and timeouts in the workflow)"
                    )),
                },
            };
            break (result, Some(record));
        }
        // Durable before the next attempt, so a crash cannot reset the attempt count.
        let commit = ctx.submit(vec![WriteOp::Attempt {
            instance: ctx.id.clone(),
            record,
        }]);
        if let Err(e) = commit.await {
            return stop(ctx, Halt::Store(e)).await;
        }
        let delay = match ctx.seed(seq ^ attempt.rotate_left(16)) {
            // Reproducible jitter in the test runtime.
            Some(seed) => options
                .retry
                .delay_with(attempt, (seed >> 11) as f64 / (1u64 << 53) as f64),
            None => options.retry.delay_after(attempt),
        };
        // Cancellation ends the back-off: the step stops retrying and receives it.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.cancelled() => {}
        }
        if let Some(delivered) = ctx.receive_cancel(seq) {
            call.attempts = attempt;
            return cancelled(&call, name, vec![delivered], &policy).await;
        }
        attempt += 1;
    };
    let outcome = match &result {
        Ok(value) => journal::encode(&StepOutcome::Value(value)),
        Err(message) => journal::encode(&StepOutcome::<()>::Failed(message.clone())),
    };
    call.attempts = attempt;
    // The final attempt failed: its error (a value, a rescued panic or an unrecoverable
    // failure) is the step's outcome.
    let failed = last_failure.is_some();
    let extra = last_failure
        .map(|record| WriteOp::Attempt {
            instance: ctx.id.clone(),
            record,
        })
        .into_iter()
        .collect();
    let finished = match call.checkpoint(outcome, extra).await {
        Ok(finished) => finished,
        Err(halt) => return stop(ctx, halt).await,
    };
    ctx.engine.metrics.step(
        ctx.workflow,
        name,
        (finished - started).max(0) as f64 / 1000.0,
        attempt - 1,
    );
    if failed {
        ctx.note_failed_step(name, seq);
    }
    match result {
        Ok(value) => value,
        Err(message) => stop(ctx, Halt::Failed(message)).await,
    }
}

/// The step receives the workflow's cancellation instead of running (again): its outcome is
/// the cancellation error, journaled (with `delivered`) like any outcome so replay returns it.
async fn cancelled<R: Serialize>(
    call: &Fresh,
    name: &'static str,
    delivered: Vec<WriteOp>,
    policy: &ErrorPolicy<R>,
) -> R {
    let (ctx, seq) = (call.ctx(), call.seq);
    let message = format!("step `{name}` was cancelled: the workflow's cancellation was requested");
    let Some(value) = (policy.rescue)(StepError::cancelled(&message)) else {
        let msg = format!(
            "{message}, and the step's error type cannot hold a cancellation (implement \
             From<orch_runtime::StepError> for it to run compensation code)"
        );
        return stop(ctx, Halt::Cancelled(msg)).await;
    };
    let outcome = match journal::encode(&StepOutcome::Value(&value)) {
        Ok(o) => o,
        Err(e) => {
            let msg = format!("step `{name}` (seq {seq}): cannot serialize its cancellation: {e}");
            return stop(ctx, Halt::Failed(msg)).await;
        }
    };
    if let Err(halt) = call.checkpoint(Ok(outcome), delivered).await {
        return stop(ctx, halt).await;
    }
    ctx.note_failed_step(name, seq);
    value
}

/// How often a queued step reads its task again when no wake-up came.
const TASK_RECHECK: Duration = Duration::from_secs(30);

/// One attempt of a queued step: enqueues its task (with the instance's fence; enqueueing again
/// after a restart changes nothing), then waits until a worker ended it (or the attempt's
/// timeout passed: the task is cancelled, so the worker's late end is refused).
async fn queued_attempt<R: DeserializeOwned>(
    ctx: &Arc<WorkflowCtx>,
    seq: u32,
    name: &'static str,
    queue: &'static str,
    input: &str,
    attempt: u32,
    options: &StepOptions,
) -> Result<Tried<R>, Halt> {
    use crate::store::task::{NewTask, TaskState, task_id};
    let id = task_id(&ctx.id, ctx.retries, seq, attempt);
    let now = ctx.now_ms();
    let deadline = options
        .timeout
        .map(|t| now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
    let task = NewTask {
        id: id.clone(),
        queue: queue.to_string(),
        instance: ctx.id.clone(),
        seq,
        attempt,
        step: name.to_string(),
        input: input.to_string(),
        idempotency_key: format!("{}/{}", ctx.id, seq),
        priority: 0,
        created_at: now,
        deadline,
    };
    let enqueue = WriteOp::EnqueueTask {
        instance: ctx.id.clone(),
        task: Box::new(task),
    };
    ctx.submit(vec![enqueue]).await.map_err(Halt::Store)?;
    // A wait longer than the engine keeps instances loaded for (`unload_task_waits_after`) parks the step: the instance
    // may then be unloaded, and the task's end (or its deadline) loads it again, when this
    // attempt finds the task ended. Background steps run outside the instance's own future
    // and stay loaded.
    let waiting_since = ctx.now_ms();
    let may_park = !context::in_background();
    let mut parked = None;
    // Cleared once a cancellation went to another operation (it stays requested).
    let mut watch_cancel = true;
    let mut cancel_fired = false;
    loop {
        let ended = ctx.task_ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let record = ctx
            .engine
            .store
            .task(&id)
            .await
            .map_err(Halt::Store)?
            .ok_or_else(|| {
                Halt::Store(crate::store::StoreError::Backend(format!(
                    "task `{id}` of step `{name}` vanished from the store"
                )))
            })?;
        match record.state {
            TaskState::Pending | TaskState::Leased => {}
            TaskState::Completed => {
                let output = record.output.unwrap_or_default();
                return Ok(decode_output(name, &output));
            }
            TaskState::Failed => {
                return Ok(Tried::Failed {
                    message: record
                        .error
                        .unwrap_or_else(|| format!("step `{name}` failed in its worker")),
                    retryable: record.retryable,
                });
            }
            TaskState::Cancelled => {
                return Ok(Tried::Failed {
                    message: format!(
                        "the task of step `{name}` (attempt {attempt}) was cancelled: {}",
                        record.error.unwrap_or_default()
                    ),
                    retryable: true,
                });
            }
        }
        // Still waiting. The deadline is the stored task's: the attempt's timeout counts
        // from its first enqueue, across unloads and restarts.
        let now = ctx.now_ms();
        let ms = |d: i64| Duration::from_millis(d.max(0) as u64);
        let mut until = TASK_RECHECK;
        if let Some(deadline) = record.task.deadline {
            if now >= deadline {
                drop(parked);
                let cancel = cancel_task(ctx, id.clone());
                ctx.submit(vec![cancel]).await.map_err(Halt::Store)?;
                let limit = options
                    .timeout
                    .map(|t| format!(" after {t:?}"))
                    .unwrap_or_default();
                return Ok(Tried::Failed {
                    message: format!(
                        "step `{name}` timed out{limit} (attempt {attempt}) waiting for a \
                         worker of queue `{queue}`"
                    ),
                    retryable: true,
                });
            }
            until = until.min(ms(deadline - now));
        }
        if parked.is_none() && may_park {
            let waited = ms(now - waiting_since);
            match ctx.engine.keep_loaded.task_waits.checked_sub(waited) {
                Some(left) if !left.is_zero() => until = until.min(left),
                _ => parked = Some(ctx.park(seq)),
            }
        }
        // The workflow's cancellation ends the wait: the task is cancelled (a worker's late
        // end is refused) and the step receives the cancellation.
        if let Some(delivered) = ctx.receive_cancel(seq) {
            drop(parked);
            return Ok(Tried::Cancelled(vec![
                delivered,
                cancel_task(ctx, id.clone()),
            ]));
        }
        if cancel_fired {
            watch_cancel = false;
        }
        // Wake-ups are hints: look again now and then even if none comes.
        let mut alarm = Box::pin(tokio::time::sleep(until));
        let mut cancel = Box::pin(ctx.cancelled());
        std::future::poll_fn(|cx| {
            if parked.is_some() {
                // Registered before looking (see `WorkflowCtx::wait`).
                ctx.wait(seq, record.task.deadline, cx.waker());
            }
            if watch_cancel && cancel.as_mut().poll(cx).is_ready() {
                cancel_fired = true;
                return std::task::Poll::Ready(());
            }
            if ended.as_mut().poll(cx).is_ready() || alarm.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
            std::task::Poll::Pending
        })
        .await;
    }
}

/// Cancels task `task` of this instance (a late end of a worker is then refused).
fn cancel_task(ctx: &WorkflowCtx, task: String) -> WriteOp {
    WriteOp::CancelTask {
        instance: ctx.id.clone(),
        task,
        at: ctx.now_ms(),
    }
}

/// A worker's output as the step's return value: as `R` itself, or, for a step returning
/// `Result<T, E>`, as the `T` of `Ok` (what a worker in another language sends).
fn decode_output<R: DeserializeOwned>(name: &str, output: &str) -> Tried<R> {
    match serde_json::from_str::<R>(output) {
        Ok(v) => Tried::Value(v),
        Err(first) => match serde_json::from_str::<R>(&format!("{{\"Ok\":{output}}}")) {
            Ok(v) => Tried::Value(v),
            Err(_) => Tried::Failed {
                message: format!(
                    "the worker's output for step `{name}` does not deserialize into the \
                     step's return type ({first}); fix the worker"
                ),
                retryable: false,
            },
        },
    }
}
