//! Refuses requests a browser page on another site could forge, before auth or routing:
//!
//! - `Host` must name this server (on a loopback bind: `localhost`, `127.0.0.1`, `[::1]` or
//!   the bound address, with the bound port), so a DNS-rebinding page cannot read or write;
//! - a mutating request (any method but GET/HEAD/OPTIONS) carrying `Origin` must come from
//!   the server's own origin (or one configured with [`HttpConfig::allowed_origin`]), and
//!   `Sec-Fetch-Site: cross-site`/`same-site` is refused;
//! - a mutating request with a body must say `Content-Type: application/json`, so no
//!   cross-site form or `text/plain` fetch reaches a handler without a CORS preflight (which
//!   this server never grants).
//!
//! Requests without `Origin` (curl, the CLI, generated clients) are not affected by the origin
//! rule. `/healthz` and `/readyz` skip the host rule so probes may use any address.
//!
//! [`HttpConfig::allowed_origin`]: super::HttpConfig::allowed_origin

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// Who may reach the server from a browser.
#[derive(Debug)]
pub(crate) struct Guard {
    bound: SocketAddr,
    /// Extra accepted `Host` values (`name` or `name:port`, lower case).
    hosts: Vec<String>,
    /// Extra accepted `Origin` values (`scheme://host[:port]`, lower case).
    origins: Vec<String>,
}

impl Guard {
    pub(crate) fn new(bound: SocketAddr, hosts: &[String], origins: &[String]) -> Arc<Guard> {
        Arc::new(Guard {
            bound,
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether `host` (a `Host` header value) names this server.
    fn host_ok(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, port) = split_host(&host);
        if self
            .hosts
            .iter()
            .any(|h| h == "*" || *h == host || *h == name)
        {
            return true;
        }
        if !self.bound.ip().is_loopback() {
            // Tokens are required off loopback; a host list is opt-in there.
            return self.hosts.is_empty();
        }
        let port_ok = match port {
            Some(p) => p == self.bound.port().to_string(),
            None => self.bound.port() == 80,
        };
        let ip = match self.bound.ip() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        port_ok && (["localhost", "127.0.0.1", "[::1]"].contains(&name) || name == ip)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.origins.contains(&origin)
    }

    /// `None` when the request may go on, else the response refusing it.
    fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
        let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or(""));
        let probe = path == "/healthz" || path == "/readyz";
        if let Some(host) = host
            && !probe
            && !self.host_ok(host)
        {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "this server does not answer to the host name `{}`; use http://{} (or list \
                     the name with HttpConfig::allowed_host / ORCH_ALLOWED_HOSTS when it is \
                     reached through a proxy or another name)",
                    host.escape_debug(),
                    self.bound
                ),
            ));
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("null"));
        if let Some(origin) = origin
            && !self.origin_allowed(origin)
        {
            let same = host.is_some_and(|h| {
                let o = origin.to_ascii_lowercase();
                let h = h.to_ascii_lowercase();
                o == format!("http://{h}") || o == format!("https://{h}")
            });
            if !same {
                return Some(cross_origin(
                    method,
                    path,
                    &format!("from `{}`", origin.escape_debug()),
                ));
            }
        }
        let fetch_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        if let Some(site) = fetch_site.as_deref()
            && (site == "cross-site" || site == "same-site")
            && !origin.is_some_and(|o| self.origin_allowed(o))
        {
            return Some(cross_origin(
                method,
                path,
                &format!("(Sec-Fetch-Site: {site})"),
            ));
        }
        match headers.get(header::CONTENT_TYPE) {
            Some(ct) if is_json(ct.to_str().unwrap_or("")) => None,
            Some(ct) => Some(unsupported(
                method,
                path,
                &format!("`{}`", ct.to_str().unwrap_or("?").escape_debug()),
            )),
            None if has_body(headers) => Some(unsupported(method, path, "no Content-Type")),
            None => None,
        }
    }
}

/// `("localhost", Some("8080"))` from `localhost:8080`; IPv6 literals keep their brackets.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => {
                let (name, rest) = host.split_at(end + 1);
                (name, rest.strip_prefix(':'))
            }
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

/// `application/json`, with parameters (`; charset=utf-8`) or not.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the request announces a body.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn refuse(status: StatusCode, code: &'static str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn cross_origin(method: &Method, path: &str, from: &str) -> Response {
    refuse(
        StatusCode::FORBIDDEN,
        "cross_origin",
        format!(
            "{method} {path} was sent by a page of another site {from}; this server accepts \
             changes only from its own UI or from clients that send no Origin (curl, the CLI). \
             List a trusted origin with HttpConfig::allowed_origin / ORCH_ALLOWED_ORIGINS"
        ),
    )
}

fn unsupported(method: &Method, path: &str, got: &str) -> Response {
    refuse(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "{method} {path} takes a JSON body: send `Content-Type: application/json` (got \
             {got}); a call without a body needs no Content-Type"
        ),
    )
}

pub(crate) async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match guard.check(req.method(), req.uri().path(), req.headers()) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(bound: &str, hosts: &[&str]) -> Arc<Guard> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Guard::new(
            bound.parse().unwrap_or_else(|_| unreachable!()),
            &hosts,
            &[],
        )
    }

    #[test]
    fn loopback_answers_only_to_its_own_names_and_port() {
        let guard = g("127.0.0.1:8080", &[]);
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "LOCALHOST:8080",
        ] {
            assert!(guard.host_ok(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost:8081",
            "localhost",
            "127.0.0.2:8080",
            "",
        ] {
            assert!(!guard.host_ok(bad), "{bad}");
        }
        let listed = g("127.0.0.1:8080", &["orch.internal"]);
        assert!(listed.host_ok("orch.internal:443"));
        assert!(g("0.0.0.0:8080", &[]).host_ok("anything:1"));
        assert!(!g("0.0.0.0:8080", &["orch.example"]).host_ok("anything:1"));
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/jsonx"));
        assert!(!is_json(""));
    }
}
