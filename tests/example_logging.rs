//! The checkout example shows the runtime's own logs (the HTTP server's, the store's) on
//! stderr, filtered by `RUST_LOG`, with a quiet default so its output stays readable.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::{example_binary, wait_bounded};

/// Runs one order with the HTTP server on a free port; returns stderr.
fn run(rust_log: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(example_binary());
    cmd.args(["--orders", "1", "--json", "--http", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("orch.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match rust_log {
        Some(spec) => cmd.env("RUST_LOG", spec),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = cmd.spawn().expect("start the example");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).expect("read stderr"));
    let status = wait_bounded(&mut child, Duration::from_secs(120));
    let text = reader.join().expect("reader");
    assert!(status.success(), "the example failed: {text}");
    text
}

#[test]
fn rust_log_turns_on_the_runtimes_logs_and_the_default_keeps_info_quiet() {
    let verbose = run(Some("orch_runtime=info"));
    assert!(
        verbose.contains("orch HTTP server listening"),
        "the server's own log line is shown: {verbose}"
    );
    let quiet = run(None);
    assert!(
        !quiet.contains("orch HTTP server listening"),
        "info lines are off by default: {quiet}"
    );
}
