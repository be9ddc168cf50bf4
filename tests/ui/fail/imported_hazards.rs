//! Hazards imported outside the function: `#[workflow]` cannot see those `use` items, so a bare
//! call of a hazard name is refused with the spelling that tells it apart, and a `use` inside
//! the body is followed.

use orch_runtime::prelude::*;
use std::time::Duration;
use tokio::spawn;
use tokio::task::{spawn_blocking, spawn_local};
use tokio::time::{Instant, sleep, sleep_until};

// Stand-ins for the crates, so the test needs no extra dependencies.
mod clock {
    pub fn now() -> u64 {
        0
    }
}
mod rand {
    pub fn random() -> u64 {
        0
    }
    pub fn rng() -> u64 {
        0
    }
    pub fn thread_rng() -> u64 {
        0
    }
}
mod uuid {
    pub fn new_v4() -> u64 {
        0
    }
    pub fn now_v7() -> u64 {
        0
    }
}
use clock::now;
use orch_runtime::orch::idempotency_key;
use rand::{random, rng, thread_rng};
use uuid::{new_v4, now_v7};

#[workflow]
async fn timers_and_tasks() {
    sleep(Duration::from_secs(1)).await;
    sleep_until(Instant::now()).await;
    let task = spawn(async { 1 });
    let blocking = spawn_blocking(|| 2);
    let local = spawn_local(async { 3 });
    let _ = (task, blocking, local);
}

#[workflow]
async fn clocks_and_chance() -> u64 {
    let t = now();
    let r = random() + rng() + thread_rng();
    let id = new_v4() + now_v7();
    let key = idempotency_key();
    let _ = key;
    t + r + id
}

#[workflow]
async fn imported_in_the_body() {
    use tokio::time::sleep as nap;
    use tokio::spawn as go;
    nap(Duration::from_secs(1)).await;
    let _ = go(async {});
}

fn main() {}
