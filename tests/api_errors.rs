//! "No such instance" is one error, `Error::NotFound(id)`, from every public method that takes
//! an instance id, and one HTTP answer, `404 not_found`.

use orch_runtime::prelude::*;
use orch_runtime::{Error, HttpConfig};
use serde_json::{Value, json};

#[workflow(name = "errors.noop")]
async fn noop() {}

fn not_found<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::NotFound(id)) => assert_eq!(id, "ghost", "{what}"),
        other => panic!("{what}: expected Error::NotFound(\"ghost\"), got {other:?}"),
    }
}

#[tokio::test]
async fn every_method_taking_an_instance_id_says_not_found_the_same_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .build()
        .await
        .expect("runtime");
    not_found("signal", rt.signal("ghost", "go", true).await);
    not_found(
        "signal_as",
        rt.signal_as("ghost", "go", &json!(1), Some("ops")).await,
    );
    not_found("cancel", rt.cancel("ghost", "ops", "why").await);
    not_found("terminate", rt.terminate("ghost", "ops", "why").await);
    not_found("retry", rt.retry("ghost", None, "ops").await);
    not_found("restart", rt.restart("ghost", "ops").await);
    not_found("fork", rt.fork("ghost", 1, "ops").await);
    not_found("wait", rt.wait("ghost").await);
    not_found(
        "handle",
        rt.handle(Noop, "ghost").await.map(|r| r.id().to_string()),
    );
    not_found("journal", rt.journal("ghost").await);
    not_found("attempts", rt.attempts("ghost").await);
    not_found("export", rt.export("ghost").await);
    not_found("details", rt.details("ghost").await.map(|_| ()));
    assert!(rt.instance("ghost").await.expect("instance").is_none());
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn http_answers_404_not_found_for_every_route_on_a_missing_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
        .build()
        .await
        .expect("runtime with HTTP");
    let base = rt.http_url().expect("server on");
    let http = reqwest::Client::new();
    let gets = ["", "/journal", "/graph"];
    let posts = [
        ("/signal", json!({"name": "go", "payload": 1})),
        ("/cancel", json!({})),
        ("/terminate", json!({})),
        ("/retry", json!({})),
        ("/restart", json!({})),
        ("/fork", json!({"from_seq": 1})),
    ];
    let mut answers = Vec::new();
    for path in gets {
        let resp = http
            .get(format!("{base}api/v1/instances/ghost{path}"))
            .send()
            .await
            .expect("request");
        answers.push((
            format!("GET {path}"),
            resp.status().as_u16(),
            resp.text().await,
        ));
    }
    for (path, body) in posts {
        let resp = http
            .post(format!("{base}api/v1/instances/ghost{path}"))
            .json(&body)
            .send()
            .await
            .expect("request");
        answers.push((
            format!("POST {path}"),
            resp.status().as_u16(),
            resp.text().await,
        ));
    }
    for (route, status, text) in answers {
        let body: Value = serde_json::from_str(&text.expect("body")).expect("JSON body");
        assert_eq!(status, 404, "{route}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{route}: {body}");
        assert_eq!(
            body["error"]["message"], "no instance with id `ghost`",
            "{route}: {body}"
        );
    }
    rt.shutdown().await.expect("shutdown");
}
