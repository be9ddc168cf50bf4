//! Durable primitives inside a step body: a step's work is journaled as one unit.

use orch_runtime::prelude::*;

#[step]
async fn notify(user: String) -> Result<(), StepError> {
    orch::sleep(secs(1)).await;
    let at = orch::now().await;
    let id = orch::uuid().await;
    let go: bool = orch::signal("go").await;
    orch::set_status("notifying").await;
    if orch::patched("v2") {
        orch::background(async {});
    }
    #[orch(deterministic)]
    let _ = (user, at, id, go);
    Ok(())
}

fn main() {}
