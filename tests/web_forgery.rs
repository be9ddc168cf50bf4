//! In a real browser (headless Chromium through chromedriver): a page served from another
//! loopback origin fires the requests a forging page can send without a CORS preflight — a
//! `text/plain` start, a bulk cancel and an empty restart — at an orch server with no tokens,
//! and the server refuses them all (nothing starts, nothing is cancelled). The orch UI itself,
//! under its Content-Security-Policy, still loads, draws its styled graph and starts an
//! instance from its start dialog.
//!
//! Without chromedriver the test says so loudly and passes, unless `ORCH_REQUIRE_BROWSER=1`.
#![allow(clippy::unwrap_used)]

#[path = "support/browser.rs"]
mod browser;

use browser::webdriver::Browser;
use browser::{ChromeDriver, WAIT};
use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[step]
async fn note(key: String) -> Result<String, StepError> {
    Ok(format!("noted {key}"))
}

/// Notes its key, then waits (an hour) for the signal `go`.
#[workflow]
async fn hold(key: String) -> Result<Option<String>, StepError> {
    note(key.clone()).await?;
    let go: Option<bool> = orch::signal_with_timeout("go", Duration::from_secs(3600)).await;
    Ok(go.map(|_| key))
}

/// The attacker's page: fires the forged requests and records how each fetch settled.
fn attacker_page(orch: &str) -> String {
    format!(
        r#"<!doctype html><html><body><script>
const orch = {orch:?};
const forged = [
  ['/api/v1/instances', 'text/plain', JSON.stringify({{workflow: 'hold', input: 'forged', id: 'forged'}})],
  ['/api/v1/bulk/cancel', 'text/plain', JSON.stringify({{filter: {{workflow: 'hold'}}}})],
  ['/api/v1/instances/victim/restart', null, undefined],
  ['/api/v1/instances/victim/cancel', null, undefined],
];
window.results = [];
Promise.all(forged.map(([path, type, body]) => {{
  const opts = {{method: 'POST', mode: 'no-cors', credentials: 'include', body}};
  if (type) opts.headers = {{'Content-Type': type}};
  return fetch(orch + path, opts).then(r => 'sent ' + path + ' ' + r.type, e => 'error ' + path + ' ' + e);
}})).then(r => {{ window.results = r; window.done = true; }});
</script></body></html>"#
    )
}

/// Serves `page` at `/` on `ip`:0; returns its URL.
async fn serve_page(ip: &str, page: String) -> String {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/")
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let res = http.get(url).send().await.unwrap();
    assert!(res.status().is_success(), "GET {url}: {}", res.status());
    res.json().await.unwrap()
}

async fn wait_status(http: &reqwest::Client, api: &str, id: &str, want: &str) {
    let end = Instant::now() + WAIT;
    loop {
        let res = http
            .get(format!("{api}/instances/{id}"))
            .send()
            .await
            .unwrap();
        let i: Value = res.json().await.unwrap();
        if i["status"] == want {
            return;
        }
        assert!(Instant::now() < end, "{id} never became {want}: {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_cannot_change_anything_and_the_ui_still_works() {
    let Some(driver_bin) = browser::chromedriver_or_skip("the browser forgery test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
        .build()
        .await
        .unwrap();
    let ui = rt.http_url().unwrap();
    let api = format!("{}api/v1", ui);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = http
        .post(format!("{api}/instances"))
        .json(&json!({"workflow": "hold", "input": "victim", "id": "victim"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    wait_status(&http, &api, "victim", "suspended").await;

    // The attacker's page, on another loopback address (another site for the browser).
    let attacker = serve_page("127.0.0.2", attacker_page(ui.trim_end_matches('/'))).await;
    let driver = ChromeDriver::start(&driver_bin);
    let browser = Browser::open(&driver.url).await;
    browser.goto(&attacker).await;
    let results = browser
        .wait_js(
            "the forged requests",
            "return window.done ? window.results : null",
        )
        .await;
    // The browser did send them (opaque no-cors responses), so it is the server that refused.
    assert!(
        results
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.as_str().unwrap().starts_with("sent ")),
        "the browser sent the forged requests: {results}"
    );

    let found = get(&http, &format!("{api}/instances?workflow=hold")).await;
    let ids: Vec<&str> = found["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["victim"],
        "nothing forged started or restarted: {found}"
    );
    let victim = get(&http, &format!("{api}/instances/victim")).await;
    assert_eq!(victim["status"], "suspended", "{victim}");
    assert_eq!(victim["cancel_requested"], false, "not cancelled: {victim}");

    // The UI, under its CSP: its script runs (the page renders), its stylesheet applies, the
    // drawing's own styles apply, and a same-origin start from the start dialog succeeds.
    browser.goto(&format!("{ui}#/definitions/hold")).await;
    browser
        .wait_js(
            "the styled drawing of `hold`",
            "const box = document.querySelector('[data-testid=definition-graph] .box');
             return box && getComputedStyle(box).strokeWidth === '1.6px';",
        )
        .await;
    let top = browser
        .js("return getComputedStyle(document.querySelector('.o-top')).display")
        .await;
    assert_eq!(top, "flex", "app.css applies under the CSP");
    browser.click("[data-testid=action-start]").await;
    browser
        .wait_js(
            "the start dialog",
            "return document.querySelector('[data-testid=start-dialog][open]') && true",
        )
        .await;
    browser.type_into("[data-testid=start-id]", "from-ui").await;
    browser
        .js("const a = document.querySelector('[data-testid=start-input] textarea, textarea[data-testid=start-input]');
             a.value = '\"from the UI\"'; a.dispatchEvent(new Event('input', {bubbles: true})); return true;")
        .await;
    browser
        .click("[data-testid=start-dialog] [data-testid=dialog-submit]")
        .await;
    let end = Instant::now() + WAIT;
    loop {
        let res = http
            .get(format!("{api}/instances/from-ui"))
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            break;
        }
        let error = browser
            .js("const e = document.querySelector('[data-testid=dialog-error]:not([hidden])'); return e && e.textContent")
            .await;
        assert!(
            Instant::now() < end,
            "the UI's start did not create `from-ui` (dialog error: {error})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = get(&http, &format!("{api}/audit")).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "start" && e["target"] == "from-ui"),
        "the UI's start is audited: {audit}"
    );
    browser.close().await;
}
