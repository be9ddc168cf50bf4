//! The cluster's side of the API: the nodes sharing the store (`GET /api/v1/nodes`) and the
//! deploy check of waiting instances against this node's code (`GET /api/v1/compatibility`).

use super::api::{ApiError, ApiResult, AppState};
use super::params::{Params, shown};
use super::views::time_text;
use crate::compatibility::{CompatibilityQuery, Incompatibility, MAX_CHECK};
use crate::store::{Millis, NodeRecord};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

/// `GET /api/v1/nodes`.
#[derive(Serialize)]
pub(crate) struct NodesView {
    /// The node that answered.
    this_node: String,
    /// Every node that heartbeat into this store, by id (nodes gone for over a day that own
    /// nothing are forgotten: see `NODE_RETENTION_MS`).
    nodes: Vec<NodeView>,
}

/// One node of [`NodesView`].
#[derive(Serialize)]
pub(crate) struct NodeView {
    id: String,
    /// Whether this is the node that answered.
    this_node: bool,
    state: NodeState,
    started_at: String,
    heartbeat_at: String,
    lease_expires_at: String,
    /// Unfinished instances it owns now.
    instances_owned: u64,
}

/// Where a node stands, by its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NodeState {
    /// Its lease runs: it heartbeats and drives what it owns.
    Live,
    /// It shut down and gave its instances up.
    Stopped,
    /// Its lease ran out without a shutdown (it crashed, stalled or was cut off): other nodes
    /// take its instances over.
    Expired,
}

impl NodeState {
    /// The state of `n` at `now`: a shutdown ends the lease at the last heartbeat, a node
    /// that stops heartbeating lets it run out later.
    pub(crate) fn of(n: &NodeRecord, now: Millis) -> NodeState {
        if n.lease_expires > now {
            NodeState::Live
        } else if n.lease_expires <= n.heartbeat_at {
            NodeState::Stopped
        } else {
            NodeState::Expired
        }
    }
}

pub(crate) async fn nodes(State(state): State<AppState>) -> ApiResult<Json<NodesView>> {
    let rt = state.runtime();
    let now = rt.inner.clock.now_ms();
    let this = rt.node_id();
    let nodes = rt
        .nodes()
        .await?
        .into_iter()
        .map(|n| NodeView {
            this_node: n.id == this,
            state: NodeState::of(&n, now),
            started_at: time_text(n.started_at),
            heartbeat_at: time_text(n.heartbeat_at),
            lease_expires_at: time_text(n.lease_expires),
            instances_owned: n.owned,
            id: n.id,
        })
        .collect();
    Ok(Json(NodesView {
        this_node: this.to_string(),
        nodes,
    }))
}

/// The query of `GET /api/v1/compatibility`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckParams {
    /// Only instances of this workflow (any name: instances of a workflow this binary lacks
    /// are what a check is for).
    workflow: Option<String>,
    /// Instances to check in this call, 1 to [`MAX_CHECK`] (default [`DEFAULT_CHECK`]).
    limit: Option<String>,
    /// The `next_cursor` of the previous call (an instance id).
    cursor: Option<String>,
}

/// Instances one call checks unless told otherwise.
pub(crate) const DEFAULT_CHECK: usize = 1000;

impl CheckParams {
    /// The check these parameters ask for; bad values are refused with the reason.
    pub(crate) fn query(self) -> ApiResult<CompatibilityQuery> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_CHECK,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CHECK).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit must be 1 to {MAX_CHECK}, got `{}`",
                        shown(raw)
                    ))
                })?,
        };
        let workflow = match self.workflow {
            Some(w) if w.is_empty() => {
                return Err(ApiError::bad_request(
                    "workflow is empty: name a workflow, or leave the parameter out to check all",
                ));
            }
            other => other,
        };
        Ok(CompatibilityQuery {
            workflow,
            after: self.cursor.filter(|c| !c.is_empty()),
            limit,
        })
    }
}

/// `GET /api/v1/compatibility`.
#[derive(Serialize)]
pub(crate) struct CompatibilityView {
    /// The node whose code the instances were replayed against.
    node: String,
    checked: usize,
    compatible: usize,
    incompatible: Vec<Incompatibility>,
    next_cursor: Option<String>,
}

pub(crate) async fn compatibility(
    State(state): State<AppState>,
    Params(params): Params<CheckParams>,
) -> ApiResult<Json<CompatibilityView>> {
    let rt = state.runtime();
    let report = rt.check_compatibility(params.query()?).await?;
    Ok(Json(CompatibilityView {
        node: rt.node_id().to_string(),
        checked: report.checked,
        compatible: report.compatible,
        incompatible: report.incompatible,
        next_cursor: report.next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(heartbeat_at: Millis, lease_expires: Millis) -> NodeRecord {
        NodeRecord {
            id: "n".into(),
            started_at: 0,
            heartbeat_at,
            lease_expires,
            owned: 0,
        }
    }

    #[test]
    fn a_node_is_live_while_its_lease_runs_stopped_after_a_shutdown_expired_after_silence() {
        assert_eq!(NodeState::of(&node(100, 200), 150), NodeState::Live);
        // A shutdown ends the lease at the last heartbeat.
        assert_eq!(NodeState::of(&node(100, 100), 150), NodeState::Stopped);
        assert_eq!(NodeState::of(&node(100, 200), 250), NodeState::Expired);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever the query string holds, reading it is an answer or a clean refusal.
        #[test]
        fn check_parameters_never_panic(raw in "[a-z_=&%0-9A-Fa-f.+~ -]{0,80}|\\PC{0,40}") {
            let Ok(uri) = format!("/api/v1/compatibility?{raw}").parse::<axum::http::Uri>() else {
                return Ok(());
            };
            if let Ok(axum::extract::Query(params)) =
                axum::extract::Query::<CheckParams>::try_from_uri(&uri)
            {
                let _ = params.query();
            }
        }

        #[test]
        fn check_limits_in_range_are_taken_as_given(n in 1usize..=MAX_CHECK) {
            let q = CheckParams { limit: Some(n.to_string()), ..Default::default() }
                .query()
                .map_err(|e| TestCaseError::fail(e.message().to_string()))?;
            prop_assert_eq!(q.limit, n);
        }
    }
}
