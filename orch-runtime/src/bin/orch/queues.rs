//! `orch queues`: the server's queues (depth, in flight, oldest waiting, throughput, workers)
//! and the workers it served recently.

use crate::api::{self, Queues};
use crate::client::CliError;
use crate::display::relative;
use crate::table::Table;
use crate::{Ctx, output};
use std::time::SystemTime;

pub async fn queues(ctx: &Ctx) -> Result<(), CliError> {
    let value = ctx.client.get(ctx.client.api(&["queues"])).await?;
    if ctx.json {
        return output::json(&value);
    }
    let list: Queues = api::parse("queues", &value)?;
    let now = SystemTime::now();
    let mut out = String::new();
    if list.queues.is_empty() {
        out.push_str("no queues\n");
    } else {
        let mut t = Table::new(&[
            "QUEUE",
            "KIND",
            "WAITING",
            "IN FLIGHT",
            "OLDEST WAITING",
            "DONE/MIN",
            "COMPLETED",
            "FAILED",
            "WORKERS",
        ])
        .right(2)
        .right(3)
        .right(5)
        .right(6)
        .right(7)
        .right(8);
        for q in &list.queues {
            let n = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
            t.row(vec![
                q.queue.clone(),
                q.kind.clone(),
                n(q.waiting),
                n(q.in_flight),
                relative(q.oldest_waiting.as_deref(), now),
                n(q.finished_last_minute),
                n(q.completed),
                n(q.failed),
                n(q.workers),
            ]);
        }
        out.push_str(&t.render());
    }
    if !list.workers.is_empty() {
        let mut t = Table::new(&[
            "WORKER",
            "QUEUES",
            "NODE",
            "LAST POLL",
            "LAST HEARTBEAT",
            "STATE",
        ]);
        for w in &list.workers {
            t.row(vec![
                w.id.clone(),
                w.queues.join(","),
                w.node.clone().unwrap_or_else(|| "-".into()),
                relative(w.last_poll.as_deref(), now),
                relative(w.last_heartbeat.as_deref(), now),
                if w.connected { "connected" } else { "gone" }.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    output::print(&out)
}
