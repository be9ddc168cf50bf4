//! # Testing workflows
//!
//! Enable the `testing` feature in your dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! orch-runtime = { version = "0.1", features = ["testing"] }
//! ```
//!
//! A workflow is an async function, so the plainest test calls it: outside a runtime its steps
//! run as ordinary calls. The tools here test what plain calls cannot: durability.
//!
//! - [`TestRuntime`]: a runtime on the in-memory store with a **virtual clock**. A workflow
//!   that sleeps three days, or waits a week for a signal that never comes, finishes at once and
//!   deterministically; [`TestRuntime::advance`] moves time by hand so you can look at an
//!   instance in between. `random()` and `uuid()` are reproducible.
//! - **Step mocks**: every `#[step] fn charge_payment` comes with
//!   `charge_payment::mock(|order, amount| async { … })`, checked by the compiler against the
//!   step's own signature, and `charge_payment::fail_first(k, || Err(…))`.
//!   [`TestRuntime::calls`] counts how often a step's body (or its mock) ran.
//! - [`check_recovery`]: runs a workflow once, then crashes it after every checkpoint, resumes
//!   it from the journal and checks the result, the journal and how often each step ran.
//! - [`replay`]: replays an instance exported from a real store (`Runtime::export`) against
//!   the current code and reports the first incompatibility: run it before deploying a change.
//! - [`History`]: the journal with readable assertions.
//!
//! ```standalone_crate
//! use orch_runtime::prelude::*;
//! use orch_runtime::testing::TestRuntime;
//! use std::time::Duration;
//!
//! #[step]
//! async fn charge(cents: u64) -> Result<String, StepError> {
//!     Ok(format!("charged {cents}")) // a real HTTP call in production
//! }
//!
//! #[workflow]
//! async fn subscription(cents: u64) -> Result<Vec<String>, StepError> {
//!     let mut receipts = Vec::new();
//!     for _ in 0..3 {
//!         receipts.push(charge(cents).await?);
//!         orch::sleep(Duration::from_secs(30 * 24 * 3600)).await; // a month
//!     }
//!     Ok(receipts)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), orch_runtime::Error> {
//! // Three months pass in an instant; the first charge attempt fails and is retried.
//! let t = TestRuntime::builder()
//!     .mock(charge::fail_first(1, || Err(StepError::retryable("gateway timeout"))))
//!     .build()
//!     .await?;
//! let run = t.start(Subscription, 999).await?;
//! let receipts = run.result().await?.expect("charged three times");
//! assert_eq!(receipts, ["charged 999", "charged 999", "charged 999"]);
//! assert_eq!(t.calls("charge"), 4);
//! let history = t.history(run.id()).await?;
//! history.assert_steps(&["charge", "charge", "charge"]);
//! history.assert_attempts("charge", 4);
//! assert_eq!(history.errors_of("charge"), ["gateway timeout"]);
//! # Ok(()) }
//! ```
//!
//! Mocks replace a step with a closure of the same signature, and a test can advance time by
//! hand:
//!
//! ```standalone_crate
//! use orch_runtime::prelude::*;
//! use orch_runtime::testing::TestRuntime;
//! use std::time::Duration;
//!
//! #[step]
//! async fn remind(user: &str) -> Result<(), StepError> {
//!     unreachable!("sends an e-mail in production; mocked below")
//! }
//!
//! #[workflow]
//! async fn trial(user: String) -> Result<String, StepError> {
//!     let paid: Option<bool> = orch::signal_with_timeout("paid", Duration::from_secs(7 * 86_400)).await;
//!     if paid.is_none() {
//!         remind(&user).await?;
//!         return Ok("reminded".into());
//!     }
//!     Ok("paid".into())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), orch_runtime::Error> {
//! let t = TestRuntime::builder()
//!     .mock(remind::mock(|_user| async { Ok(()) }))
//!     .build()
//!     .await?;
//! let run = t.start(Trial, "ann".to_string()).await?;
//! t.advance(Duration::from_secs(6 * 86_400)).await;
//! assert_eq!(run.status().await?, Status::Suspended); // still waiting after six days
//! t.advance(Duration::from_secs(86_400)).await;
//! assert_eq!(run.result().await?, Ok("reminded".to_string()));
//! assert_eq!(t.calls("remind"), 1);
//! # Ok(()) }
//! ```
//!
//! Crash-point exploration checks that a workflow survives a crash anywhere:
//!
//! ```standalone_crate
//! use orch_runtime::prelude::*;
//! use orch_runtime::testing::check_recovery;
//!
//! #[step]
//! async fn reserve(qty: u32) -> Result<u32, StepError> { Ok(qty) }
//! #[step]
//! async fn ship(qty: u32) -> Result<String, StepError> { Ok(format!("{qty} shipped")) }
//!
//! #[workflow]
//! async fn order(qty: u32) -> Result<String, StepError> {
//!     let n = reserve(qty).await?;
//!     let key = orch::uuid().await;
//!     let label = ship(n).await?;
//!     Ok(format!("{label} ({key})"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let report = check_recovery(Order, 2).run().await.expect("recovers from any crash");
//! assert_eq!(report.crash_points, 4); // before anything, after each of the 3 checkpoints
//! # }
//! ```

use crate::engine::{Clock, TestHooks};
use crate::error::Error;
use crate::replayer::Replayed;
use crate::runtime::{Runtime, RuntimeBuilder};
use crate::store::memory::MemoryStore;
use crate::store::{
    AttemptRecord, EntryKind, Export, InstanceRecord, JournalEntry, Status, Store, WriteOp,
};
use crate::workflow::Workflow;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::__private::MockEntry;

/// Where virtual time starts unless told otherwise: 2026-01-01T00:00:00Z.
const DEFAULT_START_MS: i64 = 1_767_225_600_000;

/// Configures a [`TestRuntime`].
#[derive(Debug, Default)]
pub struct TestRuntimeBuilder {
    mocks: Vec<MockEntry>,
    start_ms: Option<i64>,
    store: Option<Arc<MemoryStore>>,
}

impl TestRuntimeBuilder {
    /// Replaces a step by a double: `.mock(charge_payment::mock(|order, amount| async { … }))`.
    pub fn mock(mut self, mock: MockEntry) -> Self {
        self.mocks.push(mock);
        self
    }

    /// Starts virtual time at `start` (default 2026-01-01T00:00:00Z).
    pub fn start_at(mut self, start: SystemTime) -> Self {
        let ms = start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.start_ms = Some(ms);
        self
    }

    fn with_store(mut self, store: Arc<MemoryStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Pauses tokio's clock (the test must run on a current-thread runtime, which
    /// `#[tokio::test]` is) and builds the runtime. Unfinished instances already in the store
    /// are resumed, as on a real restart.
    pub async fn build(self) -> Result<TestRuntime, Error> {
        pause_time()?;
        let store = self.store.unwrap_or_default();
        let mut mocks = HashMap::new();
        for m in self.mocks {
            mocks.insert(m.step, m.call);
        }
        let hooks = TestHooks {
            seeded: true,
            replay_only: false,
            mocks,
            calls: Default::default(),
        };
        let mut builder: RuntimeBuilder = Runtime::builder().store(store.clone());
        builder.clock = Clock::Tokio {
            base_ms: self.start_ms.unwrap_or(DEFAULT_START_MS),
            base: tokio::time::Instant::now(),
        };
        builder.test = Some(hooks);
        // Virtual time: leases never end, and nothing polls.
        builder.lease_ttl = None;
        let rt = builder.build().await?;
        Ok(TestRuntime { rt, store })
    }
}

fn pause_time() -> Result<(), Error> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::TestSetup("TestRuntime must be built inside a tokio runtime (#[tokio::test])".into())
    })?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return Err(Error::TestSetup(
            "TestRuntime needs a current-thread tokio runtime for its virtual clock: use \
             #[tokio::test] without flavor = \"multi_thread\""
                .into(),
        ));
    }
    // Already paused (e.g. #[tokio::test(start_paused = true)])? Then time does not move.
    let before = tokio::time::Instant::now();
    std::thread::sleep(Duration::from_micros(200));
    if tokio::time::Instant::now() != before {
        tokio::time::pause();
    }
    Ok(())
}

/// A [`Runtime`] on the in-memory store with a virtual clock and step mocks. Derefs to
/// [`Runtime`], so `start`, `signal`, `journal` … work as usual.
pub struct TestRuntime {
    rt: Runtime,
    store: Arc<MemoryStore>,
}

impl std::ops::Deref for TestRuntime {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.rt
    }
}

impl TestRuntime {
    /// A test runtime without mocks.
    pub async fn new() -> Result<TestRuntime, Error> {
        Self::builder().build().await
    }

    /// A builder, to add mocks or choose when virtual time starts.
    pub fn builder() -> TestRuntimeBuilder {
        TestRuntimeBuilder::default()
    }

    /// Moves virtual time forward by `by`, firing every timer that falls due on the way, in
    /// order, and letting each woken workflow run until it waits again (so timers it sets on
    /// the way fire too, if they fall within `by`).
    pub async fn advance(&self, by: Duration) {
        // Work already started runs at the current time first.
        self.settle().await;
        // With tokio's clock paused, sleeping lets it jump from timer to timer, running every
        // task woken at each one before the next jump.
        tokio::time::sleep(by).await;
        // Tokio rounds timer deadlines up to its next tick; fire what is due by the clock.
        self.rt.inner.tick_timers();
        self.settle().await;
    }

    /// Lets every ready workflow run until it waits on something durable, without moving
    /// time: returns once no loaded instance is busy and nothing was written for a while.
    pub async fn settle(&self) {
        for _ in 0..1000 {
            let before = self.store.writes();
            for _ in 0..32 {
                tokio::task::yield_now().await;
            }
            if self.store.writes() == before && !self.rt.inner.any_busy() {
                return;
            }
        }
    }

    /// The virtual time now.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.rt.inner.clock.now_ms().max(0) as u64)
    }

    /// How many times the body (or mock) of the step named `step` has run, all attempts of all
    /// instances counted.
    pub fn calls(&self, step: &str) -> u32 {
        self.all_calls().get(step).copied().unwrap_or(0)
    }

    /// Step calls by name.
    pub fn all_calls(&self) -> BTreeMap<String, u32> {
        self.rt
            .inner
            .test
            .as_ref()
            .map(|t| {
                let calls = t.calls.lock().unwrap_or_else(|e| e.into_inner());
                calls.iter().map(|(k, v)| (k.to_string(), *v)).collect()
            })
            .unwrap_or_default()
    }

    /// The instance's record, journal and failed attempts, with assertions.
    pub async fn history(&self, id: &str) -> Result<History, Error> {
        let loaded = self
            .rt
            .inner
            .store
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        Ok(History {
            record: loaded.record,
            journal: loaded.journal,
            attempts: loaded.attempts,
        })
    }

    /// The in-memory store underneath.
    pub fn store(&self) -> &Arc<MemoryStore> {
        &self.store
    }
}

/// An instance's record and journal, for assertions with readable failure output.
#[derive(Clone, Debug)]
pub struct History {
    /// The instance.
    pub record: InstanceRecord,
    /// Its journal, by seq.
    pub journal: Vec<JournalEntry>,
    /// Failed attempts, by (seq, attempt).
    pub attempts: Vec<AttemptRecord>,
}

impl History {
    /// Names of the steps in the journal, by seq.
    pub fn steps(&self) -> Vec<&str> {
        self.journal
            .iter()
            .filter(|e| e.kind == EntryKind::Step)
            .map(|e| e.name.as_str())
            .collect()
    }

    /// Attempts the step named `step` took, over all its calls.
    pub fn attempts_of(&self, step: &str) -> u32 {
        self.journal
            .iter()
            .filter(|e| e.kind == EntryKind::Step && e.name == step)
            .map(|e| e.attempts)
            .sum()
    }

    /// Errors of the failed attempts of the step named `step`, in order.
    pub fn errors_of(&self, step: &str) -> Vec<&str> {
        let seqs: Vec<u32> = self
            .journal
            .iter()
            .filter(|e| e.name == step)
            .map(|e| e.seq)
            .collect();
        self.attempts
            .iter()
            .filter(|a| seqs.contains(&a.seq))
            .map(|a| a.error.as_str())
            .collect()
    }

    /// Panics, showing the whole journal, unless the steps are exactly `expected`.
    #[track_caller]
    pub fn assert_steps(&self, expected: &[&str]) {
        let steps = self.steps();
        if steps != expected {
            panic!(
                "instance `{}`: expected steps {expected:?}, journaled {steps:?}\n{self}",
                self.record.id
            );
        }
    }

    /// Panics, showing the whole journal, unless the instance is in `status`.
    #[track_caller]
    pub fn assert_status(&self, status: Status) {
        if self.record.status != status {
            panic!(
                "instance `{}`: expected status {status}, found {}{}\n{self}",
                self.record.id,
                self.record.status,
                self.record
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }

    /// Panics unless the step named `step` took `attempts` attempts in all.
    #[track_caller]
    pub fn assert_attempts(&self, step: &str, attempts: u32) {
        let found = self.attempts_of(step);
        if found != attempts {
            panic!(
                "instance `{}`: expected {attempts} attempt(s) of `{step}`, found {found}\n{self}",
                self.record.id
            );
        }
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "journal of `{}` ({} {}):",
            self.record.id, self.record.workflow, self.record.status
        )?;
        writeln!(
            f,
            "  {:>4}  {:<10} {:<24} {:>8}  outcome",
            "seq", "kind", "name", "attempts"
        )?;
        for e in &self.journal {
            let outcome: String = e.outcome.chars().take(60).collect();
            writeln!(
                f,
                "  {:>4}  {:<10} {:<24} {:>8}  {outcome}",
                e.seq,
                e.kind.as_str(),
                e.name,
                e.attempts
            )?;
            for a in self.attempts.iter().filter(|a| a.seq == e.seq) {
                writeln!(
                    f,
                    "  {:>4}  {:<10} attempt {} failed: {}",
                    "", "", a.attempt, a.error
                )?;
            }
        }
        if let Some(err) = &self.record.error {
            writeln!(f, "  error: {err}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Crash-point exploration.

/// A crash-recovery check of one workflow and input; see [`check_recovery`].
pub struct RecoveryCheck<W: Workflow> {
    workflow: W,
    input: W::Input,
    mocks: Vec<MockEntry>,
    signals: Vec<(String, serde_json::Value)>,
}

/// Runs workflow `W` with `input` once to record the reference result, then for every
/// checkpoint k simulates a crash right after k — which is also the state after a crash
/// between the side effect of the next step and its checkpoint — resumes from the journal
/// in a fresh runtime, and checks that
/// - the final output equals the reference,
/// - the journal equals the reference (recorded `now()` values aside),
/// - no step's body ran more often than the crash model allows: steps checkpointed before the
///   crash not at all, the others as often as in the reference run.
///
/// On failure the error names the crash point and the diverging entry.
///
/// Limits: a child workflow's own checkpoints are not crash points (the child is re-created
/// from scratch in each run), crashes between two failed attempts of one step are not
/// modelled, and outputs that contain `now()` may legitimately differ after a crash.
pub fn check_recovery<W: Workflow>(workflow: W, input: W::Input) -> RecoveryCheck<W> {
    RecoveryCheck {
        workflow,
        input,
        mocks: Vec::new(),
        signals: Vec::new(),
    }
}

/// What [`check_recovery`] verified.
#[derive(Clone, Debug)]
pub struct RecoveryReport {
    /// Crash points tried (journal length + 1: before the first checkpoint and after each).
    pub crash_points: usize,
    /// The reference output, as JSON.
    pub output: String,
    /// The reference journal.
    pub journal: Vec<JournalEntry>,
}

/// Why [`check_recovery`] failed.
#[derive(Clone, Debug)]
pub struct RecoveryFailure {
    /// After how many checkpoints the simulated crash happened (None: the reference run).
    pub crash_after: Option<usize>,
    /// What differed.
    pub problem: String,
}

impl fmt::Display for RecoveryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.crash_after {
            None => write!(f, "the reference run failed: {}", self.problem),
            Some(k) => write!(
                f,
                "after a crash following checkpoint {k} (i.e. before the next step's checkpoint): {}",
                self.problem
            ),
        }
    }
}

impl std::error::Error for RecoveryFailure {}

impl<W: Workflow + Clone> RecoveryCheck<W>
where
    W::Input: Clone,
{
    /// Step doubles for every run. The runs share them, so a double's state carries over
    /// like a real service's: a `fail_first` count used up before the crash stays used up.
    pub fn mocks(mut self, mocks: Vec<MockEntry>) -> Self {
        self.mocks = mocks;
        self
    }

    /// A signal sent right after the start (kept until the workflow waits for it).
    pub fn signal<T: Serialize>(mut self, name: &str, payload: T) -> Self {
        let value = serde_json::to_value(payload).unwrap_or(serde_json::Value::Null);
        self.signals.push((name.to_string(), value));
        self
    }

    async fn runtime(
        &self,
        store: Option<Arc<MemoryStore>>,
        start_ms: Option<i64>,
    ) -> Result<TestRuntime, RecoveryFailure> {
        let mut b = TestRuntime::builder();
        b.start_ms = start_ms;
        for m in &self.mocks {
            b = b.mock(m.clone());
        }
        if let Some(store) = store {
            b = b.with_store(store);
        }
        b.build().await.map_err(|e| RecoveryFailure {
            crash_after: None,
            problem: e.to_string(),
        })
    }

    /// Runs the check.
    pub async fn run(self) -> Result<RecoveryReport, RecoveryFailure> {
        const ID: &str = "recovery-check";
        let fail = |k: Option<usize>, problem: String| RecoveryFailure {
            crash_after: k,
            problem,
        };
        // The reference run.
        let t = self.runtime(None, None).await?;
        let run = t
            .start_with_id(self.workflow.clone(), ID, self.input.clone())
            .await
            .map_err(|e| fail(None, e.to_string()))?;
        for (name, payload) in &self.signals {
            t.signal(ID, name, payload)
                .await
                .map_err(|e| fail(None, e.to_string()))?;
        }
        let record = t.wait(ID).await.map_err(|e| fail(None, e.to_string()))?;
        drop(run);
        let output = record.output.clone().ok_or_else(|| {
            fail(
                None,
                format!(
                    "the workflow ended {} without an output: {}",
                    record.status,
                    record.error.clone().unwrap_or_default()
                ),
            )
        })?;
        let history = t.history(ID).await.map_err(|e| fail(None, e.to_string()))?;
        let order = t.store().commit_order(ID);
        let by_seq: HashMap<u32, &JournalEntry> =
            history.journal.iter().map(|e| (e.seq, e)).collect();
        let reference_calls = t.all_calls();
        t.shutdown().await.map_err(|e| fail(None, e.to_string()))?;

        for k in 0..=order.len() {
            let prefix: Vec<&JournalEntry> = order[..k]
                .iter()
                .filter_map(|seq| by_seq.get(seq).copied())
                .collect();
            // The store as the crash left it: the instance, running, with k checkpoints.
            let attempts = history
                .attempts
                .iter()
                .filter(|a| prefix.iter().any(|e| e.seq == a.seq));
            let seeded = store_as_crashed(&history.record, prefix.iter().copied(), attempts).await;
            let store = seeded.map_err(|e| fail(Some(k), format!("cannot seed the store: {e}")))?;
            // Resume when the crash left off: at the last checkpoint's time.
            let resume_at = prefix.last().map(|e| e.finished_at);
            let t = self.runtime(Some(store), resume_at).await?;
            // Signals the prefix has not consumed yet are sent again.
            let mut consumed: HashMap<&str, usize> = HashMap::new();
            for e in prefix.iter().filter(|e| e.kind == EntryKind::Signal) {
                *consumed.entry(e.name.as_str()).or_default() += 1;
            }
            for (name, payload) in &self.signals {
                match consumed.get_mut(name.as_str()) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => t
                        .signal(ID, name, payload)
                        .await
                        .map_err(|e| fail(Some(k), e.to_string()))?,
                }
            }
            let resumed = t.wait(ID).await.map_err(|e| fail(Some(k), e.to_string()))?;
            if resumed.output.as_deref() != Some(output.as_str()) {
                return Err(fail(
                    Some(k),
                    format!(
                        "the output differs: reference {output}, after recovery {} ({} {})",
                        resumed.output.as_deref().unwrap_or("none"),
                        resumed.status,
                        resumed.error.as_deref().unwrap_or("")
                    ),
                ));
            }
            let after = t
                .history(ID)
                .await
                .map_err(|e| fail(Some(k), e.to_string()))?;
            if let Some(problem) = journal_difference(&history.journal, &after.journal) {
                return Err(fail(Some(k), problem));
            }
            // Steps may run only as often as the crash model allows.
            for (step, calls) in t.all_calls() {
                let reference = reference_calls.get(&step).copied().unwrap_or(0);
                let done_before: u32 = prefix
                    .iter()
                    .filter(|e| e.kind == EntryKind::Step && e.name == step)
                    .map(|e| e.attempts)
                    .sum();
                let allowed = reference.saturating_sub(done_before);
                if calls > allowed {
                    return Err(fail(
                        Some(k),
                        format!(
                            "step `{step}` ran {calls} time(s) after the restart, but only \
                             {allowed} were allowed ({reference} in the reference run, {done_before} \
                             already checkpointed before the crash): a checkpointed step ran again"
                        ),
                    ));
                }
            }
            t.shutdown()
                .await
                .map_err(|e| fail(Some(k), e.to_string()))?;
        }
        Ok(RecoveryReport {
            crash_points: order.len() + 1,
            output,
            journal: history.journal,
        })
    }
}

/// A fresh store holding `record` as a crash would leave it: running, with `journal` and
/// `attempts` and nothing else (no output, status, timer or parent).
async fn store_as_crashed<'a>(
    record: &InstanceRecord,
    journal: impl Iterator<Item = &'a JournalEntry>,
    attempts: impl Iterator<Item = &'a AttemptRecord>,
) -> Result<Arc<MemoryStore>, crate::store::StoreError> {
    let store = Arc::new(MemoryStore::new());
    let rec = InstanceRecord {
        parent: None,
        ..InstanceRecord::new(
            record.id.clone(),
            record.workflow.clone(),
            record.version.clone(),
            record.input.clone(),
            record.created_at,
        )
    };
    let id = rec.id.clone();
    store.create(rec, None, Vec::new()).await?;
    let mut ops: Vec<WriteOp> = journal
        .map(|e| WriteOp::Append {
            instance: id.clone(),
            entry: e.clone(),
        })
        .collect();
    ops.extend(attempts.map(|a| WriteOp::Attempt {
        instance: id.clone(),
        record: a.clone(),
    }));
    store.submit(None, ops).await?;
    Ok(store)
}

/// The first difference between two journals. Time-valued entries (`now()`, timer and
/// deadline fire times) may differ: a resumed run does not spend exactly the same time.
fn journal_difference(reference: &[JournalEntry], after: &[JournalEntry]) -> Option<String> {
    for (i, r) in reference.iter().enumerate() {
        let Some(a) = after.get(i) else {
            return Some(format!(
                "the journal ends after {} entries; the reference continues with seq {} ({} `{}`)",
                after.len(),
                r.seq,
                r.kind,
                r.name
            ));
        };
        let same_value = r.kind.records_time() || r.outcome == a.outcome;
        if r.seq != a.seq || r.kind != a.kind || r.name != a.name || !same_value {
            return Some(format!(
                "journal entry {} differs: reference seq {} {} `{}` = {}, after recovery seq {} {} `{}` = {}",
                i + 1,
                r.seq,
                r.kind,
                r.name,
                r.outcome,
                a.seq,
                a.kind,
                a.name,
                a.outcome
            ));
        }
    }
    if after.len() > reference.len() {
        let extra = &after[reference.len()];
        return Some(format!(
            "the journal has an extra entry: seq {} ({} `{}`)",
            extra.seq, extra.kind, extra.name
        ));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Replayer.

/// What [`replay`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayReport {
    /// Journal entries replayed.
    pub replayed: usize,
    /// The workflow finished within the journal (the instance had finished).
    pub finished: bool,
    /// For a finished instance: whether the current code produced the recorded output.
    pub same_output: Option<bool>,
}

/// Replays an instance exported with `Runtime::export` against the code in this binary,
/// without calling any step, and reports the first incompatibility as an error. Use it in a
/// unit test with exports of in-flight instances before deploying a change.
/// (`Runtime::check_compatibility` does the same for every waiting instance of a store.)
pub async fn replay(export_json: &str) -> Result<ReplayReport, Error> {
    let export: Export = serde_json::from_str(export_json).map_err(|e| Error::InvalidInput {
        workflow: "export".into(),
        detail: format!("not an orch instance export: {e}"),
    })?;
    let id = export.record.id.clone();
    let registry = crate::workflow::Registry::collect()?;
    // The instance as a crash would leave it: running, with its journal, failed attempts and
    // ended timers, and nothing else (no output, status, parent or pending signal).
    let loaded = crate::store::LoadedInstance {
        record: InstanceRecord::new(
            export.record.id.clone(),
            export.record.workflow.clone(),
            export.record.version.clone(),
            export.record.input.clone(),
            export.record.created_at,
        ),
        journal: export.journal.clone(),
        attempts: export.attempts.clone(),
        signals: Vec::new(),
        ended_timers: export.ended_timers.clone(),
    };
    let replayed = crate::replayer::Replayer::new(registry, 1)
        .replay(loaded)
        .await;
    match replayed {
        Replayed::Frontier { next_seq } => Ok(ReplayReport {
            replayed: export.journal.iter().filter(|e| e.seq < next_seq).count(),
            finished: false,
            same_output: None,
        }),
        Replayed::Finished { output, .. } => Ok(ReplayReport {
            replayed: export.journal.len(),
            finished: true,
            same_output: export.record.output.as_ref().map(|o| *o == output),
        }),
        Replayed::Incompatible { message, .. } => Err(Error::Incompatible { id, message }),
        // The recorded run ended the same way: that is what its journal says, not a change.
        Replayed::Failed(message) if export.record.error.as_ref() == Some(&message) => {
            Ok(ReplayReport {
                replayed: export.journal.len(),
                finished: true,
                same_output: None,
            })
        }
        Replayed::Failed(message) => Err(Error::Failed { id, message }),
        Replayed::UnknownWorkflow(message) => Err(Error::Failed { id, message }),
        Replayed::Stuck => Err(Error::Failed {
            id,
            message: format!(
                "the replay did not reach a durable call or the end within {} s",
                crate::replayer::REPLAY_TIMEOUT.as_secs()
            ),
        }),
    }
}
