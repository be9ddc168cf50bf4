//! The journal format: what an instance's journal records, and the one encode/decode of each
//! entry's outcome.
//!
//! Every durable operation a workflow makes is one [`JournalEntry`]: its seq (program order),
//! its [`EntryKind`], a name and its outcome as JSON text. This module is the only place that
//! knows how each kind's outcome is written. Steps and durable primitives record and replay
//! through it, the server's views, the graph trace and the test tools read outcomes with
//! [`Outcome`], and the stores read and write kinds with [`EntryKind::as_str`] and
//! [`EntryKind::decode_stored`].
//!
//! | kind        | name              | outcome |
//! |-------------|-------------------|---------|
//! | `step`      | the step          | [`StepOutcome`]: `{"value": R}` (what the step returned, its own `Err` values included) or `{"failed": "message"}` (a failure its type cannot hold) |
//! | `child`     | the child workflow | the child's output, the JSON text its instance record holds |
//! | `sleep`     | (empty)           | when the timer fires, [`Millis`] |
//! | `deadline`  | the signal        | when the signal wait gives up, [`Millis`] |
//! | `signal`    | the signal        | [`SignalOutcome`]: `{"payload": P}` or `"timed_out"` |
//! | `now`       | (empty)           | the time returned, [`Millis`] |
//! | `random`    | (empty)           | the number returned, `u64` |
//! | `uuid`      | (empty)           | the UUID returned, as a string |
//! | `status`    | (empty)           | the custom status set |
//! | `patch`     | the patch id      | `true` |
//! | `attribute` | the key           | the value as canonical JSON (object keys sorted): the same text the stores keep as the attribute's value, so a retry or fork restores attributes from entries |
//!
//! Values are written by serde from the code's own types (never through
//! [`serde_json::Value`], which would reorder a struct's fields), except the two kinds whose
//! value is canonical JSON on purpose: a signal's payload and an attribute. Databases hold
//! these texts: changing one needs a migration of stored journals.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// What a journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A `#[step]` call.
    /// (Steps run with `orch::background` are journaled as steps too.)
    Step,
    /// A durable timer; the outcome holds its fire time.
    Sleep,
    /// The deadline of a signal wait with timeout.
    Deadline,
    /// A received signal (or its timeout).
    Signal,
    /// A child workflow's result.
    Child,
    /// `now()`.
    Now,
    /// `random()`.
    Random,
    /// `uuid()`.
    Uuid,
    /// `set_status()`.
    Status,
    /// `patched()`.
    Patch,
    /// `set_attribute()`: the name is the key, the outcome the value.
    Attribute,
}

impl EntryKind {
    /// Every kind.
    pub const ALL: [EntryKind; 11] = [
        EntryKind::Step,
        EntryKind::Sleep,
        EntryKind::Deadline,
        EntryKind::Signal,
        EntryKind::Child,
        EntryKind::Now,
        EntryKind::Random,
        EntryKind::Uuid,
        EntryKind::Status,
        EntryKind::Patch,
        EntryKind::Attribute,
    ];

    /// The lower-case name used in storage, in JSON and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Step => "step",
            EntryKind::Sleep => "sleep",
            EntryKind::Deadline => "deadline",
            EntryKind::Signal => "signal",
            EntryKind::Child => "child",
            EntryKind::Now => "now",
            EntryKind::Random => "random",
            EntryKind::Uuid => "uuid",
            EntryKind::Status => "status",
            EntryKind::Patch => "patch",
            EntryKind::Attribute => "attribute",
        }
    }

    /// Parses [`EntryKind::as_str`] back.
    pub fn parse(s: &str) -> Option<EntryKind> {
        EntryKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Reads the kind a store holds for entry `seq` of `instance`; an unknown one (damage, or
    /// a newer orch) is an error naming the entry, for the store to report.
    pub fn decode_stored(instance: &str, seq: u32, raw: &str) -> Result<EntryKind, String> {
        EntryKind::parse(raw).ok_or_else(|| {
            format!(
                "instance `{instance}` has a journal entry (seq {seq}) of unknown kind `{raw}` \
                 in the database"
            )
        })
    }

    /// Whether the outcome is a time taken when the operation ran (`now`, a timer's fire time,
    /// a deadline), so a run recorded at another moment holds another value.
    pub fn records_time(self) -> bool {
        matches!(
            self,
            EntryKind::Now | EntryKind::Sleep | EntryKind::Deadline
        )
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EntryKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EntryKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        EntryKind::parse(&raw).ok_or_else(|| {
            let known: Vec<&str> = EntryKind::ALL.iter().map(|k| k.as_str()).collect();
            serde::de::Error::custom(format!(
                "unknown journal entry kind `{raw}` (known: {})",
                known.join(", ")
            ))
        })
    }
}

/// One checkpoint: the outcome of one durable operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in program order, from 1.
    pub seq: u32,
    /// What kind of operation.
    pub kind: EntryKind,
    /// Step, signal or workflow name (empty for anonymous primitives).
    pub name: String,
    /// The outcome as JSON text, as the kind writes it (see the [module](self) and
    /// [`JournalEntry::decode`]).
    pub outcome: String,
    /// How many attempts it took (1 for non-steps).
    pub attempts: u32,
    /// When the operation started.
    pub started_at: Millis,
    /// When it finished.
    pub finished_at: Millis,
}

/// What a step's entry holds: `{"value": R}` or `{"failed": "message"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome<R> {
    /// What the step returned (its own `Err` values included).
    Value(R),
    /// A failure the step's type cannot hold (a panic or timeout when its error type has no
    /// `From<StepError>`): the workflow fails with this message, on replay too.
    Failed(String),
}

/// What a signal wait's entry holds: `{"payload": P}` or `"timed_out"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalOutcome<P> {
    /// The signal arrived with this payload.
    Payload(P),
    /// The wait gave up (its timeout, or a cancellation) before a signal arrived.
    TimedOut,
}

/// An entry's outcome decoded by its kind, values as JSON: the reading of the server's views,
/// the graph trace and tools. Replay decodes into the code's own types instead.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A step's outcome.
    Step(StepOutcome<Value>),
    /// A child workflow's output.
    Child(Value),
    /// A timer's fire time.
    Sleep(Millis),
    /// A signal wait's deadline.
    Deadline(Millis),
    /// A signal wait's outcome.
    Signal(SignalOutcome<Value>),
    /// The time `now()` returned.
    Now(Millis),
    /// The number `random()` returned.
    Random(u64),
    /// The UUID `uuid()` returned.
    Uuid(String),
    /// The custom status set.
    Status(Value),
    /// A `patched()` marker.
    Patch,
    /// An attribute's value (the entry's name is the key).
    Attribute(Value),
}

impl Outcome {
    /// Decodes `text`, an outcome of kind `kind`; text that does not fit the kind is an error
    /// describing why.
    pub fn decode(kind: EntryKind, text: &str) -> Result<Outcome, String> {
        Ok(match kind {
            EntryKind::Step => Outcome::Step(decode(text)?),
            EntryKind::Child => Outcome::Child(decode(text)?),
            EntryKind::Sleep => Outcome::Sleep(decode(text)?),
            EntryKind::Deadline => Outcome::Deadline(decode(text)?),
            EntryKind::Signal => Outcome::Signal(decode(text)?),
            EntryKind::Now => Outcome::Now(decode(text)?),
            EntryKind::Random => Outcome::Random(decode(text)?),
            EntryKind::Uuid => Outcome::Uuid(decode(text)?),
            EntryKind::Status => Outcome::Status(decode(text)?),
            EntryKind::Patch => match decode::<bool>(text)? {
                true => Outcome::Patch,
                false => return Err("a patch marker must be `true`".into()),
            },
            EntryKind::Attribute => Outcome::Attribute(decode(text)?),
        })
    }

    /// The message of a step that failed in a way its type cannot hold.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Outcome::Step(StepOutcome::Failed(message)) => Some(message),
            _ => None,
        }
    }

    /// Whether the outcome is an error: a step's failure, or a step's or child's value that
    /// is a `Result::Err` (`{"Err": …}`, as serde writes it).
    pub fn is_error(&self) -> bool {
        let is_err = |v: &Value| {
            v.as_object()
                .is_some_and(|o| o.len() == 1 && o.contains_key("Err"))
        };
        match self {
            Outcome::Step(StepOutcome::Failed(_)) => true,
            Outcome::Step(StepOutcome::Value(v)) | Outcome::Child(v) => is_err(v),
            _ => false,
        }
    }
}

impl JournalEntry {
    /// The entry of a durable primitive: one attempt, started and finished at `at`.
    pub(crate) fn new(
        seq: u32,
        kind: EntryKind,
        name: &str,
        outcome: String,
        at: Millis,
    ) -> JournalEntry {
        JournalEntry {
            seq,
            kind,
            name: name.to_string(),
            outcome,
            attempts: 1,
            started_at: at,
            finished_at: at,
        }
    }

    /// The outcome decoded by the entry's kind.
    pub fn decode(&self) -> Result<Outcome, String> {
        Outcome::decode(self.kind, &self.outcome)
    }

    /// For an `attribute` entry: the key and the value's JSON text (as the stores keep it).
    pub fn attribute(&self) -> Option<(&str, &str)> {
        (self.kind == EntryKind::Attribute).then_some((self.name.as_str(), self.outcome.as_str()))
    }

    /// The outcome in the code's own type `T` (for replay): `StepOutcome<R>` for a step,
    /// `SignalOutcome<P>` for a signal, [`Millis`] for a timer or deadline, the value
    /// otherwise (see the [module](self)).
    pub(crate) fn value<T: DeserializeOwned>(&self) -> Result<T, String> {
        decode(&self.outcome)
    }
}

/// Writes an outcome from the code's own type: `StepOutcome<&R>` for a step,
/// `SignalOutcome<&Value>` for a signal, [`Millis`] for a timer or deadline, the value
/// otherwise (see the [module](self)); use [`attribute_value`] for an attribute.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

/// An attribute's value as canonical JSON (object keys sorted), so stored values compare as
/// text.
pub(crate) fn attribute_value<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    match serde_json::to_value(value) {
        Ok(v) => encode(&v),
        // The error of serializing the value itself.
        Err(_) => encode(value),
    }
}

/// A signal's payload as a wait records it: the stored payload text read as JSON (text that
/// is not JSON counts as `null`).
pub(crate) fn signal_payload(stored: &str) -> Value {
    serde_json::from_str(stored).unwrap_or(Value::Null)
}

/// The marker a `patched()` call records.
pub(crate) fn patch_marker() -> String {
    "true".to_string()
}

fn decode<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// The texts orch has always written; stored journals hold them, so they must not change.
    #[test]
    fn every_kind_writes_the_text_stored_journals_hold() {
        #[derive(Serialize)]
        struct Shipped {
            zone: u8,
            carrier: &'static str,
        }
        let shipped: Result<Shipped, String> = Ok(Shipped {
            zone: 3,
            carrier: "dhl",
        });
        let cases: Vec<(EntryKind, Result<String, String>, &str)> = vec![
            (
                EntryKind::Step,
                encode(&StepOutcome::Value(&shipped)),
                r#"{"value":{"Ok":{"zone":3,"carrier":"dhl"}}}"#,
            ),
            (
                EntryKind::Step,
                encode(&StepOutcome::<()>::Failed("step `pay` panicked".into())),
                r#"{"failed":"step `pay` panicked"}"#,
            ),
            (
                EntryKind::Sleep,
                encode(&1_700_000_000_123i64),
                "1700000000123",
            ),
            (EntryKind::Deadline, encode(&-5i64), "-5"),
            (
                EntryKind::Signal,
                encode(&SignalOutcome::Payload(&signal_payload(
                    r#"{"b":1,"a":[true]}"#,
                ))),
                r#"{"payload":{"a":[true],"b":1}}"#,
            ),
            (
                EntryKind::Signal,
                encode(&SignalOutcome::<Value>::TimedOut),
                r#""timed_out""#,
            ),
            (EntryKind::Random, encode(&u64::MAX), "18446744073709551615"),
            (
                EntryKind::Uuid,
                encode(&uuid::Uuid::from_u128(
                    0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                )),
                r#""01234567-89ab-cdef-0123-456789abcdef""#,
            ),
            (EntryKind::Patch, Ok(patch_marker()), "true"),
            (
                EntryKind::Attribute,
                attribute_value(&Shipped {
                    zone: 1,
                    carrier: "ups",
                }),
                r#"{"carrier":"ups","zone":1}"#,
            ),
        ];
        for (kind, written, stored) in cases {
            assert_eq!(written.as_deref(), Ok(stored), "{kind}");
            assert!(Outcome::decode(kind, stored).is_ok(), "{kind}: {stored}");
        }
    }

    #[test]
    fn stored_outcomes_decode_by_kind() {
        let step = |t: &str| Outcome::decode(EntryKind::Step, t);
        assert_eq!(
            step(r#"{"value":{"Ok":1}}"#),
            Ok(Outcome::Step(StepOutcome::Value(json!({"Ok": 1}))))
        );
        assert_eq!(
            step(r#"{"failed":"boom"}"#).map(|o| o.failure().map(str::to_string)),
            Ok(Some("boom".to_string()))
        );
        assert!(step("7").is_err());
        assert_eq!(
            Outcome::decode(EntryKind::Signal, r#""timed_out""#),
            Ok(Outcome::Signal(SignalOutcome::TimedOut))
        );
        assert_eq!(
            Outcome::decode(EntryKind::Signal, r#"{"payload":null}"#),
            Ok(Outcome::Signal(SignalOutcome::Payload(Value::Null)))
        );
        assert_eq!(
            Outcome::decode(EntryKind::Sleep, "12"),
            Ok(Outcome::Sleep(12))
        );
        // A child's output is its own: a field named `value` is not a step's wrapper.
        assert_eq!(
            Outcome::decode(EntryKind::Child, r#"{"value":1}"#),
            Ok(Outcome::Child(json!({"value": 1})))
        );
        assert!(Outcome::decode(EntryKind::Patch, "false").is_err());
    }

    #[test]
    fn errors_are_read_from_step_and_child_outcomes() {
        let error = |kind, t: &str| Outcome::decode(kind, t).is_ok_and(|o| o.is_error());
        assert!(error(EntryKind::Step, r#"{"value":{"Err":"x"}}"#));
        assert!(error(EntryKind::Step, r#"{"failed":"panicked"}"#));
        assert!(error(EntryKind::Child, r#"{"Err":{"Declined":"x"}}"#));
        assert!(!error(EntryKind::Step, r#"{"value":{"Ok":null}}"#));
        assert!(!error(EntryKind::Step, r#"{"value":7}"#));
        assert!(!error(EntryKind::Child, r#"{"Ok":7}"#));
        assert!(!error(EntryKind::Signal, r#"{"payload":{"Err":1}}"#));
    }

    #[test]
    fn kinds_read_back_what_they_write_in_storage_and_json() {
        for kind in EntryKind::ALL {
            assert_eq!(EntryKind::parse(kind.as_str()), Some(kind));
            assert_eq!(EntryKind::decode_stored("i", 1, kind.as_str()), Ok(kind));
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EntryKind>(&json).ok(), Some(kind));
        }
        let err = EntryKind::decode_stored("order-7", 3, "teleport").expect_err("unknown");
        assert!(err.contains("order-7") && err.contains("seq 3") && err.contains("teleport"));
        assert!(serde_json::from_str::<EntryKind>("\"teleport\"").is_err());
    }

    proptest! {
        /// Stored outcomes come from a database: whatever they hold, decoding answers and
        /// never panics.
        #[test]
        fn decoding_any_stored_text_never_panics(text in any::<String>(), k in 0usize..11) {
            let kind = EntryKind::ALL[k];
            let _ = Outcome::decode(kind, &text).map(|o| (o.is_error(), o.failure().is_some()));
            let _ = EntryKind::decode_stored("i", 1, &text);
        }

        #[test]
        fn decoding_any_json_never_panics(value in arb_json(), k in 0usize..11) {
            let kind = EntryKind::ALL[k];
            let text = value.to_string();
            let _ = Outcome::decode(kind, &text).map(|o| o.is_error());
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-zA-Z_]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    "(value|failed|payload|Err|Ok|[a-z]{1,4})",
                    inner,
                    0..3
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
