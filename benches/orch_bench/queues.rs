//! The queues section (SQLite, synchronous=FULL): queued steps and workflow queues.
//!
//! - dispatch latency: a workflow calls a queued step, one at a time on an idle node; the time
//!   from the call (the task is then enqueued, one fsync'd commit) to the moment the step's
//!   body starts in a worker — the runtime's in-process worker, or a worker process's client
//!   (`orch_runtime::worker::client::Worker`) on loopback HTTP;
//! - tasks/s through one queue: 4,000 workflows of one queued step started at once, served by
//!   1 and by 8 HTTP workers (each a `Worker` client with 64 slots, in this process, as the
//!   node's CPUs are shared on this 2-core machine anyway), and by the in-process worker;
//! - a rate-limited workflow queue held at its limit: 4,000 workflows of one local step
//!   enqueued on a queue limited to 2,000 admissions/s against the same on a queue without
//!   limits; the admitted rate, and the CPU time the process spent per admitted workflow.

use super::*;
use orch_runtime::flow::{QueueConfig, Rate};
use orch_runtime::worker::client::Worker;
use std::sync::Mutex;
use std::sync::OnceLock;

/// The bench's clock: nanoseconds since the first call (the same in a workflow and a worker of
/// this process).
fn clock_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Dispatch times seen by step bodies.
static SEEN: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

/// A queued step that notes how long after `called_ns` its body started.
#[step(queue = "bench")]
async fn dispatched(called_ns: u64) -> Result<u64, StepError> {
    let waited = clock_ns().saturating_sub(called_ns);
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Duration::from_nanos(waited));
    Ok(waited)
}

/// One queued step.
#[workflow]
async fn one_task(x: u32) -> Result<u32, StepError> {
    dispatched(clock_ns()).await?;
    Ok(x)
}

/// One local step (for the workflow-queue rows).
#[workflow]
async fn one_local(x: u32) -> Result<u32, StepError> {
    noop(x).await
}

/// How a node's queued steps are served in a scenario.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Served {
    InProcess,
    /// In-process, on the in-memory store: orch's own share of a dispatch (no commits).
    InMemory,
    Http(usize),
}

impl Served {
    fn label(self) -> String {
        match self {
            Served::InProcess => "in-process worker".into(),
            Served::InMemory => "in-process, in-memory store".into(),
            Served::Http(1) => "1 HTTP worker".into(),
            Served::Http(n) => format!("{n} HTTP workers"),
        }
    }
}

/// A SQLite runtime serving its HTTP API on loopback (and its queue itself, or not).
async fn node(
    dir: &Path,
    served: Served,
) -> (Runtime, Vec<orch_runtime::worker::client::RunningWorker>) {
    let opts = SqliteOptions {
        synchronous: Synchronous::Full,
        ..Default::default()
    };
    let path = dir.join("orch.db");
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(path, opts))
        .await
        .expect("joining the open task")
        .expect("opening the SQLite store");
    let b = match served {
        Served::InMemory => Runtime::builder().in_memory(),
        _ => Runtime::builder().store(Arc::new(store) as Arc<dyn StoreBackend>),
    };
    let mut b = b.http("127.0.0.1:0").queue(
        "limited",
        QueueConfig {
            rate: Some(Rate {
                limit: 200,
                period_ms: 100,
            }),
            ..Default::default()
        },
    );
    if let Served::Http(_) = served {
        b = b.no_workers();
    }
    let rt = b.build().await.expect("building the runtime");
    let url = rt.http_url().expect("the runtime serves HTTP");
    let workers = match served {
        Served::InProcess | Served::InMemory => Vec::new(),
        Served::Http(n) => (0..n)
            .map(|i| {
                Worker::connect(url.clone())
                    .queues(["bench"])
                    .concurrency(64)
                    .name(format!("bench-{i}"))
                    .start()
                    .expect("starting a worker client")
            })
            .collect(),
    };
    (rt, workers)
}

async fn stop(rt: Runtime, workers: Vec<orch_runtime::worker::client::RunningWorker>) {
    for w in workers {
        let _ = w.shutdown().await;
    }
    rt.shutdown().await.expect("shutdown");
}

/// Child: dispatch latency, sequential, on an idle node.
pub(super) async fn child_dispatch(o: &Opts, served: Served) {
    let dir = o.tempdir();
    let (rt, workers) = node(dir.path(), served).await;
    let runs = if o.quick { 50 } else { o.runs.unwrap_or(300) };
    for i in 0..20 {
        let run = rt.start(OneTask, i).await.expect("start");
        run.result().await.expect("result").expect("ok");
    }
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let mut total = Vec::with_capacity(runs);
    for i in 0..runs as u32 {
        let t = Instant::now();
        let run = rt.start(OneTask, i).await.expect("start");
        run.result().await.expect("result").expect("ok");
        total.push(t.elapsed());
    }
    let mut seen = std::mem::take(&mut *SEEN.lock().unwrap_or_else(|e| e.into_inner()));
    seen.sort();
    total.sort();
    emit(json!({
        "kind": "dispatch", "served": served.label(), "runs": seen.len(),
        "p50": pct(&seen, 50.0), "p99": pct(&seen, 99.0),
        "wf_p50": pct(&total, 50.0),
    }));
    stop(rt, workers).await;
}

/// Child: tasks/s through one queue.
pub(super) async fn child_tasks(o: &Opts, served: Served) {
    let dir = o.tempdir();
    let (rt, workers) = node(dir.path(), served).await;
    let count = if o.quick { 1_000 } else { 4_000 };
    let round = |count: usize| {
        let rt = rt.clone();
        async move {
            let t = Instant::now();
            let mut set = JoinSet::new();
            for i in 0..count as u32 {
                let rt = rt.clone();
                set.spawn(async move {
                    let run = rt.start(OneTask, i).await.expect("start");
                    run.result().await.expect("result")
                });
            }
            while let Some(r) = set.join_next().await {
                assert!(r.expect("join").is_ok());
            }
            t.elapsed()
        }
    };
    round(count.min(500)).await; // warm-up
    let cpu0 = cluster::cpu_ms("self");
    let wall = round(count).await;
    let cpu = cluster::cpu_ms("self") - cpu0;
    emit(json!({
        "kind": "tasks", "served": served.label(), "tasks": count,
        "wall_ms": ms(wall), "tasks_s": count as f64 / wall.as_secs_f64(),
        "cpu_us_per_task": cpu * 1e3 / count as f64,
    }));
    stop(rt, workers).await;
}

/// Child: a rate-limited workflow queue at its limit, beside an unlimited one.
pub(super) async fn child_rate(o: &Opts) {
    let dir = o.tempdir();
    let (rt, workers) = node(dir.path(), Served::InProcess).await;
    let count = if o.quick { 1_000 } else { 4_000 };
    for (queue, label) in [("open", "no limits"), ("limited", "2,000 per s")] {
        let cpu0 = cluster::cpu_ms("self");
        let t = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..count as u32 {
            let rt = rt.clone();
            set.spawn(async move {
                let run = rt.enqueue(OneLocal, i).queue(queue).await.expect("enqueue");
                run.result().await.expect("result")
            });
        }
        while let Some(r) = set.join_next().await {
            assert!(r.expect("join").is_ok());
        }
        let wall = t.elapsed();
        let cpu = cluster::cpu_ms("self") - cpu0;
        emit(json!({
            "kind": "rate", "queue": label, "workflows": count,
            "wall_ms": ms(wall), "admitted_s": count as f64 / wall.as_secs_f64(),
            "cpu_us_per_wf": cpu * 1e3 / count as f64,
        }));
    }
    stop(rt, workers).await;
}

/// The scenarios, each in a child process.
pub(super) fn run(o: &Opts) -> Vec<Value> {
    let mut rows = Vec::new();
    for served in ["inproc", "inmem", "http1"] {
        rows.extend(spawn_child_with(o, "dispatch", None, &[served]));
    }
    for served in ["inproc", "http1", "http8"] {
        rows.extend(spawn_child_with(o, "tasks", None, &[served]));
    }
    rows.extend(spawn_child(o, "rate", None));
    rows
}

pub(super) fn parse_served(s: &str) -> Served {
    match s {
        "inproc" => Served::InProcess,
        "inmem" => Served::InMemory,
        "http1" => Served::Http(1),
        "http8" => Served::Http(8),
        other => fail(&format!("unknown worker setup `{other}`")),
    }
}

/// Prints the section's tables; returns its target checks.
pub(super) fn print(rows: &[Value], floor_p50: Option<f64>) -> Vec<(String, bool)> {
    let mut checks = Vec::new();
    println!();
    println!("== Queued steps: dispatch latency on an idle node (call → body starts, ms) ==");
    println!(
        "{:<20} {:>6} {:>8} {:>8} {:>14}",
        "served by", "runs", "p50", "p99", "workflow p50"
    );
    for r in rows.iter().filter(|r| r["kind"] == "dispatch") {
        println!(
            "{:<20} {:>6} {:>8.3} {:>8.3} {:>14.3}",
            r["served"].as_str().unwrap_or("?"),
            r["runs"],
            f(r, "p50"),
            f(r, "p99"),
            f(r, "wf_p50"),
        );
        if r["served"] == "1 HTTP worker" {
            checks.push((
                format!("HTTP dispatch p50 {:.3} ms ≤ 2 ms while idle", f(r, "p50")),
                f(r, "p50") <= 2.0,
            ));
        }
    }
    if let Some(floor) = floor_p50 {
        println!(
            "  a dispatch includes the enqueue's commit and the lease's commit (raw commit p50 \
             {floor:.3} ms)"
        );
    }
    println!();
    println!("== Tasks through one queue: workflows of one queued step, all started at once ==");
    println!(
        "{:<20} {:>7} {:>10} {:>10} {:>12}",
        "served by", "tasks", "wall ms", "tasks/s", "CPU µs/task"
    );
    for r in rows.iter().filter(|r| r["kind"] == "tasks") {
        println!(
            "{:<20} {:>7} {:>10.0} {:>10.0} {:>12.0}",
            r["served"].as_str().unwrap_or("?"),
            r["tasks"],
            f(r, "wall_ms"),
            f(r, "tasks_s"),
            f(r, "cpu_us_per_task"),
        );
        if r["served"] == "8 HTTP workers" {
            checks.push((
                format!(
                    "{:.0} tasks/s through one queue with 8 HTTP workers ≥ 10,000",
                    f(r, "tasks_s")
                ),
                f(r, "tasks_s") >= 10_000.0,
            ));
        }
    }
    println!("  CPU = this process (node and workers) per task; the workers share the node's CPUs");
    println!();
    println!(
        "== A workflow queue at its rate limit (workflows of one local step, enqueued at once) =="
    );
    println!(
        "{:<14} {:>10} {:>10} {:>12} {:>14}",
        "queue", "workflows", "wall ms", "admitted/s", "CPU µs/wf"
    );
    for r in rows.iter().filter(|r| r["kind"] == "rate") {
        println!(
            "{:<14} {:>10} {:>10.0} {:>12.0} {:>14.0}",
            r["queue"].as_str().unwrap_or("?"),
            r["workflows"],
            f(r, "wall_ms"),
            f(r, "admitted_s"),
            f(r, "cpu_us_per_wf"),
        );
    }
    checks
}
