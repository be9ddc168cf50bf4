//! The worker protocol (`/api/v1/tasks`, `/api/v1/queues`): a worker in any language
//! long-polls for tasks of its queues, keeps each lease alive with heartbeats and ends the task
//! with an output or a failure. Every heartbeat and end carries the task's fencing token: a
//! worker whose lease ended (and whose task may have gone to another worker) is refused with
//! 409 `task_lost` and changes nothing. See the module documentation of
//! [`store::task`](crate::store::task) for the life of a task.

use super::api::{ApiError, ApiResult, AppState};
use super::params::{Body, Segment};
use super::views::{json_text, time};
use crate::error::Error;
use crate::store::Millis;
use crate::store::task::{
    QueueStats, TaskLease, TaskResult, WorkerRecord, WorkerTerms, check_queue,
};
use crate::worker::queue_stirred;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// Most tasks one lease request may ask for.
pub const MAX_TASKS_PER_LEASE: usize = 100;
/// Longest long-poll, in milliseconds.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Shortest and longest lease a worker may ask for, in milliseconds.
pub const LEASE_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;
/// Most queues one lease request may name.
pub const MAX_QUEUES_PER_LEASE: usize = 32;
/// Longest worker id, in bytes.
pub const MAX_WORKER_LEN: usize = 128;
/// Longest failure message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

const DEFAULT_WAIT_MS: u64 = 20_000;
const DEFAULT_LEASE_MS: u64 = 30_000;

/// A worker seen (a poll, a heartbeat, an end) this recently counts as connected: a long-poll
/// lasts at most a minute, and a worker whose slots are all busy heartbeats instead.
pub(crate) const WORKER_CONNECTED_MS: Millis = 90_000;
/// A worker not seen for this long is no longer listed (nor remembered).
const WORKER_SEEN_FOR: Millis = 10 * 60_000;
/// At most this many workers (and leases) are remembered per node: the oldest go first.
const MAX_REMEMBERED: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// Requests.

/// `POST /api/v1/tasks/lease`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseRequest {
    worker: String,
    queues: Vec<String>,
    #[serde(default = "one")]
    max_tasks: usize,
    #[serde(default = "default_wait")]
    wait_ms: u64,
    #[serde(default = "default_lease")]
    lease_ms: u64,
}

fn one() -> usize {
    1
}

fn default_wait() -> u64 {
    DEFAULT_WAIT_MS
}

fn default_lease() -> u64 {
    DEFAULT_LEASE_MS
}

/// `POST /api/v1/tasks/{id}/heartbeat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatRequest {
    token: u64,
    #[serde(default = "default_lease")]
    lease_ms: u64,
}

/// `POST /api/v1/tasks/{id}/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteRequest {
    token: u64,
    /// Any JSON (`null` too); required, so that a forgotten output is not stored as `null`.
    output: Value,
}

/// `POST /api/v1/tasks/{id}/fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailRequest {
    token: u64,
    message: String,
    retryable: bool,
}

impl LeaseRequest {
    /// Checks the bounds serde cannot express; the queues come back deduplicated.
    fn checked(mut self) -> ApiResult<LeaseRequest> {
        check_worker(&self.worker)?;
        if self.queues.is_empty() || self.queues.len() > MAX_QUEUES_PER_LEASE {
            return Err(ApiError::bad_request(format!(
                "`queues` names 1 to {MAX_QUEUES_PER_LEASE} queues, got {}",
                self.queues.len()
            )));
        }
        for q in &self.queues {
            check_queue(q).map_err(|e| ApiError::bad_request(format!("`queues`: {e}")))?;
        }
        let mut seen = BTreeSet::new();
        self.queues.retain(|q| seen.insert(q.clone()));
        if !(1..=MAX_TASKS_PER_LEASE).contains(&self.max_tasks) {
            return Err(ApiError::bad_request(format!(
                "`max_tasks` must be 1 to {MAX_TASKS_PER_LEASE}, got {}",
                self.max_tasks
            )));
        }
        if self.wait_ms > MAX_WAIT_MS {
            return Err(ApiError::bad_request(format!(
                "`wait_ms` must be 0 to {MAX_WAIT_MS} (a long-poll of at most a minute; ask \
                 again when it answers), got {}",
                self.wait_ms
            )));
        }
        check_lease_ms(self.lease_ms)?;
        Ok(self)
    }
}

fn check_worker(worker: &str) -> ApiResult<()> {
    if worker.is_empty() || worker.len() > MAX_WORKER_LEN || worker.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`worker` is the worker's id shown to operators: 1 to {MAX_WORKER_LEN} bytes without \
             control characters (e.g. `payments-7f3c@host-2`), got {} bytes",
            worker.len()
        )));
    }
    Ok(())
}

fn check_lease_ms(lease_ms: u64) -> ApiResult<()> {
    if !LEASE_MS.contains(&lease_ms) {
        return Err(ApiError::bad_request(format!(
            "`lease_ms` must be {} to {} (how long the task stays yours without a heartbeat), \
             got {lease_ms}",
            LEASE_MS.start(),
            LEASE_MS.end()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workers seen by this node, and by all (through the store).

/// A node records the workers it saw in the store at most this often (one small batch of
/// upserts, not one write per poll).
pub(crate) const RECORD_WORKERS_EVERY: Millis = 5_000;

/// The workers this node served recently, for operators (`GET /api/v1/queues`). Kept in
/// memory and recorded in the store at most every [`RECORD_WORKERS_EVERY`], so that every node
/// lists the workers polling any node.
#[derive(Default)]
pub(crate) struct Workers(Mutex<Seen>);

#[derive(Default)]
struct Seen {
    workers: HashMap<String, WorkerSeen>,
    /// Task id → the worker it was leased to here, and when that lease ends.
    leases: HashMap<String, (String, Millis)>,
    /// Workers seen since the last record in the store.
    dirty: BTreeSet<String>,
    /// When this node last recorded workers in the store.
    recorded_at: Option<Millis>,
}

struct WorkerSeen {
    queues: Vec<String>,
    last_poll: Millis,
    last_heartbeat: Option<Millis>,
}

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `worker` asked for tasks of `queues` at `now` and got `leased`.
    fn polled(&self, worker: &str, queues: &[String], now: Millis, leased: &[TaskLease]) {
        let mut seen = self.lock();
        let w = seen
            .workers
            .entry(worker.to_string())
            .or_insert_with(|| WorkerSeen {
                queues: Vec::new(),
                last_poll: now,
                last_heartbeat: None,
            });
        w.queues = queues.to_vec();
        w.last_poll = now;
        for l in leased {
            seen.leases
                .insert(l.task.id.clone(), (worker.to_string(), l.expires_at));
        }
        seen.dirty.insert(worker.to_string());
        seen.prune(now);
    }

    /// The holder of task `id` heartbeat at `now` (its lease now ends at `until`), or ended it
    /// (`until` is `None`).
    fn touched(&self, id: &str, now: Millis, until: Option<Millis>) {
        let mut seen = self.lock();
        let Some((worker, _)) = seen.leases.get(id).cloned() else {
            return;
        };
        match until {
            Some(until) => {
                seen.leases.insert(id.to_string(), (worker.clone(), until));
            }
            None => {
                seen.leases.remove(id);
            }
        }
        if let Some(w) = seen.workers.get_mut(&worker) {
            w.last_heartbeat = Some(now);
            seen.dirty.insert(worker);
        }
    }

    /// The workers this node (`node`) saw since `now - WORKER_SEEN_FOR`, by id.
    fn local(&self, now: Millis, node: &str) -> Vec<WorkerRecord> {
        let mut seen = self.lock();
        seen.prune(now);
        let mut out: Vec<WorkerRecord> = seen
            .workers
            .iter()
            .map(|(id, w)| w.record(id, node))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The workers to record in the store now: those seen since the last record, if that was
    /// [`RECORD_WORKERS_EVERY`] ago or more.
    fn due(&self, now: Millis, node: &str) -> Option<Vec<WorkerRecord>> {
        let mut seen = self.lock();
        if seen.dirty.is_empty()
            || seen
                .recorded_at
                .is_some_and(|at| now.saturating_sub(at) < RECORD_WORKERS_EVERY)
        {
            return None;
        }
        seen.recorded_at = Some(now);
        let dirty = std::mem::take(&mut seen.dirty);
        Some(
            dirty
                .iter()
                .filter_map(|id| seen.workers.get(id).map(|w| w.record(id, node)))
                .collect(),
        )
    }
}

impl WorkerSeen {
    fn record(&self, id: &str, node: &str) -> WorkerRecord {
        WorkerRecord {
            id: id.to_string(),
            queues: self.queues.clone(),
            node: node.to_string(),
            last_poll: self.last_poll,
            last_heartbeat: self.last_heartbeat,
        }
    }
}

/// Whether `w` was seen within [`WORKER_CONNECTED_MS`] of `now`.
fn connected(w: &WorkerRecord, now: Millis) -> bool {
    w.last_seen() >= now.saturating_sub(WORKER_CONNECTED_MS)
}

/// Records in the store the workers this node saw, if it is time (see [`Workers::due`]); in a
/// task of its own, so that no worker waits for it.
fn record_seen(state: &AppState, now: Millis) {
    let rt = state.runtime();
    if let Some(batch) = state.workers().due(now, rt.node_id()) {
        let store = rt.inner.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store
                .record_workers(batch, now.saturating_sub(WORKER_SEEN_FOR))
                .await
            {
                tracing::warn!(error = %e, "recording the workers this node saw failed");
            }
        });
    }
}

/// The workers any node saw since `now - WORKER_SEEN_FOR` (as recorded in the store), with
/// this node's own fresher view merged in, by id.
pub(crate) async fn all_workers(state: &AppState, now: Millis) -> ApiResult<Vec<WorkerRecord>> {
    let rt = state.runtime();
    let stored = rt
        .inner
        .store
        .workers(now.saturating_sub(WORKER_SEEN_FOR))
        .await
        .map_err(Error::from)?;
    let mut by_id: BTreeMap<String, WorkerRecord> =
        stored.into_iter().map(|w| (w.id.clone(), w)).collect();
    for w in state.workers().local(now, rt.node_id()) {
        match by_id.get_mut(&w.id) {
            Some(known) => known.merge(w),
            None => {
                by_id.insert(w.id.clone(), w);
            }
        }
    }
    Ok(by_id.into_values().collect())
}

impl Seen {
    /// Forgets workers not seen for a while and leases long over; keeps at most
    /// [`MAX_REMEMBERED`] of each.
    fn prune(&mut self, now: Millis) {
        let since = now.saturating_sub(WORKER_SEEN_FOR);
        self.workers
            .retain(|_, w| w.last_poll.max(w.last_heartbeat.unwrap_or(0)) >= since);
        self.leases.retain(|_, (_, until)| *until >= since);
        if self.workers.len() > MAX_REMEMBERED {
            let mut ages: Vec<Millis> = self.workers.values().map(|w| w.last_poll).collect();
            ages.sort_unstable();
            let cut = ages[self.workers.len() - MAX_REMEMBERED];
            self.workers.retain(|_, w| w.last_poll >= cut);
        }
        if self.leases.len() > MAX_REMEMBERED {
            let mut ends: Vec<Millis> = self.leases.values().map(|(_, until)| *until).collect();
            ends.sort_unstable();
            let cut = ends[self.leases.len() - MAX_REMEMBERED];
            self.leases.retain(|_, (_, until)| *until >= cut);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers.

fn task_json(l: &TaskLease) -> Value {
    json!({
        "id": l.task.id,
        "queue": l.task.queue,
        "step": l.task.step,
        "instance": l.task.instance,
        "seq": l.task.seq,
        "attempt": l.task.attempt,
        "input": json_text(&l.task.input),
        "idempotency_key": l.task.idempotency_key,
        "token": l.token,
        "lease_expires_at": time(l.expires_at),
        "deadline": l.task.deadline.map(time),
    })
}

/// `POST /api/v1/tasks/lease`: leases up to `max_tasks` tasks of `queues`, waiting up to
/// `wait_ms` for one. Between attempts it waits on the store's wake-ups and on the end of the
/// earliest lease held by someone else, never on a fixed polling interval.
pub(crate) async fn lease(
    State(state): State<AppState>,
    Body(req): Body<LeaseRequest>,
) -> ApiResult {
    let req = req.checked()?;
    let rt = state.runtime();
    let store = &rt.inner.store;
    let clock = &rt.inner.clock;
    let wait = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
    // Subscribed before the first look, so a task enqueued in between is not missed.
    let mut wakeups = store.wakeups();
    loop {
        let now = clock.now_ms();
        let leased = store
            .lease_tasks(
                WorkerTerms {
                    worker: req.worker.clone(),
                    now,
                    ttl: req.lease_ms as Millis,
                },
                req.queues.clone(),
                req.max_tasks,
            )
            .await
            .map_err(Error::from)?;
        state
            .workers()
            .polled(&req.worker, &req.queues, now, &leased.tasks);
        record_seen(&state, now);
        let out_of_time = tokio::time::Instant::now() >= wait || rt.inner.is_closing();
        if !leased.tasks.is_empty() || out_of_time {
            let tasks: Vec<Value> = leased.tasks.iter().map(task_json).collect();
            return Ok((StatusCode::OK, axum::Json(json!({ "tasks": tasks }))).into_response());
        }
        let until = match leased.next_expiry {
            Some(end) => {
                // A millisecond past the end: the store leases it only once the lease ended.
                let after = Duration::from_millis(end.saturating_sub(now).max(0) as u64 + 1);
                wait.min(tokio::time::Instant::now() + after)
            }
            None => wait,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            alive = queue_stirred(&mut wakeups, &req.queues) => {
                if !alive {
                    // The store is gone: answer with nothing rather than spin.
                    return Ok((StatusCode::OK, axum::Json(json!({ "tasks": [] })))
                        .into_response());
                }
            }
        }
    }
}

/// `POST /api/v1/tasks/{id}/heartbeat`: the lease now ends `lease_ms` from now.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Segment(id): Segment,
    Body(req): Body<HeartbeatRequest>,
) -> ApiResult {
    check_lease_ms(req.lease_ms)?;
    let rt = state.runtime();
    let now = rt.inner.clock.now_ms();
    let terms = WorkerTerms {
        worker: String::new(),
        now,
        ttl: req.lease_ms as Millis,
    };
    let until = rt
        .inner
        .store
        .heartbeat_task(&id, req.token, terms)
        .await
        .map_err(Error::from)?;
    state.workers().touched(&id, now, Some(until));
    record_seen(&state, now);
    Ok(
        axum::Json(json!({"id": id, "token": req.token, "lease_expires_at": time(until)}))
            .into_response(),
    )
}

async fn finish(state: &AppState, id: &str, token: u64, result: TaskResult) -> ApiResult {
    let rt = state.runtime();
    let now = rt.inner.clock.now_ms();
    let state_name = match &result {
        TaskResult::Completed { .. } => "completed",
        TaskResult::Failed { .. } => "failed",
    };
    rt.inner
        .store
        .finish_task(id, token, result, now)
        .await
        .map_err(Error::from)?;
    state.workers().touched(id, now, None);
    record_seen(state, now);
    Ok(axum::Json(json!({"id": id, "state": state_name})).into_response())
}

/// `POST /api/v1/tasks/{id}/complete`: stores the output and wakes the instance.
pub(crate) async fn complete(
    State(state): State<AppState>,
    Segment(id): Segment,
    Body(req): Body<CompleteRequest>,
) -> ApiResult {
    let output = req.output.to_string();
    finish(&state, &id, req.token, TaskResult::Completed { output }).await
}

/// `POST /api/v1/tasks/{id}/fail`: stores the failure and wakes the instance.
pub(crate) async fn fail(
    State(state): State<AppState>,
    Segment(id): Segment,
    Body(req): Body<FailRequest>,
) -> ApiResult {
    if req.message.len() > MAX_MESSAGE_BYTES || req.message.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "`message` must be at most {MAX_MESSAGE_BYTES} bytes without U+0000 (NUL), got {} \
             bytes",
            req.message.len()
        )));
    }
    let result = TaskResult::Failed {
        message: req.message,
        retryable: req.retryable,
    };
    finish(&state, &id, req.token, result).await
}

/// Every queue that holds a task or that a recent worker (of any node) asks for, by name,
/// with how many connected workers ask for it; and the workers.
pub(crate) async fn overview(
    state: &AppState,
    now: Millis,
) -> ApiResult<(Vec<(QueueStats, u64)>, Vec<WorkerRecord>)> {
    let rt = state.runtime();
    let stats = rt.inner.store.queue_stats(now).await.map_err(Error::from)?;
    let workers = all_workers(state, now).await?;
    let mut by_name: BTreeMap<String, QueueStats> =
        stats.into_iter().map(|s| (s.queue.clone(), s)).collect();
    let mut connected_to: BTreeMap<&str, u64> = BTreeMap::new();
    for w in &workers {
        for q in &w.queues {
            by_name.entry(q.clone()).or_insert_with(|| QueueStats {
                queue: q.clone(),
                ..QueueStats::default()
            });
            if connected(w, now) {
                *connected_to.entry(q.as_str()).or_insert(0) += 1;
            }
        }
    }
    let queues = by_name
        .into_values()
        .map(|s| {
            let n = connected_to.get(s.queue.as_str()).copied().unwrap_or(0);
            (s, n)
        })
        .collect();
    Ok((queues, workers))
}

/// `GET /api/v1/queues`: every queue that holds a task or that a recent worker asks for (each
/// with its `kind`: `task` for step tasks), and the workers this node served recently.
pub(crate) async fn queues(State(state): State<AppState>) -> ApiResult {
    let now = state.runtime().inner.clock.now_ms();
    let (queues, workers) = overview(&state, now).await?;
    let mut queues: Vec<Value> = queues
        .into_iter()
        .map(|(s, workers)| {
            json!({
                "kind": "task",
                "queue": s.queue,
                "waiting": s.waiting,
                "in_flight": s.in_flight,
                "oldest_waiting": s.oldest_waiting.map(time),
                "completed": s.completed,
                "failed": s.failed,
                "finished_last_minute": s.finished_last_minute,
                "workers": workers,
            })
        })
        .collect();
    // Workflow queues (instances waiting to start; see crate::flow) beside the task queues.
    let workflow_queues = state.runtime().workflow_queues().await?;
    queues.extend(workflow_queues.into_iter().map(|q| {
        json!({
            "kind": "workflow",
            "queue": q.queue,
            "waiting": q.queued,
            "in_flight": q.running,
            "oldest_waiting": q.oldest_queued.map(time),
            "limits": super::flow::config_json(&q.config),
        })
    }));
    let workers: Vec<Value> = workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id,
                "queues": w.queues,
                "node": w.node,
                "last_poll": time(w.last_poll),
                "last_heartbeat": w.last_heartbeat.map(time),
                "connected": connected(w, now),
            })
        })
        .collect();
    Ok(axum::Json(json!({"queues": queues, "workers": workers})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_of(id: &str, until: Millis) -> TaskLease {
        TaskLease {
            task: crate::store::task::NewTask {
                id: id.into(),
                queue: "q".into(),
                instance: "i".into(),
                seq: 1,
                attempt: 1,
                step: "s".into(),
                input: "{}".into(),
                idempotency_key: "i/1".into(),
                priority: 0,
                created_at: 0,
                deadline: None,
            },
            token: 1,
            expires_at: until,
        }
    }

    #[test]
    fn a_heartbeat_is_credited_to_the_worker_that_leased_the_task() {
        let w = Workers::default();
        w.polled("w1", &["q".into()], 1_000, &[lease_of("t1", 31_000)]);
        w.touched("t1", 5_000, Some(35_000));
        let listed = w.local(6_000, "n");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "w1");
        assert_eq!(listed[0].last_heartbeat, Some(5_000));
        w.touched("t1", 7_000, None);
        w.touched("t1", 8_000, None); // already forgotten: nothing to credit
        assert_eq!(w.local(9_000, "n")[0].last_heartbeat, Some(7_000));
    }

    #[test]
    fn workers_not_seen_for_a_while_are_forgotten() {
        let w = Workers::default();
        w.polled("old", &["a".into()], 0, &[]);
        w.polled("new", &["b".into()], WORKER_SEEN_FOR, &[]);
        let ids: Vec<String> = w
            .local(WORKER_SEEN_FOR + 1, "n")
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, ["new"]);
    }

    #[test]
    fn memory_is_bounded_however_many_workers_poll() {
        let w = Workers::default();
        for i in 0..(MAX_REMEMBERED + 50) {
            w.polled(&format!("w{i}"), &["q".into()], i as Millis, &[]);
        }
        assert!(w.local(MAX_REMEMBERED as Millis, "n").len() <= MAX_REMEMBERED);
    }

    #[test]
    fn workers_are_recorded_at_most_every_few_seconds_and_only_when_seen() {
        let w = Workers::default();
        assert_eq!(w.due(0, "n"), None, "nothing seen, nothing to record");
        w.polled("w1", &["q".into()], 1_000, &[lease_of("t1", 31_000)]);
        let first = w
            .due(1_000, "n")
            .expect("the first sight is recorded at once");
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].id.as_str(), first[0].node.as_str()), ("w1", "n"));
        w.polled("w1", &["q".into()], 2_000, &[]);
        w.polled("w2", &["q".into()], 3_000, &[]);
        assert_eq!(w.due(3_000, "n"), None, "not again within the interval");
        let next = w
            .due(1_000 + RECORD_WORKERS_EVERY, "n")
            .expect("after the interval");
        let ids: Vec<&str> = next.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w2"]);
        assert_eq!(next[0].last_poll, 2_000);
        assert_eq!(w.due(100_000, "n"), None, "nobody seen since");
    }
}
