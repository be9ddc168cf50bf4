//! Smoke test: a workflow runs on the in-memory store and as a plain call.
use orch_runtime::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};

static CALLS: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
struct Order {
    id: u32,
}

#[step]
async fn add_one(x: &Order, k: u32) -> Result<u32, StepError> {
    CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(x.id + k)
}

#[workflow]
async fn simple(order: Order) -> Result<u32, StepError> {
    let a = add_one(&order, 1).await?;
    let b = add_one(&order, a).await?;
    Ok(b)
}

#[tokio::test]
async fn smoke() {
    let rt = Runtime::builder().in_memory().build().await.expect("rt");
    let run = rt.start(Simple, Order { id: 1 }).await.expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(3));
    assert_eq!(simple(Order { id: 1 }).await, Ok(3));
}
