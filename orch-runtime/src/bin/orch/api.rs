//! The JSON shapes of `docs/http-api.md`, read leniently: optional fields may be missing or
//! null, unknown fields are ignored. `--json` prints the server's own document, not these.

use crate::client::CliError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Reads `value` as `T`, or says which document did not fit.
pub fn parse<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T, CliError> {
    T::deserialize(value).map_err(|e| CliError::BadResponse(format!("{what}: {e}")))
}

/// Statuses after which an instance does not change by itself.
pub const FINAL_STATUSES: [&str; 5] = [
    "completed",
    "failed",
    "cancelled",
    "terminated",
    "incompatible",
];

/// Every status, in the order tables show them.
pub const STATUSES: [&str; 8] = [
    "queued",
    "running",
    "suspended",
    "completed",
    "failed",
    "cancelled",
    "terminated",
    "incompatible",
];

pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// An instance (`GET /instances/{id}`) or a search summary (the same without input/output).
#[derive(Debug, Clone, Deserialize)]
pub struct Instance {
    pub id: String,
    pub workflow: String,
    #[serde(default)]
    pub version: Option<String>,
    pub status: String,
    #[serde(default)]
    pub custom_status: Value,
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
    /// Absent in summaries; `Some(Value::Null)` for a null input.
    #[serde(default, deserialize_with = "present")]
    pub input: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Value,
    #[serde(default)]
    pub failed_step: Option<String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub wake_at: Option<String>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// How many times the instance was retried (beyond the contract's fields; optional).
    #[serde(default)]
    pub retries: Option<u64>,
    /// The node driving it now (absent from older servers; `None` while nobody owns it).
    #[serde(default)]
    pub owner: Option<Owner>,
}

/// The owner of an instance: its node and lease.
#[derive(Debug, Clone, Deserialize)]
pub struct Owner {
    pub node: String,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    #[serde(default)]
    pub live: Option<bool>,
}

/// Keeps a present `null` as `Some(Null)` (a missing field stays `None` via `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `GET /instances`; the summaries are kept as sent (for `--json`), read with `parse`.
#[derive(Debug, Deserialize)]
pub struct InstancePage {
    pub instances: Vec<Value>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `GET /instances/{id}/journal`.
#[derive(Debug, Default, Deserialize)]
pub struct Journal {
    #[serde(default)]
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub superseded: Vec<Superseded>,
    #[serde(default)]
    pub pending_signals: Vec<PendingSignal>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub seq: u64,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub attempts: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub errors: Vec<AttemptError>,
    /// The entry's own error, when the server sends one (beyond the contract; optional).
    #[serde(default)]
    pub error: Value,
}

impl Entry {
    /// The entry's error, else the last failed attempt's, if any attempt failed.
    pub fn last_error(&self) -> Option<String> {
        let text = |v: &Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        text(&self.error).or_else(|| self.errors.last().and_then(|e| text(&e.error)))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AttemptError {
    #[serde(default)]
    pub error: Value,
}

#[derive(Debug, Deserialize)]
pub struct Superseded {
    #[serde(default)]
    pub retry: Option<u64>,
    #[serde(default)]
    pub entries: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub struct PendingSignal {
    pub name: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub received_at: Option<String>,
}

/// `GET /definitions` (list) and `GET /definitions/{name}` (with `args`).
#[derive(Debug, Deserialize)]
pub struct Definition {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub input_type: Option<String>,
    #[serde(default)]
    pub output_type: Option<String>,
    #[serde(default)]
    pub steps: Vec<String>,
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub args: Option<Vec<Arg>>,
}

#[derive(Debug, Deserialize)]
pub struct Arg {
    pub name: String,
    #[serde(default, rename = "type")]
    pub ty: String,
}

#[derive(Debug, Deserialize)]
pub struct Definitions {
    pub definitions: Vec<Definition>,
}

/// `GET /stats`.
#[derive(Debug, Deserialize)]
pub struct Stats {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    pub totals: Vec<StatusCount>,
    #[serde(default)]
    pub failed_steps: Vec<FailedStep>,
}

#[derive(Debug, Deserialize)]
pub struct StatusCount {
    pub workflow: String,
    pub status: String,
    pub count: u64,
}

#[derive(Debug, Deserialize)]
pub struct FailedStep {
    pub workflow: String,
    pub step: String,
    pub count: u64,
}

/// `GET /stats/attributes`.
#[derive(Debug, Deserialize)]
pub struct AttributeStats {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub sum: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub avg: Option<f64>,
}

/// `GET /nodes`.
#[derive(Debug, Deserialize)]
pub struct Nodes {
    #[serde(default)]
    pub this_node: Option<String>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
pub struct Node {
    pub id: String,
    #[serde(default)]
    pub this_node: bool,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub heartbeat_at: Option<String>,
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    #[serde(default)]
    pub instances_owned: u64,
}

/// `GET /compatibility` (one page of the check).
#[derive(Debug, Deserialize)]
pub struct Compatibility {
    #[serde(default)]
    pub node: Option<String>,
    pub checked: u64,
    pub compatible: u64,
    pub incompatible: Vec<Incompatible>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Incompatible {
    pub id: String,
    pub workflow: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub message: String,
}

/// `GET /api/v1/queues`.
#[derive(Debug, Deserialize)]
pub struct Queues {
    pub queues: Vec<QueueRow>,
    #[serde(default)]
    pub workers: Vec<WorkerRow>,
}

/// One queue; counts a kind does not have are absent.
#[derive(Debug, Deserialize)]
pub struct QueueRow {
    pub queue: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub waiting: Option<u64>,
    #[serde(default)]
    pub in_flight: Option<u64>,
    #[serde(default)]
    pub oldest_waiting: Option<String>,
    #[serde(default)]
    pub finished_last_minute: Option<u64>,
    #[serde(default)]
    pub completed: Option<u64>,
    #[serde(default)]
    pub failed: Option<u64>,
    #[serde(default)]
    pub workers: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct WorkerRow {
    pub id: String,
    #[serde(default)]
    pub queues: Vec<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub last_poll: Option<String>,
    #[serde(default)]
    pub last_heartbeat: Option<String>,
    #[serde(default)]
    pub connected: bool,
}
