//! Every response carries the browser-hardening headers: the UI's pages a strict
//! Content-Security-Policy that forbids framing, every response `X-Content-Type-Options:
//! nosniff`, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`. (`web_forgery.rs`
//! shows the UI working under this policy in a real browser.)

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;

#[workflow]
async fn noop(n: u32) -> u32 {
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_pages_and_api_responses_carry_security_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(HttpConfig::new("127.0.0.1:0").without_env_tokens())
        .build()
        .await
        .expect("runtime");
    let base = rt
        .http_url()
        .expect("server")
        .trim_end_matches('/')
        .to_string();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let header = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    for path in ["/", "/ui/app.js", "/ui/app.css", "/ui/instances/x"] {
        let res = http.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(res.status(), 200, "{path}");
        let csp = header(&res, "content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP `{csp}` lacks {directive}"
            );
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-eval"), "{path}: {csp}");
        assert_eq!(header(&res, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&res, "referrer-policy"), "no-referrer", "{path}");
    }
    for path in [
        "/api/v1/instances",
        "/api/v1/definitions/noop/graph",
        "/api/v1/nope",
        "/metrics",
        "/healthz",
    ] {
        let res = http.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&res, "x-frame-options"), "DENY", "{path}");
        let csp = header(&res, "content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{path}: API responses run nothing: `{csp}`"
        );
    }
}
