//! What operators see of the task queues: `GET /api/v1/queues` (each queue with its `kind`,
//! depth, in flight, oldest waiting, throughput and connected workers) and the per-queue
//! Prometheus metrics at `/metrics`, against a real server whose tasks a worker speaking HTTP
//! leases and completes; and in a cluster, every node lists the workers polling any node (each
//! node records those it saw in the store at most every 5 s). (`orch queues` is tested in orch-runtime/tests/cli.rs, the UI's
//! queues page in tests/web_ui.rs.)

#[path = "support/wait.rs"]
mod wait;

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use serde_json::{Value, json};

#[step(queue = "vis-payments")]
async fn charge(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[workflow]
async fn pay(n: u32) -> Result<u32, StepError> {
    charge(n).await
}

/// The value of the sample `name{queue="vis-payments"}` in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{queue=\"vis-payments\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_metrics_show_depth_in_flight_throughput_and_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .no_workers()
        .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
        .build()
        .await
        .expect("runtime");
    let base = rt.http_url().expect("url");
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move { http.get(url).send().await.expect("get") }
    };
    for (id, n) in [("v-1", 1), ("v-2", 2), ("v-3", 3)] {
        rt.start_with_id(Pay, id, n).await.expect("start");
    }
    wait::wait_until("three tasks waiting", || async {
        let q: Value = get("api/v1/queues").await.json().await.expect("json");
        if q["queues"][0]["waiting"] == json!(3) {
            Ok(())
        } else {
            Err(q)
        }
    })
    .await;
    // A worker leases two and completes one.
    let leased: Value = http
        .post(format!("{base}api/v1/tasks/lease"))
        .json(
            &json!({"worker": "vis-w", "queues": ["vis-payments"], "max_tasks": 2,
                      "wait_ms": 0}),
        )
        .send()
        .await
        .expect("lease")
        .json()
        .await
        .expect("json");
    let tasks = leased["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 2, "{leased}");
    let done = http
        .post(format!(
            "{base}api/v1/tasks/{}/complete",
            tasks[0]["id"].as_str().expect("id")
        ))
        .json(&json!({"token": tasks[0]["token"], "output": 1}))
        .send()
        .await
        .expect("complete");
    assert_eq!(done.status(), 200);

    let q: Value = get("api/v1/queues").await.json().await.expect("json");
    let row = &q["queues"][0];
    assert_eq!(row["kind"], json!("task"), "{q}");
    assert_eq!(row["queue"], json!("vis-payments"), "{q}");
    assert_eq!(
        (
            &row["waiting"],
            &row["in_flight"],
            &row["completed"],
            &row["finished_last_minute"],
            &row["workers"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(1), &json!(1)),
        "{q}"
    );
    assert!(row["oldest_waiting"].is_string(), "{q}");
    assert_eq!(q["workers"][0]["id"], json!("vis-w"), "{q}");
    assert_eq!(q["workers"][0]["connected"], json!(true), "{q}");

    let text = get("metrics").await.text().await.expect("metrics");
    assert_eq!(sample(&text, "orch_queue_waiting"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "orch_queue_in_flight"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "orch_queue_tasks_completed_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "orch_queue_tasks_failed_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "orch_queue_workers"), Some(1.0), "{text}");
    let age = sample(&text, "orch_queue_oldest_waiting_seconds").expect("oldest age");
    assert!((0.0..600.0).contains(&age), "{age}");
    // The counters keep counting across scrapes.
    let done = http
        .post(format!(
            "{base}api/v1/tasks/{}/complete",
            tasks[1]["id"].as_str().expect("id")
        ))
        .json(&json!({"token": tasks[1]["token"], "output": 2}))
        .send()
        .await
        .expect("complete");
    assert_eq!(done.status(), 200);
    let text = get("metrics").await.text().await.expect("metrics");
    assert_eq!(
        sample(&text, "orch_queue_tasks_completed_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "orch_queue_in_flight"), Some(0.0), "{text}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_the_workers_that_poll_any_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = |id: &'static str| {
        let db = dir.path().join("orch.db");
        async move {
            Runtime::builder()
                .sqlite(db)
                .node_id(id)
                .no_workers()
                .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
                .build()
                .await
                .expect("runtime")
        }
    };
    let (a, b) = (node("node-a").await, node("node-b").await);
    let (url_a, url_b) = (a.http_url().expect("a"), b.http_url().expect("b"));
    let http = reqwest::Client::new();
    // A worker polls node A only.
    let leased = http
        .post(format!("{url_a}api/v1/tasks/lease"))
        .json(&json!({"worker": "far-w", "queues": ["vis-far"], "wait_ms": 0}))
        .send()
        .await
        .expect("lease");
    assert_eq!(leased.status(), 200);
    // Node B lists it (recorded in the store by node A), with the node it polled.
    let seen = wait::wait_until("node B to list the worker of node A", || async {
        let q: Value = http
            .get(format!("{url_b}api/v1/queues"))
            .send()
            .await
            .expect("queues")
            .json()
            .await
            .expect("json");
        let w = q["workers"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["id"] == "far-w").cloned());
        w.map(|w| (w, q.clone())).ok_or(q)
    })
    .await;
    let (w, q) = seen;
    assert_eq!(w["node"], json!("node-a"), "{q}");
    assert_eq!(w["queues"], json!(["vis-far"]), "{q}");
    assert_eq!(w["connected"], json!(true), "{q}");
    let row = q["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|r| r["queue"] == "vis-far").cloned())
        .expect("the queue the worker asks for is listed on node B");
    assert_eq!(row["workers"], json!(1), "{q}");
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
}
