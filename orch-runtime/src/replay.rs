//! The one path every durable call takes: replay its recorded outcome, or execute it and
//! record the outcome.
//!
//! A call takes the next seq when it is made ([`WorkflowCtx::replay_or_execute`]). If the
//! journal holds an entry at that seq, the entry must be of the call's kind and name (else
//! the instance halts as incompatible, with the divergence message) and its outcome is
//! decoded into the code's type; otherwise the call executes and records its outcome with
//! [`Fresh::record`] (or [`Fresh::checkpoint`], awaited). Calls that execute when made (time,
//! randomness, timers, status, attributes) do both in one [`WorkflowCtx::replay_or_record`].
//!
//! Which call receives a cancellation is decided in one place too: see
//! [`WorkflowCtx::receive_cancel`] and [`WorkflowCtx::cancel_ends_wait`].

use crate::context::{Begin, Halt, WorkflowCtx};
use crate::journal::{self, EntryKind, JournalEntry};
use crate::store::{Millis, WriteOp};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A durable call's place in the journal, decided when the call is made.
pub(crate) enum Slot<T> {
    /// Recorded before: the outcome, in the code's type.
    Replay(T),
    /// Not recorded: execute, then record the outcome.
    Execute(Fresh),
    /// The call must never complete: the instance halts, for this reason if the call found
    /// one (the caller stops with it), or already halting.
    Halt(Option<Halt>),
}

/// When a recorded outcome must be durable.
#[derive(Clone, Copy)]
pub(crate) enum Durability {
    /// Before the instance suspends or finishes (any later awaited commit implies it).
    Later,
    /// Before the next step's side effect: a value replay could not reproduce.
    BeforeNextStep,
}

/// A call not recorded yet, executing as `seq`.
pub(crate) struct Fresh {
    ctx: Arc<WorkflowCtx>,
    /// The call's seq.
    pub(crate) seq: u32,
    kind: EntryKind,
    name: String,
    /// When the call started, if before its outcome (a step, a child workflow); otherwise
    /// the entry is stamped when recorded.
    pub(crate) started_at: Option<Millis>,
    /// Attempts it took (a step's retries, a signal wait's refused payloads).
    pub(crate) attempts: u32,
}

/// The standard decoding of a recorded outcome into the code's type `T` (see
/// [`JournalEntry::value`]): one that does not fit halts the instance as incompatible.
pub(crate) fn decoded<T: DeserializeOwned>(ctx: &WorkflowCtx, e: JournalEntry) -> Result<T, Halt> {
    decode_as(ctx, &e)
}

/// [`decoded`], for a caller that reads the entry after.
pub(crate) fn decode_as<T: DeserializeOwned>(
    ctx: &WorkflowCtx,
    e: &JournalEntry,
) -> Result<T, Halt> {
    e.value::<T>().map_err(|err| Halt::Incompatible {
        seq: e.seq,
        message: format!(
            "at seq {} the recorded {} `{}` does not deserialize into the type the code now \
             expects ({err}); {}",
            e.seq,
            e.kind,
            e.name,
            ctx.mismatch_advice()
        ),
    })
}

impl WorkflowCtx {
    /// Takes the next seq for the call `kind name`: replays its recorded outcome (read with
    /// `decode`), or hands back a [`Fresh`] call to execute and record.
    pub(crate) fn replay_or_execute<T>(
        self: &Arc<Self>,
        kind: EntryKind,
        name: &str,
        decode: impl FnOnce(&WorkflowCtx, JournalEntry) -> Result<T, Halt>,
    ) -> Slot<T> {
        match self.begin(kind, name) {
            Begin::Halted => Slot::Halt(None),
            Begin::Replay(e) => match decode(self, e) {
                Ok(v) => Slot::Replay(v),
                Err(halt) => Slot::Halt(Some(halt)),
            },
            Begin::Fresh(seq) => Slot::Execute(self.fresh(seq, kind, name)),
        }
    }

    /// [`replay_or_execute`](Self::replay_or_execute) for a call that executes when made:
    /// `execute` returns the result, its encoded outcome and the writes beside its entry,
    /// which is recorded at once (durable `when`). `Err` when the call must never complete
    /// (the instance halts; with `Some`, the caller halts it).
    pub(crate) fn replay_or_record<T>(
        self: &Arc<Self>,
        kind: EntryKind,
        name: &str,
        when: Durability,
        decode: impl FnOnce(&WorkflowCtx, JournalEntry) -> Result<T, Halt>,
        execute: impl FnOnce(&Fresh) -> Result<(T, Result<String, String>, Vec<WriteOp>), Halt>,
    ) -> Result<T, Option<Halt>> {
        match self.replay_or_execute(kind, name, decode) {
            Slot::Replay(v) => Ok(v),
            Slot::Halt(halt) => Err(halt),
            Slot::Execute(call) => {
                let (value, outcome, extra) = execute(&call).map_err(Some)?;
                call.record(outcome, extra, when).map_err(Some)?;
                Ok(value)
            }
        }
    }

    /// `patched(id)`: whether the code takes the new branch (see
    /// [`patch_marker`](Self::patch_marker)); a marker taken fresh is recorded.
    pub(crate) fn patched(self: &Arc<Self>, id: &str) -> bool {
        match self.patch_marker(id) {
            None => true,
            Some(Ok(taken)) => taken,
            Some(Err(seq)) => {
                let call = self.fresh(seq, EntryKind::Patch, id);
                let marker = Ok(journal::patch_marker());
                // The marker always serializes.
                let _ = call.record(marker, Vec::new(), Durability::Later);
                true
            }
        }
    }

    fn fresh(self: &Arc<Self>, seq: u32, kind: EntryKind, name: &str) -> Fresh {
        Fresh {
            ctx: self.clone(),
            seq,
            kind,
            name: name.to_string(),
            started_at: None,
            attempts: 1,
        }
    }
}

impl Fresh {
    /// The instance.
    pub(crate) fn ctx(&self) -> &Arc<WorkflowCtx> {
        &self.ctx
    }

    /// The entry holding `outcome` (JSON text, or why the value cannot be serialized).
    fn entry(&self, outcome: Result<String, String>) -> Result<JournalEntry, Halt> {
        let outcome = outcome.map_err(|e| Halt::Failed(self.unserializable(&e)))?;
        let now = self.ctx.now_ms();
        let mut entry = JournalEntry::new(self.seq, self.kind, &self.name, outcome, now);
        entry.started_at = self.started_at.unwrap_or(now);
        entry.attempts = self.attempts;
        Ok(entry)
    }

    fn unserializable(&self, e: &str) -> String {
        let what = match self.kind {
            EntryKind::Step => {
                return format!(
                    "step `{}` (seq {}) returned a value that cannot be serialized: {e}",
                    self.name, self.seq
                );
            }
            EntryKind::Deadline => "signal_with_timeout",
            EntryKind::Status => "set_status",
            EntryKind::Attribute => "set_attribute",
            other => other.as_str(),
        };
        format!("{what}: the value cannot be serialized: {e}")
    }

    /// Records the outcome without waiting (durable `when`), with `extra` writes beside it.
    pub(crate) fn record(
        &self,
        outcome: Result<String, String>,
        extra: Vec<WriteOp>,
        when: Durability,
    ) -> Result<(), Halt> {
        let entry = self.entry(outcome)?;
        match when {
            Durability::Later => self.ctx.record_later(entry, extra),
            Durability::BeforeNextStep => self.ctx.record_value(entry, extra),
        }
        Ok(())
    }

    /// Records the outcome, with `extra` writes beside it, and waits until it is durable:
    /// when it finished.
    pub(crate) async fn checkpoint(
        &self,
        outcome: Result<String, String>,
        extra: Vec<WriteOp>,
    ) -> Result<Millis, Halt> {
        let entry = self.entry(outcome)?;
        let finished = entry.finished_at;
        self.ctx.record(entry, extra).await.map_err(Halt::Store)?;
        Ok(finished)
    }
}
