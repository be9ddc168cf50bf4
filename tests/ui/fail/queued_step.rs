use orch_runtime::prelude::*;

// A queue name is checked where it is written.
#[step(queue = "pay ments")]
async fn bad_name(x: u32) -> Result<u32, StepError> {
    Ok(x)
}

// Arguments travel to the worker as JSON: no references.
#[step(queue = "payments")]
async fn borrowed(order: &str) -> Result<u32, StepError> {
    Ok(order.len() as u32)
}

// A worker must know the types.
#[step(queue = "payments")]
async fn generic<T: Clone + Send + Sync + 'static>(x: T) -> Result<u32, StepError> {
    let _ = x;
    Ok(1)
}

fn main() {}
