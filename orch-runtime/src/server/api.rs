//! The JSON API handlers (`/api/v1`), `/metrics` and `/healthz`.

use super::auth::{Auth, Caller, Refused, Role};
use super::flow;
use super::params::{
    Pairs, Segment, Segments, check_workflow, cursor_of, duration_param, graph_format,
    query_from_json, query_from_params,
};
use super::tasks;
use super::views::{self, json_text, time};
use crate::error::Error;
use crate::graph::Trace;
use crate::runtime::Runtime;
use crate::store::{Lease, StatsQuery, Status, StoreError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone)]
pub(crate) struct AppState {
    rt: Runtime,
    auth: Auth,
    workers: std::sync::Arc<tasks::Workers>,
}

impl AppState {
    pub(crate) fn new(rt: Runtime, auth: Auth) -> AppState {
        AppState {
            rt,
            auth,
            workers: Default::default(),
        }
    }

    /// The workers this node served recently.
    pub(crate) fn workers(&self) -> &tasks::Workers {
        &self.workers
    }

    /// The runtime this server serves.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.rt
    }
}

pub(crate) fn routes(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/definitions", get(definitions))
        .route("/api/v1/definitions/{name}", get(definition))
        .route("/api/v1/definitions/{name}/graph", get(definition_graph))
        .route("/api/v1/definitions/{name}/instances", post(start_typed))
        .route(
            "/api/v1/definitions/{name}/instances/{id}",
            get(instance_typed),
        )
        .route(
            "/api/v1/definitions/{name}/instances/{id}/signals/{signal}",
            post(signal_typed),
        )
        .route("/api/v1/instances", get(search).post(start))
        .route("/api/v1/instances/{id}", get(instance))
        .route("/api/v1/instances/{id}/journal", get(journal))
        .route("/api/v1/instances/{id}/graph", get(instance_graph))
        .route("/api/v1/instances/{id}/signal", post(signal))
        .route("/api/v1/instances/{id}/cancel", post(cancel))
        .route("/api/v1/instances/{id}/terminate", post(terminate))
        .route("/api/v1/instances/{id}/retry", post(retry))
        .route("/api/v1/instances/{id}/restart", post(restart))
        .route("/api/v1/instances/{id}/fork", post(fork))
        .route("/api/v1/bulk/cancel", post(bulk_cancel))
        .route("/api/v1/bulk/retry", post(bulk_retry))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/stats/attributes", get(attribute_stats))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/nodes", get(super::cluster::nodes))
        .route("/api/v1/compatibility", get(super::cluster::compatibility))
        .route("/api/v1/tasks/lease", post(tasks::lease))
        .route("/api/v1/tasks/{id}/heartbeat", post(tasks::heartbeat))
        .route("/api/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/api/v1/tasks/{id}/fail", post(tasks::fail))
        .route("/api/v1/queues", get(tasks::queues))
        .route("/api/v1/queues/{queue}/instances", post(flow::enqueue))
        .route("/api/v1/queues/{queue}/config", put(flow::set_config))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(super::MAX_BODY))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// An error response: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A 500 that names nothing internal (the detail goes to the log, not to the caller).
    pub(crate) fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server could not handle this request; the details are in its log",
        )
    }

    /// The message shown to the caller.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        let (status, code) = match &e {
            Error::UnknownWorkflow { .. } | Error::NotFound(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Error::InvalidInput { .. } | Error::InvalidSignal { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input")
            }
            Error::InvalidId { .. } | Error::InvalidArgument(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::IdConflict { .. }
            | Error::AlreadyStarted { .. }
            | Error::Conflict { .. }
            | Error::Store(StoreError::Finished { .. } | StoreError::Conflict { .. }) => {
                (StatusCode::CONFLICT, "conflict")
            }
            // The message says what happened and that the worker should drop the task.
            Error::Store(StoreError::TaskLost { .. }) => (StatusCode::CONFLICT, "task_lost"),
            Error::ShutDown | Error::Store(StoreError::Closed) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            // No SQL or internals in this message: it says the store is out of room.
            Error::Store(StoreError::Full(_)) => (StatusCode::INSUFFICIENT_STORAGE, "store_full"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Store and engine errors can quote SQL, paths or internals: log them, never
            // send them.
            tracing::error!(error = %message, "HTTP API request failed");
            return ApiError::internal();
        }
        if status.is_server_error() {
            tracing::error!(error = %message, "HTTP API request failed");
        }
        ApiError::new(status, code, message)
    }
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; see /api/v1/openapi.json for the methods each path \
             takes",
            uri.path()
        ),
    )
}

pub(crate) async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route for {method} {}; the API is under /api/v1 (see /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Middleware.

async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let caller = match state.auth.check(req.headers()) {
        Ok(c) => c,
        Err(refused) => {
            let message = match refused {
                Refused::Missing => {
                    "this server requires a token: send `Authorization: Bearer <token>`"
                }
                Refused::Unknown => "the bearer token is not valid for this server",
            };
            let mut resp =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orch\""),
            );
            return resp;
        }
    };
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    let refusal = match caller.role {
        Role::Admin => None,
        Role::Read if mutating => Some(format!(
            "token `{}` is read-only; {} {} needs an admin token",
            caller.name,
            req.method(),
            req.uri().path()
        )),
        Role::Read => None,
        Role::Worker => {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str())
                .unwrap_or_default();
            (!super::auth::worker_may(req.method().as_str(), route)).then(|| {
                format!(
                    "token `{}` is a worker token: it may only lease, heartbeat, complete and \
                     fail tasks (POST /api/v1/tasks/…) and list the queues (GET \
                     /api/v1/queues); {} {} needs a {} token",
                    caller.name,
                    req.method(),
                    req.uri().path(),
                    if mutating {
                        "an admin"
                    } else {
                        "a read or admin"
                    }
                )
            })
        }
    };
    if let Some(message) = refusal {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state
        .rt
        .inner
        .metrics
        .http_request(&route, resp.status().as_u16());
    resp
}

// ---------------------------------------------------------------------------------------------
// Request parts.

pub(crate) fn caller(req_caller: Option<axum::Extension<Caller>>) -> Caller {
    req_caller.map(|c| c.0).unwrap_or(Caller {
        name: "local".into(),
        role: Role::Admin,
    })
}

/// A JSON object body (an empty body counts as `{}`).
fn body_object(body: Result<Bytes, BytesRejection>) -> ApiResult<Map<String, Value>> {
    let bytes = body.map_err(body_unread)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, got {}",
            kind_of(&other)
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// Any JSON body (an empty body counts as `null`).
fn body_value(body: Result<Bytes, BytesRejection>) -> ApiResult<Value> {
    let bytes = body.map_err(body_unread)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// A request body that could not be read: over [`MAX_BODY`](super::MAX_BODY), or cut off.
pub(crate) fn body_unread(rej: BytesRejection) -> ApiError {
    let status = rej.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            format!(
                "the request body is over the limit of {} bytes",
                super::MAX_BODY
            ),
        )
    } else {
        ApiError::bad_request(format!("cannot read the request body: {}", rej.body_text()))
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Refuses fields other than `known` (a typo must not be silently ignored).
pub(crate) fn only_fields(body: &Map<String, Value>, known: &[&str]) -> ApiResult<()> {
    if let Some(k) = body.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field `{k}` in the request body; expected {}",
            list(known)
        )));
    }
    Ok(())
}

pub(crate) fn list(names: &[&str]) -> String {
    if names.is_empty() {
        return "no fields".into();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt_string(body: &Map<String, Value>, field: &str) -> ApiResult<Option<String>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "`{field}` must be a string, got {}",
            kind_of(other)
        ))),
    }
}

fn opt_seq(body: &Map<String, Value>, field: &str) -> ApiResult<Option<u32>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`{field}` must be a positive integer (a journal seq), got {v}"
                ))
            }),
    }
}

fn text(body: String, content_type: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn ok(v: Value) -> Response {
    reply(StatusCode::OK, v)
}

fn reply(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Handlers.

async fn healthz(State(state): State<AppState>) -> Response {
    if state.rt.inner.is_closing() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "shutting_down"}),
        );
    }
    // A primary-key read proves the store answers, without the full-table count a status
    // breakdown would cost on every probe.
    match state.rt.instance("healthz").await {
        Ok(_) => ok(json!({"status": "ok"})),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "error": e.to_string()}),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    super::health::readyz(&state.rt).await
}

async fn metrics(State(state): State<AppState>) -> ApiResult {
    let counts = state.rt.counts().await?;
    let now = state.rt.inner.clock.now_ms();
    let (queues, _) = tasks::overview(&state, now).await?;
    state.rt.inner.metrics.queues(&queues, now);
    Ok(text(
        state
            .rt
            .inner
            .metrics
            .render(&counts, state.rt.inner.node_now()),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    ))
}

async fn openapi(State(state): State<AppState>) -> Response {
    let doc = super::openapi::document(&state.rt.definitions());
    text(doc.to_string(), "application/json")
}

async fn whoami(State(state): State<AppState>, c: Option<axum::Extension<Caller>>) -> Response {
    let c = caller(c);
    ok(json!({
        "actor": c.name,
        "role": c.role,
        "auth_required": state.auth.required(),
    }))
}

fn short_type(full: &str) -> String {
    // `checkout::workflow::Order` → `Order`, keeping generic structure readable.
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(word.rsplit("::").next().unwrap_or(word));
        word.clear();
    };
    for ch in full.chars() {
        if ch.is_alphanumeric() || ch == '_' || ch == ':' {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn definition_json(def: &crate::workflow::WorkflowDef, counts: &Map<String, Value>) -> Value {
    let mut steps = def.shape.calls();
    let mut seen = std::collections::HashSet::new();
    steps.retain(|s| seen.insert(*s));
    json!({
        "name": def.name,
        "version": def.version,
        "input_type": short_type((def.input_type)()),
        "output_type": short_type((def.output_type)()),
        "input_type_path": (def.input_type)(),
        "output_type_path": (def.output_type)(),
        "args": def.args.iter().map(|(name, ty)| json!({"name": name, "type": ty})).collect::<Vec<_>>(),
        "signals": def.signals.iter().map(|s| json!({
            "name": s.name,
            "type": s.payload.map(|p| short_type((p.type_name)())),
        })).collect::<Vec<_>>(),
        "steps": steps,
        "counts": counts,
    })
}

async fn counts_by_workflow(rt: &Runtime) -> ApiResult<BTreeMap<String, Map<String, Value>>> {
    let mut out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for def in rt.definitions() {
        let m = out.entry(def.name.to_string()).or_default();
        for st in Status::ALL {
            m.insert(st.as_str().into(), json!(0));
        }
    }
    for c in rt.counts().await? {
        if let Some(m) = out.get_mut(&c.workflow) {
            m.insert(c.status.as_str().into(), json!(c.count));
        }
    }
    Ok(out)
}

async fn definitions(State(state): State<AppState>) -> ApiResult {
    let counts = counts_by_workflow(&state.rt).await?;
    let empty = Map::new();
    let defs: Vec<Value> = state
        .rt
        .definitions()
        .into_iter()
        .map(|d| definition_json(d, counts.get(d.name).unwrap_or(&empty)))
        .collect();
    Ok(ok(json!({ "definitions": defs })))
}

async fn definition(State(state): State<AppState>, Segment(name): Segment) -> ApiResult {
    let def = state.rt.definition(&name)?;
    let counts = counts_by_workflow(&state.rt).await?;
    let mut v = definition_json(def, counts.get(def.name).unwrap_or(&Map::new()));
    if let Value::Object(m) = &mut v {
        // JSON Schemas, and beside them the serde-reflection traces the web UI reads.
        let (input, output) = (def.schemas)();
        m.insert("input_schema".into(), json!(def.input_schema()));
        m.insert("output_schema".into(), json!(def.output_schema()));
        m.insert("input_trace".into(), input);
        m.insert("output_trace".into(), output);
        m.insert("shape".into(), crate::graph::shape_json(def.shape));
        // Each signal with its payload type's full path, JSON Schema and traced shape.
        m.insert(
            "signals".into(),
            def.signals
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "type": s.payload.map(|p| short_type((p.type_name)())),
                        "type_path": s.payload.map(|p| (p.type_name)()),
                        "schema": s.payload.map(|p| p.json.document()),
                        "trace": s.payload.map(|p| (p.schema)()),
                    })
                })
                .collect::<Vec<_>>()
                .into(),
        );
        // The steps whose name one `#[step]` function of this binary has, with its types.
        let mut steps = def.shape.calls();
        let mut seen = std::collections::HashSet::new();
        steps.retain(|s| seen.insert(*s));
        m.insert(
            "step_schemas".into(),
            steps
                .into_iter()
                .filter_map(crate::schema::StepDef::named)
                .map(|s| {
                    json!({
                        "name": s.name,
                        "input_schema": s.input_schema(),
                        "output_schema": s.output_schema(),
                    })
                })
                .collect::<Vec<_>>()
                .into(),
        );
        m.insert("mermaid".into(), json!(def.drawing().mermaid()));
    }
    Ok(ok(v))
}

fn render(drawing: crate::graph::Drawing<'_>, format: &str) -> Response {
    match format {
        "mermaid" => text(drawing.mermaid(), "text/plain; charset=utf-8"),
        "dot" => text(drawing.dot(), "text/vnd.graphviz; charset=utf-8"),
        _ => text(drawing.svg(), "image/svg+xml"),
    }
}

async fn definition_graph(
    State(state): State<AppState>,
    Segment(name): Segment,
    Pairs(params): Pairs,
) -> ApiResult {
    let format = graph_format(&params)?;
    let def = state.rt.definition(&name)?;
    Ok(render(def.drawing(), format))
}

async fn start(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &["workflow", "input", "id"])?;
    let workflow = opt_string(&body, "workflow")?.ok_or_else(|| {
        ApiError::bad_request("missing `workflow`: the name of the workflow to start")
    })?;
    start_instance(&state.rt, c, workflow, &body).await
}

/// Starts `workflow` with the body's `input` and optional `id`.
async fn start_instance(
    rt: &Runtime,
    c: Option<axum::Extension<Caller>>,
    workflow: String,
    body: &Map<String, Value>,
) -> ApiResult {
    let def = rt.definition(&workflow)?;
    let Some(input) = body.get("input") else {
        return Err(ApiError::bad_request(format!(
            "missing `input`: the JSON input of workflow `{}` (type {}); use null for a \
             workflow without arguments",
            def.name,
            short_type((def.input_type)())
        )));
    };
    let id = opt_string(body, "id")?;
    let input = input.to_string();
    let actor = caller(c).name;
    let (new_id, created) = rt
        .start_json_as(&workflow, id.as_deref(), &input, Some(&actor))
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(reply(
        status,
        json!({"id": new_id, "workflow": workflow, "created": created}),
    ))
}

/// `POST /api/v1/definitions/{name}/instances`: starts workflow `name` with `{input, id}`.
async fn start_typed(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(workflow): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &["input", "id"])?;
    start_instance(&state.rt, c, workflow, &body).await
}

/// The instance `id` when it is an instance of workflow `name` (else 404).
async fn instance_of(rt: &Runtime, name: &str, id: &str) -> ApiResult<()> {
    rt.definition(name)?;
    match rt.instance(id).await? {
        Some(r) if r.workflow == name => Ok(()),
        Some(r) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "instance `{id}` is an instance of workflow `{}`, not of `{name}`",
                r.workflow
            ),
        )),
        None => Err(Error::NotFound(id.to_string()).into()),
    }
}

/// `GET /api/v1/definitions/{name}/instances/{id}`: the instance, when it is one of `name`.
async fn instance_typed(
    State(state): State<AppState>,
    Segments((name, id)): Segments<(String, String)>,
) -> ApiResult {
    instance_of(&state.rt, &name, &id).await?;
    instance(State(state), Segment(id)).await
}

/// `POST /api/v1/definitions/{name}/instances/{id}/signals/{signal}`: the body is the payload.
async fn signal_typed(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segments((name, id, signal)): Segments<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let payload = body_value(body)?;
    instance_of(&state.rt, &name, &id).await?;
    let actor = caller(c).name;
    let signal_id = state
        .rt
        .signal_as(&id, &signal, &payload, Some(&actor))
        .await?;
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"id": id, "signal_id": signal_id}),
    ))
}

async fn search(State(state): State<AppState>, Pairs(params): Pairs) -> ApiResult {
    let (mut query, _) = query_from_params(&state.rt, &params, &[])?;
    let limit = query.limit;
    query.limit = limit + 1;
    let mut found = state.rt.search(query).await?;
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(cursor_of)
    } else {
        None
    };
    let ids: Vec<String> = found.iter().map(|r| r.id.clone()).collect();
    let attrs = state.rt.attributes_of(ids.clone()).await?;
    let owners: HashMap<String, Lease> = state
        .rt
        .leases_of(ids)
        .await?
        .into_iter()
        .map(|l| (l.instance.clone(), l))
        .collect();
    let now = state.rt.inner.clock.now_ms();
    let instances: Vec<Value> = found
        .iter()
        .map(|r| views::instance(r, attrs.get(&r.id), owners.get(&r.id), now, false))
        .collect();
    Ok(ok(json!({"instances": instances, "next_cursor": next})))
}

async fn instance(State(state): State<AppState>, Segment(id): Segment) -> ApiResult {
    let d = state.rt.details(&id).await?;
    let owner = state.rt.leases_of(vec![id]).await?.pop();
    let now = state.rt.inner.clock.now_ms();
    Ok(ok(views::instance(
        &d.record,
        Some(&d.attributes),
        owner.as_ref(),
        now,
        true,
    )))
}

async fn journal(State(state): State<AppState>, Segment(id): Segment) -> ApiResult {
    let d = state.rt.details(&id).await?;
    Ok(ok(views::journal(&d, state.rt.inner.clock.now_ms())))
}

async fn instance_graph(
    State(state): State<AppState>,
    Segment(id): Segment,
    Pairs(params): Pairs,
) -> ApiResult {
    let format = graph_format(&params)?;
    let d = state.rt.details(&id).await?;
    let def = state.rt.definition(&d.record.workflow)?;
    let trace = Trace::of(def.shape, d.record.status, &d.journal);
    let title = format!("{} · {}", def.name, d.record.id);
    let drawing = crate::graph::Drawing::new(def.shape)
        .title(&title)
        .run(&trace);
    Ok(render(drawing, format))
}

async fn signal(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &["name", "payload"])?;
    let name = opt_string(&body, "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing `name`: the signal's name"))?;
    let payload = body.get("payload").cloned().unwrap_or(Value::Null);
    let actor = caller(c).name;
    let signal_id = state
        .rt
        .signal_as(&id, &name, &payload, Some(&actor))
        .await?;
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"id": id, "signal_id": signal_id}),
    ))
}

async fn status_of(rt: &Runtime, id: &str) -> ApiResult<Status> {
    Ok(rt
        .instance(id)
        .await?
        .ok_or_else(|| Error::NotFound(id.to_string()))?
        .status)
}

/// The optional `reason` of a cancel or terminate body.
fn reason_of(body: Result<Bytes, BytesRejection>) -> ApiResult<String> {
    let body = body_object(body)?;
    only_fields(&body, &["reason"])?;
    Ok(opt_string(&body, "reason")?.unwrap_or_default())
}

async fn cancel(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let reason = reason_of(body)?;
    state.rt.cancel(&id, &caller(c).name, &reason).await?;
    let status = status_of(&state.rt, &id).await?;
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"id": id, "status": status, "cancel_requested": true}),
    ))
}

async fn terminate(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let reason = reason_of(body)?;
    state.rt.terminate(&id, &caller(c).name, &reason).await?;
    let status = status_of(&state.rt, &id).await?;
    Ok(ok(json!({"id": id, "status": status})))
}

async fn retry(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &["from_seq"])?;
    let from = opt_seq(&body, "from_seq")?;
    let from = state.rt.retry(&id, from, &caller(c).name).await?;
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({"id": id, "from_seq": from}),
    ))
}

async fn restart(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &[])?;
    let new_id = state.rt.restart(&id, &caller(c).name).await?;
    Ok(reply(
        StatusCode::CREATED,
        json!({"id": new_id, "restarted_from": id}),
    ))
}

async fn fork(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(id): Segment,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &["from_seq"])?;
    let from = opt_seq(&body, "from_seq")?.ok_or_else(|| {
        ApiError::bad_request("missing `from_seq`: the first journal seq the fork runs anew")
    })?;
    let new_id = state.rt.fork(&id, from, &caller(c).name).await?;
    Ok(reply(
        StatusCode::CREATED,
        json!({"id": new_id, "forked_from": id, "from_seq": from}),
    ))
}

async fn bulk_cancel(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &["filter", "reason"])?;
    let query = query_from_json(&state.rt, body.get("filter"))?;
    let reason = opt_string(&body, "reason")?.unwrap_or_default();
    let out = state
        .rt
        .bulk_cancel(query, &caller(c).name, &reason)
        .await?;
    Ok(ok(serde_json::to_value(out).unwrap_or(Value::Null)))
}

async fn bulk_retry(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body_object(body)?;
    only_fields(&body, &["filter"])?;
    let query = query_from_json(&state.rt, body.get("filter"))?;
    let out = state.rt.bulk_retry(query, &caller(c).name).await?;
    Ok(ok(serde_json::to_value(out).unwrap_or(Value::Null)))
}

async fn stats(State(state): State<AppState>, Pairs(params): Pairs) -> ApiResult {
    let mut window = 24 * 3_600_000;
    let mut bucket = None;
    let mut workflow = None;
    for (k, v) in &params {
        match k.as_str() {
            "window" => window = duration_param("window", v)?,
            "bucket" => bucket = Some(duration_param("bucket", v)?),
            "workflow" => {
                check_workflow(&state.rt, v)?;
                workflow = Some(v.clone());
            }
            k => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{k}`; known: `window`, `bucket`, `workflow`"
                )));
            }
        }
    }
    let bucket = bucket.unwrap_or((window / 24).max(1000));
    if window / bucket > 1000 {
        return Err(ApiError::bad_request(format!(
            "window / bucket gives {} buckets; at most 1000 (choose a larger bucket)",
            window / bucket
        )));
    }
    let to = state.rt.inner.clock.now_ms() + 1;
    let from = to - window;
    let s = state
        .rt
        .stats(StatsQuery {
            from,
            to,
            bucket_ms: bucket,
            workflow,
        })
        .await?;
    Ok(ok(json!({
        "from": time(from),
        "to": time(to),
        "bucket_ms": bucket,
        "totals": s.totals,
        "series": s.series.iter().map(|b| json!({
            "start": time(b.start), "workflow": b.workflow, "status": b.status, "count": b.count
        })).collect::<Vec<_>>(),
        "failed_steps": s.failed_steps,
    })))
}

async fn attribute_stats(State(state): State<AppState>, Pairs(params): Pairs) -> ApiResult {
    let (query, rest) = query_from_params(&state.rt, &params, &["key"])?;
    let key = rest.get("key").filter(|k| !k.is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "missing `key`: the attribute to aggregate (set with orch::set_attribute)",
        )
    })?;
    let a = state.rt.aggregate(key, query).await?;
    let avg = (a.numeric > 0).then(|| a.sum / a.numeric as f64);
    Ok(ok(json!({
        "key": key,
        "count": a.count,
        "numeric": a.numeric,
        "sum": a.sum,
        "min": a.min,
        "max": a.max,
        "avg": avg,
    })))
}

async fn audit(State(state): State<AppState>, Pairs(params): Pairs) -> ApiResult {
    let mut limit = 100;
    for (k, v) in &params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be 1 to 1000, got `{v}`"))
                    })?
            }
            k => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{k}`; known: `limit`"
                )));
            }
        }
    }
    let entries: Vec<Value> = state
        .rt
        .audit_log(limit)
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "at": time(a.at),
                "actor": a.actor,
                "action": a.action,
                "target": a.target,
                "detail": json_text(&a.detail),
            })
        })
        .collect();
    Ok(ok(json!({ "entries": entries })))
}
