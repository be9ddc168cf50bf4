//! Workflow queues over HTTP: `POST /api/v1/queues/{queue}/instances` enqueues an instance,
//! `PUT /api/v1/queues/{queue}/config` sets a queue's limits (on every node at once); `GET
//! /api/v1/queues` lists workflow queues next to task queues (see `tasks::queues`). See
//! [`crate::flow`].

use super::api::{ApiError, ApiResult, AppState, caller};
use super::auth::Caller;
use super::params::{Body, Segment};
use crate::flow::{EnqueueOptions, QueueConfig, Rate};
use crate::store::task::check_queue;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

/// `POST /api/v1/queues/{queue}/instances`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnqueueRequest {
    workflow: String,
    input: Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    dedup: Option<String>,
}

/// A rate limit in a [`ConfigRequest`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateRequest {
    limit: u32,
    period_ms: u64,
}

/// `PUT /api/v1/queues/{queue}/config`: absent limits are none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigRequest {
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    per_key: Option<u32>,
    #[serde(default)]
    rate: Option<RateRequest>,
}

/// The longest rate period accepted: a year.
const MAX_PERIOD_MS: u64 = 366 * 24 * 3600 * 1000;

fn checked_queue(queue: &str) -> ApiResult<()> {
    check_queue(queue).map_err(|e| ApiError::bad_request(format!("queue: {e}")))
}

/// The JSON of a queue's limits.
pub(crate) fn config_json(c: &QueueConfig) -> Value {
    json!({
        "concurrency": c.concurrency,
        "per_key": c.per_key,
        "rate": c.rate.map(|r| json!({"limit": r.limit, "period_ms": r.period_ms})),
    })
}

/// `POST /api/v1/queues/{queue}/instances`: enqueues `workflow` with `input`; 201 when stored,
/// 200 with `created: false` when an instance with the id, or holding the deduplication key,
/// exists (it is returned).
pub(crate) async fn enqueue(
    State(state): State<AppState>,
    c: Option<axum::Extension<Caller>>,
    Segment(queue): Segment,
    Body(req): Body<EnqueueRequest>,
) -> ApiResult {
    checked_queue(&queue)?;
    let rt = state.runtime();
    let options = EnqueueOptions {
        queue: Some(queue.clone()),
        priority: req.priority,
        key: req.key,
        dedup: req.dedup,
        id: req.id,
    };
    let actor = caller(c).name;
    let (id, created) = rt
        .enqueue_json_as(
            &req.workflow,
            &req.input.to_string(),
            &options,
            Some(&actor),
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({"id": id, "workflow": req.workflow, "queue": queue, "created": created})),
    )
        .into_response())
}

/// `PUT /api/v1/queues/{queue}/config`: replaces the queue's limits.
pub(crate) async fn set_config(
    State(state): State<AppState>,
    Segment(queue): Segment,
    Body(req): Body<ConfigRequest>,
) -> ApiResult {
    checked_queue(&queue)?;
    let rate = match req.rate {
        None => None,
        Some(r) if r.period_ms == 0 || r.period_ms > MAX_PERIOD_MS => {
            return Err(ApiError::bad_request(format!(
                "`rate.period_ms` is 1 to {MAX_PERIOD_MS} (a year), got {}",
                r.period_ms
            )));
        }
        Some(r) => Some(Rate {
            limit: r.limit,
            period_ms: r.period_ms as i64,
        }),
    };
    let config = QueueConfig {
        concurrency: req.concurrency,
        per_key: req.per_key,
        rate,
    };
    config
        .check()
        .map_err(|e| ApiError::bad_request(format!("`rate`: {e}")))?;
    state.runtime().set_queue_config(&queue, config).await?;
    Ok(axum::Json(json!({"queue": queue, "config": config_json(&config)})).into_response())
}
