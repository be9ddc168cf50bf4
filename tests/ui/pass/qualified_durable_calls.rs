//! Durable calls spelled so the macro can tell what they are: a path through orch's modules,
//! or a `use` inside the body. Functions of one's own named like a hazard are called by a path.

use orch_runtime::prelude::*;
use std::time::Duration;

mod helpers {
    pub fn now() -> u64 {
        7
    }
}

fn random() -> u64 {
    4
}

#[workflow(name = "pass.qualified")]
async fn qualified() -> u64 {
    orch::sleep(secs(1)).await;
    orch_runtime::orch::sleep(Duration::from_millis(5)).await;
    orch_runtime::durable::sleep_until(std::time::UNIX_EPOCH).await;
    let t = orch::now().await;
    let r = orch_runtime::orch::random().await;
    let id = orch_runtime::durable::uuid().await;
    let mine = helpers::now() + self::random();
    let _ = (t, id);
    r + mine
}

#[workflow(name = "pass.imported_in_body")]
async fn imported_in_body(wait: bool) -> u64 {
    use orch_runtime::orch::{now, random as coin, sleep};
    sleep(Duration::from_secs(1)).await;
    let _ = now().await;
    // A parameter or local named like a hazard is not a call of one.
    let sleep = wait;
    let n = coin().await;
    if sleep { n } else { 0 }
}

#[workflow(name = "pass.glob_in_body")]
async fn glob_in_body() {
    use orch_runtime::orch::*;
    sleep(Duration::from_secs(1)).await;
    let _ = now().await;
}

use orch_runtime::orch::sleep;

#[workflow(name = "pass.opted_out")]
async fn opted_out() {
    // The author vouches for this one: it is orch's, imported at the top of the file.
    #[orch(deterministic)]
    sleep(Duration::from_millis(1)).await;
}

fn main() {
    let _ = (Qualified, ImportedInBody, GlobInBody, OptedOut);
}
