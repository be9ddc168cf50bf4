//! The operations suite (tests/operations.rs: cancel, terminate, retry, restart, fork,
//! attributes, search, stats, audit) on the PostgreSQL store, each test in a schema of its
//! own. Needs `ORCH_TEST_DATABASE_URL` (see tests/support/backends.rs).

#[path = "operations.rs"]
mod operations;

fn backend() -> &'static str {
    "postgres"
}
