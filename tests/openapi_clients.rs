//! Clients generated from the served OpenAPI document work: `tests/clients/run.sh` generates a
//! Python client (openapi-python-client) and a TypeScript client (openapi-typescript +
//! openapi-fetch) from the document the checkout example serves, and runs a start → get →
//! search → journal → retry flow through each (tools pinned, cached under target/clients). The
//! checkout workflow's typed operations give real models: the Python client's
//! `StartCheckoutRequest.input_` is an `Order` with typed fields, and `tests/clients/typed.ts`
//! compiles against the TypeScript types only if the input and output are the Rust types.
//!
//! Needs python3 (with venv), npm/node and curl, and the package registries the first time.
//! Without them the test says so loudly and passes, unless `ORCH_REQUIRE_CLIENTS=1` (set by
//! `.ci/run`).

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{example_binary, wait_bounded};

fn missing_tools() -> Vec<&'static str> {
    ["python3", "npm", "node", "curl"]
        .into_iter()
        .filter(|tool| {
            !Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect()
}

struct Example(Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        wait_bounded(&mut self.0, Duration::from_secs(10));
    }
}

#[test]
fn generated_python_and_typescript_clients_run_a_flow_with_the_workflows_models() {
    let missing = missing_tools();
    if !missing.is_empty() {
        let msg = format!(
            "{} not found: the generated-clients test did NOT run",
            missing.join(", ")
        );
        if std::env::var("ORCH_REQUIRE_CLIENTS").as_deref() == Ok("1") {
            panic!("{msg}, and ORCH_REQUIRE_CLIENTS=1 requires it");
        }
        let bar = "!".repeat(100);
        let _ = writeln!(std::io::stderr(), "\n{bar}\n!!! {msg}\n{bar}\n");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(example_binary())
        .args([
            "--orders",
            "2",
            "--http",
            "127.0.0.1:0",
            "--serve",
            "--payment-outage",
        ])
        .arg("--db")
        .arg(dir.path().join("orch.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the checkout example");
    let stdout = child.stdout.take().expect("stdout");
    let example = Example(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + Duration::from_secs(60);
    let base = loop {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("the example prints `orch UI: <url>` within 60 s");
        if let Some(url) = line.trim().strip_prefix("orch UI:") {
            break url.trim().trim_end_matches('/').to_string();
        }
    };
    // order-1 fails at the payment step during the outage: the flow retries it.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("curl")
            .args(["-fsS", &format!("{base}/api/v1/instances/order-1")])
            .output()
            .expect("curl");
        let status = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["status"].as_str().map(String::from));
        if status.as_deref() == Some("failed") {
            break;
        }
        assert!(Instant::now() < end, "order-1 did not fail: {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/run.sh");
    let out = Command::new("bash")
        .args([script, &base, "order-1"])
        .output()
        .expect("run tests/clients/run.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tests/clients/run.sh failed:\n{text}");
    for line in [
        "python client flow: ok",
        "typescript models: ok",
        "typescript client flow: ok",
    ] {
        assert!(text.contains(line), "missing `{line}`:\n{text}");
    }
    drop(example);
}
