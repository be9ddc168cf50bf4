//! The checkout example: a durable checkout across four microservices, run for a batch of
//! orders, crash-safe.
//!
//! The example starts five tiny HTTP services on loopback (orders, inventory, payment,
//! shipping, and analytics, which is down for some orders) and checks out a batch of orders
//! with the `checkout` workflow: create the order, reserve inventory, charge the card (a
//! declined card releases the reservation), ship, and record analytics in the background.
//! Progress is checkpointed in `./orch.db`: kill the process at any moment, run it again, and
//! it resumes the unfinished orders without starting any order twice or applying any
//! service call twice (services deduplicate by the step's idempotency key, and remember
//! their keys across restarts through their log).
//!
//! ```text
//! cargo run --release --example checkout                        # 36 orders on ./orch.db
//! cargo run --release --example checkout -- --step-delay-ms 300 # slow: try Ctrl-C, rerun
//! cargo run --release --example checkout -- --orders 100 --json --db /tmp/x.db
//! cargo run --release --example checkout -- --postgres postgres://postgres@127.0.0.1:5432/test
//! RUST_LOG=orch_runtime=debug cargo run --example checkout      # the runtime's own logs
//! ```
//!
//! On several nodes: one process runs only the services and prints where they are; every
//! node runs the same batch against one store, using those services. Each node starts (or
//! finds) the same orders, drives those it owns, takes over those of a node that died once
//! that node's lease has run out, and prints the summary once every order is final.
//!
//! ```text
//! checkout --services-only                  # prints `services: orders=http://…,…`
//! checkout --postgres URL --node n1 --services orders=http://…,…   # and n2, n3 alike
//! ```
//!
//! With a payment worker: `--payment-queue` charges every card through the `payments` queue
//! instead of in this process. This node serves no queue itself; it prints the command that
//! starts a worker against its HTTP API, and orders wait at "charging payment" until one runs.
//! The task carries what the worker needs (the payment service's URL, the charge, the
//! idempotency key), so a worker in any language can do it.
//!
//! ```text
//! checkout --payment-queue --http 127.0.0.1:8080   # prints the worker's command, then waits
//! python3 examples/workers/python/payment_worker.py --url http://127.0.0.1:8080/
//! ```
//!
//! The runtime's and the HTTP server's logs go to stderr, filtered by `RUST_LOG` (default:
//! warnings and errors only).
//!
//! Every request a service receives is appended to the service log (`--service-log`,
//! default `<db>.services.log`), one JSON object a line:
//! `{"service":"payment","order":"order-3","key":"order-3/6","applied":true,"op":"charge",…}`
//! with `applied` false for a deduplicated (or refused) request.

mod display;
mod services;
mod workflow;

use clap::Parser;
use orch_runtime::prelude::*;
use orch_runtime::store::NodeId;
use orch_runtime::store::postgres::PostgresOptions;
use orch_runtime::{InstanceRecord, ListFilter};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use display::{OrderState, Progress};
use workflow::{Checkout, CheckoutError, Order, Receipt};

/// Checks out a batch of orders durably, across four HTTP microservices.
#[derive(Parser, Debug)]
#[command(name = "checkout")]
struct Args {
    /// How many orders to check out (`order-1` … `order-N`; every 7th card is declined).
    #[arg(long, default_value_t = 36)]
    orders: u64,
    /// The orch database; a later run on the same file resumes an earlier one. Several runs
    /// (nodes, see `--node`) may share it at once.
    #[arg(long, default_value = "orch.db")]
    db: PathBuf,
    /// Use PostgreSQL at this URL (schema `orch`, or `--schema`) in place of the SQLite file
    /// `--db` (which then only names the default service log).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The PostgreSQL schema to use (created when missing; default `orch`).
    #[arg(long, value_name = "NAME", requires = "postgres")]
    schema: Option<String>,
    /// This run's node id: every node sharing the store needs its own (default: host name,
    /// process id and a random suffix). A run started again under the id of one that was
    /// killed takes its orders back at once.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// How long this node's hold on the orders it drives outlasts its last heartbeat: other
    /// nodes take over the orders of a node that died this long after it stopped renewing
    /// (default 10000, at least 100).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..))]
    lease_ms: Option<u64>,
    /// Run only the five services (for nodes started with `--services`): prints one line
    /// `services: VALUE` on stdout, then serves until Ctrl-C or SIGTERM.
    #[arg(long, conflicts_with_all = [
        "services", "postgres", "schema", "node", "lease_ms", "json", "serve", "http",
        "no_http", "concurrency", "orders", "payment_queue",
    ])]
    services_only: bool,
    /// With `--services-only`: the address the services listen on and announce (default
    /// 127.0.0.1); for nodes on other machines, an address of this machine they can reach.
    #[arg(long, value_name = "IP", requires = "services_only")]
    bind: Option<IpAddr>,
    /// Use the services another process runs (VALUE is what `checkout --services-only`
    /// printed after `services: `) instead of starting them here.
    #[arg(long, value_name = "VALUE", conflicts_with_all = [
        "service_log", "step_delay_ms", "analytics_down", "payment_outage",
    ])]
    services: Option<String>,
    /// Where the services log every request (default: `<db>.services.log`).
    #[arg(long)]
    service_log: Option<PathBuf>,
    /// Print only one JSON object at the end: counts by status and each order's status.
    #[arg(long)]
    json: bool,
    /// Slow every service call down by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    step_delay_ms: u64,
    /// How many orders are in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Take the analytics service down for every order (checkouts must still complete).
    #[arg(long)]
    analytics_down: bool,
    /// Start with the payment service down (charges fail with 503) until
    /// `POST <payment url>/admin/outage {"down": false}`; then retry the failed orders from
    /// the UI.
    #[arg(long)]
    payment_outage: bool,
    /// Where the web UI and HTTP API listen (a free port if this one is taken).
    #[arg(long, default_value = DEFAULT_HTTP)]
    http: String,
    /// Do not start the web UI and HTTP API.
    #[arg(long, conflicts_with = "http")]
    no_http: bool,
    /// Keep running after the batch (serving the UI and resuming retried orders) until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Charge the cards through the `payments` queue: each charge is a task that a payment
    /// worker serves over the HTTP API (e.g. `python3 examples/workers/python/payment_worker.py
    /// --url URL`, URL printed at start), not this process. Needs the HTTP server (not
    /// `--no-http`). Orders started earlier keep charging the way they were started.
    #[arg(long)]
    payment_queue: bool,
}

const DEFAULT_HTTP: &str = "127.0.0.1:8080";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where no `RUST_LOG` is set: warnings and errors only (the server's refused requests, a
/// store that fails), so the example's own output stays readable.
const DEFAULT_LOG: &str = "warn";

#[tokio::main]
async fn main() -> ExitCode {
    // The runtime and its HTTP server report through `tracing`: on stderr, so `--json` output
    // on stdout stays clean. `RUST_LOG=orch_runtime=debug` and the like override the default.
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => tracing_subscriber::EnvFilter::try_new(&spec)
            .unwrap_or_else(|e| {
                eprintln!(
                    "checkout: RUST_LOG={spec:?} is not a log filter ({e}); using {DEFAULT_LOG:?}"
                );
                tracing_subscriber::EnvFilter::new(DEFAULT_LOG)
            }),
        _ => tracing_subscriber::EnvFilter::new(DEFAULT_LOG),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("checkout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The final state of one order.
struct Outcome {
    status: Status,
    /// Why it failed, if it did.
    reason: Option<String>,
}

/// Where the services log every request.
fn service_log(args: &Args) -> PathBuf {
    args.service_log.clone().unwrap_or_else(|| {
        let mut p = args.db.clone().into_os_string();
        p.push(".services.log");
        PathBuf::from(p)
    })
}

/// Starts the services in this process.
async fn start_services(args: &Args, bind: IpAddr) -> Result<services::Running, BoxError> {
    let log_path = service_log(args);
    services::start(services::Config {
        log: &log_path,
        bind,
        delay: Duration::from_millis(args.step_delay_ms),
        analytics_down: args.analytics_down,
        payment_outage: args.payment_outage,
    })
    .await
    .map_err(|e| {
        format!(
            "cannot start the services on {bind} (log {}): {e}",
            log_path.display()
        )
        .into()
    })
}

/// `--services-only`: the services alone, for nodes elsewhere, until Ctrl-C or SIGTERM.
async fn serve_services(args: &Args) -> Result<ExitCode, BoxError> {
    let bind = args.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    if bind.is_unspecified() {
        return Err(format!(
            "--bind {bind}: the services announce the address they listen on, so give one \
             the nodes can reach this machine by (e.g. its address on their network), not {bind}"
        )
        .into());
    }
    let services = start_services(args, bind).await?;
    // The one line on stdout: what nodes pass to --services.
    println!("services: {}", services::endpoints_value(&services.urls));
    eprintln!(
        "checkout: the five services are up for nodes started with --services (service log {}, \
         {} keys remembered from earlier runs); Ctrl-C or SIGTERM stops them",
        service_log(args).display(),
        services.reloaded_keys
    );
    stop_requested().await;
    let (calls, dedup) = services.served();
    eprintln!(
        "checkout: services stopped; requests served: {calls} ({dedup} answered from the \
         idempotency memory)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_requested() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(args: Args) -> Result<ExitCode, BoxError> {
    if args.services_only {
        return serve_services(&args).await;
    }
    if args.payment_queue && args.no_http {
        let why = "--payment-queue: payment workers lease their tasks through this node's HTTP \
                   API, so it needs the HTTP server: drop --no-http (and give --http ADDR to \
                   choose where it listens)";
        return Err(why.into());
    }
    let live = !args.json && std::io::stdout().is_terminal();
    let quiet = args.json;
    let log_path = service_log(&args);
    let node = match &args.node {
        Some(id) => NodeId::new(id.clone()).map_err(|e| format!("--node: {e}"))?,
        None => NodeId::generate(),
    };

    // Services first, then the runtime: building it resumes unfinished orders at once, and
    // their steps need the services. With --services they run in another process, shared
    // by every node.
    let (services, urls) = match &args.services {
        Some(value) => {
            let urls = services::parse_endpoints(value).map_err(|e| format!("--services: {e}"))?;
            (None, urls)
        }
        None => {
            let running = start_services(&args, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
            let urls = running.urls.clone();
            (Some(running), urls)
        }
    };
    workflow::connect(
        services::NAMES.into_iter().zip(urls.clone()).collect(),
        node.as_str(),
    )?;
    let rt = open_runtime(&args, node).await?;
    let say = |line: String| {
        // With --json, stdout holds only the JSON result.
        if quiet {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if let Some(url) = rt.http_url() {
        say(format!("orch UI: {url}"));
    }
    say(format!("payment service: {}", urls[2]));

    let ids: Vec<String> = (1..=args.orders).map(|n| format!("order-{n}")).collect();
    let before = records(&rt).await?;
    let existing: Vec<&InstanceRecord> = ids.iter().filter_map(|id| before.get(id)).collect();
    let resumed = existing.iter().filter(|r| !r.status.is_final()).count();
    if !quiet && services.is_none() {
        // One node of several, with the services elsewhere.
        let store = match (&args.postgres, &args.schema) {
            (Some(_), schema) => {
                format!("PostgreSQL schema {}", schema.as_deref().unwrap_or("orch"))
            }
            (None, _) => format!("db {}", args.db.display()),
        };
        println!(
            "checkout: {} orders · node {} · {store} · services of another process",
            args.orders,
            rt.node_id(),
        );
        let at: Vec<String> = urls
            .iter()
            .zip(services::NAMES)
            .map(|(url, name)| format!("{name} {url}"))
            .collect();
        println!("services at {}", at.join(" · "));
        if !existing.is_empty() {
            println!(
                "  {} of these orders exist already (started by another node or an earlier run): \
                 {} finished, {} in flight",
                existing.len(),
                existing.len() - resumed,
                resumed
            );
        }
    } else if !quiet {
        println!(
            "checkout: {} orders · db {} · service log {}",
            args.orders,
            args.db.display(),
            log_path.display(),
        );
        let ports: Vec<String> = urls
            .iter()
            .zip(services::NAMES)
            .map(|(url, name)| format!("{name} {}", url.trim_start_matches("http://127.0.0.1")))
            .collect();
        println!("services on 127.0.0.1: {}", ports.join(" · "));
        if !existing.is_empty() {
            println!(
                "  this db already has {} of these orders: {} finished, {} resumed where they stopped",
                existing.len(),
                existing.len() - resumed,
                resumed
            );
        }
    }

    if args.payment_queue {
        // (--no-http was refused above, so the server runs.)
        let url = rt.http_url().unwrap_or_default();
        say(format!(
            "payment queue: this node charges no card itself; orders wait at `{}` for a \
             payment worker. Start one (or several) with:\n  \
             python3 examples/workers/python/payment_worker.py --url {url}",
            workflow::PHASES[2]
        ));
    }
    let clock = Instant::now();
    let mut other_way = 0;
    for n in 1..=args.orders {
        let mut order = Order::demo(n);
        order.payment_queue = args.payment_queue;
        // Idempotent: an order that exists already is returned as it is, never started twice.
        match rt
            .start_with_id(Checkout, order.id.clone(), order.clone())
            .await
        {
            Ok(_) => {}
            // Started by an earlier run (or another node) with the other `--payment-queue`:
            // it keeps charging the way it started.
            Err(OrchError::AlreadyStarted { .. }) => {
                order.payment_queue = !order.payment_queue;
                rt.start_with_id(Checkout, order.id.clone(), order).await?;
                other_way += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if other_way > 0 {
        let (started, charged) = if args.payment_queue {
            ("without", "in this process")
        } else {
            ("with", "through the queue, served in this process")
        };
        say(format!(
            "  {other_way} of these orders were started {started} --payment-queue and charge \
             the way they started ({charged})"
        ));
    }

    let progress = Progress::new(live, args.orders);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let now = records(&rt).await?;
        let states: Vec<OrderState> = ids
            .iter()
            .map(|id| OrderState {
                id: id.clone(),
                status: now.get(id).map(|r| r.status),
                phase: now
                    .get(id)
                    .and_then(|r| r.custom_status.as_deref())
                    .and_then(|s| serde_json::from_str(s).ok()),
            })
            .collect();
        progress.update(&states);
        if states
            .iter()
            .all(|s| s.status.is_some_and(Status::is_final))
        {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(150)) => {}
            _ = &mut interrupted => {
                progress.finish();
                let open = states.iter().filter(|s| !s.status.is_some_and(Status::is_final)).count();
                // Graceful stop: every checkpoint already queued is written before we exit, and
                // this node's orders are given up, so other nodes (or the next run) take them
                // over at once.
                rt.shutdown().await?;
                eprintln!(
                    "\ninterrupted: {open} orders unfinished; run the same command again to resume them"
                );
                return Ok(ExitCode::from(130));
            }
        }
    }
    progress.finish();
    let elapsed = clock.elapsed();

    let mut outcomes = BTreeMap::new();
    let (mut events_recorded, mut events_lost) = (0, 0);
    for id in &ids {
        let run = rt.handle(Checkout, id).await?;
        let status = run.status().await?;
        let reason = match run.result().await {
            Ok(Ok(Receipt { .. })) => None,
            Ok(Err(CheckoutError::Declined(_))) => Some("card declined".to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        for entry in rt.journal(id).await? {
            if entry.name == "record_analytics" {
                let outcome: serde_json::Value =
                    serde_json::from_str(&entry.outcome).unwrap_or_default();
                if outcome["value"].get("Ok").is_some() {
                    events_recorded += 1;
                } else {
                    events_lost += 1;
                }
            }
        }
        outcomes.insert(id.clone(), Outcome { status, reason });
    }

    let mut counts: BTreeMap<&str, usize> = Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for o in outcomes.values() {
        *counts.entry(o.status.as_str()).or_default() += 1;
    }
    if quiet {
        let orders: serde_json::Map<String, serde_json::Value> = ids
            .iter()
            .filter_map(|id| Some((id.clone(), outcomes.get(id)?.status.as_str().into())))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "counts": counts, "orders": orders })
        );
    } else {
        print_summary(&ids, &outcomes, elapsed);
        println!(
            "analytics: {events_recorded} events recorded, {events_lost} lost to the outage \
             (those checkouts went on without them)"
        );
        match &services {
            Some(services) => {
                let (calls, dedup) = services.served();
                println!("service calls this run: {calls}");
                println!(
                    "  {dedup} answered from the idempotency memory ({} keys remembered from earlier runs)",
                    services.reloaded_keys
                );
            }
            None => {
                let sent: Vec<String> = workflow::requests_sent()
                    .into_iter()
                    .map(|(name, n)| format!("{name} {n}"))
                    .collect();
                println!(
                    "requests this node ({}) sent: {} (the services' log has everyone's)",
                    rt.node_id(),
                    sent.join(" · ")
                );
            }
        }
    }
    if args.serve {
        say(format!(
            "serving {} until Ctrl-C (retry failed orders there; they resume here)",
            rt.http_url().unwrap_or_default()
        ));
        let _ = tokio::signal::ctrl_c().await;
    } else if !quiet && rt.http_url().is_some() {
        println!("(the UI stops with this run; add --serve to keep it up and look around)");
    }
    rt.shutdown().await?;
    let all_final = outcomes.values().all(|o| o.status.is_final());
    Ok(if all_final {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The runtime on the SQLite file (or PostgreSQL) as node `node`, with the web UI unless
/// `--no-http` (on a free port when the default one is taken).
async fn open_runtime(args: &Args, node: NodeId) -> Result<Runtime, BoxError> {
    let build = |http: Option<&str>| {
        let mut b = match &args.postgres {
            Some(url) => {
                let mut options = PostgresOptions::default();
                if let Some(schema) = &args.schema {
                    options = options.schema(schema.clone());
                }
                Runtime::builder().postgres_with(url.clone(), options)
            }
            None => Runtime::builder().sqlite(&args.db),
        }
        .node_id(node.as_str())
        .max_running(args.concurrency.max(1));
        if args.payment_queue {
            // The charges wait for payment workers elsewhere.
            b = b.no_workers();
        }
        if let Some(ms) = args.lease_ms {
            b = b.lease_ttl(Duration::from_millis(ms));
        }
        if let Some(addr) = http {
            b = b.http(addr);
        }
        b.build()
    };
    let http = (!args.no_http).then_some(args.http.as_str());
    match build(http).await {
        Err(OrchError::Config(e)) if args.http == DEFAULT_HTTP => {
            eprintln!("checkout: {e}; using a free port instead");
            Ok(build(Some("127.0.0.1:0")).await?)
        }
        // (A PostgreSQL error names the server and schema itself, never the password.)
        Err(e) if args.postgres.is_some() => Err(format!("cannot open the store: {e}").into()),
        Err(e) => Err(format!("cannot open {}: {e}", args.db.display()).into()),
        Ok(rt) => Ok(rt),
    }
}

/// Every checkout instance in the store, by id.
async fn records(rt: &Runtime) -> Result<HashMap<String, InstanceRecord>, OrchError> {
    Ok(rt
        .list(ListFilter::default().workflow("checkout"))
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect())
}

fn print_summary(ids: &[String], outcomes: &BTreeMap<String, Outcome>, elapsed: Duration) {
    println!(
        "\nsummary: {} orders, {:.1} s in this run",
        ids.len(),
        elapsed.as_secs_f64()
    );
    for status in Status::ALL {
        let of_status: Vec<&String> = ids
            .iter()
            .filter(|id| outcomes.get(*id).is_some_and(|o| o.status == status))
            .collect();
        if of_status.is_empty() {
            continue;
        }
        // Failures grouped by reason, with the orders concerned.
        let mut reasons: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for id in &of_status {
            if let Some(reason) = outcomes.get(*id).and_then(|o| o.reason.as_deref()) {
                reasons.entry(reason).or_default().push(id);
            }
        }
        println!("  {:<12} {:>5}", status.as_str(), of_status.len());
        for (reason, orders) in reasons {
            let shown: Vec<&str> = orders.iter().take(10).copied().collect();
            let more = if orders.len() > shown.len() {
                format!(" +{} more", orders.len() - shown.len())
            } else {
                String::new()
            };
            println!(
                "  {:<12} {:>5} × {reason}: {}{more}",
                "",
                orders.len(),
                shown.join(" ")
            );
        }
    }
}
