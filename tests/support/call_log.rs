//! A call log shared by a test and the processes it starts: each line one call a step made
//! (appended, so several processes may write it), read back to check what ran, where and how
//! often.
//!
//! Included with `#[path = "support/call_log.rs"] mod call_log;`.

use std::path::Path;
use std::time::{Duration, Instant};

/// Appends `line` to the call log at `log`.
pub fn log_line(log: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("call log");
    writeln!(f, "{line}").expect("write call log");
}

/// The log's lines (none while it does not exist).
pub fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `ready` holds of the log's lines; fails naming `what` after a generous deadline.
pub fn wait_for_log(log: &Path, what: &str, ready: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let lines = log_lines(log);
        if ready(&lines) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {lines:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
