//! The stores the shared suites run on, and a PostgreSQL schema of its own for each test.
//!
//! PostgreSQL tests read `ORCH_TEST_DATABASE_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`). When it is unset they print a loud notice and
//! pass, unless `ORCH_REQUIRE_POSTGRES=1` (set by `.ci/run`), which makes them fail instead.
#![allow(dead_code)]

use orch_runtime::Runtime;
use orch_runtime::store::postgres::PostgresOptions;
use std::ops::Deref;

/// A store the suites can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `MemoryStore`.
    Memory,
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh schema in `ORCH_TEST_DATABASE_URL`.
    Postgres,
}

/// The URL of the test database, or `None` after a loud notice (a failure when
/// `ORCH_REQUIRE_POSTGRES=1`).
pub fn database_url() -> Option<String> {
    match std::env::var("ORCH_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let required = std::env::var("ORCH_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "ORCH_REQUIRE_POSTGRES=1 but ORCH_TEST_DATABASE_URL is unset: point it at a \
                 PostgreSQL database, e.g. postgres://postgres@127.0.0.1:5432/test"
            );
            eprintln!(
                "\n*** NOTICE: ORCH_TEST_DATABASE_URL is unset: this PostgreSQL test checks \
                 NOTHING and passes. Set it (e.g. postgres://postgres@127.0.0.1:5432/test) to \
                 run it. ***\n"
            );
            None
        }
    }
}

/// A schema of its own for one test, dropped (best effort) when this is dropped.
pub struct PgSchema {
    pub url: String,
    pub name: String,
}

impl PgSchema {
    /// A new, unique schema name in the test database (`None` when there is none; see
    /// [`database_url`]). The store creates the schema when it opens it.
    pub fn new() -> Option<PgSchema> {
        let url = database_url()?;
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| sweep_dead_schemas(&url));
        let name = format!("orch_test_p{}_{:016x}", std::process::id(), fastrand_u64());
        Some(PgSchema { url, name })
    }

    /// Options for a store in this schema.
    pub fn options(&self) -> PostgresOptions {
        PostgresOptions::default().schema(self.name.clone())
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Runs `sql` on `url` off the caller's runtime (which may be single-threaded or gone): a
/// thread with its own. `None` when it could not.
fn run_sql<T: Send + 'static>(
    url: &str,
    sql: impl FnOnce(
        tokio_postgres::Client,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<T>> + Send>>
    + Send
    + 'static,
) -> Option<T> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            sql(client).await
        })
    })
    .join()
    .ok()
    .flatten()
}

/// Drops the schemas of test processes that are gone (`orch_test_p<pid>_…` with no process
/// `<pid>` on this machine): a schema a test could not drop itself (the conformance suite
/// keeps its store, and so its schema, to the end of the process) is dropped by the next run
/// instead of piling up.
fn sweep_dead_schemas(url: &str) {
    let dropped = run_sql(url, |client| {
        Box::pin(async move {
            let rows = client
                .query(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'orch\\_test\\_p%'",
                    &[],
                )
                .await
                .ok()?;
            let mut dropped = 0;
            for row in rows {
                let name: String = row.get(0);
                let pid = name
                    .strip_prefix("orch_test_p")
                    .and_then(|rest| rest.split('_').next())
                    .and_then(|pid| pid.parse::<u32>().ok());
                let alive =
                    pid.is_none_or(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                if !alive
                    && client
                        .batch_execute(&format!(
                            "SET lock_timeout = '2s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                        ))
                        .await
                        .is_ok()
                {
                    dropped += 1;
                }
            }
            Some(dropped)
        })
    });
    if let Some(n @ 1..) = dropped {
        eprintln!("note: dropped {n} test schema(s) left behind by earlier test processes");
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = run_sql(&self.url, move |client| {
            Box::pin(async move {
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                    ))
                    .await
                    .ok()
            })
        });
        if dropped.is_none() {
            eprintln!(
                "note: could not drop test schema {} (left behind)",
                self.name
            );
        }
    }
}

/// A runtime for a test, with whatever its store needs kept alive beside it (a temporary
/// directory, a PostgreSQL schema dropped at the end). Derefs to [`Runtime`].
pub struct TestRuntime {
    pub rt: Runtime,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<std::sync::Arc<PgSchema>>,
}

impl Deref for TestRuntime {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.rt
    }
}

impl Backend {
    /// The backend of this test binary's `backend()`, by name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// A runtime on this backend, or `None` when PostgreSQL is not configured (after the
    /// notice of [`database_url`]).
    pub async fn runtime(self) -> Option<TestRuntime> {
        self.runtime_in(None).await
    }

    /// Like [`runtime`](Self::runtime); with `place`, runtimes built for the same place share
    /// their store (`place/ops.db`, or one schema dropped when the last of them is dropped), so
    /// a test can restart on it.
    pub async fn runtime_in(self, place: Option<&std::path::Path>) -> Option<TestRuntime> {
        let builder = Runtime::builder();
        let (builder, dir, schema) = match self {
            Backend::Memory => (builder.in_memory(), None, None),
            Backend::Sqlite => match place {
                Some(place) => (builder.sqlite(place.join("ops.db")), None, None),
                None => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    (builder.sqlite(dir.path().join("orch.db")), Some(dir), None)
                }
            },
            Backend::Postgres => {
                let schema = shared_schema(place)?;
                (
                    builder.postgres_with(schema.url.clone(), schema.options()),
                    None,
                    Some(schema),
                )
            }
        };
        let rt = builder
            .build()
            .await
            .unwrap_or_else(|e| panic!("a runtime on {}: {e}", self.name()));
        Some(TestRuntime {
            rt,
            _dir: dir,
            _schema: schema,
        })
    }
}

/// The runtime for a suite that runs on the backend named `name` (`memory`, `sqlite`,
/// `postgres`). PostgreSQL without `ORCH_TEST_DATABASE_URL` runs on memory instead, after the
/// loud notice (a failure with `ORCH_REQUIRE_POSTGRES=1`).
pub async fn suite_runtime(name: &str) -> TestRuntime {
    suite_runtime_in(name, None).await
}

/// One schema per place, alive while a runtime built for that place is.
fn shared_schema(place: Option<&std::path::Path>) -> Option<std::sync::Arc<PgSchema>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, Weak};
    static SCHEMAS: Mutex<Option<HashMap<std::path::PathBuf, Weak<PgSchema>>>> = Mutex::new(None);
    let Some(place) = place else {
        return PgSchema::new().map(Arc::new);
    };
    let mut map = SCHEMAS.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(s) = map.get(place).and_then(Weak::upgrade) {
        return Some(s);
    }
    let schema = Arc::new(PgSchema::new()?);
    map.insert(place.to_path_buf(), Arc::downgrade(&schema));
    Some(schema)
}

/// Like [`suite_runtime`], sharing the store of `place` (see [`Backend::runtime_in`]).
pub async fn suite_runtime_in(name: &str, place: Option<&std::path::Path>) -> TestRuntime {
    let backend = match name {
        "sqlite" => Backend::Sqlite,
        "postgres" => Backend::Postgres,
        _ => Backend::Memory,
    };
    match backend.runtime_in(place).await {
        Some(rt) => rt,
        None => {
            eprintln!("*** NOTICE: this PostgreSQL suite test runs on the in-memory store. ***");
            Backend::Memory.runtime().await.expect("memory runtime")
        }
    }
}
