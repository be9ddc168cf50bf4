//! How values look in human output: relative times, short durations, one-line JSON.

use serde_json::Value;
use std::time::{Duration, SystemTime};

/// `"5m ago"`, `"in 3h"`, or `"-"`; a timestamp that does not parse is shown as sent.
pub fn relative(ts: Option<&str>, now: SystemTime) -> String {
    let Some(ts) = ts else {
        return "-".into();
    };
    let Ok(at) = humantime::parse_rfc3339_weak(ts) else {
        return ts.to_string();
    };
    match now.duration_since(at) {
        Ok(past) => format!("{} ago", short(past)),
        Err(future) => format!("in {}", short(future.duration())),
    }
}

/// `"2026-11-26T08:00:00.123Z (5m ago)"`.
pub fn timestamp(ts: Option<&str>, now: SystemTime) -> String {
    match ts {
        None => "-".into(),
        Some(s) if humantime::parse_rfc3339_weak(s).is_ok() => {
            format!("{s} ({})", relative(Some(s), now))
        }
        Some(s) => s.to_string(),
    }
}

/// One unit, rounded down: `12s`, `5m`, `3h`, `4d`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A step's duration: `12ms`, `1.25s`, `3m05s`, `2h03m`.
pub fn millis(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.2}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// User JSON on one line, cut to `max` characters with `…`. Strings are shown unquoted.
pub fn json_line(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    truncate(&s, max)
}

/// The first line of `s`, cut to `max` characters with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    let mut lines = s.lines();
    let first = lines.next().unwrap_or("");
    let more_lines = lines.next().is_some();
    if first.chars().count() > max {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else if more_lines {
        format!("{first}…")
    } else {
        first.to_string()
    }
}

/// User JSON, pretty, each line indented by two spaces.
pub fn json_block(v: &Value) -> String {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    pretty
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
}

/// An error value (a string, or any JSON) as text.
pub fn error_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// `"1 attempt"`, `"3 attempts"`.
pub fn attempts(n: u64) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ages_are_short() {
        assert_eq!(millis(12), "12ms");
        assert_eq!(millis(1250), "1.25s");
        assert_eq!(millis(185_000), "3m05s");
        assert_eq!(millis(7_380_000), "2h03m");
        assert_eq!(short(Duration::from_secs(59)), "59s");
        assert_eq!(short(Duration::from_secs(3 * 86_400)), "3d");
        let now = humantime::parse_rfc3339("2026-11-26T08:05:00Z").expect("time");
        assert_eq!(relative(Some("2026-11-26T08:00:00.123Z"), now), "4m ago");
        assert_eq!(relative(Some("2026-11-26T09:05:00.000Z"), now), "in 1h");
        assert_eq!(relative(Some("yesterday"), now), "yesterday");
        assert_eq!(relative(None, now), "-");
    }

    #[test]
    fn json_is_cut_to_one_line() {
        assert_eq!(json_line(&serde_json::json!("waiting"), 20), "waiting");
        assert_eq!(json_line(&serde_json::json!({"a": 1}), 20), r#"{"a":1}"#);
        assert_eq!(json_line(&serde_json::json!("abcdefgh"), 5), "abcd…");
        assert_eq!(truncate("one\ntwo", 10), "one…");
    }
}
