//! `orch queue set`: a workflow queue's limits, changed live on every node.

use crate::client::CliError;
use crate::{Ctx, output};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// `orch queue …`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Replace a workflow queue's limits (a limit not given is none); every node applies them
    /// from its next admission, without a restart.
    Set {
        /// The workflow queue.
        name: String,
        /// At most this many of its instances running (unfinished) at once; 0 pauses it.
        #[arg(long)]
        concurrency: Option<u32>,
        /// At most this many running per concurrency key.
        #[arg(long)]
        per_key: Option<u32>,
        /// At most this many starts per `--per-ms` milliseconds.
        #[arg(long, requires = "per_ms", value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        /// The rate limit's window, in milliseconds.
        #[arg(long, requires = "rate", value_parser = clap::value_parser!(u64).range(1..))]
        per_ms: Option<u64>,
    },
}

/// Runs `orch queue …`.
pub async fn queue(ctx: &Ctx, args: QueueArgs) -> Result<(), CliError> {
    match args.command {
        QueueCommand::Set {
            name,
            concurrency,
            per_key,
            rate,
            per_ms,
        } => {
            let mut body = json!({"concurrency": concurrency, "per_key": per_key});
            if let (Some(limit), Some(period_ms)) = (rate, per_ms) {
                body["rate"] = json!({"limit": limit, "period_ms": period_ms});
            }
            let url = ctx.client.api(&["queues", &name, "config"]);
            let value = ctx.client.put(url, &body).await?;
            if ctx.json {
                return output::json(&value);
            }
            output::print(&format!("queue {name}: {}\n", describe(&value["config"])))
        }
    }
}

/// `concurrency 5, per key 1, 100 per 60000 ms` (or `no limits`).
fn describe(config: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(n) = config["concurrency"].as_u64() {
        parts.push(format!("concurrency {n}"));
    }
    if let Some(n) = config["per_key"].as_u64() {
        parts.push(format!("per key {n}"));
    }
    if let (Some(l), Some(p)) = (
        config["rate"]["limit"].as_u64(),
        config["rate"]["period_ms"].as_u64(),
    ) {
        parts.push(format!("{l} per {p} ms"));
    }
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join(", ")
    }
}
