//! Whatever text a request carries — query values, path segments, body fields, an oversized
//! request target or oversized headers — the server answers it (never panics or drops the
//! connection), and every refusal is a 4xx with the documented JSON error body
//! `{"error": {"code", "message"}}` that quotes no SQL or other internals.

#[path = "support/http.rs"]
mod http;
#[path = "support/wait.rs"]
mod wait;

use http::{encode, encode_all, open};
use orch_runtime::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[workflow]
async fn parked(key: String) -> Result<String, StepError> {
    let go: String = orch::signal("go").await;
    Ok(format!("{key}:{go}"))
}

/// Asserts an answer is a success or a documented refusal with the JSON error body.
fn answered_cleanly(what: &str, r: &http::Resp) {
    assert!(
        !r.status.is_server_error(),
        "{what}: {} {:.300}",
        r.status,
        r.text
    );
    if !r.status.is_success() {
        let code = r.error_code();
        assert!(
            matches!(
                r.status,
                StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::CONFLICT
            ),
            "{what}: undocumented status {} ({code})",
            r.status
        );
        let lower = r.text.to_ascii_lowercase();
        for internal in ["sqlite", "select ", "sql ", "too many sql variables"] {
            assert!(
                !lower.contains(internal),
                "{what}: leaks internals: {}",
                r.text
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_filters_refuse_non_ascii_text_with_a_json_400() {
    let s = open().await;
    s.start("parked", json!("a"), "t-1").await;
    let bad = "%C3%A9%C3%A9%C3%A9%C3%A9a"; // "ééééa": a multi-byte char where an offset goes
    for param in ["created_after", "created_before", "updated_after"] {
        for path in [
            format!("/api/v1/instances?{param}={bad}"),
            format!("/api/v1/stats/attributes?key=k&{param}={bad}"),
        ] {
            let r = s.get(&path).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
            assert_eq!(r.error_code(), "bad_request");
            assert!(r.text.contains("is not a time"), "{path}: {}", r.text);
        }
        let r = s
            .post(
                "/api/v1/bulk/cancel",
                &json!({"filter": {param: "ééééa", "workflow": "parked"}}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "bulk {param}: {}",
            r.text
        );
        assert_eq!(r.error_code(), "bad_request");
    }
    assert_eq!(s.get("/healthz").await.status, StatusCode::OK);
    let inst = s.get("/api/v1/instances/t-1").await.json();
    assert_eq!(inst["cancel_requested"], json!(false), "{inst}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_segment_that_is_not_utf8_gets_a_json_400() {
    let s = open().await;
    for (method, path) in [
        (Method::GET, "/api/v1/instances/%ff"),
        (Method::GET, "/api/v1/instances/%ff/journal"),
        (Method::GET, "/api/v1/instances/%C3%28/graph"),
        (Method::GET, "/api/v1/definitions/%ff"),
        (Method::GET, "/api/v1/definitions/%ff/graph"),
        (Method::POST, "/api/v1/instances/%ff/cancel"),
        (Method::POST, "/api/v1/instances/%ff/signal"),
    ] {
        let body = (method == Method::POST).then(|| b"{\"name\":\"go\"}".to_vec());
        let r = s.send(method.clone(), path, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {path}: {}",
            r.text
        );
        assert_eq!(r.error_code(), "bad_request", "{method} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_filters_are_refused_with_a_json_400_that_quotes_no_sql() {
    let s = open().await;
    s.start("parked", json!("a"), "f-1").await;
    // Parked on its signal before anything is asked, so its status tells whether a refused
    // request changed it.
    wait::wait_until("f-1 to suspend on its signal", || async {
        let inst = s.get("/api/v1/instances/f-1").await.json();
        if inst["status"] == json!("suspended") {
            Ok(())
        } else {
            Err(inst["status"].clone())
        }
    })
    .await;
    let attrs = |n: usize| {
        (0..n)
            .map(|i| format!("attr.k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let at_cap = s
        .get(&format!(
            "/api/v1/instances?{}",
            attrs(orch_runtime::server::MAX_ATTR_FILTERS)
        ))
        .await;
    assert_eq!(at_cap.status, StatusCode::OK, "{}", at_cap.text);
    for n in [orch_runtime::server::MAX_ATTR_FILTERS + 1, 1000] {
        for path in [
            format!("/api/v1/instances?{}", attrs(n)),
            format!("/api/v1/stats/attributes?key=k&{}", attrs(n)),
        ] {
            let r = s.get(&path).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{n} filters: {}", r.text);
            assert_eq!(r.error_code(), "bad_request");
            answered_cleanly("attr filters", &r);
        }
        let filter: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
        let r = s
            .post("/api/v1/bulk/cancel", &json!({"filter": {"attr": filter}}))
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{n} bulk attrs: {}",
            r.text
        );
        answered_cleanly("bulk attr filters", &r);
    }
    // Repeated statuses are the same condition: deduplicated, never one SQL term each.
    let statuses = vec!["running,suspended"; 500].join(",");
    let r = s.get(&format!("/api/v1/instances?status={statuses}")).await;
    assert_eq!(r.status, StatusCode::OK, "{:.300}", r.text);
    assert_eq!(r.json()["instances"][0]["id"], json!("f-1"));
    let many: Vec<&str> = vec!["failed"; 40_000];
    let r = s
        .post(
            "/api/v1/bulk/retry",
            &json!({"filter": {"status": many, "workflow": "parked"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:.300}", r.text);
    assert_eq!(r.json()["matched"], json!(0));
    let inst = s.get("/api/v1/instances/f-1").await.json();
    assert_eq!(inst["status"], json!("suspended"), "{inst}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_target_or_header_set_gets_a_json_error() {
    let s = open().await;
    let long = "x".repeat(orch_runtime::server::MAX_URI_BYTES);
    let r = s.get(&format!("/api/v1/instances?id_prefix={long}")).await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG, "{:.300}", r.text);
    assert_eq!(r.error_code(), "uri_too_long");

    let send_with = |headers: Vec<(String, String)>| {
        let mut req = s.http.get(format!("{}/api/v1/whoami", s.base));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let big = vec![(
        "x-big".to_string(),
        "y".repeat(orch_runtime::server::MAX_HEADER_BYTES),
    )];
    let many: Vec<(String, String)> = (0..=orch_runtime::server::MAX_HEADERS)
        .map(|i| (format!("x-h{i}"), "1".to_string()))
        .collect();
    for (what, headers) in [("one big header", big), ("too many headers", many)] {
        let resp = send_with(headers).await.expect("sent");
        assert_eq!(
            resp.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{what}"
        );
        let r = http::Resp {
            status: resp.status(),
            content_type: resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            text: resp.text().await.expect("body"),
        };
        assert_eq!(r.error_code(), "headers_too_large", "{what}");
    }
    // A normal request on the same server still works.
    assert_eq!(s.get("/api/v1/whoami").await.status, StatusCode::OK);
}

/// Every query parameter and path segment the API reads, fed arbitrary bytes through the real
/// server: each answer is a success or a documented 4xx with the JSON error body.
#[test]
fn arbitrary_request_text_is_answered_cleanly_everywhere() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let s = tokio.block_on(async {
        let s = open().await;
        s.start("parked", json!("a"), "p-1").await;
        s
    });
    // `{}` is replaced by the percent-encoded arbitrary bytes.
    let gets = [
        "/api/v1/instances?created_after={}",
        "/api/v1/instances?created_before={}",
        "/api/v1/instances?updated_after={}",
        "/api/v1/instances?status={}",
        "/api/v1/instances?limit={}",
        "/api/v1/instances?cursor={}",
        "/api/v1/instances?id_prefix={}",
        "/api/v1/instances?parent={}",
        "/api/v1/instances?workflow={}",
        "/api/v1/instances?attr.k={}",
        "/api/v1/instances?attr.{}=1",
        "/api/v1/instances?{}=1",
        "/api/v1/instances?{}",
        "/api/v1/instances/{}",
        "/api/v1/instances/{}/journal",
        "/api/v1/instances/{}/graph",
        "/api/v1/instances/p-1/graph?format={}",
        "/api/v1/definitions/{}",
        "/api/v1/definitions/{}/graph",
        "/api/v1/definitions/parked/graph?format={}",
        "/api/v1/stats?window={}",
        "/api/v1/stats?bucket={}",
        "/api/v1/stats?workflow={}",
        "/api/v1/stats/attributes?key={}",
        "/api/v1/stats/attributes?key=k&created_after={}",
        "/api/v1/audit?limit={}",
    ];
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..gets.len(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            any::<String>().prop_map(String::into_bytes),
            "[0-9TZ:+. -]{0,30}".prop_map(String::into_bytes),
        ],
    );
    runner
        .run(&strategy, |(i, bytes)| {
            let path = gets[i].replace("{}", &encode_all(&bytes));
            let r = tokio.block_on(s.get(&path));
            answered_cleanly(&path, &r);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));

    // Bodies: every free-text or number field of the mutating calls, as any JSON string.
    type Body = fn(String) -> Value;
    // The worker protocol: `wait_ms` is 0 so a lease that is accepted answers at once.
    let posts: [(&str, Body); 17] = [
        ("/api/v1/instances/p-1/signal", |t| json!({"name": t})),
        ("/api/v1/instances/{}/cancel", |t| json!({"reason": t})),
        ("/api/v1/instances/p-1/retry", |t| json!({"from_seq": t})),
        ("/api/v1/instances/p-1/fork", |t| json!({"from_seq": t})),
        ("/api/v1/instances", |t| json!({"workflow": t, "input": t})),
        (
            "/api/v1/instances",
            |t| json!({"workflow": "parked", "input": "x", "id": t}),
        ),
        (
            "/api/v1/bulk/retry",
            |t| json!({"filter": {"created_after": t}}),
        ),
        ("/api/v1/bulk/retry", |t| json!({"filter": {"status": [t]}})),
        (
            "/api/v1/bulk/retry",
            |t| json!({"filter": {"attr": {t.clone(): t}}}),
        ),
        (
            "/api/v1/tasks/lease",
            |t| json!({"worker": t, "queues": ["q"], "wait_ms": 0}),
        ),
        (
            "/api/v1/tasks/lease",
            |t| json!({"worker": "w", "queues": [t], "wait_ms": 0}),
        ),
        (
            "/api/v1/tasks/lease",
            |t| json!({"worker": "w", "queues": ["q"], "wait_ms": 0, "max_tasks": t}),
        ),
        (
            "/api/v1/tasks/{}/heartbeat",
            |t| json!({"token": 1, "lease_ms": t}),
        ),
        (
            "/api/v1/tasks/{}/complete",
            |t| json!({"token": 1, "output": t}),
        ),
        ("/api/v1/tasks/p-1:0:1:1/complete", |t| json!({"token": t})),
        (
            "/api/v1/tasks/{}/fail",
            |t| json!({"token": 1, "message": t, "retryable": false}),
        ),
        (
            "/api/v1/tasks/p-1:0:1:1/fail",
            |t| json!({"token": 1, "message": "m", "retryable": t}),
        ),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(0..posts.len(), any::<String>()), |(i, text)| {
            let (path, body) = posts[i];
            // `.` and `..` as a whole path segment are dot segments: a URL parser removes them
            // (even percent-encoded) before the request is sent, so they cannot name an id.
            if path.contains("{}") && matches!(text.as_str(), "." | "..") {
                return Ok(());
            }
            let path = path.replace("{}", &encode(&text));
            let r = tokio.block_on(s.post(&path, &body(text)));
            answered_cleanly(&path, &r);
            if r.status.is_success() && path.ends_with("/cancel") {
                return Err(TestCaseError::fail("cancelled an instance named by junk"));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));

    // Whole bodies of arbitrary bytes, and arbitrary JSON, on the worker protocol's calls.
    let worker_posts = [
        "/api/v1/tasks/lease",
        "/api/v1/tasks/p-1:0:1:1/heartbeat",
        "/api/v1/tasks/p-1:0:1:1/complete",
        "/api/v1/tasks/p-1:0:1:1/fail",
    ];
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    let any_json = json_leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("worker".to_string()),
                    Just("queues".to_string()),
                    Just("token".to_string()),
                    Just("output".to_string()),
                    Just("message".to_string()),
                    Just("retryable".to_string()),
                    Just("max_tasks".to_string()),
                    Just("lease_ms".to_string()),
                    any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let bodies = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        any_json.prop_map(|v| {
            // A lease that is accepted must not wait: its wait_ms is 0 whatever was drawn.
            let mut v = v;
            if let Some(m) = v.as_object_mut() {
                m.insert("wait_ms".into(), json!(0));
            }
            v.to_string().into_bytes()
        }),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(0..worker_posts.len(), bodies), |(i, bytes)| {
            let path = worker_posts[i];
            let r = tokio.block_on(s.send(Method::POST, path, Some(bytes)));
            answered_cleanly(path, &r);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tokio.block_on(s.get("/healthz")).status, StatusCode::OK);
}
