//! The served OpenAPI document and the server agree on what generators rely on: every object
//! schema says what it holds (no bare `{"type": "object"}`, which openapi-typescript turns
//! into `Record<string, never>`), `TracedSchema`'s options are named components (inline ones
//! crash openapi-python-client's getDefinition), the `attr` search filter is described and
//! accepted as written by OpenAPI's deepObject style, and a bulk filter's `updated_after` in
//! epoch milliseconds — allowed by the document — is accepted by the server.

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[workflow]
async fn tagged(customer: String) -> Option<bool> {
    orch::set_attribute("customer", customer).await;
    orch::signal_with_timeout("go", Duration::from_secs(3600)).await
}

fn bare_objects(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if m.get("type") == Some(&json!("object"))
                && !m.contains_key("properties")
                && !m.contains_key("additionalProperties")
            {
                out.push(path.to_string());
            }
            for (k, v) in m {
                bare_objects(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                bare_objects(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_what_the_server_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
        .build()
        .await
        .expect("runtime");
    let api = format!("{}api/v1", rt.http_url().expect("server"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let get = |path: String| {
        let http = http.clone();
        async move {
            let res = http.get(&path).send().await.expect("get");
            assert!(res.status().is_success(), "GET {path}: {}", res.status());
            res.json::<Value>().await.expect("json")
        }
    };
    let doc = get(format!("{api}/openapi.json")).await;

    let mut bare = Vec::new();
    bare_objects(&doc, "", &mut bare);
    assert!(
        bare.is_empty(),
        "object schemas without properties or additionalProperties: {bare:?}"
    );
    let traced = &doc["components"]["schemas"]["TracedSchema"]["oneOf"];
    for option in traced.as_array().expect("TracedSchema is a oneOf") {
        let r = option["$ref"].as_str().unwrap_or_else(|| {
            panic!("TracedSchema options must be named components, got {option}")
        });
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(doc["components"]["schemas"][name].is_object(), "{r}");
    }
    let params = doc["paths"]["/api/v1/instances"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let attr = params
        .iter()
        .find(|p| p["name"] == "attr")
        .expect("the attr filter is in the document");
    assert_eq!(attr["style"], "deepObject");

    // Two instances with different customers; the deepObject form filters like attr.<key>.
    for (id, customer) in [("a", "c-1"), ("b", "c-2")] {
        let res = http
            .post(format!("{api}/instances"))
            .json(&json!({"workflow": "tagged", "input": customer, "id": id}))
            .send()
            .await
            .expect("start");
        assert_eq!(res.status(), 201);
    }
    let end = Instant::now() + Duration::from_secs(60);
    let ids = |page: &Value| -> Vec<String> {
        page["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .filter_map(|i| i["id"].as_str().map(String::from))
            .collect()
    };
    loop {
        let dotted = get(format!("{api}/instances?attr.customer=c-1")).await;
        if ids(&dotted) == ["a"] {
            break;
        }
        assert!(
            Instant::now() < end,
            "the attribute was never set: {dotted}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deep = get(format!("{api}/instances?attr%5Bcustomer%5D=c-1")).await;
    assert_eq!(ids(&deep), ["a"], "attr[customer]=c-1: {deep}");

    // A bulk filter's updated_after in epoch milliseconds.
    let res = http
        .post(format!("{api}/bulk/cancel"))
        .json(&json!({"filter": {"workflow": "tagged", "updated_after": 0}, "reason": "test"}))
        .send()
        .await
        .expect("bulk cancel");
    let status = res.status();
    let body: Value = res.json().await.expect("json");
    assert_eq!(status, 200, "updated_after as milliseconds: {body}");
    assert_eq!(body["matched"], 2, "{body}");
}
