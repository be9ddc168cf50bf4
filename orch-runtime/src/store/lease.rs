//! Ownership of instances by nodes: node ids, leases, fences and wake-ups.
//!
//! Every runtime is a *node*. A node drives only the instances it owns. Ownership is recorded
//! in the store, per instance, as `(owner, epoch)`; the lease's expiry is the owning node's:
//! a node's lease on all its instances ends at its last heartbeat ([`Store::renew`]) plus the
//! lease time-to-live. Once it has ended, any other node may claim those instances
//! ([`Store::claim_due`]), which bumps their epoch.
//!
//! Every write a node makes while driving an instance carries a [`Fence`]: the epoch the node
//! holds. The store refuses the whole submission with
//! [`StoreError::LeaseLost`](super::StoreError::LeaseLost) when the instance's current owner or
//! epoch differs, so a node that lost an instance (paused, partitioned, slow) can never
//! overwrite the checkpoints of the node that took it over.
//!
//! [`Store::renew`]: super::Store::renew
//! [`Store::claim_due`]: super::Store::claim_due

use super::{Millis, SignalRecord, Status};
use std::fmt;
use std::sync::Arc;
use tokio::sync::broadcast;

/// The identity of one runtime (a node of the cluster) in the store.
///
/// Configurable with `Runtime::builder().node_id(..)`; by default the host name, the process
/// id and a random suffix, so two runtimes never share one by accident.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

/// The longest node id accepted, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 128;

impl NodeId {
    /// A node id from `id`: 1 to [`MAX_NODE_ID_BYTES`] bytes of printable text without
    /// whitespace. Anything else is refused with the reason.
    pub fn new(id: impl Into<String>) -> Result<NodeId, String> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_NODE_ID_BYTES {
            return Err(format!(
                "node id `{id}` must be 1 to {MAX_NODE_ID_BYTES} bytes long"
            ));
        }
        if let Some(c) = id.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "node id `{}` contains {c:?}; use letters, digits and punctuation without spaces",
                id.escape_debug()
            ));
        }
        Ok(NodeId(id.into()))
    }

    /// `host-pid-random`: unique per runtime, readable in `orch nodes`.
    pub fn generate() -> NodeId {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let host: String = host
            .chars()
            .filter(|c| !c.is_whitespace() && !c.is_control())
            .take(64)
            .collect();
        let host = if host.is_empty() { "node".into() } else { host };
        NodeId(format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..)).into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// What an engine write is fenced by: the node that drives `instance` and the epoch its lease
/// was granted at. See [`Store::submit`](super::Store::submit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The instance the fenced writes belong to.
    pub instance: String,
    /// The node that holds it.
    pub node: NodeId,
    /// The epoch the node was granted the instance at.
    pub epoch: u64,
}

/// One instance owned by one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The instance.
    pub instance: String,
    /// Its owner.
    pub node: NodeId,
    /// Bumped on every change of owner (a claim, a release followed by a claim, a retry, a
    /// termination, the end): writes fenced by an older epoch are refused.
    pub epoch: u64,
    /// When the lease ends unless the node renews it (its heartbeat).
    pub expires_at: Millis,
}

impl Lease {
    /// The fence for writes made under this lease.
    pub fn fence(&self) -> Fence {
        Fence {
            instance: self.instance.clone(),
            node: self.node.clone(),
            epoch: self.epoch,
        }
    }
}

/// Who asks for a lease, when, and for how long.
#[derive(Clone, Debug)]
pub struct LeaseTerms {
    /// The node asking.
    pub node: NodeId,
    /// The time now, as the node reads it (expiry is compared against it).
    pub now: Millis,
    /// How long the node's leases last from `now` without a renewal (> 0).
    pub ttl: Millis,
}

impl LeaseTerms {
    /// When leases granted on these terms end.
    pub fn expires_at(&self) -> Millis {
        self.now.saturating_add(self.ttl.max(1))
    }
}

/// How long a node that stopped (or died) stays listed: a heartbeat of any node forgets the
/// nodes whose lease ended longer ago than this and that own no instance, so the list of nodes
/// does not grow with every process ever started (each gets a new id by default).
pub const NODE_RETENTION_MS: Millis = 24 * 60 * 60 * 1000;

/// The answer of [`Store::renew`](super::Store::renew), the heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// Those of the held instances the node no longer holds at the epoch it named.
    pub lost: Vec<String>,
    /// When the node should next look for due instances nobody will announce: the earliest
    /// timer of a suspended instance, or the earliest lease end of another node that owns
    /// unfinished instances (when that node stops renewing, its instances become claimable
    /// then). In the past when something is claimable now; `None` when nothing is pending.
    /// Between heartbeats this is all a node needs to poll for: everything else that makes an
    /// instance due is announced as a [`Wakeup`].
    pub next_due: Option<Millis>,
}

/// The answer of [`Store::claim_due`](super::Store::claim_due).
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// The instances now owned by the claiming node, with their new epochs.
    pub leases: Vec<Lease>,
    /// The earliest time a suspended instance becomes due after `now` (its timer), so the
    /// node knows when to claim again; `None` when no suspended instance has a timer.
    pub next_wake: Option<Millis>,
}

/// One node as recorded in the store, for display.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// The node's id.
    pub id: String,
    /// Its first heartbeat.
    pub started_at: Millis,
    /// Its last heartbeat.
    pub heartbeat_at: Millis,
    /// When its leases end unless it renews them (in the past for a stopped node).
    pub lease_expires: Millis,
    /// How many unfinished instances it owns now.
    pub owned: u64,
}

/// Something happened in the store that a node may have to act on. Delivered to every
/// subscriber of [`Store::wakeups`](super::Store::wakeups) after the write that caused it
/// committed.
#[derive(Clone, Debug)]
pub enum Wakeup {
    /// The instance may have become due: created or retried without an owner, released,
    /// suspended with a wake time already reached, or woken by a write.
    Due {
        /// The instance.
        instance: String,
    },
    /// A signal was stored for the instance.
    Signal {
        /// The instance.
        instance: String,
        /// The stored signal.
        signal: SignalRecord,
    },
    /// Cancellation of the instance was requested.
    Cancel {
        /// The instance.
        instance: String,
        /// When it was requested.
        at: Millis,
    },
    /// A child instance finished: its parent may continue.
    ChildFinished {
        /// The parent.
        parent: String,
        /// The child that finished.
        child: String,
    },
    /// The instance finished.
    Finished {
        /// The instance.
        instance: String,
        /// How it ended.
        status: Status,
    },
    /// A task was enqueued on `queue`: its workers may lease it.
    TaskQueued {
        /// The queue.
        queue: String,
    },
    /// A worker finished (or the instance cancelled) task `task` of `instance`: the step
    /// waiting for it may go on.
    TaskFinished {
        /// The instance.
        instance: String,
        /// The task's id.
        task: String,
    },
    /// The store changed in a way this process did not see (another process wrote to it, or
    /// wake-ups were dropped because a subscriber fell behind): look again at whatever is
    /// waited for, and claim what is due.
    Changed,
}

/// A subscription to a store's wake-ups. Dropping it unsubscribes.
pub struct Wakeups(broadcast::Receiver<Wakeup>);

impl Wakeup {
    /// The wake-up of a signal just stored for `instance` under `id`.
    pub(crate) fn signal_added(
        instance: &str,
        id: i64,
        name: &str,
        payload: &str,
        at: Millis,
    ) -> Wakeup {
        Wakeup::Signal {
            instance: instance.to_string(),
            signal: super::SignalRecord {
                id,
                name: name.to_string(),
                payload: payload.to_string(),
                received_at: at,
            },
        }
    }
}

impl Wakeups {
    /// The next wake-up; [`Wakeup::Changed`] when some were missed; `None` once the store is
    /// gone.
    pub async fn recv(&mut self) -> Option<Wakeup> {
        match self.0.recv().await {
            Ok(w) => Some(w),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Wakeup::Changed),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The sending side of wake-ups, for backends: one per store, cheap to clone.
#[derive(Clone)]
pub struct WakeupHub(broadcast::Sender<Wakeup>);

impl Default for WakeupHub {
    fn default() -> Self {
        WakeupHub(broadcast::channel(WAKEUP_BUFFER).0)
    }
}

/// Wake-ups buffered per subscriber before the oldest are dropped (and reported as
/// [`Wakeup::Changed`]).
const WAKEUP_BUFFER: usize = 8192;

impl WakeupHub {
    /// A new subscription.
    pub fn subscribe(&self) -> Wakeups {
        Wakeups(self.0.subscribe())
    }

    /// Sends `w` to every subscriber (none: nothing happens).
    pub fn send(&self, w: Wakeup) {
        let _ = self.0.send(w);
    }

    /// Whether anyone is subscribed (a backend polls for other processes' changes only then).
    pub fn watched(&self) -> bool {
        self.0.receiver_count() > 0
    }
}

impl fmt::Debug for WakeupHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeupHub")
            .field("subscribers", &self.0.receiver_count())
            .finish()
    }
}
