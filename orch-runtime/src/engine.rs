//! The engine: instance lifecycle, driving, suspension, timers, recovery.
//!
//! An instance is *loaded* while a task drives its workflow future. When the future waits only
//! on durable things (a long timer, a signal, a child) the task writes `suspended`, drops the
//! future and exits: a suspended instance costs a row, not memory. A timer, a signal or a
//! child's completion loads it again, and the journal replays it to where it stopped.

use crate::context::{self, Halt, Scope, WorkflowCtx};
use crate::error::Error;
use crate::limits;
use crate::store::{InstanceRecord, LoadedInstance, Millis, SignalRecord, Status, Store, WriteOp};
use crate::workflow::{ErasedOutput, Registry, WorkflowDef};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

/// Where the engine reads the time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// Tokio's clock, anchored at a wall-clock instant: virtual when tokio's time is paused
    /// (the test runtime), so timers of days fire at once and deterministically.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Tokio {
        base_ms: Millis,
        base: tokio::time::Instant,
    },
}

impl Clock {
    pub(crate) fn now_ms(&self) -> Millis {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as Millis)
                .unwrap_or(0),
            Clock::Tokio { base_ms, base } => {
                base_ms
                    + tokio::time::Instant::now()
                        .duration_since(*base)
                        .as_millis() as Millis
            }
        }
    }
}

/// Behaviour the test runtime switches on (see `crate::testing`).
#[derive(Default)]
pub(crate) struct TestHooks {
    /// `random()` and `uuid()` derive from (instance, seq), so runs are reproducible.
    pub(crate) seeded: bool,
    /// Replay what is journaled and stop at the first operation that would execute.
    pub(crate) replay_only: bool,
    /// Step mocks by the step's type id.
    pub(crate) mocks: HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>,
    /// How often each step's body (or its mock) ran.
    pub(crate) calls: Mutex<HashMap<&'static str, u32>>,
}

/// How an instance ended, as handed to those waiting for it.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) status: Status,
    pub(crate) output: Option<String>,
    pub(crate) error: Option<String>,
}

/// An operator's hard stop, as recorded.
pub(crate) struct Termination {
    pub(crate) message: String,
    pub(crate) audit: crate::store::AuditRecord,
}

impl Outcome {
    /// Ended with the workflow's own output (`Completed`, or `Failed` for an `Err` output).
    fn output(ok: bool, output: String) -> Outcome {
        Outcome {
            status: if ok {
                Status::Completed
            } else {
                Status::Failed
            },
            output: Some(output),
            error: None,
        }
    }

    /// Ended without an output of the workflow's type.
    fn error(status: Status, message: String) -> Outcome {
        Outcome {
            status,
            output: None,
            error: Some(message),
        }
    }

    pub(crate) fn of(rec: &InstanceRecord) -> Outcome {
        Outcome {
            status: rec.status,
            output: rec.output.clone(),
            error: rec.error.clone(),
        }
    }
}

/// A loaded (or loading) instance.
struct Slot {
    /// Tells this load apart from earlier and later loads of the same instance.
    load_gen: u64,
    ctx: Option<Arc<WorkflowCtx>>,
    /// Something happened while the context was not yet published: reload from the store.
    woken: bool,
    task: Option<AbortHandle>,
}

/// Shared engine state.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) clock: Clock,
    pub(crate) test: Option<TestHooks>,
    /// Timers shorter than this keep the instance loaded instead of suspending it.
    pub(crate) keep_loaded: Duration,
    permits: Arc<Semaphore>,
    loaded: Mutex<HashMap<String, Slot>>,
    next_gen: std::sync::atomic::AtomicU64,
    watchers: Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>,
    timers: mpsc::UnboundedSender<TimerMsg>,
    timer_task: Mutex<Option<AbortHandle>>,
    closing: AtomicBool,
    handle: tokio::runtime::Handle,
    pub(crate) metrics: crate::metrics::Metrics,
    /// The HTTP server, when turned on.
    #[cfg(feature = "http")]
    pub(crate) http: std::sync::OnceLock<crate::server::Bound>,
}

enum Event {
    Done(ErasedOutput),
    Panicked(String),
    Halted(Halt),
    Idle(Option<Millis>),
}

/// Where a drive gets the instance from.
enum Load {
    /// Just created: the record is known and the journal empty (no read needed when given).
    Fresh(Option<Box<InstanceRecord>>),
    /// Read everything from the store.
    Store,
}

enum Next {
    Done,
    Reload,
    RetryLater,
}

/// How long to wait before loading an instance again after a storage error.
const RETRY_AFTER_STORE_ERROR: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        registry: Registry,
        max_running: usize,
        keep_loaded: Duration,
        clock: Clock,
        test: Option<TestHooks>,
    ) -> Arc<Inner> {
        let (tx, rx) = mpsc::unbounded_channel();
        let store_metrics = store.metrics();
        let inner = Arc::new(Inner {
            store,
            registry,
            clock,
            test,
            keep_loaded,
            permits: Arc::new(Semaphore::new(max_running.max(1))),
            loaded: Mutex::new(HashMap::new()),
            next_gen: std::sync::atomic::AtomicU64::new(1),
            watchers: Mutex::new(HashMap::new()),
            timers: tx,
            timer_task: Mutex::new(None),
            closing: AtomicBool::new(false),
            handle: tokio::runtime::Handle::current(),
            metrics: crate::metrics::Metrics::new(store_metrics),
            #[cfg(feature = "http")]
            http: std::sync::OnceLock::new(),
        });
        let task = inner
            .handle
            .spawn(run_timers(Arc::downgrade(&inner), clock, rx));
        *lock(&inner.timer_task) = Some(task.abort_handle());
        inner
    }

    /// The mock registered for the step with this type id (test runtime only).
    pub(crate) fn mock(
        &self,
        step: std::any::TypeId,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.test.as_ref()?.mocks.get(&step).cloned()
    }

    /// Counts one run of a step body (test runtime only).
    pub(crate) fn count_call(&self, step: &'static str) {
        if let Some(t) = &self.test {
            *lock(&t.calls).entry(step).or_default() += 1;
        }
    }

    pub(crate) fn seeded(&self) -> bool {
        self.test.as_ref().is_some_and(|t| t.seeded)
    }

    pub(crate) fn replay_only(&self) -> bool {
        self.test.as_ref().is_some_and(|t| t.replay_only)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Resumes every unfinished instance found in the store.
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<usize, Error> {
        let unfinished = self.store.unfinished().await?;
        let n = unfinished.len();
        for rec in unfinished {
            match (rec.status, rec.wake_at) {
                (Status::Suspended, Some(at)) => self.add_timer(at, rec.id),
                _ => self.schedule(&rec.id, false),
            }
        }
        Ok(n)
    }

    /// Creates (or finds) an instance and starts driving it; returns its id and whether this
    /// call created it. `input` must fit the workflow's input type: typed callers serialized
    /// it from that type, untyped ones check it first.
    pub(crate) async fn start(
        self: &Arc<Self>,
        def: &'static WorkflowDef,
        id: Option<String>,
        input: String,
        parent: Option<String>,
        extra: impl FnOnce(&str) -> Vec<WriteOp>,
    ) -> Result<(String, bool), Error> {
        if self.is_closing() {
            return Err(Error::ShutDown);
        }
        limits::check_payload("workflow input", &input)?;
        let id = match id {
            // Child ids are made by the engine (`parent/seq`), outside the user id space.
            Some(id) if parent.is_some() => id,
            Some(id) => {
                limits::check_id(&id)?;
                id
            }
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let now = self.clock.now_ms();
        let record = InstanceRecord {
            parent: parent.clone(),
            ..InstanceRecord::new(id.clone(), def.name, def.version, input, now)
        };
        let record_copy = record.clone();
        // Written with the instance, in one transaction (an audit entry, attributes).
        let created = match self.store.create_with(record, extra(&id)).await? {
            crate::store::Created::New => {
                self.metrics.started(def.name);
                self.schedule_with(&id, Load::Fresh(Some(Box::new(record_copy))));
                true
            }
            // `create` read the existing record in the transaction that found the id taken,
            // and an input never changes: of concurrent starts with different inputs exactly
            // one creates, the others are refused here.
            crate::store::Created::Existing(existing) => {
                if existing.workflow != def.name || existing.parent != parent {
                    return Err(Error::IdConflict {
                        id,
                        existing: existing.workflow,
                        requested: def.name.to_string(),
                    });
                }
                if parent.is_none() && !same_json(&existing.input, &record_copy.input) {
                    return Err(Error::AlreadyStarted {
                        id,
                        workflow: existing.workflow,
                        existing: shorten(&existing.input, 200),
                    });
                }
                false
            }
        };
        Ok((id, created))
    }

    /// Makes sure the instance is being driven: loads it, or nudges the loaded copy.
    pub(crate) fn schedule(self: &Arc<Self>, id: &str, fresh: bool) {
        self.schedule_with(
            id,
            if fresh {
                Load::Fresh(None)
            } else {
                Load::Store
            },
        );
    }

    fn schedule_with(self: &Arc<Self>, id: &str, load: Load) {
        if self.is_closing() {
            return;
        }
        let mut loaded = lock(&self.loaded);
        if let Some(slot) = loaded.get_mut(id) {
            // Poll again (or reload, if the context is not published yet) before unloading.
            slot.woken = true;
            if let Some(ctx) = &slot.ctx {
                ctx.wake_all();
            }
            return;
        }
        let load_gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let task = self
            .handle
            .spawn(drive(self.clone(), id.to_string(), load, load_gen));
        loaded.insert(
            id.to_string(),
            Slot {
                load_gen,
                ctx: None,
                woken: false,
                task: Some(task.abort_handle()),
            },
        );
    }

    /// Hands a stored signal to the loaded instance, or loads it.
    pub(crate) fn deliver(self: &Arc<Self>, id: &str, signal: SignalRecord) {
        self.nudge(id, |ctx| ctx.deliver_signal(signal));
    }

    /// Tells the loaded instance `id` that something arrived (`tell` runs on its context if
    /// published; otherwise the loading driver reloads), or loads it from the store.
    fn nudge(self: &Arc<Self>, id: &str, tell: impl FnOnce(&WorkflowCtx)) {
        {
            let mut loaded = lock(&self.loaded);
            if let Some(slot) = loaded.get_mut(id) {
                slot.woken = true;
                if let Some(ctx) = &slot.ctx {
                    tell(ctx);
                }
                return;
            }
        }
        self.schedule(id, false);
    }

    /// Tells the instance its cancellation was requested (recorded in the store already):
    /// the loaded copy wakes its waiting call; an unloaded one is loaded and replayed.
    pub(crate) fn cancel(self: &Arc<Self>, id: &str, at: Millis) {
        self.nudge(id, |ctx| ctx.request_cancel(at));
    }

    /// Stops the instance hard: its task and background work are aborted, then the end is
    /// recorded (with the audit entry, in one transaction) and announced.
    pub(crate) async fn terminate(
        self: &Arc<Self>,
        rec: &InstanceRecord,
        t: Termination,
    ) -> Result<(), Error> {
        self.abort_loaded(&rec.id);
        let now = self.clock.now_ms();
        let mut ops = vec![
            WriteOp::Finish {
                instance: rec.id.clone(),
                status: Status::Terminated,
                output: None,
                error: Some(t.message.clone()),
                failed_step: None,
                at: now,
            },
            WriteOp::Audit(t.audit),
        ];
        if let Some(parent) = &rec.parent {
            ops.push(WriteOp::Wake {
                instance: parent.clone(),
                at: now,
            });
        }
        self.store.submit(ops).await?;
        // A load that started meanwhile (a timer, a signal) finds the instance final once it
        // reads it; stop one that read it before the end was written.
        self.abort_loaded(&rec.id);
        // The instance may have finished on its own just before (the end is written once).
        let now_rec = self.store.get(&rec.id).await?;
        if let Some(r) = now_rec.filter(|r| r.status != Status::Terminated) {
            return Err(Error::Conflict {
                action: "terminate",
                id: rec.id.clone(),
                reason: format!(
                    "it finished ({}) before the termination took effect",
                    r.status
                ),
            });
        }
        self.metrics.finished(&rec.workflow, Status::Terminated);
        let outcome = Outcome::error(Status::Terminated, t.message);
        self.notify_finished(&rec.id, outcome, rec.parent.as_deref());
        Ok(())
    }

    /// Stops driving `id` here: its task and background work are aborted.
    fn abort_loaded(&self, id: &str) {
        let slot = lock(&self.loaded).remove(id);
        if let Some(slot) = slot {
            if let Some(task) = slot.task {
                task.abort();
            }
            if let Some(ctx) = slot.ctx {
                for bg in ctx.take_background() {
                    bg.abort();
                }
            }
        }
    }

    /// Makes the timer task fire every timer due by now (after virtual time moved).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn tick_timers(&self) {
        let _ = self.timers.send(TimerMsg::Tick);
    }

    fn add_timer(&self, at: Millis, id: String) {
        // The receiver lives as long as the engine; a failed send means shutdown.
        let _ = self.timers.send(TimerMsg::At(at, id));
    }

    /// Resolves when the instance finishes (or the engine shuts down).
    pub(crate) fn watch(&self, id: &str) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let mut watchers = lock(&self.watchers);
        // After shutdown nothing will announce an end: the receiver reports it at once.
        if !self.is_closing() {
            watchers.entry(id.to_string()).or_default().push(tx);
        }
        rx
    }

    /// Whether any loaded instance is still working (loading, or not yet waiting on durable
    /// things only).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn any_busy(&self) -> bool {
        lock(&self.loaded)
            .values()
            .any(|slot| slot.ctx.as_ref().is_none_or(|ctx| ctx.idle().is_none()))
    }

    /// Whether a task is driving the instance now (so it has not finished yet).
    pub(crate) fn is_loaded(&self, id: &str) -> bool {
        lock(&self.loaded).contains_key(id)
    }

    fn notify_finished(self: &Arc<Self>, id: &str, outcome: Outcome, parent: Option<&str>) {
        if let Some(txs) = lock(&self.watchers).remove(id) {
            for tx in txs {
                let _ = tx.send(outcome.clone());
            }
        }
        if let Some(parent) = parent {
            self.child_finished(parent, id);
        }
    }

    /// Wakes the parent of a finished child: only the call waiting for that child.
    fn child_finished(self: &Arc<Self>, parent: &str, child: &str) {
        self.nudge(parent, |ctx| ctx.child_finished(child));
    }

    /// Forgets the load `load_gen` of the instance (a later load is left alone).
    fn unload(&self, id: &str, load_gen: u64) {
        self.unload_woken(id, load_gen);
    }

    /// Like [`unload`](Self::unload); true if something asked this load to look again
    /// meanwhile (e.g. a retry written just after this load recorded the end).
    fn unload_woken(&self, id: &str, load_gen: u64) -> bool {
        let mut loaded = lock(&self.loaded);
        if loaded.get(id).is_some_and(|s| s.load_gen == load_gen) {
            return loaded.remove(id).is_some_and(|s| s.woken);
        }
        false
    }

    /// Stops driving everything and closes the store after it has written what was queued.
    pub(crate) async fn shutdown(&self) -> Result<(), Error> {
        if self.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        #[cfg(feature = "http")]
        if let Some(server) = self.http.get() {
            server.stop();
        }
        let slots: Vec<Slot> = lock(&self.loaded).drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Some(task) = slot.task {
                task.abort();
            }
            if let Some(ctx) = slot.ctx {
                for bg in ctx.take_background() {
                    bg.abort();
                }
            }
        }
        if let Some(t) = lock(&self.timer_task).take() {
            t.abort();
        }
        lock(&self.watchers).clear();
        self.store.close().await?;
        Ok(())
    }
}

/// Messages to the timer task.
enum TimerMsg {
    /// Load the instance at this time.
    At(Millis, String),
    /// Fire whatever is due now.
    Tick,
}

async fn run_timers(inner: Weak<Inner>, clock: Clock, mut rx: mpsc::UnboundedReceiver<TimerMsg>) {
    let mut heap: BinaryHeap<Reverse<(Millis, String)>> = BinaryHeap::new();
    // The latest wake-up asked for each instance: older heap entries are stale and skipped,
    // so an instance suspended again (or woken early) is not loaded for nothing.
    let mut latest: HashMap<String, Millis> = HashMap::new();
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        let now = clock.now_ms();
        let wait = next.map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64));
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(TimerMsg::At(at, id)) => {
                    if latest.insert(id.clone(), at) != Some(at) {
                        heap.push(Reverse((at, id)));
                    }
                }
                Some(TimerMsg::Tick) => {}
                None => return,
            },
            _ = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let now = clock.now_ms();
        if heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(inner) = inner.upgrade() else { return };
            while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                if let Some(Reverse((at, id))) = heap.pop()
                    && latest.get(&id) == Some(&at)
                {
                    latest.remove(&id);
                    inner.schedule(&id, false);
                }
            }
        }
    }
}

async fn drive(inner: Arc<Inner>, id: String, load: Load, load_gen: u64) {
    let Ok(_permit) = inner.permits.clone().acquire_owned().await else {
        return;
    };
    let mut load = load;
    loop {
        match drive_once(&inner, &id, load, load_gen).await {
            Next::Done => return,
            Next::Reload => load = Load::Store,
            Next::RetryLater => {
                inner.unload(&id, load_gen);
                let at = inner.clock.now_ms() + RETRY_AFTER_STORE_ERROR.as_millis() as Millis;
                inner.add_timer(at, id);
                return;
            }
        }
    }
}

/// Aborts an instance's background tasks when its driver stops, however it stops.
struct BackgroundGuard(Arc<WorkflowCtx>);

impl Drop for BackgroundGuard {
    fn drop(&mut self) {
        for bg in self.0.take_background() {
            bg.abort();
        }
    }
}

async fn drive_once(inner: &Arc<Inner>, id: &str, load: Load, load_gen: u64) -> Next {
    let known = match load {
        Load::Fresh(known) => known,
        Load::Store => {
            // Ordered after any `suspended` written by the previous load of this instance.
            let commit = inner.store.submit(vec![WriteOp::SetStatus {
                instance: id.to_string(),
                status: Status::Running,
                wake_at: None,
                at: inner.clock.now_ms(),
            }]);
            drop(commit);
            None
        }
    };
    let loaded = match known {
        Some(record) => Ok(Some(LoadedInstance {
            record: *record,
            journal: Vec::new(),
            attempts: Vec::new(),
            signals: Vec::new(),
            ended_timers: Vec::new(),
        })),
        None => inner.store.load(id).await,
    };
    let loaded = match loaded {
        Ok(Some(l)) => l,
        Ok(None) => {
            inner.unload(id, load_gen);
            return Next::Done;
        }
        Err(e) => {
            tracing::error!(instance = id, error = %e, "cannot load instance; retrying");
            return Next::RetryLater;
        }
    };
    let parent = loaded.record.parent.clone();
    if loaded.record.status.is_final() {
        inner.unload(id, load_gen);
        inner.notify_finished(id, Outcome::of(&loaded.record), parent.as_deref());
        return Next::Done;
    }
    let def = match inner.registry.get(&loaded.record.workflow) {
        Ok(def) => def,
        Err(e) => {
            tracing::warn!(instance = id, error = %e, "instance left as it is");
            inner.unload(id, load_gen);
            return Next::Done;
        }
    };
    let input = loaded.record.input.clone();
    let ctx = WorkflowCtx::new(inner.clone(), def.name, def.version, loaded);
    let _background = BackgroundGuard(ctx.clone());
    {
        let mut slots = lock(&inner.loaded);
        match slots.get_mut(id) {
            Some(slot) if slot.load_gen == load_gen && slot.woken => {
                slot.woken = false;
                return Next::Reload;
            }
            Some(slot) if slot.load_gen == load_gen => slot.ctx = Some(ctx.clone()),
            _ => return Next::Done, // shut down meanwhile
        }
    }
    let mut fut = match (def.start)(&input) {
        Ok(f) => f,
        Err(e) => {
            let msg = format!(
                "the stored input no longer deserializes into workflow `{}`'s input type: {e}",
                def.name
            );
            return halt(inner, &ctx, load_gen, parent, Halt::Failed(msg)).await;
        }
    };
    let scope = Scope::Workflow(ctx.clone());
    loop {
        let event = std::future::poll_fn(|cx| {
            ctx.set_driver(cx.waker());
            let polled = context::sync_scope(scope.clone(), || {
                std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
            });
            match polled {
                Err(panic) => Poll::Ready(Event::Panicked(panic_text(&*panic))),
                Ok(Poll::Ready(out)) => Poll::Ready(Event::Done(out)),
                Ok(Poll::Pending) => {
                    if let Some(h) = ctx.halted() {
                        Poll::Ready(Event::Halted(h))
                    } else if inner.replay_only() && !ctx.busy() {
                        // Everything journaled has replayed; nothing may execute.
                        Poll::Ready(Event::Halted(Halt::Frontier(ctx.next_seq())))
                    } else if let Some(wake_at) = ctx.idle() {
                        Poll::Ready(Event::Idle(wake_at))
                    } else {
                        Poll::Pending
                    }
                }
            }
        })
        .await;
        match event {
            Event::Done(Ok((output, ok))) => {
                // Background work settles first; a halt (e.g. a background step that no
                // longer matches its journal) ends the wait.
                std::future::poll_fn(|cx| {
                    ctx.set_driver(cx.waker());
                    if ctx.halted().is_some() {
                        return Poll::Ready(());
                    }
                    ctx.poll_background(cx)
                })
                .await;
                if let Some(h) = ctx.halted() {
                    return halt(inner, &ctx, load_gen, parent, h).await;
                }
                if let Err(msg) = ctx.check_fully_replayed() {
                    return finish(
                        inner,
                        &ctx,
                        load_gen,
                        parent,
                        Outcome::error(Status::Incompatible, msg),
                    )
                    .await;
                }
                let outcome = Outcome::output(ok, output);
                return finish(inner, &ctx, load_gen, parent, outcome).await;
            }
            Event::Done(Err(msg)) => {
                return halt(inner, &ctx, load_gen, parent, Halt::Failed(msg)).await;
            }
            Event::Panicked(msg) => {
                let msg = format!("workflow `{}` panicked: {msg}", def.name);
                return halt(inner, &ctx, load_gen, parent, Halt::Failed(msg)).await;
            }
            Event::Halted(h) => return halt(inner, &ctx, load_gen, parent, h).await,
            Event::Idle(wake_at) => {
                for commit in ctx.take_unawaited() {
                    if let Err(e) = commit.await {
                        tracing::error!(instance = id, error = %e, "checkpoint failed; retrying");
                        return Next::RetryLater;
                    }
                }
                let commit = {
                    let mut slots = lock(&inner.loaded);
                    match slots.get_mut(id) {
                        Some(slot) if slot.load_gen == load_gen && slot.woken => {
                            slot.woken = false;
                            None
                        }
                        Some(slot) if slot.load_gen != load_gen => return Next::Done,
                        None => return Next::Done,
                        _ => {
                            let commit = inner.store.submit(vec![WriteOp::SetStatus {
                                instance: id.to_string(),
                                status: Status::Suspended,
                                wake_at,
                                at: inner.clock.now_ms(),
                            }]);
                            slots.remove(id);
                            Some(commit)
                        }
                    }
                };
                let Some(commit) = commit else { continue };
                drop(fut);
                if let Err(e) = commit.await {
                    tracing::error!(instance = id, error = %e, "cannot suspend; retrying");
                    return Next::RetryLater;
                }
                if let Some(at) = wake_at {
                    inner.add_timer(at, id.to_string());
                }
                return Next::Done;
            }
        }
    }
}

async fn halt(
    inner: &Arc<Inner>,
    ctx: &Arc<WorkflowCtx>,
    load_gen: u64,
    parent: Option<String>,
    h: Halt,
) -> Next {
    let (status, msg) = match h {
        Halt::Incompatible(msg) => {
            tracing::error!(instance = %ctx.id, "{msg}");
            (Status::Incompatible, msg)
        }
        Halt::Failed(msg) => (Status::Failed, msg),
        Halt::Cancelled(msg) => (Status::Cancelled, msg),
        Halt::Store(e) => {
            tracing::error!(instance = %ctx.id, error = %e, "checkpoint failed; retrying");
            return Next::RetryLater;
        }
        Halt::Frontier(seq) => {
            // Replay-only mode: the journal is exhausted; report without writing anything.
            inner.unload(&ctx.id, load_gen);
            let outcome = Outcome::error(
                Status::Running,
                format!("replay reached the end of the journal before seq {seq}"),
            );
            inner.notify_finished(&ctx.id, outcome, None);
            return Next::Done;
        }
    };
    finish(inner, ctx, load_gen, parent, Outcome::error(status, msg)).await
}

async fn finish(
    inner: &Arc<Inner>,
    ctx: &Arc<WorkflowCtx>,
    load_gen: u64,
    parent: Option<String>,
    outcome: Outcome,
) -> Next {
    for bg in ctx.take_background() {
        bg.abort();
    }
    for commit in ctx.take_unawaited() {
        if let Err(e) = commit.await {
            tracing::error!(instance = %ctx.id, error = %e, "checkpoint failed; retrying");
            return Next::RetryLater;
        }
    }
    let mut outcome = outcome;
    if outcome.status == Status::Failed && ctx.cancel_requested() {
        // Asked to cancel, the workflow returned an error (after compensating).
        outcome.status = Status::Cancelled;
    }
    let failed_step = match outcome.status {
        Status::Failed | Status::Cancelled => ctx.failed_step(),
        _ => None,
    };
    let now = inner.clock.now_ms();
    let mut ops = vec![WriteOp::Finish {
        instance: ctx.id.clone(),
        status: outcome.status,
        output: outcome.output.clone(),
        error: outcome.error.clone(),
        failed_step,
        at: now,
    }];
    if let Some(parent) = &parent {
        // In the same transaction: a restart finds the parent due, even if the wake-up
        // below is lost with the process.
        ops.push(WriteOp::Wake {
            instance: parent.clone(),
            at: now,
        });
    }
    let commit = inner.store.submit(ops);
    if let Err(e) = commit.await {
        tracing::error!(instance = %ctx.id, error = %e, "cannot record the end; retrying");
        return Next::RetryLater;
    }
    let woken = inner.unload_woken(&ctx.id, load_gen);
    inner.metrics.finished(ctx.workflow, outcome.status);
    inner.notify_finished(&ctx.id, outcome, parent.as_deref());
    if woken {
        // Asked to look again after the end was written (a retry can make it run again):
        // a fresh load reads what the store says now.
        inner.schedule(&ctx.id, false);
    }
    Next::Done
}

pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Whether two JSON texts hold the same value: key order and spacing aside, numbers compared
/// by value (`1` and `1.0` are equal).
fn same_json(a: &str, b: &str) -> bool {
    fn eq(x: &serde_json::Value, y: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (x, y) {
            (V::Number(p), V::Number(q)) => p == q || p.as_f64() == q.as_f64(),
            (V::Array(p), V::Array(q)) => {
                p.len() == q.len() && p.iter().zip(q).all(|(p, q)| eq(p, q))
            }
            (V::Object(p), V::Object(q)) => {
                p.len() == q.len() && p.iter().all(|(k, v)| q.get(k).is_some_and(|w| eq(v, w)))
            }
            _ => x == y,
        }
    }
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => eq(&x, &y),
        _ => a == b,
    }
}

/// `s` cut to `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}
