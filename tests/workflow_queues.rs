//! Workflows started through queues (`rt.enqueue`): an enqueued instance is stored at once and
//! starts when its queue has room — never more running than the queue's concurrency limit (as
//! the steps themselves see it), higher priority first and first come first within a priority,
//! one running instance per concurrency key, a second enqueue with a held deduplication key
//! returning the first instance, a rate limit spacing the starts — with limits changed live
//! (API included), enforced across two runtimes sharing a store, and surviving `kill -9`.

#[path = "support/backends.rs"]
mod backends;
#[path = "support/wait.rs"]
mod wait;

use backends::Backend;
use orch_runtime::flow::QueueConfig;
use orch_runtime::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use wait::wait_until;

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Job {
    /// The test (and backend) the job belongs to: its counters are kept apart.
    tag: String,
    name: String,
    /// Waits for the signal `go` between entering and leaving.
    gated: bool,
}

/// What the steps of each tag saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Jobs between `enter` and `leave` now.
    running: u32,
    /// The most there ever were.
    max: u32,
    /// Jobs in the order they entered, with when.
    entered: Vec<(String, Instant)>,
}

static SEEN: LazyLock<Mutex<HashMap<String, Seen>>> = LazyLock::new(Default::default);

fn seen(tag: &str) -> Seen {
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(tag)
        .cloned()
        .unwrap_or_default()
}

fn names(s: &Seen) -> Vec<String> {
    s.entered.iter().map(|(n, _)| n.clone()).collect()
}

#[step]
async fn enter(tag: String, name: String) -> Result<(), StepError> {
    let mut all = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let s = all.entry(tag).or_default();
    s.running += 1;
    s.max = s.max.max(s.running);
    s.entered.push((name, Instant::now()));
    Ok(())
}

#[step]
async fn leave(tag: String) -> Result<(), StepError> {
    let mut all = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let s = all.entry(tag).or_default();
    s.running -= 1;
    Ok(())
}

#[workflow]
async fn queued_job(job: Job) -> Result<String, StepError> {
    enter(job.tag.clone(), job.name.clone()).await?;
    if job.gated {
        let _go: bool = orch::signal("go").await;
    }
    leave(job.tag.clone()).await?;
    Ok(job.name)
}

fn job(tag: &str, name: &str, gated: bool) -> Job {
    Job {
        tag: tag.to_string(),
        name: name.to_string(),
        gated,
    }
}

fn id(tag: &str, name: &str) -> String {
    format!("{tag}-{name}")
}

/// Enqueues a gated job `name` on `queue` with `priority`.
async fn enqueue(rt: &Runtime, tag: &str, queue: &str, name: &str, priority: i32) {
    let run = rt
        .enqueue(QueuedJob, job(tag, name, true))
        .queue(queue)
        .priority(priority)
        .id(id(tag, name))
        .await
        .expect("enqueue");
    assert!(run.created(), "`{name}` was stored");
}

async fn status(rt: &Runtime, tag: &str, name: &str) -> Status {
    rt.instance(&id(tag, name))
        .await
        .expect("instance")
        .expect("stored")
        .status
}

/// Waits until the jobs of `tag` entered are `n`.
async fn wait_entered(tag: &str, n: usize) -> Seen {
    wait_until(&format!("{n} jobs of {tag} entered"), || async {
        let s = seen(tag);
        if s.entered.len() >= n { Ok(s) } else { Err(s) }
    })
    .await
}

/// Lets job `name` go on and waits until it finished.
async fn release(rt: &Runtime, tag: &str, name: &str) {
    let id = id(tag, name);
    rt.signal(&id, "go", true).await.expect("signal");
    let rec = tokio::time::timeout(wait::PATIENCE, rt.wait(&id))
        .await
        .expect("the released job finished")
        .expect("wait");
    assert_eq!(rec.status, Status::Completed, "{rec:?}");
}

async fn queue_limited(backend: Backend) {
    let Some(rt) = backend.runtime().await else {
        return;
    };
    let tag = format!("limit-{}", backend.name());
    rt.set_queue_config("limited", QueueConfig::default().concurrency(2))
        .await
        .expect("configure");
    let all: Vec<String> = (1..=6).map(|i| format!("j{i}")).collect();
    for name in &all {
        enqueue(&rt, &tag, "limited", name, 0).await;
    }
    let mut done = 0;
    while done < all.len() {
        let expect = (done + 2).min(all.len());
        let s = wait_entered(&tag, expect).await;
        assert!(s.max <= 2, "{} jobs ran at once under a limit of 2", s.max);
        let entered = names(&s);
        // Those not admitted yet wait, queued.
        for name in all.iter().filter(|n| !entered.contains(n)) {
            assert_eq!(status(&rt, &tag, name).await, Status::Queued, "{name}");
        }
        // First come, first served (one priority); two admitted together may enter in
        // either order.
        let mut sorted = entered.clone();
        sorted.sort();
        assert_eq!(sorted, all[..entered.len()].to_vec());
        release(&rt, &tag, &entered[done]).await;
        done += 1;
    }
    let s = seen(&tag);
    assert_eq!(s.max, 2, "the limit was reached and never passed");
    assert_eq!(s.running, 0);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_never_runs_more_than_its_concurrency_limit_on_sqlite() {
    queue_limited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_never_runs_more_than_its_concurrency_limit_on_postgres() {
    queue_limited(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_never_runs_more_than_its_concurrency_limit_in_memory() {
    queue_limited(Backend::Memory).await;
}

async fn by_priority(backend: Backend) {
    let Some(rt) = backend.runtime().await else {
        return;
    };
    let tag = format!("prio-{}", backend.name());
    rt.set_queue_config("one-at-a-time", QueueConfig::default().concurrency(1))
        .await
        .expect("configure");
    enqueue(&rt, &tag, "one-at-a-time", "blocker", 0).await;
    wait_entered(&tag, 1).await;
    for (name, prio) in [
        ("low-a", 0),
        ("low-b", 0),
        ("high-a", 5),
        ("high-b", 5),
        ("mid", 1),
    ] {
        enqueue(&rt, &tag, "one-at-a-time", name, prio).await;
    }
    let order = ["blocker", "high-a", "high-b", "mid", "low-a", "low-b"];
    for (i, name) in order.iter().enumerate() {
        let s = wait_entered(&tag, i + 1).await;
        assert_eq!(names(&s), order[..=i].to_vec(), "admission order");
        release(&rt, &tag, name).await;
    }
    assert_eq!(seen(&tag).max, 1);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_starts_first_and_first_come_first_within_a_priority_on_sqlite() {
    by_priority(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_starts_first_and_first_come_first_within_a_priority_on_postgres() {
    by_priority(Backend::Postgres).await;
}

async fn per_key(backend: Backend) {
    let Some(rt) = backend.runtime().await else {
        return;
    };
    let tag = format!("key-{}", backend.name());
    rt.set_queue_config("checkout", QueueConfig::default().per_key(1))
        .await
        .expect("configure");
    for (name, customer) in [("alice-1", "alice"), ("alice-2", "alice"), ("bob-1", "bob")] {
        rt.enqueue(QueuedJob, job(&tag, name, true))
            .queue("checkout")
            .key(customer)
            .id(id(&tag, name))
            .await
            .expect("enqueue");
    }
    let s = wait_entered(&tag, 2).await;
    let mut entered = names(&s);
    entered.sort();
    assert_eq!(entered, ["alice-1", "bob-1"], "bob is not held up by alice");
    assert_eq!(status(&rt, &tag, "alice-2").await, Status::Queued);
    release(&rt, &tag, "bob-1").await;
    // Bob's end leaves alice's key busy.
    assert_eq!(status(&rt, &tag, "alice-2").await, Status::Queued);
    assert_eq!(seen(&tag).entered.len(), 2);
    release(&rt, &tag, "alice-1").await;
    let s = wait_entered(&tag, 3).await;
    assert_eq!(names(&s)[2], "alice-2");
    release(&rt, &tag, "alice-2").await;
    assert_eq!(seen(&tag).max, 2);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_running_checkout_per_customer_on_sqlite() {
    per_key(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_running_checkout_per_customer_on_postgres() {
    per_key(Backend::Postgres).await;
}

async fn dedup(backend: Backend) {
    let Some(rt) = backend.runtime().await else {
        return;
    };
    let tag = format!("dedup-{}", backend.name());
    let first = rt
        .enqueue(QueuedJob, job(&tag, "first", true))
        .queue("orders")
        .dedup("order-7")
        .await
        .expect("enqueue");
    assert!(first.created());
    let second = rt
        .enqueue(QueuedJob, job(&tag, "second", false))
        .queue("orders")
        .dedup("order-7")
        .await
        .expect("a second enqueue with the key");
    assert!(!second.created(), "nothing new was stored");
    assert_eq!(second.id(), first.id(), "the holder of the key is returned");
    wait_entered(&tag, 1).await;
    // Still held while the first runs.
    let third = rt
        .enqueue(QueuedJob, job(&tag, "third", false))
        .queue("orders")
        .dedup("order-7")
        .await
        .expect("enqueue while it runs");
    assert_eq!(third.id(), first.id());
    rt.signal(first.id(), "go", true).await.expect("signal");
    assert_eq!(first.result().await.expect("result").expect("ok"), "first");
    // Its end frees the key.
    let fourth = rt
        .enqueue(QueuedJob, job(&tag, "fourth", false))
        .queue("orders")
        .dedup("order-7")
        .await
        .expect("enqueue after the end");
    assert!(fourth.created());
    assert_ne!(fourth.id(), first.id());
    assert_eq!(
        fourth.result().await.expect("result").expect("ok"),
        "fourth"
    );
    assert_eq!(names(&seen(&tag)), ["first", "fourth"]);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_enqueue_with_a_held_dedup_key_returns_the_first_instance_on_sqlite() {
    dedup(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_enqueue_with_a_held_dedup_key_returns_the_first_instance_on_postgres() {
    dedup(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_starts() {
    let Some(rt) = Backend::Sqlite.runtime().await else {
        return;
    };
    let tag = "rate";
    rt.set_queue_config(
        "rated",
        QueueConfig::default().rate(2, Duration::from_millis(1000)),
    )
    .await
    .expect("configure");
    let before = Instant::now();
    let mut runs = Vec::new();
    for i in 1..=5 {
        let run = rt
            .enqueue(QueuedJob, job(tag, &format!("r{i}"), false))
            .queue("rated")
            .await
            .expect("enqueue");
        runs.push(run);
    }
    for run in &runs {
        run.result().await.expect("result").expect("ok");
    }
    let s = seen(tag);
    assert_eq!(s.entered.len(), 5);
    // Every window of a second after the first enqueue saw at most two starts: the k-th pair
    // starts no earlier than k seconds after it.
    for (k, (name, at)) in s.entered.iter().enumerate() {
        let window = (k / 2) as u32;
        assert!(
            at.duration_since(before) >= Duration::from_millis(990) * window,
            "{name} (start {}) started {:?} after the enqueue, before its slot at {window} s",
            k + 1,
            at.duration_since(before)
        );
    }
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_changed_through_the_api_applies_at_once_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .queue("live", QueueConfig::default().concurrency(1))
        .http("127.0.0.1:0")
        .build()
        .await
        .expect("runtime");
    let tag = "live";
    for name in ["a", "b", "c"] {
        enqueue(&rt, tag, "live", name, 0).await;
    }
    wait_entered(tag, 1).await;
    let base = rt.http_url().expect("http");
    let client = reqwest::Client::new();
    let listed: serde_json::Value = client
        .get(format!("{base}api/v1/queues"))
        .send()
        .await
        .expect("GET queues")
        .json()
        .await
        .expect("json");
    let live = listed["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["kind"] == "workflow" && q["queue"] == "live")
        .unwrap_or_else(|| panic!("the workflow queue is listed: {listed}"))
        .clone();
    assert_eq!(live["limits"]["concurrency"], 1, "{live}");
    assert_eq!(live["in_flight"], 1, "{live}");
    assert_eq!(live["waiting"], 2, "{live}");
    // A bad limit is refused and changes nothing.
    let bad = client
        .put(format!("{base}api/v1/queues/live/config"))
        .json(&serde_json::json!({"concurrency": 3, "rate": {"limit": 0, "period_ms": 1000}}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.expect("body");
    assert!(text.contains("rate"), "{text}");
    assert_eq!(status(&rt, tag, "b").await, Status::Queued);
    // Raised: the waiting two start while the first still runs.
    let r = client
        .put(format!("{base}api/v1/queues/live/config"))
        .json(&serde_json::json!({"concurrency": 3}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let s = wait_entered(tag, 3).await;
    assert_eq!(s.running, 3);
    // And one enqueued through the API waits in the same queue.
    let r = client
        .post(format!("{base}api/v1/queues/live/instances"))
        .json(
            &serde_json::json!({"workflow": "queued_job", "id": id(tag, "d"),
            "input": job(tag, "d", true), "priority": 3}),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    assert_eq!(status(&rt, tag, "d").await, Status::Queued);
    let r = client
        .post(format!("{base}api/v1/queues/live/instances"))
        .json(&serde_json::json!({"workflow": "queued_job", "input": 42}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 422, "an input of the wrong type is refused");
    for name in ["a", "b", "c"] {
        release(&rt, tag, name).await;
    }
    wait_entered(tag, 4).await;
    release(&rt, tag, "d").await;
    assert_eq!(seen(tag).max, 3);
    rt.shutdown().await.expect("shutdown");
}

/// Two runtimes (nodes) on one store, each enqueueing: together they never pass the limit.
async fn two_nodes(backend: Backend) {
    let place = tempfile::tempdir().expect("tempdir");
    let Some(one) = backend.runtime_in(Some(place.path())).await else {
        return;
    };
    let Some(two) = backend.runtime_in(Some(place.path())).await else {
        return;
    };
    let tag = format!("nodes-{}", backend.name());
    one.set_queue_config("shared", QueueConfig::default().concurrency(2))
        .await
        .expect("configure");
    let jobs: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
    for (i, name) in jobs.iter().enumerate() {
        let rt: &Runtime = if i % 2 == 0 { &one } else { &two };
        enqueue(rt, &tag, "shared", name, 0).await;
    }
    for done in 0..jobs.len() {
        let s = wait_entered(&tag, (done + 2).min(jobs.len())).await;
        assert!(s.max <= 2, "{} ran at once across two nodes", s.max);
        let next = names(&s)[done].clone();
        // Either node may drive it; signals and results work from either.
        let rt: &Runtime = if done % 2 == 0 { &two } else { &one };
        release(rt, &tag, &next).await;
    }
    assert_eq!(seen(&tag).max, 2);
    one.shutdown().await.expect("shutdown");
    two.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_sharing_a_sqlite_file_never_pass_the_limit_together() {
    two_nodes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_sharing_a_postgres_schema_never_pass_the_limit_together() {
    two_nodes(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queue_names_and_keys_are_refused_and_store_nothing() {
    let Some(rt) = Backend::Sqlite.runtime().await else {
        return;
    };
    let err = rt
        .enqueue(QueuedJob, job("bad", "x", false))
        .queue("no spaces")
        .id("bad-x")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("letters, digits"), "{err}");
    let err = rt
        .enqueue(QueuedJob, job("bad", "y", false))
        .key("")
        .id("bad-y")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("concurrency key"), "{err}");
    assert!(rt.instance("bad-x").await.expect("read").is_none());
    assert!(rt.instance("bad-y").await.expect("read").is_none());
    let err = rt
        .set_queue_config("q", QueueConfig::default().rate(0, Duration::from_secs(1)))
        .await
        .expect_err("a rate of 0 is refused");
    assert!(err.to_string().contains("at least 1"), "{err}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_queued_instance_ends_at_once_without_running() {
    let Some(rt) = Backend::Sqlite.runtime().await else {
        return;
    };
    let tag = "cancel-queued";
    rt.set_queue_config("stopped", QueueConfig::default().concurrency(0))
        .await
        .expect("configure");
    enqueue(&rt, tag, "stopped", "waiting", 0).await;
    assert_eq!(status(&rt, tag, "waiting").await, Status::Queued);
    rt.cancel(&id(tag, "waiting"), "test", "changed my mind")
        .await
        .expect("cancel");
    let rec = rt
        .instance(&id(tag, "waiting"))
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(rec.status, Status::Cancelled, "{rec:?}");
    assert!(
        rec.error
            .as_deref()
            .is_some_and(|e| e.contains("changed my mind")),
        "{rec:?}"
    );
    // Reopened, the queue has nothing to admit: the cancelled instance never runs.
    rt.set_queue_config("stopped", QueueConfig::default())
        .await
        .expect("configure");
    enqueue(&rt, tag, "stopped", "after", 0).await;
    let s = wait_entered(tag, 1).await;
    assert_eq!(names(&s), ["after"]);
    release(&rt, tag, "after").await;
    rt.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// A real process killed with `kill -9` right after it enqueued.

/// The child side, run only when a test re-executes this binary with `ORCH_FLOW_CHILD`: on a
/// paused queue (concurrency 0), enqueues `survivor`, says so, and waits to be killed.
#[test]
fn flow_child() {
    let Ok(db) = std::env::var("ORCH_FLOW_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async move {
        let orch = Runtime::builder()
            .sqlite(&db)
            .queue("paused", QueueConfig::default().concurrency(0))
            .build()
            .await
            .expect("runtime");
        orch.enqueue(QueuedJob, job("crash", "survivor", false))
            .queue("paused")
            .id("survivor")
            .await
            .expect("enqueue");
        println!("ENQUEUED");
        std::future::pending::<()>().await
    });
}

#[test]
fn an_enqueued_instance_survives_kill_9_and_starts_when_its_queue_has_room() {
    if std::env::var("ORCH_FLOW_CHILD").is_ok() {
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("orch.db");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["flow_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("ORCH_FLOW_CHILD", &db)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let said = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("ENQUEUED"));
    assert!(said, "the child never enqueued");
    let status = std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = child.wait();
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async move {
        let orch = Runtime::builder()
            .sqlite(&db)
            .queue("paused", QueueConfig::default().concurrency(1))
            .build()
            .await
            .expect("runtime");
        let run = orch.handle(QueuedJob, "survivor").await.expect("stored");
        let out = tokio::time::timeout(wait::PATIENCE, run.result())
            .await
            .expect("it ran once its queue had room")
            .expect("result")
            .expect("ok");
        assert_eq!(out, "survivor");
        orch.shutdown().await.expect("shutdown");
    });
}
