//! A real HTTP server on an ephemeral port with its own SQLite file, and a small client, for
//! the tests of the server's input handling and limits.

#![allow(dead_code)]

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A running runtime with its HTTP server.
pub struct Server {
    pub rt: Runtime,
    pub base: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// An answer: status, content type and body text.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub content_type: String,
    pub text: String,
}

impl Resp {
    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON: {e}: {:.300}",
                self.status, self.text
            )
        })
    }

    /// Asserts the documented error shape: `{"error": {"code": "..", "message": ".."}}` with
    /// `application/json`, and returns the code.
    pub fn error_code(&self) -> String {
        assert!(
            self.content_type.starts_with("application/json"),
            "error answer ({}) is `{}`, not JSON: {:.300}",
            self.status,
            self.content_type,
            self.text
        );
        let v = self.json();
        let code = v["error"]["code"].as_str();
        let message = v["error"]["message"].as_str();
        assert!(
            code.is_some_and(|c| !c.is_empty()) && message.is_some_and(|m| !m.is_empty()),
            "error body lacks error.code / error.message: {v}"
        );
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(1),
            "error body has more than `error`: {v}"
        );
        code.unwrap_or_default().to_string()
    }
}

/// A server without tokens.
pub async fn open() -> Server {
    open_config(HttpConfig::new("127.0.0.1:0").without_env_tokens()).await
}

/// A server with `config`.
pub async fn open_config(config: HttpConfig) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
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
    Server {
        rt,
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
        _dir: dir,
    }
}

impl Server {
    /// Sends `method path` with an optional JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await.expect("response body");
        Resp {
            status,
            content_type,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::POST, path, Some(body.to_string().into_bytes()))
            .await
    }

    /// Starts `workflow` with `input` under `id`; must answer 201.
    pub async fn start(&self, workflow: &str, input: Value, id: &str) {
        let r = self
            .post(
                "/api/v1/instances",
                &serde_json::json!({"workflow": workflow, "input": input, "id": id}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "start {id}: {}", r.text);
    }

    /// Polls the instance until `pred` holds for it (at most 30 s).
    pub async fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get(&format!("/api/v1/instances/{id}")).await;
            if r.status == StatusCode::OK {
                let v = r.json();
                if pred(&v) {
                    return v;
                }
                assert!(
                    Instant::now() < deadline,
                    "instance {id} never became {what}: {v}"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "instance {id} never became {what}: {} {}",
                    r.status,
                    r.text
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every instance (id → summary, in id order) and the audit log: what a refused call must
    /// not change.
    pub async fn snapshot(&self) -> (Vec<(String, Value)>, Value) {
        let page = self.get("/api/v1/instances?limit=500").await.json();
        let mut instances: Vec<(String, Value)> = page["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| (i["id"].as_str().unwrap_or_default().to_string(), i.clone()))
            .collect();
        instances.sort_by(|a, b| a.0.cmp(&b.0));
        let audit = self.get("/api/v1/audit?limit=1000").await.json();
        (instances, audit)
    }
}

/// Percent-encodes every byte of `raw` (so any bytes, even invalid UTF-8, reach the server).
pub fn encode_all(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("%{b:02X}")).collect()
}

/// Percent-encodes `raw` for a query value (unreserved characters kept).
pub fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
