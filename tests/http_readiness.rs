//! `/readyz` tells a load balancer whether the server can do its job: it answers 503 with a
//! JSON body naming the failure when writes fail for real (here the database reaches its
//! size cap, which fails writes with SQLite's "database or disk is full", as a full disk
//! does), while `/healthz` (liveness) stays 200.

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use orch_runtime::store::sqlite::SqliteOptions;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[workflow]
async fn keep(blob: String) -> usize {
    blob.len()
}

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let res = http.get(url).send().await.expect("reach the server");
    let status = res.status();
    (status, res.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_writes_fail_while_liveness_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite_with(
            dir.path().join("orch.db"),
            SqliteOptions {
                max_bytes: Some(1024 * 1024),
                ..Default::default()
            },
        )
        .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
        .build()
        .await
        .expect("runtime");
    let base = rt.http_url().expect("server");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let (status, body) = get(&http, &format!("{base}readyz")).await;
    assert_eq!(status, StatusCode::OK, "ready while writes succeed: {body}");
    assert_eq!(body["checks"]["write"], "ok", "{body}");

    // Fill the database until starts fail for want of space: large inputs first, then
    // small ones, until even a 4 KiB input does not fit (every write fails, as on a full disk).
    let mut failure = None;
    let mut n = 0;
    for size in [64 * 1024, 4 * 1024] {
        let blob = "x".repeat(size);
        failure = None;
        for _ in 0..1000 {
            n += 1;
            let res = http
                .post(format!("{base}api/v1/instances"))
                .json(&json!({"workflow": "keep", "input": blob, "id": format!("big-{n}")}))
                .send()
                .await
                .expect("start");
            if !res.status().is_success() {
                failure = Some(res.json::<Value>().await.expect("error body"));
                break;
            }
        }
    }
    let failure = failure.expect("a 1 MiB database fills up");
    let message = failure["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("database or disk is full"),
        "the start failed on space: {failure}"
    );

    // A start that failed may have been committed in one batch with another instance's end,
    // and rolled back with it, leaving room that write needed: fill what is left the same way
    // until the probe finds no room either.
    let blob = "x".repeat(4 * 1024);
    let (mut status, mut body) = get(&http, &format!("{base}readyz")).await;
    for _ in 0..200 {
        if status != StatusCode::OK {
            break;
        }
        n += 1;
        let _ = http
            .post(format!("{base}api/v1/instances"))
            .json(&json!({"workflow": "keep", "input": blob, "id": format!("big-{n}")}))
            .send()
            .await
            .expect("start");
        (status, body) = get(&http, &format!("{base}readyz")).await;
    }
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["failed_check"], "write", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("database or disk is full")),
        "readiness names the write failure: {body}"
    );
    let (status, body) = get(&http, &format!("{base}healthz")).await;
    assert_eq!(status, StatusCode::OK, "liveness still answers: {body}");
}
