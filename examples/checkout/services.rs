//! The five services the checkout talks to, each a tiny axum server (on loopback unless told
//! otherwise).
//!
//! Every service deduplicates requests by their `idempotency-key` header: the first request
//! with a key is applied and its response remembered; a repeat gets the remembered response
//! and changes nothing. Every request is appended to the shared service log, one JSON object
//! a line ([`LogEntry`]), written with a single `write` call so a crash never leaves half a
//! line behind another. On startup the services reload their memory of keys from that log,
//! so deduplication survives a restart of the whole example.
//!
//! Several orchestrator nodes can share one set of services (`checkout --services-only` runs
//! them alone and prints [`endpoints_value`]; `checkout --services VALUE` uses them, see
//! [`parse_endpoints`]), so one log and one idempotency memory serve the whole cluster.

use axum::Json;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The card number the payment service always declines (HTTP 402).
pub const DECLINED_CARD: &str = "4000-0000-0000-0002";

/// Prices in cents of what the shop sells.
pub const CATALOG: [(&str, u64); 5] = [
    ("mug", 1_299),
    ("tshirt", 2_499),
    ("sticker-pack", 499),
    ("hoodie", 5_999),
    ("notebook", 899),
];

/// Names of the services, in call order.
pub const NAMES: [&str; 5] = ["orders", "inventory", "payment", "shipping", "analytics"];

/// One line of the service log: one request a service received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogEntry {
    /// Which service received the request.
    pub service: String,
    /// The order it was about.
    pub order: String,
    /// Its idempotency key (`<instance>/<seq>`).
    pub key: String,
    /// True when this request changed the service's state; false when it was a duplicate of
    /// an earlier key (or refused, see `op`).
    pub applied: bool,
    /// What was done: `create`, `reserve`, `release`, `charge`, `decline`, `ship`, `event`,
    /// or `unavailable` when the service was down and refused the request.
    pub op: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The body answered (replayed verbatim for a duplicate key).
    pub response: Value,
    /// The orchestrator node that sent the request (its `orch-node` header), if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Reads a service log; unparsable lines (there should be none) are skipped.
pub fn read_log(path: &Path) -> io::Result<Vec<LogEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The append-only log shared by all services.
struct ServiceLog {
    file: Mutex<File>,
}

impl ServiceLog {
    /// Opens (creating) the log for appending. If a crash left a last line without its
    /// newline, ends it so the next line starts cleanly.
    fn open(path: &Path) -> io::Result<ServiceLog> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(ServiceLog {
            file: Mutex::new(file),
        })
    }

    fn append(&self, entry: &LogEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = lock(&self.file);
        // One write of the whole line: O_APPEND keeps lines whole and in order.
        file.write_all(&line)?;
        file.flush()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a request does to a service.
struct Effect {
    op: &'static str,
    status: StatusCode,
    body: Value,
    /// False when the service refused the request without changing anything (it is down):
    /// the key is not remembered, so a retry can still succeed.
    applies: bool,
}

impl Effect {
    fn ok(op: &'static str, body: Value) -> Effect {
        Effect {
            op,
            status: StatusCode::OK,
            body,
            applies: true,
        }
    }

    fn refuse(status: StatusCode, message: &str) -> Effect {
        Effect {
            op: "unavailable",
            status,
            body: json!({ "error": message }),
            applies: false,
        }
    }
}

/// A remembered response.
struct Recorded {
    op: String,
    status: u16,
    body: Value,
}

/// Request counters of one service during this process.
#[derive(Default)]
pub struct Counters {
    /// Requests received.
    pub calls: AtomicU64,
    /// Requests answered from memory (duplicate idempotency key).
    pub deduplicated: AtomicU64,
}

struct Service {
    name: &'static str,
    delay: Duration,
    analytics_down: bool,
    /// The payment service refuses every charge while this is set (`--payment-outage`; ended
    /// by `POST /admin/outage {"down": false}`).
    payment_outage: Arc<AtomicBool>,
    log: Arc<ServiceLog>,
    seen: Mutex<HashMap<String, Recorded>>,
    counters: Arc<Counters>,
}

type Apply = fn(&Service, &Value) -> Effect;

impl Service {
    /// Applies a request once per key, logging it; returns the answer.
    fn process(&self, request: &Request, body: &Value, apply: Apply) -> (StatusCode, Value) {
        let Request { key, order, node } = request;
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        // The lock spans check, apply and log, so two concurrent requests with one key (a
        // retry racing a slow original) cannot both apply.
        let mut seen = lock(&self.seen);
        let (entry, answer) = match seen.get(key.as_str()) {
            Some(rec) => {
                self.counters.deduplicated.fetch_add(1, Ordering::Relaxed);
                let entry = LogEntry {
                    service: self.name.to_string(),
                    order: order.to_string(),
                    key: key.to_string(),
                    applied: false,
                    op: rec.op.clone(),
                    status: rec.status,
                    response: rec.body.clone(),
                    node: node.clone(),
                };
                let status =
                    StatusCode::from_u16(rec.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (entry, (status, rec.body.clone()))
            }
            None => {
                let effect = apply(self, body);
                let entry = LogEntry {
                    service: self.name.to_string(),
                    order: order.to_string(),
                    key: key.to_string(),
                    applied: effect.applies,
                    op: effect.op.to_string(),
                    status: effect.status.as_u16(),
                    response: effect.body.clone(),
                    node: node.clone(),
                };
                (entry, (effect.status, effect.body))
            }
        };
        // The log is the service's durable state: an effect counts once it is logged.
        if let Err(e) = self.log.append(&entry) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": format!("{}: cannot write the log: {e}", self.name) }),
            );
        }
        if entry.applied {
            seen.insert(
                entry.key,
                Recorded {
                    op: entry.op,
                    status: entry.status,
                    body: entry.response,
                },
            );
        }
        answer
    }
}

/// Who asks for what: the request's idempotency key, its order and the calling node.
struct Request {
    key: String,
    order: String,
    node: Option<String>,
}

async fn handle(
    svc: Arc<Service>,
    apply: Apply,
    headers: HeaderMap,
    body: Value,
) -> (StatusCode, Json<Value>) {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "missing idempotency-key header" })),
        );
    };
    let request = Request {
        key,
        order: body["order"].as_str().unwrap_or("?").to_string(),
        node: headers
            .get("orch-node")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    };
    // Half the delay before the effect and half after it: an interrupted run can die both
    // before a request is applied and after it was applied but before the answer arrived.
    let before = svc.delay / 2;
    tokio::time::sleep(before).await;
    let (status, answer) = svc.process(&request, &body, apply);
    tokio::time::sleep(svc.delay - before).await;
    (status, Json(answer))
}

fn str_field<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field].as_str().unwrap_or("")
}

fn create_order(_: &Service, body: &Value) -> Effect {
    let order = str_field(body, "order");
    let mut total = 0;
    for item in body["items"].as_array().into_iter().flatten() {
        let sku = str_field(item, "sku");
        let qty = item["qty"].as_u64().unwrap_or(0);
        match CATALOG.iter().find(|(s, _)| *s == sku) {
            Some((_, price)) => total += price * qty,
            None => {
                return Effect {
                    op: "create",
                    status: StatusCode::NOT_FOUND,
                    body: json!({ "error": format!("unknown product `{sku}`") }),
                    applies: true,
                };
            }
        }
    }
    let number = order.trim_start_matches("order-");
    Effect::ok(
        "create",
        json!({ "order_ref": format!("ORD-{number:0>5}"), "total_cents": total }),
    )
}

fn reserve(_: &Service, body: &Value) -> Effect {
    let order = str_field(body, "order");
    Effect::ok(
        "reserve",
        json!({ "reservation_id": format!("RES-{order}") }),
    )
}

fn release(_: &Service, body: &Value) -> Effect {
    let reservation = str_field(body, "reservation_id");
    Effect::ok("release", json!({ "released": reservation }))
}

fn charge(svc: &Service, body: &Value) -> Effect {
    if svc.payment_outage.load(Ordering::SeqCst) {
        return Effect::refuse(StatusCode::SERVICE_UNAVAILABLE, "payment service outage");
    }
    let order = str_field(body, "order");
    if str_field(body, "card") == DECLINED_CARD {
        return Effect {
            op: "decline",
            status: StatusCode::PAYMENT_REQUIRED,
            body: json!({ "error": "card declined" }),
            applies: true,
        };
    }
    let amount = body["amount_cents"].as_u64().unwrap_or(0);
    Effect::ok(
        "charge",
        json!({ "charge_id": format!("CH-{order}"), "amount_cents": amount }),
    )
}

fn ship(_: &Service, body: &Value) -> Effect {
    let order = str_field(body, "order");
    Effect::ok("ship", json!({ "tracking": format!("TRK-{order}") }))
}

/// Whether the analytics service is down for `order` unless `--analytics-down` takes it
/// down for all: a deterministic slice of orders (every fifth, from the fourth) meets an
/// outage.
pub fn analytics_down_for(order: &str) -> bool {
    order
        .trim_start_matches("order-")
        .parse::<u64>()
        .is_ok_and(|n| n % 5 == 4)
}

fn event(svc: &Service, body: &Value) -> Effect {
    if svc.analytics_down || analytics_down_for(str_field(body, "order")) {
        return Effect::refuse(StatusCode::SERVICE_UNAVAILABLE, "analytics is down");
    }
    Effect::ok("event", json!({ "recorded": str_field(body, "event") }))
}

/// How to start the services.
pub struct Config<'a> {
    /// The service log (created if missing, reloaded if present).
    pub log: &'a Path,
    /// The address they listen on (each on a free port).
    pub bind: IpAddr,
    /// Added to every request: half before the effect, half after.
    pub delay: Duration,
    /// The analytics service refuses every request.
    pub analytics_down: bool,
    /// The payment service refuses every charge until told otherwise.
    pub payment_outage: bool,
}

/// The running services.
pub struct Running {
    /// Base URL of each service, in [`NAMES`] order.
    pub urls: Vec<String>,
    /// Request counters of each service, in [`NAMES`] order.
    pub counters: Vec<Arc<Counters>>,
    /// Keys remembered from earlier runs.
    pub reloaded_keys: usize,
}

impl Running {
    /// The requests each service served so far (`orders 12 · inventory 12 · …`), and how
    /// many of them were answered from the idempotency memory.
    pub fn served(&self) -> (String, u64) {
        let calls: Vec<String> = NAMES
            .iter()
            .zip(&self.counters)
            .map(|(name, c)| format!("{name} {}", c.calls.load(Ordering::Relaxed)))
            .collect();
        let dedup = self
            .counters
            .iter()
            .map(|c| c.deduplicated.load(Ordering::Relaxed))
            .sum();
        (calls.join(" · "), dedup)
    }
}

/// Starts the five services on `config.bind`, each on a port of its own.
pub async fn start(config: Config<'_>) -> io::Result<Running> {
    let earlier = read_log(config.log)?;
    let log = Arc::new(ServiceLog::open(config.log)?);
    let payment_outage = Arc::new(AtomicBool::new(config.payment_outage));
    let mut running = Running {
        urls: Vec::new(),
        counters: Vec::new(),
        reloaded_keys: 0,
    };
    for name in NAMES {
        let mut seen = HashMap::new();
        for e in earlier.iter().filter(|e| e.service == name && e.applied) {
            seen.insert(
                e.key.clone(),
                Recorded {
                    op: e.op.clone(),
                    status: e.status,
                    body: e.response.clone(),
                },
            );
        }
        running.reloaded_keys += seen.len();
        let counters = Arc::new(Counters::default());
        let svc = Arc::new(Service {
            name,
            delay: config.delay,
            analytics_down: config.analytics_down,
            payment_outage: payment_outage.clone(),
            log: log.clone(),
            seen: Mutex::new(seen),
            counters: counters.clone(),
        });
        let routes: &[(&str, Apply)] = match name {
            "orders" => &[("/orders", create_order)],
            "inventory" => &[("/reservations", reserve), ("/releases", release)],
            "payment" => &[("/charges", charge)],
            "shipping" => &[("/shipments", ship)],
            _ => &[("/events", event)],
        };
        let mut router = Router::new();
        for &(path, apply) in routes {
            let svc = svc.clone();
            router = router.route(
                path,
                post(move |headers: HeaderMap, Json(body): Json<Value>| {
                    handle(svc.clone(), apply, headers, body)
                }),
            );
        }
        if name == "payment" {
            let outage = payment_outage.clone();
            router = router.route(
                "/admin/outage",
                post(move |Json(body): Json<Value>| async move {
                    let down = body["down"].as_bool().unwrap_or(false);
                    outage.store(down, Ordering::SeqCst);
                    Json(json!({ "down": down }))
                }),
            );
        }
        let listener = tokio::net::TcpListener::bind((config.bind, 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("service {name} stopped: {e}");
            }
        });
        running.urls.push(format!("http://{addr}"));
        running.counters.push(counters);
    }
    Ok(running)
}

/// The services' base URLs as one line to paste after `--services`:
/// `orders=http://127.0.0.1:41001,inventory=…,payment=…,shipping=…,analytics=…` (`urls` in
/// [`NAMES`] order). No character in it needs quoting in a shell.
pub fn endpoints_value(urls: &[String]) -> String {
    NAMES
        .iter()
        .zip(urls)
        .map(|(name, url)| format!("{name}={url}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a `--services` value (see [`endpoints_value`]): `NAME=URL` for each of the five
/// services, comma-separated, in any order. Returns the base URLs in [`NAMES`] order, or what
/// is wrong with the value.
pub fn parse_endpoints(value: &str) -> Result<Vec<String>, String> {
    let expected = "expected orders=URL,inventory=URL,payment=URL,shipping=URL,analytics=URL \
                    (what `checkout --services-only` prints after `services: `)";
    let mut urls: Vec<Option<String>> = vec![None; NAMES.len()];
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(format!("`{part}` is not NAME=URL; {expected}"));
        };
        let name = name.trim();
        let Some(slot) = NAMES.iter().position(|n| *n == name) else {
            return Err(format!(
                "`{name}` is not one of the services ({}); {expected}",
                NAMES.join(", ")
            ));
        };
        if urls[slot].is_some() {
            return Err(format!("`{name}` is given twice; {expected}"));
        }
        urls[slot] = Some(base_url(name, url.trim())?);
    }
    let missing: Vec<&str> = NAMES
        .iter()
        .zip(&urls)
        .filter(|(_, url)| url.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(format!("no URL for {}; {expected}", missing.join(", ")));
    }
    Ok(urls.into_iter().flatten().collect())
}

/// `url` as a service's base URL `http://host:port` (or https; the port always written),
/// refusing a path, a query, a fragment or credentials.
fn base_url(name: &str, url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!("the URL of `{name}`, `{url}`, is not a URL ({e}); e.g. http://10.0.0.5:41001")
    })?;
    let plain = matches!(parsed.scheme(), "http" | "https")
        && parsed.host().is_some()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.path() == "/"
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !plain {
        return Err(format!(
            "the URL of `{name}`, `{url}`, is not a service's base URL: give \
             http://HOST:PORT, without path, query, fragment or user"
        ));
    }
    match (parsed.host_str(), parsed.port_or_known_default()) {
        (Some(host), Some(port)) => Ok(format!("{}://{host}:{port}", parsed.scheme())),
        _ => Err(format!("the URL of `{name}`, `{url}`, names no host")),
    }
}
