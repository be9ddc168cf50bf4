//! An in-memory [`Store`]: nothing survives the process. For tests and benchmarks.

use super::flow::{
    Admitted, Enqueued, QueueConfig, QueueEntry, QueueState, WorkflowQueueStats, WorkflowQueues,
    plan,
};
use super::task::{
    Leased, QueueStats, THROUGHPUT_WINDOW, TaskQueue, TaskRecord, TaskResult, TaskState,
    WorkerRecord, WorkerTerms,
};
use super::{
    Aggregate, AttemptRecord, AuditRecord, BucketCount, Claimed, Commit, Created, Details, Fence,
    InstanceRecord, JournalEntry, Lease, LeaseTerms, ListFilter, LoadedInstance, Millis, NodeId,
    NodeRecord, Query, Renewal, SignalRecord, Stats, StatsQuery, Status, StatusCount, StepCount,
    Store, StoreAdmin, StoreError, Superseded, Wakeup, WakeupHub, Wakeups, WriteOp,
};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
struct Instance {
    record: InstanceRecord,
    journal: BTreeMap<u32, JournalEntry>,
    attempts: Vec<AttemptRecord>,
    /// Signals with the seq that consumed them, if any.
    signals: Vec<(SignalRecord, Option<u32>)>,
    attributes: BTreeMap<String, String>,
    ended_timers: std::collections::BTreeSet<u32>,
    superseded: Vec<Superseded>,
    superseded_attempts: Vec<(u32, AttemptRecord)>,
    /// The node that owns it, if any.
    owner: Option<NodeId>,
    /// Bumped on every change of owner.
    epoch: u64,
}

impl Instance {
    /// What a load returns: the record, journal, attempts and pending signals.
    fn loaded(&self) -> LoadedInstance {
        LoadedInstance {
            record: self.record.clone(),
            journal: self.journal.values().cloned().collect(),
            attempts: self.attempts.clone(),
            signals: self
                .signals
                .iter()
                .filter(|(_, consumed)| consumed.is_none())
                .map(|(s, _)| s.clone())
                .collect(),
            ended_timers: self.ended_timers.iter().copied().collect(),
        }
    }
}

impl Default for InstanceRecord {
    fn default() -> Self {
        InstanceRecord::new("", "", "", "null", 0)
    }
}

#[derive(Default)]
struct State {
    instances: BTreeMap<String, Instance>,
    /// (instance, seq) of every journal append, in commit order.
    appended: Vec<(String, u32)>,
    next_signal: i64,
    audit: Vec<AuditRecord>,
    /// Nodes by id: (first heartbeat, last heartbeat, lease end).
    nodes: BTreeMap<NodeId, (Millis, Millis, Millis)>,
    /// Tasks by id.
    tasks: BTreeMap<String, TaskRecord>,
    /// Workflow queue entries by instance.
    entries: BTreeMap<String, MemEntry>,
    /// Workflow queue configurations by queue.
    queue_configs: BTreeMap<String, QueueConfig>,
    next_entry: u64,
    /// Workers by id, as the nodes recorded them.
    workers: BTreeMap<String, WorkerRecord>,
    closed: bool,
}

/// An instance's place in its workflow queue.
struct MemEntry {
    entry: QueueEntry,
    /// Order of enqueueing.
    seq: u64,
    enqueued_at: Millis,
    admitted_at: Option<Millis>,
}

impl State {
    /// Whether `node`'s lease has ended at `now` (a node never heard of has none).
    fn expired(&self, node: &NodeId, now: Millis) -> bool {
        self.nodes.get(node).is_none_or(|n| n.2 <= now)
    }

    /// The lease `terms.node` gets (or holds) on `id`, when it may: `bump` claims it.
    fn claimable(&self, inst: &Instance, terms: &LeaseTerms) -> bool {
        !inst.record.status.is_final()
            && inst
                .owner
                .as_ref()
                .is_none_or(|o| *o != terms.node && self.expired(o, terms.now))
    }

    fn lease_of(&self, inst: &Instance) -> Option<Lease> {
        let node = inst.owner.clone()?;
        Some(Lease {
            instance: inst.record.id.clone(),
            expires_at: self.nodes.get(&node).map_or(0, |n| n.2),
            node,
            epoch: inst.epoch,
        })
    }
}

/// Keeps everything in process memory. Writes are durable as soon as they are submitted.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    writes: std::sync::atomic::AtomicU64,
    hub: WakeupHub,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("instances", &self.lock().instances.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many write submissions were applied (the test runtime watches it to tell when
    /// workflows have stopped making progress).
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The seqs of `instance`'s journal in the order they were committed (which differs from
    /// seq order when steps run in parallel).
    pub fn commit_order(&self, instance: &str) -> Vec<u32> {
        self.lock()
            .appended
            .iter()
            .filter(|(i, _)| i == instance)
            .map(|(_, seq)| *seq)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the store, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes an unfinished instance due at `at` (see [`WriteOp::Wake`]).
fn wake(rec: &mut InstanceRecord, at: Millis, woken: &mut Vec<Wakeup>) {
    if !rec.status.is_final() {
        rec.wake_at = Some(rec.wake_at.map_or(at, |w| w.min(at)));
        woken.push(Wakeup::Due {
            instance: rec.id.clone(),
        });
    }
}

/// Refuses a fenced batch whose fence no longer holds.
fn check_fence(state: &State, fence: &Fence) -> Result<(), StoreError> {
    let (owner, epoch) = state
        .instances
        .get(&fence.instance)
        .map_or((None, 0), |i| (i.owner.as_ref(), i.epoch));
    if owner == Some(&fence.node) && epoch == fence.epoch {
        return Ok(());
    }
    Err(StoreError::LeaseLost {
        instance: fence.instance.clone(),
        node: fence.node.to_string(),
        epoch: fence.epoch,
        current_owner: owner.map(NodeId::to_string),
        current_epoch: epoch,
    })
}

/// Refuses a batch that cannot apply whole, so a refused submission changes nothing: an op on
/// a missing instance (a `Wake` aside), a journal seq written twice, a signal consumed twice.
fn check(state: &State, ops: &[WriteOp]) -> Result<(), StoreError> {
    let mut seqs = std::collections::HashSet::new();
    let mut signals = std::collections::HashSet::new();
    let mut forks = std::collections::HashSet::new();
    for op in ops {
        let id = op.instance();
        if let WriteOp::Fork { record, .. } = op {
            if state.instances.contains_key(&record.id) || !forks.insert(record.id.as_str()) {
                return Err(StoreError::Conflict {
                    instance: record.id.clone(),
                    detail: "an instance with this id exists already".into(),
                });
            }
            continue;
        }
        if matches!(op, WriteOp::Audit(_)) {
            continue;
        }
        let Some(inst) = state.instances.get(id) else {
            if matches!(op, WriteOp::Wake { .. }) || forks.contains(id) {
                // Nothing to wake (e.g. a parent outside this store), or an instance a fork
                // earlier in this batch creates.
                continue;
            }
            return Err(StoreError::NotFound(id.to_string()));
        };
        match op {
            WriteOp::Append { entry, .. }
                if inst.journal.contains_key(&entry.seq) || !seqs.insert((id, entry.seq)) =>
            {
                return Err(StoreError::Conflict {
                    instance: id.to_string(),
                    detail: format!("journal entry seq {} already exists", entry.seq),
                });
            }
            WriteOp::ConsumeSignal { signal, .. } => {
                let open = inst
                    .signals
                    .iter()
                    .any(|(s, consumed)| s.id == *signal && consumed.is_none());
                if !open || !signals.insert(*signal) {
                    return Err(StoreError::Conflict {
                        instance: id.to_string(),
                        detail: format!("signal {signal} is consumed already (or unknown)"),
                    });
                }
            }
            WriteOp::RequestCancel { .. } if inst.record.status.is_final() => {
                return Err(StoreError::Finished {
                    id: id.to_string(),
                    status: inst.record.status,
                });
            }
            WriteOp::Retry { .. } if !inst.record.status.is_retryable() => {
                return Err(StoreError::Conflict {
                    instance: id.to_string(),
                    detail: format!(
                        "the instance is {}; only failed, cancelled, terminated or \
                         incompatible instances can be retried",
                        inst.record.status
                    ),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies one op of a batch that passed [`check`]; what it wakes goes to `woken`.
fn apply(state: &mut State, op: WriteOp, woken: &mut Vec<Wakeup>) {
    let op = match op {
        WriteOp::Fork {
            record,
            journal,
            attempts,
            ended_timers,
        } => {
            let id = record.id.clone();
            for e in &journal {
                state.appended.push((id.clone(), e.seq));
            }
            woken.push(Wakeup::Due {
                instance: id.clone(),
            });
            state.instances.insert(
                id,
                Instance {
                    record: *record,
                    journal: journal.into_iter().map(|e| (e.seq, e)).collect(),
                    attempts,
                    ended_timers: ended_timers.into_iter().collect(),
                    ..Default::default()
                },
            );
            return;
        }
        WriteOp::Audit(a) => {
            state.audit.push(a);
            return;
        }
        op => op,
    };
    let id = op.instance().to_string();
    let Some(inst) = state.instances.get_mut(&id) else {
        return;
    };
    match op {
        WriteOp::Append { entry, .. } => {
            let seq = entry.seq;
            inst.journal.insert(seq, entry);
            state.appended.push((id, seq));
        }
        WriteOp::Attempt { record, .. } => inst.attempts.push(record),
        WriteOp::ConsumeSignal { signal, seq, .. } => {
            if let Some(s) = inst.signals.iter_mut().find(|(s, _)| s.id == signal) {
                s.1 = Some(seq);
            }
        }
        WriteOp::Wake { at, .. } => wake(&mut inst.record, at, woken),
        WriteOp::CustomStatus { value, at, .. } => {
            inst.record.custom_status = Some(value);
            inst.record.updated_at = at;
        }
        WriteOp::SetStatus {
            status,
            wake_at,
            at,
            ..
        } => {
            if !inst.record.status.is_final() {
                if status == Status::Suspended {
                    // A wake that arrived while it ran is kept; suspended means unowned.
                    let wake_at = match (inst.record.wake_at, wake_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    inst.record.wake_at = wake_at;
                    inst.owner = None;
                    if wake_at.is_some_and(|w| w <= at) {
                        woken.push(Wakeup::Due { instance: id });
                    }
                } else {
                    inst.record.wake_at = wake_at;
                }
                inst.record.status = status;
                inst.record.updated_at = at;
            }
        }
        WriteOp::Finish {
            status,
            output,
            error,
            failed_step,
            at,
            ..
        } => {
            if !inst.record.status.is_final() {
                inst.record.status = status;
                inst.record.output = output;
                inst.record.error = error;
                inst.record.wake_at = None;
                inst.record.updated_at = at;
                inst.record.failed_seq = failed_step.as_ref().map(|f| f.1);
                inst.record.failed_step = failed_step.map(|f| f.0);
                inst.owner = None;
                inst.epoch += 1;
                for t in state.tasks.values_mut().filter(|t| t.task.instance == id) {
                    t.cancel(at, "its instance ended");
                }
                woken.push(Wakeup::Finished {
                    instance: id.clone(),
                    status,
                });
                if let Some(parent) = &inst.record.parent {
                    woken.push(Wakeup::ChildFinished {
                        parent: parent.clone(),
                        child: id,
                    });
                }
            }
        }
        WriteOp::Attribute { key, value, .. } => {
            inst.attributes.insert(key, value);
        }
        WriteOp::EndTimer { seq, .. } => {
            inst.ended_timers.insert(seq);
        }
        WriteOp::RequestCancel { at, .. } => {
            if inst.record.cancel_requested.is_none() {
                inst.record.cancel_requested = Some(at);
                inst.record.updated_at = at;
            }
            wake(&mut inst.record, at, woken);
            woken.push(Wakeup::Cancel { instance: id, at });
        }
        WriteOp::CancelDelivered { seq, .. } => inst.record.cancel_seq = Some(seq),
        WriteOp::Retry { from_seq, at, .. } => {
            let retry = inst.record.retries + 1;
            let moved = inst.journal.split_off(&from_seq);
            inst.ended_timers.split_off(&from_seq);
            // Attributes set by the moved entries go back to what earlier entries set.
            for (key, _) in moved.values().filter_map(|e| e.attribute()) {
                let earlier = inst
                    .journal
                    .values()
                    .rev()
                    .filter_map(|k| k.attribute())
                    .find(|(k, _)| *k == key);
                match earlier {
                    Some((_, value)) => inst.attributes.insert(key.to_string(), value.to_string()),
                    None => inst.attributes.remove(key),
                };
            }
            inst.superseded
                .extend(moved.into_values().map(|entry| Superseded { retry, entry }));
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut inst.attempts)
                .into_iter()
                .partition(|a| a.seq >= from_seq);
            inst.attempts = kept;
            inst.superseded_attempts
                .extend(gone.into_iter().map(|a| (retry, a)));
            for (_, consumed) in &mut inst.signals {
                if consumed.is_some_and(|seq| seq >= from_seq) {
                    *consumed = None;
                }
            }
            inst.owner = None;
            inst.epoch += 1;
            woken.push(Wakeup::Due { instance: id });
            let r = &mut inst.record;
            r.retries = retry;
            r.status = Status::Running;
            r.output = None;
            r.error = None;
            r.failed_step = None;
            r.failed_seq = None;
            r.cancel_requested = None;
            r.cancel_seq = None;
            r.wake_at = None;
            r.updated_at = at;
        }
        WriteOp::EnqueueTask { task, .. } => {
            if !inst.record.status.is_final() && !state.tasks.contains_key(&task.id) {
                woken.push(Wakeup::TaskQueued {
                    queue: task.queue.clone(),
                });
                state
                    .tasks
                    .insert(task.id.clone(), TaskRecord::pending(*task));
            }
        }
        WriteOp::CancelTask { task, at, .. } => {
            if let Some(t) = state.tasks.get_mut(&task)
                && t.task.instance == id
            {
                t.cancel(at, "the instance stopped waiting for it");
            }
        }
        WriteOp::Fork { .. } | WriteOp::Audit(_) => {}
    }
}

impl MemoryStore {
    /// Applies a checked batch and sends what it woke.
    fn apply_all(&self, state: &mut State, ops: Vec<WriteOp>) {
        let mut woken = Vec::new();
        for op in ops {
            apply(state, op, &mut woken);
        }
        for w in woken {
            self.hub.send(w);
        }
    }
}

impl Store for MemoryStore {
    fn submit(&self, fence: Option<Fence>, ops: Vec<WriteOp>) -> Commit {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        if state.closed {
            return Commit::ready(Err(StoreError::Closed));
        }
        if let Some(fence) = &fence
            && let Err(e) = check_fence(&state, fence)
        {
            return Commit::ready(Err(e));
        }
        if let Err(e) = check(&state, &ops) {
            return Commit::ready(Err(e));
        }
        self.apply_all(&mut state, ops);
        Commit::ready(Ok(()))
    }

    fn create(
        &self,
        record: InstanceRecord,
        owner: Option<LeaseTerms>,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        let result = if state.closed {
            Err(StoreError::Closed)
        } else if let Some(existing) = state.instances.get(&record.id) {
            Ok(Created::Existing(Box::new(existing.record.clone())))
        } else {
            let id = record.id.clone();
            let owned = owner.is_some();
            state.instances.insert(
                id.clone(),
                Instance {
                    record,
                    owner: owner.as_ref().map(|t| t.node.clone()),
                    epoch: u64::from(owned),
                    ..Default::default()
                },
            );
            // All or nothing: a refused extra write takes the new instance back out.
            match check(&state, &extra) {
                Ok(()) => {
                    self.apply_all(&mut state, extra);
                    let lease = owner.map(|t| Lease {
                        instance: id.clone(),
                        expires_at: state.nodes.get(&t.node).map_or(0, |n| n.2),
                        node: t.node,
                        epoch: 1,
                    });
                    if lease.is_none() {
                        self.hub.send(Wakeup::Due { instance: id });
                    }
                    Ok(Created::New(lease))
                }
                Err(e) => {
                    state.instances.remove(&id);
                    Err(e)
                }
            }
        };
        Box::pin(async move { result })
    }

    fn add_signal(
        &self,
        instance: &str,
        name: &str,
        payload: String,
        at: Millis,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<i64, StoreError>> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        let result = match state.instances.get(instance) {
            _ if state.closed => Err(StoreError::Closed),
            None => Err(StoreError::NotFound(instance.to_string())),
            Some(inst) if inst.record.status.is_final() => Err(StoreError::Finished {
                id: instance.to_string(),
                status: inst.record.status,
            }),
            Some(_) => check(&state, &extra),
        };
        let result = result.map(|()| {
            state.next_signal += 1;
            let id = state.next_signal;
            let signal = SignalRecord {
                id,
                name: name.to_string(),
                payload,
                received_at: at,
            };
            let mut woken = Vec::new();
            if let Some(inst) = state.instances.get_mut(instance) {
                wake(&mut inst.record, at, &mut woken);
                inst.signals.push((signal.clone(), None));
            }
            self.apply_all(&mut state, extra);
            for w in woken {
                self.hub.send(w);
            }
            self.hub.send(Wakeup::Signal {
                instance: instance.to_string(),
                signal,
            });
            id
        });
        Box::pin(async move { result })
    }

    fn claim_due(
        &self,
        terms: LeaseTerms,
        limit: usize,
    ) -> BoxFuture<'_, Result<Claimed, StoreError>> {
        let mut state = self.lock();
        if state.closed {
            return Box::pin(async { Err(StoreError::Closed) });
        }
        let now = terms.now;
        let due = |i: &Instance| due(i, now);
        // Running ones first: they were being driven (or were just created) before waiting
        // ones woke.
        let mut ids: Vec<(bool, String)> = state
            .instances
            .values()
            .filter(|i| due(i) && state.claimable(i, &terms))
            .map(|i| (i.record.status != Status::Running, i.record.id.clone()))
            .collect();
        ids.sort();
        ids.truncate(limit);
        let next_wake = state
            .instances
            .values()
            .filter(|i| i.record.status == Status::Suspended && i.owner.is_none())
            .filter_map(|i| i.record.wake_at)
            .filter(|w| *w > now)
            .min();
        let mut leases = Vec::with_capacity(ids.len());
        for (_, id) in ids {
            if let Some(lease) = take(&mut state, &terms, &id) {
                leases.push(lease);
            }
        }
        if !leases.is_empty() {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Box::pin(async move { Ok(Claimed { leases, next_wake }) })
    }

    fn claim(
        &self,
        terms: LeaseTerms,
        instance: &str,
    ) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        let mut state = self.lock();
        let result = if state.closed {
            Err(StoreError::Closed)
        } else {
            match state.instances.get(instance) {
                Some(i) if !i.record.status.is_final() && i.owner.as_ref() == Some(&terms.node) => {
                    Ok(state.lease_of(i))
                }
                Some(i) if state.claimable(i, &terms) && due(i, terms.now) => {
                    self.writes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(take(&mut state, &terms, instance))
                }
                _ => Ok(None),
            }
        };
        Box::pin(async move { result })
    }

    fn renew(
        &self,
        terms: LeaseTerms,
        held: Vec<(String, u64)>,
    ) -> BoxFuture<'_, Result<Renewal, StoreError>> {
        let mut state = self.lock();
        if state.closed {
            return Box::pin(async { Err(StoreError::Closed) });
        }
        let expires = terms.expires_at();
        let node = state
            .nodes
            .entry(terms.node.clone())
            .or_insert((terms.now, terms.now, expires));
        node.1 = terms.now;
        node.2 = expires;
        // Only unfinished instances have owners (an end clears it).
        let owners: std::collections::HashSet<NodeId> = state
            .instances
            .values()
            .filter_map(|i| i.owner.clone())
            .collect();
        let cutoff = terms.now.saturating_sub(super::NODE_RETENTION_MS);
        state
            .nodes
            .retain(|id, n| *id == terms.node || n.2 >= cutoff || owners.contains(id));
        let lost = held
            .into_iter()
            .filter(|(id, epoch)| {
                state
                    .instances
                    .get(id)
                    .is_none_or(|i| i.owner.as_ref() != Some(&terms.node) || i.epoch != *epoch)
            })
            .map(|(id, _)| id)
            .collect();
        let timers = state
            .instances
            .values()
            .filter(|i| i.record.status == Status::Suspended)
            .filter_map(|i| i.record.wake_at);
        let leases = owners
            .iter()
            .filter(|o| **o != terms.node)
            .map(|o| state.nodes.get(o).map_or(0, |n| n.2));
        let next_due = timers.chain(leases).min();
        Box::pin(async move { Ok(Renewal { lost, next_due }) })
    }

    fn release(
        &self,
        node: &NodeId,
        instances: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.lock();
        let ids: Vec<String> = match instances {
            Some(ids) => ids,
            None => {
                if let Some(n) = state.nodes.get_mut(node) {
                    n.2 = n.2.min(n.1);
                }
                state
                    .instances
                    .values()
                    .filter(|i| i.owner.as_ref() == Some(node))
                    .map(|i| i.record.id.clone())
                    .collect()
            }
        };
        for id in ids {
            if let Some(inst) = state.instances.get_mut(&id)
                && inst.owner.as_ref() == Some(node)
            {
                inst.owner = None;
                self.hub.send(Wakeup::Due { instance: id });
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn wakeups(&self) -> Wakeups {
        self.hub.subscribe()
    }

    fn probe_write(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let closed = self.lock().closed;
        Box::pin(async move {
            if closed {
                Err(StoreError::Closed)
            } else {
                Ok(())
            }
        })
    }

    fn metrics(&self) -> Option<std::sync::Arc<super::StoreMetrics>> {
        None
    }

    fn load(&self, id: &str) -> BoxFuture<'_, Result<Option<LoadedInstance>, StoreError>> {
        let result = self.lock().instances.get(id).map(Instance::loaded);
        Box::pin(async move { Ok(result) })
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<InstanceRecord>, StoreError>> {
        let result = self.lock().instances.get(id).map(|i| i.record.clone());
        Box::pin(async move { Ok(result) })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        let state = self.lock();
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        let result: Vec<_> = state
            .instances
            .values()
            .map(|i| &i.record)
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect();
        Box::pin(async move { Ok(result) })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.lock().closed = true;
        Box::pin(async { Ok(()) })
    }
}

impl StoreAdmin for MemoryStore {
    fn search(&self, query: Query) -> BoxFuture<'_, Result<Vec<InstanceRecord>, StoreError>> {
        let state = self.lock();
        let mut found: Vec<InstanceRecord> = state
            .instances
            .values()
            .filter(|i| query.matches(&i.record, &i.attributes) && query.after_cursor(&i.record))
            .map(|i| i.record.clone())
            .collect();
        found.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        if query.limit > 0 {
            found.truncate(query.limit);
        }
        Box::pin(async move { Ok(found) })
    }

    fn details(&self, id: &str) -> BoxFuture<'_, Result<Option<Details>, StoreError>> {
        let state = self.lock();
        let result = state.instances.get(id).map(|inst| {
            let loaded = inst.loaded();
            Details {
                record: loaded.record,
                journal: loaded.journal,
                attempts: loaded.attempts,
                signals: loaded.signals,
                attributes: inst.attributes.clone(),
                superseded: inst.superseded.clone(),
                superseded_attempts: inst.superseded_attempts.clone(),
            }
        });
        Box::pin(async move { Ok(result) })
    }

    fn attributes(
        &self,
        ids: Vec<String>,
    ) -> BoxFuture<'_, Result<super::AttributeMap, StoreError>> {
        let state = self.lock();
        let result = ids
            .into_iter()
            .filter_map(|id| {
                let attrs = &state.instances.get(&id)?.attributes;
                (!attrs.is_empty()).then(|| (id, attrs.clone()))
            })
            .collect();
        Box::pin(async move { Ok(result) })
    }

    fn counts(&self) -> BoxFuture<'_, Result<Vec<StatusCount>, StoreError>> {
        // All time: one window from the epoch, one bucket.
        let all = StatsQuery {
            from: 0,
            to: Millis::MAX,
            bucket_ms: Millis::MAX,
            workflow: None,
        };
        let stats = self.stats(all);
        Box::pin(async move { Ok(stats.await?.totals) })
    }

    fn stats(&self, q: StatsQuery) -> BoxFuture<'_, Result<Stats, StoreError>> {
        let state = self.lock();
        let bucket = q.bucket_ms.max(1);
        let mut totals: BTreeMap<(String, &'static str), (Status, u64)> = BTreeMap::new();
        let mut series: BTreeMap<(Millis, String, &'static str), (Status, u64)> = BTreeMap::new();
        let mut steps: BTreeMap<(String, String), u64> = BTreeMap::new();
        for i in state.instances.values() {
            let r = &i.record;
            if r.created_at < q.from
                || r.created_at >= q.to
                || q.workflow.as_ref().is_some_and(|w| *w != r.workflow)
            {
                continue;
            }
            let st = r.status.as_str();
            totals
                .entry((r.workflow.clone(), st))
                .or_insert((r.status, 0))
                .1 += 1;
            let start = q.from + (r.created_at - q.from) / bucket * bucket;
            series
                .entry((start, r.workflow.clone(), st))
                .or_insert((r.status, 0))
                .1 += 1;
            if let (Some(step), Status::Failed | Status::Cancelled) = (&r.failed_step, r.status) {
                *steps.entry((r.workflow.clone(), step.clone())).or_default() += 1;
            }
        }
        let result = Stats {
            totals: totals
                .into_iter()
                .map(|((workflow, _), (status, count))| StatusCount {
                    workflow,
                    status,
                    count,
                })
                .collect(),
            series: series
                .into_iter()
                .map(|((start, workflow, _), (status, count))| BucketCount {
                    start,
                    workflow,
                    status,
                    count,
                })
                .collect(),
            failed_steps: steps
                .into_iter()
                .map(|((workflow, step), count)| StepCount {
                    workflow,
                    step,
                    count,
                })
                .collect(),
        };
        Box::pin(async move { Ok(result) })
    }

    fn aggregate(&self, key: String, query: Query) -> BoxFuture<'_, Result<Aggregate, StoreError>> {
        let state = self.lock();
        let mut agg = Aggregate::default();
        for i in state.instances.values() {
            if !query.matches(&i.record, &i.attributes) {
                continue;
            }
            let Some(raw) = i.attributes.get(&key) else {
                continue;
            };
            agg.count += 1;
            if let Some(n) = serde_json::from_str::<serde_json::Value>(raw)
                .ok()
                .and_then(|v| v.as_f64())
            {
                agg.numeric += 1;
                agg.sum += n;
                agg.min = Some(agg.min.map_or(n, |m| m.min(n)));
                agg.max = Some(agg.max.map_or(n, |m| m.max(n)));
            }
        }
        Box::pin(async move { Ok(agg) })
    }

    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AuditRecord>, StoreError>> {
        let state = self.lock();
        let result = state.audit.iter().rev().take(limit).cloned().collect();
        Box::pin(async move { Ok(result) })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>, StoreError>> {
        let state = self.lock();
        let result = state
            .nodes
            .iter()
            .map(|(id, (started, beat, expires))| NodeRecord {
                id: id.to_string(),
                started_at: *started,
                heartbeat_at: *beat,
                lease_expires: *expires,
                owned: state
                    .instances
                    .values()
                    .filter(|i| i.owner.as_ref() == Some(id))
                    .count() as u64,
            })
            .collect();
        Box::pin(async move { Ok(result) })
    }

    fn unfinished(
        &self,
        workflow: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        use std::ops::Bound;
        let state = self.lock();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let result = state
            .instances
            .range::<String, _>((from, Bound::Unbounded))
            .filter(|(_, i)| {
                !i.record.status.is_final()
                    && workflow.as_ref().is_none_or(|w| *w == i.record.workflow)
            })
            .map(|(id, _)| id.clone())
            .take(if limit == 0 { usize::MAX } else { limit })
            .collect();
        Box::pin(async move { Ok(result) })
    }

    fn leases(&self, ids: Vec<String>) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        let state = self.lock();
        let result = ids
            .iter()
            .filter_map(|id| state.lease_of(state.instances.get(id)?))
            .collect();
        Box::pin(async move { Ok(result) })
    }
}

/// Whether `i` is due at `now`: running, or suspended with its wake time reached.
fn due(i: &Instance, now: Millis) -> bool {
    match i.record.status {
        Status::Running => true,
        Status::Suspended => i.record.wake_at.is_some_and(|w| w <= now),
        _ => false,
    }
}

/// Gives `id` to `terms.node` at a bumped epoch, running with no wake time.
fn take(state: &mut State, terms: &LeaseTerms, id: &str) -> Option<Lease> {
    let expires_at = state.nodes.get(&terms.node).map_or(0, |n| n.2);
    let inst = state.instances.get_mut(id)?;
    inst.owner = Some(terms.node.clone());
    inst.epoch += 1;
    inst.record.status = Status::Running;
    inst.record.wake_at = None;
    Some(Lease {
        instance: id.to_string(),
        node: terms.node.clone(),
        epoch: inst.epoch,
        expires_at,
    })
}

impl TaskQueue for MemoryStore {
    fn lease_tasks(
        &self,
        terms: WorkerTerms,
        queues: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Leased, StoreError>> {
        let mut state = self.lock();
        let result = if state.closed {
            Err(StoreError::Closed)
        } else {
            let now = terms.now;
            let mut open: Vec<&mut TaskRecord> = state
                .tasks
                .values_mut()
                .filter(|t| queues.contains(&t.task.queue) && t.leasable_or_later(now).is_some())
                .collect();
            open.sort_by_key(|t| (-i64::from(t.task.priority), t.task.created_at));
            let mut leased = Leased::default();
            for t in open {
                match t.leasable_or_later(now) {
                    Some(None) if leased.tasks.len() < limit => {
                        leased.tasks.push(t.lease(&terms));
                    }
                    Some(Some(later)) => {
                        leased.next_expiry =
                            Some(leased.next_expiry.map_or(later, |n: Millis| n.min(later)));
                    }
                    _ => {}
                }
            }
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(leased)
        };
        Box::pin(std::future::ready(result))
    }

    fn heartbeat_task(
        &self,
        id: &str,
        token: u64,
        terms: WorkerTerms,
    ) -> BoxFuture<'_, Result<Millis, StoreError>> {
        let mut state = self.lock();
        let result = if state.closed {
            Err(StoreError::Closed)
        } else {
            match state.tasks.get_mut(id) {
                Some(t) => t.held(token, terms.now).map(|()| {
                    t.lease_expires_at = Some(terms.expires_at());
                    terms.expires_at()
                }),
                None => Err(TaskRecord::missing(id, token)),
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn finish_task(
        &self,
        id: &str,
        token: u64,
        result: TaskResult,
        now: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.lock();
        let outcome = if state.closed {
            Err(StoreError::Closed)
        } else {
            match state.tasks.get_mut(id) {
                Some(t) => t.held(token, now).map(|()| {
                    t.finish(result, now);
                    t.task.instance.clone()
                }),
                None => Err(TaskRecord::missing(id, token)),
            }
        };
        let outcome = outcome.map(|instance| {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut woken = Vec::new();
            if let Some(inst) = state.instances.get_mut(&instance) {
                wake(&mut inst.record, now, &mut woken);
            }
            woken.push(Wakeup::TaskFinished {
                instance,
                task: id.to_string(),
            });
            for w in woken {
                self.hub.send(w);
            }
        });
        Box::pin(std::future::ready(outcome))
    }

    fn task(&self, id: &str) -> BoxFuture<'_, Result<Option<TaskRecord>, StoreError>> {
        let found = self.lock().tasks.get(id).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn queue_stats(&self, now: Millis) -> BoxFuture<'_, Result<Vec<QueueStats>, StoreError>> {
        let state = self.lock();
        let mut by_queue: BTreeMap<String, QueueStats> = BTreeMap::new();
        for t in state.tasks.values() {
            let q = by_queue
                .entry(t.task.queue.clone())
                .or_insert_with(|| QueueStats {
                    queue: t.task.queue.clone(),
                    ..Default::default()
                });
            if matches!(t.state, TaskState::Completed | TaskState::Failed)
                && t.finished_at
                    .is_some_and(|at| at > now - THROUGHPUT_WINDOW && at <= now)
            {
                q.finished_last_minute += 1;
            }
            match t.state {
                TaskState::Completed => q.completed += 1,
                TaskState::Failed => q.failed += 1,
                TaskState::Cancelled => {}
                TaskState::Leased if t.lease_expires_at.is_some_and(|e| e > now) => {
                    q.in_flight += 1
                }
                TaskState::Pending | TaskState::Leased => {
                    q.waiting += 1;
                    q.oldest_waiting = Some(
                        q.oldest_waiting
                            .map_or(t.task.created_at, |o| o.min(t.task.created_at)),
                    );
                }
            }
        }
        Box::pin(std::future::ready(Ok(by_queue.into_values().collect())))
    }

    fn record_workers(
        &self,
        seen: Vec<WorkerRecord>,
        forget_before: Millis,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.lock();
        for w in seen {
            match state.workers.get_mut(&w.id) {
                Some(stored) => stored.merge(w),
                None => {
                    state.workers.insert(w.id.clone(), w);
                }
            }
        }
        state.workers.retain(|_, w| w.last_seen() >= forget_before);
        Box::pin(std::future::ready(Ok(())))
    }

    fn workers(&self, since: Millis) -> BoxFuture<'_, Result<Vec<WorkerRecord>, StoreError>> {
        let found = self
            .lock()
            .workers
            .values()
            .filter(|w| w.last_seen() >= since)
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(found)))
    }
}

impl State {
    /// Whether the entry's instance is unfinished (a missing one is finished).
    fn live(&self, instance: &str) -> bool {
        self.instances
            .get(instance)
            .is_some_and(|i| !i.record.status.is_final())
    }
}

impl WorkflowQueues for MemoryStore {
    fn enqueue_instance(
        &self,
        record: InstanceRecord,
        entry: QueueEntry,
        extra: Vec<WriteOp>,
    ) -> BoxFuture<'_, Result<Enqueued, StoreError>> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        let result = (|| {
            if state.closed {
                return Err(StoreError::Closed);
            }
            if let Some(existing) = state.instances.get(&record.id) {
                return Ok(Enqueued::Existing(Box::new(existing.record.clone())));
            }
            if let Some(dedup) = &entry.dedup {
                let holder = state.entries.iter().find(|(id, e)| {
                    e.entry.queue == entry.queue
                        && e.entry.dedup.as_ref() == Some(dedup)
                        && state.live(id)
                });
                if let Some((id, _)) = holder
                    && let Some(inst) = state.instances.get(id)
                {
                    return Ok(Enqueued::Duplicate(Box::new(inst.record.clone())));
                }
            }
            let id = record.id.clone();
            let at = record.created_at;
            state.instances.insert(
                id.clone(),
                Instance {
                    record,
                    ..Default::default()
                },
            );
            if let Err(e) = check(&state, &extra) {
                state.instances.remove(&id);
                return Err(e);
            }
            self.apply_all(&mut state, extra);
            state.next_entry += 1;
            let seq = state.next_entry;
            state.queue_configs.entry(entry.queue.clone()).or_default();
            state.entries.insert(
                id,
                MemEntry {
                    entry,
                    seq,
                    enqueued_at: at,
                    admitted_at: None,
                },
            );
            Ok(Enqueued::New)
        })();
        Box::pin(std::future::ready(result))
    }

    fn admit(&self, now: Millis, limit: usize) -> BoxFuture<'_, Result<Admitted, StoreError>> {
        let mut state = self.lock();
        if state.closed {
            return Box::pin(std::future::ready(Err(StoreError::Closed)));
        }
        let mut queues: BTreeMap<String, QueueState> = BTreeMap::new();
        let mut queued: Vec<(&String, &MemEntry)> = Vec::new();
        for (id, e) in &state.entries {
            let status = state.instances.get(id).map(|i| i.record.status);
            let q = queues.entry(e.entry.queue.clone()).or_default();
            match (status, e.admitted_at) {
                (Some(super::Status::Queued), None) => queued.push((id, e)),
                (Some(st), Some(at)) => {
                    if !st.is_final() {
                        q.running += 1;
                        if let Some(k) = &e.entry.key {
                            *q.running_by_key.entry(k.clone()).or_default() += 1;
                        }
                    }
                    q.recent.push(at);
                }
                _ => {}
            }
        }
        queued.sort_by_key(|(_, e)| (-i64::from(e.entry.priority), e.seq));
        for (id, e) in &queued {
            if let Some(q) = queues.get_mut(&e.entry.queue) {
                q.candidates.push(((*id).clone(), e.entry.key.clone()));
            }
        }
        let mut admitted = Admitted::default();
        let mut left = queued.len() as u64;
        for (name, q) in &mut queues {
            q.config = state.queue_configs.get(name).copied().unwrap_or_default();
            if let Some(r) = q.config.rate {
                let from = now.saturating_sub(r.period_ms);
                q.recent.retain(|t| *t > from);
                q.recent.sort_unstable();
            }
            let room = limit.saturating_sub(admitted.instances.len());
            let (ids, next) = plan(q, now, room);
            left -= ids.len() as u64;
            admitted.instances.extend(ids);
            if let Some(n) = next {
                admitted.next_at = Some(admitted.next_at.map_or(n, |a: Millis| a.min(n)));
            }
        }
        admitted.waiting = left;
        for id in &admitted.instances {
            if let Some(e) = state.entries.get_mut(id) {
                e.admitted_at = Some(now);
            }
            if let Some(inst) = state.instances.get_mut(id) {
                inst.record.status = super::Status::Running;
                inst.record.updated_at = now;
                inst.record.wake_at = None;
            }
        }
        if !admitted.instances.is_empty() {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for id in &admitted.instances {
            self.hub.send(Wakeup::Due {
                instance: id.clone(),
            });
        }
        Box::pin(std::future::ready(Ok(admitted)))
    }

    fn set_queue_config(
        &self,
        queue: String,
        config: QueueConfig,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.lock();
        let result = if state.closed {
            Err(StoreError::Closed)
        } else {
            state.queue_configs.insert(queue, config);
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn workflow_queues(&self) -> BoxFuture<'_, Result<Vec<WorkflowQueueStats>, StoreError>> {
        let state = self.lock();
        let mut by_queue: BTreeMap<String, WorkflowQueueStats> = state
            .queue_configs
            .iter()
            .map(|(name, config)| {
                let stats = WorkflowQueueStats {
                    queue: name.clone(),
                    config: *config,
                    ..Default::default()
                };
                (name.clone(), stats)
            })
            .collect();
        for (id, e) in &state.entries {
            let q = by_queue
                .entry(e.entry.queue.clone())
                .or_insert_with(|| WorkflowQueueStats {
                    queue: e.entry.queue.clone(),
                    ..Default::default()
                });
            let status = state.instances.get(id).map(|i| i.record.status);
            match status {
                Some(super::Status::Queued) => {
                    q.queued += 1;
                    q.oldest_queued = Some(
                        q.oldest_queued
                            .map_or(e.enqueued_at, |o| o.min(e.enqueued_at)),
                    );
                }
                Some(st) if !st.is_final() && e.admitted_at.is_some() => q.running += 1,
                _ => {}
            }
        }
        Box::pin(std::future::ready(Ok(by_queue.into_values().collect())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicate_seq_is_refused_and_changes_nothing() {
        let store = MemoryStore::new();
        let rec = InstanceRecord {
            id: "a".into(),
            ..Default::default()
        };
        assert!(matches!(
            store.create(rec, None, Vec::new()).await,
            Ok(Created::New(None))
        ));
        let entry = JournalEntry {
            seq: 1,
            kind: super::super::EntryKind::Step,
            name: "s".into(),
            outcome: "1".into(),
            attempts: 1,
            started_at: 0,
            finished_at: 0,
        };
        let op = |e: &JournalEntry| WriteOp::Append {
            instance: "a".into(),
            entry: e.clone(),
        };
        store
            .submit(None, vec![op(&entry)])
            .await
            .expect("first append");
        let mut other = entry.clone();
        other.outcome = "2".into();
        let err = store
            .submit(None, vec![op(&other)])
            .await
            .expect_err("second append");
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        let loaded = store.load("a").await.expect("load").expect("exists");
        assert_eq!(loaded.journal, vec![entry]);
    }

    #[tokio::test]
    async fn a_batch_that_cannot_apply_whole_changes_nothing() {
        let store = MemoryStore::new();
        let rec = InstanceRecord {
            id: "a".into(),
            ..Default::default()
        };
        assert!(matches!(
            store.create(rec, None, Vec::new()).await,
            Ok(Created::New(None))
        ));
        let entry = JournalEntry {
            seq: 1,
            kind: super::super::EntryKind::Signal,
            name: "s".into(),
            outcome: "1".into(),
            attempts: 1,
            started_at: 0,
            finished_at: 0,
        };
        let ops = vec![
            WriteOp::Append {
                instance: "a".into(),
                entry,
            },
            WriteOp::ConsumeSignal {
                instance: "a".into(),
                signal: 42,
                seq: 1,
            },
        ];
        let err = store.submit(None, ops).await.expect_err("unknown signal");
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        let loaded = store.load("a").await.expect("load").expect("exists");
        assert!(loaded.journal.is_empty(), "{:?}", loaded.journal);
    }
}
