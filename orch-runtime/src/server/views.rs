//! The JSON shapes of the API (see `docs/http-api.md`).

use crate::journal::{EntryKind, JournalEntry, Outcome, SignalOutcome, StepOutcome};
use crate::store::{AttemptRecord, Details, InstanceRecord, Lease, Millis, SignalRecord, Status};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn time(ms: Millis) -> Value {
    Value::String(time_text(ms))
}

/// [`time`] as text.
pub(crate) fn time_text(ms: Millis) -> String {
    // RFC 3339 ends at year 9999: later times (a sleep "forever") show as its last instant.
    const MAX: Millis = 253_402_300_799_999;
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn opt_time(ms: Option<Millis>) -> Value {
    ms.map_or(Value::Null, time)
}

/// Parses JSON text stored by the runtime; text that is not JSON is returned as a string.
pub(crate) fn json_text(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

fn opt_json(raw: &Option<String>) -> Value {
    raw.as_deref().map_or(Value::Null, json_text)
}

fn attrs_json(attrs: Option<&BTreeMap<String, String>>) -> Value {
    let mut map = Map::new();
    for (k, v) in attrs.into_iter().flatten() {
        map.insert(k.clone(), json_text(v));
    }
    Value::Object(map)
}

/// Longest `error` in a search summary, in bytes; the instance's own GET has all of it.
pub(crate) const SUMMARY_ERROR_BYTES: usize = 512;

/// Largest `custom_status` in a search summary, in bytes of JSON; a larger one is `null` there
/// (with `custom_status_truncated: true`) and whole on the instance's own GET.
pub(crate) const SUMMARY_CUSTOM_STATUS_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn truncated(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_string(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (format!("{}…", &text[..end]), true)
}

/// Who drives an instance: its owner's lease (see [`Lease`]), `live` while it runs at `now`.
fn owner_json(owner: Option<&Lease>, now: Millis) -> Value {
    owner.map_or(Value::Null, |l| {
        json!({
            "node": l.node.as_str(),
            "epoch": l.epoch,
            "lease_expires_at": time(l.expires_at),
            "live": l.expires_at > now,
        })
    })
}

/// An instance with its owner (at `now`); `full` adds input and output, and a summary (not
/// `full`) carries a shortened `error` and a small `custom_status` only, so a page of results
/// stays small.
pub(crate) fn instance(
    rec: &InstanceRecord,
    attrs: Option<&BTreeMap<String, String>>,
    owner: Option<&Lease>,
    now: Millis,
    full: bool,
) -> Value {
    let mut v = json!({
        "id": rec.id,
        "workflow": rec.workflow,
        "version": rec.version,
        "status": rec.status,
        "custom_status": opt_json(&rec.custom_status),
        "attributes": attrs_json(attrs),
        "error": rec.error,
        "failed_step": rec.failed_step,
        "failed_seq": rec.failed_seq,
        "parent": rec.parent,
        "created_at": time(rec.created_at),
        "updated_at": time(rec.updated_at),
        "wake_at": opt_time(rec.wake_at),
        "cancel_requested": rec.cancel_requested.is_some(),
        "cancel_requested_at": opt_time(rec.cancel_requested),
        "retries": rec.retries,
        "owner": owner_json(owner, now),
    });
    if let Value::Object(map) = &mut v {
        if full {
            map.insert("input".into(), json_text(&rec.input));
            map.insert("output".into(), opt_json(&rec.output));
            map.insert("error_truncated".into(), Value::Bool(false));
            map.insert("custom_status_truncated".into(), Value::Bool(false));
        } else {
            let (error, error_cut) = match rec.error.as_deref() {
                Some(e) => {
                    let (e, cut) = truncated(e, SUMMARY_ERROR_BYTES);
                    (Value::String(e), cut)
                }
                None => (Value::Null, false),
            };
            map.insert("error".into(), error);
            map.insert("error_truncated".into(), Value::Bool(error_cut));
            let status_cut = rec
                .custom_status
                .as_ref()
                .is_some_and(|s| s.len() > SUMMARY_CUSTOM_STATUS_BYTES);
            if status_cut {
                map.insert("custom_status".into(), Value::Null);
            }
            map.insert("custom_status_truncated".into(), Value::Bool(status_cut));
        }
    }
    v
}

/// What a recorded outcome holds, for display: (value, error). A step shows its value or its
/// failure, a timer its time, a signal its payload; anything else (and an outcome that does
/// not decode) the stored JSON as it is.
fn outcome_of(e: &JournalEntry, decoded: Option<&Outcome>) -> (Value, Option<String>) {
    match decoded {
        Some(Outcome::Step(StepOutcome::Value(v))) => (v.clone(), None),
        Some(Outcome::Step(StepOutcome::Failed(message))) => (Value::Null, Some(message.clone())),
        Some(Outcome::Sleep(ms) | Outcome::Deadline(ms)) => (time(*ms), None),
        Some(Outcome::Signal(SignalOutcome::Payload(p))) => (p.clone(), None),
        _ => (json_text(&e.outcome), None),
    }
}

fn attempt_json(a: &AttemptRecord) -> Value {
    json!({
        "attempt": a.attempt,
        "error": a.error,
        "started_at": time(a.started_at),
        "finished_at": time(a.finished_at),
    })
}

fn entry_json(
    e: &JournalEntry,
    attempts: &[&AttemptRecord],
    status: Status,
    now: Millis,
    cancel_seq: Option<u32>,
) -> Value {
    let decoded = e.decode().ok();
    let (outcome, failure) = outcome_of(e, decoded.as_ref());
    let final_failed = attempts.iter().any(|a| a.attempt >= e.attempts.max(1));
    let state = if failure.is_some() || (e.kind == EntryKind::Step && final_failed) {
        "failed"
    } else if cancel_seq == Some(e.seq) {
        "cancelled"
    } else if matches!(decoded, Some(Outcome::Sleep(at) | Outcome::Deadline(at)) if at > now)
        && !status.is_final()
    {
        "waiting"
    } else {
        "done"
    };
    json!({
        "seq": e.seq,
        "kind": e.kind,
        "name": e.name,
        "state": state,
        "outcome": outcome,
        "error": failure.or_else(|| attempts.last().filter(|_| final_failed).map(|a| a.error.clone())),
        "attempts": e.attempts,
        "started_at": time(e.started_at),
        "finished_at": time(e.finished_at),
        "duration_ms": (e.finished_at - e.started_at).max(0),
        "errors": attempts.iter().map(|a| attempt_json(a)).collect::<Vec<_>>(),
    })
}

/// The journal view of an instance.
pub(crate) fn journal(d: &Details, now: Millis) -> Value {
    let rec = &d.record;
    let entries: Vec<Value> = d
        .journal
        .iter()
        .map(|e| {
            let attempts: Vec<&AttemptRecord> =
                d.attempts.iter().filter(|a| a.seq == e.seq).collect();
            entry_json(e, &attempts, rec.status, now, rec.cancel_seq)
        })
        .collect();
    // Failed attempts of a step still running (no entry yet) are shown too.
    let recorded: std::collections::HashSet<u32> = d.journal.iter().map(|e| e.seq).collect();
    let in_flight: Vec<Value> = d
        .attempts
        .iter()
        .filter(|a| !recorded.contains(&a.seq))
        .map(|a| {
            json!({"seq": a.seq, "attempt": a.attempt, "error": a.error,
                         "started_at": time(a.started_at), "finished_at": time(a.finished_at)})
        })
        .collect();
    let mut retries: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    for s in &d.superseded {
        let attempts: Vec<&AttemptRecord> = d
            .superseded_attempts
            .iter()
            .filter(|(r, a)| *r == s.retry && a.seq == s.entry.seq)
            .map(|(_, a)| a)
            .collect();
        retries.entry(s.retry).or_default().push(entry_json(
            &s.entry,
            &attempts,
            Status::Failed,
            now,
            None,
        ));
    }
    json!({
        "id": rec.id,
        "status": rec.status,
        "entries": entries,
        "failed_attempts_in_flight": in_flight,
        "superseded": retries
            .into_iter()
            .map(|(retry, entries)| json!({"retry": retry, "entries": entries}))
            .collect::<Vec<_>>(),
        "pending_signals": d.signals.iter().map(signal_json).collect::<Vec<_>>(),
    })
}

fn signal_json(s: &SignalRecord) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "payload": json_text(&s.payload),
        "received_at": time(s.received_at),
    })
}
