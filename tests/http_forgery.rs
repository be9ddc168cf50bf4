//! A page on another site cannot make the server change anything, and a DNS-rebound name
//! cannot talk to it: mutating calls need `Content-Type: application/json`, a mutating call
//! whose `Origin` (or `Sec-Fetch-Site`) says another site is refused, a loopback server
//! answers only to its own host names — while curl-like clients (no `Origin`) and the
//! server's own UI keep working. Each refusal has the JSON error body and changes nothing.
//! (`web_forgery.rs` shows the same with a real browser.)

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Waits (an hour) for the signal `go`: stays suspended, so it can be cancelled.
#[workflow]
async fn hold(key: String) -> Option<String> {
    let go: Option<bool> = orch::signal_with_timeout("go", Duration::from_secs(3600)).await;
    go.map(|_| key)
}

struct Server {
    rt: Runtime,
    base: String,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn serve(config: HttpConfig) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(config.without_env_tokens())
        .build()
        .await
        .expect("runtime with HTTP server");
    let addr = rt.http_addr().expect("the server is on");
    Server {
        base: format!("http://{addr}"),
        port: addr.port(),
        rt,
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        _dir: dir,
    }
}

impl Server {
    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let res = req.send().await.expect("reach the server");
        let status = res.status();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}/api/v1{path}", self.base))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self
            .send(self.http.get(format!("{}/api/v1{path}", self.base)))
            .await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn wait_status(&self, id: &str, want: &str) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let i = self.get(&format!("/instances/{id}")).await;
            if i["status"] == want {
                return;
            }
            assert!(Instant::now() < end, "{id} never became {want}: {i}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn assert_refused(what: &str, got: (StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{what}: {}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| m.len() > 20),
        "{what}: the error says what to do: {}",
        got.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_from_other_sites_are_refused_and_change_nothing() {
    let s = serve(HttpConfig::new("127.0.0.1:0")).await;
    let start = json!({"workflow": "hold", "input": "victim", "id": "victim"});
    let (status, body) = s.send(s.post("/instances").json(&start)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a curl-like start works: {body}"
    );
    s.wait_status("victim", "suspended").await;

    let forged = json!({"workflow": "hold", "input": "x", "id": "forged"}).to_string();
    let evil = "http://evil.example";
    // The simple requests a cross-site page can send without a CORS preflight.
    for ct in [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let got = s
            .send(
                s.post("/instances")
                    .header("content-type", ct)
                    .body(forged.clone()),
            )
            .await;
        assert_refused(
            ct,
            got,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    let got = s.send(s.post("/instances").body(forged.clone())).await;
    assert_refused(
        "a body without Content-Type",
        got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // JSON from another origin, an empty no-cors POST from another origin, and fetch
    // metadata saying cross-site or same-site.
    let got = s
        .send(
            s.post("/instances")
                .header("origin", evil)
                .header("content-type", "application/json")
                .body(forged.clone()),
        )
        .await;
    assert_refused(
        "JSON from evil.example",
        got,
        StatusCode::FORBIDDEN,
        "cross_origin",
    );
    for path in ["/instances/victim/restart", "/instances/victim/cancel"] {
        let got = s.send(s.post(path).header("origin", evil)).await;
        assert_refused(path, got, StatusCode::FORBIDDEN, "cross_origin");
    }
    let got = s
        .send(s.post("/instances/victim/cancel").header("origin", "null"))
        .await;
    assert_refused("Origin: null", got, StatusCode::FORBIDDEN, "cross_origin");
    for site in ["cross-site", "same-site"] {
        let got = s
            .send(
                s.post("/bulk/cancel")
                    .header("sec-fetch-site", site)
                    .json(&json!({"filter": {"workflow": "hold"}})),
            )
            .await;
        assert_refused(site, got, StatusCode::FORBIDDEN, "cross_origin");
    }
    // Another port of the same host is another origin.
    let other_port = format!("http://127.0.0.1:{}", s.port.wrapping_add(1));
    let got = s
        .send(
            s.post("/bulk/cancel")
                .header("origin", other_port.as_str())
                .json(&json!({"filter": {"workflow": "hold"}})),
        )
        .await;
    assert_refused("another port", got, StatusCode::FORBIDDEN, "cross_origin");

    // Nothing changed.
    let found = s.get("/instances?workflow=hold").await;
    let ids: Vec<&str> = found["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, ["victim"], "no forged start or restart: {found}");
    let victim = s.get("/instances/victim").await;
    assert_eq!(victim["status"], "suspended", "{victim}");
    assert_eq!(victim["cancel_requested"], false, "{victim}");
    let audit = s.get("/audit").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        !actions.iter().any(|a| *a != "start"),
        "only the real start is audited: {audit}"
    );

    // The server's own origin (its UI), same-origin fetch metadata, and body-less calls
    // without Origin (curl -X POST) keep working.
    let own = format!("http://127.0.0.1:{}", s.port);
    let (status, body) = s
        .send(
            s.post("/instances")
                .header("origin", own.as_str())
                .header("sec-fetch-site", "same-origin")
                .json(&json!({"workflow": "hold", "input": "ui", "id": "from-ui"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "same-origin start: {body}");
    let (status, body) = s
        .send(
            s.post("/instances/from-ui/cancel")
                .header("origin", format!("http://localhost:{}", s.port))
                .header("host", format!("localhost:{}", s.port))
                .header("content-type", "application/json; charset=utf-8")
                .body("{}"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "same-origin cancel by localhost: {body}"
    );
    let (status, body) = s.send(s.post("/instances/victim/restart")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "curl -X POST without a body: {body}"
    );
    drop(s.rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_server_answers_only_to_its_own_host_names() {
    let s = serve(HttpConfig::new("127.0.0.1:0")).await;
    let port = s.port;
    let whoami = format!("{}/api/v1/whoami", s.base);
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = s.send(s.http.get(&whoami).header("host", &host)).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    // A rebinding page reaches 127.0.0.1 under its own name: reads and writes are refused.
    for host in [
        format!("rebind.evil.example:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        "localhost".to_string(),
    ] {
        let got = s.send(s.http.get(&whoami).header("host", &host)).await;
        assert_refused(&host, got, StatusCode::FORBIDDEN, "forbidden_host");
        let got = s.send(s.http.get(&s.base).header("host", &host)).await;
        assert_refused(&host, got, StatusCode::FORBIDDEN, "forbidden_host");
        let got = s
            .send(
                s.post("/instances")
                    .header("host", &host)
                    .json(&json!({"workflow": "hold", "input": "x"})),
            )
            .await;
        assert_refused(&host, got, StatusCode::FORBIDDEN, "forbidden_host");
    }
    // Probes may use any name.
    let (status, _) = s
        .send(
            s.http
                .get(format!("{}/healthz", s.base))
                .header("host", "probe.internal"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let found = s.get("/instances").await;
    assert_eq!(found["instances"], json!([]), "nothing was started");

    // Configured names and origins (a proxy in front) are accepted.
    let s = serve(
        HttpConfig::new("127.0.0.1:0")
            .allowed_host("orch.internal")
            .allowed_origin("https://ops.example.com"),
    )
    .await;
    let (status, body) = s
        .send(
            s.post("/instances")
                .header("host", "orch.internal")
                .header("origin", "https://ops.example.com")
                .header("sec-fetch-site", "cross-site")
                .json(&json!({"workflow": "hold", "input": "p", "id": "proxied"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "configured host and origin: {body}"
    );
    let got = s
        .send(
            s.post("/instances")
                .header("host", "orch.internal")
                .header("origin", "https://other.example.com")
                .json(&json!({"workflow": "hold", "input": "p"})),
        )
        .await;
    assert_refused(
        "an unlisted origin",
        got,
        StatusCode::FORBIDDEN,
        "cross_origin",
    );
}
