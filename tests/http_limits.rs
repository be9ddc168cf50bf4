//! Documented caps on what one request may ask for: free-text fields over their cap are
//! refused with a JSON 400 and change nothing, search pages stay small whatever the instances
//! hold, a bulk filter that says nothing is refused, and a bulk call over its cap says how
//! many it left.

#[path = "support/http.rs"]
mod http;

use http::open;
use orch_runtime::limits::{MAX_ATTR_KEY_BYTES, MAX_ATTR_VALUE_BYTES, MAX_REASON_BYTES};
use orch_runtime::limits::{MAX_CUSTOM_STATUS_BYTES, MAX_SIGNAL_NAME_BYTES};
use orch_runtime::prelude::*;
use reqwest::StatusCode;
use serde_json::json;

#[workflow]
async fn held(key: String) -> Result<String, StepError> {
    let go: String = orch::signal("go").await;
    Ok(format!("{key}:{go}"))
}

#[workflow]
async fn crashes(len: usize) -> Result<(), StepError> {
    panic!("{}", "E".repeat(len));
}

#[workflow]
async fn chatty(len: usize) -> Result<(), StepError> {
    orch::set_status("s".repeat(len)).await;
    let _: String = orch::signal("go").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_over_its_cap_is_refused_and_changes_nothing() {
    let s = open().await;
    s.start("held", json!("a"), "cap-1").await;
    s.wait_for("cap-1", "suspended", |i| i["status"] == "suspended")
        .await;
    let before = s.snapshot().await;
    let long_reason = "r".repeat(MAX_REASON_BYTES + 1);
    let long_name = "n".repeat(MAX_SIGNAL_NAME_BYTES + 1);
    let refused = [
        (
            "/api/v1/instances/cap-1/cancel",
            json!({"reason": long_reason}),
        ),
        (
            "/api/v1/instances/cap-1/terminate",
            json!({"reason": long_reason}),
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {"workflow": "held"}, "reason": long_reason}),
        ),
        (
            "/api/v1/instances/cap-1/signal",
            json!({"name": long_name, "payload": "x"}),
        ),
        // A 2 MiB reason: still one JSON 400, not stored twice.
        (
            "/api/v1/instances/cap-1/cancel",
            json!({"reason": "é".repeat(1 << 19)}),
        ),
    ];
    for (path, body) in refused {
        let r = s.post(path, &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {:.300}", r.text);
        assert_eq!(r.error_code(), "bad_request", "{path}");
        assert!(r.text.contains("over the limit"), "{path}: {:.300}", r.text);
    }
    let long_key = "k".repeat(MAX_ATTR_KEY_BYTES + 1);
    let long_value = "v".repeat(MAX_ATTR_VALUE_BYTES + 1);
    for path in [
        format!("/api/v1/instances?attr.{long_key}=1"),
        format!("/api/v1/instances?attr.k={long_value}"),
        format!("/api/v1/stats/attributes?key=k&attr.k={long_value}"),
    ] {
        let r = s.get(&path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:.300}", r.text);
        assert_eq!(r.error_code(), "bad_request");
    }
    assert_eq!(
        s.snapshot().await,
        before,
        "a refused call changed something"
    );
    // At the cap, it is accepted.
    let r = s
        .post(
            "/api/v1/instances/cap-1/cancel",
            &json!({"reason": "r".repeat(MAX_REASON_BYTES)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_page_stays_small_whatever_the_instances_hold() {
    let s = open().await;
    const N: usize = 20;
    for i in 0..N {
        s.start("crashes", json!(200_000), &format!("big-{i:02}"))
            .await;
    }
    s.start("chatty", json!(60_000), "chatty-1").await;
    for i in 0..N {
        s.wait_for(&format!("big-{i:02}"), "failed", |v| {
            v["status"] == "failed"
        })
        .await;
    }
    let full = s
        .wait_for("chatty-1", "suspended", |v| v["status"] == "suspended")
        .await;
    assert_eq!(full["custom_status"].as_str().map(str::len), Some(60_000));

    let r = s.get("/api/v1/instances?limit=500").await;
    assert_eq!(r.status, StatusCode::OK);
    // 21 instances, each far under 4 KiB in the page, though their errors are 200 KB.
    assert!(
        r.text.len() < 21 * 4096,
        "a page of 21 summaries is {} bytes",
        r.text.len()
    );
    let page = r.json();
    for i in page["instances"].as_array().expect("instances") {
        if i["workflow"] == "crashes" {
            assert_eq!(i["error_truncated"], json!(true), "{i}");
            assert!(i["error"].as_str().is_some_and(|e| e.ends_with('…')), "{i}");
        } else {
            assert_eq!(i["custom_status_truncated"], json!(true), "{i}");
            assert_eq!(i["custom_status"], json!(null), "{i}");
        }
    }
    // The instance's own GET keeps the whole error.
    let one = s.get("/api/v1/instances/big-00").await.json();
    assert!(
        one["error"].as_str().is_some_and(|e| e.len() >= 200_000),
        "the full error is kept on the instance"
    );
    assert_eq!(one["error_truncated"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_status_over_its_cap_fails_the_instance_with_a_clear_error() {
    let s = open().await;
    s.start("chatty", json!(MAX_CUSTOM_STATUS_BYTES + 1), "too-chatty")
        .await;
    let inst = s
        .wait_for("too-chatty", "failed", |v| v["status"] == "failed")
        .await;
    let error = inst["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("orch::set_status") && error.contains("over the limit"),
        "{inst}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_filter_that_says_nothing_is_refused() {
    let s = open().await;
    s.start("held", json!("a"), "keep-1").await;
    s.wait_for("keep-1", "suspended", |i| i["status"] == "suspended")
        .await;
    let before = s.snapshot().await;
    for filter in [
        json!({"status": []}),
        json!({"attr": {}}),
        json!({"id_prefix": ""}),
        json!({"workflow": ""}),
        json!({"parent": null}),
        json!({"status": [], "attr": {}, "id_prefix": "", "created_after": ""}),
    ] {
        for path in ["/api/v1/bulk/cancel", "/api/v1/bulk/retry"] {
            let r = s.post(path, &json!({"filter": filter})).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{path} {filter}: {}",
                r.text
            );
            assert_eq!(r.error_code(), "bad_request");
            assert!(r.text.contains("no condition"), "{}", r.text);
        }
    }
    // An empty value of another type than the field's is a wrong type, not an absent one.
    for filter in [
        json!({"parent": {}, "id_prefix": "keep-"}),
        json!({"workflow": [], "id_prefix": "keep-"}),
        json!({"attr": [], "id_prefix": "keep-"}),
        json!({"status": {}, "id_prefix": "keep-"}),
    ] {
        let r = s
            .post("/api/v1/bulk/cancel", &json!({"filter": filter}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{filter}: {}", r.text);
        assert!(r.text.contains("must be"), "{filter}: {}", r.text);
    }
    assert_eq!(
        s.snapshot().await,
        before,
        "a refused bulk call changed something"
    );
    // A blank condition next to a real one is ignored, not refused.
    let r = s
        .post(
            "/api/v1/bulk/cancel",
            &json!({"filter": {"status": [], "id_prefix": "keep-"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["matched"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_call_over_its_cap_says_how_many_it_left() {
    let s = open().await;
    const OVER: usize = 25;
    let total = orch_runtime::admin::MAX_BULK + OVER;
    let ids: Vec<String> = (0..total).map(|i| format!("many-{i:05}")).collect();
    futures_util::future::join_all(ids.chunks(1000).map(|chunk| {
        let rt = s.rt.clone();
        async move {
            for id in chunk {
                rt.start_json_as("held", Some(id), "\"x\"", None)
                    .await
                    .expect("start");
            }
        }
    }))
    .await;
    let r = s
        .post(
            "/api/v1/bulk/retry",
            &json!({"filter": {"id_prefix": "many-"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:.300}", r.text);
    let out = r.json();
    assert_eq!(out["matched"], json!(total), "{:.300}", r.text);
    assert_eq!(out["attempted"], json!(orch_runtime::admin::MAX_BULK));
    assert_eq!(out["remaining"], json!(OVER));
    let failed = out["failed"].as_array().map_or(0, Vec::len);
    let succeeded = out["succeeded"].as_array().map_or(0, Vec::len);
    assert_eq!(failed + succeeded, orch_runtime::admin::MAX_BULK);
}
