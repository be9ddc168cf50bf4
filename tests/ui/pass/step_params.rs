//! Step parameters whose names the generated test doubles also use internally.

use orch_runtime::prelude::*;

#[step]
async fn dry(mock: bool, attempts: u32, failure: String) -> Result<String, StepError> {
    Ok(format!("{mock} {attempts} {failure}"))
}

fn main() {
    let _ = dry::mock(|mock, attempts, failure| async move { Ok(format!("{mock}{attempts}{failure}")) });
    let _ = dry::fail_first(1, || Err(StepError::retryable("busy")));
}
