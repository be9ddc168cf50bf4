//! When replay finds a journal the code does not follow, the message says what it means: under
//! another code version, the code changed; under the same version, the code took a different
//! path for the same journal (nondeterminism, or a change outside the workflow body) — and it
//! does not tell the user to deploy the version they are already running.

use orch_runtime::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the body branches on without recording it: a global (like a clock or an env var).
static FLIPPED: AtomicBool = AtomicBool::new(false);

#[step]
async fn left() -> Result<u32, StepError> {
    Ok(1)
}

#[step]
async fn right() -> Result<u32, StepError> {
    Ok(2)
}

#[workflow(name = "divergence.fickle")]
async fn fickle() -> Result<u32, StepError> {
    #[orch(deterministic)] // it is not: that is the point of the test
    let go_right = FLIPPED.load(Ordering::SeqCst);
    if go_right {
        right().await
    } else {
        left().await
    }
}

#[tokio::test]
async fn replaying_under_the_same_version_says_the_code_took_a_different_path() {
    let rt = Runtime::builder()
        .in_memory()
        .build()
        .await
        .expect("runtime");
    let run = rt.start(Fickle, ()).await.expect("start");
    assert_eq!(run.result().await.expect("result"), Ok(1));
    let export = rt.export(run.id()).await.expect("export");
    rt.shutdown().await.expect("shutdown");

    FLIPPED.store(true, Ordering::SeqCst);
    let err = orch_runtime::testing::replay(&export)
        .await
        .expect_err("the code no longer follows the journal");
    let msg = err.to_string();
    assert!(msg.contains("at seq 1"), "{msg}");
    assert!(msg.contains("recorded step `left`"), "{msg}");
    assert!(msg.contains("now calls step `right`"), "{msg}");
    assert!(
        msg.contains("took a different path for the same journal"),
        "{msg}"
    );
    assert!(msg.contains("not deterministic"), "{msg}");
    assert!(msg.contains("orch::patched"), "{msg}");
    assert!(
        !msg.contains("deploy the version that started it"),
        "the same version is running already: {msg}"
    );
    assert!(
        msg.contains(&format!("version {}", Fickle::VERSION)),
        "{msg}"
    );
}
