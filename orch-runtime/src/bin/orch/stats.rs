//! `orch stats`: instance counts by workflow and status over a window, failing steps, and
//! optionally a numeric attribute's aggregate.

use crate::api::{self, AttributeStats, STATUSES, Stats};
use crate::client::CliError;
use crate::table::Table;
use crate::{Ctx, output};
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Count instances created in this window (15m, 24h, 7d, …).
    #[arg(long, default_value = "24h")]
    window: String,
    /// Bucket width of the time series (`--json` only); default: window/24.
    #[arg(long)]
    bucket: Option<String>,
    /// Only this workflow.
    #[arg(long, short = 'w')]
    workflow: Option<String>,
    /// Also aggregate this numeric attribute (count, sum, min, max, avg).
    #[arg(long)]
    attr_key: Option<String>,
}

pub async fn stats(ctx: &Ctx, args: StatsArgs) -> Result<(), CliError> {
    let mut url = ctx.client.api(&["stats"]);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("window", &args.window);
        if let Some(b) = &args.bucket {
            q.append_pair("bucket", b);
        }
        if let Some(w) = &args.workflow {
            q.append_pair("workflow", w);
        }
    }
    let stats_json = ctx.client.get(url).await?;
    let stats: Stats = api::parse("stats", &stats_json)?;
    let attribute_json = match &args.attr_key {
        Some(key) => {
            let mut url = ctx.client.api(&["stats", "attributes"]);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("key", key);
                q.append_pair("created_after", &args.window);
                if let Some(w) = &args.workflow {
                    q.append_pair("workflow", w);
                }
            }
            Some(ctx.client.get(url).await?)
        }
        None => None,
    };
    if ctx.json {
        return match attribute_json {
            Some(a) => output::json(&json!({"stats": stats_json, "attribute": a})),
            None => output::json(&stats_json),
        };
    }
    let mut out = format!("instances created in the last {}", args.window);
    if let (Some(from), Some(to)) = (&stats.from, &stats.to) {
        out.push_str(&format!(" ({from} to {to})"));
    }
    out.push('\n');
    out.push_str(&totals_table(&stats));
    if !stats.failed_steps.is_empty() {
        out.push_str("\nfailed steps\n");
        let mut t = Table::new(&["WORKFLOW", "STEP", "FAILURES"]).right(2);
        for f in &stats.failed_steps {
            t.row(vec![
                f.workflow.clone(),
                f.step.clone(),
                f.count.to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    if let Some(a) = &attribute_json {
        let a: AttributeStats = api::parse("attribute stats", a)?;
        out.push_str(&format!("\nattribute {}\n", a.key));
        let mut t = Table::new(&["INSTANCES", "SUM", "MIN", "MAX", "AVG"])
            .right(0)
            .right(1)
            .right(2)
            .right(3)
            .right(4);
        t.row(vec![
            a.count.to_string(),
            number(a.sum),
            number(a.min),
            number(a.max),
            number(a.avg),
        ]);
        out.push_str(&t.render());
    }
    output::print(&out)
}

/// One row per workflow, one column per status that occurs, and the total.
fn totals_table(stats: &Stats) -> String {
    if stats.totals.is_empty() {
        return "no instances\n".into();
    }
    let mut rows: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for t in &stats.totals {
        *rows
            .entry(&t.workflow)
            .or_default()
            .entry(&t.status)
            .or_default() += t.count;
    }
    // Known statuses in their usual order, then any the server added.
    let mut columns: Vec<&str> = STATUSES
        .iter()
        .copied()
        .filter(|s| stats.totals.iter().any(|t| t.status == *s))
        .collect();
    for t in &stats.totals {
        if !columns.contains(&t.status.as_str()) {
            columns.push(&t.status);
        }
    }
    let headers: Vec<String> = std::iter::once("WORKFLOW".to_string())
        .chain(columns.iter().map(|c| c.to_uppercase()))
        .chain(std::iter::once("TOTAL".to_string()))
        .collect();
    let mut table = Table::new(&headers);
    for i in 1..headers.len() {
        table = table.right(i);
    }
    for (workflow, counts) in &rows {
        let mut row = vec![workflow.to_string()];
        row.extend(
            columns
                .iter()
                .map(|c| counts.get(c).copied().unwrap_or(0).to_string()),
        );
        row.push(counts.values().sum::<u64>().to_string());
        table.row(row);
    }
    table.render()
}

/// `58`, `1.87`, or `-`.
fn number(n: Option<f64>) -> String {
    match n {
        None => "-".into(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}
