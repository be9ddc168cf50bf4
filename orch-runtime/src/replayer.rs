//! Replaying stored journals against the code in this binary without running anything: the
//! deploy check ([`Runtime::check_compatibility`](crate::Runtime::check_compatibility)) and
//! `testing::replay`.
//!
//! A [`Replayer`] is a scratch engine of its own: replay-only (a call the journal does not hold
//! never runs, and nothing is written — not even the end), with an empty in-memory store and a
//! clock standing at the end of time, so every journaled timer has fired and replay goes on
//! through whatever the journal records after it. The instances it replays are handed over
//! already loaded; the store they came from is never touched.

use crate::engine::{Clock, Inner, Load, Outcome, TestHooks};
use crate::store::memory::MemoryStore;
use crate::store::{LoadedInstance, Millis, NodeId, Status};
use crate::workflow::Registry;
use std::sync::Arc;
use std::time::Duration;

/// How long one replay may take before it counts as stuck: a body that keeps running without
/// reaching a durable call (or the end) within this time never would.
pub(crate) const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

/// The replayer's clock: far beyond any timer a workflow sets (a sleep of `Duration::MAX`
/// still waits), and small enough that adding a lease time or a retry delay cannot overflow.
const END_OF_TIME: Millis = Millis::MAX / 4;

/// What replaying one instance's journal found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Replayed {
    /// Everything journaled replayed; the code's next call, at `next_seq`, is one the journal
    /// does not hold (it would run when the instance wakes).
    Frontier {
        /// The first seq the journal does not hold.
        next_seq: u32,
    },
    /// The workflow returned within the journal.
    Finished {
        /// `Completed`, or `Failed` for an `Err` output.
        status: Status,
        /// The output as JSON.
        output: String,
    },
    /// The journal does not match the code, first at `seq`.
    Incompatible {
        /// Where they part ways.
        seq: u32,
        /// What the journal holds, what the code asked for, and what to do.
        message: String,
    },
    /// Replay ended in a failure the instance would end `failed` with when it wakes (its
    /// stored input no longer fits the input type, the body panicked, a recorded step failure
    /// the step's error type cannot hold).
    Failed(String),
    /// This binary has no workflow of the instance's name.
    UnknownWorkflow(String),
    /// The body did not reach a durable call or its end within [`REPLAY_TIMEOUT`].
    Stuck,
}

impl Replayed {
    fn from_outcome(o: Outcome) -> Replayed {
        match (o.status, o.output) {
            (Status::Running, _) => Replayed::Frontier {
                next_seq: o.seq.unwrap_or(1),
            },
            (Status::Incompatible, _) => Replayed::Incompatible {
                seq: o.seq.unwrap_or(0),
                message: o.error.unwrap_or_default(),
            },
            (status @ (Status::Completed | Status::Failed | Status::Cancelled), Some(output)) => {
                Replayed::Finished { status, output }
            }
            (status, _) => Replayed::Failed(
                o.error
                    .unwrap_or_else(|| format!("replay ended {status} without an output")),
            ),
        }
    }
}

/// A scratch, replay-only engine (see the module documentation). Replays run concurrently;
/// each instance id may be replayed by one call at a time.
pub(crate) struct Replayer {
    inner: Arc<Inner>,
}

impl Replayer {
    /// A replayer for the workflows of `registry`, replaying up to `concurrency` instances at
    /// once (more wait). Must be called inside a tokio runtime.
    pub(crate) fn new(registry: Registry, concurrency: usize) -> Replayer {
        let hooks = TestHooks {
            replay_only: true,
            ..TestHooks::default()
        };
        let node = NodeId::new("replayer").unwrap_or_else(|_| NodeId::generate());
        let inner = Inner::new(
            Arc::new(MemoryStore::new()),
            node,
            None,
            registry,
            concurrency,
            crate::engine::KeepLoaded {
                timers: Duration::ZERO,
                task_waits: Duration::ZERO,
            },
            Clock::Frozen(END_OF_TIME),
            Some(hooks),
        );
        Replayer { inner }
    }

    /// Replays `loaded` (its record, journal, failed attempts and ended timers) against the
    /// code of its workflow, calling nothing and writing nothing.
    pub(crate) async fn replay(&self, loaded: LoadedInstance) -> Replayed {
        if let Err(e) = self.inner.registry.get(&loaded.record.workflow) {
            return Replayed::UnknownWorkflow(e.to_string());
        }
        let id = loaded.record.id.clone();
        // Watched before it is driven, so its end cannot slip by unseen.
        let ended = self.inner.watch(&id);
        self.inner
            .schedule_with(&id, Load::Known(Box::new(loaded)), 0);
        match tokio::time::timeout(REPLAY_TIMEOUT, ended).await {
            Ok(Ok(outcome)) => Replayed::from_outcome(outcome),
            // The replayer shut down, or the load ended without a word (it cannot: every path
            // of a replay-only drive reports its end).
            Ok(Err(_)) => Replayed::Stuck,
            Err(_) => {
                self.inner.abort_loaded(&id);
                Replayed::Stuck
            }
        }
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        // Stops whatever still runs (a stuck body, a replay whose caller went away).
        let inner = self.inner.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = inner.shutdown().await;
            });
        }
    }
}
