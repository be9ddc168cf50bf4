//! Both built-in stores pass the backend conformance suite
//! (`orch_runtime::store::conformance`), one test per property.

#[path = "support/backends.rs"]
mod backends;

mod memory {
    use orch_runtime::store::Backend;
    use orch_runtime::store::memory::MemoryStore;
    use std::sync::Arc;

    orch_runtime::conformance_tests!(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Backend> });
}

mod sqlite {
    use orch_runtime::store::Backend;
    use orch_runtime::store::sqlite::{SqliteOptions, SqliteStore};
    use std::sync::Arc;

    /// A store in a fresh directory that lives as long as the test process.
    async fn fresh() -> Arc<dyn Backend> {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let store = tokio::task::spawn_blocking(move || {
            SqliteStore::open(dir.join("orch.db"), SqliteOptions::default())
        })
        .await
        .expect("open task")
        .expect("open");
        Arc::new(store)
    }

    orch_runtime::conformance_tests!(|| fresh());
}

/// `run_all` runs every check and passes on a conforming store.
#[tokio::test]
async fn run_all_passes_on_the_memory_store() {
    use orch_runtime::store::Backend;
    use std::sync::Arc;
    orch_runtime::store::conformance::run_all(|| async {
        Arc::new(orch_runtime::store::memory::MemoryStore::new()) as Arc<dyn Backend>
    })
    .await;
}

mod postgres {
    //! Each test in a schema of its own in `ORCH_TEST_DATABASE_URL`. Without it the tests are
    //! skipped with a loud notice (they fail instead with `ORCH_REQUIRE_POSTGRES=1`).
    use orch_runtime::store::Backend;
    use orch_runtime::store::postgres::PostgresStore;
    use std::sync::Arc;

    use super::backends;

    async fn fresh() -> Arc<dyn Backend> {
        let Some(schema) = backends::PgSchema::new() else {
            eprintln!(
                "SKIPPED: the PostgreSQL conformance check ran on the memory store because \
                 ORCH_TEST_DATABASE_URL is unset"
            );
            return Arc::new(orch_runtime::store::memory::MemoryStore::new());
        };
        let store = PostgresStore::open(&schema.url, schema.options())
            .await
            .expect("open the PostgreSQL store");
        // The schema must outlive the store, which the suite keeps to the end of the test.
        std::mem::forget(schema);
        Arc::new(store)
    }

    orch_runtime::conformance_tests!(|| fresh());
}
