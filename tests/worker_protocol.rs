//! The worker protocol over HTTP (`/api/v1/tasks`, `/api/v1/queues`), against a real runtime
//! and server on SQLite and on PostgreSQL (`ORCH_TEST_DATABASE_URL`). Tasks are enqueued
//! through the store, as an instance's step does, and served by a worker that speaks only
//! HTTP: a waiting long-poll answers as soon as a task is enqueued, heartbeats extend the
//! lease, an end is stored and wakes the instance, a worker whose lease ended is refused (409
//! `task_lost`) and changes nothing, and bad bodies are refused with the API's JSON errors.
//! End to end, a workflow's `#[step(queue = "…")]` is served by such a worker.

#[path = "support/backends.rs"]
mod backends;
#[path = "support/wait.rs"]
mod wait;

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use orch_runtime::store::sqlite::{SqliteOptions, SqliteStore};
use orch_runtime::store::task::{NewTask, TaskRecord, TaskState, task_id};
use orch_runtime::store::{
    Backend, Created, Fence, InstanceRecord, LeaseTerms, NodeId, Wakeup, WriteOp,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INSTANCE: &str = "order-7";
const ADMIN: &str = "worker-secret-0123456789";
const READER: &str = "reader-secret-0123456789";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What keeps a store's place alive: its directory or its PostgreSQL schema.
#[allow(dead_code)] // held for its Drop
enum Place {
    Dir(tempfile::TempDir),
    Schema(backends::PgSchema),
}

/// A runtime with its HTTP server on a store the test also holds, and one instance owned by
/// the test (as by another node), whose tasks the test enqueues.
struct World {
    _rt: Runtime,
    store: Arc<dyn Backend>,
    base: String,
    http: reqwest::Client,
    bearer: Option<&'static str>,
    fence: Fence,
    _place: Place,
}

/// An answer: status and JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// The world on `backend` (`sqlite` or `postgres`); `None` when PostgreSQL is not configured
/// (after the notice of `backends::database_url`).
async fn world(backend: &str) -> Option<World> {
    world_with(
        backend,
        HttpConfig::new("127.0.0.1:0").without_env_tokens(),
        None,
    )
    .await
}

async fn world_with(
    backend: &str,
    config: HttpConfig,
    bearer: Option<&'static str>,
) -> Option<World> {
    let (store, place): (Arc<dyn Backend>, Place) = match backend {
        "postgres" => {
            let schema = backends::PgSchema::new()?;
            let store =
                orch_runtime::store::postgres::PostgresStore::open(&schema.url, schema.options())
                    .await
                    .expect("PostgreSQL store");
            (Arc::new(store), Place::Schema(schema))
        }
        _ => {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SqliteStore::open(dir.path().join("orch.db"), SqliteOptions::default())
                .expect("SQLite store");
            (Arc::new(store), Place::Dir(dir))
        }
    };
    let rt = Runtime::builder()
        .store(store.clone())
        .no_workers()
        .http_with(config)
        .build()
        .await
        .expect("runtime with HTTP server");
    let base = rt
        .http_url()
        .expect("the server is on")
        .trim_end_matches('/')
        .to_string();
    // The instance is owned by a node of the test's own for ten minutes, so the runtime leaves
    // it alone; the test writes its tasks under that lease.
    let terms = LeaseTerms {
        node: NodeId::new("test-node").expect("node id"),
        now: now_ms(),
        ttl: 600_000,
    };
    store
        .renew(terms.clone(), Vec::new())
        .await
        .expect("register the test node");
    let record = InstanceRecord::new(INSTANCE, "checkout", "v1", "null", now_ms());
    let fence = match store.create(record, Some(terms), Vec::new()).await {
        Ok(Created::New(Some(lease))) => lease.fence(),
        other => panic!("creating the owned instance: {other:?}"),
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    Some(World {
        _rt: rt,
        store,
        base,
        http,
        bearer,
        fence,
        _place: place,
    })
}

impl World {
    /// Enqueues the task of step `seq` on `queue`, as the instance's step would.
    async fn enqueue(&self, seq: u32, queue: &str) -> NewTask {
        let task = NewTask {
            id: task_id(INSTANCE, 0, seq, 1),
            queue: queue.to_string(),
            instance: INSTANCE.to_string(),
            seq,
            attempt: 1,
            step: "charge_payment".into(),
            input: json!({"order": seq, "amount_cents": 1250}).to_string(),
            idempotency_key: format!("{INSTANCE}/{seq}"),
            priority: 0,
            created_at: now_ms(),
            deadline: None,
        };
        self.store
            .submit(
                Some(self.fence.clone()),
                vec![WriteOp::EnqueueTask {
                    instance: INSTANCE.to_string(),
                    task: Box::new(task.clone()),
                }],
            )
            .await
            .expect("enqueue");
        task
    }

    async fn task(&self, id: &str) -> TaskRecord {
        self.store
            .task(id)
            .await
            .expect("read the task")
            .expect("the task exists")
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        if let Some(t) = self.bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON ({e}): {text}"));
        Answer { status, body }
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    async fn post_raw(&self, path: &str, body: &str) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Leases for `worker` from `payments`, waiting up to `wait_ms`; must answer 200.
    async fn lease(&self, worker: &str, wait_ms: u64, lease_ms: u64) -> Vec<Value> {
        let a = self
            .post(
                "/api/v1/tasks/lease",
                json!({"worker": worker, "queues": ["payments"], "wait_ms": wait_ms,
                       "lease_ms": lease_ms}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "lease: {}", a.body);
        a.body["tasks"].as_array().expect("tasks").clone()
    }

    /// Waits until this node lists `worker` among the workers it serves (it has asked for
    /// tasks at least once, so a long-poll of its is waiting now).
    async fn wait_for_worker(&self, worker: &str) {
        wait::wait_until(&format!("worker `{worker}` to poll"), || async {
            let q = self.get("/api/v1/queues").await.body;
            let seen = q["workers"]
                .as_array()
                .is_some_and(|ws| ws.iter().any(|w| w["id"] == worker));
            if seen { Ok(()) } else { Err(q) }
        })
        .await;
    }
}

fn token_of(task: &Value) -> u64 {
    task["token"].as_u64().expect("a token")
}

fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("an id").to_string()
}

// ---------------------------------------------------------------------------------------------
// Long-poll.

async fn a_waiting_long_poll_answers_as_soon_as_a_task_is_enqueued(backend: &str) {
    let Some(w) = world(backend).await else {
        return;
    };
    let w = Arc::new(w);
    let started = Instant::now();
    let poll = tokio::spawn({
        let w = w.clone();
        async move { w.lease("w1", 60_000, 30_000).await }
    });
    w.wait_for_worker("w1").await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered with nothing to lease"
    );
    let task = w.enqueue(1, "payments").await;
    let got = poll.await.expect("the long-poll");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(45),
        "the long-poll waited {waited:?}: it did not wake on the enqueue"
    );
    assert_eq!(got.len(), 1, "{got:?}");
    let t = &got[0];
    assert_eq!(t["id"], json!(task.id));
    assert_eq!(t["queue"], "payments");
    assert_eq!(t["step"], "charge_payment");
    assert_eq!(t["instance"], INSTANCE);
    assert_eq!(t["seq"], 1);
    assert_eq!(t["attempt"], 1);
    assert_eq!(
        t["input"],
        json!({"order": 1, "amount_cents": 1250}),
        "the input is JSON, not a string"
    );
    assert_eq!(t["idempotency_key"], json!(format!("{INSTANCE}/1")));
    assert_eq!(token_of(t), 1);
    assert!(t["lease_expires_at"].is_string(), "{t}");
    assert_eq!(t["deadline"], Value::Null);
    let stored = w.task(&task.id).await;
    assert_eq!(stored.state, TaskState::Leased);
    assert_eq!(stored.worker.as_deref(), Some("w1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_long_poll_answers_as_soon_as_a_task_is_enqueued_sqlite() {
    a_waiting_long_poll_answers_as_soon_as_a_task_is_enqueued("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_long_poll_answers_as_soon_as_a_task_is_enqueued_postgres() {
    a_waiting_long_poll_answers_as_soon_as_a_task_is_enqueued("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_with_nothing_to_lease_answers_an_empty_list_when_its_wait_ends() {
    let Some(w) = world("sqlite").await else {
        return;
    };
    w.enqueue(1, "emails").await;
    assert_eq!(w.lease("idle", 0, 30_000).await, Vec::<Value>::new());
    assert_eq!(w.lease("idle", 200, 30_000).await, Vec::<Value>::new());
}

// ---------------------------------------------------------------------------------------------
// Leases, heartbeats, fencing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_extends_the_lease() {
    let Some(w) = world("sqlite").await else {
        return;
    };
    let task = w.enqueue(1, "payments").await;
    let got = w.lease("w1", 0, 1_000).await;
    assert_eq!(got.len(), 1);
    let first_end = w.task(&task.id).await.lease_expires_at.expect("leased");
    let a = w
        .post(
            &format!("/api/v1/tasks/{}/heartbeat", task.id),
            json!({"token": token_of(&got[0]), "lease_ms": 600_000}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body["lease_expires_at"].is_string(), "{}", a.body);
    let renewed = w.task(&task.id).await;
    let new_end = renewed.lease_expires_at.expect("leased");
    assert!(new_end >= first_end + 590_000, "{first_end} → {new_end}");
    // Past the first lease's end, the task is still w1's.
    wait::wait_until("the first lease's end to pass", || async {
        if now_ms() > first_end + 50 {
            Ok(())
        } else {
            Err(now_ms())
        }
    })
    .await;
    assert_eq!(w.lease("w2", 0, 30_000).await, Vec::<Value>::new());
    assert_eq!(w.task(&task.id).await, renewed);
}

async fn a_late_end_after_the_lease_ended_is_refused_and_changes_nothing(backend: &str) {
    let Some(w) = world(backend).await else {
        return;
    };
    let task = w.enqueue(1, "payments").await;
    let first = w.lease("slow", 0, 1_000).await;
    assert_eq!(first.len(), 1);
    // The second worker's long-poll gets the task once the first lease ends, with no enqueue
    // to wake it.
    let second = w.lease("fast", 60_000, 60_000).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(id_of(&second[0]), task.id);
    assert_eq!(token_of(&second[0]), 2, "a second delivery");
    assert_eq!(
        second[0]["idempotency_key"], first[0]["idempotency_key"],
        "the same idempotency key on every delivery"
    );
    let before = w.task(&task.id).await;

    let late = w
        .post(
            &format!("/api/v1/tasks/{}/complete", task.id),
            json!({"token": token_of(&first[0]), "output": "charged twice"}),
        )
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.body);
    assert_eq!(late.error_code(), "task_lost", "{}", late.body);
    let message = late.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("nothing was changed") && message.contains("stop working on it"),
        "the refusal says what happened and what to do: {message}"
    );
    for (path, body) in [
        ("heartbeat", json!({"token": token_of(&first[0])})),
        (
            "fail",
            json!({"token": token_of(&first[0]), "message": "late", "retryable": true}),
        ),
    ] {
        let a = w
            .post(&format!("/api/v1/tasks/{}/{path}", task.id), body)
            .await;
        assert_eq!(a.status, StatusCode::CONFLICT, "late {path}: {}", a.body);
        assert_eq!(a.error_code(), "task_lost");
    }
    assert_eq!(
        w.task(&task.id).await,
        before,
        "a refused late end changed the task"
    );

    let done = w
        .post(
            &format!("/api/v1/tasks/{}/complete", task.id),
            json!({"token": token_of(&second[0]), "output": "charged once"}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let after = w.task(&task.id).await;
    assert_eq!(after.state, TaskState::Completed);
    assert_eq!(after.output.as_deref(), Some("\"charged once\""));
    assert_eq!(after.worker.as_deref(), Some("fast"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_end_after_the_lease_ended_is_refused_and_changes_nothing_sqlite() {
    a_late_end_after_the_lease_ended_is_refused_and_changes_nothing("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_end_after_the_lease_ended_is_refused_and_changes_nothing_postgres() {
    a_late_end_after_the_lease_ended_is_refused_and_changes_nothing("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_task_is_refused_as_lost() {
    let Some(w) = world("sqlite").await else {
        return;
    };
    let a = w
        .post(
            "/api/v1/tasks/nobody:0:1:1/complete",
            json!({"token": 1, "output": null}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.error_code(), "task_lost");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no such task")),
        "{}",
        a.body
    );
}

// ---------------------------------------------------------------------------------------------
// Ends.

async fn a_completion_stores_the_output_and_wakes_the_instance(backend: &str) {
    let Some(w) = world(backend).await else {
        return;
    };
    let mut wakeups = w.store.wakeups();
    let task = w.enqueue(1, "payments").await;
    let got = w.lease("w1", 0, 30_000).await;
    let output = json!({"charge": "ch_1", "amount": 12.5, "lines": [1, 2]});
    let a = w
        .post(
            &format!("/api/v1/tasks/{}/complete", task.id),
            json!({"token": token_of(&got[0]), "output": output}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body, json!({"id": task.id, "state": "completed"}));
    let stored = w.task(&task.id).await;
    assert_eq!(stored.state, TaskState::Completed);
    let stored_output: Value =
        serde_json::from_str(stored.output.as_deref().unwrap_or("")).expect("JSON output");
    assert_eq!(stored_output, output);
    tokio::time::timeout(wait::PATIENCE, async {
        loop {
            match wakeups.recv().await {
                Some(Wakeup::TaskFinished { instance, task: t })
                    if instance == INSTANCE && t == task.id =>
                {
                    return;
                }
                Some(_) => {}
                None => panic!("the store went away"),
            }
        }
    })
    .await
    .expect("the instance was woken by the completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_stores_the_output_and_wakes_the_instance_sqlite() {
    a_completion_stores_the_output_and_wakes_the_instance("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_stores_the_output_and_wakes_the_instance_postgres() {
    a_completion_stores_the_output_and_wakes_the_instance("postgres").await;
}

async fn failures_are_stored_permanent_or_retryable(backend: &str) {
    let Some(w) = world(backend).await else {
        return;
    };
    let permanent = w.enqueue(1, "payments").await;
    let retryable = w.enqueue(2, "payments").await;
    let got = w.lease("w1", 0, 30_000).await;
    assert_eq!(got.len(), 1);
    let got2 = w.lease("w1", 0, 30_000).await;
    assert_eq!(got2.len(), 1);
    let token = |id: &str| {
        got.iter()
            .chain(got2.iter())
            .find(|t| t["id"] == id)
            .map(token_of)
            .expect("leased")
    };
    for (task, retry) in [(&permanent, false), (&retryable, true)] {
        let a = w
            .post(
                &format!("/api/v1/tasks/{}/fail", task.id),
                json!({"token": token(&task.id), "message": "card declined", "retryable": retry}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["state"], "failed");
        let stored = w.task(&task.id).await;
        assert_eq!(stored.state, TaskState::Failed);
        assert_eq!(stored.error.as_deref(), Some("card declined"));
        assert_eq!(stored.retryable, retry);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_stored_permanent_or_retryable_sqlite() {
    failures_are_stored_permanent_or_retryable("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_stored_permanent_or_retryable_postgres() {
    failures_are_stored_permanent_or_retryable("postgres").await;
}

// ---------------------------------------------------------------------------------------------
// Refusals.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_with_a_json_400_and_change_nothing() {
    let Some(w) = world("sqlite").await else {
        return;
    };
    let task = w.enqueue(1, "payments").await;
    let pending = w.task(&task.id).await;
    let lease = |extra: Value| {
        let mut body = json!({"worker": "w1", "queues": ["payments"], "wait_ms": 0});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body.to_string()
    };
    for (what, body) in [
        ("not JSON", "{\"worker\": ".to_string()),
        ("an array", "[]".to_string()),
        ("no worker", json!({"queues": ["payments"]}).to_string()),
        ("no queues", json!({"worker": "w1"}).to_string()),
        ("empty queues", lease(json!({"queues": []}))),
        (
            "a queue with a space",
            lease(json!({"queues": ["pay ments"]})),
        ),
        (
            "a queue of 65 bytes",
            lease(json!({"queues": ["q".repeat(65)]})),
        ),
        ("a number for a queue", lease(json!({"queues": [7]}))),
        ("an empty worker", lease(json!({"worker": ""}))),
        (
            "a worker of 129 bytes",
            lease(json!({"worker": "w".repeat(129)})),
        ),
        ("a worker with a newline", lease(json!({"worker": "w\n1"}))),
        ("max_tasks 0", lease(json!({"max_tasks": 0}))),
        ("max_tasks 101", lease(json!({"max_tasks": 101}))),
        ("negative max_tasks", lease(json!({"max_tasks": -1}))),
        ("wait_ms over a minute", lease(json!({"wait_ms": 60_001}))),
        ("a string wait_ms", lease(json!({"wait_ms": "20s"}))),
        ("lease_ms 10", lease(json!({"lease_ms": 10}))),
        (
            "lease_ms over an hour",
            lease(json!({"lease_ms": 3_600_001})),
        ),
        ("an unknown field", lease(json!({"queue": "payments"}))),
    ] {
        let a = w.post_raw("/api/v1/tasks/lease", &body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {}", a.body);
        assert_eq!(a.error_code(), "bad_request", "{what}");
    }
    assert_eq!(w.task(&task.id).await, pending, "a refused lease leased");

    let got = w.lease("w1", 0, 30_000).await;
    let token = token_of(&got[0]);
    let leased = w.task(&task.id).await;
    for (what, path, body) in [
        ("no token", "complete", json!({"output": 1})),
        ("no output", "complete", json!({"token": token})),
        (
            "a string token",
            "complete",
            json!({"token": "1", "output": 1}),
        ),
        (
            "a negative token",
            "complete",
            json!({"token": -1, "output": 1}),
        ),
        (
            "an unknown field",
            "complete",
            json!({"token": token, "output": 1, "result": 1}),
        ),
        (
            "no retryable",
            "fail",
            json!({"token": token, "message": "x"}),
        ),
        (
            "a string retryable",
            "fail",
            json!({"token": token, "message": "x", "retryable": "yes"}),
        ),
        (
            "a message with NUL",
            "fail",
            json!({"token": token, "message": "a\u{0}b", "retryable": true}),
        ),
        (
            "a message over 64 KiB",
            "fail",
            json!({"token": token, "message": "m".repeat(65 * 1024), "retryable": true}),
        ),
        ("no token", "heartbeat", json!({"lease_ms": 30_000})),
        (
            "lease_ms 0",
            "heartbeat",
            json!({"token": token, "lease_ms": 0}),
        ),
    ] {
        let a = w
            .post(&format!("/api/v1/tasks/{}/{path}", task.id), body)
            .await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{path}, {what}: {}",
            a.body
        );
        assert_eq!(a.error_code(), "bad_request", "{path}, {what}");
    }
    let big = format!(
        "{{\"token\": {token}, \"output\": \"{}\"}}",
        "x".repeat(orch_runtime::server::MAX_BODY + 1)
    );
    let a = w
        .post_raw(&format!("/api/v1/tasks/{}/complete", task.id), &big)
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert_eq!(
        w.task(&task.id).await,
        leased,
        "a refused end changed the task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_the_server_has_tokens() {
    let config = HttpConfig::new("127.0.0.1:0")
        .without_env_tokens()
        .admin_token("worker", ADMIN)
        .read_token("viewer", READER);
    let Some(mut w) = world_with("sqlite", config, None).await else {
        return;
    };
    let task = w.enqueue(1, "payments").await;
    let body = json!({"worker": "w1", "queues": ["payments"], "wait_ms": 0});
    let a = w.post("/api/v1/tasks/lease", body.clone()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert_eq!(a.error_code(), "unauthorized");
    let a = w
        .post(
            &format!("/api/v1/tasks/{}/complete", task.id),
            json!({"token": 1, "output": 1}),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert_eq!(
        w.get("/api/v1/queues").await.status,
        StatusCode::UNAUTHORIZED
    );

    w.bearer = Some(READER);
    let a = w.post("/api/v1/tasks/lease", body.clone()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert_eq!(a.error_code(), "forbidden");
    assert_eq!(w.get("/api/v1/queues").await.status, StatusCode::OK);
    assert_eq!(w.task(&task.id).await.state, TaskState::Pending);

    w.bearer = Some(ADMIN);
    let got = w.lease("w1", 0, 30_000).await;
    assert_eq!(got.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Visibility.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_show_depth_in_flight_ends_and_the_workers_seen() {
    let Some(w) = world("sqlite").await else {
        return;
    };
    for seq in 1..=3 {
        w.enqueue(seq, "payments").await;
    }
    let got = w.lease("w1", 0, 30_000).await;
    let a = w
        .post(
            &format!("/api/v1/tasks/{}/heartbeat", id_of(&got[0])),
            json!({"token": token_of(&got[0])}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // A worker of another queue that has no task yet: its queue is listed, empty.
    assert_eq!(
        w.post(
            "/api/v1/tasks/lease",
            json!({"worker": "mailer", "queues": ["emails"], "wait_ms": 0})
        )
        .await
        .status,
        StatusCode::OK
    );
    let q = w.get("/api/v1/queues").await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    let queues = q.body["queues"].as_array().expect("queues");
    let names: Vec<&str> = queues.iter().filter_map(|q| q["queue"].as_str()).collect();
    assert_eq!(names, ["emails", "payments"]);
    let pay = &queues[1];
    assert_eq!(pay["waiting"], 2, "{pay}");
    assert_eq!(pay["in_flight"], 1, "{pay}");
    assert!(pay["oldest_waiting"].is_string(), "{pay}");
    assert_eq!(pay["completed"], 0);
    assert_eq!(queues[0]["waiting"], 0);
    let workers = q.body["workers"].as_array().expect("workers");
    let ids: Vec<&str> = workers.iter().filter_map(|w| w["id"].as_str()).collect();
    assert_eq!(ids, ["mailer", "w1"]);
    assert_eq!(workers[1]["queues"], json!(["payments"]));
    assert!(workers[1]["last_poll"].is_string());
    assert!(
        workers[1]["last_heartbeat"].is_string(),
        "the heartbeat is credited to w1: {}",
        workers[1]
    );
    assert_eq!(workers[0]["last_heartbeat"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// End to end: a workflow's queued step served over HTTP.

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, JsonSchema)]
struct Receipt {
    charge: String,
    cents: u64,
}

/// Served by the test's HTTP worker: the runtime runs no worker of its own (`no_workers`).
#[step(queue = "http-payments", retry = Retry::none())]
async fn charge_card(order: String, cents: u64) -> Result<Receipt, StepError> {
    Err(StepError::permanent(format!(
        "this binary does not charge {order} ({cents}): an HTTP worker does"
    )))
}

#[workflow]
async fn http_checkout(order: String) -> Result<Receipt, StepError> {
    charge_card(order, 1250).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_step_is_served_by_a_worker_that_speaks_only_http() {
    let Some(w) = world("sqlite").await else {
        return;
    };
    let lease = || async {
        let a = w
            .post(
                "/api/v1/tasks/lease",
                json!({"worker": "py-1", "queues": ["http-payments"], "wait_ms": 60_000}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let tasks = a.body["tasks"].as_array().cloned().unwrap_or_default();
        assert_eq!(tasks.len(), 1, "{}", a.body);
        tasks[0].clone()
    };
    let instance = |id: &'static str| {
        let w = &w;
        move || async move {
            let i = w.get(&format!("/api/v1/instances/{id}")).await.body;
            match i["status"].as_str() {
                Some("completed" | "failed") => Ok(i),
                _ => Err(i),
            }
        }
    };

    for (id, order) in [("hc-1", "order-9"), ("hc-2", "order-10")] {
        let a = w
            .post(
                "/api/v1/instances",
                json!({"workflow": "http_checkout", "input": order, "id": id}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let first = lease().await;
    let second = lease().await;
    let (paid, declined) = if first["instance"] == "hc-1" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(paid["step"], "charge_card");
    assert_eq!(paid["input"], json!({"order": "order-9", "cents": 1250}));
    assert_eq!(paid["idempotency_key"], "hc-1/1");

    let a = w
        .post(
            &format!("/api/v1/tasks/{}/complete", id_of(&paid)),
            json!({"token": token_of(&paid), "output": {"charge": "ch_1", "cents": 1250}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let done = wait::wait_until("hc-1 to finish", instance("hc-1")).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["output"],
        json!({"Ok": {"charge": "ch_1", "cents": 1250}})
    );

    let a = w
        .post(
            &format!("/api/v1/tasks/{}/fail", id_of(&declined)),
            json!({"token": token_of(&declined), "message": "card declined", "retryable": false}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let failed = wait::wait_until("hc-2 to finish", instance("hc-2")).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed.to_string().contains("card declined"),
        "the worker's message is the step's error: {failed}"
    );
}
