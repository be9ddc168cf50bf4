//! The worker role (`HttpConfig::worker_token`, `ORCH_WORKER_TOKENS`): a worker token may use
//! the worker protocol (lease, heartbeat, complete, fail; list the queues) and nothing else; an
//! admin token may use it too; a read token may only list the queues. Each role on each route of
//! the protocol, against a real server with a real task; a refused call changes nothing.

#[path = "support/wait.rs"]
mod wait;

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use orch_runtime::store::Backend;
use orch_runtime::store::task::{TaskState, task_id};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

const ADMIN: &str = "admin-secret-0123456789";
const READER: &str = "reader-secret-0123456789";
const WORKER: &str = "worker-secret-0123456789";

#[step(queue = "wt-payments")]
async fn charge(order: String) -> Result<String, StepError> {
    Ok(order)
}

#[workflow]
async fn pay(order: String) -> Result<String, StepError> {
    charge(order).await
}

struct Server {
    rt: Runtime,
    store: Arc<dyn Backend>,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Backend> = Arc::new(
        orch_runtime::store::sqlite::SqliteStore::open(
            dir.path().join("orch.db"),
            Default::default(),
        )
        .expect("open"),
    );
    let rt = Runtime::builder()
        .store(store.clone())
        .no_workers()
        .http_with(
            HttpConfig::new("127.0.0.1:0")
                .without_env_tokens()
                .admin_token("ops", ADMIN)
                .read_token("viewer", READER)
                .worker_token("payments-workers", WORKER),
        )
        .build()
        .await
        .expect("runtime");
    let base = rt
        .http_url()
        .expect("url")
        .trim_end_matches('/')
        .to_string();
    Server {
        rt,
        store,
        base,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("sent");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn lease(&self, token: &str) -> (StatusCode, Value) {
        self.call(
            token,
            "POST",
            "/api/v1/tasks/lease",
            Some(json!({"worker": "w", "queues": ["wt-payments"], "wait_ms": 0})),
        )
        .await
    }

    /// Starts `pay` as `id` and waits until its task is enqueued; returns the task id.
    async fn task_of(&self, id: &str) -> String {
        self.rt
            .start_with_id(Pay, id, id.to_string())
            .await
            .expect("start");
        let task = task_id(id, 0, 1, 1);
        wait::wait_until("the task to be enqueued", || async {
            self.store.task(&task).await.expect("read").ok_or(())
        })
        .await;
        task
    }

    async fn state(&self, task: &str) -> (TaskState, u64) {
        let t = self.store.task(task).await.expect("read").expect("exists");
        (t.state, t.token)
    }
}

fn forbidden(answer: &(StatusCode, Value), what: &str) {
    assert_eq!(answer.0, StatusCode::FORBIDDEN, "{what}: {}", answer.1);
    assert_eq!(
        answer.1["error"]["code"], "forbidden",
        "{what}: {}",
        answer.1
    );
}

/// Leases the one task of `pay` with `token`; returns (id, fencing token).
async fn leased(s: &Server, token: &str) -> (String, u64) {
    let (status, body) = s.lease(token).await;
    assert_eq!(status, StatusCode::OK, "lease: {body}");
    let t = &body["tasks"][0];
    (
        t["id"].as_str().expect("a task").to_string(),
        t["token"].as_u64().expect("token"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_token_may_use_every_route_of_the_worker_protocol() {
    let s = server().await;
    let (status, body) = s.call(WORKER, "GET", "/api/v1/queues", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let task = s.task_of("w-1").await;
    let (id, token) = leased(&s, WORKER).await;
    assert_eq!(id, task);
    let hb = s
        .call(
            WORKER,
            "POST",
            &format!("/api/v1/tasks/{id}/heartbeat"),
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(hb.0, StatusCode::OK, "{}", hb.1);
    let done = s
        .call(
            WORKER,
            "POST",
            &format!("/api/v1/tasks/{id}/complete"),
            Some(json!({"token": token, "output": "w-1"})),
        )
        .await;
    assert_eq!(done.0, StatusCode::OK, "{}", done.1);
    assert_eq!(s.state(&id).await.0, TaskState::Completed);
    // fail, on a second task.
    let task = s.task_of("w-2").await;
    let (id, token) = leased(&s, WORKER).await;
    assert_eq!(id, task);
    let failed = s
        .call(
            WORKER,
            "POST",
            &format!("/api/v1/tasks/{id}/fail"),
            Some(json!({"token": token, "message": "no", "retryable": false})),
        )
        .await;
    assert_eq!(failed.0, StatusCode::OK, "{}", failed.1);
    assert_eq!(s.state(&id).await.0, TaskState::Failed);
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_token_may_use_nothing_but_the_worker_protocol() {
    let s = server().await;
    s.task_of("w-1").await;
    let before = s.call(ADMIN, "GET", "/api/v1/instances/w-1", None).await;
    assert_eq!(before.0, StatusCode::OK);
    for (method, path, body) in [
        ("GET", "/api/v1/instances", None),
        ("GET", "/api/v1/instances/w-1", None),
        ("GET", "/api/v1/instances/w-1/journal", None),
        ("GET", "/api/v1/definitions", None),
        ("GET", "/api/v1/whoami", None),
        ("GET", "/api/v1/stats", None),
        ("GET", "/api/v1/audit", None),
        ("GET", "/api/v1/nodes", None),
        ("GET", "/api/v1/openapi.json", None),
        ("GET", "/metrics", None),
        (
            "POST",
            "/api/v1/instances",
            Some(json!({"workflow": "pay", "input": "x"})),
        ),
        ("POST", "/api/v1/instances/w-1/cancel", Some(json!({}))),
        ("POST", "/api/v1/instances/w-1/terminate", Some(json!({}))),
        (
            "POST",
            "/api/v1/instances/w-1/signal",
            Some(json!({"name": "s", "payload": 1})),
        ),
        ("POST", "/api/v1/bulk/cancel", Some(json!({}))),
    ] {
        let answer = s.call(WORKER, method, path, body).await;
        forbidden(&answer, &format!("worker token on {method} {path}"));
        assert!(
            answer.1["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("worker token")),
            "the refusal says why: {}",
            answer.1
        );
    }
    let after = s.call(ADMIN, "GET", "/api/v1/instances/w-1", None).await;
    assert_eq!(after.1["status"], before.1["status"], "nothing changed");
    assert_eq!(
        s.state(&task_id("w-1", 0, 1, 1)).await.0,
        TaskState::Pending
    );
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_may_list_the_queues_but_not_lease_nor_end_a_task() {
    let s = server().await;
    let (status, body) = s.call(READER, "GET", "/api/v1/queues", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let task = s.task_of("r-1").await;
    forbidden(&s.lease(READER).await, "read token leasing");
    assert_eq!(
        s.state(&task).await,
        (TaskState::Pending, 0),
        "nothing leased"
    );
    let (id, token) = leased(&s, WORKER).await;
    for action in ["heartbeat", "complete", "fail"] {
        let body = json!({"token": token, "output": 1, "message": "m", "retryable": true});
        let body = match action {
            "heartbeat" => json!({"token": token}),
            "complete" => json!({"token": token, "output": body["output"]}),
            _ => json!({"token": token, "message": "m", "retryable": true}),
        };
        let answer = s
            .call(
                READER,
                "POST",
                &format!("/api/v1/tasks/{id}/{action}"),
                Some(body),
            )
            .await;
        forbidden(&answer, &format!("read token on {action}"));
        assert_eq!(
            s.state(&id).await,
            (TaskState::Leased, token),
            "{action} changed nothing"
        );
    }
    s.rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_may_use_the_worker_protocol_too() {
    let s = server().await;
    let (status, body) = s.call(ADMIN, "GET", "/api/v1/queues", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.task_of("a-1").await;
    let (id, token) = leased(&s, ADMIN).await;
    let hb = s
        .call(
            ADMIN,
            "POST",
            &format!("/api/v1/tasks/{id}/heartbeat"),
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(hb.0, StatusCode::OK, "{}", hb.1);
    let failed = s
        .call(
            ADMIN,
            "POST",
            &format!("/api/v1/tasks/{id}/fail"),
            Some(json!({"token": token, "message": "retry me", "retryable": true})),
        )
        .await;
    assert_eq!(failed.0, StatusCode::OK, "{}", failed.1);
    // The retry is a new task: complete it.
    let next = task_id("a-1", 0, 1, 2);
    wait::wait_until("the second attempt's task", || async {
        s.store.task(&next).await.expect("read").ok_or(())
    })
    .await;
    let (id, token) = leased(&s, ADMIN).await;
    assert_eq!(id, next);
    let done = s
        .call(
            ADMIN,
            "POST",
            &format!("/api/v1/tasks/{id}/complete"),
            Some(json!({"token": token, "output": "a-1"})),
        )
        .await;
    assert_eq!(done.0, StatusCode::OK, "{}", done.1);
    s.rt.shutdown().await.expect("shutdown");
}
