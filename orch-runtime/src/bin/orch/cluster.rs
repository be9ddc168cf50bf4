//! `orch nodes` (the nodes sharing the server's store) and `orch check` (the deploy check of
//! every waiting instance against the server's code).

use crate::api::{self, Compatibility, Incompatible, Nodes};
use crate::client::CliError;
use crate::display::{relative, truncate};
use crate::table::Table;
use crate::{Ctx, output};
use serde_json::json;
use std::time::SystemTime;

pub async fn nodes(ctx: &Ctx) -> Result<(), CliError> {
    let value = ctx.client.get(ctx.client.api(&["nodes"])).await?;
    if ctx.json {
        return output::json(&value);
    }
    let list: Nodes = api::parse("nodes", &value)?;
    if list.nodes.is_empty() {
        return output::print("no nodes\n");
    }
    let now = SystemTime::now();
    let mut t = Table::new(&[
        "NODE",
        "STATE",
        "STARTED",
        "HEARTBEAT",
        "LEASE",
        "INSTANCES",
    ])
    .right(5);
    for n in &list.nodes {
        let this = n.this_node || list.this_node.as_deref() == Some(n.id.as_str());
        let lease = match n.state.as_str() {
            "live" => format!("ends {}", relative(n.lease_expires_at.as_deref(), now)),
            "stopped" => "released".to_string(),
            _ => format!("ended {}", relative(n.lease_expires_at.as_deref(), now)),
        };
        t.row(vec![
            if this {
                format!("{} (this node)", n.id)
            } else {
                n.id.clone()
            },
            n.state.clone(),
            relative(n.started_at.as_deref(), now),
            relative(n.heartbeat_at.as_deref(), now),
            lease,
            n.instances_owned.to_string(),
        ]);
    }
    output::print(&t.render())
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only instances of this workflow (any name, also one the server's code lacks).
    #[arg(long, short = 'w')]
    workflow: Option<String>,
    /// Instances checked per request (the server takes 1 to 10000).
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page: u32,
}

/// Checks every waiting instance (following the server's cursors) and prints those the
/// server's code cannot run; exit code 1 when there is any.
pub async fn check(ctx: &Ctx, args: CheckArgs) -> Result<u8, CliError> {
    let mut cursor: Option<String> = None;
    let mut node = None;
    let (mut checked, mut compatible) = (0u64, 0u64);
    let mut incompatible: Vec<Incompatible> = Vec::new();
    loop {
        let mut url = ctx.client.api(&["compatibility"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(w) = &args.workflow {
                q.append_pair("workflow", w);
            }
            q.append_pair("limit", &args.page.to_string());
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
        }
        let page: Compatibility = api::parse("compatibility check", &ctx.client.get(url).await?)?;
        node = node.or(page.node);
        checked += page.checked;
        compatible += page.compatible;
        incompatible.extend(page.incompatible);
        // The cursor moves on with every page (a page whose instances all finished meanwhile
        // checks none); one that does not would loop.
        let stuck = page.next_cursor == cursor;
        cursor = page.next_cursor;
        if cursor.is_none() || stuck {
            break;
        }
    }
    let code = u8::from(!incompatible.is_empty());
    if ctx.json {
        output::json(&json!({
            "node": node,
            "checked": checked,
            "compatible": compatible,
            "incompatible": incompatible,
            "next_cursor": null,
        }))?;
        return Ok(code);
    }
    let against = node
        .map(|n| format!(" against node {n}'s code"))
        .unwrap_or_default();
    let mut out = String::new();
    if !incompatible.is_empty() {
        let mut t = Table::new(&["ID", "WORKFLOW", "STATUS", "SEQ", "PROBLEM"]).right(3);
        for i in &incompatible {
            t.row(vec![
                i.id.clone(),
                i.workflow.clone(),
                i.status.clone(),
                i.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                truncate(problem(&i.message), 100),
            ]);
        }
        out.push_str(&t.render());
        // The advice is the same for many instances: each distinct one once.
        let mut advice: Vec<&str> = Vec::new();
        for i in &incompatible {
            if let Some((_, a)) = i.message.split_once("; ")
                && !advice.contains(&a)
            {
                advice.push(a);
            }
        }
        for a in advice {
            out.push_str(&format!("\nwhat to do: {a}\n"));
        }
        out.push('\n');
    }
    let noun = if checked == 1 {
        "instance"
    } else {
        "instances"
    };
    out.push_str(&format!(
        "checked {checked} waiting {noun}{against}: {compatible} compatible, {} incompatible\n",
        incompatible.len()
    ));
    output::print(&out)?;
    Ok(code)
}

/// The divergence itself: a message up to its first `; ` (the advice follows).
fn problem(message: &str) -> &str {
    message.split_once("; ").map_or(message, |(p, _)| p)
}
