//! `orch tail`: follow one instance's journal until it ends, or every instance's status
//! changes until Ctrl-C. Polls the server every 500 ms.

use crate::api::{self, Entry, Instance, InstancePage};
use crate::client::CliError;
use crate::display::{self, json_line};
use crate::instances::{self, POLL, get_journal};
use crate::{Ctx, output};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Instance to follow until it ends (exit code: 0 if it completed, else 1); without it,
    /// print instances as they change status until Ctrl-C.
    id: Option<String>,
    /// Without ID: only instances of this workflow.
    #[arg(long, short = 'w', conflicts_with = "id")]
    workflow: Option<String>,
}

pub async fn tail(ctx: &Ctx, args: TailArgs) -> Result<u8, CliError> {
    match &args.id {
        Some(id) => tail_instance(ctx, id).await,
        None => tail_all(ctx, args.workflow.as_deref()).await.map(|()| 0),
    }
}

/// What makes an entry worth printing again: its state, attempts or error count changed.
type EntryMark = (String, Option<u64>, usize);

async fn tail_instance(ctx: &Ctx, id: &str) -> Result<u8, CliError> {
    let mut seen: BTreeMap<u64, EntryMark> = BTreeMap::new();
    let mut status: Option<String> = None;
    let mut custom = Value::Null;
    loop {
        // The instance first: a journal read afterwards holds at least what led to its status.
        let instance_json = ctx.client.get(ctx.client.api(&["instances", id])).await?;
        let instance: Instance = api::parse("instance", &instance_json)?;
        let (journal_json, journal) = get_journal(ctx, id).await?;
        if status.is_none() && !ctx.json {
            eprintln!("following {} ({})", instance.id, instance.workflow);
        }
        let raw_entries = journal_json
            .get("entries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (entry, raw) in journal.entries.iter().zip(&raw_entries) {
            let mark = (entry.state.clone(), entry.attempts, entry.errors.len());
            if seen.get(&entry.seq) == Some(&mark) {
                continue;
            }
            seen.insert(entry.seq, mark);
            if ctx.json {
                output::json_line(&json!({"event": "entry", "id": id, "entry": raw}))?;
            } else {
                output::print(&entry_line(entry))?;
            }
        }
        if instance.custom_status != custom {
            custom = instance.custom_status.clone();
            if ctx.json {
                output::json_line(
                    &json!({"event": "custom_status", "id": id, "custom_status": custom}),
                )?;
            } else if !custom.is_null() {
                output::print(&format!("custom status: {}\n", json_line(&custom, 200)))?;
            }
        }
        if status.as_deref() != Some(instance.status.as_str()) {
            status = Some(instance.status.clone());
            if api::is_final(&instance.status) {
                if ctx.json {
                    output::json_line(&json!({"event": "final", "instance": instance_json}))?;
                } else {
                    output::print(&instances::final_report(&instance))?;
                }
                return Ok(instances::exit_for(&instance));
            }
            if ctx.json {
                output::json_line(
                    &json!({"event": "status", "id": id, "status": instance.status}),
                )?;
            } else {
                output::print(&format!("status: {}\n", instances::status_word(&instance)))?;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `#3 step charge_payment: done (2 attempts, 1.25s); last error: 503`.
fn entry_line(e: &Entry) -> String {
    let mut line = format!("#{} {}", e.seq, e.kind);
    if let Some(name) = e.name.as_deref().filter(|n| !n.is_empty()) {
        line.push(' ');
        line.push_str(name);
    }
    line.push_str(": ");
    line.push_str(&e.state);
    let mut details = Vec::new();
    if let Some(a) = e.attempts.filter(|&a| a > 1) {
        details.push(display::attempts(a));
    }
    if let Some(ms) = e.duration_ms.filter(|_| e.state != "waiting") {
        details.push(display::millis(ms));
    }
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join(", ")));
    }
    if let Some(err) = e.last_error() {
        let label = if e.state == "failed" {
            "error"
        } else {
            "last error"
        };
        line.push_str(&format!("; {label}: {}", display::truncate(&err, 120)));
    }
    line.push('\n');
    line
}

/// Each round reads the instances that changed since the newest change seen before
/// (`updated_after`, in the server's own times, so the two clocks need not agree), following
/// cursors, and prints those whose status differs from what was seen.
async fn tail_all(ctx: &Ctx, workflow: Option<&str>) -> Result<(), CliError> {
    let mut known: HashMap<String, String> = HashMap::new();
    // The first round learns where things stand: the active instances and the newest page.
    let mut current: BTreeMap<String, (Value, Instance)> = BTreeMap::new();
    for (status, all) in [(Some("running,suspended"), true), (None, false)] {
        for pair in pages(ctx, workflow, status, None, all).await? {
            current.insert(pair.1.id.clone(), pair);
        }
    }
    let mut since = current
        .values()
        .filter_map(|(_, i)| i.updated_at.clone())
        .max();
    for (_, i) in current.values() {
        known.insert(i.id.clone(), i.status.clone());
    }
    if !ctx.json {
        let active = known.values().filter(|s| !api::is_final(s)).count();
        eprintln!(
            "following status changes of {}: {active} active now (Ctrl-C to stop)",
            workflow.map_or("all workflows".to_string(), |w| format!("workflow {w}"))
        );
    }
    loop {
        tokio::time::sleep(POLL).await;
        let mut changes = pages(ctx, workflow, None, since.as_deref(), true).await?;
        changes.sort_by(|a, b| (&a.1.updated_at, &a.1.id).cmp(&(&b.1.updated_at, &b.1.id)));
        for (value, i) in &changes {
            if let Some(u) = &i.updated_at
                && since.as_ref().is_none_or(|s| u > s)
            {
                since = Some(u.clone());
            }
            if known.get(&i.id) == Some(&i.status) {
                continue; // changed something else (e.g. its custom status)
            }
            let before = known.insert(i.id.clone(), i.status.clone());
            if ctx.json {
                output::json_line(&json!({"event": "status", "from": before, "instance": value}))?;
            } else {
                output::print(&change_line(i, before.as_deref()))?;
            }
        }
    }
}

/// Instances matching the filters, newest first: one page of 100, or every page of 500 when
/// `all` (following `next_cursor`).
async fn pages(
    ctx: &Ctx,
    workflow: Option<&str>,
    status: Option<&str>,
    updated_after: Option<&str>,
    all: bool,
) -> Result<Vec<(Value, Instance)>, CliError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = ctx.client.api(&["instances"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(w) = workflow {
                q.append_pair("workflow", w);
            }
            if let Some(s) = status {
                q.append_pair("status", s);
            }
            if let Some(t) = updated_after {
                q.append_pair("updated_after", t);
            }
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
            q.append_pair("limit", if all { "500" } else { "100" });
        }
        let page: InstancePage = api::parse("instance list", &ctx.client.get(url).await?)?;
        for v in page.instances {
            let i: Instance = api::parse("instance", &v)?;
            out.push((v, i));
        }
        match page.next_cursor {
            Some(c) if all => cursor = Some(c),
            _ => return Ok(out),
        }
    }
}

/// `order-7 (checkout): suspended → completed`; `order-9 (checkout): new, running`.
fn change_line(i: &Instance, before: Option<&str>) -> String {
    let mut line = match before {
        Some(b) => format!(
            "{} ({}): {b} → {}",
            i.id,
            i.workflow,
            instances::status_word(i)
        ),
        None => format!(
            "{} ({}): new, {}",
            i.id,
            i.workflow,
            instances::status_word(i)
        ),
    };
    if let Some(e) = display::error_text(&i.error) {
        line.push_str(&format!("; error: {}", display::truncate(&e, 120)));
    } else if !i.custom_status.is_null() {
        line.push_str(&format!("; {}", json_line(&i.custom_status, 80)));
    }
    line.push('\n');
    line
}
