//! The SQLite store's own tests: files, schema, batches and bad stored values (what every
//! backend must do is checked by the conformance suite).

use super::schema::SCHEMA_VERSION;
use super::*;
use crate::store::{AttemptRecord, EntryKind, JournalEntry, SignalRecord, Status};
use rusqlite::Connection;
use std::fs;

fn rec(id: &str) -> InstanceRecord {
    InstanceRecord {
        id: id.into(),
        workflow: "wf".into(),
        version: "v1".into(),
        input: "{\"x\":1}".into(),
        created_at: 10,
        updated_at: 10,
        ..Default::default()
    }
}

fn entry(seq: u32) -> JournalEntry {
    JournalEntry {
        seq,
        kind: EntryKind::Step,
        name: format!("step{seq}"),
        outcome: format!("{{\"ok\":{seq}}}"),
        attempts: 1,
        started_at: 100 + i64::from(seq),
        finished_at: 200 + i64::from(seq),
    }
}

fn append(instance: &str, seq: u32) -> WriteOp {
    WriteOp::Append {
        instance: instance.into(),
        entry: entry(seq),
    }
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).expect("open")
}

async fn snapshot(
    store: &SqliteStore,
) -> (
    Vec<(
        InstanceRecord,
        Vec<JournalEntry>,
        Vec<AttemptRecord>,
        Vec<SignalRecord>,
    )>,
    Vec<InstanceRecord>,
) {
    let mut all = Vec::new();
    for r in store.list(ListFilter::default()).await.expect("list") {
        let l = store.load(&r.id).await.expect("load").expect("exists");
        assert_eq!(l.record, r);
        all.push((l.record, l.journal, l.attempts, l.signals));
    }
    (all, unfinished(store).await)
}

async fn unfinished(store: &SqliteStore) -> Vec<InstanceRecord> {
    let all = store.list(ListFilter::default()).await.expect("list");
    all.into_iter().filter(|r| !r.status.is_final()).collect()
}

#[tokio::test]
async fn roundtrip_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orch.db");
    let store = open(&path);

    let mut child = rec("b-child");
    child.parent = Some("a".into());
    child.workflow = "other".into();
    for r in [rec("a"), child.clone(), rec("c")] {
        assert!(matches!(
            store.create(r, None, Vec::new()).await,
            Ok(Created::New(None))
        ));
    }
    // Creating again returns the stored record unchanged.
    let mut again = rec("a");
    again.input = "\"different\"".into();
    match store
        .create(again, None, Vec::new())
        .await
        .expect("create again")
    {
        Created::Existing(r) => assert_eq!(*r, rec("a")),
        Created::New(_) => panic!("duplicate create stored a new instance"),
    }

    let s1 = store
        .add_signal("a", "go", "1".into(), 50, Vec::new())
        .await
        .expect("signal");
    let s2 = store
        .add_signal("a", "go", "2".into(), 51, Vec::new())
        .await
        .expect("signal");
    assert!(s2 > s1);
    let attempt = |seq, attempt| AttemptRecord {
        seq,
        attempt,
        error: format!("boom {seq}/{attempt}"),
        started_at: 1,
        finished_at: 2,
    };
    store
        .submit(
            None,
            vec![
                WriteOp::Attempt {
                    instance: "a".into(),
                    record: attempt(1, 2),
                },
                WriteOp::Attempt {
                    instance: "a".into(),
                    record: attempt(1, 1),
                },
                append("a", 2),
                append("a", 1),
                WriteOp::ConsumeSignal {
                    instance: "a".into(),
                    signal: s1,
                    seq: 2,
                },
                WriteOp::CustomStatus {
                    instance: "a".into(),
                    value: "\"half\"".into(),
                    at: 60,
                },
                WriteOp::SetStatus {
                    instance: "a".into(),
                    status: Status::Suspended,
                    wake_at: Some(999),
                    at: 61,
                },
            ],
        )
        .await
        .expect("submit a");
    store
        .submit(
            None,
            vec![
                append("c", 1),
                WriteOp::Finish {
                    instance: "c".into(),
                    status: Status::Completed,
                    output: Some("42".into()),
                    error: None,
                    failed_step: None,
                    at: 70,
                },
                // Ignored: c is final.
                WriteOp::SetStatus {
                    instance: "c".into(),
                    status: Status::Running,
                    wake_at: Some(5),
                    at: 71,
                },
                WriteOp::Finish {
                    instance: "c".into(),
                    status: Status::Failed,
                    output: None,
                    error: Some("late".into()),
                    failed_step: None,
                    at: 72,
                },
            ],
        )
        .await
        .expect("submit c");

    let a = store.load("a").await.expect("load").expect("a exists");
    let mut want_a = rec("a");
    want_a.status = Status::Suspended;
    // The signals that arrived while it ran (at 50) keep it due then, not at its timer.
    want_a.wake_at = Some(50);
    want_a.custom_status = Some("\"half\"".into());
    want_a.updated_at = 61;
    assert_eq!(a.record, want_a);
    assert_eq!(a.journal, vec![entry(1), entry(2)]);
    assert_eq!(a.attempts, vec![attempt(1, 1), attempt(1, 2)]);
    assert_eq!(
        a.signals,
        vec![SignalRecord {
            id: s2,
            name: "go".into(),
            payload: "2".into(),
            received_at: 51
        }]
    );

    let c = store.get("c").await.expect("get").expect("c exists");
    let mut want_c = rec("c");
    want_c.status = Status::Completed;
    want_c.output = Some("42".into());
    want_c.updated_at = 70;
    assert_eq!(c, want_c);
    assert!(store.get("nope").await.expect("get").is_none());
    assert!(store.load("nope").await.expect("load").is_none());

    let ids = |v: Vec<InstanceRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let list = |f: ListFilter| store.list(f);
    assert_eq!(
        ids(list(ListFilter::default()).await.expect("list")),
        ["a", "b-child", "c"]
    );
    assert_eq!(
        ids(list(ListFilter::default().workflow("wf")).await.expect("l")),
        ["a", "c"]
    );
    assert_eq!(
        ids(list(ListFilter::default().status(Status::Completed))
            .await
            .expect("l")),
        ["c"]
    );
    let by_parent = ListFilter {
        parent: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(ids(list(by_parent).await.expect("l")), ["b-child"]);
    let after = ListFilter {
        after_id: Some("a".into()),
        limit: 1,
        ..Default::default()
    };
    assert_eq!(ids(list(after).await.expect("l")), ["b-child"]);
    assert_eq!(
        ids(list(ListFilter::default().limit(2)).await.expect("l")),
        ["a", "b-child"]
    );
    assert_eq!(ids(unfinished(&store).await), ["a", "b-child"]);

    let before = snapshot(&store).await;
    drop(store);
    let store = open(&path);
    assert_eq!(snapshot(&store).await, before);
    // Signal ids keep increasing across reopen.
    let s3 = store
        .add_signal("a", "go", "3".into(), 52, Vec::new())
        .await
        .expect("signal");
    assert!(s3 > s2);
}

#[tokio::test]
async fn conflicts_fail_alone_inside_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("orch.db"));
    for id in ["a", "b", "c"] {
        store
            .create(rec(id), None, Vec::new())
            .await
            .expect("create");
    }
    store
        .submit(None, vec![append("b", 1)])
        .await
        .expect("first");

    // Queue everything before awaiting anything so it lands in few transactions.
    let commits = vec![
        store.submit(None, vec![append("a", 1)]),
        store.submit(None, vec![append("b", 2), append("b", 1)]), // conflict: all-or-nothing
        store.submit(None, vec![append("c", 1)]),
        store.submit(None, vec![append("missing", 1)]),
        store.submit(None, vec![append("a", 2)]),
    ];
    let mut results = Vec::new();
    for c in commits {
        results.push(c.await);
    }
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(StoreError::Conflict { instance, .. }) if instance == "b"),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok());
    assert!(matches!(&results[3], Err(StoreError::NotFound(id)) if id == "missing"));
    assert!(results[4].is_ok());

    let store = &store;
    let journal = |id: &'static str| async move {
        store.load(id).await.expect("load").expect("exists").journal
    };
    assert_eq!(journal("a").await, vec![entry(1), entry(2)]);
    assert_eq!(
        journal("b").await,
        vec![entry(1)],
        "the failed submission left nothing"
    );
    assert_eq!(journal("c").await, vec![entry(1)]);
}

#[tokio::test]
async fn group_commit_batches_queued_submissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("orch.db"));
    store
        .create(rec("a"), None, Vec::new())
        .await
        .expect("create");
    let before = store.commits();
    let pending: Vec<_> = (1..=1000)
        .map(|seq| store.submit(None, vec![append("a", seq)]))
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
    let journal = store
        .load("a")
        .await
        .expect("load")
        .expect("exists")
        .journal;
    assert_eq!(journal, (1..=1000).map(entry).collect::<Vec<_>>());
}

#[test]
fn refuses_foreign_files_without_changing_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = SqliteOptions::default;

    let text = dir.path().join("notes.txt");
    fs::write(&text, "hello, this is not a database\n".repeat(100)).expect("write");
    let bytes = fs::read(&text).expect("read");
    let err = SqliteStore::open(&text, opts())
        .err()
        .expect("text file refused");
    assert!(
        matches!(&err, StoreError::Foreign { detail, .. } if detail.contains("not a database")),
        "{err}"
    );
    assert_eq!(fs::read(&text).expect("read"), bytes);

    let other = dir.path().join("other.db");
    {
        let c = Connection::open(&other).expect("open");
        c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'x');")
            .expect("setup");
    }
    let bytes = fs::read(&other).expect("read");
    let err = SqliteStore::open(&other, opts())
        .err()
        .expect("foreign db refused");
    assert!(
        matches!(&err, StoreError::Foreign { detail, .. } if detail.contains("users")),
        "{err}"
    );
    assert_eq!(fs::read(&other).expect("read"), bytes);
    assert!(!dir.path().join("other.db-wal").exists());

    let newer = dir.path().join("newer.db");
    {
        let c = Connection::open(&newer).expect("open");
        c.execute_batch(
            "CREATE TABLE orch_meta (key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO orch_meta VALUES ('application', 'orch'), ('schema_version', '99');
             CREATE TABLE instances_v99 (id TEXT);",
        )
        .expect("setup");
    }
    let bytes = fs::read(&newer).expect("read");
    let err = SqliteStore::open(&newer, opts())
        .err()
        .expect("newer db refused");
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fs::read(&newer).expect("read"), bytes);
}

#[test]
fn new_and_empty_files_get_the_schema_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.db");
    fs::write(&empty, b"").expect("write");
    for _ in 0..2 {
        let store = SqliteStore::open(
            &empty,
            SqliteOptions {
                synchronous: Synchronous::Normal,
                max_batch: 1,
                max_bytes: None,
            },
        )
        .expect("open");
        drop(store);
    }
    let c = Connection::open(&empty).expect("open");
    let version: String = c
        .query_row(
            "SELECT value FROM orch_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION.to_string());
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn add_signal_refuses_missing_and_finished_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("orch.db"));
    let err = store
        .add_signal("ghost", "go", "1".into(), 1, Vec::new())
        .await
        .expect_err("missing");
    assert!(
        matches!(&err, StoreError::NotFound(id) if id == "ghost"),
        "{err}"
    );

    store
        .create(rec("a"), None, Vec::new())
        .await
        .expect("create");
    store
        .submit(
            None,
            vec![WriteOp::Finish {
                instance: "a".into(),
                status: Status::Failed,
                output: None,
                error: Some("no".into()),
                failed_step: None,
                at: 5,
            }],
        )
        .await
        .expect("finish");
    let err = store
        .add_signal("a", "go", "1".into(), 6, Vec::new())
        .await
        .expect_err("finished");
    assert!(
        matches!(&err, StoreError::Finished { id, status: Status::Failed } if id == "a"),
        "{err}"
    );
    let loaded = store.load("a").await.expect("load").expect("exists");
    assert!(loaded.signals.is_empty());
}

#[tokio::test]
async fn close_flushes_then_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orch.db");
    let store = open(&path);
    store
        .create(rec("a"), None, Vec::new())
        .await
        .expect("create");
    // Not awaited before close: close must still make them durable.
    let queued: Vec<_> = (1..=10)
        .map(|s| store.submit(None, vec![append("a", s)]))
        .collect();
    store.close().await.expect("close");
    for c in queued {
        c.await.expect("queued before close");
    }
    let err = store
        .submit(None, vec![append("a", 11)])
        .await
        .expect_err("closed");
    assert!(matches!(err, StoreError::Closed), "{err}");
    assert!(matches!(
        store.create(rec("b"), None, Vec::new()).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.add_signal("a", "x", "1".into(), 1, Vec::new()).await,
        Err(StoreError::Closed)
    ));
    store.close().await.expect("closing twice is fine");
    // Reads still work.
    assert_eq!(
        store
            .load("a")
            .await
            .expect("load")
            .expect("a")
            .journal
            .len(),
        10
    );
    drop(store);

    let store = open(&path);
    let journal = store
        .load("a")
        .await
        .expect("load")
        .expect("exists")
        .journal;
    assert_eq!(journal, (1..=10).map(entry).collect::<Vec<_>>());
}

#[tokio::test]
async fn drop_finishes_queued_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orch.db");
    let store = open(&path);
    store
        .create(rec("a"), None, Vec::new())
        .await
        .expect("create");
    for s in 1..=5 {
        drop(store.submit(None, vec![append("a", s)]));
    }
    drop(store);
    let store = open(&path);
    assert_eq!(
        store
            .load("a")
            .await
            .expect("load")
            .expect("a")
            .journal
            .len(),
        5
    );
}

#[tokio::test]
async fn bad_stored_values_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orch.db");
    let store = open(&path);
    store
        .create(rec("a"), None, Vec::new())
        .await
        .expect("create");
    store
        .submit(None, vec![append("a", 1)])
        .await
        .expect("append");
    drop(store);
    {
        let c = Connection::open(&path).expect("open");
        c.execute_batch(
            "UPDATE instances SET status = 'sleeping' WHERE id = 'a';
             UPDATE journal SET kind = 'teleport' WHERE instance = 'a';",
        )
        .expect("corrupt");
    }
    let store = open(&path);
    let err = store.get("a").await.expect_err("bad status");
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("`a`") && m.contains("sleeping")),
        "{err}"
    );
    assert!(store.list(ListFilter::default()).await.is_err());
    assert!(
        store
            .add_signal("a", "x", "1".into(), 1, Vec::new())
            .await
            .is_err()
    );
    drop(store);
    {
        let c = Connection::open(&path).expect("open");
        c.execute_batch("UPDATE instances SET status = 'running' WHERE id = 'a';")
            .expect("fix");
    }
    let store = open(&path);
    let err = store.load("a").await.expect_err("bad kind");
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("teleport")),
        "{err}"
    );
}

/// The writer remembers fences it checked; a claim committed by another process (another
/// connection to the file) must still fence out the old owner's next write.
#[tokio::test]
async fn a_claim_by_another_process_fences_out_a_write_the_old_owner_checked_before() {
    use crate::store::{LeaseTerms, NodeId};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orch.db");
    let (a, b) = (open(&path), open(&path));
    let node = |n: &str| NodeId::new(n).expect("node id");
    let terms = |n: &NodeId, now: Millis, ttl: Millis| LeaseTerms {
        node: n.clone(),
        now,
        ttl,
    };
    let (na, nb) = (node("node-a"), node("node-b"));
    let t0: Millis = 1_800_000_000_000;
    a.renew(terms(&na, t0, 1_000), Vec::new()).await.expect("a");
    b.renew(terms(&nb, t0, 60_000), Vec::new())
        .await
        .expect("b");
    let fence = match a
        .create(rec("i"), Some(terms(&na, t0, 1_000)), Vec::new())
        .await
        .expect("create")
    {
        Created::New(Some(lease)) => lease.fence(),
        other => panic!("expected a new owned instance, got {other:?}"),
    };
    // Checked and remembered by a's writer.
    a.submit(Some(fence.clone()), vec![append("i", 1)])
        .await
        .expect("the owner writes");
    let lease = b
        .claim(terms(&nb, t0 + 5_000, 60_000), "i")
        .await
        .expect("claim")
        .expect("a's lease ended");
    match a.submit(Some(fence), vec![append("i", 2)]).await {
        Err(StoreError::LeaseLost { current_owner, .. }) => {
            assert_eq!(current_owner.as_deref(), Some("node-b"));
        }
        other => panic!("a write under a lease lost to another process: {other:?}"),
    }
    b.submit(Some(lease.fence()), vec![append("i", 2)])
        .await
        .expect("the new owner writes");
    let loaded = a.load("i").await.expect("load").expect("exists");
    assert_eq!(loaded.journal.len(), 2);
}
