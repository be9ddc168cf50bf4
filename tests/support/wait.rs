//! Waiting for a state instead of for a time: tests poll until what they need holds, and
//! return as soon as it does. The deadline is generous, so a busy machine (other builds,
//! `cargo test` running every binary at once) only slows a test down instead of failing it;
//! it is there so that a broken behaviour fails the test instead of hanging it.
//!
//! Included with `#[path = "support/wait.rs"] mod wait;` (not through `support/mod.rs`, whose
//! other helpers most tests do not use).

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for a state before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Calls `check` until it returns `Ok`, and returns that value. `check` returns `Err` with
/// what it saw while the state is not reached yet; after [`PATIENCE`] the test fails with
/// `what` and the last thing seen.
pub async fn wait_until<T, E, F, Fut>(what: &str, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; last seen: {seen:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
