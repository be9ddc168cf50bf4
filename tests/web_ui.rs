//! The web UI in a real browser: headless Chromium, driven through chromedriver, opens the UI
//! that the checkout example serves, finds a checkout instance, checks that its drawing is
//! coloured from its journal, and retries an order that failed during a payment outage from the
//! instance page until it completes.
//!
//! Needs `chromedriver` and Chromium (Debian: `apt-get install chromium chromium-driver`;
//! `.ci/run` installs them). Without chromedriver the test says so loudly and passes, unless
//! `ORCH_REQUIRE_BROWSER=1`. With `ORCH_SCREENSHOT=docs/instance-page.png` it saves the
//! instance page of the retried order (the README's screenshot) at 1366×900.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{example_binary, wait_bounded};
use webdriver::Browser;

/// How long the UI may take to show an expected state.
const WAIT: Duration = Duration::from_secs(60);
/// The instance the test looks at first.
const ORDER: &str = "order-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_shows_the_journal_and_retries_a_failed_checkout() {
    let Some(driver_bin) = chromedriver() else {
        let msg = "chromedriver is not installed: the browser test of the web UI did NOT run \
                   (apt-get install chromium chromium-driver)";
        if std::env::var("ORCH_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("{msg}, and ORCH_REQUIRE_BROWSER=1 requires it");
        }
        // Straight to stderr: the test harness hides what a passing test prints with eprintln!.
        let bar = "!".repeat(100);
        let _ = writeln!(std::io::stderr(), "\n{bar}\n!!! {msg}\n{bar}\n");
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

/// `chromedriver` on PATH, if any.
fn chromedriver() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("chromedriver"))
        .find(|p| p.is_file())
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

/// chromedriver on a port it picks itself (`--port=0`: a port picked here and passed on could be
/// taken by another test meanwhile), killed when dropped.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start(bin: &Path) -> ChromeDriver {
        let mut child = Command::new(bin)
            .arg("--port=0")
            // Its own process group, so that Chromium goes with it on drop.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps reading to the end, so chromedriver never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut driver = ChromeDriver {
            child,
            url: String::new(),
        };
        // "ChromeDriver was started successfully on port 33305."
        let end = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while driver.url.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!(
                    "chromedriver did not say its port within {WAIT:?}; it printed:\n{}",
                    seen.join("\n")
                );
            };
            if let Some(port) = line
                .split_once("started successfully on port ")
                .map(|(_, p)| p.trim_end_matches('.'))
            {
                let port: u16 = port.parse().expect("a port number");
                driver.url = format!("http://127.0.0.1:{port}");
            }
            seen.push(line);
        }
        driver
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group holds chromedriver and the browser it started (on a panic the session was
        // not closed, and the browser would outlive its driver).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The few W3C WebDriver commands the test needs, over HTTP with reqwest (already a
/// dependency; a WebDriver crate would bring a TLS stack or a second HTTP client for this).
mod webdriver {
    use super::WAIT;
    use serde_json::{Value, json};
    use std::time::{Duration, Instant};

    /// The key under which WebDriver returns an element reference.
    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    pub struct Browser {
        http: reqwest::Client,
        session: String,
    }

    impl Browser {
        /// Starts headless Chromium through the chromedriver at `driver` (waiting for it).
        pub async fn open(driver: &str) -> Browser {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let end = Instant::now() + WAIT;
            loop {
                let ready = match http.get(format!("{driver}/status")).send().await {
                    Ok(r) => r.json::<Value>().await.ok(),
                    Err(_) => None,
                };
                if ready.is_some_and(|v| v["value"]["ready"] == true) {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "chromedriver at {driver} did not start"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut options = json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1366,900", "--hide-scrollbars", "--force-device-scale-factor=1"]
            });
            if std::path::Path::new("/usr/bin/chromium").exists() {
                options["binary"] = json!("/usr/bin/chromium");
            }
            let caps = json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options } } });
            let res: Value = http
                .post(format!("{driver}/session"))
                .json(&caps)
                .send()
                .await
                .expect("reach chromedriver")
                .json()
                .await
                .unwrap();
            let id = res["value"]["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("chromedriver could not start Chromium: {res}"));
            Browser {
                session: format!("{driver}/session/{id}"),
                http,
            }
        }

        async fn cmd(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Value,
        ) -> Result<Value, Value> {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.session));
            if method == reqwest::Method::POST {
                req = req.json(&body);
            }
            let res = req.send().await.map_err(|e| json!(e.to_string()))?;
            let ok = res.status().is_success();
            let v: Value = res.json().await.map_err(|e| json!(e.to_string()))?;
            if ok {
                Ok(v["value"].clone())
            } else {
                Err(v["value"].clone())
            }
        }

        async fn post(&self, path: &str, body: Value) -> Value {
            self.cmd(reqwest::Method::POST, path, body)
                .await
                .unwrap_or_else(|e| panic!("WebDriver {path} failed: {e}"))
        }

        pub async fn goto(&self, url: &str) {
            self.post("/url", json!({ "url": url })).await;
        }

        /// Runs `script` (a function body) in the page and returns its result.
        pub async fn js(&self, script: &str) -> Value {
            self.post("/execute/sync", json!({ "script": script, "args": [] }))
                .await
        }

        /// Runs `script` until it returns something other than null or false.
        pub async fn wait_js(&self, what: &str, script: &str) -> Value {
            let end = Instant::now() + WAIT;
            loop {
                let v = self.js(script).await;
                if !v.is_null() && v != false {
                    return v;
                }
                if Instant::now() > end {
                    let page = self
                        .js("return location.href + '\\n' + document.body.innerText.slice(0, 3000)")
                        .await;
                    panic!(
                        "waited {WAIT:?} for {what}; the page shows:\n{}",
                        page.as_str().unwrap_or("")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// The element `css` selects, waiting for it to appear.
        async fn find(&self, css: &str) -> String {
            let end = Instant::now() + WAIT;
            loop {
                match self
                    .cmd(
                        reqwest::Method::POST,
                        "/element",
                        json!({ "using": "css selector", "value": css }),
                    )
                    .await
                {
                    Ok(v) => return v[ELEMENT].as_str().unwrap().to_string(),
                    Err(e) => assert!(Instant::now() < end, "no element {css}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Clicks `css` as a user would (WebDriver checks it is visible and not covered).
        /// Retries while the page re-renders the element under the click.
        pub async fn click(&self, css: &str) {
            let end = Instant::now() + WAIT;
            loop {
                let el = self.find(css).await;
                match self
                    .cmd(
                        reqwest::Method::POST,
                        &format!("/element/{el}/click"),
                        json!({}),
                    )
                    .await
                {
                    Ok(_) => return,
                    Err(e) => assert!(Instant::now() < end, "cannot click {css}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Types `text` into `css` (`\u{E007}` is Enter).
        pub async fn type_into(&self, css: &str, text: &str) {
            let el = self.find(css).await;
            self.post(&format!("/element/{el}/value"), json!({ "text": text }))
                .await;
        }

        pub async fn set_window(&self, width: u32, height: u32) {
            self.post("/window/rect", json!({ "width": width, "height": height }))
                .await;
        }

        /// A PNG of the viewport.
        pub async fn screenshot(&self) -> Vec<u8> {
            let v = self
                .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
                .await
                .unwrap_or_else(|e| panic!("screenshot failed: {e}"));
            base64_decode(v.as_str().unwrap())
        }

        pub async fn close(&self) {
            let _ = self.cmd(reqwest::Method::DELETE, "", Value::Null).await;
        }
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        let bytes: Vec<u8> = text
            .bytes()
            .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
            .collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut acc = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                acc |= u32::from(value(c)) << (18 - 6 * i);
            }
            let n = chunk.len() * 6 / 8;
            out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
        }
        out
    }
}
