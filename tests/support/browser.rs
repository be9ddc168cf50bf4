//! Headless Chromium driven through chromedriver, for the browser tests (`web_ui.rs`,
//! `web_forgery.rs`). Needs `chromedriver` and Chromium (Debian: `apt-get install chromium
//! chromium-driver`; `.ci/run` installs them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a page may take to show an expected state (generous: a loaded machine is slow,
/// and a wait returns as soon as the state shows).
pub const WAIT: Duration = Duration::from_secs(60);

/// chromedriver, or `None` after a loud notice when it is missing (a failure instead with
/// `ORCH_REQUIRE_BROWSER=1`).
pub fn chromedriver_or_skip(what: &str) -> Option<PathBuf> {
    if let Some(bin) = chromedriver() {
        return Some(bin);
    }
    let msg = format!(
        "chromedriver is not installed: {what} did NOT run (apt-get install chromium \
         chromium-driver)"
    );
    if std::env::var("ORCH_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("{msg}, and ORCH_REQUIRE_BROWSER=1 requires it");
    }
    // Straight to stderr: the test harness hides what a passing test prints with eprintln!.
    let bar = "!".repeat(100);
    let _ = writeln!(std::io::stderr(), "\n{bar}\n!!! {msg}\n{bar}\n");
    None
}

/// `chromedriver` on PATH, if any.
pub fn chromedriver() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("chromedriver"))
        .find(|p| p.is_file())
}

/// chromedriver on a port it picks itself (`--port=0`: a port picked here and passed on could be
/// taken by another test meanwhile), killed when dropped.
pub struct ChromeDriver {
    child: Child,
    pub url: String,
}

impl ChromeDriver {
    pub fn start(bin: &Path) -> ChromeDriver {
        let mut child = Command::new(bin)
            .arg("--port=0")
            // Its own process group, so that Chromium goes with it on drop.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().expect("chromedriver's stdout");
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
pub mod webdriver {
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
