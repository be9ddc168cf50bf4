//! Counters and histograms exported in the Prometheus text format (`GET /metrics`).

use crate::store::task::QueueStats;
use crate::store::{Millis, Status, StatusCount, StoreMetrics};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

type Labels = Vec<(&'static str, String)>;

/// (workflow, step) as the addresses and lengths of their `'static` names: hashed as four
/// words, not as text.
type StepKey = (usize, usize, usize, usize);

/// A small multiply-rotate hasher for the metric caches (keys are the program's own names,
/// so flooding is no concern; SipHash showed in profiles of the step path).
#[derive(Default)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fx>>;
/// The final status (`None`: the started counter).
type CounterKey = Option<Status>;

fn step_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The runtime's metrics.
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    started: Family<Labels, Counter>,
    finished: Family<Labels, Counter>,
    step_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    step_retries: Family<Labels, Counter>,
    instances: Family<Labels, Gauge>,
    http: Family<Labels, Counter>,
    /// This node: what it owns, its leases (its id and lease time-to-live are constants in
    /// the registry).
    node_owned: Gauge,
    node_claimed: Counter,
    node_lost: Counter,
    node_heartbeats: Family<Labels, Counter>,
    node_heartbeat_age: Gauge<f64, AtomicU64>,
    /// Task queues, by queue: read from the store when `/metrics` is rendered.
    queue_waiting: Family<Labels, Gauge>,
    queue_in_flight: Family<Labels, Gauge>,
    queue_oldest_age: Family<Labels, Gauge<f64, AtomicU64>>,
    queue_completed: Family<Labels, Counter>,
    queue_failed: Family<Labels, Counter>,
    queue_workers: Family<Labels, Gauge>,
    /// Handles of each (workflow, step)'s histogram and retry counter: a step's hot path
    /// looks them up by two pointers instead of building a label set.
    step_handles: std::sync::RwLock<FastMap<StepKey, (Histogram, Counter)>>,
    /// Started (true) / finished (false, with the status) counters by workflow.
    counters: std::sync::RwLock<FastMap<CounterKey, FastMap<String, Counter>>>,
}

/// What this node is doing now, read when `/metrics` is rendered.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) struct NodeNow {
    /// Instances it drives (owns and has loaded).
    pub(crate) owned: usize,
    /// Seconds since its last successful heartbeat (`None`: none yet).
    pub(crate) heartbeat_age: Option<f64>,
}

impl Metrics {
    /// The runtime's metrics; `node` labels `orch_node_info`, `lease_ttl` is how long its
    /// leases last without a heartbeat (`None`: they never end).
    pub(crate) fn new(
        store: Option<Arc<StoreMetrics>>,
        node: &str,
        lease_ttl: Option<std::time::Duration>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let started = Family::<Labels, Counter>::default();
        let finished = Family::<Labels, Counter>::default();
        let step_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(step_histogram);
        let step_retries = Family::<Labels, Counter>::default();
        let instances = Family::<Labels, Gauge>::default();
        let http = Family::<Labels, Counter>::default();
        registry.register(
            "orch_instances_started",
            "Instances started, by workflow",
            started.clone(),
        );
        registry.register(
            "orch_instances_finished",
            "Instances that reached a final status, by workflow and status",
            finished.clone(),
        );
        registry.register(
            "orch_step_duration_seconds",
            "Time from a step's first attempt to its checkpointed outcome, by workflow and step",
            step_seconds.clone(),
        );
        registry.register(
            "orch_step_retries",
            "Failed step attempts that were retried, by workflow and step",
            step_retries.clone(),
        );
        registry.register(
            "orch_instances",
            "Instances in the store by status (running and suspended: not yet finished)",
            instances.clone(),
        );
        registry.register(
            "orch_http_requests",
            "HTTP API requests, by route and status code",
            http.clone(),
        );
        let node_info = Family::<Labels, Gauge>::default();
        node_info
            .get_or_create(&vec![("node", node.to_string())])
            .set(1);
        registry.register(
            "orch_node_info",
            "This runtime's node id (the node label; always 1), as `orch nodes` shows it",
            node_info.clone(),
        );
        let node_owned = Gauge::default();
        registry.register(
            "orch_node_instances_owned",
            "Instances this node drives now (owns under a lease and has loaded)",
            node_owned.clone(),
        );
        let node_claimed = Counter::default();
        registry.register(
            "orch_node_leases_claimed",
            "Due instances this node claimed and started driving (woken by a timer, signal, \
             child or cancellation; retried; left running by a node that stopped; taken over \
             after a lease ran out)",
            node_claimed.clone(),
        );
        let node_lost = Counter::default();
        registry.register(
            "orch_node_leases_lost",
            "Instances this node stopped driving because its lease was gone (another node \
             claimed them after this one missed its heartbeats, or a write was fenced out)",
            node_lost.clone(),
        );
        let node_heartbeats = Family::<Labels, Counter>::default();
        registry.register(
            "orch_node_heartbeats",
            "Lease renewals of this node, by result (ok, failed)",
            node_heartbeats.clone(),
        );
        let node_heartbeat_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "orch_node_heartbeat_age_seconds",
            "Seconds since this node's last successful heartbeat: past the lease time-to-live, \
             other nodes may take its instances over",
            node_heartbeat_age.clone(),
        );
        let node_lease_ttl = Gauge::<f64, AtomicU64>::default();
        node_lease_ttl.set(lease_ttl.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        registry.register(
            "orch_node_lease_ttl_seconds",
            "How long this node's leases last without a heartbeat (+Inf: they never end)",
            node_lease_ttl.clone(),
        );
        let queue_waiting = Family::<Labels, Gauge>::default();
        registry.register(
            "orch_queue_waiting",
            "Tasks waiting for a worker, by queue (pending, or leased with an ended lease)",
            queue_waiting.clone(),
        );
        let queue_in_flight = Family::<Labels, Gauge>::default();
        registry.register(
            "orch_queue_in_flight",
            "Tasks leased to a worker now, by queue",
            queue_in_flight.clone(),
        );
        let queue_oldest_age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "orch_queue_oldest_waiting_seconds",
            "Age of the oldest waiting task, by queue (0 when none waits)",
            queue_oldest_age.clone(),
        );
        let queue_completed = Family::<Labels, Counter>::default();
        registry.register(
            "orch_queue_tasks_completed",
            "Tasks workers completed, by queue (all of the store's, as of this node's last look)",
            queue_completed.clone(),
        );
        let queue_failed = Family::<Labels, Counter>::default();
        registry.register(
            "orch_queue_tasks_failed",
            "Tasks workers failed, by queue (all of the store's, as of this node's last look)",
            queue_failed.clone(),
        );
        let queue_workers = Family::<Labels, Gauge>::default();
        registry.register(
            "orch_queue_workers",
            "Workers connected (seen by any node in the last 90 s) that serve the queue",
            queue_workers.clone(),
        );
        if let Some(store) = store {
            registry.register(
                "orch_store_commit_seconds",
                "Duration of one store write transaction (group commit)",
                store.commit_seconds.clone(),
            );
            registry.register(
                "orch_store_batch_size",
                "Commands written per store transaction",
                store.batch_size.clone(),
            );
        }
        Metrics {
            registry: Mutex::new(registry),
            started,
            finished,
            step_seconds,
            step_retries,
            instances,
            http,
            node_owned,
            node_claimed,
            node_lost,
            node_heartbeats,
            node_heartbeat_age,
            queue_waiting,
            queue_in_flight,
            queue_oldest_age,
            queue_completed,
            queue_failed,
            queue_workers,
            step_handles: std::sync::RwLock::new(FastMap::default()),
            counters: std::sync::RwLock::new(FastMap::default()),
        }
    }

    pub(crate) fn started(&self, workflow: &str) {
        self.counter(&self.started, workflow, None).inc();
    }

    pub(crate) fn finished(&self, workflow: &str, status: Status) {
        self.counter(&self.finished, workflow, Some(status)).inc();
    }

    /// The counter of `family` for (workflow, status), from a cache keyed without
    /// allocating.
    fn counter(
        &self,
        family: &Family<Labels, Counter>,
        workflow: &str,
        status: Option<Status>,
    ) -> Counter {
        // Started counters have no status and finished ones always one: the status tells the
        // two families apart.
        let key = status;
        if let Some(c) = self
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(|by_workflow| by_workflow.get(workflow))
        {
            return c.clone();
        }
        let mut labels = vec![("workflow", workflow.to_string())];
        if let Some(st) = status {
            labels.push(("status", st.as_str().to_string()));
        }
        let c = family.get_or_create(&labels).clone();
        self.counters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .insert(workflow.to_string(), c.clone());
        c
    }

    pub(crate) fn step(
        &self,
        workflow: &'static str,
        step: &'static str,
        seconds: f64,
        retries: u32,
    ) {
        let key = (
            workflow.as_ptr() as usize,
            workflow.len(),
            step.as_ptr() as usize,
            step.len(),
        );
        let cached = self
            .step_handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let (histogram, counter) = match cached {
            Some(h) => h,
            None => {
                let labels = vec![
                    ("workflow", workflow.to_string()),
                    ("step", step.to_string()),
                ];
                let h = (
                    self.step_seconds.get_or_create(&labels).clone(),
                    self.step_retries.get_or_create(&labels).clone(),
                );
                self.step_handles
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, h.clone());
                h
            }
        };
        histogram.observe(seconds);
        if retries > 0 {
            counter.inc_by(u64::from(retries));
        }
    }

    /// This node claimed `n` instances.
    pub(crate) fn claimed(&self, n: usize) {
        self.node_claimed.inc_by(n as u64);
    }

    /// This node lost its lease on an instance.
    pub(crate) fn lost(&self) {
        self.node_lost.inc();
    }

    /// A heartbeat of this node ended (`ok`: the store took it).
    pub(crate) fn heartbeat(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.node_heartbeats
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn http_request(&self, route: &str, code: u16) {
        self.http
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
    }

    /// Sets the task queues' gauges and counters from the store's `stats` at `now`, with how
    /// many connected workers serve each queue.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn queues(&self, stats: &[(QueueStats, u64)], now: Millis) {
        for (s, workers) in stats {
            let labels = vec![("queue", s.queue.clone())];
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.queue_waiting
                .get_or_create(&labels)
                .set(gauge(s.waiting));
            self.queue_in_flight
                .get_or_create(&labels)
                .set(gauge(s.in_flight));
            let age = s
                .oldest_waiting
                .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
            self.queue_oldest_age.get_or_create(&labels).set(age);
            // Counters only go up: add what the store counts beyond what was shown.
            for (family, total) in [
                (&self.queue_completed, s.completed),
                (&self.queue_failed, s.failed),
            ] {
                let c = family.get_or_create(&labels);
                let shown = c.get();
                if total > shown {
                    c.inc_by(total - shown);
                }
            }
            self.queue_workers
                .get_or_create(&labels)
                .set(gauge(*workers));
        }
    }

    /// The text exposition, with the instance gauges set from `counts` (read from the store,
    /// so they hold across restarts) and the node's from `node`.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn render(&self, counts: &[StatusCount], node: NodeNow) -> String {
        self.node_owned
            .set(i64::try_from(node.owned).unwrap_or(i64::MAX));
        self.node_heartbeat_age
            .set(node.heartbeat_age.unwrap_or(f64::NAN));
        let mut by_status = std::collections::BTreeMap::new();
        for c in counts {
            *by_status.entry(c.status.as_str()).or_insert(0i64) +=
                i64::try_from(c.count).unwrap_or(i64::MAX);
        }
        for st in Status::ALL {
            self.instances
                .get_or_create(&vec![("status", st.as_str().to_string())])
                .set(by_status.get(st.as_str()).copied().unwrap_or(0));
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
