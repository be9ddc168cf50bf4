//! orch: durable workflows for Rust, code-first.

pub mod store;
