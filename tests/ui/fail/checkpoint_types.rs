use orch_runtime::prelude::*;

struct Order {
    id: u64,
}

struct Receipt;

#[workflow]
async fn place(order: Order) -> Receipt {
    let _ = order.id;
    Receipt
}

#[derive(Clone)]
struct Label;

#[step]
async fn print(label: Label) -> Result<Label, StepError> {
    Ok(label)
}

struct NotClone;

#[step]
async fn consume(x: NotClone) -> Result<u32, StepError> {
    let _ = x;
    Ok(1)
}

fn main() {}
