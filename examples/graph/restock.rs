//! A workflow with nested branches, a loop, parallel arms, a signal wait, a timer and
//! background work: the restocking of a warehouse, with steps that answer locally.

use orch_runtime::prelude::*;
use serde::{Deserialize, Serialize};

/// One line to restock.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Line {
    /// Product.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// What to restock.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Request {
    /// Warehouse.
    pub warehouse: String,
    /// Lines.
    pub lines: Vec<Line>,
}

impl Request {
    /// `n` lines; every third is a bulk line.
    pub fn demo(n: u64) -> Request {
        Request {
            warehouse: "north".into(),
            lines: (1..=n)
                .map(|i| Line {
                    sku: format!("sku-{i}"),
                    qty: if i % 3 == 0 { 500 } else { 20 },
                })
                .collect(),
        }
    }
}

/// Restocks a warehouse: bulk lines need a supplier's approval, the rest are ordered
/// straight away; then a carrier is booked while labels print, and a manager may hold the
/// delivery back.
#[workflow]
pub async fn restock(req: Request) -> Result<u32, StepError> {
    let budget = fetch_budget(&req.warehouse).await?;
    let mut ordered = 0;
    for line in req.lines.clone() {
        if line.qty > 100 {
            match approve_bulk(&line, budget).await {
                Ok(true) => ordered += place_order(&line).await?,
                Ok(false) => notify_buyer(&line).await?,
                Err(e) => return Err(e),
            }
        } else {
            ordered += place_order(&line).await?;
        }
    }
    let (carrier, labels) = tokio::join!(book_carrier(&req), print_labels(&req));
    carrier?;
    labels?;
    if let Some(hold) = orch::signal_with_timeout::<bool>("hold", secs(1)).await
        && hold
    {
        orch::sleep(secs(1)).await;
    }
    orch::background(send_report(req.warehouse.clone(), ordered));
    Ok(ordered)
}

/// The warehouse's budget.
#[step]
async fn fetch_budget(warehouse: &str) -> Result<u64, StepError> {
    Ok(warehouse.len() as u64 * 10_000)
}

/// A supplier approves bulk lines within budget; the first attempt times out.
#[step(retry = Retry::fixed(ms(5)).max_attempts(3))]
async fn approve_bulk(line: &Line, budget: u64) -> Result<bool, StepError> {
    if orch::current_step().is_some_and(|s| s.attempt == 1) {
        return Err(StepError::retryable("supplier timed out"));
    }
    Ok(u64::from(line.qty) * 10 <= budget)
}

/// Orders a line.
#[step]
async fn place_order(line: &Line) -> Result<u32, StepError> {
    Ok(line.qty)
}

/// Tells the buyer a bulk line was refused.
#[step]
async fn notify_buyer(line: &Line) -> Result<(), StepError> {
    let _ = line;
    Ok(())
}

/// Books a carrier.
#[step]
async fn book_carrier(req: &Request) -> Result<String, StepError> {
    Ok(format!("carrier-{}", req.warehouse))
}

/// Prints the labels.
#[step]
async fn print_labels(req: &Request) -> Result<u32, StepError> {
    Ok(req.lines.len() as u32)
}

/// Sends the report (optional).
#[step]
async fn send_report(warehouse: String, ordered: u32) -> Result<(), StepError> {
    let _ = (warehouse, ordered);
    Ok(())
}
