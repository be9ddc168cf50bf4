//! The PostgreSQL store keeps the same promises as the SQLite store: every write operation's
//! semantics, retry and fork bookkeeping, search, stats, aggregates and the audit log answer
//! the same on the same sequence of operations (a differential test); group commit, and call
//! order kept across several writer connections; schema
//! versioning and exclusive ownership; errors that never show the password; LISTEN/NOTIFY on
//! the store's dedicated connection.
//!
//! Needs `ORCH_TEST_DATABASE_URL`; see tests/support/backends.rs.

#[path = "support/backends.rs"]
mod backends;

use backends::PgSchema;
use orch_runtime::store::postgres::{PostgresOptions, PostgresStore};
use orch_runtime::store::sqlite::{SqliteOptions, SqliteStore};
use orch_runtime::store::{
    AttemptRecord, AuditRecord, Backend, Cursor, EntryKind, InstanceRecord, JournalEntry,
    LeaseTerms, ListFilter, NodeId, Query, StatsQuery, Status, Store, StoreError, Wakeup, WriteOp,
};
use std::time::Duration;

fn rec(id: &str, workflow: &str, created: i64) -> InstanceRecord {
    let mut r = InstanceRecord::new(id, workflow, "v1", "{\"x\":1}", created);
    r.updated_at = created;
    r
}

fn entry(seq: u32, kind: EntryKind, name: &str, outcome: &str) -> JournalEntry {
    JournalEntry {
        seq,
        kind,
        name: name.into(),
        outcome: outcome.into(),
        attempts: 1,
        started_at: 100 + i64::from(seq),
        finished_at: 200 + i64::from(seq),
    }
}

fn step(seq: u32) -> JournalEntry {
    entry(
        seq,
        EntryKind::Step,
        &format!("step{seq}"),
        &format!("{{\"ok\":{seq}}}"),
    )
}

fn append(id: &str, e: JournalEntry) -> WriteOp {
    WriteOp::Append {
        instance: id.into(),
        entry: e,
    }
}

fn attr(id: &str, key: &str, value: &str) -> WriteOp {
    WriteOp::Attribute {
        instance: id.into(),
        key: key.into(),
        value: value.into(),
    }
}

fn finish(id: &str, status: Status, step: Option<(&str, u32)>, at: i64) -> WriteOp {
    WriteOp::Finish {
        instance: id.into(),
        status,
        output: (status == Status::Completed).then(|| "42".into()),
        error: (status != Status::Completed).then(|| "boom".into()),
        failed_step: step.map(|(s, q)| (s.to_string(), q)),
        at,
    }
}

/// A result, as compared between backends.
fn shown<T: std::fmt::Debug, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {e}"),
    }
}

/// Runs one sequence of operations covering every write (and its refusals) and returns what
/// each step answered, then everything the store can tell about the result.
async fn script(store: &dyn Backend) -> Vec<String> {
    let mut log = Vec::new();
    macro_rules! note {
        ($label:expr, $e:expr) => {{
            let r = $e;
            log.push(format!("{}: {}", $label, shown(&r)));
        }};
    }
    // Creation, idempotent creation, creation with extra writes.
    for (id, wf, t) in [
        ("a", "orders", 10),
        ("b", "orders", 20),
        ("c", "mail", 30),
        ("d", "orders", 30),
    ] {
        note!(
            format!("create {id}"),
            store.create(rec(id, wf, t), None, vec![]).await
        );
    }
    let mut again = rec("a", "orders", 10);
    again.input = "\"other\"".into();
    note!("create a again", store.create(again, None, vec![]).await);
    let mut child = rec("a-child", "mail", 40);
    child.parent = Some("a".into());
    note!(
        "create_with child",
        store
            .create(
                child,
                None,
                vec![
                    attr("a-child", "tier", "\"gold\""),
                    WriteOp::Audit(AuditRecord {
                        at: 40,
                        actor: "alice".into(),
                        action: "start".into(),
                        target: "a-child".into(),
                        detail: "{}".into(),
                    }),
                ],
            )
            .await
    );
    // Journal, attempts, conflicts, missing instances.
    note!(
        "a steps",
        store
            .submit(
                None,
                vec![
                    append("a", step(1)),
                    WriteOp::Attempt {
                        instance: "a".into(),
                        record: AttemptRecord {
                            seq: 2,
                            attempt: 1,
                            error: "503".into(),
                            started_at: 1,
                            finished_at: 2,
                        },
                    },
                    append("a", step(2)),
                    append("a", entry(3, EntryKind::Attribute, "amount", "12.5")),
                    attr("a", "amount", "12.5"),
                    append("a", entry(4, EntryKind::Attribute, "region", "\"eu\"")),
                    attr("a", "region", "\"eu\""),
                    WriteOp::CustomStatus {
                        instance: "a".into(),
                        value: "\"half\"".into(),
                        at: 50,
                    },
                ]
            )
            .await
    );
    note!(
        "a seq twice",
        store
            .submit(None, vec![append("a", step(5)), append("a", step(1))])
            .await
    );
    note!(
        "attempt twice",
        store
            .submit(
                None,
                vec![WriteOp::Attempt {
                    instance: "a".into(),
                    record: AttemptRecord {
                        seq: 2,
                        attempt: 1,
                        error: "again".into(),
                        started_at: 1,
                        finished_at: 2,
                    },
                }]
            )
            .await
    );
    note!(
        "missing append",
        store.submit(None, vec![append("ghost", step(1))]).await
    );
    note!(
        "missing wake",
        store
            .submit(
                None,
                vec![WriteOp::Wake {
                    instance: "ghost".into(),
                    at: 5
                }]
            )
            .await
    );
    // Signals: delivery, consumption, refusal, waking a suspended instance.
    note!(
        "b suspend",
        store
            .submit(
                None,
                vec![WriteOp::SetStatus {
                    instance: "b".into(),
                    status: Status::Suspended,
                    wake_at: Some(5000),
                    at: 60,
                }]
            )
            .await
    );
    let s1 = store.add_signal("b", "go", "1".into(), 70, vec![]).await;
    note!("signal b", s1.as_ref().map(|_| ()));
    let s2 = store.add_signal("b", "go", "2".into(), 71, vec![]).await;
    note!(
        "signal b again increases",
        s2.as_ref().map(|s| Some(*s) > s1.as_ref().ok().copied())
    );
    note!(
        "signal ghost",
        store
            .add_signal("ghost", "go", "1".into(), 72, vec![])
            .await
    );
    if let Ok(s1) = s1 {
        note!(
            "consume",
            store
                .submit(
                    None,
                    vec![
                        append("b", entry(1, EntryKind::Signal, "go", "1")),
                        WriteOp::ConsumeSignal {
                            instance: "b".into(),
                            signal: s1,
                            seq: 1,
                        },
                    ]
                )
                .await
        );
        note!(
            "consume twice",
            store
                .submit(
                    None,
                    vec![WriteOp::ConsumeSignal {
                        instance: "b".into(),
                        signal: s1,
                        seq: 2,
                    }]
                )
                .await
        );
    }
    note!(
        "wake b earlier",
        store
            .submit(
                None,
                vec![WriteOp::Wake {
                    instance: "b".into(),
                    at: 80
                }]
            )
            .await
    );
    note!(
        "wake b later keeps earlier",
        store
            .submit(
                None,
                vec![WriteOp::Wake {
                    instance: "b".into(),
                    at: 9000
                }]
            )
            .await
    );
    // Cancellation, ended timers, finishing, refusals after the end.
    note!(
        "cancel c",
        store
            .submit(
                None,
                vec![
                    append("c", entry(1, EntryKind::Sleep, "", "{\"until\":99999}")),
                    WriteOp::RequestCancel {
                        instance: "c".into(),
                        at: 90,
                    },
                    WriteOp::RequestCancel {
                        instance: "c".into(),
                        at: 95,
                    },
                    WriteOp::EndTimer {
                        instance: "c".into(),
                        seq: 1,
                    },
                    WriteOp::EndTimer {
                        instance: "c".into(),
                        seq: 1,
                    },
                    append("c", step(2)),
                    WriteOp::CancelDelivered {
                        instance: "c".into(),
                        seq: 2,
                    },
                    finish("c", Status::Cancelled, Some(("step2", 2)), 99),
                ]
            )
            .await
    );
    note!(
        "finish d",
        store
            .submit(
                None,
                vec![
                    append("d", step(1)),
                    attr("d", "amount", "7"),
                    finish("d", Status::Completed, None, 100),
                    finish("d", Status::Failed, None, 101),
                    WriteOp::SetStatus {
                        instance: "d".into(),
                        status: Status::Running,
                        wake_at: None,
                        at: 102,
                    },
                ]
            )
            .await
    );
    note!(
        "cancel finished",
        store
            .submit(
                None,
                vec![WriteOp::RequestCancel {
                    instance: "d".into(),
                    at: 103
                }]
            )
            .await
    );
    note!(
        "signal finished",
        store.add_signal("d", "go", "1".into(), 104, vec![]).await
    );
    note!(
        "retry completed",
        store
            .submit(
                None,
                vec![WriteOp::Retry {
                    instance: "d".into(),
                    from_seq: 1,
                    at: 105
                }]
            )
            .await
    );
    // Retry bookkeeping: entries from the seq on move aside, signals come back, attributes go
    // back to earlier values.
    note!(
        "a fails",
        store
            .submit(
                None,
                vec![
                    append("a", entry(6, EntryKind::Attribute, "region", "\"us\"")),
                    attr("a", "region", "\"us\""),
                    append("a", entry(7, EntryKind::Attribute, "late", "true")),
                    attr("a", "late", "true"),
                    WriteOp::Attempt {
                        instance: "a".into(),
                        record: AttemptRecord {
                            seq: 8,
                            attempt: 1,
                            error: "down".into(),
                            started_at: 3,
                            finished_at: 4,
                        },
                    },
                    WriteOp::EndTimer {
                        instance: "a".into(),
                        seq: 7,
                    },
                    finish("a", Status::Failed, Some(("step8", 8)), 110),
                ]
            )
            .await
    );
    let s3 = store.add_signal("a", "x", "1".into(), 111, vec![]).await;
    note!("signal failed a", s3.as_ref().map(|_| ()));
    note!(
        "retry a from 6",
        store
            .submit(
                None,
                vec![WriteOp::Retry {
                    instance: "a".into(),
                    from_seq: 6,
                    at: 120
                }]
            )
            .await
    );
    note!(
        "retry a running",
        store
            .submit(
                None,
                vec![WriteOp::Retry {
                    instance: "a".into(),
                    from_seq: 1,
                    at: 121
                }]
            )
            .await
    );
    note!(
        "a fails again",
        store
            .submit(
                None,
                vec![
                    append("a", step(6)),
                    finish("a", Status::Terminated, None, 130),
                ]
            )
            .await
    );
    note!(
        "retry a from 2",
        store
            .submit(
                None,
                vec![WriteOp::Retry {
                    instance: "a".into(),
                    from_seq: 2,
                    at: 140
                }]
            )
            .await
    );
    // Signals consumed by retried entries come back.
    if let Ok(s2) = s2 {
        note!(
            "b consumes and fails",
            store
                .submit(
                    None,
                    vec![
                        append("b", entry(2, EntryKind::Signal, "go", "2")),
                        WriteOp::ConsumeSignal {
                            instance: "b".into(),
                            signal: s2,
                            seq: 2,
                        },
                        finish("b", Status::Failed, Some(("go", 2)), 150),
                    ]
                )
                .await
        );
        note!(
            "retry b from 2",
            store
                .submit(
                    None,
                    vec![WriteOp::Retry {
                        instance: "b".into(),
                        from_seq: 2,
                        at: 160
                    }]
                )
                .await
        );
    }
    // Forks.
    let mut forked = rec("a-fork", "orders", 170);
    forked.parent = None;
    let fork = |record: InstanceRecord| WriteOp::Fork {
        record: Box::new(record),
        journal: vec![step(1), step(2)],
        attempts: vec![AttemptRecord {
            seq: 2,
            attempt: 1,
            error: "503".into(),
            started_at: 1,
            finished_at: 2,
        }],
        ended_timers: vec![2],
    };
    note!("fork", store.submit(None, vec![fork(forked.clone())]).await);
    note!("fork again", store.submit(None, vec![fork(forked)]).await);
    note!(
        "audit",
        store
            .submit(
                None,
                vec![WriteOp::Audit(AuditRecord {
                    at: 180,
                    actor: "bob".into(),
                    action: "retry".into(),
                    target: "a".into(),
                    detail: "{\"from\":2}".into(),
                })]
            )
            .await
    );
    note!("probe", store.probe_write().await);

    // Everything the store tells about the result.
    let all = store.list(ListFilter::default()).await.expect("list");
    log.push(format!("list: {all:?}"));
    for r in &all {
        let d = store
            .details(&r.id)
            .await
            .expect("details")
            .expect("exists");
        log.push(format!(
            "details {}: {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            r.id,
            d.record,
            d.journal,
            d.attempts,
            d.signals,
            d.attributes,
            d.superseded,
            d.superseded_attempts
        ));
        let l = store.load(&r.id).await.expect("load").expect("exists");
        log.push(format!("ended timers {}: {:?}", r.id, l.ended_timers));
    }
    log.push(format!("get ghost: {:?}", store.get("ghost").await));
    log.push(format!(
        "details ghost: {:?}",
        store.details("ghost").await.map(|d| d.is_none())
    ));
    log.push(format!(
        "unfinished: {:?}",
        store.list(ListFilter::default()).await.map(|v| v
            .into_iter()
            .filter(|r| !r.status.is_final())
            .collect::<Vec<_>>())
    ));
    for filter in [
        ListFilter::default().workflow("orders"),
        ListFilter::default().status(Status::Cancelled),
        ListFilter {
            parent: Some("a".into()),
            ..Default::default()
        },
        ListFilter {
            after_id: Some("a".into()),
            limit: 2,
            ..Default::default()
        },
    ] {
        log.push(format!(
            "list {filter:?}: {:?}",
            ids(store.list(filter.clone()).await)
        ));
    }
    let queries = vec![
        Query::default(),
        Query {
            workflow: Some("orders".into()),
            ..Default::default()
        },
        Query {
            statuses: vec![Status::Completed, Status::Cancelled],
            ..Default::default()
        },
        Query {
            created_after: Some(20),
            created_before: Some(40),
            ..Default::default()
        },
        Query {
            updated_after: Some(100),
            ..Default::default()
        },
        Query {
            id_prefix: Some("a-".into()),
            ..Default::default()
        },
        Query {
            id_prefix: Some("%".into()),
            ..Default::default()
        },
        Query {
            parent: Some("a".into()),
            ..Default::default()
        },
        Query {
            attributes: vec![("amount".into(), "12.50".into())],
            ..Default::default()
        },
        Query {
            attributes: vec![("amount".into(), "7.0".into())],
            ..Default::default()
        },
        Query {
            attributes: vec![("region".into(), "\"eu\"".into())],
            ..Default::default()
        },
        Query {
            attributes: vec![("tier".into(), " \"gold\" ".into())],
            ..Default::default()
        },
        Query {
            attributes: vec![("late".into(), "true".into())],
            ..Default::default()
        },
        Query {
            limit: 2,
            ..Default::default()
        },
        Query {
            after: Some(Cursor {
                created_at: 30,
                id: "d".into(),
            }),
            limit: 2,
            ..Default::default()
        },
    ];
    for q in queries {
        log.push(format!(
            "search {q:?}: {:?}",
            ids(store.search(q.clone()).await)
        ));
        for key in ["amount", "region", "missing"] {
            log.push(format!(
                "aggregate {key} {q:?}: {:?}",
                store.aggregate(key.into(), q.clone()).await
            ));
        }
    }
    log.push(format!(
        "attributes: {:?}",
        store
            .attributes(vec![
                "a".into(),
                "a-child".into(),
                "d".into(),
                "ghost".into()
            ])
            .await
            .map(|m| {
                let mut v: Vec<_> = m.into_iter().collect();
                v.sort();
                v
            })
    ));
    log.push(format!("counts: {:?}", store.counts().await));
    for (from, to, bucket, workflow) in [
        (0, 1000, 15, None),
        (20, 31, 1, Some("orders")),
        (0, 10, 5, None),
    ] {
        let q = StatsQuery {
            from,
            to,
            bucket_ms: bucket,
            workflow: workflow.map(String::from),
        };
        log.push(format!("stats {q:?}: {:?}", store.stats(q.clone()).await));
    }
    log.push(format!("audit: {:?}", store.audit(10).await));
    log.push(format!("audit 1: {:?}", store.audit(1).await));
    log
}

fn ids(r: Result<Vec<InstanceRecord>, StoreError>) -> Result<Vec<String>, String> {
    r.map(|v| v.into_iter().map(|r| r.id).collect())
        .map_err(|e| e.to_string())
}

async fn open_pg(schema: &PgSchema) -> PostgresStore {
    PostgresStore::open(&schema.url, schema.options())
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", schema.name))
}

#[tokio::test]
async fn postgres_answers_exactly_as_sqlite_on_the_same_operations() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let pg = open_pg(&schema).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite =
        SqliteStore::open(dir.path().join("orch.db"), SqliteOptions::default()).expect("sqlite");
    let want = script(&sqlite).await;
    let got = script(&pg).await;
    assert!(want.len() > 100, "the script ran: {}", want.len());
    for (n, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g, w, "step {n} differs (left: PostgreSQL, right: SQLite)");
    }
    assert_eq!(got.len(), want.len());
    pg.close().await.expect("close");
}

#[tokio::test]
async fn one_failing_submission_is_refused_alone_inside_a_batch() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let store = open_pg(&schema).await;
    for id in ["a", "b", "c"] {
        store
            .create(rec(id, "wf", 1), None, vec![])
            .await
            .expect("create");
    }
    store
        .submit(None, vec![append("b", step(1))])
        .await
        .expect("first");
    // Queued before anything is awaited, so they share transactions.
    let commits = vec![
        store.submit(None, vec![append("a", step(1))]),
        store.submit(None, vec![append("b", step(2)), append("b", step(1))]),
        store.submit(None, vec![append("c", step(1))]),
        store.submit(None, vec![append("missing", step(1))]),
        store.submit(None, vec![append("a", step(2))]),
    ];
    let mut results = Vec::new();
    for c in commits {
        results.push(c.await);
    }
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(StoreError::Conflict { instance, .. }) if instance == "b"),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok());
    assert!(matches!(&results[3], Err(StoreError::NotFound(id)) if id == "missing"));
    assert!(results[4].is_ok());
    let journal = |id: &'static str| {
        let store = &store;
        async move { store.load(id).await.expect("load").expect("exists").journal }
    };
    assert_eq!(journal("a").await, vec![step(1), step(2)]);
    assert_eq!(
        journal("b").await,
        vec![step(1)],
        "the failed submission left nothing"
    );
    assert_eq!(journal("c").await, vec![step(1)]);
}

#[tokio::test]
async fn queued_submissions_share_transactions_and_keep_each_instances_order() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let store = open_pg(&schema).await;
    for id in ["a", "b"] {
        store
            .create(rec(id, "wf", 1), None, vec![])
            .await
            .expect("create");
    }
    let before = store.commits();
    let pending: Vec<_> = (1..=1000)
        .map(|seq| {
            store.submit(
                None,
                vec![append(if seq % 2 == 0 { "a" } else { "b" }, step(seq))],
            )
        })
        .collect();
    for c in pending {
        c.await.expect("commit");
    }
    let used = store.commits() - before;
    eprintln!("group commit: 1000 submissions in {used} commits");
    assert!(
        (1..250).contains(&used),
        "1000 submissions took {used} commits"
    );
    let a = store.load("a").await.expect("load").expect("a").journal;
    assert_eq!(
        a,
        (1..=1000)
            .filter(|s| s % 2 == 0)
            .map(step)
            .collect::<Vec<_>>()
    );
    let m = store.metrics().expect("metrics");
    let _ = m;
}

#[tokio::test]
async fn nodes_share_a_schema_and_hear_each_others_commits() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    // Two stores open the schema together: both migrate it safely, neither is refused.
    let (first, second) = tokio::join!(
        PostgresStore::open(&schema.url, schema.options()),
        PostgresStore::open(&schema.url, schema.options())
    );
    let (first, second) = (first.expect("first"), second.expect("second"));
    let mut heard = second.wakeups();
    first
        .create(rec("a", "wf", 1), None, vec![])
        .await
        .expect("create");
    let id = first
        .add_signal("a", "go", "1".into(), 2, vec![])
        .await
        .expect("signal");
    // The second store hears the first one's signal through LISTEN/NOTIFY, with its record.
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match heard.recv().await {
                Some(orch_runtime::store::Wakeup::Signal { instance, signal }) => {
                    break (instance, signal);
                }
                Some(_) => continue,
                None => panic!("the store went away"),
            }
        }
    })
    .await
    .expect("the second node heard the signal");
    assert_eq!(got.0, "a");
    assert_eq!(got.1.id, id);
    assert_eq!(got.1.payload, "1");
    // And reads what the first wrote.
    assert!(second.get("a").await.expect("get").is_some());

    // A child of `a` owned by the first node ends under its fence (alone, so in one statement
    // that announces itself): the second node hears the end and the parent's wake-up. An end
    // under a stale fence is refused and announces nothing.
    let node = NodeId::new("node-1").expect("node id");
    let terms = LeaseTerms {
        node: node.clone(),
        now: 1,
        ttl: 600_000,
    };
    first.renew(terms.clone(), vec![]).await.expect("register");
    let mut child = rec("a/1", "wf", 1);
    child.parent = Some("a".into());
    let lease = match first
        .create(child, Some(terms), vec![])
        .await
        .expect("create child")
    {
        orch_runtime::store::Created::New(Some(lease)) => lease,
        other => panic!("expected a new owned child, got {other:?}"),
    };
    let mut stale = lease.fence();
    stale.epoch += 7;
    let refused = first
        .submit(Some(stale), vec![finish("a/1", Status::Failed, None, 3)])
        .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { .. })),
        "an end under a stale fence: {refused:?}"
    );
    first
        .submit(
            Some(lease.fence()),
            vec![finish("a/1", Status::Completed, None, 3)],
        )
        .await
        .expect("fenced end");
    let mut want = vec![
        "end a/1 completed".to_string(),
        "child a/1 of a".to_string(),
    ];
    let mut heard_lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !want.is_empty() {
            let line = match heard.recv().await {
                Some(Wakeup::Finished { instance, status }) => {
                    format!("end {instance} {}", status.as_str())
                }
                Some(Wakeup::ChildFinished { parent, child }) => {
                    format!("child {child} of {parent}")
                }
                Some(_) => continue,
                None => panic!("the store went away"),
            };
            want.retain(|w| *w != line);
            heard_lines.push(line);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the second node never heard {want:?}"));
    assert_eq!(
        heard_lines,
        ["end a/1 completed", "child a/1 of a"],
        "the refused end was announced, or an end twice"
    );
    let ended = second.get("a/1").await.expect("get").expect("child exists");
    assert_eq!(ended.status, Status::Completed);
    assert_eq!(ended.output.as_deref(), Some("42"));
    first.close().await.expect("close");
    second.close().await.expect("close");
}

#[tokio::test]
async fn a_schema_from_a_newer_orch_or_another_application_is_refused_unchanged() {
    let Some(newer) = PgSchema::new() else { return };
    let store = open_pg(&newer).await;
    store.close().await.expect("close");
    drop(store);
    let (client, conn) = tokio_postgres::connect(&newer.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "UPDATE {}.orch_meta SET value = '99' WHERE key = 'schema_version'",
            newer.name
        ))
        .await
        .expect("bump");
    let err = PostgresStore::open(&newer.url, newer.options())
        .await
        .expect_err("newer refused");
    assert!(
        matches!(err, StoreError::TooNew { found: 99, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade orch"), "{err}");
    let version: String = client
        .query_one(
            &format!(
                "SELECT value FROM {}.orch_meta WHERE key = 'schema_version'",
                newer.name
            ),
            &[],
        )
        .await
        .expect("read")
        .get(0);
    assert_eq!(version, "99", "nothing was changed");

    let Some(foreign) = PgSchema::new() else {
        return;
    };
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {0}; CREATE TABLE {0}.users (id int)",
            foreign.name
        ))
        .await
        .expect("foreign");
    let err = PostgresStore::open(&foreign.url, foreign.options())
        .await
        .expect_err("foreign refused");
    assert!(
        matches!(&err, StoreError::Foreign { detail, .. } if detail.contains("users")),
        "{err:?}"
    );
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&foreign.name],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 1, "nothing was created beside the foreign table");
}

#[tokio::test]
async fn errors_never_show_the_password_and_bad_names_are_refused() {
    let err = PostgresStore::open(
        "postgres://orch:s3cret-pw@127.0.0.1:1/none",
        PostgresOptions {
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .expect_err("nothing listens on port 1");
    let msg = err.to_string();
    assert!(!msg.contains("s3cret-pw"), "{msg}");
    assert!(msg.contains("postgres://orch@127.0.0.1:1/none"), "{msg}");

    let err = PostgresStore::open("postgres://orch:s3cret-pw@[bad", PostgresOptions::default())
        .await
        .expect_err("bad url");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    assert!(err.to_string().contains("not valid"), "{err}");

    for bad in ["Orch", "1x", "a-b", "x;drop", ""] {
        let err = PostgresStore::open(
            "postgres://127.0.0.1:1/x",
            PostgresOptions::default().schema(bad),
        )
        .await
        .expect_err("bad schema name");
        assert!(err.to_string().contains("schema name"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn listen_notify_works_on_the_stores_dedicated_connection() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let store = open_pg(&schema).await;
    let mut rx = store.subscribe();
    store.listen("orch_wake").await.expect("listen");
    let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute("NOTIFY orch_wake, 'instance-1'")
        .await
        .expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a notification within 30 s")
        .expect("received");
    assert_eq!(got.channel, "orch_wake");
    assert_eq!(got.payload, "instance-1");
    assert!(store.listen("bad channel").await.is_err());
}

#[tokio::test]
async fn close_flushes_queued_writes_then_refuses_and_data_survives_reopen() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let store = open_pg(&schema).await;
    store
        .create(rec("a", "wf", 1), None, vec![])
        .await
        .expect("create");
    let queued: Vec<_> = (1..=10)
        .map(|s| store.submit(None, vec![append("a", step(s))]))
        .collect();
    store.close().await.expect("close");
    for c in queued {
        c.await.expect("queued before close");
    }
    assert!(matches!(
        store.submit(None, vec![append("a", step(11))]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.create(rec("b", "wf", 1), None, vec![]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.add_signal("a", "x", "1".into(), 1, vec![]).await,
        Err(StoreError::Closed)
    ));
    store.close().await.expect("closing twice is fine");
    drop(store);
    let store = open_pg(&schema).await;
    let journal = store.load("a").await.expect("load").expect("a").journal;
    assert_eq!(journal, (1..=10).map(step).collect::<Vec<_>>());
    let s = store
        .add_signal("a", "x", "1".into(), 2, vec![])
        .await
        .expect("signal");
    assert!(s > 0);
    store.close().await.expect("close");
}

#[tokio::test]
async fn bad_stored_values_are_errors_not_panics() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let store = open_pg(&schema).await;
    store
        .create(rec("a", "wf", 1), None, vec![])
        .await
        .expect("create");
    store
        .submit(None, vec![append("a", step(1))])
        .await
        .expect("append");
    let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "UPDATE {0}.instances SET status = 'sleeping'; UPDATE {0}.journal SET kind = 'teleport'",
            schema.name
        ))
        .await
        .expect("corrupt");
    let err = store.get("a").await.expect_err("bad status");
    assert!(err.to_string().contains("sleeping"), "{err}");
    assert!(store.list(ListFilter::default()).await.is_err());
    assert!(
        store
            .add_signal("a", "x", "1".into(), 1, vec![])
            .await
            .is_err()
    );
    client
        .batch_execute(&format!(
            "UPDATE {}.instances SET status = 'running'",
            schema.name
        ))
        .await
        .expect("fix");
    let err = store.load("a").await.expect_err("bad kind");
    assert!(err.to_string().contains("teleport"), "{err}");
    // The refused signal left nothing.
    client
        .batch_execute(&format!("UPDATE {}.journal SET kind = 'step'", schema.name))
        .await
        .expect("fix");
    assert!(
        store
            .load("a")
            .await
            .expect("load")
            .expect("a")
            .signals
            .is_empty()
    );
}

/// Writes to one instance keep their call order even when a write over several instances (a
/// release) comes between them and the instances are spread over several writer connections:
/// checkpoints queued before the release are written under the lease; claims by another node
/// queued after it find the instances released.
#[tokio::test]
async fn a_write_over_several_instances_keeps_call_order_across_writers() {
    let Some(schema) = PgSchema::new() else {
        return;
    };
    let mut options = schema.options();
    options.writers = 4;
    let store = PostgresStore::open(&schema.url, options)
        .await
        .expect("open with 4 writers");
    let terms = |name: &str| LeaseTerms {
        node: NodeId::new(name).expect("node id"),
        now: 1,
        ttl: 600_000,
    };
    let (a, b) = (terms("node-a"), terms("node-b"));
    store.renew(a.clone(), vec![]).await.expect("register a");
    store.renew(b.clone(), vec![]).await.expect("register b");
    let ids: Vec<String> = (0..16).map(|k| format!("i{k}")).collect();
    let mut fences = Vec::new();
    for id in &ids {
        match store
            .create(rec(id, "wf", 1), Some(a.clone()), vec![])
            .await
            .expect("create")
        {
            orch_runtime::store::Created::New(Some(lease)) => fences.push(lease.fence()),
            other => panic!("expected a new owned instance, got {other:?}"),
        }
    }
    // Queued in this order, without waiting in between.
    let checkpoints: Vec<_> = fences
        .iter()
        .map(|f| store.submit(Some(f.clone()), vec![append(&f.instance, step(1))]))
        .collect();
    let release = store.release(&a.node, Some(ids.clone()));
    let claims: Vec<_> = ids.iter().map(|id| store.claim(b.clone(), id)).collect();
    for (id, done) in ids
        .iter()
        .zip(futures_util::future::join_all(checkpoints).await)
    {
        assert!(
            done.is_ok(),
            "{id}: a checkpoint queued before the release was refused: {done:?}"
        );
    }
    release.await.expect("release");
    for (id, claimed) in ids.iter().zip(futures_util::future::join_all(claims).await) {
        match claimed.expect("claim") {
            Some(lease) => assert_eq!(lease.node.as_str(), "node-b", "{id}"),
            None => panic!("{id}: a claim queued after the release ran before it"),
        }
    }
    for id in &ids {
        let loaded = store.load(id).await.expect("load").expect("exists");
        assert_eq!(loaded.journal.len(), 1, "{id}: the checkpoint is kept");
    }
    store.close().await.expect("close");
}
