//! The engine suite (tests/engine.rs) on the PostgreSQL store, each test in a schema of its
//! own. Needs `ORCH_TEST_DATABASE_URL` (see tests/support/backends.rs).

#[path = "engine.rs"]
mod engine;

fn backend() -> &'static str {
    "postgres"
}
