//! Malformed attribute arguments, each reported on its own tokens.

use orch_runtime::prelude::*;

const NAME: &str = "x";

#[workflow(nmae = "a", name = NAME, crate = "not a path", handle = "Quoted")]
async fn misspelled() {}

#[workflow(name = "b", name = "c")]
async fn twice() {}

#[workflow(name = "")]
async fn empty_name() {}

#[workflow(checkout)]
async fn bare_word() {}

#[step(retry = 5, timeout = "10s")]
async fn wrong_types() -> Result<(), StepError> {
    Ok(())
}

#[step(retries = Retry::fixed(ms(1)))]
async fn unknown_step_option() -> Result<(), StepError> {
    Ok(())
}

fn main() {}
