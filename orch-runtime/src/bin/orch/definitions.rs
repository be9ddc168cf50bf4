//! `orch definitions` (the workflows the server runs) and `orch whoami`.

use crate::api::{self, Definition, Definitions, STATUSES};
use crate::client::CliError;
use crate::instances::short_version;
use crate::table::Table;
use crate::{Ctx, output};
use serde_json::Value;
use std::collections::BTreeMap;

pub async fn definitions(ctx: &Ctx, name: Option<&str>) -> Result<(), CliError> {
    let Some(name) = name else {
        let value = ctx.client.get(ctx.client.api(&["definitions"])).await?;
        if ctx.json {
            return output::json(&value);
        }
        let list: Definitions = api::parse("definitions", &value)?;
        if list.definitions.is_empty() {
            return output::print("no workflows\n");
        }
        let mut t =
            Table::new(&["NAME", "VERSION", "INPUT", "OUTPUT", "STEPS", "INSTANCES"]).right(4);
        for d in &list.definitions {
            t.row(vec![
                d.name.clone(),
                d.version.as_deref().map(short_version).unwrap_or_default(),
                d.input_type.clone().unwrap_or_default(),
                d.output_type.clone().unwrap_or_default(),
                d.steps.len().to_string(),
                counts(&d.counts),
            ]);
        }
        return output::print(&t.render());
    };
    let value = ctx
        .client
        .get(ctx.client.api(&["definitions", name]))
        .await?;
    if ctx.json {
        return output::json(&value);
    }
    let d: Definition = api::parse("definition", &value)?;
    let mut out = String::new();
    let mut field = |label: &str, value: String| out.push_str(&format!("{label:<10}  {value}\n"));
    field("name", d.name.clone());
    field("version", d.version.clone().unwrap_or_default());
    if let Some(args) = &d.args {
        let list: Vec<String> = args
            .iter()
            .map(|a| format!("{}: {}", a.name, a.ty))
            .collect();
        field("args", list.join(", "));
    }
    field("input", d.input_type.clone().unwrap_or_default());
    field("output", d.output_type.clone().unwrap_or_default());
    field("steps", d.steps.join(", "));
    field("instances", counts(&d.counts));
    output::print(&out)
}

/// `2 suspended, 31 completed, 5 failed` (statuses with none left out).
fn counts(counts: &BTreeMap<String, u64>) -> String {
    let mut parts: Vec<String> = STATUSES
        .iter()
        .filter_map(|s| {
            counts
                .get(*s)
                .filter(|&&n| n > 0)
                .map(|n| format!("{n} {s}"))
        })
        .collect();
    parts.extend(
        counts
            .iter()
            .filter(|(s, n)| **n > 0 && !STATUSES.contains(&s.as_str()))
            .map(|(s, n)| format!("{n} {s}")),
    );
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub async fn whoami(ctx: &Ctx) -> Result<(), CliError> {
    let value = ctx.client.get(ctx.client.api(&["whoami"])).await?;
    if ctx.json {
        return output::json(&value);
    }
    let text = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let auth = match value.get("auth_required").and_then(Value::as_bool) {
        Some(true) => "tokens required",
        Some(false) => "no token required",
        None => "auth unknown",
    };
    output::print(&format!(
        "{} ({}); this server: {auth}\n",
        text("actor"),
        text("role")
    ))
}
