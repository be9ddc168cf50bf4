//! The engine: instance lifecycle, ownership, driving, suspension, timers, recovery.
//!
//! The engine is one *node*: it drives only instances it owns (see
//! [`store::lease`](crate::store::lease)). It owns an instance it created, or one it claimed
//! because it was due; every write it makes while driving it is fenced by the lease's epoch,
//! and a write refused because the lease was lost ends the drive at once, writing nothing more.
//! A heartbeat renews all its leases in one write; a lease another node took is dropped.
//!
//! An instance is *loaded* while a task drives its workflow future. When the future waits only
//! on durable things (a long timer, a signal, a child) the task writes `suspended` — which also
//! releases the instance — drops the future and exits: a suspended instance costs a row, not
//! memory. When it falls due (its timer, a signal, a child's end, a cancellation) a node claims
//! it, loads it, and the journal replays it to where it stopped. Starting the engine claims
//! what is due, so its cost grows with the work that is due, not with what waits.

use crate::context::{self, Halt, Scope, WorkflowCtx};
use crate::error::Error;
use crate::limits;
use crate::store::{
    Backend, Fence, InstanceRecord, LeaseTerms, LoadedInstance, Millis, NodeId, Status, StoreError,
    Wakeup, Wakeups, WriteOp,
};
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
    /// A clock that stands still at this time (the replayer's: at the end of time, so every
    /// journaled timer has fired and replay goes on to whatever the journal holds next).
    Frozen(Millis),
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
            Clock::Frozen(at) => *at,
        }
    }
}

/// Behaviour the test runtime (see `crate::testing`) and the replayer (see
/// `crate::replayer`) switch on.
#[derive(Default)]
pub(crate) struct TestHooks {
    /// `random()` and `uuid()` derive from (instance, seq), so runs are reproducible.
    pub(crate) seeded: bool,
    /// Replay what is journaled and stop at the first operation that would execute; write
    /// nothing, not even the end (see `crate::replayer`).
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
    /// Of a replay-only run that stopped (see `crate::replayer`): the seq where the journal and
    /// the code part ways (incompatible), or the first seq the journal does not hold (the run
    /// replayed everything; still `Running`).
    pub(crate) seq: Option<u32>,
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
            seq: None,
        }
    }

    /// Ended without an output of the workflow's type.
    fn error(status: Status, message: String) -> Outcome {
        Outcome {
            status,
            output: None,
            error: Some(message),
            seq: None,
        }
    }

    /// Ended at `seq` (see [`Outcome::seq`]).
    fn at_seq(mut self, seq: u32) -> Outcome {
        self.seq = Some(seq);
        self
    }

    pub(crate) fn of(rec: &InstanceRecord) -> Outcome {
        Outcome {
            status: rec.status,
            output: rec.output.clone(),
            error: rec.error.clone(),
            seq: None,
        }
    }
}

/// A loaded (or loading) instance.
struct Slot {
    /// Tells this load apart from earlier and later loads of the same instance.
    load_gen: u64,
    /// The lease epoch this load writes under.
    epoch: u64,
    ctx: Option<Arc<WorkflowCtx>>,
    /// Something happened while the context was not yet published: reload from the store.
    woken: bool,
    task: Option<AbortHandle>,
}

/// Which waits keep an instance loaded (see [`RuntimeBuilder::keep_loaded_below`] and
/// [`RuntimeBuilder::unload_task_waits_after`](crate::RuntimeBuilder::unload_task_waits_after)).
///
/// [`RuntimeBuilder::keep_loaded_below`]: crate::RuntimeBuilder::keep_loaded_below
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeepLoaded {
    /// Timers shorter than this keep the instance loaded.
    pub(crate) timers: Duration,
    /// A queued step whose task has waited this long for its end lets the instance unload.
    pub(crate) task_waits: Duration,
}

impl Default for KeepLoaded {
    fn default() -> Self {
        KeepLoaded {
            timers: Duration::from_secs(1),
            task_waits: Duration::from_secs(10),
        }
    }
}

/// Shared engine state.
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Backend>,
    /// This runtime's identity as an owner of instances.
    pub(crate) node: NodeId,
    /// How long this node's leases last without a heartbeat; `None`: they never end (the test
    /// runtime, whose clock is virtual).
    pub(crate) lease_ttl: Option<Duration>,
    pub(crate) registry: Registry,
    pub(crate) clock: Clock,
    pub(crate) test: Option<TestHooks>,
    /// Which waits keep an instance loaded instead of suspending it.
    pub(crate) keep_loaded: KeepLoaded,
    permits: Arc<Semaphore>,
    /// At most this many instances are loaded (owned and driven, or waiting for a permit)
    /// here; further due instances stay in the store for any node with room.
    max_running: usize,
    /// A due instance was left in the store because this node was full: claim again as soon
    /// as a loaded instance goes (see [`Inner::wait_for_room`]).
    starved: AtomicBool,
    loaded: Mutex<HashMap<String, Slot>>,
    next_gen: std::sync::atomic::AtomicU64,
    watchers: Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>,
    timers: mpsc::UnboundedSender<TimerMsg>,
    /// The scheduler and heartbeat tasks.
    tasks: Mutex<Vec<AbortHandle>>,
    /// A claim round is running; `claim_again`: another was asked for meanwhile.
    claiming: AtomicBool,
    claim_again: AtomicBool,
    closing: AtomicBool,
    handle: tokio::runtime::Handle,
    pub(crate) metrics: crate::metrics::Metrics,
    /// When this node's last heartbeat went through (0: none yet).
    last_heartbeat: std::sync::atomic::AtomicI64,
    /// Workflow queues may hold instances waiting for room: ends of instances make this node
    /// admit (see [`admit_soon`](Self::admit_soon)).
    queues_active: AtomicBool,
    /// An admission round is running; `admit_again`: another was asked for meanwhile.
    admitting: AtomicBool,
    admit_again: AtomicBool,
}

enum Event {
    Done(ErasedOutput),
    Panicked(String),
    Halted(Halt),
    Idle(Option<Millis>),
}

/// Where a drive gets the instance from.
pub(crate) enum Load {
    /// Known already, no read needed: just created (the journal is empty), or handed to the
    /// replayer.
    Known(Box<LoadedInstance>),
    /// Read everything from the store.
    Store,
}

impl Load {
    /// An instance just created: its record, nothing recorded yet.
    fn fresh(record: InstanceRecord) -> Load {
        Load::Known(Box::new(LoadedInstance {
            record,
            journal: Vec::new(),
            attempts: Vec::new(),
            signals: Vec::new(),
            ended_timers: Vec::new(),
        }))
    }
}

enum Next {
    Done,
    Reload,
    RetryLater,
}

/// What to do after a write of a drive failed (the drive has unloaded the instance): a lost
/// lease ends the drive (the new owner continues), anything else is retried later from the
/// store.
fn after_store_error(inner: &Arc<Inner>, id: &str, e: &StoreError, what: &str) -> Next {
    if let StoreError::LeaseLost { .. } = e {
        tracing::warn!(instance = id, error = %e, "lease lost; no longer driving the instance");
        inner.metrics.lost();
        inner.take_back(id);
        return Next::Done;
    }
    tracing::error!(instance = id, error = %e, "{what}; retrying");
    Next::RetryLater
}

/// How long to wait before loading an instance again after a storage error.
const RETRY_AFTER_STORE_ERROR: Duration = Duration::from_secs(1);

/// The default lease time-to-live (`RuntimeBuilder::lease_ttl`).
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// At most this many instances are claimed in one store call.
const CLAIM_BATCH: usize = 256;

/// At most this many queued instances are admitted in one store call.
const ADMIT_BATCH: usize = 256;

/// How often a node looks for due instances nobody announced, at most: a safety net (each
/// heartbeat says when to look next, see `TimerMsg::Watch`).
const CLAIM_POLL: Duration = Duration::from_secs(60);

/// A lease time-to-live that never ends.
const FOREVER: Millis = Millis::MAX / 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    #[allow(clippy::too_many_arguments)] // Built once, by `RuntimeBuilder::build`.
    pub(crate) fn new(
        store: Arc<dyn Backend>,
        node: NodeId,
        lease_ttl: Option<Duration>,
        registry: Registry,
        max_running: usize,
        keep_loaded: KeepLoaded,
        clock: Clock,
        test: Option<TestHooks>,
    ) -> Arc<Inner> {
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = crate::metrics::Metrics::new(store.metrics(), node.as_str(), lease_ttl);
        let wakeups = store.wakeups();
        let inner = Arc::new(Inner {
            store,
            node,
            lease_ttl,
            registry,
            clock,
            test,
            keep_loaded,
            permits: Arc::new(Semaphore::new(max_running.max(1))),
            max_running: max_running.max(1),
            starved: AtomicBool::new(false),
            loaded: Mutex::new(HashMap::new()),
            next_gen: std::sync::atomic::AtomicU64::new(1),
            watchers: Mutex::new(HashMap::new()),
            timers: tx,
            tasks: Mutex::new(Vec::new()),
            claiming: AtomicBool::new(false),
            claim_again: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            handle: tokio::runtime::Handle::current(),
            metrics,
            last_heartbeat: std::sync::atomic::AtomicI64::new(0),
            queues_active: AtomicBool::new(true),
            admitting: AtomicBool::new(false),
            admit_again: AtomicBool::new(false),
        });
        let scheduler =
            inner
                .handle
                .spawn(run_scheduler(Arc::downgrade(&inner), clock, rx, wakeups));
        let mut tasks = vec![scheduler.abort_handle()];
        if let Some(ttl) = lease_ttl {
            let beat = inner.handle.spawn(heartbeat(Arc::downgrade(&inner), ttl));
            tasks.push(beat.abort_handle());
        }
        *lock(&inner.tasks) = tasks;
        inner
    }

    /// What this node is doing now, for `/metrics`.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn node_now(&self) -> crate::metrics::NodeNow {
        let last = self.last_heartbeat.load(Ordering::Relaxed);
        crate::metrics::NodeNow {
            owned: lock(&self.loaded).len(),
            heartbeat_age: (last > 0).then(|| (self.clock.now_ms() - last).max(0) as f64 / 1000.0),
        }
    }

    /// The terms of this node's leases, now.
    pub(crate) fn terms(&self) -> LeaseTerms {
        LeaseTerms {
            node: self.node.clone(),
            now: self.clock.now_ms(),
            ttl: self
                .lease_ttl
                .map_or(FOREVER, |d| d.as_millis().min(FOREVER as u128) as Millis),
        }
    }

    /// The instances this node holds, with their epochs.
    fn held(&self) -> Vec<(String, u64)> {
        lock(&self.loaded)
            .iter()
            .map(|(id, slot)| (id.clone(), slot.epoch))
            .collect()
    }

    /// Renews this node's leases; drops the instances it lost.
    async fn renew(self: &Arc<Self>) -> Result<(), StoreError> {
        let held = self.held();
        let epochs: HashMap<String, u64> = held.iter().cloned().collect();
        let renewal = match self.store.renew(self.terms(), held).await {
            Ok(renewal) => renewal,
            Err(e) => {
                self.metrics.heartbeat(false);
                return Err(e);
            }
        };
        self.metrics.heartbeat(true);
        self.last_heartbeat
            .store(self.clock.now_ms(), Ordering::Relaxed);
        // Until the next heartbeat, this is the one time to look for work nobody announces.
        let _ = self.timers.send(TimerMsg::Watch(renewal.next_due));
        for id in renewal.lost {
            // (A load under a newer lease may have replaced the one that lost it meanwhile.)
            let Some(&epoch) = epochs.get(&id) else {
                continue;
            };
            if !self.abort_loaded_at(&id, epoch) {
                continue;
            }
            tracing::warn!(
                instance = %id,
                node = %self.node,
                "lease lost (another node claimed the instance); no longer driving it"
            );
            self.metrics.lost();
            self.take_back(&id);
        }
        Ok(())
    }

    /// After this node stopped driving `id` because the lease it drove it under was lost:
    /// drives it again if the store says this node owns it now (under a newer lease, e.g. it
    /// claimed it back meanwhile; nobody else may take an instance its live owner holds);
    /// otherwise those waiting here for its end read the store (see
    /// [`recheck_if_watched`](Self::recheck_if_watched)).
    fn take_back(self: &Arc<Self>, id: &str) {
        if self.is_closing() {
            return;
        }
        self.claim_and_drive(id);
    }

    /// Claims `id` in the background and drives it when the store grants (or confirms) this
    /// node's lease; otherwise those waiting here for its end read the store. A store error is
    /// tried again later.
    fn claim_and_drive(self: &Arc<Self>, id: &str) {
        let inner = self.clone();
        let id = id.to_string();
        self.handle.spawn(async move {
            match inner.store.claim(inner.terms(), &id).await {
                // `Some` is also this node's own lease, unchanged: counted once, by the call
                // that starts driving it.
                Ok(Some(lease)) => {
                    if inner.schedule_with(&id, Load::Store, lease.epoch) {
                        inner.metrics.claimed(1);
                    }
                }
                Ok(None) => inner.recheck_if_watched(&id),
                Err(e) => {
                    tracing::error!(instance = %id, error = %e, "cannot claim; retrying");
                    let at = inner.clock.now_ms() + RETRY_AFTER_STORE_ERROR.as_millis() as Millis;
                    inner.add_timer(at, id);
                }
            }
        });
    }

    /// This node does not drive `id` (any more: another node owns it now, or it finished).
    /// Those waiting here for its end cannot hear it from a drive here: they read the store
    /// (it may have ended already, announced while this node still had it loaded and so
    /// ignored), and hear later ends from the store's wake-ups.
    fn recheck_if_watched(self: &Arc<Self>, id: &str) {
        if lock(&self.watchers).contains_key(id) {
            self.recheck_watchers(vec![id.to_string()]);
        }
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

    /// Registers this node (its first heartbeat) and claims what is due: instances another
    /// node left running (it stopped, or crashed and its lease ended) and suspended ones whose
    /// time has come. Instances that wait are left in the store. Returns how many it claimed.
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<usize, Error> {
        // Instances an earlier run under this node id still holds (it crashed) are this
        // node's to take again at once, without waiting for that run's lease to end.
        self.store.release(&self.node, None).await?;
        self.renew().await?;
        let claimed = self.claim_round().await?;
        // Queued instances a stopped node left waiting for room.
        self.admit_soon();
        Ok(claimed)
    }

    /// Runs an admission round of the workflow queues in the background (one at a time; one
    /// asked for meanwhile runs after it). Admitted instances are announced as due, and
    /// claimed like any other.
    pub(crate) fn admit_soon(self: &Arc<Self>) {
        if self.is_closing() || self.replay_only() {
            return;
        }
        self.admit_again.store(true, Ordering::SeqCst);
        if self.admitting.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        self.handle.spawn(async move {
            while inner.admit_again.swap(false, Ordering::SeqCst) {
                if let Err(e) = inner.admit_round().await {
                    tracing::error!(error = %e, "cannot admit queued instances; trying again later");
                    let at = inner.clock.now_ms() + RETRY_AFTER_STORE_ERROR.as_millis() as Millis;
                    let _ = inner.timers.send(TimerMsg::Admit(at));
                }
            }
            inner.admitting.store(false, Ordering::SeqCst);
            if inner.admit_again.load(Ordering::SeqCst) {
                inner.admit_soon();
            }
        });
    }

    /// Admits queued instances in bounded batches; remembers when a rate limit lets a queue
    /// admit again.
    async fn admit_round(self: &Arc<Self>) -> Result<(), StoreError> {
        loop {
            if self.is_closing() {
                return Ok(());
            }
            let admitted = self.store.admit(self.clock.now_ms(), ADMIT_BATCH).await?;
            if let Some(at) = admitted.next_at {
                let _ = self.timers.send(TimerMsg::Admit(at));
            }
            self.queues_active
                .store(admitted.waiting > 0, Ordering::SeqCst);
            if !admitted.instances.is_empty() {
                tracing::debug!(
                    admitted = admitted.instances.len(),
                    waiting = admitted.waiting,
                    "admitted queued instances"
                );
            }
            if admitted.instances.len() < ADMIT_BATCH || admitted.waiting == 0 {
                return Ok(());
            }
        }
    }

    /// Stores an instance queued on `entry.queue` and asks for an admission round; returns
    /// its id and whether this call stored it (`false`: an instance with that id, or holding
    /// the queue's deduplication key, exists and is returned).
    pub(crate) async fn enqueue(
        self: &Arc<Self>,
        def: &'static WorkflowDef,
        id: Option<String>,
        input: String,
        entry: crate::store::flow::QueueEntry,
        extra: impl FnOnce(&str) -> Vec<WriteOp>,
    ) -> Result<(String, bool), Error> {
        use crate::store::flow::Enqueued;
        if self.is_closing() {
            return Err(Error::ShutDown);
        }
        limits::check_payload("workflow input", &input)?;
        crate::store::task::check_queue(&entry.queue).map_err(Error::InvalidArgument)?;
        if let Some(k) = &entry.key {
            crate::store::flow::check_key("concurrency key", k).map_err(Error::InvalidArgument)?;
        }
        if let Some(k) = &entry.dedup {
            crate::store::flow::check_key("deduplication key", k)
                .map_err(Error::InvalidArgument)?;
        }
        let id = match id {
            Some(id) => {
                limits::check_id(&id)?;
                id
            }
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let now = self.clock.now_ms();
        let record = InstanceRecord {
            status: Status::Queued,
            ..InstanceRecord::new(id.clone(), def.name, def.version, input, now)
        };
        let input_copy = record.input.clone();
        let queue = entry.queue.clone();
        match self
            .store
            .enqueue_instance(record, entry, extra(&id))
            .await?
        {
            Enqueued::New => {
                self.metrics.started(def.name);
                self.queues_active.store(true, Ordering::SeqCst);
                self.admit_soon();
                Ok((id, true))
            }
            Enqueued::Existing(existing) => {
                if existing.workflow != def.name || existing.parent.is_some() {
                    return Err(Error::IdConflict {
                        id,
                        existing: existing.workflow,
                        requested: def.name.to_string(),
                    });
                }
                if !same_json(&existing.input, &input_copy) {
                    return Err(Error::AlreadyStarted {
                        id,
                        workflow: existing.workflow,
                        existing: shorten(&existing.input, 200),
                    });
                }
                Ok((id, false))
            }
            Enqueued::Duplicate(existing) => {
                if existing.workflow != def.name {
                    return Err(Error::Conflict {
                        action: "enqueue",
                        id: existing.id.clone(),
                        reason: format!(
                            "its deduplication key is held on queue `{queue}` by instance `{}`                              of workflow `{}`, not `{}`; use another key, or wait until that                              instance finishes",
                            existing.id, existing.workflow, def.name
                        ),
                    });
                }
                Ok((existing.id, false))
            }
        }
    }

    /// Claims due instances in bounded batches, no more than this node has room for, and
    /// drives them; remembers when the next suspended one falls due.
    async fn claim_round(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            if self.is_closing() {
                return Ok(total);
            }
            let room = self.room();
            if room == 0 {
                // The rest stays due in the store, for any node with room (this one included,
                // once an instance it drives goes).
                self.wait_for_room();
                return Ok(total);
            }
            let limit = room.min(CLAIM_BATCH);
            let claimed = self.store.claim_due(self.terms(), limit).await?;
            if let Some(at) = claimed.next_wake {
                let _ = self.timers.send(TimerMsg::Round(at));
            }
            let n = claimed.leases.len();
            total += n;
            for lease in claimed.leases {
                if self.schedule_with(&lease.instance, Load::Store, lease.epoch) {
                    self.metrics.claimed(1);
                }
            }
            // A full batch may leave more.
            if n < limit {
                return Ok(total);
            }
        }
    }

    /// How many more instances this node may load (own and drive) now.
    fn room(&self) -> usize {
        self.max_running.saturating_sub(lock(&self.loaded).len())
    }

    /// Notes that a due instance was left in the store because this node is full, so that it
    /// claims again as soon as an instance it drives goes ([`room_freed`](Self::room_freed)).
    fn wait_for_room(self: &Arc<Self>) {
        // Set before looking again: a drive that ends meanwhile either sees the flag or has
        // already made the room seen here.
        self.starved.store(true, Ordering::SeqCst);
        if self.room() > 0 {
            self.room_freed();
        }
    }

    /// An instance stopped being loaded here: if due work was left in the store for want of
    /// room, claim it now.
    fn room_freed(self: &Arc<Self>) {
        if self.starved.swap(false, Ordering::SeqCst) {
            self.claim_soon();
        }
    }

    /// Runs a claim round in the background (one at a time; one asked for meanwhile runs
    /// after it).
    pub(crate) fn claim_soon(self: &Arc<Self>) {
        if self.is_closing() {
            return;
        }
        self.claim_again.store(true, Ordering::SeqCst);
        if self.claiming.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        self.handle.spawn(async move {
            while inner.claim_again.swap(false, Ordering::SeqCst) {
                if let Err(e) = inner.claim_round().await {
                    tracing::error!(error = %e, "cannot claim due instances; trying again later");
                }
            }
            inner.claiming.store(false, Ordering::SeqCst);
            // Asked for between the last check and the flag: run again.
            if inner.claim_again.load(Ordering::SeqCst) {
                inner.claim_soon();
            }
        });
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
        // Owned by this node when it has room to drive it; otherwise left due and unowned, so
        // any node with room claims it (this one too, once room frees).
        let owner = (self.room() > 0).then(|| self.terms());
        let owned = owner.is_some();
        // Written with the instance, in one transaction (an audit entry, attributes).
        let created = match self.store.create(record, owner, extra(&id)).await? {
            crate::store::Created::New(lease) => {
                self.metrics.started(def.name);
                match lease {
                    Some(lease) => {
                        self.schedule_with(&id, Load::fresh(record_copy), lease.epoch);
                    }
                    // Asked to own it, yet no lease came back (a store of one's own that
                    // keeps none): drive it under epoch 0.
                    None if owned => {
                        self.schedule_with(&id, Load::fresh(record_copy), 0);
                    }
                    None => self.wait_for_room(),
                }
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

    /// Makes sure the instance is being driven if this node may: nudges the loaded copy, or
    /// claims the instance and loads it (nothing happens when another live node owns it or it
    /// has finished).
    pub(crate) fn resume(self: &Arc<Self>, id: &str) {
        if self.is_closing() {
            return;
        }
        if self.nudge_loaded(id, |_| ()) {
            return;
        }
        if self.room() == 0 {
            // It stays due in the store: another node with room claims it, or this one does
            // once room frees.
            self.wait_for_room();
            return;
        }
        self.claim_and_drive(id);
    }

    /// Drives `id` under the lease epoch `epoch`, loaded as `load` says (a loaded instance is
    /// asked to look again instead). True when this started a drive.
    pub(crate) fn schedule_with(self: &Arc<Self>, id: &str, load: Load, epoch: u64) -> bool {
        if self.is_closing() {
            return false;
        }
        let mut loaded = lock(&self.loaded);
        if let Some(slot) = loaded.get_mut(id) {
            if epoch <= slot.epoch {
                // Poll again (or reload, if the context is not published yet) before
                // unloading.
                slot.woken = true;
                if let Some(ctx) = &slot.ctx {
                    ctx.wake_all();
                }
                return false;
            }
            // This node holds the instance under a newer lease than the one that load writes
            // under (it lost the instance, then claimed it back): every write of that load
            // would be refused, so it gives way to a load of what the store holds now.
            if let Some(stale) = loaded.remove(id) {
                stop(stale);
            }
        }
        let load_gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let task = self
            .handle
            .spawn(drive(self.clone(), id.to_string(), load, load_gen, epoch));
        loaded.insert(
            id.to_string(),
            Slot {
                load_gen,
                epoch,
                ctx: None,
                woken: false,
                task: Some(task.abort_handle()),
            },
        );
        true
    }

    /// Tells the instance `id`, if loaded here, that something arrived (`tell` runs on its
    /// context if published; otherwise the loading driver reloads). False when not loaded.
    fn nudge_loaded(&self, id: &str, tell: impl FnOnce(&WorkflowCtx)) -> bool {
        let mut loaded = lock(&self.loaded);
        let Some(slot) = loaded.get_mut(id) else {
            return false;
        };
        slot.woken = true;
        if let Some(ctx) = &slot.ctx {
            tell(ctx);
        }
        true
    }

    /// Like [`nudge_loaded`](Self::nudge_loaded); an instance not loaded here is claimed and
    /// loaded if this node may (see [`resume`](Self::resume)).
    fn nudge(self: &Arc<Self>, id: &str, tell: impl FnOnce(&WorkflowCtx)) {
        if !self.nudge_loaded(id, tell) {
            self.resume(id);
        }
    }

    /// Acts on a wake-up from the store.
    fn on_wakeup(self: &Arc<Self>, w: Wakeup) {
        match w {
            Wakeup::Due { instance } => {
                if !self.is_loaded(&instance) {
                    self.resume(&instance);
                }
            }
            Wakeup::Signal { instance, signal } => {
                self.nudge(&instance, |ctx| ctx.deliver_signal(signal))
            }
            Wakeup::Cancel { instance, at } => self.nudge(&instance, |ctx| ctx.request_cancel(at)),
            Wakeup::ChildFinished { parent, child } => {
                self.nudge(&parent, |ctx| ctx.child_finished(&child))
            }
            Wakeup::Finished { instance, .. } => {
                // Its queue (if it came through one) may have room now.
                if self.queues_active.load(Ordering::SeqCst) {
                    self.admit_soon();
                }
                // An instance driven here announces its own end, with its outcome; only ends
                // written elsewhere (another node, an operator) need a read.
                if !self.is_loaded(&instance) && lock(&self.watchers).contains_key(&instance) {
                    self.recheck_watchers(vec![instance]);
                }
            }
            // A task's end: the queued step waiting for it reads it; a suspended instance is
            // resumed (the end made it due).
            Wakeup::TaskFinished { instance, .. } => {
                self.nudge(&instance, |ctx| ctx.task_ended.notify_waiters())
            }
            // Workers wait for these, not instances.
            Wakeup::TaskQueued { .. } => {}
            Wakeup::Changed => {
                self.claim_soon();
                if self.queues_active.load(Ordering::SeqCst) {
                    self.admit_soon();
                }
                // A task of a loaded instance may have ended elsewhere: its step reads it again.
                for slot in lock(&self.loaded).values() {
                    if let Some(ctx) = &slot.ctx {
                        ctx.task_ended.notify_waiters();
                    }
                }
                let watched: Vec<String> = lock(&self.watchers).keys().cloned().collect();
                if !watched.is_empty() {
                    self.recheck_watchers(watched);
                }
            }
        }
    }

    /// Reads the records of watched instances and announces those that have finished (ended
    /// by another node, or by an operator elsewhere).
    fn recheck_watchers(self: &Arc<Self>, ids: Vec<String>) {
        let inner = self.clone();
        self.handle.spawn(async move {
            for id in ids {
                match inner.store.get(&id).await {
                    Ok(Some(rec)) if rec.status.is_final() => {
                        inner.notify_watchers(&id, Outcome::of(&rec));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(instance = %id, error = %e, "cannot read instance"),
                }
            }
        });
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
        // Unfenced: the end bumps the epoch, so a node still driving it is fenced out.
        self.store.submit(None, ops).await?;
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

    /// Stops driving `id` here, writing nothing more: its task and background work are
    /// aborted. False when it was not loaded.
    pub(crate) fn abort_loaded(&self, id: &str) -> bool {
        let slot = lock(&self.loaded).remove(id);
        let Some(slot) = slot else {
            return false;
        };
        stop(slot);
        true
    }

    /// Like [`abort_loaded`](Self::abort_loaded), if the load writes under lease `epoch`;
    /// whether it did.
    fn abort_loaded_at(&self, id: &str, epoch: u64) -> bool {
        let slot = {
            let mut loaded = lock(&self.loaded);
            match loaded.get(id) {
                Some(slot) if slot.epoch == epoch => loaded.remove(id),
                _ => None,
            }
        };
        slot.map(stop).is_some()
    }

    /// Makes the timer task fire every timer due by now (after virtual time moved).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn tick_timers(&self) {
        let _ = self.timers.send(TimerMsg::Tick);
    }

    pub(crate) fn add_timer(&self, at: Millis, id: String) {
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
        self.notify_watchers(id, outcome);
        if let Some(parent) = parent {
            self.child_finished(parent, id);
        }
    }

    fn notify_watchers(&self, id: &str, outcome: Outcome) {
        if let Some(txs) = lock(&self.watchers).remove(id) {
            for tx in txs {
                let _ = tx.send(outcome.clone());
            }
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
    /// Keeps `task` (a background service of the runtime, e.g. the in-process worker) until
    /// shutdown, which aborts it.
    pub(crate) fn adopt(&self, task: tokio::task::AbortHandle) {
        lock(&self.tasks).push(task);
    }

    pub(crate) async fn shutdown(&self) -> Result<(), Error> {
        if self.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let slots: Vec<Slot> = lock(&self.loaded).drain().map(|(_, s)| s).collect();
        slots.into_iter().for_each(stop);
        lock(&self.watchers).clear();
        // After the writes already queued: others may claim this node's instances at once.
        if let Err(e) = self.store.release(&self.node, None).await {
            tracing::warn!(node = %self.node, error = %e, "cannot release the node's instances; \
                other nodes take them over when its lease ends");
        }
        self.store.close().await?;
        Ok(())
    }
}

/// Aborts a load's task and background work.
fn stop(slot: Slot) {
    if let Some(task) = slot.task {
        task.abort();
    }
    if let Some(ctx) = slot.ctx {
        for bg in ctx.take_background() {
            bg.abort();
        }
    }
}

/// Messages to the scheduler task.
enum TimerMsg {
    /// Claim and load the instance at this time (one this node suspended, or retries).
    At(Millis, String),
    /// Run a claim round at this time (the next timer of any suspended instance).
    Round(Millis),
    /// Run a claim round at this time unless a later heartbeat says otherwise (see
    /// [`Renewal::next_due`](crate::store::Renewal::next_due)): replaces the previous one.
    Watch(Option<Millis>),
    /// Run an admission round at this time (a rate limit lets a queue admit again).
    Admit(Millis),
    /// Fire whatever is due now.
    Tick,
}

/// Fires timers, acts on the store's wake-ups and polls for due instances nobody announced.
async fn run_scheduler(
    inner: Weak<Inner>,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<TimerMsg>,
    mut wakeups: Wakeups,
) {
    let mut heap: BinaryHeap<Reverse<(Millis, String)>> = BinaryHeap::new();
    // The latest wake-up asked for each instance: older heap entries are stale and skipped,
    // so an instance suspended again (or woken early) is not loaded for nothing.
    let mut latest: HashMap<String, Millis> = HashMap::new();
    // The earliest claim round asked for.
    let mut round: Option<Millis> = None;
    // When the last heartbeat said something falls due that nobody will announce.
    let mut watch: Option<Millis> = None;
    // The earliest admission round asked for (a rate limit's next slot).
    let mut admit: Option<Millis> = None;
    // A safety net only: the heartbeat's `next_due` and the store's wake-ups tell a node
    // everything it must act on, so an idle node sends nothing but its heartbeats.
    let poll = inner
        .upgrade()
        .and_then(|i| i.lease_ttl)
        .map(|ttl| (ttl * 3).clamp(Duration::from_millis(100), CLAIM_POLL));
    let mut next_poll = poll.map(|p| tokio::time::Instant::now() + p);
    let mut wakeups_open = true;
    loop {
        let next = heap
            .peek()
            .map(|Reverse((at, _))| *at)
            .into_iter()
            .chain(round)
            .chain(watch)
            .chain(admit)
            .min();
        let now = clock.now_ms();
        let wait = next.map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64));
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(TimerMsg::At(at, id)) => {
                    if latest.insert(id.clone(), at) != Some(at) {
                        heap.push(Reverse((at, id)));
                    }
                }
                Some(TimerMsg::Round(at)) => round = Some(round.map_or(at, |r| r.min(at))),
                Some(TimerMsg::Watch(at)) => watch = at,
                Some(TimerMsg::Admit(at)) => admit = Some(admit.map_or(at, |a| a.min(at))),
                Some(TimerMsg::Tick) => {}
                None => return,
            },
            w = wakeups.recv(), if wakeups_open => match w {
                Some(w) => {
                    let Some(inner) = inner.upgrade() else { return };
                    inner.on_wakeup(w);
                }
                None => wakeups_open = false,
            },
            _ = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = async {
                match next_poll {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                next_poll = poll.map(|p| tokio::time::Instant::now() + p);
                let Some(inner) = inner.upgrade() else { return };
                inner.claim_soon();
                inner.admit_soon();
            }
        }
        let now = clock.now_ms();
        if admit.is_some_and(|at| at <= now) {
            admit = None;
            let Some(inner) = inner.upgrade() else { return };
            inner.admit_soon();
        }
        if round.is_some_and(|at| at <= now) || watch.is_some_and(|at| at <= now) {
            round = round.filter(|at| *at > now);
            watch = watch.filter(|at| *at > now);
            let Some(inner) = inner.upgrade() else { return };
            inner.claim_soon();
        }
        if heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(inner) = inner.upgrade() else { return };
            while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                if let Some(Reverse((at, id))) = heap.pop()
                    && latest.get(&id) == Some(&at)
                {
                    latest.remove(&id);
                    inner.resume(&id);
                }
            }
        }
    }
}

/// Renews this node's leases every third of their time-to-live.
async fn heartbeat(inner: Weak<Inner>, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.is_closing() {
            return;
        }
        if let Err(e) = inner.renew().await {
            tracing::error!(node = %inner.node, error = %e, "cannot renew this node's leases");
        }
    }
}

/// Tells the engine that a drive ended, however it ended (returned, or aborted because the
/// lease was lost): its room may go to due work left in the store.
struct DriveEnded(Arc<Inner>);

impl Drop for DriveEnded {
    fn drop(&mut self) {
        self.0.room_freed();
    }
}

async fn drive(inner: Arc<Inner>, id: String, load: Load, load_gen: u64, epoch: u64) {
    let _ended = DriveEnded(inner.clone());
    let Ok(_permit) = inner.permits.clone().acquire_owned().await else {
        return;
    };
    let mut load = load;
    let fence = Fence {
        instance: id.clone(),
        node: inner.node.clone(),
        epoch,
    };
    loop {
        match drive_once(&inner, &id, load, load_gen, &fence).await {
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

async fn drive_once(
    inner: &Arc<Inner>,
    id: &str,
    load: Load,
    load_gen: u64,
    fence: &Fence,
) -> Next {
    // (A claim marked a stored instance running already.)
    let loaded = match load {
        Load::Known(loaded) => Ok(Some(*loaded)),
        Load::Store => inner.store.load(id).await,
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
    let ctx = WorkflowCtx::new(inner.clone(), def.name, def.version, loaded, fence.clone());
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
                if let Err((seq, msg)) = ctx.check_fully_replayed() {
                    let outcome = Outcome::error(Status::Incompatible, msg).at_seq(seq);
                    return finish(inner, &ctx, load_gen, parent, outcome).await;
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
                        inner.unload(id, load_gen);
                        return after_store_error(inner, id, &e, "checkpoint failed");
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
                            // Releases the instance: whoever it is due for claims it then.
                            let commit = ctx.submit(vec![WriteOp::SetStatus {
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
                    return after_store_error(inner, id, &e, "cannot suspend");
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
    let outcome = match h {
        Halt::Incompatible { seq, message } => {
            if !inner.replay_only() {
                tracing::error!(instance = %ctx.id, "{message}");
            }
            Outcome::error(Status::Incompatible, message).at_seq(seq)
        }
        Halt::Failed(msg) => Outcome::error(Status::Failed, msg),
        Halt::Cancelled(msg) => Outcome::error(Status::Cancelled, msg),
        Halt::Store(e) => {
            inner.unload(&ctx.id, load_gen);
            return after_store_error(inner, &ctx.id, &e, "checkpoint failed");
        }
        Halt::Frontier(seq) => {
            // Replay-only mode: the journal is exhausted; report without writing anything.
            inner.unload(&ctx.id, load_gen);
            let outcome = Outcome::error(
                Status::Running,
                format!("replay reached the end of the journal before seq {seq}"),
            )
            .at_seq(seq);
            inner.notify_watchers(&ctx.id, outcome);
            return Next::Done;
        }
    };
    finish(inner, ctx, load_gen, parent, outcome).await
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
            inner.unload(&ctx.id, load_gen);
            return after_store_error(inner, &ctx.id, &e, "checkpoint failed");
        }
    }
    let mut outcome = outcome;
    if outcome.status == Status::Failed && ctx.cancel_requested() {
        // Asked to cancel, the workflow returned an error (after compensating).
        outcome.status = Status::Cancelled;
    }
    if inner.replay_only() {
        // Nothing is written: the end is only reported to whoever waits for it.
        inner.unload(&ctx.id, load_gen);
        inner.notify_watchers(&ctx.id, outcome);
        return Next::Done;
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
    let commit = ctx.submit(ops);
    if let Err(e) = commit.await {
        inner.unload(&ctx.id, load_gen);
        return after_store_error(inner, &ctx.id, &e, "cannot record the end");
    }
    let woken = inner.unload_woken(&ctx.id, load_gen);
    inner.metrics.finished(ctx.workflow, outcome.status);
    inner.notify_finished(&ctx.id, outcome, parent.as_deref());
    if woken {
        // Asked to look again after the end was written (a retry can make it run again):
        // a fresh claim reads what the store says now.
        inner.resume(&ctx.id);
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
