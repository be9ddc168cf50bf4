//! The HTTP server: JSON API (`/api/v1`), web UI (`/`), `/metrics` and `/healthz`, inside the
//! user's own binary. Turned on with [`RuntimeBuilder::http`](crate::RuntimeBuilder::http).
//! The API is described in `docs/http-api.md` and, machine-readably, at
//! `/api/v1/openapi.json`.

mod api;
mod auth;
mod cluster;
mod flow;
mod headers;
mod health;
mod limits;
mod openapi;
mod origin;
mod params;
mod tasks;
mod views;

use crate::error::Error;
use crate::runtime::Runtime;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::AbortHandle;

pub use auth::{Role, WORKER_ROUTES};
pub use limits::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MAX_HEADER_BYTES, MAX_HEADERS,
    MAX_URI_BYTES,
};
pub use params::{MAX_ATTR_FILTERS, MAX_PAGE};
pub use tasks::{
    LEASE_MS, MAX_MESSAGE_BYTES, MAX_QUEUES_PER_LEASE, MAX_TASKS_PER_LEASE, MAX_WAIT_MS,
    MAX_WORKER_LEN,
};

/// Largest request body the API reads.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// How the HTTP server listens and whom it lets in.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    addr: String,
    tokens: Vec<auth::Token>,
    read_env: bool,
    conn: limits::ConnLimits,
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl HttpConfig {
    /// Listen on `addr` (`"127.0.0.1:8080"`; port 0 picks a free port). Tokens are also read
    /// from `ORCH_ADMIN_TOKENS`, `ORCH_READ_TOKENS` and `ORCH_WORKER_TOKENS`
    /// (`name:secret,name2:secret2`).
    pub fn new(addr: impl Into<String>) -> HttpConfig {
        HttpConfig {
            addr: addr.into(),
            tokens: Vec::new(),
            read_env: true,
            conn: limits::ConnLimits {
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
            },
            hosts: Vec::new(),
            origins: Vec::new(),
        }
    }

    /// Also answer to the host name `host` (`orch.internal` or `orch.internal:8080`; `*` for
    /// any). On a loopback bind the server answers only to `localhost`, `127.0.0.1` and
    /// `[::1]` with its port, so a page that rebinds its own DNS name to 127.0.0.1 cannot talk
    /// to it; name the host here when a proxy or container forwards another name. Off
    /// loopback any host is accepted until one is listed. Also read, comma-separated, from
    /// `ORCH_ALLOWED_HOSTS`.
    pub fn allowed_host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// Also accept changes (POST) from pages of `origin` (`https://ops.example.com`). By
    /// default a browser may change things only from the server's own UI: a mutating request
    /// whose `Origin` differs from the server's own is refused (403 `cross_origin`). Name the
    /// public origin here when a proxy serves the UI under another name than the `Host` it
    /// forwards. Also read, comma-separated, from `ORCH_ALLOWED_ORIGINS`.
    pub fn allowed_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into());
        self
    }

    /// Accept `Authorization: Bearer <secret>` for every call, recorded as `name`.
    pub fn admin_token(mut self, name: impl Into<String>, secret: impl Into<String>) -> Self {
        self.tokens
            .push(auth::Token::new(name.into(), secret.into(), Role::Admin));
        self
    }

    /// Accept `Authorization: Bearer <secret>` for reading only.
    pub fn read_token(mut self, name: impl Into<String>, secret: impl Into<String>) -> Self {
        self.tokens
            .push(auth::Token::new(name.into(), secret.into(), Role::Read));
        self
    }

    /// Accept `Authorization: Bearer <secret>` for the worker protocol only
    /// ([`WORKER_ROUTES`]: lease, heartbeat, complete and fail tasks; list the queues), recorded
    /// as `name`: give it to workers that live elsewhere, which then can neither read nor change
    /// instances. Admin tokens may call the worker protocol too; read tokens may only list the
    /// queues.
    pub fn worker_token(mut self, name: impl Into<String>, secret: impl Into<String>) -> Self {
        self.tokens
            .push(auth::Token::new(name.into(), secret.into(), Role::Worker));
        self
    }

    /// How long a client may take to send a request's line and headers, from the start of
    /// the connection (or, on a kept-alive connection, from the previous response); a
    /// connection that has not by then is closed. Default [`DEFAULT_HEADER_READ_TIMEOUT`]
    /// (10 s). Bodies are not subject to it.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.conn.header_read_timeout = timeout;
        self
    }

    /// At most this many connections are open at once (default [`DEFAULT_MAX_CONNECTIONS`],
    /// 1024; 0 counts as 1). Further clients wait in the listen backlog until a connection
    /// closes. Keep it below the process's open-file limit (`ulimit -n`), less the files the
    /// runtime itself holds.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.conn.max_connections = max;
        self
    }

    /// Ignore `ORCH_ADMIN_TOKENS` / `ORCH_READ_TOKENS` / `ORCH_WORKER_TOKENS` /
    /// `ORCH_ALLOWED_HOSTS` /
    /// `ORCH_ALLOWED_ORIGINS` (use only what is given here).
    pub fn without_env_tokens(mut self) -> Self {
        self.read_env = false;
        self
    }
}

/// A running server.
pub(crate) struct Bound {
    pub(crate) addr: SocketAddr,
    task: AbortHandle,
}

impl Bound {
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

/// Binds and serves; returns once the socket is listening.
pub(crate) async fn start(rt: Runtime, config: HttpConfig) -> Result<Bound, Error> {
    let mut tokens = config.tokens.clone();
    let mut hosts = config.hosts.clone();
    let mut origins = config.origins.clone();
    for t in &tokens {
        auth::check_token(t).map_err(Error::Config)?;
    }
    if config.read_env {
        tokens.extend(auth::env_tokens("ORCH_ADMIN_TOKENS", Role::Admin).map_err(Error::Config)?);
        tokens.extend(auth::env_tokens("ORCH_READ_TOKENS", Role::Read).map_err(Error::Config)?);
        tokens.extend(auth::env_tokens("ORCH_WORKER_TOKENS", Role::Worker).map_err(Error::Config)?);
        hosts.extend(env_list("ORCH_ALLOWED_HOSTS")?);
        origins.extend(env_list("ORCH_ALLOWED_ORIGINS")?);
    }
    auth::check_distinct(&tokens).map_err(Error::Config)?;
    let listener = tokio::net::TcpListener::bind(&config.addr)
        .await
        .map_err(|e| {
            Error::Config(format!(
                "cannot listen on `{}`: {e} (choose another address or port, e.g. \
                 127.0.0.1:0 for any free port)",
                config.addr
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("cannot read the bound address: {e}")))?;
    if !addr.ip().is_loopback() && tokens.is_empty() {
        return Err(Error::Config(format!(
            "the HTTP server would listen on {addr}, which is not a loopback address, without \
             any token: add one with HttpConfig::admin_token / read_token / worker_token or \
             the ORCH_ADMIN_TOKENS / ORCH_READ_TOKENS / ORCH_WORKER_TOKENS environment \
             variables, or bind to 127.0.0.1"
        )));
    }
    let state = api::AppState::new(rt, auth::Auth::new(tokens));
    let guard = origin::Guard::new(addr, &hosts, &origins);
    let app = router(state)
        .layer(axum::middleware::from_fn_with_state(guard, origin::guard))
        .layer(axum::middleware::from_fn(headers::security_headers));
    let task = tokio::spawn(limits::serve(listener, app, config.conn));
    tracing::info!(%addr, "orch HTTP server listening");
    Ok(Bound {
        addr,
        task: task.abort_handle(),
    })
}

/// A comma-separated list from the environment (unset: empty).
fn env_list(var: &str) -> Result<Vec<String>, Error> {
    match std::env::var(var) {
        Ok(raw) => Ok(raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::Config(format!(
            "{var} is not valid UTF-8; it must be a comma-separated list"
        ))),
    }
}

fn router(state: api::AppState) -> Router {
    let api = api::routes(state.clone());
    Router::new()
        .merge(api)
        .route("/", axum::routing::get(ui_index))
        .route("/ui/app.js", axum::routing::get(ui_js))
        .route("/ui/app.css", axum::routing::get(ui_css))
        .route("/ui/{*rest}", axum::routing::get(ui_index))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn(limits::request_head))
}

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn ui_index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

async fn ui_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn ui_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}
