//! Step signatures the macro cannot support.

use orch_runtime::prelude::*;

#[step]
fn not_async() -> Result<u32, StepError> {
    Ok(1)
}

#[step]
async fn opaque_arg(x: impl std::fmt::Display) -> Result<String, StepError> {
    Ok(x.to_string())
}

#[step]
async fn opaque_output() -> impl std::fmt::Debug {
    1
}

#[step]
extern "C" fn foreign() {}

struct Client;

impl Client {
    #[step]
    async fn call(&self) -> Result<u32, StepError> {
        Ok(1)
    }
}

fn main() {}

mod alias {
    pub type Result<T> = std::result::Result<T, orch_runtime::StepError>;
}

#[step]
async fn through_alias() -> alias::Result<u32> {
    Ok(1)
}
