//! Instance commands: list, show, start, and the operations (signal, cancel, terminate,
//! retry, restart, fork).

use crate::api::{self, Entry, Instance, InstancePage, Journal};
use crate::client::CliError;
use crate::display::{self, json_block, json_line, relative, timestamp};
use crate::table::Table;
use crate::{Ctx, json_arg, output};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// How often `start --wait` and `tail` ask the server.
pub const POLL: Duration = Duration::from_millis(500);

/// The server's largest page.
const MAX_PAGE: usize = 500;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only instances of this workflow.
    #[arg(long, short = 'w')]
    workflow: Option<String>,
    /// Only these statuses (repeat or comma-separate).
    #[arg(long, short = 's', value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(api::STATUSES))]
    status: Vec<String>,
    /// Only ids that start with this.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Created after this: RFC 3339 or an age such as 15m, 24h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// Created before this: RFC 3339 or an age such as 15m, 24h, 7d.
    #[arg(long)]
    until: Option<String>,
    /// Only instances whose attribute KEY equals VALUE (JSON if it parses, else a string);
    /// repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_attr)]
    attr: Vec<(String, String)>,
    /// Only children of this instance.
    #[arg(long)]
    parent: Option<String>,
    /// Show at most this many.
    #[arg(long, default_value_t = 50, conflicts_with = "all",
          value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Show every match (follows the server's cursors).
    #[arg(long)]
    all: bool,
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> Result<(), CliError> {
    let want = (!args.all).then_some(args.limit as usize);
    let mut found: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_size = want.map_or(MAX_PAGE, |w| (w - found.len()).min(MAX_PAGE));
        let mut url = ctx.client.api(&["instances"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(w) = &args.workflow {
                q.append_pair("workflow", w);
            }
            if !args.status.is_empty() {
                q.append_pair("status", &args.status.join(","));
            }
            if let Some(p) = &args.id_prefix {
                q.append_pair("id_prefix", p);
            }
            if let Some(s) = &args.since {
                q.append_pair("created_after", s);
            }
            if let Some(u) = &args.until {
                q.append_pair("created_before", u);
            }
            for (k, v) in &args.attr {
                q.append_pair(&format!("attr.{k}"), v);
            }
            if let Some(p) = &args.parent {
                q.append_pair("parent", p);
            }
            q.append_pair("limit", &page_size.to_string());
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
        }
        let page = ctx.client.get(url).await?;
        let page: InstancePage = api::parse("instance list", &page)?;
        let empty = page.instances.is_empty();
        found.extend(page.instances);
        let next = page.next_cursor;
        let stuck = empty || next == cursor;
        cursor = next;
        if cursor.is_none() || stuck || want.is_some_and(|w| found.len() >= w) {
            break;
        }
    }
    if ctx.json {
        return output::json(&json!({"instances": found, "next_cursor": cursor}));
    }
    let instances: Vec<Instance> = api::parse("instance list", &Value::Array(found))?;
    if instances.is_empty() {
        return output::print("no instances match\n");
    }
    let now = SystemTime::now();
    let mut table = Table::new(&[
        "ID",
        "WORKFLOW",
        "STATUS",
        "OWNER",
        "CREATED",
        "UPDATED",
        "CUSTOM STATUS",
    ]);
    for i in &instances {
        table.row(vec![
            i.id.clone(),
            i.workflow.clone(),
            status_word(i),
            i.owner.as_ref().map_or("-".into(), |o| o.node.clone()),
            relative(i.created_at.as_deref(), now),
            relative(i.updated_at.as_deref(), now),
            json_line(&i.custom_status, 50),
        ]);
    }
    output::print(&table.render())?;
    if cursor.is_some() {
        eprintln!(
            "(showing the newest {}; more match: raise --limit or pass --all)",
            instances.len()
        );
    }
    Ok(())
}

/// `web-1 (epoch 3, lease ends in 9s)`; a lease that ran out says another node takes over.
fn owner_word(o: &api::Owner, now: SystemTime) -> String {
    let mut details = Vec::new();
    if let Some(e) = o.epoch {
        details.push(format!("epoch {e}"));
    }
    if let Some(at) = o.lease_expires_at.as_deref() {
        details.push(match o.live {
            Some(false) => format!(
                "lease ended {}: another node takes it over",
                relative(Some(at), now)
            ),
            _ => format!("lease ends {}", relative(Some(at), now)),
        });
    }
    if details.is_empty() {
        o.node.clone()
    } else {
        format!("{} ({})", o.node, details.join(", "))
    }
}

/// `failed at charge_payment`, `suspended (wakes in 3h)`, `running (cancel requested)`.
pub fn status_word(i: &Instance) -> String {
    let mut s = i.status.clone();
    if let Some(step) = &i.failed_step {
        s.push_str(&format!(" at {step}"));
    }
    if i.cancel_requested && !api::is_final(&i.status) {
        s.push_str(" (cancel requested)");
    }
    s
}

async fn get_instance(ctx: &Ctx, id: &str) -> Result<(Value, Instance), CliError> {
    let value = ctx.client.get(ctx.client.api(&["instances", id])).await?;
    let instance = api::parse("instance", &value)?;
    Ok((value, instance))
}

pub async fn get_journal(ctx: &Ctx, id: &str) -> Result<(Value, Journal), CliError> {
    let value = ctx
        .client
        .get(ctx.client.api(&["instances", id, "journal"]))
        .await?;
    let journal = api::parse("journal", &value)?;
    Ok((value, journal))
}

pub async fn show(ctx: &Ctx, id: &str) -> Result<(), CliError> {
    let (instance_json, i) = get_instance(ctx, id).await?;
    let (journal_json, journal) = get_journal(ctx, id).await?;
    if ctx.json {
        return output::json(&json!({"instance": instance_json, "journal": journal_json}));
    }
    let now = SystemTime::now();
    let mut out = String::new();
    let mut field = |label: &str, value: String| {
        out.push_str(&format!("{label:<10}  {value}\n"));
    };
    field("id", i.id.clone());
    field(
        "workflow",
        match &i.version {
            Some(v) => format!("{} (version {})", i.workflow, short_version(v)),
            None => i.workflow.clone(),
        },
    );
    field("status", status_word(&i));
    if let Some(o) = &i.owner {
        field("owner", owner_word(o, now));
    }
    if let Some(n) = i.retries.filter(|&n| n > 0) {
        field("retries", n.to_string());
    }
    if let Some(e) = display::error_text(&i.error) {
        field("error", e);
    }
    if !i.custom_status.is_null() {
        field("custom", json_line(&i.custom_status, 200));
    }
    field("created", timestamp(i.created_at.as_deref(), now));
    field("updated", timestamp(i.updated_at.as_deref(), now));
    if i.wake_at.is_some() {
        field("wakes", timestamp(i.wake_at.as_deref(), now));
    }
    if let Some(p) = &i.parent {
        field("parent", p.clone());
    }
    if let Some(attributes) = i.attributes.as_ref().filter(|a| !a.is_empty()) {
        out.push_str("\nattributes\n");
        let mut t = Table::new(&["KEY", "VALUE"]);
        for (k, v) in attributes {
            t.row(vec![k.clone(), json_line(v, 100)]);
        }
        out.push_str(&indent(&t.render()));
    }
    if let Some(input) = &i.input {
        out.push_str("\ninput\n");
        out.push_str(&json_block(input));
    }
    if let Some(output) = &i.output
        && (!output.is_null() || i.status == "completed")
    {
        out.push_str("\noutput\n");
        out.push_str(&json_block(output));
    }
    out.push_str("\njournal\n");
    if journal.entries.is_empty() {
        out.push_str("  (empty)\n");
    } else {
        out.push_str(&indent(&journal_table(&journal.entries).render()));
    }
    for s in &journal.superseded {
        match s.retry {
            Some(n) => out.push_str(&format!("\nsuperseded by retry {n}\n")),
            None => out.push_str("\nsuperseded\n"),
        }
        out.push_str(&indent(&journal_table(&s.entries).render()));
    }
    if !journal.pending_signals.is_empty() {
        out.push_str("\npending signals\n");
        let mut t = Table::new(&["NAME", "PAYLOAD", "RECEIVED"]);
        for p in &journal.pending_signals {
            t.row(vec![
                p.name.clone(),
                json_line(&p.payload, 60),
                relative(p.received_at.as_deref(), now),
            ]);
        }
        out.push_str(&indent(&t.render()));
    }
    output::print(&out)
}

fn journal_table(entries: &[Entry]) -> Table {
    let mut t = Table::new(&[
        "SEQ", "KIND", "NAME", "STATE", "ATTEMPTS", "DURATION", "ERROR",
    ])
    .right(0)
    .right(4)
    .right(5);
    for e in entries {
        t.row(vec![
            e.seq.to_string(),
            e.kind.clone(),
            e.name.clone().unwrap_or_default(),
            e.state.clone(),
            e.attempts.map(|a| a.to_string()).unwrap_or_default(),
            e.duration_ms
                .filter(|_| e.state != "waiting")
                .map(display::millis)
                .unwrap_or_default(),
            e.last_error()
                .map(|m| display::truncate(&m, 60))
                .unwrap_or_default(),
        ]);
    }
    t
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// The first 12 characters of a code version hash.
pub fn short_version(v: &str) -> String {
    v.chars().take(12).collect()
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Workflow name (see `orch definitions`).
    name: String,
    /// Input as JSON (`@file.json` reads a file, `@-` stdin); default `null`.
    #[arg(long)]
    input: Option<String>,
    /// Instance id (starts are idempotent per id); default: one the server picks.
    #[arg(long)]
    id: Option<String>,
    /// Wait until the instance ends; exit 1 unless it completed.
    #[arg(long)]
    wait: bool,
}

pub async fn start(ctx: &Ctx, args: StartArgs) -> Result<u8, CliError> {
    let input = match &args.input {
        Some(raw) => json_arg("--input", raw)?,
        None => Value::Null,
    };
    let mut body = json!({"workflow": args.name, "input": input});
    if let Some(id) = &args.id {
        body["id"] = json!(id);
    }
    let started = match ctx.client.post(ctx.client.api(&["instances"]), &body).await {
        Err(CliError::Refused { message, code })
            if args.input.is_none() && code.as_deref() == Some("invalid_input") =>
        {
            return Err(CliError::Refused {
                message: format!(
                    "{message}\nhint: no --input was given (so the input was null); pass it \
                     with --input JSON (`orch definitions {}` shows its type)",
                    args.name
                ),
                code,
            });
        }
        other => other?,
    };
    let id = started
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::BadResponse(format!("start: no \"id\" in {started}")))?
        .to_string();
    let created = started
        .get("created")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !args.wait {
        if ctx.json {
            return output::json(&started).map(|()| 0);
        }
        return output::print(&started_line(&id, &args.name, created)).map(|()| 0);
    }
    if !ctx.json {
        output::print(&started_line(&id, &args.name, created))?;
    }
    let (value, instance) = loop {
        let (value, instance) = get_instance(ctx, &id).await?;
        if api::is_final(&instance.status) {
            break (value, instance);
        }
        tokio::time::sleep(POLL).await;
    };
    if ctx.json {
        output::json(&value)?;
    } else {
        output::print(&final_report(&instance))?;
    }
    Ok(exit_for(&instance))
}

fn started_line(id: &str, workflow: &str, created: bool) -> String {
    if created {
        format!("started {id} ({workflow})\n")
    } else {
        format!("{id} ({workflow}) already existed: not started again\n")
    }
}

/// How an instance ended, with its output or error.
pub fn final_report(i: &Instance) -> String {
    let mut out = format!("{} {}\n", i.id, status_word(i));
    if let Some(e) = display::error_text(&i.error) {
        out.push_str(&format!("error: {e}\n"));
    }
    if let Some(output) = &i.output {
        out.push_str("output\n");
        out.push_str(&json_block(output));
    }
    out
}

/// 0 for a completed instance, 1 for any other end (the error line goes to stderr).
pub fn exit_for(i: &Instance) -> u8 {
    if i.status == "completed" {
        0
    } else {
        eprintln!("error: instance {} ended {}", i.id, i.status);
        1
    }
}

async fn operation(
    ctx: &Ctx,
    id: &str,
    op: &str,
    body: Value,
    human: impl FnOnce(&Value) -> String,
) -> Result<u8, CliError> {
    let answer = ctx
        .client
        .post(ctx.client.api(&["instances", id, op]), &body)
        .await?;
    if ctx.json {
        output::json(&answer)?;
    } else {
        output::print(&format!("{}\n", human(&answer)))?;
    }
    Ok(0)
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

pub async fn signal(
    ctx: &Ctx,
    id: &str,
    name: &str,
    payload: Option<&str>,
) -> Result<u8, CliError> {
    let payload = match payload {
        Some(raw) => json_arg("--payload", raw)?,
        None => Value::Null,
    };
    let body = json!({"name": name, "payload": payload});
    operation(ctx, id, "signal", body, |a| match a.get("signal_id") {
        Some(n) => format!("sent signal {name} to {id} (signal id {n})"),
        None => format!("sent signal {name} to {id}"),
    })
    .await
}

pub async fn cancel(ctx: &Ctx, id: &str, reason: Option<String>) -> Result<u8, CliError> {
    operation(ctx, id, "cancel", reason_body(reason), |a| {
        format!(
            "cancel requested for {id} (status: {}); its compensation runs before it ends",
            field(a, "status")
        )
    })
    .await
}

pub async fn terminate(ctx: &Ctx, id: &str, reason: Option<String>) -> Result<u8, CliError> {
    operation(ctx, id, "terminate", reason_body(reason), |a| {
        format!("{id} {}", field(a, "status"))
    })
    .await
}

fn reason_body(reason: Option<String>) -> Value {
    match reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    }
}

pub async fn retry(ctx: &Ctx, id: &str, from_seq: Option<u64>) -> Result<u8, CliError> {
    let body = match from_seq {
        Some(n) => json!({"from_seq": n}),
        None => json!({}),
    };
    operation(ctx, id, "retry", body, |a| match a.get("from_seq") {
        Some(n) if !n.is_null() => format!("retrying {id} from seq {n}"),
        _ => format!("retrying {id}"),
    })
    .await
}

pub async fn restart(ctx: &Ctx, id: &str) -> Result<u8, CliError> {
    operation(ctx, id, "restart", json!({}), |a| {
        format!("restarted {id} as {}", field(a, "id"))
    })
    .await
}

pub async fn fork(ctx: &Ctx, id: &str, from_seq: u64) -> Result<u8, CliError> {
    operation(ctx, id, "fork", json!({"from_seq": from_seq}), |a| {
        format!("forked {id} at seq {from_seq} as {}", field(a, "id"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_shows_its_node_epoch_and_lease() {
        let now = humantime::parse_rfc3339("2026-11-26T08:00:00Z").expect("time");
        let owner = |live| api::Owner {
            node: "web-1".into(),
            epoch: Some(3),
            lease_expires_at: Some(if live {
                "2026-11-26T08:00:09.000Z".into()
            } else {
                "2026-11-26T07:55:00.000Z".into()
            }),
            live: Some(live),
        };
        assert_eq!(
            owner_word(&owner(true), now),
            "web-1 (epoch 3, lease ends in 9s)"
        );
        assert_eq!(
            owner_word(&owner(false), now),
            "web-1 (epoch 3, lease ended 5m ago: another node takes it over)"
        );
    }
}
