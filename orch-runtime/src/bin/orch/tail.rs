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

/// The newest instances and every active one are read each round; an instance that was
/// active and left both lists is read by id to learn how it ended.
async fn tail_all(ctx: &Ctx, workflow: Option<&str>) -> Result<(), CliError> {
    let mut known: HashMap<String, String> = HashMap::new();
    let mut first = true;
    loop {
        let mut current: BTreeMap<String, (Value, Instance)> = BTreeMap::new();
        for status in [None, Some("running,suspended")] {
            for pair in page(ctx, workflow, status).await? {
                current.insert(pair.1.id.clone(), pair);
            }
        }
        let vanished: Vec<String> = known
            .iter()
            .filter(|(id, status)| !api::is_final(status) && !current.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in vanished {
            match ctx.client.get(ctx.client.api(&["instances", &id])).await {
                Ok(value) => {
                    let instance: Instance = api::parse("instance", &value)?;
                    current.insert(id, (value, instance));
                }
                Err(CliError::Refused { code, .. }) if code.as_deref() == Some("not_found") => {
                    known.remove(&id);
                }
                Err(e) => return Err(e),
            }
        }
        let mut changes: Vec<&(Value, Instance)> = current
            .values()
            .filter(|(_, i)| known.get(&i.id) != Some(&i.status))
            .collect();
        changes.sort_by(|a, b| (&a.1.updated_at, &a.1.id).cmp(&(&b.1.updated_at, &b.1.id)));
        for (value, i) in changes {
            let before = known.insert(i.id.clone(), i.status.clone());
            if first {
                continue;
            }
            if ctx.json {
                output::json_line(&json!({"event": "status", "from": before, "instance": value}))?;
            } else {
                output::print(&change_line(i, before.as_deref()))?;
            }
        }
        // Forget ended instances that fell off the newest page: nothing more will happen to
        // them unless they are retried, and then they show up among the active ones.
        known.retain(|id, status| !api::is_final(status) || current.contains_key(id));
        if first && !ctx.json {
            let active = known.values().filter(|s| !api::is_final(s)).count();
            eprintln!(
                "following status changes of {}: {active} active now (Ctrl-C to stop)",
                workflow.map_or("all workflows".to_string(), |w| format!("workflow {w}"))
            );
        }
        first = false;
        tokio::time::sleep(POLL).await;
    }
}

async fn page(
    ctx: &Ctx,
    workflow: Option<&str>,
    status: Option<&str>,
) -> Result<Vec<(Value, Instance)>, CliError> {
    let mut url = ctx.client.api(&["instances"]);
    {
        let mut q = url.query_pairs_mut();
        if let Some(w) = workflow {
            q.append_pair("workflow", w);
        }
        if let Some(s) = status {
            q.append_pair("status", s);
        }
        q.append_pair("limit", if status.is_some() { "500" } else { "100" });
    }
    let page: InstancePage = api::parse("instance list", &ctx.client.get(url).await?)?;
    page.instances
        .into_iter()
        .map(|v| api::parse("instance", &v).map(|i| (v, i)))
        .collect()
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
