//! Errors a user of the runtime can meet.

use crate::store::{Status, StoreError};

/// Anything the runtime refuses or reports. Each message says what went wrong, where, and what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No workflow with that name is compiled into this binary.
    #[error("unknown workflow `{name}`; this binary has: {known}")]
    UnknownWorkflow {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// Two `#[workflow]` functions share a name.
    #[error(
        "two workflows are named `{name}`; give one of them `#[workflow(name = \"...\")]` so names are unique"
    )]
    DuplicateWorkflow {
        /// The shared name.
        name: String,
    },
    /// The input does not fit the workflow's input type.
    #[error("input for workflow `{workflow}` is invalid: {detail}")]
    InvalidInput {
        /// Workflow name.
        workflow: String,
        /// What serde said, naming the field.
        detail: String,
    },
    /// An instance id that orch cannot store.
    #[error(
        "invalid instance id {id:?}: {reason} (ids are 1 to {max} characters of A-Z a-z 0-9 . _ : -)",
        max = crate::limits::MAX_ID_LEN
    )]
    InvalidId {
        /// The id.
        id: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A payload over the size limit.
    #[error(
        "{what} is {size} bytes of JSON, over the limit of {limit} bytes; pass a reference (a key, a URL) instead of the data"
    )]
    PayloadTooLarge {
        /// Which payload.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The id is taken by an instance of another workflow.
    #[error(
        "instance id `{id}` already belongs to workflow `{existing}`, not `{requested}`; choose another id"
    )]
    IdConflict {
        /// The id.
        id: String,
        /// The workflow that has it.
        existing: String,
        /// The workflow asked for.
        requested: String,
    },
    /// An instance with that id was started already with a different input (Temporal's
    /// "workflow execution already started"). Starting again with the same input is not an
    /// error: it returns the existing instance.
    #[error(
        "instance `{id}` of workflow `{workflow}` was already started with a different input \
         (stored: {existing}); a start under an existing id must repeat its input exactly — \
         choose another id for a new instance, or retry/restart the existing one"
    )]
    AlreadyStarted {
        /// The id.
        id: String,
        /// Its workflow.
        workflow: String,
        /// The stored input (JSON, shortened).
        existing: String,
    },
    /// A signal payload that does not deserialize into the type the workflow waits for
    /// under that name; nothing was stored.
    #[error(
        "signal `{name}` for instance `{id}` is refused: workflow `{workflow}` waits for it \
         with a payload of type `{type_name}`, and this payload does not fit ({detail}); \
         nothing was stored — send a payload of that type"
    )]
    InvalidSignal {
        /// The instance.
        id: String,
        /// Its workflow.
        workflow: String,
        /// The signal's name.
        name: String,
        /// The payload type the workflow waits for.
        type_name: String,
        /// What serde said, naming the field.
        detail: String,
    },
    /// No instance with that id.
    #[error("no instance with id `{0}`")]
    NotFound(String),
    /// The instance is not of the workflow the handle expects.
    #[error("instance `{id}` is a `{actual}` workflow, not `{expected}`")]
    WrongWorkflow {
        /// The id.
        id: String,
        /// Its workflow.
        actual: String,
        /// The one asked for.
        expected: String,
    },
    /// The instance failed without an output of its own type (a panic or an unrecoverable step).
    #[error("instance `{id}` failed: {message}")]
    Failed {
        /// The id.
        id: String,
        /// What happened.
        message: String,
    },
    /// The instance stopped because its journal no longer matches the code.
    #[error("instance `{id}` is incompatible with this code: {message}")]
    Incompatible {
        /// The id.
        id: String,
        /// Which seq, what was recorded, what the code asks for, and both versions.
        message: String,
    },
    /// The instance finished with a status that has no output.
    #[error("instance `{id}` ended {status} without an output")]
    NoOutput {
        /// The id.
        id: String,
        /// Its status.
        status: Status,
    },
    /// A stored value no longer deserializes into the code's type.
    #[error("stored {what} of instance `{id}` does not fit the current type: {detail}")]
    Decode {
        /// The id.
        id: String,
        /// Which value.
        what: &'static str,
        /// What serde said.
        detail: String,
    },
    /// The test runtime cannot run here.
    #[error("{0}")]
    TestSetup(String),
    /// The runtime is shutting down.
    #[error("the runtime has been shut down; build a new one to continue")]
    ShutDown,
    /// The runtime's configuration cannot work (e.g. an HTTP address that cannot be bound).
    #[error("{0}")]
    Config(String),
    /// An argument of an operation is out of range (e.g. a seq past the journal's end).
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation does not apply to the instance as it stands.
    #[error("cannot {action} instance `{id}`: {reason}")]
    Conflict {
        /// The operation.
        action: &'static str,
        /// The instance.
        id: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A storage failure. (A store's "no such instance" is [`Error::NotFound`], like every
    /// other lookup's.)
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for Error {
    /// One "no such instance" everywhere: the store's becomes [`Error::NotFound`].
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound(id) => Error::NotFound(id),
            e => Error::Store(e),
        }
    }
}
