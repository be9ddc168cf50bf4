//! Operating instances: search, details, analytics, and the operator's actions (cancel,
//! terminate, retry, restart, fork), each recorded in the audit log with who did it.

use crate::engine::Termination;
use crate::error::Error;
use crate::runtime::Runtime;
use crate::store::{
    Aggregate, AuditRecord, Details, InstanceRecord, Query, Stats, StatsQuery, Status, StatusCount,
    WriteOp,
};
use crate::workflow::WorkflowDef;

/// The attribute a restarted instance carries: the id it was restarted from.
pub const RESTARTED_FROM: &str = "orch.restarted_from";
/// The attribute a forked instance carries: the id it was forked from.
pub const FORKED_FROM: &str = "orch.forked_from";

fn lineage(instance: &str, key: &str, source: &str) -> WriteOp {
    WriteOp::Attribute {
        instance: instance.to_string(),
        key: key.to_string(),
        value: serde_json::Value::String(source.to_string()).to_string(),
    }
}

/// One past the last journal seq: where an instance resumes.
fn journal_end(journal: &[crate::store::JournalEntry]) -> u32 {
    journal.iter().map(|e| e.seq).max().unwrap_or(0) + 1
}

/// At most this many instances per bulk operation.
pub const MAX_BULK: usize = 10_000;

/// The result of a bulk operation.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BulkOutcome {
    /// Instances the filter matched: the true total, even over [`MAX_BULK`].
    pub matched: usize,
    /// Instances the operation was tried on: `matched`, or [`MAX_BULK`] when more matched
    /// (`succeeded.len() + failed.len()`).
    pub attempted: usize,
    /// Matched instances left untouched because of the [`MAX_BULK`] cap
    /// (`matched - attempted`): run the operation again, or narrow the filter.
    pub remaining: usize,
    /// Ids the operation applied to.
    pub succeeded: Vec<String>,
    /// Ids it did not apply to, with why.
    pub failed: Vec<BulkFailure>,
}

/// One instance a bulk operation skipped.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BulkFailure {
    /// The instance.
    pub id: String,
    /// Why.
    pub error: String,
}

impl Runtime {
    /// Every workflow compiled into this binary, by name.
    pub fn definitions(&self) -> Vec<&'static WorkflowDef> {
        self.inner
            .registry
            .names()
            .into_iter()
            .filter_map(|n| self.inner.registry.get(n).ok())
            .collect()
    }

    /// The workflow named `name`.
    pub fn definition(&self, name: &str) -> Result<&'static WorkflowDef, Error> {
        self.inner.registry.get(name)
    }

    /// Instances matching `query`, newest first (see [`Query`] for paging).
    pub async fn search(&self, query: Query) -> Result<Vec<InstanceRecord>, Error> {
        Ok(self.inner.store.search(query).await?)
    }

    /// Everything stored about an instance: record, journal, attempts, pending signals,
    /// attributes and the entries earlier retries superseded.
    pub async fn details(&self, id: &str) -> Result<Details, Error> {
        self.inner
            .store
            .details(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// The attributes of each of `ids` (key → JSON text).
    pub async fn attributes_of(
        &self,
        ids: Vec<String>,
    ) -> Result<crate::store::AttributeMap, Error> {
        Ok(self.inner.store.attributes(ids).await?)
    }

    /// Instance counts by workflow and status.
    pub async fn counts(&self) -> Result<Vec<StatusCount>, Error> {
        Ok(self.inner.store.counts().await?)
    }

    /// Counts of instances created in a window, by workflow, status, time bucket and
    /// failing step.
    pub async fn stats(&self, query: StatsQuery) -> Result<Stats, Error> {
        Ok(self.inner.store.stats(query).await?)
    }

    /// Count, sum, min and max of attribute `key` over the instances matching `query`.
    pub async fn aggregate(&self, key: &str, query: Query) -> Result<Aggregate, Error> {
        Ok(self.inner.store.aggregate(key.to_string(), query).await?)
    }

    /// The nodes that share this runtime's store (this one included), with how many
    /// instances each owns.
    pub async fn nodes(&self) -> Result<Vec<crate::store::NodeRecord>, Error> {
        Ok(self.inner.store.nodes().await?)
    }

    /// Who owns each of `ids` now: the lease (node, epoch, the node's lease end) of those that
    /// have an owner, in the order of `ids`. A suspended or finished instance has none.
    pub async fn leases_of(&self, ids: Vec<String>) -> Result<Vec<crate::store::Lease>, Error> {
        Ok(self.inner.store.leases(ids).await?)
    }

    /// The newest `limit` audit records.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditRecord>, Error> {
        Ok(self.inner.store.audit(limit).await?)
    }

    /// An audit entry for `actor` doing `action` to `target` now.
    pub(crate) fn audit_record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> AuditRecord {
        AuditRecord {
            at: self.inner.clock.now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail: detail.to_string(),
        }
    }

    async fn live_record(&self, id: &str) -> Result<InstanceRecord, Error> {
        if self.inner.is_closing() {
            return Err(Error::ShutDown);
        }
        self.instance(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Asks an instance to cancel, cooperatively: its waiting call returns a cancellation
    /// error — a step call returns `Err(StepError::cancelled(..))` converted into the step's
    /// error type, a `signal_with_timeout` returns `None`, a durable sleep ends early and the
    /// next step call returns the error — so the workflow's compensation code runs. The
    /// instance ends `cancelled` when the workflow then returns an error. Children are
    /// cancelled too. Cancelling twice is harmless; a finished instance is a conflict.
    pub async fn cancel(&self, id: &str, actor: &str, reason: &str) -> Result<(), Error> {
        crate::limits::check_text("reason", reason, crate::limits::MAX_REASON_BYTES)?;
        let rec = self.live_record(id).await?;
        if rec.status.is_final() {
            return Err(Error::Conflict {
                action: "cancel",
                id: id.to_string(),
                reason: format!("it has already finished ({})", rec.status),
            });
        }
        let at = self.inner.clock.now_ms();
        let audit = self.audit_record(actor, "cancel", id, serde_json::json!({ "reason": reason }));
        let mut ops = vec![
            WriteOp::RequestCancel {
                instance: id.to_string(),
                at,
            },
            WriteOp::Audit(audit),
        ];
        if rec.status == Status::Queued {
            // Nothing of it ran yet: it ends now instead of taking its queue's room to cancel.
            ops.push(WriteOp::Finish {
                instance: id.to_string(),
                status: Status::Cancelled,
                output: None,
                error: Some(format!("cancelled while queued: {reason}")),
                failed_step: None,
                at,
            });
        }
        // The store's wake-up tells the node that drives it (or makes one claim it).
        self.inner
            .store
            .submit(None, ops)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::Finished { status, .. } => Error::Conflict {
                    action: "cancel",
                    id: id.to_string(),
                    reason: format!("it has already finished ({status})"),
                },
                e => Error::from(e),
            })?;
        for child in self.live_children(id).await? {
            // A child that finished meanwhile needs nothing.
            let _ = Box::pin(self.cancel(&child.id, actor, reason)).await;
        }
        Ok(())
    }

    async fn live_children(&self, id: &str) -> Result<Vec<InstanceRecord>, Error> {
        let query = Query {
            parent: Some(id.to_string()),
            statuses: vec![Status::Running, Status::Suspended],
            ..Default::default()
        };
        Ok(self.inner.store.search(query).await?)
    }

    /// Stops an instance hard: nothing more of it runs (a step in flight is abandoned), and
    /// it ends `terminated` with the reason as its error. Children are terminated too.
    pub async fn terminate(&self, id: &str, actor: &str, reason: &str) -> Result<(), Error> {
        crate::limits::check_text("reason", reason, crate::limits::MAX_REASON_BYTES)?;
        let rec = self.live_record(id).await?;
        if rec.status.is_final() {
            return Err(Error::Conflict {
                action: "terminate",
                id: id.to_string(),
                reason: format!("it has already finished ({})", rec.status),
            });
        }
        for child in self.live_children(id).await? {
            let _ = Box::pin(self.terminate(&child.id, actor, reason)).await;
        }
        let reason = if reason.is_empty() {
            "no reason given"
        } else {
            reason
        };
        let t = Termination {
            message: format!("terminated by {actor}: {reason}"),
            audit: self.audit_record(
                actor,
                "terminate",
                id,
                serde_json::json!({ "reason": reason }),
            ),
        };
        self.inner.terminate(&rec, t).await
    }

    /// Runs a failed, cancelled, terminated or incompatible instance again, under the same
    /// id, from `from_seq` (default: the step it failed at; for an instance that did not fail
    /// at a step, the end of its journal, so it resumes where it stopped). Journal entries
    /// from that seq on are kept as superseded, never deleted. Returns the seq it restarts at.
    pub async fn retry(&self, id: &str, from_seq: Option<u32>, actor: &str) -> Result<u32, Error> {
        let source = self.loaded(id).await?;
        let rec = &source.record;
        // Nothing could run it again here: refuse before changing anything.
        self.inner.registry.get(&rec.workflow)?;
        if !rec.status.is_retryable() {
            return Err(Error::Conflict {
                action: "retry",
                id: id.to_string(),
                reason: format!(
                    "it is {}; only failed, cancelled, terminated or incompatible instances \
                     can be retried",
                    rec.status
                ),
            });
        }
        let end = journal_end(&source.journal);
        let from = match from_seq {
            Some(seq) if seq == 0 || seq > end => {
                return Err(Error::InvalidArgument(format!(
                    "cannot retry instance `{id}` from seq {seq}: it must be between 1 and {end} \
                     (one past its last journal entry)"
                )));
            }
            Some(seq) => seq,
            None => rec.failed_seq.or(rec.cancel_seq).unwrap_or(end),
        };
        let at = self.inner.clock.now_ms();
        let audit = self.audit_record(
            actor,
            "retry",
            id,
            serde_json::json!({ "from_seq": from, "previous_status": rec.status }),
        );
        // Unowned and running again: this node claims it (and any other may, once due).
        self.inner
            .store
            .submit(
                None,
                vec![
                    WriteOp::Retry {
                        instance: id.to_string(),
                        from_seq: from,
                        at,
                    },
                    WriteOp::Audit(audit),
                ],
            )
            .await?;
        self.inner.resume(id);
        Ok(from)
    }

    /// Starts a new instance of the same workflow with the same input; returns its id.
    pub async fn restart(&self, id: &str, actor: &str) -> Result<String, Error> {
        let rec = self.live_record(id).await?;
        let def = self.inner.registry.get(&rec.workflow)?;
        // The lineage attribute and the audit entry are written with the new instance.
        let (new_id, _) = self
            .inner
            .start(def, None, rec.input.clone(), None, |new_id| {
                vec![
                    lineage(new_id, RESTARTED_FROM, id),
                    WriteOp::Audit(self.audit_record(
                        actor,
                        "restart",
                        id,
                        serde_json::json!({ "new_instance": new_id }),
                    )),
                ]
            })
            .await?;
        Ok(new_id)
    }

    /// Starts a new instance whose journal is a copy of `id`'s entries before `from_seq`:
    /// it replays those and runs from `from_seq` on. Returns the new id.
    pub async fn fork(&self, id: &str, from_seq: u32, actor: &str) -> Result<String, Error> {
        let source = self.loaded(id).await?;
        let rec = &source.record;
        let def = self.inner.registry.get(&rec.workflow)?;
        let end = journal_end(&source.journal);
        if from_seq == 0 || from_seq > end {
            return Err(Error::InvalidArgument(format!(
                "cannot fork instance `{id}` from seq {from_seq}: it must be between 1 and \
                 {end} (one past its last journal entry)"
            )));
        }
        let new_id = uuid::Uuid::new_v4().simple().to_string();
        let now = self.inner.clock.now_ms();
        let record = InstanceRecord::new(
            new_id.clone(),
            def.name,
            rec.version.clone(),
            rec.input.clone(),
            now,
        );
        let journal: Vec<_> = source
            .journal
            .iter()
            .filter(|e| e.seq < from_seq)
            .cloned()
            .collect();
        // Attributes set by the copied entries hold in the fork too (replay does not set
        // them again), and the fork names its source.
        let attributes: Vec<WriteOp> = journal
            .iter()
            .filter_map(|e| e.attribute())
            .map(|(key, value)| WriteOp::Attribute {
                instance: new_id.clone(),
                key: key.to_string(),
                value: value.to_string(),
            })
            .chain([lineage(&new_id, FORKED_FROM, id)])
            .collect();
        let fork = WriteOp::Fork {
            record: Box::new(record),
            journal,
            attempts: source
                .attempts
                .iter()
                .filter(|a| a.seq < from_seq)
                .cloned()
                .collect(),
            ended_timers: source
                .ended_timers
                .iter()
                .copied()
                .filter(|s| *s < from_seq)
                .collect(),
        };
        let audit = self.audit_record(
            actor,
            "fork",
            id,
            serde_json::json!({ "from_seq": from_seq, "new_instance": new_id }),
        );
        let mut ops = vec![fork];
        ops.extend(attributes);
        ops.push(WriteOp::Audit(audit));
        self.inner.store.submit(None, ops).await?;
        self.inner.metrics.started(def.name);
        self.inner.resume(&new_id);
        Ok(new_id)
    }

    /// The instance with its journal, attempts and ended timers (one read).
    async fn loaded(&self, id: &str) -> Result<crate::store::LoadedInstance, Error> {
        self.inner
            .store
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Cancels every running or suspended instance matching `query` (at most
    /// [`MAX_BULK`]).
    pub async fn bulk_cancel(
        &self,
        query: Query,
        actor: &str,
        reason: &str,
    ) -> Result<BulkOutcome, Error> {
        crate::limits::check_text("reason", reason, crate::limits::MAX_REASON_BYTES)?;
        let (targets, mut out) = self.bulk_targets(query).await?;
        for rec in targets {
            match self.cancel(&rec.id, actor, reason).await {
                Ok(()) => out.succeeded.push(rec.id),
                Err(e) => out.failed.push(BulkFailure {
                    id: rec.id,
                    error: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Retries every instance matching `query` from its failed step (at most
    /// [`MAX_BULK`]).
    pub async fn bulk_retry(&self, query: Query, actor: &str) -> Result<BulkOutcome, Error> {
        let (targets, mut out) = self.bulk_targets(query).await?;
        for rec in targets {
            match self.retry(&rec.id, None, actor).await {
                Ok(_) => out.succeeded.push(rec.id),
                Err(e) => out.failed.push(BulkFailure {
                    id: rec.id,
                    error: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// The first [`MAX_BULK`] instances matching `query`, and an outcome counting all of
    /// them (the rest is paged through by cursor, one page in memory at a time).
    async fn bulk_targets(
        &self,
        mut query: Query,
    ) -> Result<(Vec<InstanceRecord>, BulkOutcome), Error> {
        query.after = None;
        query.limit = MAX_BULK;
        let targets = self.inner.store.search(query.clone()).await?;
        let mut matched = targets.len();
        let full = |page: &[InstanceRecord]| page.len() == MAX_BULK;
        let mut last = full(&targets).then(|| targets.last().map(cursor)).flatten();
        while let Some(after) = last {
            query.after = Some(after);
            let page = self.inner.store.search(query.clone()).await?;
            matched += page.len();
            last = full(&page).then(|| page.last().map(cursor)).flatten();
        }
        let out = BulkOutcome {
            matched,
            attempted: targets.len(),
            remaining: matched - targets.len(),
            ..Default::default()
        };
        Ok((targets, out))
    }
}

fn cursor(rec: &InstanceRecord) -> crate::store::Cursor {
    crate::store::Cursor {
        created_at: rec.created_at,
        id: rec.id.clone(),
    }
}
