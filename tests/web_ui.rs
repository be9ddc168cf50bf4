//! The web UI in a real browser: headless Chromium, driven through chromedriver, opens the UI
//! that the checkout example serves, finds a checkout instance, checks that its drawing is
//! coloured from its journal, and retries an order that failed during a payment outage from the
//! instance page until it completes. Then, on a server of its own, the cluster view: the Nodes
//! page lists the node with what it owns, an instance page names the node that drives it (and
//! none for a suspended one), and the deploy check lists the instance new code cannot run. And
//! the Queues page: a queue's depth, in flight, oldest waiting and workers, and the worker that
//! polls with its last heartbeat.
//!
//! Needs `chromedriver` and Chromium (Debian: `apt-get install chromium chromium-driver`;
//! `.ci/run` installs them). Without chromedriver the test says so loudly and passes, unless
//! `ORCH_REQUIRE_BROWSER=1`. With `ORCH_SCREENSHOT=docs/instance-page.png` it saves the
//! instance page of the retried order (the README's screenshot) at 1366×900.
#![allow(clippy::unwrap_used)]

#[path = "support/browser.rs"]
mod browser;
mod support;

use browser::webdriver::Browser;
use browser::{ChromeDriver, WAIT};
use orch_runtime::prelude::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{example_binary, wait_bounded};
/// The instance the test looks at first.
const ORDER: &str = "order-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_shows_the_journal_and_retries_a_failed_checkout() {
    let Some(driver_bin) = browser::chromedriver_or_skip("the browser test of the web UI") else {
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let mut example = Example::start(dir.path());
    let api = Api::new(&example.ui);

    // Every payment fails during the outage, so every order ends failed at charge_payment
    // (after its retries; the compensation releases the stock).
    let failed = api.wait_for_status(ORDER, "failed").await;
    assert_eq!(
        failed["failed_step"], "charge_payment",
        "{ORDER} should fail at the payment step during the outage: {failed}"
    );

    let driver = ChromeDriver::start(&driver_bin);
    let browser = Browser::open(&driver.url).await;

    // The instance list: find the checkout instance by its id.
    browser.goto(&example.ui).await;
    browser
        .wait_js(
            "the dashboard",
            "return document.querySelector('[data-testid=dashboard]') && true",
        )
        .await;
    browser.click("[data-testid=nav-instances]").await;
    browser
        .wait_js(
            "the instance list",
            "return document.querySelector('[data-testid=instances-table]') && true",
        )
        .await;
    browser
        .type_into("[data-testid=filter-id]", &format!("{ORDER}\u{E007}"))
        .await;
    let ids = browser
        .wait_js(
            "the list filtered by id prefix",
            &format!(
                "const page = document.querySelector('[data-testid=instances]');
                 if (!page || !page.dataset.query.includes('id_prefix={ORDER}')) return null;
                 const rows = [...page.querySelectorAll('[data-testid=instance-row]')];
                 return rows.length ? rows.map(r => r.dataset.id) : null;"
            ),
        )
        .await;
    let ids: Vec<&str> = ids
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(ids.contains(&ORDER), "{ORDER} is not listed: {ids:?}");
    assert!(
        ids.iter().all(|id| id.starts_with(ORDER)),
        "the id filter let other instances through: {ids:?}"
    );
    let row_status = browser
        .js(&format!(
            "return document.querySelector('[data-testid=instance-row][data-id=\"{ORDER}\"] [data-status]').textContent"
        ))
        .await;
    assert_eq!(row_status, "failed", "the list shows {ORDER}'s status");
    browser
        .click(&format!(
            "[data-testid=instance-row][data-id=\"{ORDER}\"] [data-testid=instance-link]"
        ))
        .await;

    // The instance page: the drawing is coloured by the journal.
    let status = instance_status(&browser).await;
    assert_eq!(status, "failed");
    graph_matches_journal(&browser, &api, ORDER).await;
    let states = graph_states(&browser).await;
    assert!(
        states
            .iter()
            .any(|(n, s)| n == "charge_payment" && s == "failed"),
        "charge_payment is drawn as failed: {states:?}"
    );
    let timeline_steps = browser
        .js("return [...document.querySelectorAll('[data-testid=timeline-entry][data-kind=step]')].map(e => e.dataset.name)")
        .await;
    assert!(
        timeline_steps
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "charge_payment"),
        "the timeline lists the failed step: {timeline_steps}"
    );

    // End the outage, then retry from the UI: the page follows the run until it completes.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = http
        .post(format!(
            "{}/admin/outage",
            example.payment.trim_end_matches('/')
        ))
        .json(&json!({ "down": false }))
        .send()
        .await
        .expect("reach the payment service");
    assert!(
        res.status().is_success(),
        "ending the outage: {}",
        res.status()
    );

    browser.click("[data-testid=action-retry]").await;
    browser
        .wait_js(
            "the retry dialog",
            "return document.querySelector('[data-testid=retry-dialog][open]') && true",
        )
        .await;
    browser
        .click("[data-testid=retry-dialog] [data-testid=dialog-submit]")
        .await;
    let end = Instant::now() + WAIT;
    let status = loop {
        let status = instance_status(&browser).await;
        if status == "completed" || Instant::now() > end {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let error = browser
        .js("const e = document.querySelector('[data-testid=dialog-error]:not([hidden])'); return e && e.textContent")
        .await;
    assert_eq!(
        status, "completed",
        "after Retry the instance page should show the order completed (dialog error: {error})"
    );
    let server = api.get(&format!("/instances/{ORDER}")).await.unwrap();
    assert_eq!(server["status"], "completed", "the server agrees: {server}");

    // The drawing follows the new journal: payment done this time, the parcel shipped.
    graph_matches_journal(&browser, &api, ORDER).await;
    let states = graph_states(&browser).await;
    for step in ["charge_payment", "ship_order"] {
        assert!(
            states
                .iter()
                .any(|(n, s)| n == step && (s == "done" || s == "retried")),
            "{step} is drawn as done after the retry: {states:?}"
        );
    }
    browser
        .wait_js(
            "the entries replaced by the retry",
            "return document.querySelector('[data-testid=superseded]') && true",
        )
        .await;

    if let Ok(path) = std::env::var("ORCH_SCREENSHOT") {
        screenshot(&browser, Path::new(&path)).await;
    }

    browser.close().await;
    drop(driver);
    example.stop();
}

/// The status the instance page shows (empty until the page has loaded).
async fn instance_status(browser: &Browser) -> String {
    browser
        .wait_js(
            "the instance status",
            "const s = document.querySelector('[data-testid=instance-status]'); return s && s.textContent",
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
}

/// `(data-name, data-state)` of every drawn node of the instance page's graph.
async fn graph_states(browser: &Browser) -> Vec<(String, String)> {
    let v = browser
        .wait_js(
            "the instance's drawing",
            "const nodes = [...document.querySelectorAll('[data-testid=instance-graph] g.node[data-name][data-state]')];
             return nodes.length ? nodes.map(n => [n.dataset.name, n.dataset.state]) : null;",
        )
        .await;
    serde_json::from_value(v).unwrap()
}

/// What the drawing must show for a journaled step: failed when its last attempt failed,
/// retried when it took several attempts, done otherwise.
fn drawn_state(entry: &Value) -> &'static str {
    if entry["state"] == "failed" {
        "failed"
    } else if entry["attempts"].as_u64().unwrap_or(1) > 1 {
        "retried"
    } else {
        "done"
    }
}

/// Waits until every step of the instance's journal has a node of its name in the page's
/// drawing, in the state the journal gives it (the drawing reloads while a run goes on).
async fn graph_matches_journal(browser: &Browser, api: &Api, id: &str) {
    let end = Instant::now() + WAIT;
    loop {
        let journal = api.get(&format!("/instances/{id}/journal")).await.unwrap();
        let steps: Vec<(String, &str)> = journal["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "step")
            .map(|e| (e["name"].as_str().unwrap().to_string(), drawn_state(e)))
            .collect();
        assert!(!steps.is_empty(), "{id} has journaled steps: {journal}");
        let drawn = graph_states(browser).await;
        let missing: Vec<&(String, &str)> = steps
            .iter()
            .filter(|(name, state)| !drawn.iter().any(|(n, s)| n == name && s == state))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "the drawing does not match the journal of {id}: no node for {missing:?}; drawn: {drawn:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn screenshot(browser: &Browser, path: &Path) {
    let path = if path.is_relative() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    } else {
        path.to_path_buf()
    };
    // A viewport of 1366×900: the window is that plus whatever the browser draws around it.
    let frame = browser
        .js("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
        .await;
    let extra = |i: usize| u32::try_from(frame[i].as_i64().unwrap_or(0).max(0)).unwrap_or(0);
    browser.set_window(1366 + extra(0), 900 + extra(1)).await;
    browser.js("window.scrollTo(0, 0); return true").await;
    // No toast or live indicator in the picture: wait for the page to settle.
    browser
        .wait_js(
            "the page to settle",
            "return document.querySelectorAll('.o-toast').length === 0 || null",
        )
        .await;
    let png = browser.screenshot().await;
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot written to {}", path.display());
}

/// The checkout example serving its UI, killed when dropped.
struct Example {
    child: Child,
    /// `http://127.0.0.1:PORT/`
    ui: String,
    /// The payment service's base URL.
    payment: String,
}

impl Example {
    fn start(dir: &Path) -> Example {
        let mut child = Command::new(example_binary())
            .args([
                // Slow enough that the timeline's bars are visible in the screenshot.
                "--step-delay-ms",
                "40",
                "--orders",
                "3",
                "--http",
                "127.0.0.1:0",
                "--serve",
                "--payment-outage",
            ])
            .arg("--db")
            .arg(dir.join("orch.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the checkout example");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps reading to the end, so the example never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut example = Example {
            child,
            ui: String::new(),
            payment: String::new(),
        };
        let end = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while example.ui.is_empty() || example.payment.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "the example did not print `orch UI: …` and `payment service: …` within 60 s; it printed:\n{}",
                    seen.join("\n")
                );
            };
            if let Some(url) = line.trim().strip_prefix("orch UI:") {
                example.ui = url.trim().to_string();
            } else if let Some(url) = line.trim().strip_prefix("payment service:") {
                example.payment = url.trim().to_string();
            }
            seen.push(line);
        }
        if !example.ui.ends_with('/') {
            example.ui.push('/');
        }
        example
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        wait_bounded(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The example's JSON API, for the expected values.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(ui: &str) -> Api {
        Api {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("{}api/v1", ui),
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        res.json().await.ok()
    }

    /// Waits until instance `id` has `status` and returns it, failing after [`WAIT`].
    async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            let i = self.get(&format!("/instances/{id}")).await;
            match i {
                Some(i) if i["status"] == status => return i,
                _ => assert!(
                    Instant::now() < end,
                    "waited {WAIT:?} for {id} to be {status}; it is {i:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster view, on a server of its own.

/// Set to let `ui.held` finish.
static LET_GO: AtomicBool = AtomicBool::new(false);
/// Set to "deploy" code that calls `ui_new` where `ui.waiting` journaled `ui_old`.
static DEPLOYED_V2: AtomicBool = AtomicBool::new(false);

#[step]
async fn ui_hold() -> Result<(), StepError> {
    while !LET_GO.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Runs (owned by the node) until the test lets it go.
#[workflow(name = "ui.held")]
async fn ui_held() -> Result<(), StepError> {
    ui_hold().await
}

#[step]
async fn ui_old() -> Result<u32, StepError> {
    Ok(1)
}

#[step]
async fn ui_new() -> Result<u32, StepError> {
    Ok(2)
}

/// Journals a step, then waits (suspended, owned by nobody) for `go`.
#[workflow(name = "ui.waiting")]
async fn ui_waiting() -> Result<u32, StepError> {
    let n = if DEPLOYED_V2.load(Ordering::SeqCst) {
        ui_new().await?
    } else {
        ui_old().await?
    };
    let _go: bool = orch::signal("go").await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_shows_the_nodes_each_instance_s_owner_and_the_deploy_check() {
    let Some(driver_bin) = browser::chromedriver_or_skip("the browser test of the Nodes page")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let ui = rt.http_url().unwrap();
    let node = rt.node_id().to_string();
    rt.start_with_id(UiHeld, "held-1", ()).await.unwrap();
    let waiting = rt.start_with_id(UiWaiting, "waiting-1", ()).await.unwrap();
    let end = Instant::now() + WAIT;
    while waiting.status().await.unwrap() != Status::Suspended
        || rt
            .leases_of(vec!["held-1".into()])
            .await
            .unwrap()
            .is_empty()
    {
        assert!(Instant::now() < end, "held-1 runs and waiting-1 suspends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let driver = ChromeDriver::start(&driver_bin);
    let browser = Browser::open(&driver.url).await;
    browser.goto(&ui).await;
    browser.click("[data-testid=nav-nodes]").await;
    let row = browser
        .wait_js(
            "this node's row on the Nodes page, owning held-1",
            "const r = document.querySelector('[data-testid=node-row][data-this=true]');
             if (!r || r.querySelector('[data-testid=node-owned]').textContent !== '1') return null;
             return [r.dataset.id, r.dataset.state, r.querySelector('[data-testid=node-state]').textContent];",
        )
        .await;
    assert_eq!(row, json!([node, "live", "live"]));

    // The instance page names the node driving it; a suspended instance has none.
    browser.goto(&format!("{ui}#/instances/held-1")).await;
    let owner = browser
        .wait_js(
            "held-1's owner",
            "const o = document.querySelector('[data-testid=instance-page][data-id=\"held-1\"] [data-testid=instance-owner]');
             return o && o.dataset.node ? [o.dataset.node, o.textContent] : null;",
        )
        .await;
    assert_eq!(owner, json!([node, format!("{node} · epoch 1")]));
    browser.goto(&format!("{ui}#/instances/waiting-1")).await;
    let none = browser
        .wait_js(
            "waiting-1's owner",
            "const o = document.querySelector('[data-testid=instance-page][data-id=\"waiting-1\"] [data-testid=instance-owner]');
             return o && [o.dataset.node, o.textContent];",
        )
        .await;
    assert_eq!(none, json!(["", "none"]));

    // "Deploy" code that parts ways with waiting-1's journal, and run the check from the page.
    DEPLOYED_V2.store(true, Ordering::SeqCst);
    browser.click("[data-testid=nav-nodes]").await;
    browser
        .wait_js(
            "the deploy check",
            "return document.querySelector('[data-testid=action-check]') && true",
        )
        .await;
    browser.click("[data-testid=action-check]").await;
    let summary = browser
        .wait_js(
            "the check's result",
            "const s = document.querySelector('[data-testid=compatibility-summary]');
             if (!s) return null;
             return [s.dataset.checked, s.dataset.incompatible,
                     [...document.querySelectorAll('[data-testid=incompatible-row]')].map(r => r.dataset.id)];",
        )
        .await;
    assert_eq!(summary, json!(["2", "1", ["waiting-1"]]));
    let message = browser
        .js("return document.querySelector('[data-testid=incompatible-row] .o-err-cell').textContent")
        .await;
    assert!(
        message.as_str().unwrap().starts_with(
            "at seq 1 the journal recorded step `ui_old` but the code now calls step `ui_new`"
        ),
        "{message}"
    );

    browser.close().await;
    drop(driver);
    LET_GO.store(true, Ordering::SeqCst);
    rt.shutdown().await.unwrap();
}

#[step(queue = "ui-payments")]
async fn ui_charge(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[workflow(name = "ui.pay")]
async fn ui_pay(n: u32) -> Result<u32, StepError> {
    ui_charge(n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_shows_the_queues_and_the_workers_with_their_last_heartbeat() {
    let Some(driver_bin) = browser::chromedriver_or_skip("the browser test of the Queues page")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .no_workers()
        .http("127.0.0.1:0")
        .build()
        .await
        .unwrap();
    let ui = rt.http_url().unwrap();
    rt.start_with_id(UiPay, "pay-1", 1).await.unwrap();
    rt.start_with_id(UiPay, "pay-2", 2).await.unwrap();
    // A worker speaking HTTP leases one task (once both are enqueued) and heartbeats it.
    let http = reqwest::Client::new();
    let end = Instant::now() + WAIT;
    loop {
        let q: Value = http
            .get(format!("{ui}api/v1/queues"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if q["queues"][0]["waiting"] == json!(2) {
            break;
        }
        assert!(Instant::now() < end, "both tasks enqueued: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leased: Value = http
        .post(format!("{ui}api/v1/tasks/lease"))
        .json(&json!({"worker": "ui-w", "queues": ["ui-payments"], "wait_ms": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = &leased["tasks"][0];
    let beat = http
        .post(format!(
            "{ui}api/v1/tasks/{}/heartbeat",
            task["id"].as_str().unwrap()
        ))
        .json(&json!({"token": task["token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 200);

    let driver = ChromeDriver::start(&driver_bin);
    let browser = Browser::open(&driver.url).await;
    browser.goto(&ui).await;
    browser.click("[data-testid=nav-queues]").await;
    let row = browser
        .wait_js(
            "the ui-payments row on the Queues page",
            "const r = document.querySelector('[data-testid=queue-row][data-queue=\"ui-payments\"]');
             if (!r) return null;
             const t = (id) => r.querySelector(`[data-testid=${id}]`).textContent;
             return [r.dataset.kind, t('queue-waiting'), t('queue-in-flight'), t('queue-workers'),
                     t('queue-completed'), !!r.querySelector('[data-testid=queue-oldest] time')];",
        )
        .await;
    assert_eq!(row, json!(["task", "1", "1", "1", "0", true]));
    let worker = browser
        .wait_js(
            "the worker's row",
            "const r = document.querySelector('[data-testid=worker-row][data-id=\"ui-w\"]');
             return r && [r.dataset.connected,
                          !!r.querySelector('[data-testid=worker-heartbeat] time')];",
        )
        .await;
    assert_eq!(worker, json!(["true", true]));
    browser.close().await;
    drop(driver);
    rt.shutdown().await.unwrap();
}
