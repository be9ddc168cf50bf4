//! A step double must have the step's own signature: same arguments, same output.

use orch_runtime::prelude::*;

#[step]
async fn charge(card: &str, cents: u64) -> Result<String, StepError> {
    Ok(format!("{card}:{cents}"))
}

fn main() {
    // One argument too few.
    let _ = charge::mock(|card| async move { Ok(card.len().to_string()) });
    // The wrong output type.
    let _ = charge::mock(|_, cents| async move { Ok::<u64, StepError>(cents) });
    // A failure of the wrong type.
    let _ = charge::fail_first(2, || Ok::<u64, StepError>(1));
}
