//! Limits on connections and request heads: how many connections are served at once, how
//! long a client may take to send its request headers, and how long the request line and
//! headers may be. Over a limit, the answer is the API's JSON error (414, 431) where the
//! request reaches the router; see `serve` for the hard limits below it.

use super::api::ApiError;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Longest request target (path and query string), in bytes: longer gets a JSON 414.
pub const MAX_URI_BYTES: usize = 16 * 1024;

/// Largest total size of the request headers (names and values), in bytes: larger gets a
/// JSON 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Most request headers: more gets a JSON 431.
pub const MAX_HEADERS: usize = 100;

/// The connection's read buffer, and so the largest request head hyper reads at all. A head
/// past it (or more than [`HARD_MAX_HEADERS`] headers, or a request target over 65,534
/// bytes) is answered by hyper itself with a bare 431 or 414 and no body, before the router.
const HARD_MAX_HEAD_BYTES: usize = 256 * 1024;

/// Most headers hyper parses (above it: hyper's bare 431).
const HARD_MAX_HEADERS: usize = 4 * MAX_HEADERS;

/// Default for [`HttpConfig::header_read_timeout`](super::HttpConfig::header_read_timeout).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`HttpConfig::max_connections`](super::HttpConfig::max_connections).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How connections are served.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// Accepts and serves connections (HTTP/1.1) until the task is aborted. At most
/// `max_connections` are open at once: past that, new connections wait in the listen backlog
/// until one closes. A connection that has not sent a complete request head within
/// `header_read_timeout` of starting it (or, when idle between requests, of the previous
/// response) is closed, so stalled clients cannot hold connections.
pub(crate) async fn serve(listener: TcpListener, app: axum::Router, limits: ConnLimits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(HARD_MAX_HEAD_BYTES)
        .max_headers(HARD_MAX_HEADERS);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = loop {
            match listener.accept().await {
                Ok((stream, _)) => break stream,
                Err(e) => accept_error(e).await,
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// A failed `accept`: a connection reset before it was accepted is skipped; anything else
/// (out of file descriptors: EMFILE/ENFILE) is logged and retried after a pause, so the
/// server neither spins nor stops.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(
        error = %e,
        "the HTTP server cannot accept a connection; retrying in 1 s (out of file \
         descriptors? lower HttpConfig::max_connections or raise `ulimit -n`)"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Refuses a request target or headers over the documented limits with the JSON error body.
pub(crate) async fn request_head(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {uri_len} bytes, over the limit of {MAX_URI_BYTES}; \
                 send fewer or shorter query parameters"
            ),
        )
        .into_response();
    }
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} headers of {header_bytes} bytes; at most {MAX_HEADERS} \
                 headers of {MAX_HEADER_BYTES} bytes in all",
                headers.len()
            ),
        )
        .into_response();
    }
    next.run(req).await
}
