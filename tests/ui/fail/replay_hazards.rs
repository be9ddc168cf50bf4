//! Calls whose result changes on replay, each named with its durable replacement.

use orch_runtime::prelude::*;
use std::time::{Duration, Instant, SystemTime};

// Stand-ins for the crates, so the test needs no extra dependencies.
mod chrono {
    pub struct Utc;
    impl Utc {
        pub fn now() -> u64 {
            0
        }
    }
    pub struct Local;
    impl Local {
        pub fn now() -> u64 {
            0
        }
    }
}
mod rand {
    pub fn random<T: Default>() -> T {
        T::default()
    }
    pub fn thread_rng() -> u64 {
        0
    }
}
struct Uuid;
impl Uuid {
    fn new_v4() -> u64 {
        0
    }
}

#[workflow]
async fn clocks_and_chance() -> u64 {
    let wall = SystemTime::now();
    let mono = Instant::now();
    let utc = chrono::Utc::now();
    let local = chrono::Local::now();
    let r: u64 = rand::random();
    let rng = rand::thread_rng();
    let id = Uuid::new_v4();
    let _ = (wall, mono);
    utc + local + r + rng + id
}

#[workflow]
async fn tasks_and_timers() {
    let task = tokio::spawn(async { 1 });
    let thread = std::thread::spawn(|| 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::thread::sleep(Duration::from_secs(1));
    let later = async {
        // Closures and async blocks run in the workflow too.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    later.await;
    let _ = (task, thread);
}

#[workflow]
async fn racing() -> u32 {
    tokio::select! {
        _ = orch::sleep(secs(5)) => 0,
        n = orch::signal::<u32>("go") => n,
    }
}

fn main() {}
