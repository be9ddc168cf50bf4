//! `/readyz`: can this process do its job — the store answers a read *and* takes a write?
//! (`/healthz` stays a liveness check: the process and its store answer.)

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

/// How long the write probe may take before the server is reported not ready (a write queued
/// behind a long batch, a locked or stalled disk).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn readyz(rt: &crate::runtime::Runtime) -> Response {
    let unavailable = |check: &str, error: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "unavailable",
                "failed_check": check,
                "error": error,
            })),
        )
            .into_response()
    };
    if rt.inner.is_closing() {
        return unavailable("shutdown", "the runtime is shutting down".into());
    }
    if let Err(e) = rt.inner.store.get("readyz").await {
        return unavailable("read", e.to_string());
    }
    match tokio::time::timeout(PROBE_TIMEOUT, rt.inner.store.probe_write()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "checks": {"read": "ok", "write": "ok"}})),
        )
            .into_response(),
        Ok(Err(e)) => unavailable("write", e.to_string()),
        Err(_) => unavailable(
            "write",
            format!("the write probe did not finish within {PROBE_TIMEOUT:?}"),
        ),
    }
}
