//! A start under an existing id is idempotent only for the same input: it returns the
//! existing instance and says it did not create it; a different input is refused (Temporal's
//! "already started"), through the typed API, the JSON API and HTTP, and concurrent starts of
//! one id agree on a single winner.

use orch_runtime::prelude::*;
use orch_runtime::{Error, HttpConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
struct Order {
    sku: String,
    qty: u32,
}

#[workflow(name = "idem.ship")]
async fn ship(order: Order) -> u32 {
    // Waits, so the instance stays live while the test starts it again.
    let go: bool = orch::signal("go").await;
    if go { order.qty } else { 0 }
}

fn order(qty: u32) -> Order {
    Order {
        sku: "tea".into(),
        qty,
    }
}

async fn sqlite(dir: &tempfile::TempDir) -> Runtime {
    Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .build()
        .await
        .expect("runtime")
}

#[tokio::test]
async fn the_same_input_returns_the_existing_instance_and_says_it_was_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = sqlite(&dir).await;
    let first = rt
        .start_with_id(Ship, "o-1", order(2))
        .await
        .expect("start");
    assert!(first.created(), "the first start creates the instance");
    let again = rt
        .start_with_id(Ship, "o-1", order(2))
        .await
        .expect("again");
    assert_eq!(again.id(), "o-1");
    assert!(!again.created(), "the second start finds it");
    let generated = rt.start(Ship, order(1)).await.expect("generated id");
    assert!(generated.created());
    let handle = rt.handle(Ship, "o-1").await.expect("handle");
    assert!(!handle.created());
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_different_input_under_an_existing_id_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = sqlite(&dir).await;
    rt.start_with_id(Ship, "o-2", order(2))
        .await
        .expect("start");
    let err = rt
        .start_with_id(Ship, "o-2", order(3))
        .await
        .err()
        .expect("a different input is refused");
    match &err {
        Error::AlreadyStarted { id, workflow, .. } => {
            assert_eq!(id, "o-2");
            assert_eq!(workflow, "idem.ship");
        }
        other => panic!("expected AlreadyStarted, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("already started with a different input"),
        "{msg}"
    );
    assert!(msg.contains("\"qty\":2"), "names the stored input: {msg}");
    let stored = rt.instance("o-2").await.expect("read").expect("exists");
    assert_eq!(
        serde_json::from_str::<Value>(&stored.input).expect("json")["qty"],
        2
    );
    // The JSON API compares values: key order and spacing do not make a different input.
    let (id, created) = rt
        .start_json_as(
            "idem.ship",
            Some("o-2"),
            r#"{ "qty": 2,  "sku":"tea" }"#,
            None,
        )
        .await
        .expect("the same value, written differently");
    assert_eq!((id.as_str(), created), ("o-2", false));
    let err = rt
        .start_json_as("idem.ship", Some("o-2"), r#"{"sku":"tea","qty":5}"#, None)
        .await
        .expect_err("a different JSON input is refused");
    assert!(matches!(err, Error::AlreadyStarted { .. }), "{err:?}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_starts_with_different_inputs_exactly_one_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = sqlite(&dir).await;
    for round in 0..5 {
        let id = format!("race-{round}");
        let starts: Vec<_> = (0..8)
            .map(|qty| {
                let (rt, id) = (rt.clone(), id.clone());
                tokio::spawn(async move { rt.start_with_id(Ship, id, order(qty)).await })
            })
            .collect();
        let mut created = Vec::new();
        let mut refused = 0;
        for (qty, s) in starts.into_iter().enumerate() {
            match s.await.expect("join") {
                Ok(run) if run.created() => created.push(qty),
                Ok(_) => panic!("a different input was taken as the same start"),
                Err(Error::AlreadyStarted { .. }) => refused += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(created.len(), 1, "exactly one start creates {id}");
        assert_eq!(refused, 7);
        let stored = rt.instance(&id).await.expect("read").expect("exists");
        let input: Order = serde_json::from_str(&stored.input).expect("input");
        assert_eq!(
            input.qty as usize, created[0],
            "the winner's input is stored"
        );
    }
    // And with the same input, all succeed and exactly one created it.
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.start_with_id(Ship, "same", order(1)).await })
        })
        .collect();
    let mut created = 0;
    for s in starts {
        if s.await
            .expect("join")
            .expect("same input is idempotent")
            .created()
        {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn http_start_answers_201_created_200_existing_and_409_for_a_different_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
        .build()
        .await
        .expect("runtime with HTTP");
    let url = format!("{}api/v1/instances", rt.http_url().expect("server on"));
    let http = reqwest::Client::new();
    let start = |input: Value| {
        let req = http
            .post(&url)
            .json(&json!({"workflow": "idem.ship", "id": "h-1", "input": input}));
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("json body"))
        }
    };
    let (status, body) = start(json!({"sku": "tea", "qty": 2})).await;
    assert_eq!((status, &body["created"]), (201, &json!(true)), "{body}");
    let (status, body) = start(json!({"qty": 2, "sku": "tea"})).await;
    assert_eq!((status, &body["created"]), (200, &json!(false)), "{body}");
    let (status, body) = start(json!({"sku": "tea", "qty": 9})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(msg.contains("different input"), "{msg}");
    let stored = rt.instance("h-1").await.expect("read").expect("exists");
    assert_eq!(
        serde_json::from_str::<Value>(&stored.input).expect("json")["qty"],
        2
    );
    rt.shutdown().await.expect("shutdown");
}
