//! The task-local workflow context: sequence numbers, the loaded journal, waiters.
//!
//! Every durable operation asks [`WorkflowCtx::begin`] for the next seq when it is *created*
//! (not when first polled), so `join!` assigns seqs in the order the futures are written.

use crate::engine::Inner;
use crate::journal::{EntryKind, JournalEntry};
use crate::store::{Commit, Fence, LoadedInstance, Millis, SignalRecord, StoreError, WriteOp};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

tokio::task_local! {
    static SCOPE: Scope;
    static BACKGROUND: ();
}

/// Where the current code runs.
#[derive(Clone)]
pub(crate) enum Scope {
    /// Inside a workflow body run by the engine.
    Workflow(Arc<WorkflowCtx>),
    /// Inside the body of a durable step.
    Step(Arc<StepInfo>),
}

/// The step that is running, as seen from its body.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// The workflow instance.
    pub instance: String,
    /// The step's seq in that instance's journal.
    pub seq: u32,
    /// The step's name.
    pub name: &'static str,
    /// 1-based attempt number.
    pub attempt: u32,
}

impl StepInfo {
    /// `instance/seq`: the same on every attempt and after every restart.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.instance, self.seq)
    }
}

pub(crate) fn current() -> Option<Scope> {
    SCOPE.try_with(|s| s.clone()).ok()
}

pub(crate) async fn in_scope<F: std::future::Future>(scope: Scope, fut: F) -> F::Output {
    SCOPE.scope(scope, fut).await
}

pub(crate) fn sync_scope<R>(scope: Scope, f: impl FnOnce() -> R) -> R {
    SCOPE.sync_scope(scope, f)
}

pub(crate) fn in_background() -> bool {
    BACKGROUND.try_with(|_| ()).is_ok()
}

pub(crate) async fn as_background<F: std::future::Future>(fut: F) -> F::Output {
    BACKGROUND.scope((), fut).await
}

/// Why an instance must stop being driven.
#[derive(Clone, Debug)]
pub(crate) enum Halt {
    /// The journal does not match the code, first at `seq`.
    Incompatible {
        /// Where the journal and the code part ways.
        seq: u32,
        /// What differs, and what to do.
        message: String,
    },
    /// An unrecoverable failure (a step that failed in a way its type cannot express).
    Failed(String),
    /// The store refused a checkpoint: unload and retry later.
    Store(StoreError),
    /// Replay-only mode reached an operation that is not journaled (seq).
    Frontier(u32),
    /// Cancelled where the workflow cannot receive the cancellation (a wait for a signal
    /// without timeout, a step whose error type cannot hold it).
    Cancelled(String),
}

/// A wait that asks whether the cancellation ends it.
pub(crate) enum Wait<'a> {
    /// A durable timer.
    Timer,
    /// A wait for the signal `name`, with or without timeout.
    Signal {
        /// The signal.
        name: &'a str,
        /// Whether the wait can give up (and so receive the cancellation).
        timeout: bool,
    },
}

/// The outcome of asking for the next seq.
pub(crate) enum Begin {
    /// Already recorded: replay this entry.
    Replay(JournalEntry),
    /// Not recorded: execute as `seq`.
    Fresh(u32),
    /// The instance is halting; the operation must never complete.
    Halted,
}

struct Waiter {
    wake_at: Option<Millis>,
    waker: Waker,
}

#[derive(Default)]
struct State {
    next_seq: u32,
    journal: HashMap<u32, JournalEntry>,
    max_recorded: u32,
    failed_attempts: HashMap<u32, u32>,
    signals: Vec<SignalRecord>,
    halt: Option<Halt>,
    inflight: usize,
    waiters: BTreeMap<u32, Waiter>,
    unawaited: Vec<Commit>,
    /// Writes of recorded values (`now`, `random`, `uuid`) that must be durable before the
    /// next step's side effect, since replay could not reproduce them.
    values: Vec<Commit>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Ids of every signal this context has been handed (loaded or delivered).
    seen_signals: HashSet<i64>,
    /// The task driving the instance: woken when it may become idle or halted.
    driver: Option<Waker>,
    /// Child workflow id → the seq waiting for it.
    child_waiters: HashMap<String, u32>,
    /// Seqs whose child finished since they last looked.
    children_done: HashSet<u32>,
    /// When cancellation was requested, if it was.
    cancel_at: Option<Millis>,
    /// The seq of the call that received the cancellation, once one did.
    cancel_seq: Option<u32>,
    /// The last seq taken when this load handed the cancellation over: timers up to it were
    /// waiting before (a `join!` sibling), so the cancellation ends them too.
    cancel_horizon: Option<u32>,
    /// Timers a cancellation ended early (journaled, so replay ends them at once too).
    ended_timers: HashSet<u32>,
    /// The last step (not background) whose outcome was an error: name and seq.
    failed_step: Option<(String, u32)>,
}

/// One loaded instance's durable state.
pub(crate) struct WorkflowCtx {
    pub(crate) id: String,
    /// The workflow's registered name.
    pub(crate) workflow: &'static str,
    /// This instance's children as stored when first needed in this load: one read for all
    /// the child calls a replay passes, instead of one each.
    children: tokio::sync::OnceCell<HashMap<String, crate::store::InstanceRecord>>,
    pub(crate) version: &'static str,
    pub(crate) recorded_version: String,
    pub(crate) engine: Arc<Inner>,
    /// How many times the instance was retried (part of child ids started after a retry).
    pub(crate) retries: u32,
    state: Mutex<State>,
    /// Turns true when cancellation is requested (wakes retry back-offs and short timers).
    cancel_tx: tokio::sync::watch::Sender<bool>,
    /// The lease this load writes under: every write of the instance is fenced by it.
    fence: Fence,
    /// Woken when a task of this instance ended: a queued step's attempt waits on it.
    pub(crate) task_ended: tokio::sync::Notify,
}

/// Counts an operation that is executing right now (a step, a short timer, background work):
/// while any exists, the instance is not idle and stays loaded.
pub(crate) struct InflightGuard {
    ctx: Arc<WorkflowCtx>,
    /// Work in another task (background) ends outside the driver's poll: wake the driver so
    /// it can see the instance became idle. Work inside the workflow future needs no wake.
    wake_driver: bool,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut st = self.ctx.lock();
        st.inflight = st.inflight.saturating_sub(1);
        if self.wake_driver
            && st.inflight == 0
            && let Some(w) = &st.driver
        {
            w.wake_by_ref();
        }
    }
}

/// An executing operation that turned into a durable wait (a queued step whose task waits
/// long for a worker): it stops counting as busy, so the instance may be unloaded while it
/// waits; dropping it makes the operation busy again and removes its waiter.
pub(crate) struct Parked {
    ctx: Arc<WorkflowCtx>,
    seq: u32,
}

impl Drop for Parked {
    fn drop(&mut self) {
        let mut st = self.ctx.lock();
        st.inflight += 1;
        st.waiters.remove(&self.seq);
    }
}

/// Removes a waiter when the waiting future completes or is dropped.
pub(crate) struct WaiterGuard {
    ctx: Arc<WorkflowCtx>,
    seq: u32,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.ctx.lock().waiters.remove(&self.seq);
    }
}

impl WorkflowCtx {
    pub(crate) fn new(
        engine: Arc<Inner>,
        workflow: &'static str,
        version: &'static str,
        loaded: LoadedInstance,
        fence: Fence,
    ) -> Arc<WorkflowCtx> {
        let mut st = State::default();
        for a in &loaded.attempts {
            *st.failed_attempts.entry(a.seq).or_default() += 1;
        }
        st.max_recorded = loaded.journal.iter().map(|e| e.seq).max().unwrap_or(0);
        st.journal = loaded.journal.into_iter().map(|e| (e.seq, e)).collect();
        st.seen_signals = loaded.signals.iter().map(|s| s.id).collect();
        st.signals = loaded.signals;
        st.cancel_at = loaded.record.cancel_requested;
        st.cancel_seq = loaded.record.cancel_seq;
        st.ended_timers = loaded.ended_timers.into_iter().collect();
        let (cancel_tx, _) = tokio::sync::watch::channel(st.cancel_at.is_some());
        Arc::new(WorkflowCtx {
            children: tokio::sync::OnceCell::new(),
            id: loaded.record.id,
            workflow,
            version,
            recorded_version: loaded.record.version,
            retries: loaded.record.retries,
            engine,
            state: Mutex::new(st),
            cancel_tx,
            fence,
            task_ended: tokio::sync::Notify::new(),
        })
    }

    /// Cancellation was requested: wake every wait so the waiting call can receive it.
    pub(crate) fn request_cancel(&self, at: Millis) {
        {
            let mut st = self.lock();
            if st.cancel_at.is_none() {
                st.cancel_at = Some(at);
            }
        }
        self.cancel_tx.send_replace(true);
        self.wake_all();
    }

    // Cancellation: the one place that decides which call receives it and which waits it
    // ends. Background work never receives it (its failure never fails the workflow). A
    // pending cancellation goes to the first step that starts executing (or retrying), which
    // returns it as its outcome; the last seq taken then is its horizon. It ends every wait
    // (timer, signal wait) that began before the horizon, or while it is pending; a timer's
    // end is journaled so replay ends it at once, a signal wait with timeout records that it
    // timed out, one without cannot return, so the instance ends cancelled. Timers started
    // after the handover (compensation code) run normally.

    /// Hands a pending cancellation to the step at `seq` (once): the write to journal beside
    /// its entry, if it receives it.
    pub(crate) fn receive_cancel(&self, seq: u32) -> Option<WriteOp> {
        if in_background() {
            return None;
        }
        let mut st = self.lock();
        if st.cancel_at.is_some() && st.cancel_seq.is_none() {
            st.cancel_seq = Some(seq);
            st.cancel_horizon = Some(st.next_seq);
            return Some(WriteOp::CancelDelivered {
                instance: self.id.clone(),
                seq,
            });
        }
        None
    }

    /// Whether the cancellation ends the wait at `seq` now (see above): a timer's end is
    /// journaled before any later step can run; a signal wait without timeout halts the
    /// instance as cancelled.
    pub(crate) fn cancel_ends_wait(&self, seq: u32, wait: Wait<'_>) -> bool {
        if matches!(wait, Wait::Timer) && self.lock().ended_timers.contains(&seq) {
            // Ended early on an earlier run.
            return true;
        }
        if in_background() {
            return false;
        }
        let ends = {
            let st = self.lock();
            st.cancel_at.is_some()
                && (st.cancel_seq.is_none() || st.cancel_horizon.is_some_and(|h| seq <= h))
        };
        if !ends {
            return false;
        }
        match wait {
            Wait::Timer => {
                if self.lock().ended_timers.insert(seq) {
                    self.record_value_write(vec![WriteOp::EndTimer {
                        instance: self.id.clone(),
                        seq,
                    }]);
                }
            }
            Wait::Signal { timeout: true, .. } => {}
            Wait::Signal {
                name,
                timeout: false,
            } => self.halt(Halt::Cancelled(format!(
                "cancelled while waiting for signal `{name}` (a wait without timeout \
                 cannot receive a cancellation; use orch::signal_with_timeout to run \
                 compensation code)"
            ))),
        }
        true
    }

    /// Whether cancellation was requested (delivered or not).
    pub(crate) fn cancel_requested(&self) -> bool {
        self.lock().cancel_at.is_some()
    }

    /// Resolves once cancellation is requested.
    pub(crate) async fn cancelled(&self) {
        let mut rx = self.cancel_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Notes a step whose outcome is an error (background work aside).
    pub(crate) fn note_failed_step(&self, name: &str, seq: u32) {
        if !in_background() {
            self.lock().failed_step = Some((name.to_string(), seq));
        }
    }

    /// The last step whose outcome was an error.
    pub(crate) fn failed_step(&self) -> Option<(String, u32)> {
        self.lock().failed_step.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now_ms(&self) -> Millis {
        self.engine.clock.now_ms()
    }

    /// A reproducible 64-bit value for the operation at `seq` (test runtime), else `None`.
    pub(crate) fn seed(&self, seq: u32) -> Option<u64> {
        if !self.engine.seeded() {
            return None;
        }
        // FNV-1a over the id, mixed with the seq (splitmix64 finaliser).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut z = h ^ u64::from(seq).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Some(z ^ (z >> 31))
    }

    /// Reserves the next seq for an operation of `kind` named `name`, checking it against the
    /// journal.
    pub(crate) fn begin(&self, kind: EntryKind, name: &str) -> Begin {
        let mut st = self.lock();
        if st.halt.is_some() {
            return Begin::Halted;
        }
        if in_background() {
            // Seqs taken inside a spawned task would race the workflow body.
            let msg = format!(
                "{} was called inside work passed to orch::background; background takes one \
                 step call (e.g. orch::background(record(order.clone()))): put several durable \
                 calls in a child workflow and pass that instead",
                describe(kind, name)
            );
            st.halt = Some(Halt::Failed(msg));
            wake(&st.driver);
            return Begin::Halted;
        }
        st.next_seq += 1;
        let seq = st.next_seq;
        match st.journal.remove(&seq) {
            // Replay-only: an operation not in the journal never runs; the rest of the
            // journal is still checked, and the driver reports where replay stopped.
            None if self.engine.replay_only() => Begin::Halted,
            None => Begin::Fresh(seq),
            Some(e) if e.kind == kind && e.name == name => Begin::Replay(e),
            Some(e) => {
                let msg = format!(
                    "at seq {seq} the journal recorded {} but the code now calls {}; {}",
                    describe(e.kind, &e.name),
                    describe(kind, name),
                    self.mismatch_advice(),
                );
                st.halt = Some(Halt::Incompatible { seq, message: msg });
                Begin::Halted
            }
        }
    }

    /// `patched(id)`: true for code paths recorded by (or running under) new code, false when
    /// replaying history that old code recorded without the marker. Consumes a seq only when
    /// the marker is (or gets) recorded.
    pub(crate) fn patch_marker(&self, id: &str) -> Option<Result<bool, u32>> {
        let mut st = self.lock();
        if st.halt.is_some() {
            return None;
        }
        let seq = st.next_seq + 1;
        match st.journal.get(&seq) {
            Some(e) if e.kind == EntryKind::Patch && e.name == id => {
                st.journal.remove(&seq);
                st.next_seq = seq;
                Some(Ok(true))
            }
            // History recorded by code that did not have this patch.
            Some(_) => Some(Ok(false)),
            // A gap below recorded seqs: old code passed here with an operation still in
            // flight (a parallel branch); it did not have the patch either.
            None if seq <= st.max_recorded => Some(Ok(false)),
            None if self.engine.replay_only() => None,
            None => {
                st.next_seq = seq;
                Some(Err(seq))
            }
        }
    }

    /// Called when the body has returned: a journal with entries the code never reached does
    /// not match the code either. The error carries the first such entry's seq.
    pub(crate) fn check_fully_replayed(&self) -> Result<(), (u32, String)> {
        let st = self.lock();
        if st.max_recorded > st.next_seq {
            let first = (st.next_seq + 1..=st.max_recorded).find_map(|s| st.journal.get(&s));
            let seq = first.map_or(st.next_seq + 1, |e| e.seq);
            let first = first
                .map(|e| format!(" (seq {}: {})", e.seq, describe(e.kind, &e.name)))
                .unwrap_or_default();
            return Err((
                seq,
                format!(
                    "the code finished after seq {} but the journal records {} operations{first}; {}",
                    st.next_seq,
                    st.max_recorded,
                    self.mismatch_advice()
                ),
            ));
        }
        Ok(())
    }

    /// What a journal that does not match the code means, and what to do: with another
    /// version, the code changed under the instance; with the same version, the code took
    /// another path for the same journal, so it is not deterministic.
    pub(crate) fn mismatch_advice(&self) -> String {
        if self.recorded_version == self.version {
            format!(
                "the workflow body is version {}, the one that recorded the journal, so the code \
                 took a different path for the same journal: either something the body calls \
                 changed (a helper function, a step's name or output type; the version hashes \
                 the body alone) or the body is not deterministic (it read the clock, a random \
                 value, a HashMap's order, an environment variable or a global outside a step \
                 or orch's recorded calls). Make that code deterministic — use \
                 orch::now/random/uuid, or read the value in a step — and branch with \
                 orch::patched for intended changes",
                self.version
            )
        } else {
            format!(
                "instance started under version {}, current code is version {}: deploy the \
                 version that started it to let it finish, or branch with orch::patched for \
                 old instances",
                self.recorded_version, self.version
            )
        }
    }

    /// Appends `entry` (and `extra` writes) to the journal; the commit resolves when durable.
    pub(crate) fn record(&self, entry: JournalEntry, extra: Vec<WriteOp>) -> Commit {
        let mut ops = Vec::with_capacity(1 + extra.len());
        ops.push(WriteOp::Append {
            instance: self.id.clone(),
            entry: entry.clone(),
        });
        ops.extend(extra);
        let _st = self.lock();
        // Submitting under the lock keeps this instance's writes in seq-decision order.
        self.submit(ops)
    }

    /// Submits writes of this instance, fenced by this load's lease.
    pub(crate) fn submit(&self, ops: Vec<WriteOp>) -> Commit {
        self.engine.store.submit(Some(self.fence.clone()), ops)
    }

    /// Appends without waiting. Later awaited commits imply this one (writes apply in order);
    /// the engine checks these before suspending or finishing.
    pub(crate) fn record_later(&self, entry: JournalEntry, extra: Vec<WriteOp>) {
        let commit = self.record(entry, extra);
        self.lock().unawaited.push(commit);
    }

    /// Queues a write that is not a journal entry, without waiting.
    pub(crate) fn write_later(&self, ops: Vec<WriteOp>) {
        let commit = self.submit(ops);
        self.lock().unawaited.push(commit);
    }

    /// Records a value replay cannot reproduce; the next step waits for it to be durable.
    pub(crate) fn record_value(&self, entry: JournalEntry, extra: Vec<WriteOp>) {
        let commit = self.record(entry, extra);
        self.lock().values.push(commit);
    }

    /// Queues a write that the next step's side effect must not overtake.
    fn record_value_write(&self, ops: Vec<WriteOp>) {
        let commit = self.submit(ops);
        self.lock().values.push(commit);
    }

    pub(crate) fn take_values(&self) -> Vec<Commit> {
        std::mem::take(&mut self.lock().values)
    }

    /// Every write not awaited yet (before suspending or finishing).
    pub(crate) fn take_unawaited(&self) -> Vec<Commit> {
        let mut st = self.lock();
        let mut all = std::mem::take(&mut st.unawaited);
        all.append(&mut st.values);
        all
    }

    pub(crate) fn failed_attempts(&self, seq: u32) -> u32 {
        self.lock().failed_attempts.get(&seq).copied().unwrap_or(0)
    }

    pub(crate) fn halt(&self, halt: Halt) {
        let mut st = self.lock();
        if st.halt.is_none() {
            st.halt = Some(halt);
        }
        wake(&st.driver);
    }

    /// Remembers the driver's waker (called on every poll of the instance).
    pub(crate) fn set_driver(&self, waker: &Waker) {
        let mut st = self.lock();
        if !st.driver.as_ref().is_some_and(|w| w.will_wake(waker)) {
            st.driver = Some(waker.clone());
        }
    }

    /// The first seq not taken yet (where a replay-only run stopped).
    pub(crate) fn next_seq(&self) -> u32 {
        self.lock().next_seq + 1
    }

    /// Whether any operation is executing (a step, a short timer, background work).
    pub(crate) fn busy(&self) -> bool {
        self.lock().inflight > 0
    }

    pub(crate) fn halted(&self) -> Option<Halt> {
        self.lock().halt.clone()
    }

    pub(crate) fn inflight(self: &Arc<Self>) -> InflightGuard {
        self.lock().inflight += 1;
        InflightGuard {
            ctx: self.clone(),
            wake_driver: false,
        }
    }

    /// Like [`inflight`](Self::inflight), for work running in its own task.
    pub(crate) fn inflight_elsewhere(self: &Arc<Self>) -> InflightGuard {
        self.lock().inflight += 1;
        InflightGuard {
            ctx: self.clone(),
            wake_driver: true,
        }
    }

    /// Registers the operation at `seq` as waiting (for a timer at `wake_at`, a signal or a
    /// child) with the waker to call when something it may be waiting for arrives.
    ///
    /// Register first, then look for what arrived: a delivery (signal, child's end,
    /// cancellation) between a look and a later registration would wake nobody, and inside a
    /// combinator that polls only woken futures (`join_all`, `FuturesUnordered`) the call
    /// would wait forever.
    pub(crate) fn wait(self: &Arc<Self>, seq: u32, wake_at: Option<Millis>, waker: &Waker) {
        self.lock().waiters.insert(
            seq,
            Waiter {
                wake_at,
                waker: waker.clone(),
            },
        );
    }

    /// The executing operation at `seq` (holding an [`InflightGuard`]) stops counting as busy
    /// until the returned guard is dropped; meanwhile it registers as a waiter with
    /// [`wait`](Self::wait) like any durable wait.
    pub(crate) fn park(self: &Arc<Self>, seq: u32) -> Parked {
        let mut st = self.lock();
        st.inflight = st.inflight.saturating_sub(1);
        Parked {
            ctx: self.clone(),
            seq,
        }
    }

    pub(crate) fn waiter_guard(self: &Arc<Self>, seq: u32) -> WaiterGuard {
        WaiterGuard {
            ctx: self.clone(),
            seq,
        }
    }

    /// Wakes every waiter (a signal or a child's result may have arrived).
    pub(crate) fn wake_all(&self) {
        let st = self.lock();
        for w in st.waiters.values() {
            w.waker.wake_by_ref();
        }
    }

    /// `Some(earliest timer)` when nothing is executing and the body only waits on durable
    /// things, so the instance can be unloaded; `Some(None)` when it waits on signals or
    /// children only; `None` when it is busy.
    pub(crate) fn idle(&self) -> Option<Option<Millis>> {
        let st = self.lock();
        if st.inflight > 0 || st.waiters.is_empty() {
            return None;
        }
        Some(st.waiters.values().filter_map(|w| w.wake_at).min())
    }

    /// Hands over a signal stored for this instance; one it has seen already (loaded from
    /// the store, or delivered before) is ignored, so no signal is taken twice.
    pub(crate) fn deliver_signal(&self, signal: SignalRecord) {
        {
            let mut st = self.lock();
            if !st.seen_signals.insert(signal.id) {
                return;
            }
            st.signals.push(signal);
        }
        self.wake_all();
    }

    /// The stored record of child `child` as of this load's first look at its children.
    pub(crate) async fn child_snapshot(
        &self,
        child: &str,
    ) -> Result<Option<crate::store::InstanceRecord>, StoreError> {
        let children = self
            .children
            .get_or_try_init(|| async {
                let filter = crate::store::ListFilter {
                    parent: Some(self.id.clone()),
                    ..Default::default()
                };
                let list = self.engine.store.list(filter).await?;
                Ok::<_, StoreError>(list.into_iter().map(|r| (r.id.clone(), r)).collect())
            })
            .await?;
        Ok(children.get(child).cloned())
    }

    /// Notes that `seq` waits for the child instance `child`.
    pub(crate) fn wait_for_child(&self, child: &str, seq: u32) {
        self.lock().child_waiters.insert(child.to_string(), seq);
    }

    /// The child `child` finished: wake only the operation waiting for it.
    pub(crate) fn child_finished(&self, child: &str) {
        let mut st = self.lock();
        if let Some(seq) = st.child_waiters.get(child).copied() {
            st.children_done.insert(seq);
            if let Some(w) = st.waiters.get(&seq) {
                w.waker.wake_by_ref();
            }
        }
    }

    /// Whether the child awaited at `seq` finished since the last call.
    pub(crate) fn take_child_done(&self, seq: u32) -> bool {
        self.lock().children_done.remove(&seq)
    }

    /// Waits for background work, watching for a halt.
    pub(crate) fn poll_background(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut st = self.lock();
        st.background
            .retain_mut(|h| std::pin::Pin::new(h).poll(cx).is_pending());
        if st.background.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Removes and returns the oldest unconsumed signal named `name`.
    pub(crate) fn take_signal(&self, name: &str) -> Option<SignalRecord> {
        let mut st = self.lock();
        let pos = st.signals.iter().position(|s| s.name == name)?;
        Some(st.signals.remove(pos))
    }

    pub(crate) fn add_background(&self, handle: tokio::task::JoinHandle<()>) {
        self.lock().background.push(handle);
    }

    pub(crate) fn take_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut self.lock().background)
    }
}

fn wake(waker: &Option<Waker>) {
    if let Some(w) = waker {
        w.wake_by_ref();
    }
}

fn describe(kind: EntryKind, name: &str) -> String {
    if name.is_empty() {
        format!("`{kind}()`")
    } else {
        format!("{kind} `{name}`")
    }
}
