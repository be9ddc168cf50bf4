//! Compile-time behaviour of `#[workflow]` and `#[step]`: what compiles (`tests/ui/pass`) and
//! what is refused, with the exact messages (`tests/ui/fail/*.stderr`). Regenerate the
//! messages with `TRYBUILD=overwrite cargo test --test macros_ui`, then read every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
