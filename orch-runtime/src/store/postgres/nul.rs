//! PostgreSQL's `text` cannot hold the character U+0000 (SQLite's can): a write holding one
//! would fail every time it is tried — a step whose error text came from a service with a NUL
//! in it would never get its end recorded. So before anything reaches the writer, U+0000 in
//! free text (error texts, names, attribute keys, audit details) becomes U+FFFD, the
//! replacement character. JSON (inputs, outputs, payloads, statuses) escapes it already.

use crate::store::{InstanceRecord, JournalEntry, WriteOp};

/// U+0000 in `s` becomes U+FFFD (nothing is copied when there is none).
pub(super) fn text(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

fn opt(s: &mut Option<String>) {
    if let Some(s) = s {
        text(s);
    }
}

fn entry(e: &mut JournalEntry) {
    text(&mut e.name);
    text(&mut e.outcome);
}

/// The free text of an instance record.
pub(super) fn record(r: &mut InstanceRecord) {
    // Ids (the instance's, its parent's) are checked to a plain character set before they
    // get here: changing one would make it another instance's.
    text(&mut r.workflow);
    text(&mut r.version);
    text(&mut r.input);
    opt(&mut r.output);
    opt(&mut r.error);
    opt(&mut r.custom_status);
    opt(&mut r.failed_step);
}

/// The free text of `ops`.
pub(super) fn ops(ops: &mut [WriteOp]) {
    for op in ops {
        match op {
            WriteOp::Append { entry: e, .. } => entry(e),
            WriteOp::Attempt { record, .. } => text(&mut record.error),
            WriteOp::CustomStatus { value, .. } => text(value),
            WriteOp::Finish {
                output,
                error,
                failed_step,
                ..
            } => {
                opt(output);
                opt(error);
                if let Some((step, _)) = failed_step {
                    text(step);
                }
            }
            WriteOp::Attribute { key, value, .. } => {
                text(key);
                text(value);
            }
            WriteOp::Fork {
                record: r,
                journal,
                attempts,
                ..
            } => {
                record(r);
                journal.iter_mut().for_each(entry);
                attempts.iter_mut().for_each(|a| text(&mut a.error));
            }
            WriteOp::Audit(a) => {
                text(&mut a.actor);
                text(&mut a.action);
                text(&mut a.target);
                text(&mut a.detail);
            }
            WriteOp::ConsumeSignal { .. }
            | WriteOp::SetStatus { .. }
            | WriteOp::Wake { .. }
            | WriteOp::EndTimer { .. }
            | WriteOp::RequestCancel { .. }
            | WriteOp::CancelDelivered { .. }
            | WriteOp::Retry { .. }
            | WriteOp::CancelTask { .. } => {}
            WriteOp::EnqueueTask { task, .. } => {
                text(&mut task.step);
                text(&mut task.input);
                text(&mut task.idempotency_key);
            }
        }
    }
}

/// The free text of a worker's result.
pub(super) fn result(r: &mut crate::store::task::TaskResult) {
    match r {
        crate::store::task::TaskResult::Completed { output } => text(output),
        crate::store::task::TaskResult::Failed { message, .. } => text(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn no_nul_is_left_and_nothing_else_changes(s in any::<String>()) {
            let mut t = s.clone();
            text(&mut t);
            prop_assert!(!t.contains('\0'));
            prop_assert_eq!(t.chars().count(), s.chars().count());
            prop_assert_eq!(t.replace('\u{FFFD}', ""), s.replace(['\0', '\u{FFFD}'], ""));
        }
    }
}
