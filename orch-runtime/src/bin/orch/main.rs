//! `orch`: the command-line client of a running orch server (see `docs/http-api.md`).
//!
//! Human-readable tables by default, the server's JSON with `--json`. Exit codes: 0 success,
//! 1 the server refused or the operation failed, 2 usage error, 3 server unreachable, 4 auth.

mod api;
mod client;
mod cluster;
mod definitions;
mod display;
mod flow;
mod graph;
mod instances;
mod output;
mod queues;
mod stats;
mod table;
mod tail;

use clap::{Parser, Subcommand};
use client::{CliError, Client};
use std::path::PathBuf;
use std::process::ExitCode;

/// Command-line client of a running orch server.
#[derive(Debug, Parser)]
#[command(name = "orch", version)]
struct Cli {
    /// The server's address.
    #[arg(
        long,
        global = true,
        env = "ORCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Bearer token (an admin token for commands that change something).
    #[arg(long, global = true, env = "ORCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON (pretty) instead of tables, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List instances, newest first.
    List(instances::ListArgs),
    /// Show one instance: summary, attributes, input/output and its journal.
    Show {
        /// Instance id.
        id: String,
    },
    /// Start an instance of a workflow.
    Start(instances::StartArgs),
    /// Send a signal to an instance.
    Signal {
        /// Instance id.
        id: String,
        /// Signal name.
        name: String,
        /// Payload as JSON (`@file.json` reads a file, `@-` stdin); default `null`.
        #[arg(long)]
        payload: Option<String>,
    },
    /// Ask an instance to cancel (cooperative: its compensation code runs).
    Cancel {
        /// Instance id.
        id: String,
        /// Why; recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop an instance at once; nothing more of it runs.
    Terminate {
        /// Instance id.
        id: String,
        /// Why; recorded as the instance's error.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a failed, cancelled or terminated instance again (same id).
    Retry {
        /// Instance id.
        id: String,
        /// Journal seq to run again from (default: the failed step).
        #[arg(long)]
        from_seq: Option<u64>,
    },
    /// Start a new instance of the same workflow with the same input.
    Restart {
        /// Instance id.
        id: String,
    },
    /// Start a new instance that copies this one's journal up to (not including) a seq.
    Fork {
        /// Instance id.
        id: String,
        /// The new instance runs from this seq on.
        #[arg(long)]
        from_seq: u64,
    },
    /// Draw a workflow (Mermaid, DOT or SVG), optionally coloured by an instance's journal.
    Graph(graph::GraphArgs),
    /// Follow live progress: one instance's journal until it ends, or all status changes.
    Tail(tail::TailArgs),
    /// Counts by workflow and status over a time window.
    Stats(stats::StatsArgs),
    /// List the workflows the server knows, or show one.
    Definitions {
        /// Show this workflow's details.
        name: Option<String>,
    },
    /// Show who the token authenticates as.
    Whoami,
    /// List the nodes sharing the server's store: state, heartbeat, lease, instances owned.
    Nodes,
    /// Check every waiting instance against the server's code (the deploy check): lists those
    /// it cannot run and exits 1 when there is any. Calls no step, changes nothing.
    Check(cluster::CheckArgs),
    /// Workflow queues: `orch queue set NAME --concurrency 5` changes a queue's limits live.
    Queue(flow::QueueArgs),
    /// Queues of tasks and of workflows: waiting, in flight, oldest waiting, throughput,
    /// completed, failed and connected workers per queue; then the workers the server saw
    /// recently.
    Queues,
}

/// What every command gets: the client and the output mode.
pub struct Ctx {
    /// The server's client.
    client: Client,
    /// `--json`: print the server's documents instead of tables.
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.code())
        }
    }
}

/// Runs one command; `Ok(code)` lets a command end non-zero after printing its result
/// (`start --wait` and `tail ID` for an instance that did not complete).
async fn run(cli: Cli) -> Result<u8, CliError> {
    let ctx = Ctx {
        client: Client::new(&cli.url, cli.token)?,
        json: cli.json,
    };
    match cli.command {
        Command::List(args) => instances::list(&ctx, args).await.map(|()| 0),
        Command::Show { id } => instances::show(&ctx, &id).await.map(|()| 0),
        Command::Start(args) => instances::start(&ctx, args).await,
        Command::Signal { id, name, payload } => {
            instances::signal(&ctx, &id, &name, payload.as_deref()).await
        }
        Command::Cancel { id, reason } => instances::cancel(&ctx, &id, reason).await,
        Command::Terminate { id, reason } => instances::terminate(&ctx, &id, reason).await,
        Command::Retry { id, from_seq } => instances::retry(&ctx, &id, from_seq).await,
        Command::Restart { id } => instances::restart(&ctx, &id).await,
        Command::Fork { id, from_seq } => instances::fork(&ctx, &id, from_seq).await,
        Command::Graph(args) => graph::graph(&ctx, args).await.map(|()| 0),
        Command::Tail(args) => tail::tail(&ctx, args).await,
        Command::Stats(args) => stats::stats(&ctx, args).await.map(|()| 0),
        Command::Definitions { name } => definitions::definitions(&ctx, name.as_deref())
            .await
            .map(|()| 0),
        Command::Whoami => definitions::whoami(&ctx).await.map(|()| 0),
        Command::Nodes => cluster::nodes(&ctx).await.map(|()| 0),
        Command::Check(args) => cluster::check(&ctx, args).await,
        Command::Queue(args) => flow::queue(&ctx, args).await.map(|()| 0),
        Command::Queues => queues::queues(&ctx).await.map(|()| 0),
    }
}

/// Reads a JSON argument: inline JSON, `@path` for a file, `@-` for stdin.
pub fn json_arg(flag: &str, raw: &str) -> Result<serde_json::Value, CliError> {
    let (text, source) = match raw.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| CliError::Usage(format!("{flag} @-: cannot read stdin: {e}")))?;
            (s, "stdin".to_string())
        }
        Some(path) => {
            let path = PathBuf::from(path);
            let s = std::fs::read_to_string(&path).map_err(|e| {
                CliError::Usage(format!("{flag}: cannot read {}: {e}", path.display()))
            })?;
            (s, path.display().to_string())
        }
        None => (raw.to_string(), String::new()),
    };
    serde_json::from_str(&text).map_err(|e| {
        let from = if source.is_empty() {
            String::new()
        } else {
            format!(" (from {source})")
        };
        CliError::Usage(format!(
            "{flag} is not valid JSON{from}: {e}\n\
             hint: pass a JSON value, e.g. {flag} '{{\"id\": 7}}' or {flag} '\"text\"' \
             (strings need quotes), or {flag} @file.json"
        ))
    })
}
