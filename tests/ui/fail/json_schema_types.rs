// Workflow inputs and outputs, step arguments and outputs and typed signal payloads need a JSON
// Schema: the error names the derive to add, on the type that lacks it.
use orch_runtime::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
}

#[derive(Serialize, Deserialize)]
struct Receipt;

#[derive(Clone, Serialize, Deserialize)]
struct Approval {
    by: String,
}

#[workflow]
async fn place(order: Order) -> Receipt {
    let _ = order.id;
    let _: Approval = orch::signal("approve").await;
    Receipt
}

#[step]
async fn charge(order: Order) -> Result<Receipt, StepError> {
    let _ = order;
    Ok(Receipt)
}

fn main() {}
