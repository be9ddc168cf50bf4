//! Task queues ([`TaskQueue`](crate::store::task::TaskQueue)): enqueue with the instance's
//! writes, lease, heartbeat, finish, fencing of late workers by token, lease expiry, order,
//! deadlines, cancellation, statistics.

use super::{T0, create_owned, node, register};
use crate::store::task::{
    NewTask, THROUGHPUT_WINDOW, TaskResult, TaskState, WorkerRecord, WorkerTerms, task_id,
};
use crate::store::{Backend, Fence, Status, StoreError, Wakeup, WriteOp};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn new_task(instance: &str, seq: u32, queue: &str, priority: i32, at: i64) -> NewTask {
    NewTask {
        id: task_id(instance, 0, seq, 1),
        queue: queue.to_string(),
        instance: instance.to_string(),
        seq,
        attempt: 1,
        step: "charge".into(),
        input: format!("{{\"order\":{seq}}}"),
        idempotency_key: format!("{instance}/{seq}"),
        priority,
        created_at: at,
        deadline: None,
    }
}

fn enqueue(task: &NewTask) -> WriteOp {
    WriteOp::EnqueueTask {
        instance: task.instance.clone(),
        task: Box::new(task.clone()),
    }
}

fn worker(name: &str, now: i64, ttl: i64) -> WorkerTerms {
    WorkerTerms {
        worker: name.to_string(),
        now,
        ttl,
    }
}

async fn owned(store: &dyn Backend, id: &str) -> Fence {
    let a = node("node-a");
    register(store, &a, T0, 600_000).await;
    create_owned(store, &a, id, T0).await
}

async fn submit(store: &dyn Backend, fence: &Fence, ops: Vec<WriteOp>) {
    store
        .submit(Some(fence.clone()), ops)
        .await
        .unwrap_or_else(|e| panic!("a fenced submission failed: {e}"));
}

fn lost(r: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::TaskLost { .. })),
        "{what}: expected TaskLost, got {r:?}"
    );
}

/// A task enqueued with the instance's writes is leased to one worker with token 1 and the
/// enqueued input; its end is stored, wakes the instance, and nothing can change it again.
pub async fn a_task_is_enqueued_leased_and_finished(store: Arc<dyn Backend>) {
    let mut rx = store.wakeups();
    let fence = owned(&*store, "i").await;
    let task = new_task("i", 1, "payments", 0, T0);
    submit(&*store, &fence, vec![enqueue(&task)]).await;
    let got = store.task(&task.id).await.expect("task").expect("stored");
    assert_eq!(got.state, TaskState::Pending);
    assert_eq!(got.task, task, "the task as enqueued");

    let leased = store
        .lease_tasks(worker("w1", T0, 30_000), vec!["payments".into()], 10)
        .await
        .expect("lease");
    assert_eq!(leased.tasks.len(), 1, "one task leased: {leased:?}");
    let lease = &leased.tasks[0];
    assert_eq!(
        lease.task, task,
        "the leased task carries what was enqueued"
    );
    assert_eq!(lease.token, 1, "the first delivery's token");
    assert_eq!(lease.expires_at, T0 + 30_000);
    let again = store
        .lease_tasks(worker("w2", T0 + 1, 30_000), vec!["payments".into()], 10)
        .await
        .expect("lease");
    assert!(
        again.tasks.is_empty(),
        "a leased task went to a second worker"
    );
    assert_eq!(
        again.next_expiry,
        Some(T0 + 30_000),
        "when it may be leased again"
    );

    let until = store
        .heartbeat_task(&task.id, 1, worker("w1", T0 + 10_000, 30_000))
        .await
        .expect("heartbeat");
    assert_eq!(until, T0 + 40_000);
    store
        .finish_task(
            &task.id,
            1,
            TaskResult::Completed {
                output: "\"charged\"".into(),
            },
            T0 + 20_000,
        )
        .await
        .expect("finish");
    let done = store.task(&task.id).await.expect("task").expect("stored");
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.output.as_deref(), Some("\"charged\""));
    assert_eq!(done.finished_at, Some(T0 + 20_000));
    assert_eq!(done.worker.as_deref(), Some("w1"));

    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(w) = rx.recv().await {
            if matches!(&w, Wakeup::TaskFinished { instance, task: t } if instance == "i" && *t == task.id)
            {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(finished, Ok(true)), "no TaskFinished wake-up");
    let rec = store.get("i").await.expect("get").expect("exists");
    assert!(
        rec.wake_at.is_some_and(|w| w <= T0 + 20_000),
        "the task's end makes its instance due: wake_at {:?}",
        rec.wake_at
    );

    lost(
        store
            .finish_task(
                &task.id,
                1,
                TaskResult::Failed {
                    message: "late".into(),
                    retryable: true,
                },
                T0 + 21_000,
            )
            .await,
        "a second end",
    );
    lost(
        store
            .heartbeat_task(&task.id, 1, worker("w1", T0 + 21_000, 30_000))
            .await,
        "a heartbeat after the end",
    );
    lost(
        store
            .heartbeat_task("i:0:9:1", 1, worker("w1", T0, 30_000))
            .await,
        "a heartbeat of a task that does not exist",
    );
    let after = store.task(&task.id).await.expect("task").expect("stored");
    assert_eq!(after, done, "refused calls changed the task");
}

/// Enqueueing an id that exists changes nothing (a resumed instance enqueues its attempt
/// again); enqueueing for a finished instance stores nothing; for a missing one is NotFound.
pub async fn enqueue_is_idempotent_and_needs_a_live_instance(store: Arc<dyn Backend>) {
    let fence = owned(&*store, "i").await;
    let task = new_task("i", 1, "q", 0, T0);
    submit(&*store, &fence, vec![enqueue(&task)]).await;
    let leased = store
        .lease_tasks(worker("w1", T0, 30_000), vec!["q".into()], 10)
        .await
        .expect("lease");
    assert_eq!(leased.tasks.len(), 1);
    let mut changed = task.clone();
    changed.input = "{\"other\":true}".into();
    submit(&*store, &fence, vec![enqueue(&changed)]).await;
    let got = store.task(&task.id).await.expect("task").expect("stored");
    assert_eq!(got.task, task, "enqueueing again replaced the task");
    assert_eq!(
        got.state,
        TaskState::Leased,
        "enqueueing again reset the task"
    );
    assert_eq!(got.token, 1);

    let missing = store
        .submit(None, vec![enqueue(&new_task("nobody", 1, "q", 0, T0))])
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "a task of a missing instance: {missing:?}"
    );

    let end = WriteOp::Finish {
        instance: "i".into(),
        status: Status::Completed,
        output: Some("1".into()),
        error: None,
        failed_step: None,
        at: T0 + 5,
    };
    store.submit(None, vec![end]).await.expect("finish");
    let late = new_task("i", 2, "q", 0, T0 + 6);
    store
        .submit(None, vec![enqueue(&late)])
        .await
        .expect("enqueue on a finished instance is not an error");
    assert!(
        store.task(&late.id).await.expect("task").is_none(),
        "a task of a finished instance was stored"
    );
}

/// A lease that ended goes to the next worker with a new token; the first worker's heartbeat
/// and end are refused and change nothing.
pub async fn an_ended_lease_goes_to_another_worker_and_fences_the_first(store: Arc<dyn Backend>) {
    let fence = owned(&*store, "i").await;
    let task = new_task("i", 1, "q", 0, T0);
    submit(&*store, &fence, vec![enqueue(&task)]).await;
    let first = store
        .lease_tasks(worker("w1", T0, 1_000), vec!["q".into()], 1)
        .await
        .expect("lease");
    assert_eq!(first.tasks[0].token, 1);
    let early = store
        .lease_tasks(worker("w2", T0 + 999, 1_000), vec!["q".into()], 1)
        .await
        .expect("lease");
    assert!(
        early.tasks.is_empty(),
        "leased again before the lease ended"
    );
    let second = store
        .lease_tasks(worker("w2", T0 + 1_000, 1_000), vec!["q".into()], 1)
        .await
        .expect("lease");
    assert_eq!(second.tasks.len(), 1, "the ended lease was not handed out");
    assert_eq!(second.tasks[0].token, 2, "a new delivery's token");
    assert_eq!(second.tasks[0].task.idempotency_key, task.idempotency_key);

    lost(
        store
            .heartbeat_task(&task.id, 1, worker("w1", T0 + 1_001, 1_000))
            .await,
        "the first worker's heartbeat",
    );
    lost(
        store
            .finish_task(
                &task.id,
                1,
                TaskResult::Completed {
                    output: "\"w1\"".into(),
                },
                T0 + 1_001,
            )
            .await,
        "the first worker's end",
    );
    let held = store.task(&task.id).await.expect("task").expect("stored");
    assert_eq!(held.state, TaskState::Leased);
    assert_eq!(held.worker.as_deref(), Some("w2"));
    assert_eq!(held.output, None, "the refused end wrote its output");
    // A lease that ended is lost even before anyone else took it.
    let third = store
        .heartbeat_task(&task.id, 2, worker("w2", T0 + 2_000, 1_000))
        .await;
    lost(third, "a heartbeat after the lease ended");
    let fourth = store
        .lease_tasks(worker("w3", T0 + 2_000, 1_000), vec!["q".into()], 1)
        .await
        .expect("lease");
    assert_eq!(fourth.tasks[0].token, 3);
    store
        .finish_task(
            &task.id,
            3,
            TaskResult::Failed {
                message: "card declined".into(),
                retryable: false,
            },
            T0 + 2_500,
        )
        .await
        .expect("the holder's end");
    let done = store.task(&task.id).await.expect("task").expect("stored");
    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.error.as_deref(), Some("card declined"));
    assert!(!done.retryable);
}

/// Leasing takes the asked queues only, highest priority first, then oldest, at most `limit`;
/// a task past its deadline is not handed out.
pub async fn leases_follow_priority_then_age_within_the_asked_queues(store: Arc<dyn Backend>) {
    let fence = owned(&*store, "i").await;
    let tasks = [
        new_task("i", 1, "q1", 0, T0 + 1),
        new_task("i", 2, "q1", 5, T0 + 3),
        new_task("i", 3, "q1", 0, T0),
        new_task("i", 4, "q2", 9, T0),
        new_task("i", 5, "q1", 5, T0 + 2),
    ];
    let mut late = new_task("i", 6, "q1", 9, T0);
    late.deadline = Some(T0 + 10);
    let mut ops: Vec<WriteOp> = tasks.iter().map(enqueue).collect();
    ops.push(enqueue(&late));
    submit(&*store, &fence, ops).await;
    let leased = store
        .lease_tasks(worker("w", T0 + 10, 30_000), vec!["q1".into()], 3)
        .await
        .expect("lease");
    let seqs: Vec<u32> = leased.tasks.iter().map(|l| l.task.seq).collect();
    assert_eq!(
        seqs,
        [5, 2, 3],
        "priority first, then age; limit 3; past deadline skipped"
    );
    let rest = store
        .lease_tasks(
            worker("w", T0 + 10, 30_000),
            vec!["q1".into(), "q2".into()],
            10,
        )
        .await
        .expect("lease");
    let mut seqs: Vec<u32> = rest.tasks.iter().map(|l| l.task.seq).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 4], "the rest of both queues");
    let none = store
        .lease_tasks(worker("w", T0 + 10, 30_000), vec!["q3".into()], 10)
        .await
        .expect("lease");
    assert_eq!(none.tasks.len(), 0);
    assert_eq!(none.next_expiry, None, "nothing leased in an unknown queue");
}

/// A cancelled task (the instance stopped waiting) is not leased and its worker is refused;
/// an instance's end cancels its open tasks and leaves finished ones alone.
pub async fn cancelled_tasks_and_tasks_of_ended_instances_are_not_handed_out(
    store: Arc<dyn Backend>,
) {
    let fence = owned(&*store, "i").await;
    let (a, b, c) = (
        new_task("i", 1, "q", 0, T0),
        new_task("i", 2, "q", 0, T0 + 1),
        new_task("i", 3, "q", 0, T0 + 2),
    );
    submit(&*store, &fence, vec![enqueue(&a), enqueue(&b), enqueue(&c)]).await;
    let leased = store
        .lease_tasks(worker("w", T0, 30_000), vec!["q".into()], 1)
        .await
        .expect("lease");
    assert_eq!(leased.tasks[0].task.id, a.id);
    let cancel = WriteOp::CancelTask {
        instance: "i".into(),
        task: a.id.clone(),
        at: T0 + 5,
    };
    submit(&*store, &fence, vec![cancel]).await;
    lost(
        store
            .finish_task(
                &a.id,
                1,
                TaskResult::Completed { output: "1".into() },
                T0 + 6,
            )
            .await,
        "the end of a cancelled task",
    );
    assert_eq!(
        store
            .task(&a.id)
            .await
            .expect("task")
            .expect("stored")
            .state,
        TaskState::Cancelled
    );
    let b_lease = store
        .lease_tasks(worker("w", T0 + 7, 30_000), vec!["q".into()], 1)
        .await
        .expect("lease");
    assert_eq!(b_lease.tasks[0].task.id, b.id);
    store
        .finish_task(
            &b.id,
            b_lease.tasks[0].token,
            TaskResult::Completed { output: "2".into() },
            T0 + 8,
        )
        .await
        .expect("finish b");
    let end = WriteOp::Finish {
        instance: "i".into(),
        status: Status::Terminated,
        output: None,
        error: Some("stopped".into()),
        failed_step: None,
        at: T0 + 9,
    };
    store.submit(None, vec![end]).await.expect("terminate");
    assert_eq!(
        store
            .task(&c.id)
            .await
            .expect("task")
            .expect("stored")
            .state,
        TaskState::Cancelled,
        "the ended instance's pending task"
    );
    assert_eq!(
        store
            .task(&b.id)
            .await
            .expect("task")
            .expect("stored")
            .state,
        TaskState::Completed,
        "a finished task stays as it was"
    );
    let none = store
        .lease_tasks(worker("w", T0 + 10, 30_000), vec!["q".into()], 10)
        .await
        .expect("lease");
    assert!(none.tasks.is_empty(), "handed out: {:?}", none.tasks);
}

/// Workers leasing at the same time never get the same task, and every task goes to someone.
pub async fn concurrent_leases_never_share_a_task(store: Arc<dyn Backend>) {
    let fence = owned(&*store, "i").await;
    let tasks: Vec<NewTask> = (1..=40).map(|k| new_task("i", k, "q", 0, T0)).collect();
    submit(&*store, &fence, tasks.iter().map(enqueue).collect()).await;
    let leases = futures_util::future::join_all((0..6).map(|w| {
        let store = store.clone();
        async move {
            store
                .lease_tasks(worker(&format!("w{w}"), T0, 30_000), vec!["q".into()], 10)
                .await
                .expect("lease")
        }
    }))
    .await;
    let mut seen = HashSet::new();
    for l in leases.iter().flat_map(|l| &l.tasks) {
        assert!(
            seen.insert(l.task.id.clone()),
            "{} went to two workers",
            l.task.id
        );
    }
    assert_eq!(
        seen.len(),
        40,
        "tasks were left out while workers asked for more"
    );
}

/// The queue overview counts waiting (pending, or leased with an ended lease), in flight,
/// completed and failed tasks, and the oldest waiting one's time.
pub async fn queue_stats_count_each_state(store: Arc<dyn Backend>) {
    let fence = owned(&*store, "i").await;
    let tasks: Vec<NewTask> = (1..=5)
        .map(|k| new_task("i", k, "q", 0, T0 + i64::from(k)))
        .collect();
    let other = new_task("i", 9, "r", 0, T0);
    let mut ops: Vec<WriteOp> = tasks.iter().map(enqueue).collect();
    ops.push(enqueue(&other));
    submit(&*store, &fence, ops).await;
    // Leased at T0 + 100: tasks 1..=4 (1000 ms leases); 1 completes, 2 fails, 3 stays in flight,
    // 4's lease ends; 5 waits.
    let leased = store
        .lease_tasks(worker("w", T0 + 100, 1_000), vec!["q".into()], 4)
        .await
        .expect("lease");
    assert_eq!(leased.tasks.len(), 4);
    let token = |seq: u32| {
        leased
            .tasks
            .iter()
            .find(|l| l.task.seq == seq)
            .map(|l| (l.task.id.clone(), l.token))
            .expect("leased")
    };
    let (one, t1) = token(1);
    store
        .finish_task(
            &one,
            t1,
            TaskResult::Completed { output: "1".into() },
            T0 + 200,
        )
        .await
        .expect("finish 1");
    let (two, t2) = token(2);
    store
        .finish_task(
            &two,
            t2,
            TaskResult::Failed {
                message: "no".into(),
                retryable: true,
            },
            T0 + 200,
        )
        .await
        .expect("finish 2");
    let (three, t3) = token(3);
    store
        .heartbeat_task(&three, t3, worker("w", T0 + 900, 10_000))
        .await
        .expect("heartbeat 3");
    let stats = store.queue_stats(T0 + 1_500).await.expect("stats");
    let q = stats
        .iter()
        .find(|s| s.queue == "q")
        .expect("queue q listed");
    assert_eq!(
        (q.waiting, q.in_flight, q.completed, q.failed),
        (2, 1, 1, 1),
        "waiting (4 whose lease ended, 5), in flight (3), completed (1), failed (2): {q:?}"
    );
    assert_eq!(
        q.oldest_waiting,
        Some(T0 + 4),
        "the oldest waiting task is 4"
    );
    assert_eq!(
        q.finished_last_minute, 2,
        "1 and 2 finished in the last minute: {q:?}"
    );
    let later = store
        .queue_stats(T0 + 200 + THROUGHPUT_WINDOW)
        .await
        .expect("stats a minute later");
    let q = later.iter().find(|s| s.queue == "q").expect("queue q");
    assert_eq!(
        (q.finished_last_minute, q.completed, q.failed),
        (0, 1, 1),
        "a minute later the throughput is 0, the totals stay: {q:?}"
    );
    let r = stats
        .iter()
        .find(|s| s.queue == "r")
        .expect("queue r listed");
    assert_eq!((r.waiting, r.oldest_waiting), (1, Some(T0)));
    let names: Vec<&str> = stats.iter().map(|s| s.queue.as_str()).collect();
    assert_eq!(names, ["q", "r"], "queues by name");
}

/// Workers recorded by nodes: a new one is added, a known one keeps the later of each time and
/// takes the newer poll's queues and node (an older record sent late changes neither), and
/// those last seen before the cut are forgotten.
pub async fn workers_are_recorded_merged_and_forgotten(store: Arc<dyn Backend>) {
    let rec = |id: &str, q: &str, node: &str, poll: i64, beat: Option<i64>| WorkerRecord {
        id: id.into(),
        queues: vec![q.into()],
        node: node.into(),
        last_poll: poll,
        last_heartbeat: beat,
    };
    store
        .record_workers(
            vec![
                rec("w1", "a", "n1", T0 + 10, None),
                rec("w2", "b", "n1", T0 + 20, Some(T0 + 25)),
            ],
            T0,
        )
        .await
        .expect("record");
    assert_eq!(
        store.workers(T0).await.expect("workers"),
        vec![
            rec("w1", "a", "n1", T0 + 10, None),
            rec("w2", "b", "n1", T0 + 20, Some(T0 + 25))
        ]
    );
    // w1 polls node n2 later for another queue; a late record of an older poll of w2 (from
    // n2) keeps w2's queues, node and times but adds nothing older.
    store
        .record_workers(
            vec![
                rec("w1", "c", "n2", T0 + 30, Some(T0 + 31)),
                rec("w2", "z", "n2", T0 + 5, Some(T0 + 6)),
            ],
            T0,
        )
        .await
        .expect("record");
    assert_eq!(
        store.workers(T0).await.expect("workers"),
        vec![
            rec("w1", "c", "n2", T0 + 30, Some(T0 + 31)),
            rec("w2", "b", "n1", T0 + 20, Some(T0 + 25))
        ]
    );
    // Only those seen since T0 + 26 (w1), then w2 forgotten altogether.
    let recent: Vec<String> = store
        .workers(T0 + 26)
        .await
        .expect("workers")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(recent, ["w1"]);
    store
        .record_workers(Vec::new(), T0 + 26)
        .await
        .expect("forget");
    let left: Vec<String> = store
        .workers(0)
        .await
        .expect("workers")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(left, ["w1"], "w2 (last seen T0 + 25) is forgotten");
}
