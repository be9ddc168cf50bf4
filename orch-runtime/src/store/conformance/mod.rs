//! The checks every store backend must pass: one module per property of the [`Store`] and
//! [`StoreAdmin`](crate::store::StoreAdmin) contract (write semantics, atomicity, leases and their expiry, fencing,
//! wake-ups, retry and fork bookkeeping, queries) and of the
//! [`TaskQueue`](crate::store::task::TaskQueue) (task leases, fencing of late workers, order)
//! and of the [`WorkflowQueues`](crate::store::flow::WorkflowQueues) (admission under limits,
//! deduplication).
//!
//! Enabled by the `conformance` feature. Run them from a backend's tests, each on a fresh,
//! empty store made by your factory:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_store_conforms() {
//!     orch_runtime::store::conformance::run_all(|| async {
//!         std::sync::Arc::new(MyStore::connect().await) as std::sync::Arc<dyn Backend>
//!     })
//!     .await;
//! }
//! ```
//!
//! or one test per check with [`conformance_tests!`](crate::conformance_tests). A failing
//! check panics with what the contract expected and what the store answered.

use super::{Backend, Fence, InstanceRecord, JournalEntry, LeaseTerms, Millis, NodeId, Store};
use futures_util::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;

pub mod atomicity;
pub mod fencing;
pub mod flow;
pub mod leases;
pub mod operations;
pub mod queries;
pub mod tasks;
pub mod wakeups;
pub mod writes;

/// A check: runs against a fresh, empty store and panics on a breach of the contract.
pub type CheckFn = fn(Arc<dyn Backend>) -> BoxFuture<'static, ()>;

/// Every check, by `module::name`.
pub const CHECKS: &[(&str, CheckFn)] = &[
    ("writes::duplicate_seq_is_a_conflict", |s| {
        Box::pin(writes::duplicate_seq_is_a_conflict(s))
    }),
    ("writes::signals_are_taken_once", |s| {
        Box::pin(writes::signals_are_taken_once(s))
    }),
    ("writes::finish_is_written_once", |s| {
        Box::pin(writes::finish_is_written_once(s))
    }),
    (
        "writes::signals_and_cancels_refuse_finished_and_missing",
        |s| Box::pin(writes::signals_and_cancels_refuse_finished_and_missing(s)),
    ),
    ("writes::create_is_idempotent", |s| {
        Box::pin(writes::create_is_idempotent(s))
    }),
    ("writes::wake_keeps_the_earliest_time", |s| {
        Box::pin(writes::wake_keeps_the_earliest_time(s))
    }),
    ("atomicity::a_refused_batch_applies_nothing", |s| {
        Box::pin(atomicity::a_refused_batch_applies_nothing(s))
    }),
    ("atomicity::a_refused_create_stores_nothing", |s| {
        Box::pin(atomicity::a_refused_create_stores_nothing(s))
    }),
    (
        "atomicity::concurrent_checkpoints_are_judged_one_by_one",
        |s| Box::pin(atomicity::concurrent_checkpoints_are_judged_one_by_one(s)),
    ),
    (
        "leases::created_instances_are_owned_by_their_creator",
        |s| Box::pin(leases::created_instances_are_owned_by_their_creator(s)),
    ),
    ("leases::live_leases_are_not_claimed", |s| {
        Box::pin(leases::live_leases_are_not_claimed(s))
    }),
    ("leases::ended_leases_are_claimed_with_a_new_epoch", |s| {
        Box::pin(leases::ended_leases_are_claimed_with_a_new_epoch(s))
    }),
    ("leases::renew_reports_lost_instances", |s| {
        Box::pin(leases::renew_reports_lost_instances(s))
    }),
    ("leases::renew_says_when_work_falls_due", |s| {
        Box::pin(leases::renew_says_when_work_falls_due(s))
    }),
    ("leases::concurrent_creations_are_each_owned", |s| {
        Box::pin(leases::concurrent_creations_are_each_owned(s))
    }),
    ("leases::long_gone_nodes_are_forgotten", |s| {
        Box::pin(leases::long_gone_nodes_are_forgotten(s))
    }),
    ("leases::release_lets_others_claim_at_once", |s| {
        Box::pin(leases::release_lets_others_claim_at_once(s))
    }),
    ("leases::suspended_instances_are_claimed_when_due", |s| {
        Box::pin(leases::suspended_instances_are_claimed_when_due(s))
    }),
    ("leases::claims_are_bounded", |s| {
        Box::pin(leases::claims_are_bounded(s))
    }),
    ("leases::single_claims_take_only_due_instances", |s| {
        Box::pin(leases::single_claims_take_only_due_instances(s))
    }),
    ("fencing::a_stale_epoch_is_refused_whole", |s| {
        Box::pin(fencing::a_stale_epoch_is_refused_whole(s))
    }),
    ("fencing::termination_fences_out_the_owner", |s| {
        Box::pin(fencing::termination_fences_out_the_owner(s))
    }),
    ("fencing::suspending_releases", |s| {
        Box::pin(fencing::suspending_releases(s))
    }),
    ("wakeups::writes_announce_themselves", |s| {
        Box::pin(wakeups::writes_announce_themselves(s))
    }),
    (
        "wakeups::concurrent_ends_are_each_applied_and_announced",
        |s| Box::pin(wakeups::concurrent_ends_are_each_applied_and_announced(s)),
    ),
    ("operations::retry_moves_the_journal_aside", |s| {
        Box::pin(operations::retry_moves_the_journal_aside(s))
    }),
    (
        "operations::retry_restores_attributes_of_kept_entries",
        |s| Box::pin(operations::retry_restores_attributes_of_kept_entries(s)),
    ),
    ("operations::fork_copies_the_journal", |s| {
        Box::pin(operations::fork_copies_the_journal(s))
    }),
    ("queries::search_pages_newest_first", |s| {
        Box::pin(queries::search_pages_newest_first(s))
    }),
    ("queries::stats_and_counts_agree", |s| {
        Box::pin(queries::stats_and_counts_agree(s))
    }),
    ("queries::nodes_list_heartbeats_and_owned_instances", |s| {
        Box::pin(queries::nodes_list_heartbeats_and_owned_instances(s))
    }),
    ("queries::leases_name_each_instance_s_owner", |s| {
        Box::pin(queries::leases_name_each_instance_s_owner(s))
    }),
    ("queries::unfinished_ids_page_in_id_order", |s| {
        Box::pin(queries::unfinished_ids_page_in_id_order(s))
    }),
    ("tasks::a_task_is_enqueued_leased_and_finished", |s| {
        Box::pin(tasks::a_task_is_enqueued_leased_and_finished(s))
    }),
    (
        "tasks::enqueue_is_idempotent_and_needs_a_live_instance",
        |s| Box::pin(tasks::enqueue_is_idempotent_and_needs_a_live_instance(s)),
    ),
    (
        "tasks::an_ended_lease_goes_to_another_worker_and_fences_the_first",
        |s| Box::pin(tasks::an_ended_lease_goes_to_another_worker_and_fences_the_first(s)),
    ),
    (
        "tasks::leases_follow_priority_then_age_within_the_asked_queues",
        |s| Box::pin(tasks::leases_follow_priority_then_age_within_the_asked_queues(s)),
    ),
    (
        "tasks::cancelled_tasks_and_tasks_of_ended_instances_are_not_handed_out",
        |s| Box::pin(tasks::cancelled_tasks_and_tasks_of_ended_instances_are_not_handed_out(s)),
    ),
    ("tasks::concurrent_leases_never_share_a_task", |s| {
        Box::pin(tasks::concurrent_leases_never_share_a_task(s))
    }),
    ("tasks::queue_stats_count_each_state", |s| {
        Box::pin(tasks::queue_stats_count_each_state(s))
    }),
    ("flow::enqueued_instances_wait_until_admitted", |s| {
        Box::pin(flow::enqueued_instances_wait_until_admitted(s))
    }),
    (
        "flow::admission_follows_priority_within_the_concurrency_limit",
        |s| Box::pin(flow::admission_follows_priority_within_the_concurrency_limit(s)),
    ),
    ("flow::a_busy_key_is_passed_over", |s| {
        Box::pin(flow::a_busy_key_is_passed_over(s))
    }),
    ("flow::a_held_deduplication_key_returns_its_holder", |s| {
        Box::pin(flow::a_held_deduplication_key_returns_its_holder(s))
    }),
    ("flow::a_rate_limit_admits_n_per_period", |s| {
        Box::pin(flow::a_rate_limit_admits_n_per_period(s))
    }),
    ("flow::concurrent_admissions_never_pass_the_limit", |s| {
        Box::pin(flow::concurrent_admissions_never_pass_the_limit(s))
    }),
    ("flow::configurations_are_stored_and_listed", |s| {
        Box::pin(flow::configurations_are_stored_and_listed(s))
    }),
    ("tasks::workers_are_recorded_merged_and_forgotten", |s| {
        Box::pin(tasks::workers_are_recorded_merged_and_forgotten(s))
    }),
];

/// Runs every check, each on a fresh store from `factory`, and panics listing those that
/// failed (with their messages).
pub async fn run_all<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let mut failed = Vec::new();
    for (name, check) in CHECKS {
        let store = factory().await;
        let run = tokio::spawn(check(store.clone()));
        if let Err(e) = run.await {
            let msg = if e.is_panic() {
                crate::engine::panic_text(&*e.into_panic())
            } else {
                e.to_string()
            };
            failed.push(format!("{name}: {msg}"));
        }
        let _ = store.close().await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} conformance checks failed:\n{}",
        failed.len(),
        CHECKS.len(),
        failed.join("\n")
    );
}

/// Generates one `#[tokio::test]` per conformance check, each on a fresh store from the
/// factory expression (an `async` closure-like expression returning `Arc<dyn Backend>`).
///
/// ```ignore
/// orch_runtime::conformance_tests!(|| async {
///     std::sync::Arc::new(MemoryStore::new()) as std::sync::Arc<dyn Backend>
/// });
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            writes::duplicate_seq_is_a_conflict,
            writes::signals_are_taken_once,
            writes::finish_is_written_once,
            writes::signals_and_cancels_refuse_finished_and_missing,
            writes::create_is_idempotent,
            writes::wake_keeps_the_earliest_time,
            atomicity::a_refused_batch_applies_nothing,
            atomicity::a_refused_create_stores_nothing,
            atomicity::concurrent_checkpoints_are_judged_one_by_one,
            leases::created_instances_are_owned_by_their_creator,
            leases::live_leases_are_not_claimed,
            leases::ended_leases_are_claimed_with_a_new_epoch,
            leases::renew_reports_lost_instances,
            leases::renew_says_when_work_falls_due,
            leases::concurrent_creations_are_each_owned,
            leases::long_gone_nodes_are_forgotten,
            leases::release_lets_others_claim_at_once,
            leases::suspended_instances_are_claimed_when_due,
            leases::claims_are_bounded,
            leases::single_claims_take_only_due_instances,
            fencing::a_stale_epoch_is_refused_whole,
            fencing::termination_fences_out_the_owner,
            fencing::suspending_releases,
            wakeups::writes_announce_themselves,
            wakeups::concurrent_ends_are_each_applied_and_announced,
            operations::retry_moves_the_journal_aside,
            operations::retry_restores_attributes_of_kept_entries,
            operations::fork_copies_the_journal,
            queries::search_pages_newest_first,
            queries::stats_and_counts_agree,
            queries::nodes_list_heartbeats_and_owned_instances,
            queries::leases_name_each_instance_s_owner,
            queries::unfinished_ids_page_in_id_order,
            tasks::a_task_is_enqueued_leased_and_finished,
            tasks::enqueue_is_idempotent_and_needs_a_live_instance,
            tasks::an_ended_lease_goes_to_another_worker_and_fences_the_first,
            tasks::leases_follow_priority_then_age_within_the_asked_queues,
            tasks::cancelled_tasks_and_tasks_of_ended_instances_are_not_handed_out,
            tasks::concurrent_leases_never_share_a_task,
            tasks::queue_stats_count_each_state,
            flow::enqueued_instances_wait_until_admitted,
            flow::admission_follows_priority_within_the_concurrency_limit,
            flow::a_busy_key_is_passed_over,
            flow::a_held_deduplication_key_returns_its_holder,
            flow::a_rate_limit_admits_n_per_period,
            flow::concurrent_admissions_never_pass_the_limit,
            flow::configurations_are_stored_and_listed,
            tasks::workers_are_recorded_merged_and_forgotten
        );
    };
    (@each $factory:expr; $($module:ident :: $check:ident),*) => {
        $(
            #[tokio::test]
            #[allow(non_snake_case)]
            async fn $check() {
                let make = $factory;
                let store = make().await;
                $crate::store::conformance::$module::$check(store.clone()).await;
                let _ = $crate::store::Store::close(&*store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the checks.

/// A fixed "now" far from zero, so `now - ttl` stays positive.
pub(crate) const T0: Millis = 1_800_000_000_000;

pub(crate) fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn terms(node: &NodeId, now: Millis, ttl: Millis) -> LeaseTerms {
    LeaseTerms {
        node: node.clone(),
        now,
        ttl,
    }
}

pub(crate) fn record(id: &str) -> InstanceRecord {
    InstanceRecord::new(id, "wf", "v1", "null", T0)
}

pub(crate) fn entry(seq: u32) -> JournalEntry {
    JournalEntry {
        seq,
        kind: super::EntryKind::Step,
        name: format!("step{seq}"),
        outcome: format!("{seq}"),
        attempts: 1,
        started_at: T0,
        finished_at: T0,
    }
}

pub(crate) fn append(id: &str, seq: u32) -> super::WriteOp {
    super::WriteOp::Append {
        instance: id.to_string(),
        entry: entry(seq),
    }
}

/// Registers `node` alive until `now + ttl`.
pub(crate) async fn register(store: &dyn Store, node: &NodeId, now: Millis, ttl: Millis) {
    let lost = store
        .renew(terms(node, now, ttl), Vec::new())
        .await
        .unwrap_or_else(|e| panic!("renew of node `{node}` failed: {e}"))
        .lost;
    assert!(
        lost.is_empty(),
        "renewing nothing reported lost instances: {lost:?}"
    );
}

/// Creates `id` owned by `node`; returns the fence of its lease.
pub(crate) async fn create_owned(store: &dyn Store, node: &NodeId, id: &str, now: Millis) -> Fence {
    match store
        .create(record(id), Some(terms(node, now, 10_000)), Vec::new())
        .await
    {
        Ok(super::Created::New(Some(lease))) => {
            assert_eq!(lease.node, *node, "the new instance's owner");
            lease.fence()
        }
        other => panic!(
            "creating `{id}` owned by `{node}`: expected a new instance with a lease, got {other:?}"
        ),
    }
}

/// Creates `id` without an owner.
pub(crate) async fn create_free(store: &dyn Store, id: &str) {
    match store.create(record(id), None, Vec::new()).await {
        Ok(super::Created::New(None)) => {}
        other => {
            panic!("creating `{id}` without owner: expected a new, unowned instance, got {other:?}")
        }
    }
}
