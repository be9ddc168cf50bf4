//! Counters and histograms exported in the Prometheus text format (`GET /metrics`).

use crate::store::{Status, StatusCount, StoreMetrics};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
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
    /// Handles of each (workflow, step)'s histogram and retry counter: a step's hot path
    /// looks them up by two pointers instead of building a label set.
    step_handles: std::sync::RwLock<FastMap<StepKey, (Histogram, Counter)>>,
    /// Started (true) / finished (false, with the status) counters by workflow.
    counters: std::sync::RwLock<FastMap<CounterKey, FastMap<String, Counter>>>,
}

impl Metrics {
    pub(crate) fn new(store: Option<Arc<StoreMetrics>>) -> Metrics {
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

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn http_request(&self, route: &str, code: u16) {
        self.http
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
    }

    /// The text exposition, with the instance gauges set from `counts` (read from the store,
    /// so they hold across restarts).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn render(&self, counts: &[StatusCount]) -> String {
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
