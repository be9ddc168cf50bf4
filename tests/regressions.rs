//! Regression tests for defects found in review. Each test names what broke; the store
//! wrapper below delays or fails single store calls to make the race windows deterministic.

use futures_util::future::BoxFuture;
use orch_runtime::EntryKind;
use orch_runtime::prelude::*;
use orch_runtime::store::memory::MemoryStore;
use orch_runtime::store::task::{
    Leased, QueueStats, TaskQueue, TaskRecord, TaskResult, WorkerTerms,
};
use orch_runtime::store::{
    Aggregate, AttributeMap, AuditRecord, Claimed, Commit, Created, Details, Fence, InstanceRecord,
    JournalEntry, Lease, LeaseTerms, ListFilter, LoadedInstance, Millis, NodeId, NodeRecord, Query,
    Stats, StatsQuery, StatusCount, Store, StoreAdmin, StoreError, StoreMetrics, Wakeups, WriteOp,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
#[path = "support/wait.rs"]
mod wait;
use wait::{PATIENCE, wait_until};

#[derive(Default)]
struct Faults {
    /// The acknowledgement of the first signal with this name waits for `release`.
    slow_signal: Option<&'static str>,
    /// Whether that first signal came.
    slowed: AtomicBool,
    /// The first creation of a child instance fails as if the database were locked.
    fail_child_create: AtomicBool,
    /// The first `suspended` write fails, once `release` is notified.
    fail_suspend: AtomicBool,
    /// Lets a held signal acknowledgement or suspend failure through (a test decides when,
    /// so the race window is open exactly as long as the test needs, however busy the machine).
    release: Arc<Notify>,
    /// Reads of single records.
    gets: AtomicU32,
    /// While set, heartbeats fail as if the store were out of reach: the node's lease runs out
    /// while it goes on driving what it loaded.
    fail_renew: AtomicBool,
}

struct Faulty {
    inner: Arc<MemoryStore>,
    faults: Faults,
}

impl Store for Faulty {
    fn submit(&self, fence: Option<Fence>, ops: Vec<WriteOp>) -> Commit {
        let suspends = ops.iter().any(|op| {
            matches!(
                op,
                WriteOp::SetStatus {
                    status: Status::Suspended,
                    ..
                }
            )
        });
        if suspends && self.faults.fail_suspend.swap(false, Ordering::SeqCst) {
            let (tx, commit) = Commit::channel();
            let release = self.faults.release.clone();
            tokio::spawn(async move {
                release.notified().await;
                let _ = tx.send(Err(StoreError::Backend("disk I/O error (injected)".into())));
            });
            return commit;
        }
        self.inner.submit(fence, ops)
    }
    fn create(
        &self,
        record: InstanceRecord,
        owner: Option<LeaseTerms>,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        if record.parent.is_some() && self.faults.fail_child_create.swap(false, Ordering::SeqCst) {
            return Box::pin(async {
                Err(StoreError::Backend("database is locked (injected)".into()))
            });
        }
        self.inner.create(record, owner, extra)
    }
    fn add_signal(
        &self,
        instance: &str,
        name: &str,
        payload: String,
        at: Millis,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<i64, StoreError>> {
        let slow = self.faults.slow_signal == Some(name)
            && !self.faults.slowed.swap(true, Ordering::SeqCst);
        let stored = self.inner.add_signal(instance, name, payload, at, extra);
        let release = self.faults.release.clone();
        Box::pin(async move {
            let r = stored.await;
            if slow {
                release.notified().await;
            }
            r
        })
    }
    fn load(&self, id: &str) -> BoxFuture<'_, Result<Option<LoadedInstance>, StoreError>> {
        self.inner.load(id)
    }
    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<InstanceRecord>, StoreError>> {
        self.faults.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(id)
    }
    fn list(&self, f: ListFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        self.inner.list(f)
    }
    fn claim_due(&self, t: LeaseTerms, limit: usize) -> BoxFuture<'_, Result<Claimed, StoreError>> {
        self.inner.claim_due(t, limit)
    }
    fn claim(&self, t: LeaseTerms, id: &str) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        self.inner.claim(t, id)
    }
    fn renew(
        &self,
        t: LeaseTerms,
        held: Vec<(String, u64)>,
    ) -> BoxFuture<'_, Result<orch_runtime::store::Renewal, StoreError>> {
        if self.faults.fail_renew.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Backend("network down (injected)".into())) });
        }
        self.inner.renew(t, held)
    }
    fn release(
        &self,
        node: &NodeId,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.release(node, ids)
    }
    fn wakeups(&self) -> Wakeups {
        self.inner.wakeups()
    }
    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.probe_write()
    }
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.close()
    }
    fn metrics(&self) -> Option<Arc<StoreMetrics>> {
        None
    }
}

/// The operators' side is passed through unchanged.
impl TaskQueue for Faulty {
    fn lease_tasks(
        &self,
        terms: WorkerTerms,
        queues: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Leased, StoreError>> {
        self.inner.lease_tasks(terms, queues, limit)
    }
    fn heartbeat_task(
        &self,
        id: &str,
        token: u64,
        terms: WorkerTerms,
    ) -> BoxFuture<'_, Result<Millis, StoreError>> {
        self.inner.heartbeat_task(id, token, terms)
    }
    fn finish_task(
        &self,
        id: &str,
        token: u64,
        result: TaskResult,
        now: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.finish_task(id, token, result, now)
    }
    fn task(&self, id: &str) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>> {
        self.inner.task(id)
    }
    fn queue_stats(&self, now: Millis) -> BoxFuture<'_, Result<Vec<QueueStats>, StoreError>> {
        self.inner.queue_stats(now)
    }
    fn record_workers(
        &self,
        seen: Vec<orch_runtime::store::task::WorkerRecord>,
        forget_before: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.record_workers(seen, forget_before)
    }
    fn workers(
        &self,
        since: Millis,
    ) -> BoxFuture<'_, Result<Vec<orch_runtime::store::task::WorkerRecord>, StoreError>> {
        self.inner.workers(since)
    }
}

impl orch_runtime::store::flow::WorkflowQueues for Faulty {
    fn enqueue_instance(
        &self,
        record: InstanceRecord,
        entry: orch_runtime::store::flow::QueueEntry,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<orch_runtime::store::flow::Enqueued, StoreError>> {
        self.inner.enqueue_instance(record, entry, extra)
    }
    fn admit(
        &self,
        now: Millis,
        limit: usize,
    ) -> BoxFuture<'_, Result<orch_runtime::store::flow::Admitted, StoreError>> {
        self.inner.admit(now, limit)
    }
    fn set_queue_config(
        &self,
        queue: String,
        config: orch_runtime::store::flow::QueueConfig,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.set_queue_config(queue, config)
    }
    fn workflow_queues(
        &self,
    ) -> BoxFuture<'_, Result<Vec<orch_runtime::store::flow::WorkflowQueueStats>, StoreError>> {
        self.inner.workflow_queues()
    }
}

impl StoreAdmin for Faulty {
    fn search(&self, q: Query) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        self.inner.search(q)
    }
    fn details(&self, id: &str) -> BoxFuture<'_, Result<Option<Details>, StoreError>> {
        self.inner.details(id)
    }
    fn attributes(&self, ids: Vec<String>) -> BoxFuture<'_, Result<AttributeMap, StoreError>> {
        self.inner.attributes(ids)
    }
    fn counts(&self) -> BoxFuture<'_, Result<Vec<StatusCount>, StoreError>> {
        self.inner.counts()
    }
    fn stats(&self, q: StatsQuery) -> BoxFuture<'_, Result<Stats, StoreError>> {
        self.inner.stats(q)
    }
    fn aggregate(&self, key: String, q: Query) -> BoxFuture<'_, Result<Aggregate, StoreError>> {
        self.inner.aggregate(key, q)
    }
    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        self.inner.audit(limit)
    }
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>, StoreError>> {
        self.inner.nodes()
    }
    fn leases(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        self.inner.leases(ids)
    }
    fn unfinished(
        &self,
        workflow: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.inner.unfinished(workflow, after, limit)
    }
}

fn faulty(faults: Faults) -> Arc<Faulty> {
    faulty_over(Arc::new(MemoryStore::new()), faults)
}

/// Faults in front of a store others share.
fn faulty_over(inner: Arc<MemoryStore>, faults: Faults) -> Arc<Faulty> {
    Arc::new(Faulty { inner, faults })
}

async fn wait_status(rt: &Runtime, id: &str, st: Status) {
    wait_until(&format!("{id} to be {st}"), || async {
        let rec = rt.instance(id).await.expect("get").expect("exists");
        if rec.status == st {
            Ok(())
        } else {
            Err(rec.status)
        }
    })
    .await;
}

/// The payloads of signal `name` the instance took, in journal order.
async fn taken(rt: &Runtime, id: &str, name: &str) -> Vec<serde_json::Value> {
    rt.journal(id)
        .await
        .expect("journal")
        .iter()
        .filter(|e| e.kind == EntryKind::Signal && e.name == name)
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.outcome).expect("JSON outcome");
            v["payload"].clone()
        })
        .collect()
}

fn record(id: &str, workflow: &str, status: Status) -> InstanceRecord {
    InstanceRecord {
        status,
        ..InstanceRecord::new(id, workflow, "old-version", "null", 0)
    }
}

fn entry(seq: u32, kind: EntryKind, name: &str, outcome: &str) -> JournalEntry {
    JournalEntry {
        seq,
        kind,
        name: name.into(),
        outcome: outcome.into(),
        attempts: 1,
        started_at: 0,
        finished_at: 0,
    }
}

// ---------- a signal is taken once, even when a load races its delivery ----------

#[workflow]
async fn three_signals() -> Vec<u32> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(orch::signal::<u32>("s").await);
        orch::sleep(Duration::from_millis(600)).await; // short: stays loaded
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_is_consumed_once_when_a_load_races_its_delivery() {
    let store = faulty(Faults {
        slow_signal: Some("s"),
        ..Default::default()
    });
    let rt = Runtime::builder()
        .store(store.clone())
        .build()
        .await
        .expect("runtime");
    let run = rt
        .start_with_id(ThreeSignals, "x", ())
        .await
        .expect("start");
    wait_status(&rt, "x", Status::Suspended).await;
    // `s`=1 is stored at once; its delivery to the engine is held until an unrelated signal
    // has loaded the instance and the instance took `s`=1 from the store.
    let rt2 = rt.clone();
    let slow = tokio::spawn(async move { rt2.signal("x", "s", 1u32).await });
    // (The store itself wakes the instance for `s`=1, so it may have taken it already.)
    wait_until("`s`=1 stored", || async {
        let pending = store
            .inner
            .load("x")
            .await
            .expect("load")
            .expect("x")
            .signals;
        let names: Vec<String> = pending.into_iter().map(|s| s.name).collect();
        if names.iter().any(|n| n == "s") || !taken(&rt, "x", "s").await.is_empty() {
            Ok(())
        } else {
            Err(names)
        }
    })
    .await;
    rt.signal("x", "other", 0u32).await.expect("signal");
    wait_until("`s`=1 taken", || async {
        let t = taken(&rt, "x", "s").await;
        if t.is_empty() { Err(t) } else { Ok(()) }
    })
    .await;
    store.faults.release.notify_one();
    slow.await.expect("join").expect("signal");
    rt.signal("x", "s", 2u32).await.expect("signal");
    // Once `s`=2 is taken, the instance has taken `s` twice: 1 and 2, not 1 again.
    let t = wait_until("`s`=2 taken", || async {
        let t = taken(&rt, "x", "s").await;
        if t.contains(&serde_json::json!(2)) {
            Ok(t)
        } else {
            Err(t)
        }
    })
    .await;
    assert_eq!(t, [1, 2], "the `s` signals taken");
    let rec = rt.instance("x").await.expect("get").expect("x");
    assert!(
        !rec.status.is_final(),
        "finished with two `s` signals sent: {rec:?}"
    );
    rt.signal("x", "s", 3u32).await.expect("signal");
    assert_eq!(run.result().await.expect("result"), [1, 2, 3]);
}

// ---------- a failed `suspended` write cannot make a step run twice ----------

static SLOW_CALLS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn slow_step() -> Result<u32, StepError> {
    SLOW_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(1)
}

#[workflow]
async fn go_then_slow() -> Result<u32, StepError> {
    let _ = orch::signal::<u32>("go").await;
    slow_step().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_suspend_write_does_not_start_a_second_driver() {
    let store = faulty(Faults {
        fail_suspend: AtomicBool::new(true),
        ..Default::default()
    });
    let rt = Runtime::builder()
        .store(store.clone())
        .build()
        .await
        .expect("runtime");
    let run = rt.start_with_id(GoThenSlow, "d", ()).await.expect("start");
    // The first load's `suspended` write is submitted and held...
    wait_until("the first `suspended` write", || async {
        let pending = store.faults.fail_suspend.load(Ordering::SeqCst);
        if pending {
            Err("not submitted")
        } else {
            Ok(())
        }
    })
    .await;
    rt.signal("d", "go", 1u32).await.expect("signal"); // a second load starts slow_step
    wait_until("slow_step started", || async {
        let n = SLOW_CALLS.load(Ordering::SeqCst);
        if n > 0 { Ok(()) } else { Err(n) }
    })
    .await;
    // ...and fails only now, while the second load runs slow_step.
    store.faults.release.notify_one();
    assert_eq!(run.result().await.expect("result"), Ok(1));
    assert_eq!(SLOW_CALLS.load(Ordering::SeqCst), 1, "a step ran twice");
}

// ---------- a background step that no longer matches its journal fails visibly ----------

#[step]
async fn bg_new_name() -> Result<(), StepError> {
    Ok(())
}

#[workflow]
async fn renamed_background() -> u32 {
    orch::background(bg_new_name());
    1
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incompatible_background_step_stops_the_instance_instead_of_hanging() {
    let store = Arc::new(MemoryStore::new());
    store
        .create(
            record("old", "renamed_background", Status::Running),
            None,
            Vec::new(),
        )
        .await
        .expect("create");
    store
        .submit(
            None,
            vec![WriteOp::Append {
                instance: "old".into(),
                entry: entry(
                    1,
                    EntryKind::Step,
                    "bg_old_name",
                    r#"{"value":{"Ok":null}}"#,
                ),
            }],
        )
        .await
        .expect("journal");
    let rt = Runtime::builder()
        .store(store)
        .build()
        .await
        .expect("runtime");
    let run = rt.handle(RenamedBackground, "old").await.expect("handle");
    let err = tokio::time::timeout(PATIENCE, run.result())
        .await
        .expect("does not hang")
        .expect_err("incompatible");
    assert!(err.to_string().contains("bg_old_name"), "{err}");
}

// ---------- finished background work lets the instance suspend and free its permit ----------

#[step]
async fn quick_background() -> Result<(), StepError> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

#[workflow]
async fn kid() -> u32 {
    7
}

#[workflow]
async fn background_then_child() -> u32 {
    orch::background(quick_background());
    kid().await
}

#[workflow]
async fn background_then_signal() -> u32 {
    orch::background(quick_background());
    orch::signal::<u32>("x").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_with_background_work_and_one_permit_lets_its_child_run() {
    let rt = Runtime::builder()
        .in_memory()
        .max_running(1)
        .build()
        .await
        .expect("runtime");
    let run = rt.start(BackgroundThenChild, ()).await.expect("start");
    let out = tokio::time::timeout(PATIENCE, run.result()).await;
    assert_eq!(out.expect("no deadlock").expect("result"), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_suspends_once_its_background_work_ends() {
    let rt = Runtime::builder()
        .in_memory()
        .build()
        .await
        .expect("runtime");
    rt.start_with_id(BackgroundThenSignal, "e", ())
        .await
        .expect("start");
    wait_status(&rt, "e", Status::Suspended).await;
}

// ---------- a transient error starting a child is retried, not fatal ----------

#[workflow]
async fn parent_of_kid() -> u32 {
    kid().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_store_error_starting_a_child_is_retried() {
    let store = faulty(Faults {
        fail_child_create: AtomicBool::new(true),
        ..Default::default()
    });
    let rt = Runtime::builder()
        .store(store)
        .build()
        .await
        .expect("runtime");
    let run = rt.start(ParentOfKid, ()).await.expect("start");
    let out = tokio::time::timeout(PATIENCE, run.result()).await;
    assert_eq!(out.expect("finishes").expect("result"), 7);
}

// ---------- a signal stored before a crash wakes a sleeping instance on restart ----------

#[workflow]
async fn approve() -> Option<u32> {
    orch::signal_with_timeout::<u32>("ok", Duration::from_secs(3600)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_stored_before_a_crash_is_taken_at_restart_not_at_the_timeout() {
    let store = Arc::new(MemoryStore::new());
    let mut rec = record("a", "approve", Status::Suspended);
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 3_600_000;
    rec.wake_at = Some(far);
    store.create(rec, None, Vec::new()).await.expect("create");
    store
        .submit(
            None,
            vec![WriteOp::Append {
                instance: "a".into(),
                entry: entry(1, EntryKind::Deadline, "ok", &far.to_string()),
            }],
        )
        .await
        .expect("journal");
    // The signal committed, then the process died before the instance took it.
    store
        .add_signal("a", "ok", "7".into(), 0, Vec::new())
        .await
        .expect("signal");
    let rt = Runtime::builder()
        .store(store)
        .build()
        .await
        .expect("restart");
    let run = rt.handle(Approve, "a").await.expect("handle");
    let out = tokio::time::timeout(PATIENCE, run.result()).await;
    assert_eq!(out.expect("not after an hour").expect("result"), Some(7));
}

// ---------- durable calls inside an async block passed to background are refused ----------

#[step]
async fn f1() -> Result<u32, StepError> {
    Ok(1)
}

#[workflow]
async fn background_block() -> Result<u32, StepError> {
    // The macro refuses this form; the opt-out shows the runtime's own check.
    #[orch(deterministic)]
    orch::background(async {
        let _ = f1().await;
    });
    orch::sleep(Duration::from_millis(50)).await;
    Ok(3)
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_calls_inside_a_background_block_fail_with_a_clear_message() {
    let rt = Runtime::builder()
        .in_memory()
        .build()
        .await
        .expect("runtime");
    let run = rt.start(BackgroundBlock, ()).await.expect("start");
    let err = tokio::time::timeout(PATIENCE, run.result())
        .await
        .expect("finishes")
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("inside work passed to orch::background"),
        "{err}"
    );
}

// ---------- patched() below recorded seqs keeps the old branch ----------

#[step]
async fn pa() -> Result<u32, StepError> {
    Ok(1)
}

#[workflow]
async fn patch_gap() -> Result<u32, StepError> {
    let extra = if orch::patched("new-branch") { 100 } else { 0 };
    let (v, _) = join!(
        orch::signal::<u32>("go"),
        orch::sleep(Duration::from_secs(3600))
    );
    let w = pa().await?;
    Ok(v + w + extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn patched_before_an_in_flight_join_takes_the_old_branch() {
    // Old code: join!(signal "go" (seq 1, still waiting), sleep (seq 2, recorded)).
    let store = Arc::new(MemoryStore::new());
    store
        .create(
            record("old", "patch_gap", Status::Running),
            None,
            Vec::new(),
        )
        .await
        .expect("create");
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 3_600_000;
    store
        .submit(
            None,
            vec![WriteOp::Append {
                instance: "old".into(),
                entry: entry(2, EntryKind::Sleep, "", &far.to_string()),
            }],
        )
        .await
        .expect("journal");
    let rt = Runtime::builder()
        .store(store)
        .build()
        .await
        .expect("runtime");
    // Stored running at time 0 (left by a runtime that stopped): the new runtime claims it,
    // replays it and leaves it suspended (a write after time 0, not `running`).
    let rec = wait_until("`old` loaded and left again", || async {
        let rec = rt.instance("old").await.expect("get").expect("exists");
        if rec.updated_at > 0 && rec.status != Status::Running {
            Ok(rec)
        } else {
            Err(rec)
        }
    })
    .await;
    assert_eq!(rec.status, Status::Suspended, "{:?}", rec.error);
}

// ---------- result() after shutdown returns ----------

#[workflow]
async fn waits_forever() -> u32 {
    orch::signal::<u32>("never").await
}

#[tokio::test(flavor = "multi_thread")]
async fn result_after_shutdown_returns_an_error_instead_of_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("o.db"))
        .build()
        .await
        .expect("runtime");
    let run = rt.start(WaitsForever, ()).await.expect("start");
    rt.shutdown().await.expect("shutdown");
    let out = tokio::time::timeout(PATIENCE, run.result()).await;
    assert!(
        matches!(out.expect("returns"), Err(orch_runtime::Error::ShutDown)),
        "expected ShutDown"
    );
}

// ---------- a long parent id does not break its children ----------

#[workflow]
async fn calls_kid() -> u32 {
    kid().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_with_a_maximal_id_can_start_children() {
    let rt = Runtime::builder()
        .in_memory()
        .build()
        .await
        .expect("runtime");
    let run = rt
        .start_with_id(CallsKid, "p".repeat(128), ())
        .await
        .expect("start");
    assert_eq!(run.result().await.expect("result"), 7);
}

// ---------- a sleep of u64::MAX seconds does not end at once ----------

#[workflow]
async fn sleeps_max() -> u32 {
    orch::sleep(Duration::from_secs(u64::MAX)).await;
    1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_sleep_saturates_instead_of_wrapping_around() {
    let rt = Runtime::builder()
        .in_memory()
        .build()
        .await
        .expect("runtime");
    let run = rt.start(SleepsMax, ()).await.expect("start");
    let rec = wait_until("the sleeper suspended or finished", || async {
        let rec = rt.instance(run.id()).await.expect("get").expect("exists");
        if rec.status == Status::Running {
            Err(rec)
        } else {
            Ok(rec)
        }
    })
    .await;
    assert_eq!(
        rec.status,
        Status::Suspended,
        "sleep(u64::MAX s) finished: {rec:?}"
    );
    let wake = rec.wake_at.expect("a wake-up time");
    let in_a_century = rec.created_at + 100 * 365 * 86_400_000;
    assert!(
        wake > in_a_century,
        "sleep(u64::MAX s) wakes at {wake}: {rec:?}"
    );
}

// ---------- fanning out to children reads each child a bounded number of times ----------

#[workflow]
async fn fan_kid(i: u32) -> u32 {
    orch::sleep(Duration::from_millis(u64::from(i) * 3)).await;
    i
}

#[workflow]
async fn fan_out(n: u32) -> u32 {
    let all = futures_util::future::join_all((0..n).map(fan_kid)).await;
    all.into_iter().sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn fanning_out_to_children_costs_linear_reads() {
    let n = 200u32;
    let store = faulty(Faults::default());
    let rt = Runtime::builder()
        .store(store.clone())
        .build()
        .await
        .expect("runtime");
    let run = rt.start(FanOut, n).await.expect("start");
    let out = tokio::time::timeout(PATIENCE, run.result()).await;
    let out = out.unwrap_or_else(|_| {
        panic!("the fan-out to {n} children did not finish within {PATIENCE:?} (a lost wake-up)")
    });
    assert_eq!(out.expect("result"), n * (n - 1) / 2);
    let gets = store.faults.gets.load(Ordering::Relaxed);
    assert!(gets < 10 * n, "{gets} reads for {n} children");
}

// ---------- a waiter on a node that lost the instance hears of its end elsewhere ----------

/// Whether the first run of `stall_first_time` began (on node a).
static STALLED: AtomicBool = AtomicBool::new(false);
/// Set once node b has finished the instance node a stalled on.
static TAKEN_OVER: AtomicBool = AtomicBool::new(false);

/// The first run holds its node's only thread until the instance was finished elsewhere (a
/// paused process: no heartbeat, no wake-ups handled), then never returns; later runs return.
#[step]
async fn stall_first_time() -> Result<u32, StepError> {
    if !STALLED.swap(true, Ordering::SeqCst) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !TAKEN_OVER.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::future::pending::<()>().await;
    }
    Ok(7)
}

#[workflow]
async fn taken_over() -> Result<u32, StepError> {
    stall_first_time().await
}

/// `Run::result` on a node that was driving the instance when it lost its lease (and ignored
/// the end announced meanwhile, the instance being loaded there) waited forever: nothing told
/// the waiter once the node dropped the instance.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_on_a_node_that_lost_the_instance_hears_of_its_end_on_another_node() {
    let store = Arc::new(MemoryStore::new());
    let lease = Duration::from_millis(300);
    let node = |id: &'static str| {
        Runtime::builder()
            .store(store.clone())
            .node_id(id)
            .lease_ttl(lease)
    };
    // Node a on a tokio runtime of its own with one thread, which the step can stall.
    let a = node("a");
    let node_a = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(async move {
            let a = a.build().await.expect("node a");
            let run = a.start_with_id(TakenOver, "t", ()).await.expect("start");
            let result = run.result();
            tokio::pin!(result);
            // Polled once while node a drives the instance: the wait is registered there.
            tokio::select! {
                biased;
                out = &mut result => panic!("ended before it ran: {out:?}"),
                _ = std::future::ready(()) => {}
            }
            let out = tokio::time::timeout(PATIENCE, result).await;
            let _ = a.shutdown().await;
            out
        })
    });
    let b = node("b").build().await.expect("node b");
    wait_until(
        "node b to finish the instance node a stalled on",
        || async {
            match b.instance("t").await.expect("get") {
                Some(rec) if rec.status == Status::Completed => Ok(()),
                other => Err(other.map(|r| r.status)),
            }
        },
    )
    .await;
    TAKEN_OVER.store(true, Ordering::SeqCst);
    let out = tokio::task::spawn_blocking(move || node_a.join().expect("node a"))
        .await
        .expect("join");
    let out = out.expect("the waiter on node a never heard that node b finished the instance");
    assert_eq!(out.expect("result"), Ok(7));
    b.shutdown().await.expect("shutdown");
}

// ---------- a node that claims back an instance it lost drives it again ----------

/// Runs of `third_time_lucky`.
static LUCK: AtomicU32 = AtomicU32::new(0);

/// Hangs on its first two runs, returns on the third.
#[step]
async fn third_time_lucky() -> Result<u32, StepError> {
    if LUCK.fetch_add(1, Ordering::SeqCst) < 2 {
        std::future::pending::<()>().await;
    }
    Ok(7)
}

#[workflow]
async fn lost_and_found() -> Result<u32, StepError> {
    third_time_lucky().await
}

/// A node that claimed back an instance it still had loaded under the lease it had lost kept
/// that stale load (whose every write is refused) instead of loading the instance again, then
/// dropped it: the instance stayed owned by a live node that did not drive it, forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_claims_back_an_instance_it_lost_drives_it_again() {
    let shared = Arc::new(MemoryStore::new());
    let lease = Duration::from_millis(300);
    let a_store = faulty_over(shared.clone(), Faults::default());
    let a = Runtime::builder()
        .store(a_store.clone())
        .node_id("a")
        .lease_ttl(lease)
        .build()
        .await
        .expect("node a");
    a.start_with_id(LostAndFound, "x", ()).await.expect("start");
    wait_until("node a to run the step", || async {
        match LUCK.load(Ordering::SeqCst) {
            0 => Err(0),
            n => Ok(n),
        }
    })
    .await;
    // Node a's heartbeat fails: node b (room for one instance) takes the instance over and
    // runs the step, then its heartbeat fails too.
    a_store.faults.fail_renew.store(true, Ordering::SeqCst);
    let b_store = faulty_over(shared.clone(), Faults::default());
    let b = Runtime::builder()
        .store(b_store.clone())
        .node_id("b")
        .lease_ttl(lease)
        .max_running(1)
        .build()
        .await
        .expect("node b");
    wait_until("node b to run the step", || async {
        match LUCK.load(Ordering::SeqCst) {
            n if n >= 2 => Ok(n),
            n => Err(n),
        }
    })
    .await;
    b_store.faults.fail_renew.store(true, Ordering::SeqCst);
    // Node a claims it back while its first load, under the lost lease, is still loaded (and
    // may finish it at once).
    wait_until("node a to claim the instance back", || async {
        let nodes = shared.nodes().await.expect("nodes");
        let owns = nodes.iter().any(|n| n.id == "a" && n.owned == 1);
        let rec = a.instance("x").await.expect("get").expect("exists");
        if owns || rec.status.is_final() {
            Ok(())
        } else {
            Err(nodes)
        }
    })
    .await;
    a_store.faults.fail_renew.store(false, Ordering::SeqCst);
    wait_until("the instance to complete on node a", || async {
        match a.instance("x").await.expect("get") {
            Some(rec) if rec.status == Status::Completed => Ok(()),
            other => Err(other.map(|r| r.status)),
        }
    })
    .await;
    assert_eq!(LUCK.load(Ordering::SeqCst), 3);
    a.shutdown().await.expect("shutdown a");
    // (The store they share is closed now.)
    let _ = b.shutdown().await;
}
