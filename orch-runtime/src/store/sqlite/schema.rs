//! The schema: versioned migrations (safe under concurrent openers: each runs in an
//! `IMMEDIATE` transaction that looks again at the version), the pragmas every connection
//! gets, and the check that refuses foreign and newer files without changing them.

use super::{Synchronous, backend};
use crate::store::StoreError;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use std::time::Duration;

/// Schema migrations, applied in order, each in its own transaction. Migration `i` brings the
/// database to schema version `i + 1`. Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE TABLE orch_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE instances (
        id            TEXT PRIMARY KEY,
        workflow      TEXT NOT NULL,
        version       TEXT NOT NULL,
        input         TEXT NOT NULL,
        status        TEXT NOT NULL,
        output        TEXT,
        error         TEXT,
        custom_status TEXT,
        parent        TEXT,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        wake_at       INTEGER
    );
    CREATE INDEX instances_status ON instances (status);
    CREATE INDEX instances_workflow_status ON instances (workflow, status);
    CREATE INDEX instances_parent ON instances (parent);
    CREATE TABLE journal (
        instance    TEXT NOT NULL REFERENCES instances (id),
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, seq)
    ) WITHOUT ROWID;
    CREATE TABLE attempts (
        instance    TEXT NOT NULL REFERENCES instances (id),
        seq         INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        error       TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, seq, attempt)
    );
    CREATE TABLE signals (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        instance     TEXT NOT NULL REFERENCES instances (id),
        name         TEXT NOT NULL,
        payload      TEXT NOT NULL,
        received_at  INTEGER NOT NULL,
        consumed_seq INTEGER
    );
    CREATE INDEX signals_instance ON signals (instance, consumed_seq);",
    // Version 2: search, attributes, cancellation, retries, the audit log.
    "ALTER TABLE instances ADD COLUMN failed_step TEXT;
    ALTER TABLE instances ADD COLUMN failed_seq INTEGER;
    ALTER TABLE instances ADD COLUMN cancel_requested INTEGER;
    ALTER TABLE instances ADD COLUMN cancel_seq INTEGER;
    ALTER TABLE instances ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX instances_created ON instances (created_at, id);
    CREATE INDEX instances_workflow_created ON instances (workflow, created_at, id);
    CREATE TABLE attributes (
        instance TEXT NOT NULL REFERENCES instances (id),
        key      TEXT NOT NULL,
        value    TEXT NOT NULL,
        PRIMARY KEY (instance, key)
    ) WITHOUT ROWID;
    CREATE INDEX attributes_key_value ON attributes (key, value);
    CREATE TABLE superseded (
        instance    TEXT NOT NULL REFERENCES instances (id),
        retry       INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, retry, seq)
    ) WITHOUT ROWID;
    CREATE TABLE superseded_attempts (
        instance    TEXT NOT NULL REFERENCES instances (id),
        retry       INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        error       TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        PRIMARY KEY (instance, retry, seq, attempt)
    );
    CREATE TABLE ended_timers (
        instance TEXT NOT NULL REFERENCES instances (id),
        seq      INTEGER NOT NULL,
        PRIMARY KEY (instance, seq)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at     INTEGER NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );",
    // Version 3: ownership of instances by nodes (leases, fencing).
    "ALTER TABLE instances ADD COLUMN owner TEXT;
    ALTER TABLE instances ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX instances_due ON instances (status, wake_at);
    CREATE TABLE nodes (
        id            TEXT PRIMARY KEY,
        started_at    INTEGER NOT NULL,
        heartbeat_at  INTEGER NOT NULL,
        lease_expires INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // Version 4: task queues (steps run by workers; see store::task).
    "CREATE TABLE tasks (
        id               TEXT PRIMARY KEY,
        queue            TEXT NOT NULL,
        instance         TEXT NOT NULL REFERENCES instances (id),
        seq              INTEGER NOT NULL,
        attempt          INTEGER NOT NULL,
        step             TEXT NOT NULL,
        input            TEXT NOT NULL,
        idempotency_key  TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        deadline         INTEGER,
        state            TEXT NOT NULL,
        worker           TEXT,
        token            INTEGER NOT NULL DEFAULT 0,
        lease_expires_at INTEGER,
        output           TEXT,
        error            TEXT,
        retryable        INTEGER NOT NULL DEFAULT 0,
        finished_at      INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX tasks_open ON tasks (queue, priority DESC, created_at)
        WHERE state IN ('pending', 'leased');
    CREATE INDEX tasks_open_by_instance ON tasks (instance) WHERE state IN ('pending', 'leased');",
    // Version 5: workflow queues (flow control for starting workflows; see store::flow).
    "CREATE TABLE workflow_queues (
        name           TEXT PRIMARY KEY,
        concurrency    INTEGER,
        per_key        INTEGER,
        rate_limit     INTEGER,
        rate_period_ms INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE queue_entries (
        instance    TEXT PRIMARY KEY REFERENCES instances (id),
        queue       TEXT NOT NULL,
        priority    INTEGER NOT NULL,
        ckey        TEXT,
        dedup       TEXT,
        seq         INTEGER NOT NULL,
        enqueued_at INTEGER NOT NULL,
        admitted_at INTEGER,
        state       TEXT NOT NULL
    );
    CREATE INDEX queue_entries_waiting ON queue_entries (queue, priority DESC, seq)
        WHERE state = 'queued';
    CREATE INDEX queue_entries_running ON queue_entries (queue, ckey) WHERE state = 'admitted';
    CREATE INDEX queue_entries_admitted ON queue_entries (queue, admitted_at)
        WHERE admitted_at IS NOT NULL;
    CREATE INDEX queue_entries_dedup ON queue_entries (queue, dedup)
        WHERE dedup IS NOT NULL AND state <> 'done';
    CREATE INDEX queue_entries_seq ON queue_entries (seq);",
    // Workers as the nodes saw them (store::task::WorkerRecord; `queues` is a JSON array).
    "CREATE TABLE workers (
        id             TEXT PRIMARY KEY,
        queues         TEXT NOT NULL,
        node           TEXT NOT NULL,
        last_poll      INTEGER NOT NULL,
        last_heartbeat INTEGER
    ) WITHOUT ROWID;",
];

/// The schema version this build creates and understands.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn is_not_a_database(err: &rusqlite::Error) -> bool {
    matches!(err.sqlite_error_code(), Some(ErrorCode::NotADatabase))
}

/// Switches the file to WAL mode. Another process opening the same new file at the same
/// moment can hold it busy, and SQLite does not wait for that change by itself: retry for a
/// while (as `busy_timeout` would).
pub(super) fn wal_mode(conn: &Connection) -> rusqlite::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5 + u64::from(fastrand::u8(..20))));
            }
            other => return other,
        }
    }
}

pub(super) fn configure(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", synchronous.pragma_value())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Reads the schema version without writing anything; refuses foreign and too-new files.
pub(super) fn inspect(conn: &Connection, path: &str) -> Result<i64, StoreError> {
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_string(),
        detail,
    };
    let read_err = |what: &str, e: rusqlite::Error| {
        if is_not_a_database(&e) {
            foreign("file is not a database".into())
        } else if matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt)) {
            StoreError::Corrupt {
                path: path.to_string(),
                detail: e.to_string(),
            }
        } else {
            backend(&format!("opening `{path}`: {what}"), e)
        }
    };
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'orch_meta')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| read_err("reading the schema", e))?;
    if !has_meta {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .map_err(|e| read_err("reading the schema", e))?;
        let tables = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| read_err("reading the schema", e))?;
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| read_err("reading the schema", e))?;
        if objects == 0 {
            return Ok(0);
        }
        return Err(foreign(crate::store::meta::no_meta_table(
            "a SQLite database",
            &tables,
        )));
    }
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        conn.query_row("SELECT value FROM orch_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| read_err("reading orch_meta", e))
    };
    crate::store::meta::schema_version(
        path,
        meta("application")?,
        meta("schema_version")?,
        SCHEMA_VERSION,
    )
}

/// Applies the migrations after `current`, one transaction each.
pub(super) fn migrate(conn: &mut Connection, current: i64, path: &str) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if target <= current {
            continue;
        }
        let ctx = format!("migrating `{path}` to schema version {target}");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend(&ctx, e))?;
        // Another process may have migrated while we waited for the write lock.
        let now = inspect(&tx, path)?;
        if now >= target {
            tx.commit().map_err(|e| backend(&ctx, e))?;
            continue;
        }
        tx.execute_batch(sql).map_err(|e| backend(&ctx, e))?;
        let upsert = "INSERT INTO orch_meta (key, value) VALUES (?1, ?2)
                      ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        tx.execute(
            upsert,
            params!["application", crate::store::meta::APPLICATION],
        )
        .map_err(|e| backend(&ctx, e))?;
        tx.execute(upsert, params!["schema_version", target.to_string()])
            .map_err(|e| backend(&ctx, e))?;
        tx.commit().map_err(|e| backend(&ctx, e))?;
        tracing::debug!(path, version = target, "migrated orch database");
    }
    Ok(())
}
