//! Writing to stdout without panicking when the reader goes away (`orch list | head`).

use crate::client::CliError;
use serde_json::Value;
use std::io::Write;

/// Writes `text` to stdout and flushes (so `tail` lines appear at once). A closed pipe ends
/// the process quietly with success: the reader has what it wanted.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(CliError::Failed(format!("cannot write to stdout: {e}"))),
    }
}

/// Prints a JSON document, pretty, with a final newline.
pub fn json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    print(&format!("{text}\n"))
}

/// Prints a JSON document on one line (a stream of events, one per line).
pub fn json_line(value: &Value) -> Result<(), CliError> {
    print(&format!("{value}\n"))
}
