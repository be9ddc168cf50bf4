//! The HTTP API (`/api/v1`, `/metrics`, `/healthz`) against a real server on an ephemeral
//! port, one runtime on its own SQLite file per test: every endpoint, auth, and the bad inputs
//! that must each get a 4xx with a JSON error saying what to fix, and change nothing.
//! The contract is `docs/http-api.md`; the OpenAPI document is checked against `api.rs`.

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
#[path = "support/wait.rs"]
mod wait;
use wait::wait_until;

// ---------------------------------------------------------------------------------------------
// Workflows.

// A step-only flow with a nested input (for "wrong type inside a nested field").
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Parcel {
    sku: String,
    dims: Dims,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Dims {
    weight_g: u32,
    qty: u32,
}

#[step]
async fn weigh(parcel: &Parcel) -> Result<u32, StepError> {
    Ok(parcel.dims.weight_g * parcel.dims.qty)
}

#[step]
async fn print_label(sku: String, grams: u32) -> Result<String, StepError> {
    Ok(format!("{sku}:{grams}g"))
}

#[workflow]
async fn pack(parcel: Parcel) -> Result<String, StepError> {
    let grams = weigh(&parcel).await?;
    print_label(parcel.sku.clone(), grams).await
}

// Fails at its second step until the test "fixes" the backend for its key. (A set of keys
// rather than one AtomicBool: tests run in parallel and each fixes only its own instances.)
static FIXED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn fix(key: &str) {
    FIXED.lock().expect("lock").insert(key.to_string());
}

#[step]
async fn prepare(key: String) -> Result<String, StepError> {
    Ok(format!("prepared {key}"))
}

#[step(retry = Retry::none())]
async fn fragile(key: String) -> Result<u32, StepError> {
    if FIXED.lock().expect("lock").contains(&key) {
        Ok(7)
    } else {
        Err(StepError::permanent(format!("backend for {key} is down")))
    }
}

#[step]
async fn wrap_up(n: u32) -> Result<u32, StepError> {
    Ok(n * 6)
}

#[workflow]
async fn fragile_flow(key: String) -> Result<u32, StepError> {
    prepare(key.clone()).await?;
    let n = fragile(key).await?;
    wrap_up(n).await
}

// Waits for a signal.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Approver {
    by: String,
}

#[workflow]
async fn approval(timeout_ms: u64) -> Option<String> {
    orch::set_status(json!({"phase": "waiting"})).await;
    let a: Option<Approver> =
        orch::signal_with_timeout("approve", Duration::from_millis(timeout_ms)).await;
    orch::set_status(json!({"phase": "decided"})).await;
    a.map(|a| a.by)
}

// Sleeps an hour between booking and confirming; a cancellation is compensated.
static UNBOOKED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

#[step]
async fn book(key: String) -> Result<String, StepError> {
    Ok(format!("booking-{key}"))
}

#[step]
async fn confirm(booking: String) -> Result<String, StepError> {
    Ok(format!("{booking} confirmed"))
}

#[step]
async fn unbook(key: String) -> Result<(), StepError> {
    UNBOOKED.lock().expect("lock").insert(key);
    Ok(())
}

#[workflow]
async fn sleeper(key: String) -> Result<String, StepError> {
    let booking = book(key.clone()).await?;
    orch::sleep(secs(3600)).await;
    match confirm(booking).await {
        Ok(c) => Ok(c),
        Err(e) => {
            unbook(key).await?;
            Err(e)
        }
    }
}

// Holds its step until the test lets it go (per key: tests run in parallel).
static LET_GO: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

#[step]
async fn hold(key: String) -> Result<(), StepError> {
    while !LET_GO.lock().expect("lock").contains(&key) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[workflow]
async fn held(key: String) -> Result<(), StepError> {
    hold(key).await
}

// Sets searchable attributes.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Basket {
    customer: String,
    items: u32,
}

#[step]
async fn price(items: u32) -> Result<u64, StepError> {
    Ok(u64::from(items) * 250)
}

#[workflow]
async fn tally(basket: Basket) -> Result<u64, StepError> {
    orch::set_attribute("customer", &basket.customer).await;
    orch::set_attribute("items", basket.items).await;
    price(basket.items).await
}

// A parent with a durable child (child ids contain a `/`).
#[workflow]
async fn kid(x: u32) -> Result<u32, StepError> {
    wrap_up(x).await
}

#[workflow]
async fn family(x: u32) -> Result<u32, StepError> {
    let a = kid(x).await?;
    Ok(a + 1)
}

// ---------------------------------------------------------------------------------------------
// Harness.

const ADMIN: &str = "s3cret-admin";
const READ: &str = "s3cret-read";

struct Api {
    _rt: Runtime,
    base: String,
    http: reqwest::Client,
    /// The token sent by the helpers (None: no `Authorization` header).
    token: Option<&'static str>,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    content_type: String,
    text: String,
    www_authenticate: Option<String>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON: {e}: {:.300}",
                self.status, self.text
            )
        })
    }
}

/// A server without tokens (everyone is `local`, admin).
async fn open() -> Api {
    open_with(false).await
}

/// A server with an admin token (`ops`) and a read token (`viewer`); helpers send the admin's.
async fn open_with_tokens() -> Api {
    open_with(true).await
}

async fn open_with(tokens: bool) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = HttpConfig::new("127.0.0.1:0").without_env_tokens();
    if tokens {
        config = config.admin_token("ops", ADMIN).read_token("viewer", READ);
    }
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(config)
        .build()
        .await
        .expect("runtime with HTTP server");
    let base = rt
        .http_url()
        .expect("the server is on")
        .trim_end_matches('/')
        .to_string();
    Api {
        _rt: rt,
        base,
        http: reqwest::Client::new(),
        token: tokens.then_some(ADMIN),
        _dir: dir,
    }
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let www_authenticate = header("www-authenticate");
        let text = resp.text().await.expect("response body");
        Resp {
            status,
            content_type,
            text,
            www_authenticate,
        }
    }

    async fn get_resp(&self, path: &str) -> Resp {
        self.send(Method::GET, path, self.token, None).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.get_resp(path).await;
        (r.status, r.json())
    }

    /// GET that must answer 200; returns the JSON.
    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string().into_bytes()).await
    }

    async fn post_raw(&self, path: &str, body: impl Into<Vec<u8>>) -> (StatusCode, Value) {
        let r = self
            .send(Method::POST, path, self.token, Some(body.into()))
            .await;
        (r.status, r.json())
    }

    /// Starts `workflow` through the API; must answer 201. Returns the id.
    async fn start(&self, workflow: &str, input: Value, id: Option<&str>) -> String {
        let mut body = json!({"workflow": workflow, "input": input});
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        let (status, resp) = self.post("/api/v1/instances", body).await;
        assert_eq!(status, StatusCode::CREATED, "start {workflow}: {resp}");
        assert_eq!(resp["created"], json!(true), "{resp}");
        assert_eq!(resp["workflow"], json!(workflow), "{resp}");
        resp["id"].as_str().expect("id").to_string()
    }

    async fn instance(&self, id: &str) -> Value {
        self.ok(&format!("/api/v1/instances/{id}")).await
    }

    async fn journal(&self, id: &str) -> Value {
        self.ok(&format!("/api/v1/instances/{id}/journal")).await
    }

    /// Polls the instance until it has `status`.
    async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_instance(id, &format!("`{status}`"), |inst| {
            inst["status"] == json!(status)
        })
        .await
    }

    /// Polls the instance until `reached` holds for it (`what` names that state).
    async fn wait_instance(&self, id: &str, what: &str, reached: impl Fn(&Value) -> bool) -> Value {
        wait_until(&format!("instance {id} to be {what}"), || async {
            let inst = self.instance(id).await;
            if reached(&inst) { Ok(inst) } else { Err(inst) }
        })
        .await
    }

    /// Every instance (id → summary) and the audit log: what a refused call must not change.
    async fn snapshot(&self) -> (BTreeMap<String, Value>, Value) {
        let page = self.ok("/api/v1/instances?limit=500").await;
        let instances = page["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| (i["id"].as_str().expect("id").to_string(), i.clone()))
            .collect();
        let audit = self.ok("/api/v1/audit?limit=1000").await;
        (instances, audit["entries"].clone())
    }
}

/// A refused call: the status, `{"error": {"code", "message"}}` with `code`, and a message
/// that contains `needle` (what to fix).
#[track_caller]
fn assert_refused(
    what: &str,
    got: (StatusCode, &Value),
    status: StatusCode,
    code: &str,
    needle: &str,
) {
    let (got_status, body) = got;
    assert_eq!(got_status, status, "{what}: {body}");
    let err = &body["error"];
    assert_eq!(err["code"], json!(code), "{what}: {body}");
    let message = err["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message: {body}"));
    assert!(
        message.contains(needle),
        "{what}: the message should mention `{needle}`: {message}"
    );
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["error"], "{what}: {body}");
}

fn parcel(sku: &str, weight_g: u32, qty: u32) -> Value {
    json!({"sku": sku, "dims": {"weight_g": weight_g, "qty": qty}})
}

fn ids_of(page: &Value) -> Vec<String> {
    page["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn rfc3339(t: SystemTime) -> String {
    // seconds precision is enough for the filters here
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `(data-name, data-state)` of every node of an SVG drawing that has a state.
fn node_states(svg: &str) -> Vec<(String, String)> {
    let doc = roxmltree::Document::parse(svg).expect("the SVG parses as XML");
    doc.descendants()
        .filter(|n| n.has_tag_name("g"))
        .filter_map(|n| {
            Some((
                n.attribute("data-name")?.to_string(),
                n.attribute("data-state")?.to_string(),
            ))
        })
        .collect()
}

fn entries<'a>(journal: &'a Value, kind: &str) -> Vec<&'a Value> {
    journal["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == json!(kind))
        .collect()
}

fn entry<'a>(journal: &'a Value, name: &str) -> &'a Value {
    journal["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == json!(name))
        .unwrap_or_else(|| panic!("no entry `{name}` in {journal}"))
}

// ---------------------------------------------------------------------------------------------
// Whoami, definitions, graphs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_caller() {
    let api = open().await;
    assert_eq!(
        api.ok("/api/v1/whoami").await,
        json!({"actor": "local", "role": "admin", "auth_required": false})
    );
    let api = open_with_tokens().await;
    assert_eq!(
        api.ok("/api/v1/whoami").await,
        json!({"actor": "ops", "role": "admin", "auth_required": true})
    );
    let r = api
        .send(Method::GET, "/api/v1/whoami", Some(READ), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"actor": "viewer", "role": "read", "auth_required": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_list_every_workflow_with_counts() {
    let api = open().await;
    let id = api
        .start("pack", parcel("mug", 300, 2), Some("def-pack-1"))
        .await;
    api.wait_status(&id, "completed").await;
    let all = api.ok("/api/v1/definitions").await;
    let defs = all["definitions"].as_array().expect("definitions");
    let names: BTreeSet<&str> = defs.iter().filter_map(|d| d["name"].as_str()).collect();
    for w in ["pack", "fragile_flow", "approval", "sleeper", "tally"] {
        assert!(names.contains(w), "{w} missing from {names:?}");
    }
    let pack = defs
        .iter()
        .find(|d| d["name"] == json!("pack"))
        .expect("pack");
    assert_eq!(pack["input_type"], json!("Parcel"));
    assert_eq!(pack["output_type"], json!("Result<String, StepError>"));
    assert_eq!(pack["steps"], json!(["weigh", "print_label"]));
    assert!(
        pack["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{pack}"
    );
    let counts = pack["counts"].as_object().expect("counts");
    let statuses: BTreeSet<&str> = counts.keys().map(String::as_str).collect();
    assert_eq!(
        statuses,
        BTreeSet::from([
            "queued",
            "running",
            "suspended",
            "completed",
            "failed",
            "cancelled",
            "terminated",
            "incompatible"
        ])
    );
    assert_eq!(counts["completed"], json!(1));
    assert_eq!(counts["failed"], json!(0));

    let one = api.ok("/api/v1/definitions/pack").await;
    assert_eq!(one["name"], json!("pack"));
    assert_eq!(one["counts"]["completed"], json!(1));
    assert_eq!(one["version"], pack["version"]);
    let shape = one["shape"].to_string();
    assert!(one["shape"]["seq"].is_array(), "{shape}");
    assert!(
        shape.contains(r#"{"call":{"may_fail":true,"name":"weigh"}}"#),
        "{shape}"
    );
    assert!(shape.contains(r#""name":"print_label""#), "{shape}");

    let (status, body) = api.get("/api/v1/definitions/no_such_flow").await;
    assert_refused(
        "unknown definition",
        (status, &body),
        StatusCode::NOT_FOUND,
        "not_found",
        "no_such_flow",
    );
}

// A workflow calling the same step twice, apart.
#[workflow]
async fn twice(key: String) -> Result<u32, StepError> {
    prepare(key.clone()).await?;
    let n = wrap_up(1).await?;
    prepare(key).await?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definitions_steps_are_listed_once_each() {
    let api = open().await;
    let twice = api.ok("/api/v1/definitions/twice").await;
    assert_eq!(twice["steps"], json!(["prepare", "wrap_up"]), "{twice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_has_its_args_json_schemas_and_traces() {
    let api = open().await;
    let args = json!([{"name": "parcel", "type": "Parcel"}]);
    let all = api.ok("/api/v1/definitions").await;
    let listed = all["definitions"]
        .as_array()
        .expect("definitions")
        .iter()
        .find(|d| d["name"] == json!("pack"))
        .expect("pack");
    assert_eq!(listed["args"], args);
    assert!(
        listed.get("input_schema").is_none() && listed.get("input_trace").is_none(),
        "schemas only on the one definition"
    );
    let one = api.ok("/api/v1/definitions/pack").await;
    assert_eq!(one["args"], args);
    // JSON Schema 2020-12, self-contained: the nested type is in its own $defs.
    let input = &one["input_schema"];
    assert_eq!(
        input["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(input["type"], "object", "{input}");
    assert_eq!(input["required"], json!(["sku", "dims"]), "{input}");
    assert_eq!(input["properties"]["sku"], json!({"type": "string"}));
    assert_eq!(
        input["properties"]["dims"],
        json!({"$ref": "#/$defs/Dims"}),
        "{input}"
    );
    assert_eq!(
        input["$defs"]["Dims"]["properties"]["qty"]["type"], "integer",
        "{input}"
    );
    let output = &one["output_schema"];
    assert_eq!(
        output["oneOf"][0]["properties"]["Ok"],
        json!({"type": "string"}),
        "{output}"
    );
    assert_eq!(
        output["$defs"]["StepError"]["required"],
        json!(["message", "permanent"]),
        "{output}"
    );
    // Each step the workflow calls, its arguments as one object keyed by parameter name.
    let steps = one["step_schemas"].as_array().expect("step_schemas");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["weigh", "print_label"], "{one}");
    let label = &steps[1]["input_schema"];
    assert_eq!(label["required"], json!(["sku", "grams"]), "{label}");
    assert_eq!(label["properties"]["grams"]["type"], "integer", "{label}");
    assert_eq!(label["additionalProperties"], json!(false), "{label}");
    assert_eq!(
        steps[0]["input_schema"]["properties"]["parcel"],
        json!({"$ref": "#/$defs/Parcel"}),
        "{steps:?}"
    );
    assert!(steps[0]["input_schema"]["$defs"]["Dims"].is_object());
    assert_eq!(
        steps[1]["output_schema"]["oneOf"][0]["properties"]["Ok"]["type"],
        "string"
    );
    // The serde-reflection traces stay beside them (the web UI reads these).
    assert_eq!(
        one["input_trace"],
        json!({"root": {"TYPENAME": "Parcel"}, "types": {
            "Parcel": {"STRUCT": [{"sku": "STR"}, {"dims": {"TYPENAME": "Dims"}}]},
            "Dims": {"STRUCT": [{"weight_g": "U32"}, {"qty": "U32"}]}}})
    );
    assert_eq!(one["output_trace"]["root"], json!({"TYPENAME": "Result"}));
    assert_eq!(
        one["output_trace"]["types"]["StepError"],
        json!({"STRUCT": [{"message": "STR"}, {"permanent": "BOOL"}, {"cancelled": "BOOL"}]})
    );
    let approval = api.ok("/api/v1/definitions/approval").await;
    assert_eq!(
        approval["args"],
        json!([{"name": "timeout_ms", "type": "u64"}])
    );
    assert_eq!(approval["input_trace"]["root"], json!("U64"), "{approval}");
    assert_eq!(approval["input_schema"]["type"], "integer", "{approval}");
    assert_eq!(approval["input_schema"]["format"], "uint64", "{approval}");
    let approve = &approval["signals"][0];
    assert_eq!(approve["name"], "approve");
    assert_eq!(
        approve["schema"]["properties"]["by"],
        json!({"type": "string"}),
        "{approve}"
    );
    assert_eq!(
        approve["trace"]["types"]["Approver"]["STRUCT"][0]["by"],
        "STR"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_workflow_routes_start_read_and_signal_only_their_own_workflow() {
    let api = open().await;
    let (status, started) = api
        .post(
            "/api/v1/definitions/approval/instances",
            json!({"input": 60_000, "id": "typed-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(
        started,
        json!({"id": "typed-1", "workflow": "approval", "created": true})
    );
    api.wait_status("typed-1", "suspended").await;
    // The same id and input again is idempotent, as through POST /api/v1/instances.
    let (status, again) = api
        .post(
            "/api/v1/definitions/approval/instances",
            json!({"input": 60_000, "id": "typed-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    // The body names no workflow: the path does.
    let (status, body) = api
        .post(
            "/api/v1/definitions/approval/instances",
            json!({"input": 1, "workflow": "pack"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/definitions/approval/instances",
            json!({"input": "soon"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api
        .post("/api/v1/definitions/nope/instances", json!({"input": 1}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let one = api
        .ok("/api/v1/definitions/approval/instances/typed-1")
        .await;
    assert_eq!(one, api.instance("typed-1").await);
    let (status, body) = api.get("/api/v1/definitions/pack/instances/typed-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`approval`")),
        "{body}"
    );

    // A typed signal: the body is the payload, checked against the wait's type.
    let (status, body) = api
        .post(
            "/api/v1/definitions/approval/instances/typed-1/signals/approve",
            json!({"by": 7}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/definitions/pack/instances/typed-1/signals/approve",
            json!({"by": "ann"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/definitions/approval/instances/typed-1/signals/approve",
            json!({"by": "ann"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = api.wait_status("typed-1", "completed").await;
    assert_eq!(done["output"], json!("ann"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definition_graphs_in_three_formats() {
    let api = open().await;
    let svg = api.get_resp("/api/v1/definitions/pack/graph").await;
    assert_eq!(svg.status, StatusCode::OK);
    assert_eq!(svg.content_type, "image/svg+xml");
    let names: Vec<String> = roxmltree::Document::parse(&svg.text)
        .expect("svg parses")
        .descendants()
        .filter_map(|n| n.attribute("data-name").map(str::to_string))
        .collect();
    assert_eq!(names, ["weigh", "print_label"]);
    let svg2 = api
        .get_resp("/api/v1/definitions/pack/graph?format=svg")
        .await;
    assert_eq!(svg2.text, svg.text);

    let mermaid = api
        .get_resp("/api/v1/definitions/pack/graph?format=mermaid")
        .await;
    assert_eq!(mermaid.status, StatusCode::OK);
    assert!(
        mermaid.content_type.starts_with("text/plain"),
        "{}",
        mermaid.content_type
    );
    assert!(mermaid.text.contains("flowchart"), "{}", mermaid.text);
    assert!(mermaid.text.contains("weigh"), "{}", mermaid.text);

    let dot = api
        .get_resp("/api/v1/definitions/pack/graph?format=dot")
        .await;
    assert_eq!(dot.status, StatusCode::OK);
    assert!(
        dot.content_type.starts_with("text/"),
        "{}",
        dot.content_type
    );
    assert!(dot.text.contains("digraph"), "{}", dot.text);
    assert!(dot.text.contains("print_label"), "{}", dot.text);

    let (status, body) = api.get("/api/v1/definitions/pack/graph?format=png").await;
    assert_refused(
        "png",
        (status, &body),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "svg, mermaid or dot",
    );
    let (status, body) = api.get("/api/v1/definitions/pack/graph?fmt=svg").await;
    assert_refused(
        "unknown param",
        (status, &body),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`fmt`",
    );
    let (status, body) = api.get("/api/v1/definitions/nope/graph").await;
    assert_refused(
        "unknown workflow",
        (status, &body),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
}

// ---------------------------------------------------------------------------------------------
// Start, get, journal.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_idempotent_and_refuses_bad_input_clearly() {
    let api = open().await;
    let (status, body) = api
        .post(
            "/api/v1/instances",
            json!({"workflow": "pack", "input": parcel("cup", 200, 3), "id": "p-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"id": "p-1", "workflow": "pack", "created": true})
    );
    api.wait_status("p-1", "completed").await;

    // Again with the same id and input: the same instance, 200 (another input is a 409, see
    // tests/idempotent_start.rs).
    let (status, body) = api
        .post(
            "/api/v1/instances",
            json!({"workflow": "pack", "input": parcel("cup", 200, 3), "id": "p-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"id": "p-1", "workflow": "pack", "created": false})
    );
    let inst = api.instance("p-1").await;
    assert_eq!(inst["input"], parcel("cup", 200, 3));

    // A generated id.
    let generated = api.start("pack", parcel("pen", 10, 1), None).await;
    assert!(!generated.is_empty() && generated != "p-1");
    api.wait_status(&generated, "completed").await;

    let before = api.snapshot().await;
    let cases: Vec<(&str, Value, StatusCode, &str, &str)> = vec![
        (
            "a string where a number is expected, nested",
            json!({"workflow": "pack", "input": {"sku": "a", "dims": {"weight_g": 1, "qty": "three"}}, "id": "p-2"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "dims.qty",
        ),
        (
            "a missing nested field",
            json!({"workflow": "pack", "input": {"sku": "a", "dims": {"weight_g": 1}}, "id": "p-2"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "qty",
        ),
        (
            "input of the wrong kind",
            json!({"workflow": "pack", "input": [1, 2], "id": "p-2"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "pack",
        ),
        (
            "unknown workflow",
            json!({"workflow": "no_such_flow", "input": 1}),
            StatusCode::NOT_FOUND,
            "not_found",
            "no_such_flow",
        ),
        (
            "missing input",
            json!({"workflow": "pack", "id": "p-2"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`input`",
        ),
        (
            "missing workflow",
            json!({"input": 1}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`workflow`",
        ),
        (
            "workflow not a string",
            json!({"workflow": 7, "input": 1}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`workflow` must be a string",
        ),
        (
            "id not a string",
            json!({"workflow": "pack", "input": parcel("a", 1, 1), "id": 12}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`id` must be a string",
        ),
        (
            "invalid id",
            json!({"workflow": "pack", "input": parcel("a", 1, 1), "id": "bad id!"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid instance id",
        ),
        (
            "id taken by another workflow",
            json!({"workflow": "tally", "input": {"customer": "c", "items": 1}, "id": "p-1"}),
            StatusCode::CONFLICT,
            "conflict",
            "pack",
        ),
        (
            "unknown field",
            json!({"workflow": "pack", "input": parcel("a", 1, 1), "id": "p-2", "priority": 1}),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`priority`",
        ),
    ];
    for (what, body, status, code, needle) in cases {
        let (got, resp) = api.post("/api/v1/instances", body).await;
        assert_refused(what, (got, &resp), status, code, needle);
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused start changed something"
    );
    let (status, _) = api.get("/api/v1/instances/p-2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_and_its_journal() {
    let api = open().await;
    let id = api
        .start("pack", parcel("lamp", 1200, 2), Some("lamp-1"))
        .await;
    let inst = api.wait_status(&id, "completed").await;
    assert_eq!(inst["id"], json!("lamp-1"));
    assert_eq!(inst["workflow"], json!("pack"));
    assert_eq!(inst["input"], parcel("lamp", 1200, 2));
    assert_eq!(inst["output"], json!({"Ok": "lamp:2400g"}));
    assert_eq!(inst["error"], Value::Null);
    assert_eq!(inst["failed_step"], Value::Null);
    assert_eq!(inst["parent"], Value::Null);
    assert_eq!(inst["cancel_requested"], json!(false));
    assert_eq!(inst["retries"], json!(0));
    assert_eq!(inst["attributes"], json!({}));
    let created = inst["created_at"].as_str().expect("created_at");
    assert!(
        created.len() == 24 && created.ends_with('Z') && created.as_bytes()[19] == b'.',
        "RFC 3339 UTC with milliseconds: {created}"
    );
    assert!(inst["updated_at"].as_str().expect("updated_at") >= created);

    let journal = api.journal(&id).await;
    assert_eq!(journal["id"], json!("lamp-1"));
    assert_eq!(journal["status"], json!("completed"));
    let steps = entries(&journal, "step");
    let names: Vec<&Value> = steps.iter().map(|e| &e["name"]).collect();
    assert_eq!(names, [&json!("weigh"), &json!("print_label")]);
    assert_eq!(steps[0]["seq"], json!(1));
    assert_eq!(steps[1]["seq"], json!(2));
    assert_eq!(steps[0]["outcome"], json!({"Ok": 2400}));
    assert_eq!(steps[1]["outcome"], json!({"Ok": "lamp:2400g"}));
    for e in &steps {
        assert_eq!(e["state"], json!("done"), "{e}");
        assert_eq!(e["attempts"], json!(1), "{e}");
        assert_eq!(e["errors"], json!([]), "{e}");
        assert!(e["duration_ms"].as_i64().is_some_and(|d| d >= 0), "{e}");
    }
    assert_eq!(journal["superseded"], json!([]));
    assert_eq!(journal["pending_signals"], json!([]));

    for path in [
        "/api/v1/instances/nope",
        "/api/v1/instances/nope/journal",
        "/api/v1/instances/nope/graph",
    ] {
        let (status, body) = api.get(path).await;
        assert_refused(
            path,
            (status, &body),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Search.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_combine() {
    let api = open().await;
    let mut all = Vec::new();
    for (n, (customer, items)) in [("c-1", 3), ("c-2", 1), ("c-1", 5)].into_iter().enumerate() {
        let id = format!("tally-{n}");
        api.start(
            "tally",
            json!({"customer": customer, "items": items}),
            Some(&id),
        )
        .await;
        all.push(id);
    }
    api.start("pack", parcel("a", 1, 1), Some("pack-a")).await;
    api.start("fragile_flow", json!("search-broken"), Some("frag-1"))
        .await;
    all.extend(["pack-a".to_string(), "frag-1".to_string()]);
    for id in &all[..4] {
        api.wait_status(id, "completed").await;
    }
    api.wait_status("frag-1", "failed").await;

    let search = |q: &'static str| {
        let api = &api;
        async move { sorted(ids_of(&api.ok(&format!("/api/v1/instances{q}")).await)) }
    };
    assert_eq!(search("").await, sorted(all.clone()));
    assert_eq!(
        search("?workflow=tally").await,
        ["tally-0", "tally-1", "tally-2"]
    );
    assert_eq!(search("?status=failed").await, ["frag-1"]);
    assert_eq!(
        search("?status=failed,completed&workflow=pack").await,
        ["pack-a"]
    );
    assert_eq!(
        search("?status=running,suspended").await,
        Vec::<String>::new()
    );
    assert_eq!(
        search("?status=failed&status=completed").await,
        sorted(all.clone())
    );
    assert_eq!(
        search("?id_prefix=tally-").await,
        ["tally-0", "tally-1", "tally-2"]
    );
    assert_eq!(search("?id_prefix=pack").await, ["pack-a"]);
    assert_eq!(search("?id_prefix=_").await, Vec::<String>::new());
    assert_eq!(search("?id_prefix=%25").await, Vec::<String>::new());
    assert_eq!(search("?attr.customer=c-1").await, ["tally-0", "tally-2"]);
    assert_eq!(
        search("?attr.customer=%22c-1%22").await,
        ["tally-0", "tally-2"]
    );
    assert_eq!(search("?attr.items=5").await, ["tally-2"]);
    assert_eq!(search("?attr.items=5.0").await, ["tally-2"]);
    assert_eq!(search("?attr.customer=c-1&attr.items=3").await, ["tally-0"]);
    assert_eq!(search("?attr.customer=c-9").await, Vec::<String>::new());
    assert_eq!(search("?created_after=1h").await, sorted(all.clone()));
    assert_eq!(search("?created_after=1h&workflow=pack").await, ["pack-a"]);
    assert_eq!(search("?created_before=1h").await, Vec::<String>::new());

    let hour = Duration::from_secs(3600);
    let past = rfc3339(SystemTime::now() - hour);
    let future = rfc3339(SystemTime::now() + hour);
    let q = |s: String| format!("/api/v1/instances?{s}");
    let ids = |v: Value| sorted(ids_of(&v));
    assert_eq!(
        ids(api.ok(&q(format!("created_after={past}"))).await),
        sorted(all.clone())
    );
    assert_eq!(
        ids(api.ok(&q(format!("created_after={future}"))).await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(api
            .ok(&q(format!("created_before={future}&created_after={past}")))
            .await),
        sorted(all.clone())
    );
    assert_eq!(
        ids(api.ok(&q(format!("created_before={past}"))).await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(api
            .ok(&q("created_before=2000-01-01T00:00:00Z".into()))
            .await),
        Vec::<String>::new()
    );

    // Summaries have no input or output but carry the attributes.
    let page = api.ok("/api/v1/instances?id_prefix=tally-0").await;
    let summary = &page["instances"][0];
    assert!(
        summary.get("input").is_none() && summary.get("output").is_none(),
        "{summary}"
    );
    assert_eq!(
        summary["attributes"],
        json!({"customer": "c-1", "items": 3})
    );
    assert_eq!(page["next_cursor"], Value::Null);

    // parent: children of nobody here
    assert_eq!(search("?parent=tally-0").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_stay_correct_while_instances_arrive() {
    let api = open().await;
    for n in 0..11 {
        api.start("pack", parcel("p", 1, 1), Some(&format!("page-{n:02}")))
            .await;
    }
    // Some generated ids too, so ties in created_at are broken by id.
    for _ in 0..4 {
        api.start("pack", parcel("g", 1, 1), None).await;
    }
    let full = api.ok("/api/v1/instances?limit=500").await;
    let expected = ids_of(&full);
    assert_eq!(expected.len(), 15);
    // Newest first: created_at descending, then id descending.
    let keys: Vec<(String, String)> = full["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (
                i["created_at"].as_str().expect("created_at").to_string(),
                i["id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    let mut by_key = keys.clone();
    by_key.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, by_key, "newest first");

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    let mut arrived = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/instances?limit=4&cursor={c}"),
            None => "/api/v1/instances?limit=4".to_string(),
        };
        let page = api.ok(&path).await;
        let ids = ids_of(&page);
        assert!(ids.len() <= 4, "{page}");
        seen.extend(ids);
        pages += 1;
        // New instances arrive between pages.
        for _ in 0..2 {
            api.start(
                "pack",
                parcel("late", 1, 1),
                Some(&format!("late-{arrived:02}")),
            )
            .await;
            arrived += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, expected, "no duplicates, no gaps, newest first");
    assert_eq!(pages, 4);
    // Ids may contain `_`, the cursor's separator.
    for n in 0..3 {
        api.start("pack", parcel("u", 1, 1), Some(&format!("u_{n}_x")))
            .await;
    }
    let mut got = Vec::new();
    let mut path = "/api/v1/instances?limit=1&id_prefix=u_".to_string();
    loop {
        let page = api.ok(&path).await;
        got.extend(ids_of(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/instances?limit=1&id_prefix=u_&cursor={c}"),
            None => break,
        }
        assert!(got.len() <= 3, "{got:?}");
    }
    assert_eq!(sorted(got), ["u_0_x", "u_1_x", "u_2_x"]);
    // The cursor also combines with filters.
    let first = api.ok("/api/v1/instances?limit=2&id_prefix=page-").await;
    assert_eq!(ids_of(&first), ["page-10", "page-09"]);
    let c = first["next_cursor"].as_str().expect("cursor");
    let second = api
        .ok(&format!(
            "/api/v1/instances?limit=2&id_prefix=page-&cursor={c}"
        ))
        .await;
    assert_eq!(ids_of(&second), ["page-08", "page-07"]);
}

// ---------------------------------------------------------------------------------------------
// Failure, retry, restart, fork, graphs of instances.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_is_retried_after_the_cause_is_fixed() {
    let api = open().await;
    let key = "retry-me";
    let id = api.start("fragile_flow", json!(key), Some("frag-r")).await;
    let inst = api.wait_status(&id, "failed").await;
    assert_eq!(inst["failed_step"], json!("fragile"));
    assert_eq!(inst["failed_seq"], json!(2));
    assert_eq!(
        inst["output"],
        json!({"Err": {"message": "backend for retry-me is down", "permanent": true, "cancelled": false}})
    );

    let journal = api.journal(&id).await;
    assert_eq!(entry(&journal, "prepare")["state"], json!("done"));
    let fragile = entry(&journal, "fragile");
    assert_eq!(fragile["state"], json!("failed"), "{fragile}");
    assert_eq!(
        fragile["error"],
        json!("backend for retry-me is down"),
        "{fragile}"
    );
    let errors = fragile["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{fragile}");
    assert_eq!(errors[0]["attempt"], json!(1));
    assert_eq!(errors[0]["error"], json!("backend for retry-me is down"));

    let graph = api.get_resp(&format!("/api/v1/instances/{id}/graph")).await;
    assert_eq!(graph.status, StatusCode::OK);
    assert_eq!(graph.content_type, "image/svg+xml");
    let states: BTreeMap<String, String> = node_states(&graph.text).into_iter().collect();
    assert_eq!(states["prepare"], "done", "{states:?}");
    assert_eq!(states["fragile"], "failed", "{states:?}");
    assert_eq!(states["wrap_up"], "skipped", "{states:?}");
    let mermaid = api
        .get_resp(&format!("/api/v1/instances/{id}/graph?format=mermaid"))
        .await;
    assert_eq!(mermaid.status, StatusCode::OK);
    assert!(mermaid.text.contains("frag-r"), "{}", mermaid.text);
    let dot = api
        .get_resp(&format!("/api/v1/instances/{id}/graph?format=dot"))
        .await;
    assert_eq!(dot.status, StatusCode::OK);
    assert!(dot.text.contains("digraph"), "{}", dot.text);

    // A completed instance cannot be retried.
    let done = api.start("pack", parcel("x", 1, 1), Some("done-1")).await;
    api.wait_status(&done, "completed").await;
    let before = api.snapshot().await;
    let (status, body) = api.post("/api/v1/instances/done-1/retry", json!({})).await;
    assert_refused(
        "retry completed",
        (status, &body),
        StatusCode::CONFLICT,
        "conflict",
        "completed",
    );
    let (status, body) = api
        .post(
            &format!("/api/v1/instances/{id}/retry"),
            json!({"from_seq": 0}),
        )
        .await;
    assert_refused(
        "from_seq 0",
        (status, &body),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "from_seq",
    );
    let (status, body) = api
        .post(
            &format!("/api/v1/instances/{id}/retry"),
            json!({"from_seq": "2"}),
        )
        .await;
    assert_refused(
        "from_seq string",
        (status, &body),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "from_seq",
    );
    let (status, body) = api
        .post(
            &format!("/api/v1/instances/{id}/retry"),
            json!({"from_seq": 99}),
        )
        .await;
    assert!(
        status.is_client_error(),
        "from_seq past the end: {status} {body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("99")),
        "{body}"
    );
    let (status, body) = api.post("/api/v1/instances/nope/retry", json!({})).await;
    assert_refused(
        "retry unknown",
        (status, &body),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused retry changed something"
    );

    fix(key);
    let (status, body) = api
        .post(&format!("/api/v1/instances/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"id": "frag-r", "from_seq": 2}));
    let inst = api.wait_status(&id, "completed").await;
    assert_eq!(inst["output"], json!({"Ok": 42}));
    assert_eq!(inst["retries"], json!(1));
    assert_eq!(inst["failed_step"], Value::Null, "{inst}");

    let journal = api.journal(&id).await;
    let steps: Vec<(&Value, &Value)> = entries(&journal, "step")
        .into_iter()
        .map(|e| (&e["name"], &e["state"]))
        .collect();
    assert_eq!(
        steps,
        [
            (&json!("prepare"), &json!("done")),
            (&json!("fragile"), &json!("done")),
            (&json!("wrap_up"), &json!("done"))
        ]
    );
    let superseded = journal["superseded"].as_array().expect("superseded");
    assert_eq!(superseded.len(), 1, "{journal}");
    assert_eq!(superseded[0]["retry"], json!(1));
    let old = superseded[0]["entries"].as_array().expect("entries");
    assert_eq!(old.len(), 1, "{journal}");
    assert_eq!(old[0]["name"], json!("fragile"));
    assert_eq!(old[0]["seq"], json!(2));
    assert_eq!(old[0]["state"], json!("failed"));
    assert_eq!(
        old[0]["errors"][0]["error"],
        json!("backend for retry-me is down")
    );

    let graph = api.get_resp(&format!("/api/v1/instances/{id}/graph")).await;
    let states: BTreeMap<String, String> = node_states(&graph.text).into_iter().collect();
    assert_eq!(states["wrap_up"], "done", "{states:?}");
    assert_ne!(states["fragile"], "failed", "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_fork_make_new_instances() {
    let api = open().await;
    let id = api
        .start("pack", parcel("vase", 500, 1), Some("orig"))
        .await;
    api.wait_status(&id, "completed").await;

    let (status, body) = api.post("/api/v1/instances/orig/restart", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["restarted_from"], json!("orig"));
    let new_id = body["id"].as_str().expect("id").to_string();
    assert_ne!(new_id, "orig");
    let restarted = api.wait_status(&new_id, "completed").await;
    assert_eq!(restarted["input"], parcel("vase", 500, 1));
    assert_eq!(
        restarted["attributes"]["orch.restarted_from"],
        json!("orig"),
        "{restarted}"
    );
    assert_eq!(restarted["workflow"], json!("pack"));
    // An empty body works as well.
    let (status, body) = api.post_raw("/api/v1/instances/orig/restart", "").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Finished before the snapshot below, which must see nothing moving.
    api.wait_status(body["id"].as_str().expect("id"), "completed")
        .await;

    // Fork a failed instance from its failing step, after fixing the cause.
    let key = "fork-me";
    let failed = api.start("fragile_flow", json!(key), Some("to-fork")).await;
    api.wait_status(&failed, "failed").await;
    let original = api.journal(&failed).await;
    let before = api.snapshot().await;
    for (body, needle) in [
        (json!({}), "from_seq"),
        (json!({"from_seq": 0}), "from_seq"),
        (json!({"from_seq": -1}), "from_seq"),
        (json!({"from_seq": 1.5}), "from_seq"),
        (json!({"from_seq": 2, "mode": "x"}), "`mode`"),
    ] {
        let (status, resp) = api
            .post("/api/v1/instances/to-fork/fork", body.clone())
            .await;
        assert_refused(
            &format!("fork {body}"),
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let (status, resp) = api
        .post("/api/v1/instances/to-fork/fork", json!({"from_seq": 50}))
        .await;
    assert!(status.is_client_error(), "{status} {resp}");
    let (status, resp) = api
        .post("/api/v1/instances/nope/fork", json!({"from_seq": 1}))
        .await;
    assert_refused(
        "fork unknown",
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused fork changed something"
    );

    fix(key);
    let (status, body) = api
        .post("/api/v1/instances/to-fork/fork", json!({"from_seq": 2}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["forked_from"], json!("to-fork"));
    assert_eq!(body["from_seq"], json!(2));
    let fork_id = body["id"].as_str().expect("id").to_string();
    let fork = api.wait_status(&fork_id, "completed").await;
    assert_eq!(fork["output"], json!({"Ok": 42}));
    assert_eq!(fork["input"], json!(key));
    assert_eq!(
        fork["attributes"]["orch.forked_from"],
        json!("to-fork"),
        "{fork}"
    );
    let journal = api.journal(&fork_id).await;
    // Entry 1 is a copy (same times), entries 2.. ran anew.
    let copied = entry(&journal, "prepare");
    let orig_prepare = entry(&original, "prepare");
    assert_eq!(copied["seq"], json!(1));
    assert_eq!(copied["started_at"], orig_prepare["started_at"]);
    assert_eq!(copied["outcome"], orig_prepare["outcome"]);
    assert_eq!(entry(&journal, "fragile")["state"], json!("done"));
    assert_eq!(entry(&journal, "wrap_up")["state"], json!("done"));
    // The original is untouched.
    assert_eq!(api.instance("to-fork").await["status"], json!("failed"));
    assert_eq!(api.journal("to-fork").await["entries"], original["entries"]);
}

// ---------------------------------------------------------------------------------------------
// Signals, cancel, terminate, bulk.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_delivered_and_refused_once_finished() {
    let api = open().await;
    let id = api.start("approval", json!(60_000), Some("appr-1")).await;
    let inst = api.wait_status(&id, "suspended").await;
    assert_eq!(inst["custom_status"], json!({"phase": "waiting"}));

    // A signal nobody waits for yet is kept and shown as pending.
    let (status, body) = api
        .post(
            "/api/v1/instances/appr-1/signal",
            json!({"name": "other", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["id"], json!("appr-1"));
    let first_signal = body["signal_id"].as_i64().expect("signal_id");
    // The signal loads the instance (stored with it: due now), which replays, finds no
    // `approve` and suspends again until its deadline. Wait for that, so that the snapshot
    // below is of a state nothing is changing any more.
    let deadline_at = inst["wake_at"].clone();
    assert!(deadline_at.is_string(), "{inst}");
    api.wait_instance(&id, "suspended until its deadline again", |i| {
        i["status"] == json!("suspended") && i["wake_at"] == deadline_at
    })
    .await;
    let journal = api.journal(&id).await;
    let pending = journal["pending_signals"].as_array().expect("pending");
    assert_eq!(pending.len(), 1, "{journal}");
    assert_eq!(pending[0]["name"], json!("other"));
    assert_eq!(pending[0]["payload"], json!({"n": 1}));
    assert_eq!(pending[0]["id"], json!(first_signal));
    let deadline = entries(&journal, "deadline");
    assert_eq!(deadline.len(), 1, "{journal}");
    assert_eq!(deadline[0]["state"], json!("waiting"));

    // The signal woke the instance, which replays and waits again: let it settle (suspended
    // on its deadline once more) before comparing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(api.instance(&id).await["status"] == json!("suspended")
        && api.instance(&id).await["wake_at"] == inst["wake_at"])
    {
        assert!(Instant::now() < deadline, "appr-1 never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = api.snapshot().await;
    for (body, needle) in [
        (json!({}), "`name`"),
        (json!({"name": ""}), "`name`"),
        (json!({"name": 3}), "`name` must be a string"),
        (
            json!({"name": "approve", "payload": true, "extra": 1}),
            "`extra`",
        ),
    ] {
        let (status, resp) = api
            .post("/api/v1/instances/appr-1/signal", body.clone())
            .await;
        assert_refused(
            &format!("signal {body}"),
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let (status, resp) = api
        .post("/api/v1/instances/nope/signal", json!({"name": "approve"}))
        .await;
    assert_refused(
        "signal unknown",
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused signal changed something"
    );

    let (status, body) = api
        .post(
            "/api/v1/instances/appr-1/signal",
            json!({"name": "approve", "payload": {"by": "ann"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["signal_id"].as_i64().expect("signal_id") > first_signal);
    let inst = api.wait_status(&id, "completed").await;
    assert_eq!(inst["output"], json!("ann"));
    assert_eq!(inst["custom_status"], json!({"phase": "decided"}));
    let journal = api.journal(&id).await;
    let received = entries(&journal, "signal");
    assert_eq!(received.len(), 1, "{journal}");
    assert_eq!(received[0]["name"], json!("approve"));
    assert_eq!(received[0]["outcome"], json!({"by": "ann"}));

    let before = api.snapshot().await;
    let (status, resp) = api
        .post(
            "/api/v1/instances/appr-1/signal",
            json!({"name": "approve", "payload": {"by": "bob"}}),
        )
        .await;
    assert_refused(
        "signal finished",
        (status, &resp),
        StatusCode::CONFLICT,
        "conflict",
        "finished",
    );
    assert_eq!(api.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_runs_the_compensation_and_ends_cancelled() {
    let api = open().await;
    let key = "cancel-me";
    let id = api.start("sleeper", json!(key), Some("sl-c")).await;
    let inst = api.wait_status(&id, "suspended").await;
    assert!(inst["wake_at"].is_string(), "{inst}");
    let journal = api.journal(&id).await;
    let sleeps = entries(&journal, "sleep");
    assert_eq!(sleeps.len(), 1, "{journal}");
    assert_eq!(sleeps[0]["state"], json!("waiting"));

    let graph = api.get_resp(&format!("/api/v1/instances/{id}/graph")).await;
    let states: BTreeMap<String, String> = node_states(&graph.text).into_iter().collect();
    assert_eq!(states["book"], "done", "{states:?}");
    assert_eq!(states["confirm"], "pending", "{states:?}");

    let before = api.snapshot().await;
    let (status, resp) = api.post("/api/v1/instances/sl-c/retry", json!({})).await;
    assert_refused(
        "retry a suspended instance",
        (status, &resp),
        StatusCode::CONFLICT,
        "conflict",
        "suspended",
    );
    let (status, resp) = api
        .post("/api/v1/instances/sl-c/cancel", json!({"reason": 5}))
        .await;
    assert_refused(
        "reason number",
        (status, &resp),
        StatusCode::BAD_REQUEST,
        "bad_request",
        "`reason`",
    );
    let (status, resp) = api.post("/api/v1/instances/nope/cancel", json!({})).await;
    assert_refused(
        "cancel unknown",
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    assert_eq!(api.snapshot().await, before);

    let (status, body) = api
        .post(
            "/api/v1/instances/sl-c/cancel",
            json!({"reason": "customer asked"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["id"], json!("sl-c"));
    assert!(body["status"].is_string(), "{body}");
    let inst = api.wait_status(&id, "cancelled").await;
    assert_eq!(inst["cancel_requested"], json!(true));
    assert!(inst["cancel_requested_at"].is_string(), "{inst}");
    assert!(
        UNBOOKED.lock().expect("lock").contains(key),
        "compensation ran"
    );
    let journal = api.journal(&id).await;
    let steps: Vec<&Value> = entries(&journal, "step")
        .into_iter()
        .map(|e| &e["name"])
        .collect();
    assert_eq!(steps, [&json!("book"), &json!("confirm"), &json!("unbook")]);
    let confirm = entry(&journal, "confirm");
    assert!(
        confirm["outcome"].to_string().contains("cancel"),
        "the cancelled step's outcome: {confirm}"
    );
    assert_eq!(confirm["state"], json!("cancelled"), "{confirm}");

    let (status, resp) = api.post("/api/v1/instances/sl-c/cancel", json!({})).await;
    assert_refused(
        "cancel finished",
        (status, &resp),
        StatusCode::CONFLICT,
        "conflict",
        "finished",
    );

    let audit = api.ok("/api/v1/audit").await;
    let cancel = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == json!("cancel"))
        .expect("cancel audited");
    assert_eq!(cancel["actor"], json!("local"));
    assert_eq!(cancel["target"], json!("sl-c"));
    assert_eq!(cancel["detail"], json!({"reason": "customer asked"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_stops_hard_and_names_the_actor() {
    let api = open_with_tokens().await;
    let id = api.start("sleeper", json!("term-me"), Some("sl-t")).await;
    api.wait_status(&id, "suspended").await;
    let (status, body) = api
        .post(
            "/api/v1/instances/sl-t/terminate",
            json!({"reason": "stuck"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"id": "sl-t", "status": "terminated"}));
    let inst = api.instance(&id).await;
    assert_eq!(inst["status"], json!("terminated"));
    let error = inst["error"].as_str().expect("error");
    assert!(error.contains("ops") && error.contains("stuck"), "{error}");
    assert!(
        !UNBOOKED.lock().expect("lock").contains("term-me"),
        "no compensation"
    );

    let before = api.snapshot().await;
    let (status, resp) = api
        .post("/api/v1/instances/sl-t/terminate", json!({}))
        .await;
    assert_refused(
        "terminate finished",
        (status, &resp),
        StatusCode::CONFLICT,
        "conflict",
        "finished",
    );
    let (status, resp) = api
        .post("/api/v1/instances/sl-t/signal", json!({"name": "x"}))
        .await;
    assert_refused(
        "signal terminated",
        (status, &resp),
        StatusCode::CONFLICT,
        "conflict",
        "finished",
    );
    let (status, resp) = api
        .post("/api/v1/instances/nope/terminate", json!({}))
        .await;
    assert_refused(
        "terminate unknown",
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    assert_eq!(api.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancel_and_bulk_retry_by_filter() {
    let api = open().await;
    for n in 0..3 {
        api.start(
            "sleeper",
            json!(format!("bulk-sl-{n}")),
            Some(&format!("bsl-{n}")),
        )
        .await;
    }
    for n in 0..3 {
        api.start(
            "fragile_flow",
            json!(format!("bulk-fr-{n}")),
            Some(&format!("bfr-{n}")),
        )
        .await;
    }
    let other = api.start("pack", parcel("b", 1, 1), Some("bpack")).await;
    for n in 0..3 {
        api.wait_status(&format!("bsl-{n}"), "suspended").await;
        api.wait_status(&format!("bfr-{n}"), "failed").await;
    }
    api.wait_status(&other, "completed").await;

    let before = api.snapshot().await;
    for (path, body, needle) in [
        ("/api/v1/bulk/cancel", json!({}), "`filter`"),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": []}),
            "`filter` must be an object",
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {"limit": 3}}),
            "`limit`",
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {"status": [1]}}),
            "filter.status",
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {"status": ["sleeping"]}}),
            "sleeping",
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {"attr": "x"}}),
            "filter.attr",
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {"workflow": true}}),
            "filter.workflow",
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {"created_after": "yesterday"}}),
            "created_after",
        ),
        (
            "/api/v1/bulk/cancel",
            json!({"filter": {}, "why": "x"}),
            "`why`",
        ),
        (
            "/api/v1/bulk/retry",
            json!({"filter": {"workflow": "fragile_flow"}, "reason": "x"}),
            "`reason`",
        ),
        ("/api/v1/bulk/retry", json!({}), "`filter`"),
    ] {
        let (status, resp) = api.post(path, body.clone()).await;
        assert_refused(
            &format!("{path} {body}"),
            (status, &resp),
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let (status, resp) = api
        .post(
            "/api/v1/bulk/cancel",
            json!({"filter": {"workflow": "nope"}}),
        )
        .await;
    assert_refused(
        "bulk unknown workflow",
        (status, &resp),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused bulk call changed something"
    );

    let (status, body) = api
        .post(
            "/api/v1/bulk/cancel",
            json!({"filter": {"workflow": "sleeper", "status": ["suspended"], "id_prefix": "bsl-"}, "reason": "sale over"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["matched"], json!(3), "{body}");
    assert_eq!(
        sorted(serde_json::from_value(body["succeeded"].clone()).expect("ids")),
        ["bsl-0", "bsl-1", "bsl-2"]
    );
    assert_eq!(body["failed"], json!([]));
    for n in 0..3 {
        api.wait_status(&format!("bsl-{n}"), "cancelled").await;
        assert!(
            UNBOOKED
                .lock()
                .expect("lock")
                .contains(&format!("bulk-sl-{n}"))
        );
    }
    assert_eq!(api.instance("bpack").await["status"], json!("completed"));

    // Bulk cancel of finished instances: matched, each refused.
    let (status, body) = api
        .post(
            "/api/v1/bulk/cancel",
            json!({"filter": {"workflow": "pack"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["matched"], json!(1));
    assert_eq!(body["succeeded"], json!([]));
    assert_eq!(body["failed"][0]["id"], json!("bpack"));
    assert!(
        body["failed"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("finished")),
        "{body}"
    );

    for n in 0..3 {
        fix(&format!("bulk-fr-{n}"));
    }
    let (status, body) = api
        .post(
            "/api/v1/bulk/retry",
            json!({"filter": {"workflow": "fragile_flow", "status": "failed"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["matched"], json!(3), "{body}");
    assert_eq!(body["failed"], json!([]));
    for n in 0..3 {
        let inst = api.wait_status(&format!("bfr-{n}"), "completed").await;
        assert_eq!(inst["retries"], json!(1));
    }
    let audit = api.ok("/api/v1/audit").await;
    let retries = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == json!("retry"))
        .count();
    assert_eq!(retries, 3);
}

// ---------------------------------------------------------------------------------------------
// Analytics, audit, metrics, health.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_attribute_aggregates() {
    let api = open().await;
    for (n, items) in [1, 2, 5].into_iter().enumerate() {
        api.start(
            "tally",
            json!({"customer": format!("s-{}", n % 2), "items": items}),
            Some(&format!("st-{n}")),
        )
        .await;
    }
    for n in 0..2 {
        api.start(
            "fragile_flow",
            json!(format!("stats-{n}")),
            Some(&format!("sf-{n}")),
        )
        .await;
    }
    for n in 0..3 {
        api.wait_status(&format!("st-{n}"), "completed").await;
    }
    for n in 0..2 {
        api.wait_status(&format!("sf-{n}"), "failed").await;
    }

    let stats = api.ok("/api/v1/stats?window=1h&bucket=5m").await;
    assert_eq!(stats["bucket_ms"], json!(300_000));
    let totals = stats["totals"].as_array().expect("totals");
    let total = |w: &str, s: &str| {
        totals
            .iter()
            .find(|t| t["workflow"] == json!(w) && t["status"] == json!(s))
            .map(|t| t["count"].clone())
    };
    assert_eq!(total("tally", "completed"), Some(json!(3)), "{stats}");
    assert_eq!(total("fragile_flow", "failed"), Some(json!(2)), "{stats}");
    assert_eq!(totals.len(), 2, "{stats}");
    assert_eq!(
        stats["failed_steps"],
        json!([{"workflow": "fragile_flow", "step": "fragile", "count": 2}])
    );
    let series_total: u64 = stats["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(series_total, 5, "{stats}");
    assert!(stats["from"].as_str() < stats["to"].as_str(), "{stats}");

    let only = api.ok("/api/v1/stats?workflow=tally").await;
    assert_eq!(only["bucket_ms"], json!(3_600_000), "default: 24h / 24");
    assert_eq!(
        only["totals"],
        json!([{"workflow": "tally", "status": "completed", "count": 3}])
    );

    let agg = api
        .ok("/api/v1/stats/attributes?key=items&workflow=tally")
        .await;
    assert_eq!(agg["key"], json!("items"));
    assert_eq!(agg["count"], json!(3));
    assert_eq!(agg["sum"], json!(8.0));
    assert_eq!(agg["min"], json!(1.0));
    assert_eq!(agg["max"], json!(5.0));
    let avg = agg["avg"].as_f64().expect("avg");
    assert!((avg - 8.0 / 3.0).abs() < 1e-9, "{agg}");
    let filtered = api
        .ok("/api/v1/stats/attributes?key=items&attr.customer=s-0&status=completed&created_after=1h")
        .await;
    assert_eq!(filtered["count"], json!(2), "{filtered}");
    assert_eq!(filtered["sum"], json!(6.0), "{filtered}");
    let none = api.ok("/api/v1/stats/attributes?key=nothing").await;
    assert_eq!(none["count"], json!(0));
    assert_eq!(none["min"], Value::Null);
    assert_eq!(none["avg"], Value::Null);

    for (path, needle) in [
        ("/api/v1/stats?window=forever", "window"),
        ("/api/v1/stats?bucket=0s", "bucket"),
        ("/api/v1/stats?window=24h&bucket=1s", "1000"),
        ("/api/v1/stats?days=3", "`days`"),
        ("/api/v1/stats/attributes", "`key`"),
        ("/api/v1/stats/attributes?key=items&limit=0", "limit"),
        ("/api/v1/stats/attributes?key=items&sort=asc", "`sort`"),
        (
            "/api/v1/stats/attributes?key=items&created_after=soon",
            "created_after",
        ),
    ] {
        let (status, body) = api.get(path).await;
        assert_refused(
            path,
            (status, &body),
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    let (status, body) = api.get("/api/v1/stats?workflow=nope").await;
    assert_refused(
        "stats unknown workflow",
        (status, &body),
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_each_tokens_actor() {
    let api = open_with_tokens().await;
    let id = api.start("sleeper", json!("audit-1"), Some("au-1")).await;
    api.wait_status(&id, "suspended").await;
    let r = api
        .send(
            Method::POST,
            "/api/v1/instances/au-1/signal",
            Some(ADMIN),
            Some(br#"{"name":"poke"}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let (status, body) = api
        .post("/api/v1/instances/au-1/cancel", json!({"reason": "r"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.wait_status(&id, "cancelled").await;
    // The read token may read the log but leaves no trace in it.
    let r = api
        .send(Method::GET, "/api/v1/audit?limit=10", Some(READ), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let entries = r.json()["entries"].clone();
    let actions: Vec<(&str, &str, &str)> = entries
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().expect("actor"),
                e["action"].as_str().expect("action"),
                e["target"].as_str().expect("target"),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("ops", "cancel", "au-1"),
            ("ops", "signal", "au-1"),
            ("ops", "start", "au-1")
        ],
        "newest first"
    );
    assert_eq!(entries[2]["detail"], json!({"workflow": "sleeper"}));
    assert!(entries[0]["at"].as_str() >= entries[2]["at"].as_str());
    let one = api.ok("/api/v1/audit?limit=1").await;
    assert_eq!(one["entries"].as_array().map(Vec::len), Some(1));
    for path in [
        "/api/v1/audit?limit=0",
        "/api/v1/audit?limit=1001",
        "/api/v1/audit?actor=ops",
    ] {
        let (status, body) = api.get(path).await;
        assert_refused(
            path,
            (status, &body),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health() {
    let api = open().await;
    let ok = api.start("pack", parcel("m", 1, 1), Some("m-1")).await;
    let bad = api
        .start("fragile_flow", json!("metrics-x"), Some("m-2"))
        .await;
    api.wait_status(&ok, "completed").await;
    api.wait_status(&bad, "failed").await;
    let sleeping = api.start("sleeper", json!("metrics-s"), Some("m-3")).await;
    api.wait_status(&sleeping, "suspended").await;

    // An end is counted just after it is written: wait until both ends are counted.
    let r = wait_until("both ends counted in /metrics", || async {
        let r = api.get_resp("/metrics").await;
        let counted = [
            r#"orch_instances_finished_total{workflow="pack",status="completed"} 1"#,
            r#"orch_instances_finished_total{workflow="fragile_flow",status="failed"} 1"#,
        ];
        if counted.iter().all(|c| r.text.contains(c)) {
            Ok(r)
        } else {
            Err(r.text)
        }
    })
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type.contains("text"), "{}", r.content_type);
    let m = r.text;
    for needle in [
        r#"orch_instances_started_total{workflow="pack"} 1"#,
        r#"orch_instances_started_total{workflow="fragile_flow"} 1"#,
        r#"orch_instances_finished_total{workflow="pack",status="completed"} 1"#,
        r#"orch_instances_finished_total{workflow="fragile_flow",status="failed"} 1"#,
        r#"orch_step_duration_seconds_count{workflow="pack",step="print_label"} 1"#,
        r#"orch_instances{status="suspended"} 1"#,
        r#"orch_instances{status="running"} 0"#,
        "orch_store_commit_seconds_bucket{",
        "orch_store_commit_seconds_count ",
        "orch_store_batch_size_bucket{",
        r#"orch_http_requests_total{route="/api/v1/instances",code="201"} 3"#,
        r#"orch_http_requests_total{route="/api/v1/instances/{id}",code="200"}"#,
    ] {
        assert!(m.contains(needle), "/metrics lacks `{needle}`:\n{m}");
    }
    let weigh_buckets = m
        .lines()
        .filter(|l| {
            l.starts_with("orch_step_duration_seconds_bucket{")
                && l.contains(r#"workflow="pack",step="weigh"}"#)
        })
        .count();
    assert!(
        weigh_buckets >= 2,
        "a step-duration histogram for pack/weigh:\n{m}"
    );
    let commits: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("orch_store_commit_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("commit count");
    assert!(commits >= 3.0, "{commits}");

    let r = api.get_resp("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));
}

// ---------------------------------------------------------------------------------------------
// Auth.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_read_tokens_cannot_mutate() {
    let api = open_with_tokens().await;
    let id = api.start("sleeper", json!("auth-1"), Some("auth-1")).await;
    api.wait_status(&id, "suspended").await;
    let done = api
        .start("fragile_flow", json!("auth-2"), Some("auth-2"))
        .await;
    api.wait_status(&done, "failed").await;

    let reads = [
        "/api/v1/openapi.json",
        "/api/v1/whoami",
        "/api/v1/definitions",
        "/api/v1/definitions/pack",
        "/api/v1/definitions/pack/graph",
        "/api/v1/instances",
        "/api/v1/instances/auth-1",
        "/api/v1/instances/auth-1/journal",
        "/api/v1/instances/auth-1/graph",
        "/api/v1/stats",
        "/api/v1/stats/attributes?key=items",
        "/api/v1/audit",
        "/api/v1/nodes",
        "/api/v1/compatibility",
        "/metrics",
    ];
    let writes: [(&str, Value); 9] = [
        (
            "/api/v1/instances",
            json!({"workflow": "pack", "input": parcel("a", 1, 1)}),
        ),
        ("/api/v1/instances/auth-1/signal", json!({"name": "x"})),
        ("/api/v1/instances/auth-1/cancel", json!({})),
        ("/api/v1/instances/auth-1/terminate", json!({})),
        ("/api/v1/instances/auth-2/retry", json!({})),
        ("/api/v1/instances/auth-2/restart", json!({})),
        ("/api/v1/instances/auth-2/fork", json!({"from_seq": 1})),
        ("/api/v1/bulk/cancel", json!({"filter": {}})),
        ("/api/v1/bulk/retry", json!({"filter": {}})),
    ];
    let before = api.snapshot().await;
    let calls = reads.iter().map(|p| (Method::GET, *p, None)).chain(
        writes
            .iter()
            .map(|(p, b)| (Method::POST, *p, Some(b.to_string().into_bytes()))),
    );
    for (method, path, body) in calls {
        let what = format!("{method} {path}");
        for (token, needle) in [
            (None, "Authorization: Bearer"),
            (Some("wrong-token"), "not valid"),
        ] {
            let r = api.send(method.clone(), path, token, body.clone()).await;
            assert_refused(
                &format!("{what} with {token:?}"),
                (r.status, &r.json()),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                needle,
            );
            assert_eq!(
                r.www_authenticate.as_deref(),
                Some("Bearer realm=\"orch\""),
                "{what}"
            );
        }
        // A token that is a prefix or extension of a real one is wrong too.
        let r = api
            .send(method.clone(), path, Some("s3cret-admin2"), body.clone())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        let r = api
            .send(method.clone(), path, Some("s3cret-admi"), body.clone())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        let r = api
            .send(method.clone(), path, Some(READ), body.clone())
            .await;
        if method == Method::GET {
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{what} with the read token: {}",
                r.text
            );
        } else {
            assert_refused(
                &format!("{what} with the read token"),
                (r.status, &r.json()),
                StatusCode::FORBIDDEN,
                "forbidden",
                "read-only",
            );
        }
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused call changed something"
    );

    // A malformed Authorization header is refused like a missing one.
    let r = api
        .http
        .get(format!("{}/api/v1/whoami", api.base))
        .header("authorization", format!("Basic {ADMIN}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Health and the UI need no token.
    let r = api.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = api.send(Method::GET, "/", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type.starts_with("text/html"),
        "{}",
        r.content_type
    );

    // The admin token may do everything.
    for path in reads {
        let r = api.send(Method::GET, path, Some(ADMIN), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }
    let (status, body) = api.post("/api/v1/instances/auth-1/cancel", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.wait_status("auth-1", "cancelled").await;
}

// ---------------------------------------------------------------------------------------------
// Bad input: a 4xx with a JSON error that says what to fix, and nothing changes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_json_and_change_nothing() {
    let api = open().await;
    let sleeping = api.start("sleeper", json!("bad-1"), Some("bad-1")).await;
    api.wait_status(&sleeping, "suspended").await;
    let failed = api
        .start("fragile_flow", json!("bad-2"), Some("bad-2"))
        .await;
    api.wait_status(&failed, "failed").await;
    let before = api.snapshot().await;

    let posts: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            "/api/v1/instances",
            b"{\"workflow\": \"pack\",".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not valid JSON",
        ),
        (
            "/api/v1/instances",
            b"not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not valid JSON",
        ),
        (
            "/api/v1/instances",
            b"[{\"workflow\": \"pack\"}]".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "must be a JSON object, got an array",
        ),
        (
            "/api/v1/instances",
            b"\"pack\"".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "must be a JSON object, got a string",
        ),
        (
            "/api/v1/instances",
            b"null".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "must be a JSON object",
        ),
        (
            "/api/v1/instances/bad-1/cancel",
            b"{\"reason\": }".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not valid JSON",
        ),
        (
            "/api/v1/instances/bad-1/cancel",
            b"[]".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "got an array",
        ),
        (
            "/api/v1/instances/bad-1/cancel",
            b"{\"reson\": \"typo\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`reson`",
        ),
        (
            "/api/v1/instances/bad-1/terminate",
            b"{\"reason\": [\"x\"]}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`reason` must be a string",
        ),
        (
            "/api/v1/instances/bad-1/terminate",
            b"{\"force\": true}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`force`",
        ),
        (
            "/api/v1/instances/bad-2/retry",
            b"{\"from\": 2}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`from`",
        ),
        (
            "/api/v1/instances/bad-2/restart",
            b"{\"input\": 1}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`input`",
        ),
        (
            "/api/v1/instances/bad-2/fork",
            b"7".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "got a number",
        ),
        (
            "/api/v1/instances/bad-1/signal",
            b"{\"name\": \"go\", \"payload\": tru}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not valid JSON",
        ),
        (
            "/api/v1/bulk/retry",
            b"{\"filter\": {\"workflow\": \"fragile_flow\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not valid JSON",
        ),
        // Unknown instances.
        (
            "/api/v1/instances/nope/signal",
            b"{\"name\": \"go\"}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope/cancel",
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope/terminate",
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope/retry",
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope/restart",
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope/fork",
            b"{\"from_seq\": 1}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        // Unknown routes.
        (
            "/api/v1/instances/bad-1/pause",
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "no route for POST /api/v1/instances/bad-1/pause",
        ),
        (
            "/api/v2/instances",
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            "not_found",
            "/api/v1",
        ),
    ];
    for (path, body, status, code, needle) in posts {
        let what = format!("POST {path} {}", String::from_utf8_lossy(&body));
        let (got, resp) = api.post_raw(path, body).await;
        assert_refused(&what, (got, &resp), status, code, needle);
    }

    // Over 2 MiB: 413, whatever the route.
    let huge = format!(
        r#"{{"workflow": "pack", "input": {{"sku": "{}", "dims": {{"weight_g": 1, "qty": 1}}}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    for path in [
        "/api/v1/instances",
        "/api/v1/instances/bad-1/signal",
        "/api/v1/bulk/cancel",
    ] {
        let (got, resp) = api.post_raw(path, huge.clone()).await;
        assert_refused(
            &format!("huge body to {path}"),
            (got, &resp),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "limit",
        );
    }

    let gets: Vec<(&str, StatusCode, &str, &str)> = vec![
        (
            "/api/v1/instances?state=failed",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unknown query parameter `state`",
        ),
        (
            "/api/v1/instances?status=sleeping",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unknown status `sleeping`",
        ),
        (
            "/api/v1/instances?status=failed,Completed",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`Completed`",
        ),
        (
            "/api/v1/instances?cursor=garbage",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad cursor",
        ),
        (
            "/api/v1/instances?cursor=123_",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad cursor",
        ),
        (
            "/api/v1/instances?cursor=abc_bad-1",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "next_cursor",
        ),
        (
            "/api/v1/instances?limit=0",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit must be 1 to 500",
        ),
        (
            "/api/v1/instances?limit=501",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit must be 1 to 500",
        ),
        (
            "/api/v1/instances?limit=-1",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit",
        ),
        (
            "/api/v1/instances?limit=ten",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit",
        ),
        (
            "/api/v1/instances?created_after=yesterday",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "created_after",
        ),
        (
            "/api/v1/instances?created_before=2026-13-45T00:00:00Z",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "RFC 3339",
        ),
        (
            "/api/v1/instances?attr.=1",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "attr.",
        ),
        (
            "/api/v1/instances?workflow=nope",
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope",
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope/journal",
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/nope/graph",
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/instances/bad-1/graph?format=pdf",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "svg, mermaid or dot",
        ),
        (
            "/api/v1/definitions/nope",
            StatusCode::NOT_FOUND,
            "not_found",
            "nope",
        ),
        (
            "/api/v1/audit?limit=0",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit",
        ),
        (
            "/api/v1/stats?window=-1h",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "window",
        ),
        (
            "/api/v1/nothing",
            StatusCode::NOT_FOUND,
            "not_found",
            "no route for GET /api/v1/nothing",
        ),
        ("/nothing", StatusCode::NOT_FOUND, "not_found", "/api/v1"),
    ];
    for (path, status, code, needle) in gets {
        let (got, resp) = api.get(path).await;
        assert_refused(&format!("GET {path}"), (got, &resp), status, code, needle);
    }
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused call changed something"
    );
    assert_eq!(api.instance("bad-1").await["status"], json!("suspended"));
    assert_eq!(api.instance("bad-2").await["status"], json!("failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_gets_a_json_error() {
    let api = open().await;
    for (method, path) in [
        (Method::PUT, "/api/v1/instances"),
        (Method::DELETE, "/api/v1/instances/x"),
        (Method::POST, "/api/v1/whoami"),
        (Method::GET, "/api/v1/instances/x/cancel"),
    ] {
        let r = api.send(method.clone(), path, None, None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let body: Value = serde_json::from_str(&r.text).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: 405 without a JSON body ({e}): {:?}",
                r.text
            )
        });
        assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
        assert!(
            body["error"]["message"].is_string(),
            "{method} {path}: {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document.

/// Every route registered in `orch-runtime/src/server/api.rs`, read from its source.
fn registered_routes() -> Vec<(String, Vec<String>)> {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/orch-runtime/src/server/api.rs"
    ))
    .expect("api.rs");
    let mut out = Vec::new();
    for chunk in src.split(".route(").skip(1) {
        // rustfmt puts a long route's path on a line of its own.
        let Some(chunk) = chunk.trim_start().strip_prefix('"') else {
            continue;
        };
        let (path, rest) = chunk.split_once('"').expect("a closing quote");
        // The handlers: `get(x)`, `post(y)`, `get(x).post(y)` up to the closing parenthesis.
        let call = rest.split_once("))").map_or(rest, |(c, _)| c);
        let methods = ["get", "post", "put", "delete", "patch"]
            .into_iter()
            .filter(|m| call.contains(&format!(" {m}(")) || call.contains(&format!(".{m}(")))
            .map(str::to_string)
            .collect();
        out.push((path.to_string(), methods));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let api = open().await;
    let id = api
        .start("fragile_flow", json!("openapi-x"), Some("oa-1"))
        .await;
    api.wait_status(&id, "failed").await;

    let r = api.get_resp("/api/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    let doc = r.json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        json!("bearer"),
        "the bearer security scheme"
    );
    let paths = doc["paths"].as_object().expect("paths");

    let routes = registered_routes();
    assert!(routes.len() >= 20, "the scan found {routes:?}");
    for (route, methods) in &routes {
        let item = paths
            .get(route)
            .unwrap_or_else(|| panic!("{route} is not in the OpenAPI document"));
        for m in methods {
            assert!(
                item.get(m).is_some(),
                "{} {route} is not documented",
                m.to_uppercase()
            );
        }
    }

    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(s)) => out.push(s.clone()),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "$ref {r} does not resolve");
    }

    // Every documented operation answers (not the fallback) for its documented method.
    for (path, item) in paths {
        // A workflow's typed operations are documented under its name
        // (`/api/v1/definitions/pack/instances`), served by the `{name}` route.
        let fits = |route: &str| {
            let (r, p): (Vec<&str>, Vec<&str>) =
                (route.split('/').collect(), path.split('/').collect());
            r.len() == p.len()
                && r.iter()
                    .zip(&p)
                    .all(|(r, p)| r == p || (r.starts_with('{') && !p.starts_with('{')))
        };
        assert!(
            routes.iter().any(|(r, _)| fits(r)),
            "{path} is documented but not registered in api.rs"
        );
        for (method, op) in item.as_object().expect("path item") {
            let Ok(m) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            if !["GET", "POST"].contains(&m.as_str()) {
                continue;
            }
            assert!(op["responses"].is_object(), "{method} {path}: no responses");
            let concrete = path
                .replace("{name}", "fragile_flow")
                .replace("{id}", &id)
                .replace("{signal}", "go");
            let body = (m == Method::POST).then(|| b"{}".to_vec());
            let r = api.send(m.clone(), &concrete, None, body).await;
            assert_ne!(
                r.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {concrete}"
            );
            assert!(
                !r.text.contains("no route for"),
                "{method} {concrete} fell through to the fallback: {}",
                r.text
            );
            let code = r.status.as_u16().to_string();
            assert!(
                op["responses"].get(&code).is_some() || op["responses"].get("default").is_some(),
                "{method} {path} answered {code}, which is not documented: {}",
                r.text
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Children, concurrency.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_found_by_parent_and_addressed_with_an_encoded_slash() {
    let api = open().await;
    let id = api.start("family", json!(4), Some("fam-1")).await;
    let parent = api.wait_status(&id, "completed").await;
    assert_eq!(parent["output"], json!({"Ok": 25}));
    let kids = api.ok("/api/v1/instances?parent=fam-1").await;
    assert_eq!(ids_of(&kids), ["fam-1/1"]);
    assert_eq!(kids["instances"][0]["parent"], json!("fam-1"));
    assert_eq!(kids["instances"][0]["workflow"], json!("kid"));
    let kid = api.instance("fam-1%2F1").await;
    assert_eq!(kid["id"], json!("fam-1/1"));
    assert_eq!(kid["output"], json!({"Ok": 24}));
    let journal = api.journal("fam-1%2F1").await;
    assert_eq!(entry(&journal, "wrap_up")["state"], json!("done"));
    let parent_journal = api.journal("fam-1").await;
    assert_eq!(
        entries(&parent_journal, "child").len(),
        1,
        "{parent_journal}"
    );
    let graph = api.get_resp("/api/v1/instances/fam-1%2F1/graph").await;
    assert_eq!(graph.status, StatusCode::OK, "{}", graph.text);
    assert_eq!(
        api.ok("/api/v1/instances?workflow=kid&parent=nobody").await["instances"],
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_of_one_id_create_it_once() {
    let api = open().await;
    for round in 0..5 {
        let id = format!("race-{round}");
        let body = json!({"workflow": "pack", "input": parcel("r", 1, 1), "id": id}).to_string();
        let calls = (0..16).map(|_| api.post_raw("/api/v1/instances", body.clone()));
        let answers = futures_util::future::join_all(calls).await;
        let created = answers
            .iter()
            .filter(|(s, b)| *s == StatusCode::CREATED && b["created"] == json!(true))
            .count();
        let existed = answers
            .iter()
            .filter(|(s, b)| *s == StatusCode::OK && b["created"] == json!(false))
            .count();
        assert_eq!((created, existed), (1, 15), "{id}: {answers:?}");
        let audit = api.ok("/api/v1/audit?limit=1000").await;
        let starts = audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["action"] == json!("start") && e["target"] == json!(id))
            .count();
        assert_eq!(starts, 1, "{id} audited {starts} times");
    }
}

/// The property names an object schema documents, through `$ref`, `allOf` and `oneOf`; None
/// when it allows any (`additionalProperties`) or names none.
fn documented_keys(doc: &Value, schema: &Value) -> Option<BTreeSet<String>> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return documented_keys(doc, doc.pointer(r.trim_start_matches('#'))?);
    }
    if schema
        .get("additionalProperties")
        .is_some_and(|a| a != &json!(false))
    {
        return None;
    }
    let mut keys: BTreeSet<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for branch in ["allOf", "oneOf", "anyOf"] {
        for s in schema
            .get(branch)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            keys.extend(documented_keys(doc, s)?);
        }
    }
    (!keys.is_empty()).then_some(keys)
}

/// Checks `value` against a JSON Schema of the OpenAPI document (the subset it uses: `$ref`,
/// `allOf`, `oneOf`, `anyOf`, `type`, `enum`, `required`, `properties`, `additionalProperties`,
/// `items`, `minimum`), and that every key of an object is documented; returns what does not
/// match.
fn schema_errors(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Value::Object(obj) = value
        && let Some(known) = documented_keys(doc, schema)
    {
        for k in obj.keys().filter(|k| !known.contains(*k)) {
            out.push(format!("{at}: undocumented `{k}`"));
        }
    }
    check_schema(doc, schema, value, at, out);
}

fn check_schema(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("$ref {r}"));
        return check_schema(doc, target, value, at, out);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check_schema(doc, s, value, at, out);
        }
    }
    for (keyword, exactly_one) in [("oneOf", true), ("anyOf", false)] {
        let Some(options) = schema.get(keyword).and_then(Value::as_array) else {
            continue;
        };
        let matching = options
            .iter()
            .filter(|s| {
                let mut errs = Vec::new();
                check_schema(doc, s, value, at, &mut errs);
                errs.is_empty()
            })
            .count();
        if matching == 0 || (exactly_one && matching > 1) {
            out.push(format!(
                "{at}: matches {matching} of the {keyword} options: {value}"
            ));
        }
    }
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = |t: &str| match t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => true,
        };
        if !types.iter().any(|t| fits(t)) {
            out.push(format!("{at}: expected {types:?}, got {value}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) && n < min
    {
        out.push(format!("{at}: {n} < {min}"));
    }
    if let Value::Object(obj) = value {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(req) {
                out.push(format!("{at}: missing `{req}`"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => schema_errors(doc, s, v, &format!("{at}.{k}"), out),
                None => {
                    if let Some(s @ Value::Object(_)) = schema.get("additionalProperties") {
                        schema_errors(doc, s, v, &format!("{at}.{k}"), out)
                    }
                }
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (n, v) in items.iter().enumerate() {
            schema_errors(doc, s, v, &format!("{at}[{n}]"), out);
        }
    }
}

/// Every property the document's schemas name is in what the server returns, and nothing the
/// server returns is undocumented: the documented response schema of each GET below, checked
/// against a real answer (and the error schema against real errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_schemas_match_real_responses() {
    let api = open().await;
    let doc = api.ok("/api/v1/openapi.json").await;
    let failed = api
        .start("fragile_flow", json!("schema-x"), Some("sx-1"))
        .await;
    api.wait_status(&failed, "failed").await;
    fix("schema-x");
    let (status, _) = api.post("/api/v1/instances/sx-1/retry", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    api.wait_status(&failed, "completed").await;
    let tally = api
        .start("tally", json!({"customer": "c", "items": 2}), Some("sx-2"))
        .await;
    api.wait_status(&tally, "completed").await;
    let waiting = api.start("approval", json!(60_000), Some("sx-3")).await;
    api.wait_status(&waiting, "suspended").await;
    let (status, _) = api
        .post(
            "/api/v1/instances/sx-3/signal",
            json!({"name": "other", "payload": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let paths = &doc["paths"];
    let mut errors = Vec::new();
    for (template, concrete) in [
        ("/api/v1/whoami", "/api/v1/whoami".to_string()),
        ("/api/v1/definitions", "/api/v1/definitions".into()),
        (
            "/api/v1/definitions/{name}",
            "/api/v1/definitions/pack".into(),
        ),
        (
            "/api/v1/definitions/{name}",
            "/api/v1/definitions/approval".into(),
        ),
        ("/api/v1/instances", "/api/v1/instances?limit=2".into()),
        ("/api/v1/instances/{id}", "/api/v1/instances/sx-1".into()),
        ("/api/v1/instances/{id}", "/api/v1/instances/sx-2".into()),
        ("/api/v1/instances/{id}", "/api/v1/instances/sx-3".into()),
        (
            "/api/v1/definitions/fragile_flow/instances/{id}",
            "/api/v1/definitions/fragile_flow/instances/sx-1".into(),
        ),
        (
            "/api/v1/definitions/tally/instances/{id}",
            "/api/v1/definitions/tally/instances/sx-2".into(),
        ),
        (
            "/api/v1/definitions/approval/instances/{id}",
            "/api/v1/definitions/approval/instances/sx-3".into(),
        ),
        (
            "/api/v1/instances/{id}/journal",
            "/api/v1/instances/sx-1/journal".into(),
        ),
        (
            "/api/v1/instances/{id}/journal",
            "/api/v1/instances/sx-3/journal".into(),
        ),
        ("/api/v1/stats", "/api/v1/stats".into()),
        (
            "/api/v1/stats/attributes",
            "/api/v1/stats/attributes?key=items".into(),
        ),
        ("/api/v1/audit", "/api/v1/audit".into()),
        ("/api/v1/nodes", "/api/v1/nodes".into()),
        ("/api/v1/compatibility", "/api/v1/compatibility".into()),
        (
            "/api/v1/compatibility",
            "/api/v1/compatibility?workflow=approval&limit=1".into(),
        ),
        ("/api/v1/queues", "/api/v1/queues".into()),
        ("/healthz", "/healthz".into()),
    ] {
        let body = api.ok(&concrete).await;
        let schema =
            &paths[template]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{template}: no 200 JSON schema");
        schema_errors(&doc, schema, &body, &concrete, &mut errors);
    }
    let error_schema = json!({"$ref": "#/components/schemas/Error"});
    for path in [
        "/api/v1/instances/nope",
        "/api/v1/instances?limit=0",
        "/api/v1/nothing",
    ] {
        let (_, body) = api.get(path).await;
        schema_errors(&doc, &error_schema, &body, path, &mut errors);
    }
    assert!(
        errors.is_empty(),
        "the OpenAPI document and the server disagree:\n{}",
        errors.join("\n")
    );
}

fn epoch_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_may_be_epoch_milliseconds() {
    let api = open().await;
    api.start("pack", parcel("t", 1, 1), Some("ms-1")).await;
    let hour = Duration::from_secs(3600);
    let past = epoch_ms(SystemTime::now() - hour);
    let future = epoch_ms(SystemTime::now() + hour);
    let ids = |v: Value| ids_of(&v);
    let q = |s: String| format!("/api/v1/instances?{s}");
    assert_eq!(
        ids(api.ok(&q(format!("created_after={past}"))).await),
        ["ms-1"]
    );
    assert_eq!(
        ids(api.ok(&q(format!("created_after={future}"))).await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(api.ok(&q(format!("created_before={future}"))).await),
        ["ms-1"]
    );
    assert_eq!(
        ids(api.ok(&q(format!("created_before={past}"))).await),
        Vec::<String>::new()
    );
    // The epoch itself.
    assert_eq!(
        ids(api.ok("/api/v1/instances?created_after=0").await),
        ["ms-1"],
        "created_after=0 is 1970-01-01, not an age of zero"
    );
    assert_eq!(
        ids(api.ok("/api/v1/instances?created_before=0").await),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc3339_times_with_offsets_are_accepted() {
    let api = open().await;
    api.start("pack", parcel("o", 1, 1), Some("off-1")).await;
    let hour = Duration::from_secs(3600);
    // now - 1h written in +02:00 is UTC now + 1h with the offset; in -05:00 it is now - 6h.
    let plus_two = rfc3339(SystemTime::now() + hour).replace('Z', "%2B02:00");
    let minus_five = rfc3339(SystemTime::now() - 6 * hour).replace('Z', "-05:00");
    for (param, expected) in [
        (format!("created_after={plus_two}"), vec!["off-1"]),
        (format!("created_before={plus_two}"), vec![]),
        (format!("created_after={minus_five}"), vec!["off-1"]),
    ] {
        let (status, body) = api.get(&format!("/api/v1/instances?{param}")).await;
        assert_eq!(status, StatusCode::OK, "{param}: {body}");
        assert_eq!(ids_of(&body), expected, "{param}");
    }
    let lower = rfc3339(SystemTime::now() - hour)
        .replace('T', "t")
        .replace('Z', "z");
    let (status, body) = api
        .get(&format!("/api/v1/instances?created_after={lower}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{lower}: {body}");
}

// ---------------------------------------------------------------------------------------------
// The cluster: nodes, owners, the deploy check.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_instance_owners_are_shown() {
    let api = open().await;
    let this = api._rt.node_id().to_string();
    // A second node on the same file, started and shut down: it is listed as stopped.
    let other = Runtime::builder()
        .sqlite(api._dir.path().join("orch.db"))
        .node_id("second-node")
        .build()
        .await
        .expect("a second node");
    other.shutdown().await.expect("shut down the second node");

    let id = api.start("held", json!("own-1"), Some("own-1")).await;
    let inst = api
        .wait_instance(&id, "owned by this node", |i| {
            i["owner"]["node"] == json!(this)
        })
        .await;
    assert_eq!(inst["status"], json!("running"), "{inst}");
    assert_eq!(inst["owner"]["epoch"], json!(1), "{inst}");
    assert_eq!(inst["owner"]["live"], json!(true), "{inst}");
    assert!(inst["owner"]["lease_expires_at"].is_string(), "{inst}");
    let page = api.ok("/api/v1/instances?id_prefix=own-").await;
    assert_eq!(page["instances"][0]["owner"], inst["owner"], "{page}");

    let waiting = api.start("approval", json!(3_600_000), Some("own-2")).await;
    let suspended = api.wait_status(&waiting, "suspended").await;
    assert_eq!(
        suspended["owner"],
        Value::Null,
        "a suspended instance has no owner"
    );

    let nodes = api.ok("/api/v1/nodes").await;
    assert_eq!(nodes["this_node"], json!(this), "{nodes}");
    let listed: Vec<(&str, bool, &str, u64)> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().expect("id"),
                n["this_node"].as_bool().expect("this_node"),
                n["state"].as_str().expect("state"),
                n["instances_owned"].as_u64().expect("instances_owned"),
            )
        })
        .collect();
    let mut expected = vec![
        ("second-node", false, "stopped", 0),
        (this.as_str(), true, "live", 1),
    ];
    expected.sort();
    assert_eq!(listed, expected, "{nodes}");
    for n in nodes["nodes"].as_array().expect("nodes") {
        for field in ["started_at", "heartbeat_at", "lease_expires_at"] {
            assert!(n[field].is_string(), "{field}: {n}");
        }
    }

    // Once it ends, nobody owns it.
    LET_GO.lock().expect("lock").insert("own-1".into());
    let done = api.wait_status(&id, "completed").await;
    assert_eq!(done["owner"], Value::Null, "{done}");
    let nodes = api.ok("/api/v1/nodes").await;
    let mine = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["this_node"] == json!(true))
        .expect("this node");
    assert_eq!(mine["instances_owned"], json!(0), "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compatibility_check_counts_waiting_instances_and_refuses_bad_parameters() {
    let api = open().await;
    for id in ["cc-1", "cc-2", "cc-3"] {
        api.start("approval", json!(3_600_000), Some(id)).await;
        api.wait_status(id, "suspended").await;
    }
    let done = api.start("pack", parcel("cc", 1, 1), Some("cc-4")).await;
    api.wait_status(&done, "completed").await;
    let before = api.snapshot().await;

    let all = api.ok("/api/v1/compatibility").await;
    assert_eq!(
        (
            &all["checked"],
            &all["compatible"],
            &all["incompatible"],
            &all["next_cursor"]
        ),
        (&json!(3), &json!(3), &json!([]), &Value::Null),
        "{all}"
    );
    assert_eq!(all["node"], json!(api._rt.node_id()), "{all}");
    // Pages of two: the cursor continues where the first stopped.
    let first = api.ok("/api/v1/compatibility?limit=2").await;
    assert_eq!(first["checked"], json!(2), "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = api
        .ok(&format!("/api/v1/compatibility?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(
        (&second["checked"], &second["next_cursor"]),
        (&json!(1), &Value::Null),
        "{second}"
    );
    let none = api.ok("/api/v1/compatibility?workflow=pack").await;
    assert_eq!(none["checked"], json!(0), "only waiting instances: {none}");

    for (query, needle) in [
        ("limit=0", "limit must be 1 to 10000"),
        ("limit=10001", "limit must be 1 to 10000"),
        ("limit=ten", "limit must be 1 to 10000"),
        ("workflow=", "workflow is empty"),
        ("status=suspended", "unknown field `status`"),
    ] {
        let (status, body) = api.get(&format!("/api/v1/compatibility?{query}")).await;
        assert_refused(
            query,
            (status, &body),
            StatusCode::BAD_REQUEST,
            "bad_request",
            needle,
        );
    }
    assert_eq!(api.snapshot().await, before, "the check changed something");
}

/// The value of the sample `name` (with its labels) in a `/metrics` text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_count_what_the_node_owns_claims_and_loses() {
    let api = open().await;
    let this = api._rt.node_id().to_string();
    let id = api.start("held", json!("nm-1"), Some("nm-1")).await;
    api.wait_instance(&id, "owned", |i| i["owner"]["node"] == json!(this))
        .await;
    let m = api.get_resp("/metrics").await.text;
    assert_eq!(
        sample(&m, &format!("orch_node_info{{node=\"{this}\"}}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "orch_node_instances_owned"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "orch_node_lease_ttl_seconds"), Some(10.0), "{m}");
    assert_eq!(
        sample(&m, "orch_node_leases_claimed_total"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(sample(&m, "orch_node_leases_lost_total"), Some(0.0), "{m}");
    assert!(
        sample(&m, "orch_node_heartbeats_total{result=\"ok\"}").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    let age = sample(&m, "orch_node_heartbeat_age_seconds").expect("heartbeat age");
    assert!(
        (0.0..10.0).contains(&age),
        "a live node heartbeats within its lease: {age}"
    );

    // Another node terminates the instance this one drives: this node's late write is fenced
    // out (or its heartbeat hears of it first), and it counts one lost lease.
    let other = Runtime::builder()
        .sqlite(api._dir.path().join("orch.db"))
        .node_id("terminator")
        .build()
        .await
        .expect("a second node");
    other
        .terminate(&id, "ops", "moved elsewhere")
        .await
        .expect("terminate from the other node");
    other.shutdown().await.expect("shut down the other node");
    LET_GO.lock().expect("lock").insert("nm-1".into());
    let m = wait_until("the lost lease to be counted", || async {
        let m = api.get_resp("/metrics").await.text;
        match sample(&m, "orch_node_leases_lost_total") {
            Some(n) if n >= 1.0 => Ok(m),
            _ => Err(m),
        }
    })
    .await;
    assert_eq!(sample(&m, "orch_node_leases_lost_total"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "orch_node_instances_owned"), Some(0.0), "{m}");
    assert_eq!(api.instance(&id).await["status"], json!("terminated"));

    // A retry makes it due again: this node claims it and runs it to the end.
    let (status, body) = api
        .post(&format!("/api/v1/instances/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.wait_status(&id, "completed").await;
    let m = api.get_resp("/metrics").await.text;
    assert_eq!(
        sample(&m, "orch_node_leases_claimed_total"),
        Some(1.0),
        "{m}"
    );
}
