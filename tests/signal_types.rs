//! A workflow's signal names and payload types are part of its definition: a payload that does
//! not fit the one type the workflow waits for is refused when it is sent (naming the field,
//! storing nothing), and where a name is waited for with several types, a payload that fits
//! none is journaled visibly on the instance when the workflow receives it.

use orch_runtime::prelude::*;
use orch_runtime::{Error, HttpConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Approval {
    by: String,
    amount: u32,
}

#[workflow(name = "sig.approval", handle = ApprovalFlow)]
async fn approval() -> u32 {
    let a = orch::signal::<Approval>("approve").await;
    let rush: bool = orch::signal("rush").await;
    let note: Option<String> = orch::signal_with_timeout("note", Duration::from_secs(3600)).await;
    let _ = note;
    if rush { a.amount * 2 } else { a.amount }
}

#[workflow(name = "sig.two_types")]
async fn two_types() -> String {
    let n = orch::signal::<u32>("value").await;
    let s = orch::signal::<String>("value").await;
    format!("{n}{s}")
}

async fn runtime(dir: &tempfile::TempDir, http: bool) -> Runtime {
    let mut b = Runtime::builder().sqlite(dir.path().join("orch.db"));
    if http {
        b = b.http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens());
    }
    b.build().await.expect("runtime")
}

/// Polls `f` until it gives `Some`, for up to a minute.
async fn until<T, F: std::future::Future<Output = Option<T>>>(mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_definition_lists_each_signal_with_its_payload_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir, false).await;
    let def = rt.definition("sig.approval").expect("definition");
    let signals: Vec<(&str, Option<&str>)> = def
        .signals
        .iter()
        .map(|s| (s.name, s.payload.map(|p| (p.type_name)())))
        .collect();
    assert_eq!(signals.len(), 3, "{signals:?}");
    assert_eq!(signals[0].0, "approve");
    assert!(
        signals[0].1.is_some_and(|t| t.ends_with("Approval")),
        "{signals:?}"
    );
    // From a `let` annotation, and from `Option<T>` for a wait with timeout.
    assert_eq!(signals[1], ("rush", Some("bool")));
    assert_eq!(signals[2].0, "note");
    assert!(
        signals[2].1.is_some_and(|t| t.ends_with("String")),
        "{signals:?}"
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_payload_that_does_not_fit_the_declared_type_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir, false).await;
    let run = rt.start(ApprovalFlow, ()).await.expect("start");
    let err = rt
        .signal(run.id(), "approve", json!({"by": "ann", "amount": "lots"}))
        .await
        .expect_err("a string where a number is expected");
    match &err {
        Error::InvalidSignal {
            name,
            type_name,
            detail,
            ..
        } => {
            assert_eq!(name, "approve");
            assert!(type_name.ends_with("Approval"), "{type_name}");
            assert!(detail.contains("amount"), "names the field: {detail}");
        }
        other => panic!("expected InvalidSignal, got {other:?}"),
    }
    let details = rt.details(run.id()).await.expect("details");
    assert!(
        details.signals.is_empty(),
        "nothing stored: {:?}",
        details.signals
    );
    rt.signal(
        run.id(),
        "approve",
        Approval {
            by: "ann".into(),
            amount: 5,
        },
    )
    .await
    .expect("a fitting payload");
    rt.signal(run.id(), "rush", true).await.expect("rush");
    let err = rt
        .signal(run.id(), "note", 7)
        .await
        .expect_err("note is a String");
    assert!(matches!(err, Error::InvalidSignal { .. }), "{err:?}");
    rt.signal(run.id(), "note", "thanks").await.expect("note");
    assert_eq!(run.result().await.expect("result"), 10);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn http_refuses_a_payload_that_does_not_fit_with_422_and_lists_signals_in_definitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir, true).await;
    let base = rt.http_url().expect("server on");
    let http = reqwest::Client::new();
    let run = rt.start(ApprovalFlow, ()).await.expect("start");
    let resp = http
        .post(format!("{base}api/v1/instances/{}/signal", run.id()))
        .json(&json!({"name": "approve", "payload": {"by": "ann"}}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_input", "{body}");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(msg.contains("amount") && msg.contains("Approval"), "{msg}");
    assert!(
        rt.details(run.id())
            .await
            .expect("details")
            .signals
            .is_empty()
    );

    let defs: Value = http
        .get(format!("{base}api/v1/definitions"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let approval = defs["definitions"]
        .as_array()
        .expect("list")
        .iter()
        .find(|d| d["name"] == "sig.approval")
        .expect("listed")
        .clone();
    assert_eq!(
        approval["signals"],
        json!([
            {"name": "approve", "type": "Approval"},
            {"name": "rush", "type": "bool"},
            {"name": "note", "type": "String"},
        ])
    );
    let one: Value = http
        .get(format!("{base}api/v1/definitions/sig.approval"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(one["signals"][0]["name"], "approve");
    assert!(
        one["signals"][0]["trace"]["types"]["Approval"].is_object(),
        "{one}"
    );
    // The payload's JSON Schema, self-contained.
    assert_eq!(one["signals"][0]["schema"]["title"], "Approval", "{one}");
    assert_eq!(
        one["signals"][0]["schema"]["required"],
        json!(["by", "amount"]),
        "{one}"
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn with_several_types_a_payload_that_does_not_fit_is_journaled_on_the_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&dir, true).await;
    let base = rt.http_url().expect("server on");
    let run = rt.start(TwoTypes, ()).await.expect("start");
    // Several types for one name: not refused at send time.
    rt.signal(run.id(), "value", "not a number")
        .await
        .expect("accepted");
    let attempts = until(|| async {
        let a = rt.attempts(run.id()).await.expect("attempts");
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(attempts.len(), 1);
    let error = &attempts[0].error;
    assert!(error.contains("signal `value`"), "{error}");
    assert!(
        error.contains("\"not a number\""),
        "shows the payload: {error}"
    );
    assert!(error.contains("u32"), "names the type: {error}");
    // The journal API shows it while the wait goes on …
    let journal: Value = reqwest::get(format!("{base}api/v1/instances/{}/journal", run.id()))
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let in_flight = journal["failed_attempts_in_flight"]
        .as_array()
        .expect("list");
    assert_eq!(in_flight.len(), 1, "{journal}");
    // … and under the entry once a fitting payload arrives, without failing it.
    rt.signal(run.id(), "value", 4).await.expect("fits u32");
    rt.signal(run.id(), "value", "2")
        .await
        .expect("fits String");
    assert_eq!(run.result().await.expect("result"), "42");
    let journal: Value = reqwest::get(format!("{base}api/v1/instances/{}/journal", run.id()))
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let first = &journal["entries"][0];
    assert_eq!(first["kind"], "signal", "{journal}");
    assert_eq!(first["state"], "done", "{journal}");
    assert_eq!(
        first["errors"].as_array().expect("errors").len(),
        1,
        "{journal}"
    );
    rt.shutdown().await.expect("shutdown");
}
