//! Security headers on every response: the UI's pages get a strict Content-Security-Policy
//! (scripts, styles, images and requests from this server only; no framing), every response
//! gets `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and
//! `Referrer-Policy: no-referrer`.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The UI's policy. The UI has no inline script or style: drawings' own `<style>` is turned
/// into a constructed stylesheet by `app.js`; the favicon is a `data:` image.
pub(crate) const UI_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Everything else (JSON, metrics, drawings opened on their own): nothing runs, nothing is
/// fetched; an SVG drawing keeps its own inline `<style>`.
pub(crate) const API_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; sandbox";

pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let ui = path == "/" || path.starts_with("/ui/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let csp = if ui { UI_CSP } else { API_CSP };
    set(h, header::CONTENT_SECURITY_POLICY, csp);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    resp
}

fn set(h: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str) {
    h.insert(name, HeaderValue::from_static(value));
}
