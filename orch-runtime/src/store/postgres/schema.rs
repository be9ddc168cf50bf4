//! The schema: versioned migrations (safe under concurrent openers: each runs under a
//! transaction-level advisory lock) and the check that refuses foreign and newer schemas.

use super::pg_error;
use crate::store::StoreError;
use tokio_postgres::Client;

/// Schema migrations, applied in order, each in its own transaction. Migration `i` brings the
/// schema to version `i + 1`. Never edit a released entry; append a new one.
///
/// Text columns that are compared or ordered use the `"C"` collation, so ids, names and keys
/// order bytewise as in the SQLite store, whatever the database's locale.
pub(super) const MIGRATIONS: &[&str] = &[
    // Version 1: the SQLite store's version 2, plus what leases will need (`nodes`, and
    // `owner`, `lease_epoch`, `lease_expires_at` on instances; unused for now) and the holder
    // of the schema's exclusive lock.
    r#"CREATE TABLE orch_meta (
        key   TEXT COLLATE "C" PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE store_holder (
        slot        INTEGER PRIMARY KEY CHECK (slot = 1),
        pid         BIGINT NOT NULL,
        host        TEXT NOT NULL,
        since       TEXT NOT NULL,
        backend_pid INTEGER NOT NULL
    );
    CREATE TABLE nodes (
        id           TEXT COLLATE "C" PRIMARY KEY,
        host         TEXT NOT NULL,
        pid          BIGINT NOT NULL,
        started_at   BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL
    );
    CREATE TABLE instances (
        id               TEXT COLLATE "C" PRIMARY KEY,
        workflow         TEXT COLLATE "C" NOT NULL,
        version          TEXT NOT NULL,
        input            TEXT NOT NULL,
        status           TEXT COLLATE "C" NOT NULL,
        output           TEXT,
        error            TEXT,
        custom_status    TEXT,
        parent           TEXT COLLATE "C",
        created_at       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL,
        wake_at          BIGINT,
        failed_step      TEXT COLLATE "C",
        failed_seq       BIGINT,
        cancel_requested BIGINT,
        cancel_seq       BIGINT,
        retries          BIGINT NOT NULL DEFAULT 0,
        owner            TEXT COLLATE "C",
        lease_epoch      BIGINT NOT NULL DEFAULT 0,
        lease_expires_at BIGINT
    );
    CREATE INDEX instances_status ON instances (status);
    CREATE INDEX instances_workflow_status ON instances (workflow, status);
    CREATE INDEX instances_parent ON instances (parent);
    CREATE INDEX instances_created ON instances (created_at, id);
    CREATE INDEX instances_workflow_created ON instances (workflow, created_at, id);
    CREATE INDEX instances_due ON instances (wake_at) WHERE status IN ('running', 'suspended');
    CREATE INDEX instances_owner ON instances (owner, lease_expires_at);
    CREATE TABLE journal (
        instance    TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        seq         BIGINT NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT COLLATE "C" NOT NULL,
        outcome     TEXT NOT NULL,
        attempts    BIGINT NOT NULL,
        started_at  BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        PRIMARY KEY (instance, seq)
    );
    CREATE TABLE attempts (
        instance    TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        seq         BIGINT NOT NULL,
        attempt     BIGINT NOT NULL,
        error       TEXT NOT NULL,
        started_at  BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        PRIMARY KEY (instance, seq, attempt)
    );
    CREATE TABLE signals (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        instance     TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        name         TEXT COLLATE "C" NOT NULL,
        payload      TEXT NOT NULL,
        received_at  BIGINT NOT NULL,
        consumed_seq BIGINT
    );
    CREATE INDEX signals_instance ON signals (instance, consumed_seq);
    CREATE TABLE attributes (
        instance TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        key      TEXT COLLATE "C" NOT NULL,
        value    TEXT NOT NULL,
        num      DOUBLE PRECISION,
        valid    BOOLEAN NOT NULL,
        PRIMARY KEY (instance, key)
    );
    CREATE INDEX attributes_key_num ON attributes (key, num);
    CREATE TABLE superseded (
        instance    TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        retry       BIGINT NOT NULL,
        seq         BIGINT NOT NULL,
        kind        TEXT NOT NULL,
        name        TEXT COLLATE "C" NOT NULL,
        outcome     TEXT NOT NULL,
        attempts    BIGINT NOT NULL,
        started_at  BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        PRIMARY KEY (instance, retry, seq)
    );
    CREATE TABLE superseded_attempts (
        instance    TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        retry       BIGINT NOT NULL,
        seq         BIGINT NOT NULL,
        attempt     BIGINT NOT NULL,
        error       TEXT NOT NULL,
        started_at  BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        PRIMARY KEY (instance, retry, seq, attempt)
    );
    CREATE TABLE ended_timers (
        instance TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        seq      BIGINT NOT NULL,
        PRIMARY KEY (instance, seq)
    );
    CREATE TABLE audit (
        id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at     BIGINT NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );"#,
    // Version 2: ownership leases. Several nodes share a schema: the exclusive lock's holder
    // table goes, a node's leases end at `nodes.lease_expires`, an instance carries its owner
    // and `lease_epoch`.
    r#"DROP TABLE store_holder;
    ALTER TABLE nodes ADD COLUMN lease_expires BIGINT NOT NULL DEFAULT 0;
    DROP INDEX IF EXISTS instances_owner;
    ALTER TABLE instances DROP COLUMN lease_expires_at;
    CREATE INDEX instances_owner ON instances (owner);"#,
    // Version 3: task queues (steps run by workers; see store::task).
    r#"CREATE TABLE tasks (
        id               TEXT COLLATE "C" PRIMARY KEY,
        queue            TEXT COLLATE "C" NOT NULL,
        instance         TEXT COLLATE "C" NOT NULL REFERENCES instances (id),
        seq              BIGINT NOT NULL,
        attempt          BIGINT NOT NULL,
        step             TEXT NOT NULL,
        input            TEXT NOT NULL,
        idempotency_key  TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        created_at       BIGINT NOT NULL,
        deadline         BIGINT,
        state            TEXT COLLATE "C" NOT NULL,
        worker           TEXT,
        token            BIGINT NOT NULL DEFAULT 0,
        lease_expires_at BIGINT,
        output           TEXT,
        error            TEXT,
        retryable        BOOLEAN NOT NULL DEFAULT false,
        finished_at      BIGINT
    );
    CREATE INDEX tasks_open ON tasks (queue, priority DESC, created_at)
        WHERE state IN ('pending', 'leased');
    CREATE INDEX tasks_open_by_instance ON tasks (instance) WHERE state IN ('pending', 'leased');"#,
    // Version 4: workflow queues (flow control for starting workflows; see store::flow).
    r#"CREATE TABLE workflow_queues (
        name           TEXT COLLATE "C" PRIMARY KEY,
        concurrency    BIGINT,
        per_key        BIGINT,
        rate_limit     BIGINT,
        rate_period_ms BIGINT
    );
    CREATE TABLE queue_entries (
        instance    TEXT COLLATE "C" PRIMARY KEY REFERENCES instances (id),
        queue       TEXT COLLATE "C" NOT NULL,
        priority    INTEGER NOT NULL,
        ckey        TEXT COLLATE "C",
        dedup       TEXT COLLATE "C",
        seq         BIGINT GENERATED ALWAYS AS IDENTITY,
        enqueued_at BIGINT NOT NULL,
        admitted_at BIGINT,
        state       TEXT COLLATE "C" NOT NULL
    );
    CREATE INDEX queue_entries_waiting ON queue_entries (queue, priority DESC, seq)
        WHERE state = 'queued';
    CREATE INDEX queue_entries_running ON queue_entries (queue, ckey) WHERE state = 'admitted';
    CREATE INDEX queue_entries_admitted ON queue_entries (queue, admitted_at)
        WHERE admitted_at IS NOT NULL;
    CREATE UNIQUE INDEX queue_entries_dedup ON queue_entries (queue, dedup)
        WHERE dedup IS NOT NULL AND state <> 'done';"#,
    // Version 5: workers as the nodes saw them (store::task::WorkerRecord; `queues` is a JSON
    // array).
    r#"CREATE TABLE workers (
        id             TEXT COLLATE "C" PRIMARY KEY,
        queues         TEXT NOT NULL,
        node           TEXT NOT NULL,
        last_poll      BIGINT NOT NULL,
        last_heartbeat BIGINT
    );"#,
];

/// The schema version this build creates and understands.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The first key of orch's advisory locks (`'orch'` in ASCII); migrations use the next one.
const LOCK_CLASS: i32 = 0x6f72_6368;

/// Creates the schema when missing, refuses foreign and newer schemas and migrates. Several
/// nodes may open one schema at once: migrations serialise on an advisory transaction lock.
pub(super) async fn prepare(client: &Client, schema: &str, shown: &str) -> Result<(), StoreError> {
    let ctx = |what: &str| format!("opening {shown}: {what}");
    // Concurrent openers may race to create it; losing that race is fine.
    if let Err(e) = client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
    {
        use tokio_postgres::error::SqlState;
        let raced = matches!(e.code(), Some(c) if *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::DUPLICATE_SCHEMA);
        if !raced {
            return Err(pg_error(&ctx("creating the schema"), &e));
        }
    }
    let current = inspect(client, schema, shown).await?;
    migrate(client, current, schema, shown).await
}

/// Reads the schema version without writing anything; refuses foreign and too-new schemas.
pub(super) async fn inspect(client: &Client, schema: &str, shown: &str) -> Result<i64, StoreError> {
    let foreign = |detail: String| StoreError::Foreign {
        path: shown.to_string(),
        detail,
    };
    let ctx = |what: &str| format!("opening {shown}: {what}");
    let tables: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
            &[&schema],
        )
        .await
        .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
        .map_err(|e| pg_error(&ctx("reading the schema"), &e))?;
    if !tables.iter().any(|t| t == "orch_meta") {
        if tables.is_empty() {
            return Ok(0);
        }
        return Err(foreign(super::super::meta::no_meta_table(
            "a PostgreSQL schema",
            &tables,
        )));
    }
    let meta = |key: &'static str| async move {
        client
            .query_opt("SELECT value FROM orch_meta WHERE key = $1", &[&key])
            .await
            .and_then(|r| r.map(|r| r.try_get::<_, String>(0)).transpose())
            .map_err(|e| pg_error(&ctx("reading orch_meta"), &e))
    };
    super::super::meta::schema_version(
        shown,
        meta("application").await?,
        meta("schema_version").await?,
        SCHEMA_VERSION,
    )
}

/// Applies the migrations after `current`, one transaction each, under a transaction-level
/// advisory lock (so nodes that open the schema together migrate it once).
async fn migrate(
    client: &Client,
    current: i64,
    schema: &str,
    shown: &str,
) -> Result<(), StoreError> {
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if target <= current {
            continue;
        }
        let ctx = format!("migrating {shown} to schema version {target}");
        let run = async {
            client.batch_execute("BEGIN").await?;
            client
                .execute(
                    "SELECT pg_advisory_xact_lock($1::int4, (SELECT oid FROM pg_namespace \
                     WHERE nspname = $2)::int4)",
                    &[&(LOCK_CLASS + 1), &schema],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>(())
        };
        if let Err(e) = run.await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(pg_error(&ctx, &e));
        }
        // Another node may have migrated while we waited for the lock.
        let now = match inspect(client, schema, shown).await {
            Ok(v) => v,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        let result = async {
            if now < target {
                client.batch_execute(sql).await?;
                let upsert = "INSERT INTO orch_meta (key, value) VALUES ($1, $2) \
                              ON CONFLICT (key) DO UPDATE SET value = excluded.value";
                client
                    .execute(upsert, &[&"application", &super::super::meta::APPLICATION])
                    .await?;
                client
                    .execute(upsert, &[&"schema_version", &target.to_string()])
                    .await?;
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(e) = result {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(pg_error(&ctx, &e));
        }
        tracing::debug!(store = shown, version = target, "migrated the orch schema");
    }
    Ok(())
}
