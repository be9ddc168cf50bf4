//! Starting workflows through queues, with flow control: [`Runtime::enqueue`].
//!
//! ```ignore
//! let run = rt
//!     .enqueue(Checkout, order)
//!     .queue("checkout")
//!     .priority(10)
//!     .key(customer_id) // at most `per_key` running checkouts per customer
//!     .dedup(order_id) // a second enqueue of this order returns the first instance
//!     .await?;
//! ```
//!
//! The instance is stored at once with status `queued` (it survives a crash) and starts when
//! its queue has room under the queue's [`QueueConfig`]: a concurrency limit, a rate limit,
//! a per-key limit, in priority order. Limits live in the store, so every node sharing it
//! applies the same ones, and [`Runtime::set_queue_config`] changes them on all nodes at once.
//! See [`crate::store::flow`] for the exact rules.

use crate::error::Error;
use crate::runtime::{Run, Runtime};
use crate::store::WriteOp;
use crate::store::flow::QueueEntry;
pub use crate::store::flow::{DEFAULT_QUEUE, QueueConfig, Rate, WorkflowQueueStats};
use crate::workflow::Workflow;
use futures_util::future::BoxFuture;
use std::future::IntoFuture;
use std::marker::PhantomData;

/// Where and how an instance waits in its queue. Built by [`Runtime::enqueue`]'s methods, or
/// directly for [`Runtime::enqueue_json_as`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    /// The queue ([`DEFAULT_QUEUE`] when `None`).
    pub queue: Option<String>,
    /// Higher is admitted first (default 0).
    pub priority: i32,
    /// The concurrency key (see [`QueueConfig::per_key`]).
    pub key: Option<String>,
    /// The deduplication key: while an instance of the queue holds it (queued or unfinished),
    /// enqueueing another with it returns that instance instead ([`Run::created`] is false).
    pub dedup: Option<String>,
    /// The instance id (generated when `None`); as with [`Runtime::start_with_id`], an
    /// existing instance with this id and the same input is returned.
    pub id: Option<String>,
}

impl EnqueueOptions {
    fn entry(&self) -> QueueEntry {
        QueueEntry {
            queue: self
                .queue
                .clone()
                .unwrap_or_else(|| DEFAULT_QUEUE.to_string()),
            priority: self.priority,
            key: self.key.clone(),
            dedup: self.dedup.clone(),
        }
    }
}

/// An enqueue being built: set options, then `.await` it. Made by [`Runtime::enqueue`].
#[must_use = "nothing is enqueued until the enqueue is awaited"]
pub struct Enqueue<'a, W: Workflow> {
    rt: &'a Runtime,
    input: W::Input,
    options: EnqueueOptions,
    _w: PhantomData<fn() -> W>,
}

impl<W: Workflow> Enqueue<'_, W> {
    /// On queue `name` (default [`DEFAULT_QUEUE`]): 1 to 64 bytes of letters, digits, `.`,
    /// `_` and `-`.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.options.queue = Some(name.into());
        self
    }

    /// Admitted before instances of lower priority (default 0; may be negative).
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = priority;
        self
    }

    /// With concurrency key `key` (e.g. a customer id): the queue's
    /// [`per_key`](QueueConfig::per_key) limit applies to the instances sharing it.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.options.key = Some(key.into());
        self
    }

    /// With deduplication key `key`: while an instance of the queue holds it (queued or
    /// unfinished), this enqueue stores nothing and returns that instance
    /// ([`Run::created`] is false; a holder of another workflow is refused with
    /// [`Error::Conflict`]).
    pub fn dedup(mut self, key: impl Into<String>) -> Self {
        self.options.dedup = Some(key.into());
        self
    }

    /// Under instance id `id` (idempotent, as [`Runtime::start_with_id`]).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.options.id = Some(id.into());
        self
    }
}

impl<'a, W: Workflow> IntoFuture for Enqueue<'a, W> {
    type Output = Result<Run<W>, Error>;
    type IntoFuture = BoxFuture<'a, Result<Run<W>, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let def = self.rt.inner.registry.get(W::NAME)?;
            let json = serde_json::to_string(&self.input).map_err(|e| Error::InvalidInput {
                workflow: W::NAME.to_string(),
                detail: e.to_string(),
            })?;
            let (id, created) = self
                .rt
                .inner
                .enqueue(
                    def,
                    self.options.id.clone(),
                    json,
                    self.options.entry(),
                    |_| Vec::new(),
                )
                .await?;
            Ok(self.rt.run_handle(id, created))
        })
    }
}

impl Runtime {
    /// Enqueues workflow `W` with `input`: stored at once, queued (status `queued`), and
    /// started when its queue has room. Set the queue and other options on the returned
    /// builder, then `.await` it:
    ///
    /// ```ignore
    /// let run = rt.enqueue(Checkout, order).queue("checkout").key(&customer).await?;
    /// ```
    ///
    /// The queue's limits are its [`QueueConfig`] (none unless configured with
    /// [`RuntimeBuilder::queue`](crate::RuntimeBuilder::queue) or
    /// [`set_queue_config`](Self::set_queue_config)).
    pub fn enqueue<W: Workflow>(&self, _workflow: W, input: W::Input) -> Enqueue<'_, W> {
        Enqueue {
            rt: self,
            input,
            options: EnqueueOptions::default(),
            _w: PhantomData,
        }
    }

    /// Enqueues the workflow named `workflow` with a JSON input (validated against its input
    /// type); returns the instance id and whether this call stored it. When `actor` is given,
    /// an `enqueue` audit entry naming it is written with the instance.
    pub async fn enqueue_json_as(
        &self,
        workflow: &str,
        input: &str,
        options: &EnqueueOptions,
        actor: Option<&str>,
    ) -> Result<(String, bool), Error> {
        let def = self.checked_input(workflow, input)?;
        let entry = options.entry();
        let queue = entry.queue.clone();
        let audit = |new_id: &str| -> Vec<WriteOp> {
            actor
                .map(|actor| {
                    let detail = serde_json::json!({ "workflow": def.name, "queue": queue });
                    WriteOp::Audit(self.audit_record(actor, "enqueue", new_id, detail))
                })
                .into_iter()
                .collect()
        };
        self.inner
            .enqueue(def, options.id.clone(), input.to_string(), entry, audit)
            .await
    }

    /// Sets the limits of workflow queue `queue`, stored in the store: every node sharing it
    /// applies them from its next admission, and this one admits at once (e.g. after a raised
    /// limit).
    pub async fn set_queue_config(&self, queue: &str, config: QueueConfig) -> Result<(), Error> {
        crate::store::task::check_queue(queue).map_err(Error::InvalidArgument)?;
        config.check().map_err(Error::InvalidArgument)?;
        self.inner
            .store
            .set_queue_config(queue.to_string(), config)
            .await?;
        self.inner.admit_soon();
        Ok(())
    }

    /// Every workflow queue (configured, or holding an instance) with its limits, how many
    /// instances wait and how many run.
    pub async fn workflow_queues(&self) -> Result<Vec<WorkflowQueueStats>, Error> {
        Ok(self.inner.store.workflow_queues().await?)
    }
}
