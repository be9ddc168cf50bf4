//! orch: durable workflows for Rust, code-first.
//!
//! `#[workflow]` turns an async function into a durable process and `#[step]` marks the service
//! calls it makes. Inside a running workflow every step's outcome is checkpointed before the
//! workflow continues; after a crash or a deploy the workflow is replayed from its journal and
//! resumes where it stopped, without calling a completed step again. Outside a runtime both are
//! plain async functions.
//!
//! ```no_run
//! use orch_runtime::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct Order { id: u64, cents: u64 }
//!
//! #[step(retry = Retry::exponential(ms(100)).max_attempts(5), timeout = secs(10))]
//! async fn charge(order: &Order) -> Result<String, StepError> {
//!     // call the payment service with orch::idempotency_key() …
//!     Ok(format!("payment-{}", order.id))
//! }
//!
//! #[workflow]
//! async fn checkout(order: Order) -> Result<String, StepError> {
//!     let payment = charge(&order).await?;
//!     orch::sleep(secs(3600)).await; // durable: survives restarts, holds no memory
//!     Ok(payment)
//! }
//!
//! # async fn run() -> Result<(), orch_runtime::Error> {
//! let rt = Runtime::builder().sqlite("orch.db").build().await?;
//! let run = rt.start(Checkout, Order { id: 7, cents: 1299 }).await?;
//! let payment = run.result().await?;
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! | Feature       | Default | What it adds |
//! |---------------|---------|--------------|
//! | `sqlite`      | yes     | The embedded SQLite store: `RuntimeBuilder::sqlite`, `store::sqlite` (rusqlite with a bundled SQLite). |
//! | `http`        | yes     | The HTTP server: JSON API, web UI, `/metrics`, `/healthz` (`RuntimeBuilder::http`, `HttpConfig`). |
//! | `postgres`    | no      | The PostgreSQL store: `RuntimeBuilder::postgres`, `ORCH_DATABASE_URL`, `store::postgres` (tokio-postgres, deadpool-postgres). |
//! | `testing`     | no      | `orch_runtime::testing`: virtual clock, step mocks, crash-point exploration, replay. Turns on tokio's `test-util`: enable it in dev-dependencies only. |
//! | `conformance` | no      | `store::conformance`: the checks every store backend must pass, for a backend's own tests. |
//! | `cli`         | no      | The `orch` command-line client (the `orch` binary; talks to a running server). |
//! | `worker`      | no      | `worker::client::Worker`: serves this binary's `#[step(queue = "…")]` bodies for a remote orch server over HTTP. |
//!
//! A PostgreSQL-only build does not compile SQLite: `orch-runtime = { version = "0.1",
//! default-features = false, features = ["postgres", "http"] }`. Whatever the features,
//! [`RuntimeBuilder::build`] without a chosen store (and without `ORCH_DATABASE_URL`) fails
//! with an error naming the call to add; it never falls back to keeping workflows in memory.

/// The README's code must compile: it is checked as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub mod admin;
pub mod compatibility;
mod context;
pub mod durable;
mod engine;
pub mod error;
pub mod flow;
pub mod graph;
pub mod journal;
pub mod limits;
mod metrics;
mod replay;
mod replayer;
pub mod retry;
mod runtime;
pub mod schema;
#[cfg(feature = "http")]
pub mod server;
pub mod step;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;
pub mod workflow;

pub use context::StepInfo;
pub use error::Error;
pub use orch_macros::{step, workflow};
pub use retry::{Retry, Retryable, StepError, ms, secs};
pub use runtime::{Run, Runtime, RuntimeBuilder};
/// The `schemars` crate orch describes types with; `#[derive(JsonSchema)]` finds it through this
/// re-export when `schemars` (or the prelude) is in scope, so a direct dependency is optional.
pub use schemars;
/// Derives a type's JSON Schema (schemars' derive; its trait of the same name comes with it).
pub use schemars::JsonSchema;
#[cfg(feature = "http")]
pub use server::HttpConfig;
pub use store::{AttemptRecord, EntryKind, InstanceRecord, JournalEntry, ListFilter, Status};
pub use workflow::Workflow;

/// The durable primitives, to be called as `orch::sleep(…)` and so on.
pub mod orch {
    pub use crate::durable::{
        Durable, background, call_workflow, current_step, idempotency_key, instance_id, now,
        patched, random, set_attribute, set_status, signal, signal_with_timeout, sleep,
        sleep_until, uuid,
    };
}

/// Everything a workflow author needs: `use orch_runtime::prelude::*;`.
pub mod prelude {
    pub use crate::orch;
    pub use crate::{
        Error as OrchError, JsonSchema, Retry, Retryable, Run, Runtime, Status, StepError,
        Workflow, ms, schemars, secs, step, workflow,
    };
    pub use tokio::{join, try_join};
}

/// Support for generated code. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::durable::call_workflow;
    pub use crate::graph::{Arm, Node};
    pub use crate::retry::{Retry, Retryable, StepError};
    pub use crate::schema::{StepDef, TypeSchema};
    pub use crate::step::{
        ErrorPolicy, StepCall, StepOptions, begin as begin_step, run as run_step,
        run_queued as run_queued_step,
    };
    pub use crate::worker::{QueuedStep, args as queued};
    pub use crate::workflow::{SignalDef, Workflow, WorkflowDef};
    pub use futures_util::future::BoxFuture;
    pub use inventory;
    pub use serde;
    use std::marker::PhantomData;

    /// Autoref probe over a borrowed value: picks a trait impl if one applies.
    pub struct Probe<'a, T>(pub &'a T);

    /// Chosen when the error type implements [`Retryable`].
    pub trait ViaRetryable {
        /// Whether to retry.
        fn __orch_retryable(&self) -> bool;
    }
    impl<T: Retryable> ViaRetryable for Probe<'_, T> {
        fn __orch_retryable(&self) -> bool {
            self.0.is_retryable()
        }
    }
    /// Fallback: every error is retried.
    pub trait ViaAlwaysRetry {
        /// Whether to retry.
        fn __orch_retryable(&self) -> bool;
    }
    impl<T> ViaAlwaysRetry for &Probe<'_, T> {
        fn __orch_retryable(&self) -> bool {
            true
        }
    }

    /// Chosen when the error type implements `Display`.
    pub trait ViaDisplay {
        /// Human-readable text.
        fn __orch_describe(&self) -> String;
    }
    impl<T: std::fmt::Display> ViaDisplay for Probe<'_, T> {
        fn __orch_describe(&self) -> String {
            self.0.to_string()
        }
    }
    /// Fallback: the error as JSON.
    pub trait ViaJson {
        /// Human-readable text.
        fn __orch_describe(&self) -> String;
    }
    impl<T: serde::Serialize> ViaJson for &Probe<'_, T> {
        fn __orch_describe(&self) -> String {
            serde_json::to_string(self.0).unwrap_or_else(|e| format!("<unserializable error: {e}>"))
        }
    }

    /// Autoref probe over an error type: can it hold a panic or timeout?
    pub struct RescueProbe<E>(PhantomData<E>);
    impl<E> RescueProbe<E> {
        /// The probe.
        pub fn new() -> Self {
            RescueProbe(PhantomData)
        }
    }
    impl<E> Default for RescueProbe<E> {
        fn default() -> Self {
            Self::new()
        }
    }
    /// Chosen when `E: From<StepError>`.
    pub trait ViaFrom<E> {
        /// Converts the failure.
        fn __orch_rescue(&self, failure: StepError) -> Option<E>;
    }
    impl<E: From<StepError>> ViaFrom<E> for RescueProbe<E> {
        fn __orch_rescue(&self, failure: StepError) -> Option<E> {
            Some(E::from(failure))
        }
    }
    /// Fallback: the failure cannot be expressed in `E`.
    pub trait ViaNoFrom<E> {
        /// Converts the failure.
        fn __orch_rescue(&self, failure: StepError) -> Option<E>;
    }
    impl<E> ViaNoFrom<E> for &RescueProbe<E> {
        fn __orch_rescue(&self, _failure: StepError) -> Option<E> {
            None
        }
    }

    pub use futures_util::future::Either;

    /// A step double for the test runtime, made by the `mock`/`fail_first` functions that
    /// `#[step]` generates (`charge_payment::mock(|order, amount| async { … })`). Clones share
    /// the double (and its state, such as `fail_first`'s count).
    #[derive(Clone)]
    pub struct MockEntry {
        #[cfg_attr(not(feature = "testing"), allow(dead_code))]
        pub(crate) step: std::any::TypeId,
        pub(crate) name: &'static str,
        #[cfg_attr(not(feature = "testing"), allow(dead_code))]
        pub(crate) call: std::sync::Arc<dyn std::any::Any + Send + Sync>,
    }

    impl MockEntry {
        /// Wraps `call` (an `Arc<dyn Fn(args…) -> Option<BoxFuture<…>>>`) for step `S`.
        pub fn new<S: 'static, F: ?Sized + Send + Sync + 'static>(
            name: &'static str,
            call: std::sync::Arc<F>,
        ) -> MockEntry {
            MockEntry {
                step: std::any::TypeId::of::<S>(),
                name,
                call: std::sync::Arc::new(call),
            }
        }

        /// The mocked step's name.
        pub fn name(&self) -> &'static str {
            self.name
        }
    }

    impl std::fmt::Debug for MockEntry {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MockEntry")
                .field("step", &self.name)
                .finish()
        }
    }

    /// The mock registered for step `S` in the runtime running this call, if any.
    pub fn find_mock<S: 'static, F: ?Sized + 'static>(
        call: &StepCall,
    ) -> Option<std::sync::Arc<F>> {
        let any = call.mock(std::any::TypeId::of::<S>())?;
        any.downcast_ref::<std::sync::Arc<F>>().cloned()
    }
    /// A type that can be checkpointed; exists for its error message, which names the fix.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be checkpointed: workflow inputs and outputs and step outputs \
                   are stored in the journal as JSON, so they must implement `Serialize` and \
                   `DeserializeOwned`",
        label = "stored in the journal",
        note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to the type (with serde's \
                `derive` feature), or use a type that has them"
    )]
    pub trait Checkpoint {}
    impl<T: serde::Serialize + serde::de::DeserializeOwned> Checkpoint for T {}

    /// Compile-time check that a type can be checkpointed.
    pub fn assert_serde<T: Checkpoint>() {}

    /// A step argument: each attempt gets its own copy; exists for its error message.
    #[diagnostic::on_unimplemented(
        message = "step argument `{Self}` is not `Clone`: each attempt of a step gets its own \
                   copy of the arguments",
        label = "cloned for each attempt",
        note = "derive or implement `Clone` for it, or take it by reference (`&{Self}`)"
    )]
    pub trait StepArg: Clone {}
    impl<T: Clone> StepArg for T {}

    /// A fresh copy of a step argument for one attempt.
    pub fn clone_arg<T: StepArg>(arg: &T) -> T {
        arg.clone()
    }
    /// Compile-time check that a workflow future can move between threads.
    pub fn assert_send<T: Send>(_: &T) {}
}
