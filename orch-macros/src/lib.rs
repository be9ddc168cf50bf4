//! orch macros
