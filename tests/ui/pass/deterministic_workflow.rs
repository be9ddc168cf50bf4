//! Everything here is replay-safe (or marked so) and compiles without a warning from the macros.

use orch_runtime::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
struct Order {
    id: u64,
    lines: BTreeMap<String, u32>,
}

// A step is not replayed: plain clocks, timers and ids are fine there.
#[step(retry = Retry::exponential(ms(10)).max_attempts(3), timeout = secs(5))]
async fn charge(order: &Order, attempt_note: String) -> Result<String, StepError> {
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let _ = (SystemTime::now(), started.elapsed(), attempt_note);
    Ok(format!("{}-{}", order.id, orch::idempotency_key()))
}

#[step]
async fn describe<T: std::fmt::Debug + Clone + Send + Sync>(value: T) -> Result<String, StepError> {
    Ok(format!("{value:?}"))
}

#[workflow(name = "pass.checkout", handle = CheckoutFlow)]
async fn checkout(order: Order) -> Result<String, StepError> {
    let started = orch::now().await;
    let id = orch::uuid().await;
    let coin = orch::random().await % 2;
    orch::sleep(secs(1)).await;
    let (a, b) = tokio::try_join!(charge(&order, id.to_string()), describe(coin))?;
    // Ordered maps iterate the same way on every replay.
    let mut total = 0;
    for (_, qty) in &order.lines {
        total += qty;
    }
    // A HashMap is fine as long as it is not iterated.
    let mut seen = HashMap::new();
    seen.insert(order.id, total);
    let known = seen.get(&order.id).copied().unwrap_or(0) + seen.len() as u32;
    // The author knows these cannot change the workflow's path.
    #[orch(deterministic)]
    let sum: u32 = seen.values().sum();
    #[orch(deterministic)]
    println!("{:?} {}", Instant::now(), sum);
    #[orch(deterministic)]
    eprintln!("{:?}", SystemTime::now());
    #[orch(deterministic)]
    std::hint::black_box(Instant::now());
    let elapsed = orch::now().await.duration_since(started).unwrap_or_default();
    let each = |n: u32| n * 2;
    Ok(format!("{a} {b} {known} {} {elapsed:?}", each(total)))
}

fn main() {
    let _ = CheckoutFlow;
}
