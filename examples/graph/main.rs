//! Draws workflows from their code: the static shape `#[workflow]` extracted, as Mermaid,
//! Graphviz DOT or a self-contained SVG, optionally coloured by a real run.
//!
//! ```text
//! cargo run --example graph -- checkout svg > checkout.svg
//! cargo run --example graph -- checkout svg --run 7 > order-7.svg   # declined card
//! cargo run --example graph -- restock mermaid
//! cargo run --example graph -- restock dot | dot -Tpng > restock.png
//! ```
//!
//! `--run N` runs the workflow once on an in-memory runtime (checkout: demo order `N`, every
//! seventh card is declined, against the checkout example's services) and colours the
//! drawing by its journal.

// The checkout example's workflow and services, shared rather than copied.
#[path = "../checkout/services.rs"]
#[allow(
    dead_code,
    reason = "the drawing uses only part of the checkout example's services"
)]
mod services;
#[path = "../checkout/workflow.rs"]
#[allow(
    dead_code,
    reason = "the drawing uses only part of the checkout example's workflow"
)]
mod workflow;

mod restock;

use clap::Parser;
use orch_runtime::graph::Trace;
use orch_runtime::prelude::*;
use orch_runtime::workflow::Registry;
use std::process::ExitCode;

/// Draws a workflow compiled into this example from its code.
#[derive(Parser, Debug)]
#[command(name = "graph")]
struct Args {
    /// The workflow: `checkout` or `restock`.
    workflow: String,
    /// `svg`, `mermaid` or `dot`.
    #[arg(default_value = "svg")]
    format: String,
    /// Run the workflow once (checkout: demo order N; restock: N items) and colour the
    /// drawing by what happened.
    #[arg(long)]
    run: Option<u64>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    match draw(Args::parse()).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("graph: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn draw(args: Args) -> Result<String, BoxError> {
    let def = Registry::collect()?.get(&args.workflow)?;
    let trace = match args.run {
        None => None,
        Some(n) => Some(run(&args.workflow, n).await?),
    };
    let mut drawing = def.drawing();
    if let Some(trace) = &trace {
        drawing = drawing.run(trace);
    }
    match args.format.as_str() {
        "svg" => Ok(drawing.svg()),
        "mermaid" => Ok(drawing.mermaid()),
        "dot" => Ok(drawing.dot()),
        other => Err(format!("unknown format `{other}`: use svg, mermaid or dot").into()),
    }
}

/// Runs `workflow` once and reads what happened at each node from its journal.
async fn run(workflow: &str, n: u64) -> Result<Trace, BoxError> {
    let rt = Runtime::builder().in_memory().build().await?;
    let id = match workflow {
        "checkout" => {
            let log = std::env::temp_dir().join(format!("orch-graph-{}.log", std::process::id()));
            let services = services::start(services::Config {
                log: &log,
                bind: std::net::Ipv4Addr::LOCALHOST.into(),
                delay: std::time::Duration::ZERO,
                analytics_down: false,
                payment_outage: false,
            })
            .await?;
            let urls = services::NAMES.into_iter().zip(services.urls).collect();
            workflow::connect(urls, rt.node_id())?;
            let run = rt
                .start(workflow::Checkout, workflow::Order::demo(n))
                .await?;
            let _ = run.result().await?;
            let _ = std::fs::remove_file(&log);
            run.id().to_string()
        }
        "restock" => {
            let run = rt
                .start(restock::Restock, restock::Request::demo(n))
                .await?;
            let _ = run.result().await?;
            run.id().to_string()
        }
        other => return Err(format!("no demo run for `{other}`").into()),
    };
    let record = rt.instance(&id).await?.ok_or("the instance vanished")?;
    let journal = rt.journal(&id).await?;
    let def = Registry::collect()?.get(workflow)?;
    Ok(Trace::of(def.shape, record.status, &journal))
}
