//! The served OpenAPI document and the server agree on what generators rely on: every object
//! schema says what it holds (no bare `{"type": "object"}`, which openapi-typescript turns
//! into `Record<string, never>`), `TracedSchema`'s options are named components (inline ones
//! crash openapi-python-client's getDefinition), the `attr` search filter is described and
//! accepted as written by OpenAPI's deepObject style, and a bulk filter's `updated_after` in
//! epoch milliseconds — allowed by the document — is accepted by the server. Each workflow has
//! typed operations whose bodies reference its Rust types as components (a type named like one
//! of orch's own components is renamed, never replacing it), and they work as documented.

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[workflow]
async fn tagged(customer: String) -> Option<bool> {
    orch::set_attribute("customer", customer).await;
    orch::signal_with_timeout("go", Duration::from_secs(3600)).await
}

/// Named like orch's own `Status` component.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Status {
    level: u8,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Parcel {
    grams: u32,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Shipment {
    parcels: Vec<Parcel>,
    priority: Status,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Signature {
    by: String,
}

#[workflow]
async fn ship(shipment: Shipment) -> Result<u32, StepError> {
    let signed: Signature = orch::signal("signed").await;
    let _ = signed.by;
    Ok(shipment.parcels.iter().map(|p| p.grams).sum())
}

/// The schema `$ref` points at.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("$ref {r} does not resolve")),
        None => schema,
    }
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
async fn the_document_describes_what_the_server_accepts_with_each_workflows_types() {
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
    // The typed start of `ship` takes a `Shipment` whose fields have their real types.
    let schemas = &doc["components"]["schemas"];
    let start_op = &doc["paths"]["/api/v1/definitions/ship/instances"]["post"];
    assert_eq!(start_op["operationId"], "startShipInstance", "{start_op}");
    let body = resolve(
        &doc,
        &start_op["requestBody"]["content"]["application/json"]["schema"],
    );
    assert_eq!(body["required"], json!(["input"]), "{body}");
    assert_eq!(
        body["properties"]["input"],
        json!({"$ref": "#/components/schemas/Shipment"})
    );
    let shipment = &schemas["Shipment"];
    assert_eq!(
        shipment["properties"]["parcels"],
        json!({"type": "array", "items": {"$ref": "#/components/schemas/Parcel"}}),
        "{shipment}"
    );
    assert_eq!(schemas["Parcel"]["properties"]["grams"]["type"], "integer");
    // The user's `Status` does not replace orch's: it is `Status2`, and referenced so.
    assert_eq!(
        shipment["properties"]["priority"],
        json!({"$ref": "#/components/schemas/Status2"}),
        "{shipment}"
    );
    assert_eq!(schemas["Status2"]["properties"]["level"]["type"], "integer");
    assert!(
        schemas["Status"]["enum"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("suspended"))),
        "orch's Status: {}",
        schemas["Status"]
    );
    // The typed read: input and output (a Result) reference the workflow's types.
    let get_op = &doc["paths"]["/api/v1/definitions/ship/instances/{id}"]["get"];
    let view = resolve(
        &doc,
        &get_op["responses"]["200"]["content"]["application/json"]["schema"],
    );
    let typed = &view["allOf"][1]["properties"];
    assert_eq!(
        typed["input"],
        json!({"$ref": "#/components/schemas/Shipment"})
    );
    let result = resolve(&doc, &typed["output"]["anyOf"][0]);
    assert_eq!(
        result["oneOf"][0]["properties"]["Ok"]["type"], "integer",
        "{result}"
    );
    assert_eq!(
        result["oneOf"][1]["properties"]["Err"],
        json!({"$ref": "#/components/schemas/StepError"}),
        "{result}"
    );
    // The typed signal's body is the payload type.
    let signal_op = &doc["paths"]["/api/v1/definitions/ship/instances/{id}/signals/signed"]["post"];
    assert_eq!(
        signal_op["requestBody"]["content"]["application/json"]["schema"],
        json!({"$ref": "#/components/schemas/Signature"}),
        "{signal_op}"
    );
    // Every reference resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| match (k.as_str(), v) {
                ("$ref", Value::String(r)) => out.push(r.clone()),
                _ => refs(v, out),
            }),
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        resolve(&doc, &json!({"$ref": r}));
    }

    // The typed operations work as documented: start, read, signal.
    let shipment = json!({"parcels": [{"grams": 300}, {"grams": 200}], "priority": {"level": 2}});
    let res = http
        .post(format!("{api}/definitions/ship/instances"))
        .json(&json!({"input": shipment, "id": "s-1"}))
        .send()
        .await
        .expect("typed start");
    assert_eq!(res.status(), 201);
    let res = http
        .post(format!(
            "{api}/definitions/ship/instances/s-1/signals/signed"
        ))
        .json(&json!({"by": "ann"}))
        .send()
        .await
        .expect("typed signal");
    assert_eq!(res.status(), 202);
    let end = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let one = get(format!("{api}/definitions/ship/instances/s-1")).await;
        if one["status"] == "completed" {
            break one;
        }
        assert!(Instant::now() < end, "ship never completed: {one}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["input"], shipment);
    assert_eq!(done["output"], json!({"Ok": 500}));

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
