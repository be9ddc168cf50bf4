use orch_runtime::prelude::*;
use std::rc::Rc;

#[step]
async fn load() -> Result<u32, StepError> {
    Ok(1)
}

#[workflow]
async fn holds_rc() -> Result<u32, StepError> {
    let shared = Rc::new(1u32);
    let n = load().await?;
    Ok(n + *shared)
}

fn main() {}
