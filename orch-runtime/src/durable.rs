//! Durable primitives for workflow bodies: timers, time, randomness, signals, custom status,
//! background work and child workflows.
//!
//! Each call is journaled when it is *made* (not when first polled) and replayed on resume.
//! Outside a running workflow they behave as plain calls (a timer is a plain timer, `now` reads
//! the clock) so a workflow can be called and unit-tested as an ordinary async function.
//! Inside a step body they are a mistake and panic with a message saying so; the panic is
//! recorded as a failed attempt of that step.

use crate::context::{self, Halt, Scope, StepInfo, Wait, WorkflowCtx};
use crate::journal::{self, EntryKind, JournalEntry, SignalOutcome};
use crate::replay::{Durability, Slot, decode_as, decoded};
use crate::store::{Millis, WriteOp};
use crate::workflow::Workflow;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A durable operation in progress.
pub type Durable<T> = BoxFuture<'static, T>;

fn misuse(what: &str, step: &StepInfo) -> ! {
    panic!(
        "orch::{what} was called inside step `{}`: durable primitives work only in a #[workflow] \
         body (a step's work is journaled as one unit); move the call into the workflow",
        step.name
    )
}

fn parked<T: Send + 'static>() -> Durable<T> {
    Box::pin(std::future::pending())
}

/// A call that must never complete: halts the instance with `halt`, if the call found why.
fn halted<T: Send + 'static>(ctx: &WorkflowCtx, halt: Option<Halt>) -> Durable<T> {
    if let Some(halt) = halt {
        ctx.halt(halt);
    }
    parked()
}

/// Records (or replays) a value produced once: `now`, `random`, `uuid`. `make` gets the
/// context and seq (none outside a workflow).
fn recorded<T>(kind: EntryKind, make: impl FnOnce(Option<(&WorkflowCtx, u32)>) -> T) -> Durable<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    match context::current() {
        None => Box::pin(std::future::ready(make(None))),
        Some(Scope::Step(step)) => misuse(kind.as_str(), &step),
        Some(Scope::Workflow(ctx)) => {
            // Replay could not reproduce this value: the next step waits until it is durable.
            let value =
                ctx.replay_or_record(kind, "", Durability::BeforeNextStep, decoded, |call| {
                    let value = make(Some((call.ctx(), call.seq)));
                    let outcome = journal::encode(&value);
                    Ok((value, outcome, Vec::new()))
                });
            match value {
                Ok(v) => Box::pin(std::future::ready(v)),
                Err(halt) => halted(&ctx, halt),
            }
        }
    }
}

/// A duration in milliseconds, saturating (a `Duration::MAX` sleep never fires).
fn span(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

fn system_time(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn millis(t: SystemTime) -> Millis {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The current time, recorded: replay returns the same instant.
pub fn now() -> Durable<SystemTime> {
    let f = recorded(EntryKind::Now, |ctx| match ctx {
        Some((ctx, _)) => ctx.now_ms(),
        None => millis(SystemTime::now()),
    });
    Box::pin(f.map(system_time))
}

/// A random number, recorded: replay returns the same number.
pub fn random() -> Durable<u64> {
    recorded(EntryKind::Random, |ctx| {
        ctx.and_then(|(ctx, seq)| ctx.seed(seq))
            .unwrap_or_else(|| fastrand::u64(..))
    })
}

/// A random UUID (v4), recorded: replay returns the same id.
pub fn uuid() -> Durable<uuid::Uuid> {
    recorded(EntryKind::Uuid, |ctx| {
        match ctx.and_then(|(ctx, seq)| ctx.seed(seq)) {
            Some(s) => uuid::Builder::from_random_bytes(
                (u128::from(s) << 64 | u128::from(s.rotate_left(29) ^ 0x5851_f42d_4c95_7f2d))
                    .to_le_bytes(),
            )
            .into_uuid(),
            None => uuid::Uuid::new_v4(),
        }
    })
}

/// A durable timer: survives restarts; a long wait unloads the instance from memory.
pub fn sleep(duration: Duration) -> Durable<()> {
    timer(Target::After(duration))
}

/// Waits until the wall-clock time `until` (durably, like [`sleep`]).
pub fn sleep_until(until: SystemTime) -> Durable<()> {
    timer(Target::At(until))
}

enum Target {
    After(Duration),
    At(SystemTime),
}

fn timer(target: Target) -> Durable<()> {
    match context::current() {
        None => Box::pin(async move {
            match target {
                Target::After(d) => tokio::time::sleep(d).await,
                Target::At(t) => {
                    let d = t.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(d).await
                }
            }
        }),
        Some(Scope::Step(step)) => misuse("sleep", &step),
        Some(Scope::Workflow(ctx)) => {
            let decode = |ctx: &WorkflowCtx, e: JournalEntry| Ok((e.seq, decode_as(ctx, &e)?));
            let timer =
                ctx.replay_or_record(EntryKind::Sleep, "", Durability::Later, decode, |call| {
                    let fire_at = match target {
                        Target::After(d) => call.ctx().now_ms().saturating_add(span(d)),
                        Target::At(t) => millis(t),
                    };
                    Ok(((call.seq, fire_at), journal::encode(&fire_at), Vec::new()))
                });
            match timer {
                Ok((seq, fire_at)) => Box::pin(wait_until(ctx, seq, fire_at)),
                Err(halt) => halted(&ctx, halt),
            }
        }
    }
}

/// Waits for `fire_at`. Short waits keep the instance loaded; long ones let it suspend.
/// Cancellation ends the wait early (the next step call receives the cancellation error).
async fn wait_until(ctx: Arc<WorkflowCtx>, seq: u32, fire_at: Millis) {
    let remaining = fire_at - ctx.now_ms();
    let ended_by_cancel = || ctx.cancel_ends_wait(seq, Wait::Timer);
    if remaining <= 0 || ended_by_cancel() {
        return;
    }
    let remaining = Duration::from_millis(remaining as u64);
    if remaining <= ctx.engine.keep_loaded.timers {
        let _busy = ctx.inflight();
        let alarm = tokio::time::sleep(remaining);
        tokio::pin!(alarm);
        tokio::select! {
            _ = &mut alarm => {}
            _ = ctx.cancelled() => {
                if !ended_by_cancel() {
                    // Handed over before this timer started: it runs its course.
                    alarm.await;
                }
            }
        }
        return;
    }
    let _waiting = ctx.waiter_guard(seq);
    let mut alarm = Box::pin(tokio::time::sleep(remaining));
    std::future::poll_fn(|cx| {
        // Registered before looking, so a cancellation that arrives in between still wakes
        // this call (see `WorkflowCtx::wait`).
        ctx.wait(seq, Some(fire_at), cx.waker());
        if alarm.as_mut().poll(cx).is_ready() || ctx.now_ms() >= fire_at || ended_by_cancel() {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await
}

/// Lets changed code keep old instances replaying: `if orch::patched("ship-first") { new }
/// else { old }`. New instances (and old ones past the point where they were when the change
/// was deployed) take the new branch; instances whose history was recorded before the change
/// replay the old branch. Remove the old branch once no such instance is left.
pub fn patched(id: &str) -> bool {
    match context::current() {
        None => true,
        Some(Scope::Step(step)) => misuse("patched", &step),
        Some(Scope::Workflow(ctx)) => ctx.patched(id),
    }
}

/// Sets the custom status shown for this instance ("where is my order?"), journaled.
/// At most [`MAX_CUSTOM_STATUS_BYTES`](crate::limits::MAX_CUSTOM_STATUS_BYTES) (64 KiB) of
/// JSON: a larger status ends the instance `failed` with an error naming the limit. Search
/// results show a status over 1 KiB as `null`; the instance itself keeps it whole.
pub fn set_status<T: Serialize>(status: T) -> Durable<()> {
    match context::current() {
        None => Box::pin(std::future::ready(())),
        Some(Scope::Step(step)) => misuse("set_status", &step),
        Some(Scope::Workflow(ctx)) => {
            let set =
                ctx.replay_or_record(EntryKind::Status, "", Durability::Later, unread, |call| {
                    let json = journal::encode(&status);
                    let Ok(text) = &json else {
                        // Recording halts: the value cannot be serialized.
                        return Ok(((), json, Vec::new()));
                    };
                    if text.len() > crate::limits::MAX_CUSTOM_STATUS_BYTES {
                        return Err(Halt::Failed(format!(
                            "orch::set_status: the status is {} bytes of JSON, over the limit \
                             of {} bytes; show a short summary and keep the data in a step's \
                             output",
                            text.len(),
                            crate::limits::MAX_CUSTOM_STATUS_BYTES
                        )));
                    }
                    let update = WriteOp::CustomStatus {
                        instance: call.ctx().id.clone(),
                        value: text.clone(),
                        at: call.ctx().now_ms(),
                    };
                    Ok(((), json, vec![update]))
                });
            done(&ctx, set)
        }
    }
}

/// Sets a searchable attribute of this instance (`items = 3`, `customer = "c-7"`), journaled:
/// the HTTP API and UI search instances by attribute values and aggregate numeric ones
/// ("total items ordered today"). Setting a key again replaces its value.
/// Keys are 1 to [`MAX_ATTR_KEY_BYTES`](crate::limits::MAX_ATTR_KEY_BYTES) bytes (not
/// starting with `orch.`), values at most
/// [`MAX_ATTR_VALUE_BYTES`](crate::limits::MAX_ATTR_VALUE_BYTES) bytes of JSON: otherwise the
/// instance ends `failed` with an error naming the limit.
pub fn set_attribute<T: Serialize>(key: &str, value: T) -> Durable<()> {
    match context::current() {
        None => Box::pin(std::future::ready(())),
        Some(Scope::Step(step)) => misuse("set_attribute", &step),
        Some(Scope::Workflow(ctx)) => {
            let set = ctx.replay_or_record(
                EntryKind::Attribute,
                key,
                Durability::Later,
                unread,
                |call| {
                    let json = journal::attribute_value(&value);
                    let Ok(text) = &json else {
                        return Ok(((), json, Vec::new()));
                    };
                    check_attribute(key, text)?;
                    let update = WriteOp::Attribute {
                        instance: call.ctx().id.clone(),
                        key: key.to_string(),
                        value: text.clone(),
                    };
                    Ok(((), json, vec![update]))
                },
            );
            done(&ctx, set)
        }
    }
}

/// Refuses a reserved key, or a key or value (`json`) over the limits.
fn check_attribute(key: &str, json: &str) -> Result<(), Halt> {
    if key.starts_with("orch.") {
        return Err(Halt::Failed(format!(
            "orch::set_attribute(\"{key}\"): keys starting with `orch.` are reserved for orch's \
             own attributes (e.g. orch.forked_from); choose another key"
        )));
    }
    if key.is_empty() || key.len() > crate::limits::MAX_ATTR_KEY_BYTES {
        return Err(Halt::Failed(format!(
            "orch::set_attribute: the key must be 1 to {} bytes, got {} bytes",
            crate::limits::MAX_ATTR_KEY_BYTES,
            key.len()
        )));
    }
    if json.len() > crate::limits::MAX_ATTR_VALUE_BYTES {
        return Err(Halt::Failed(format!(
            "orch::set_attribute(\"{key}\"): the value is {} bytes of JSON, over the {}-byte \
             limit for attributes; store a short value (an id, a number)",
            json.len(),
            crate::limits::MAX_ATTR_VALUE_BYTES
        )));
    }
    Ok(())
}

/// Replays a call whose outcome the code does not read (`set_status`, `set_attribute`).
fn unread(_: &WorkflowCtx, _: JournalEntry) -> Result<(), Halt> {
    Ok(())
}

/// A call that completes at once, unless it must never complete.
fn done(ctx: &WorkflowCtx, result: Result<(), Option<Halt>>) -> Durable<()> {
    match result {
        Ok(()) => Box::pin(std::future::ready(())),
        Err(halt) => halted(ctx, halt),
    }
}

/// Waits for the signal `name` (sent with `Runtime::signal`) and returns its payload.
/// Signals sent before the workflow waits are kept until it does.
pub fn signal<T: DeserializeOwned + Send + 'static>(name: &str) -> Durable<T> {
    let f = receive::<T>(name, None);
    Box::pin(async move {
        match f.await {
            Some(v) => v,
            None => std::future::pending().await,
        }
    })
}

/// Like [`signal`], but gives up after `timeout` and returns `None`.
pub fn signal_with_timeout<T: DeserializeOwned + Send + 'static>(
    name: &str,
    timeout: Duration,
) -> Durable<Option<T>> {
    receive(name, Some(timeout))
}

fn receive<T: DeserializeOwned + Send + 'static>(
    name: &str,
    timeout: Option<Duration>,
) -> Durable<Option<T>> {
    let ctx = match context::current() {
        None => panic!(
            "orch::signal(\"{name}\") needs a running workflow: start the workflow with a \
             Runtime to receive signals"
        ),
        Some(Scope::Step(step)) => misuse("signal", &step),
        Some(Scope::Workflow(ctx)) => ctx,
    };
    let deadline = match timeout {
        None => None,
        Some(d) => {
            let at = ctx.replay_or_record(
                EntryKind::Deadline,
                name,
                Durability::Later,
                decoded,
                |call| {
                    let at = call.ctx().now_ms().saturating_add(span(d));
                    Ok((at, journal::encode(&at), Vec::new()))
                },
            );
            match at {
                Ok(at) => Some(at),
                Err(halt) => return halted(&ctx, halt),
            }
        }
    };
    let decode = |ctx: &WorkflowCtx, e: JournalEntry| match decode_as(ctx, &e)? {
        SignalOutcome::TimedOut => Ok(None),
        SignalOutcome::Payload(v) => match serde_json::from_value::<T>(v) {
            Ok(v) => Ok(Some(v)),
            Err(err) => Err(Halt::Incompatible {
                seq: e.seq,
                message: format!(
                    "at seq {} the recorded payload of signal `{}` does not deserialize into \
                     the type the code now expects: {err}",
                    e.seq, e.name
                ),
            }),
        },
    };
    let mut call = match ctx.replay_or_execute(EntryKind::Signal, name, decode) {
        Slot::Replay(v) => return Box::pin(std::future::ready(v)),
        Slot::Halt(halt) => return halted(&ctx, halt),
        Slot::Execute(call) => call,
    };
    let seq = call.seq;
    let name = name.to_string();
    Box::pin(async move {
        let _waiting = ctx.waiter_guard(seq);
        let mut alarm = deadline.map(|at| {
            let left = (at - ctx.now_ms()).max(0) as u64;
            Box::pin(tokio::time::sleep(Duration::from_millis(left)))
        });
        // Payloads refused at this wait so far (journaled as its failed attempts).
        let mut refused = ctx.failed_attempts(seq);
        std::future::poll_fn(|cx| {
            // Registered before looking, so a signal delivered in between still wakes this
            // call (see `WorkflowCtx::wait`).
            ctx.wait(seq, deadline, cx.waker());
            while let Some(sig) = ctx.take_signal(&name) {
                let value = journal::signal_payload(&sig.payload);
                match crate::workflow::check_value::<T>(&value).and_then(|()| {
                    serde_json::from_value::<T>(value.clone()).map_err(|e| e.to_string())
                }) {
                    Ok(v) => {
                        let payload = journal::encode(&SignalOutcome::Payload(&value));
                        let consume = WriteOp::ConsumeSignal {
                            instance: ctx.id.clone(),
                            signal: sig.id,
                            seq,
                        };
                        // The refused payloads count as attempts before this one, so the
                        // journal shows them under the entry without marking it failed.
                        call.attempts = refused + 1;
                        if let Err(halt) = call.record(payload, vec![consume], Durability::Later) {
                            ctx.halt(halt);
                            return Poll::Pending;
                        }
                        return Poll::Ready(Some(v));
                    }
                    Err(err) => {
                        refused += 1;
                        let error = format!(
                            "signal `{name}` (id {}) was discarded: its payload {} does not fit \
                             the type the workflow waits for, `{}` ({err}); the workflow still \
                             waits for a signal `{name}` with a payload of that type",
                            sig.id,
                            shorten(&sig.payload, 200),
                            std::any::type_name::<T>(),
                        );
                        tracing::warn!(instance = %ctx.id, signal = %name, "{error}");
                        ctx.write_later(vec![
                            WriteOp::ConsumeSignal {
                                instance: ctx.id.clone(),
                                signal: sig.id,
                                seq: 0,
                            },
                            WriteOp::Attempt {
                                instance: ctx.id.clone(),
                                record: crate::store::AttemptRecord {
                                    seq,
                                    attempt: refused,
                                    error,
                                    started_at: sig.received_at,
                                    finished_at: ctx.now_ms(),
                                },
                            },
                        ]);
                    }
                }
            }
            // Cancelled while waiting: a wait with a timeout gives up as if it timed out (the
            // next step call receives the cancellation error); one without halts.
            let wait = Wait::Signal {
                name: &name,
                timeout: deadline.is_some(),
            };
            let cancelled = ctx.cancel_ends_wait(seq, wait);
            if let Some(at) = deadline {
                let fired = alarm
                    .as_mut()
                    .is_some_and(|a| a.as_mut().poll(cx).is_ready());
                if fired || ctx.now_ms() >= at || cancelled {
                    let timed_out = journal::encode(&SignalOutcome::<()>::TimedOut);
                    if let Err(halt) = call.record(timed_out, Vec::new(), Durability::Later) {
                        ctx.halt(halt);
                        return Poll::Pending;
                    }
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await
    })
}

/// Runs optional work (usually a step) beside the workflow: its outcome is journaled, its
/// failure never fails the workflow. The instance finishes once background work has settled.
pub fn background<F>(work: F)
where
    F: std::future::Future + Send + 'static,
{
    let quiet = async move {
        let _ = AssertUnwindSafe(work).catch_unwind().await;
    };
    match context::current() {
        // Replaying only (the replayer): background work never affects the workflow, and
        // nothing may run, so it is not started (its call took its seq already).
        Some(Scope::Workflow(ctx)) if ctx.engine.replay_only() => drop(quiet),
        Some(Scope::Workflow(ctx)) => {
            let busy = ctx.inflight_elsewhere();
            let scope = Scope::Workflow(ctx.clone());
            let task = tokio::spawn(context::in_scope(
                scope,
                context::as_background(async move {
                    quiet.await;
                    drop(busy);
                }),
            ));
            ctx.add_background(task);
        }
        Some(Scope::Step(step)) => misuse("background", &step),
        None => match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(quiet)),
            Err(_) => tracing::warn!("orch::background outside a tokio runtime: work dropped"),
        },
    }
}

/// The idempotency key of the running step (`instance/seq`): the same on every attempt and
/// after restarts, so services can deduplicate. Outside a durable step: a fresh random key.
pub fn idempotency_key() -> String {
    match context::current() {
        Some(Scope::Step(step)) => step.idempotency_key(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// The running durable step, if any.
pub fn current_step() -> Option<StepInfo> {
    match context::current() {
        Some(Scope::Step(step)) => Some((*step).clone()),
        _ => None,
    }
}

/// The instance id of the running workflow (or of the step's workflow), if any.
pub fn instance_id() -> Option<String> {
    match context::current() {
        Some(Scope::Step(step)) => Some(step.instance.clone()),
        Some(Scope::Workflow(ctx)) => Some(ctx.id.clone()),
        None => None,
    }
}

/// Calls workflow `W`: a child workflow inside a running workflow, a plain call elsewhere.
pub fn call_workflow<W: Workflow>(input: W::Input) -> Durable<W::Output> {
    let ctx = match context::current() {
        None | Some(Scope::Step(_)) => return W::run(input),
        Some(Scope::Workflow(ctx)) => ctx,
    };
    let mut call = match ctx.replay_or_execute(EntryKind::Child, W::NAME, decoded) {
        Slot::Replay(v) => return Box::pin(std::future::ready(v)),
        Slot::Halt(halt) => return halted(&ctx, halt),
        Slot::Execute(call) => call,
    };
    let seq = call.seq;
    let input = match serde_json::to_string(&input) {
        Ok(input) => input,
        Err(e) => {
            let msg = format!("{}: the value cannot be serialized: {e}", W::NAME);
            return halted(&ctx, Some(Halt::Failed(msg)));
        }
    };
    Box::pin(async move {
        // `/` cannot appear in user ids, so a child id never collides with one.
        // After a retry, calls run again under new ids: the old children keep their history.
        let child_id = match ctx.retries {
            0 => format!("{}/{seq}", ctx.id),
            n => format!("{}/{seq}.r{n}", ctx.id),
        };
        let inner = ctx.engine.clone();
        call.started_at = Some(ctx.now_ms());
        ctx.wait_for_child(&child_id, seq);
        let _waiting = ctx.waiter_guard(seq);
        let mut started_child = false;
        let mut first_look = true;
        loop {
            let record = {
                let _busy = ctx.inflight();
                if std::mem::take(&mut first_look) {
                    ctx.child_snapshot(&child_id).await
                } else {
                    inner.store.get(&child_id).await
                }
            };
            let record = match record {
                Ok(Some(r)) if r.parent.as_deref() != Some(ctx.id.as_str()) => {
                    ctx.halt(Halt::Failed(format!(
                        "instance `{child_id}` exists but is not a child of `{}`",
                        ctx.id
                    )));
                    return std::future::pending().await;
                }
                Ok(Some(r)) => r,
                Ok(None) if !started_child => {
                    // First time here (not on replay of a started child): create it.
                    let created = async {
                        let _busy = ctx.inflight();
                        let def = inner.registry.get(W::NAME)?;
                        inner
                            .start(
                                def,
                                Some(child_id.clone()),
                                input.clone(),
                                Some(ctx.id.clone()),
                                |_| Vec::new(),
                            )
                            .await
                    };
                    match created.await {
                        Ok(_) => {
                            started_child = true;
                            continue;
                        }
                        // Storage trouble or shutdown: retry later from the journal.
                        Err(crate::error::Error::Store(e)) => ctx.halt(Halt::Store(e)),
                        Err(crate::error::Error::ShutDown) => {
                            ctx.halt(Halt::Store(crate::store::StoreError::Closed))
                        }
                        Err(e) => ctx.halt(Halt::Failed(format!(
                            "cannot start child workflow `{}`: {e}",
                            W::NAME
                        ))),
                    }
                    return std::future::pending().await;
                }
                Ok(None) => {
                    ctx.halt(Halt::Failed(format!(
                        "child workflow `{child_id}` vanished from the store"
                    )));
                    return std::future::pending().await;
                }
                Err(e) => {
                    ctx.halt(Halt::Store(e));
                    return std::future::pending().await;
                }
            };
            // An incompatible child waits for a fix like any running one.
            if record.status.is_final() && record.status != crate::store::Status::Incompatible {
                let Some(output) = record.output else {
                    let msg = format!(
                        "child workflow `{}` (instance `{child_id}`) ended {}: {}",
                        W::NAME,
                        record.status,
                        record.error.unwrap_or_default()
                    );
                    ctx.halt(Halt::Failed(msg));
                    return std::future::pending().await;
                };
                let value: W::Output = match serde_json::from_str(&output) {
                    Ok(v) => v,
                    Err(e) => {
                        ctx.halt(Halt::Failed(format!(
                            "child workflow `{child_id}` output does not fit `{}`'s output type: {e}",
                            W::NAME
                        )));
                        return std::future::pending().await;
                    }
                };
                if let Err(halt) = call.record(Ok(output), Vec::new(), Durability::Later) {
                    ctx.halt(halt);
                    return std::future::pending().await;
                }
                return value;
            }
            std::future::poll_fn(|cx| {
                // Registered before looking, so a child that finishes in between still wakes
                // this call (see `WorkflowCtx::wait`).
                ctx.wait(seq, None, cx.waker());
                if ctx.take_child_done(seq) {
                    return Poll::Ready(());
                }
                Poll::Pending
            })
            .await;
        }
    })
}

/// `s` cut to `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}
