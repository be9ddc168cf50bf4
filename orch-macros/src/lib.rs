//! Procedural macros for orch: `#[workflow]` and `#[step]`.
//!
//! Thin by design: each entry point parses, validates and generates code that calls
//! `::orch_runtime::__private`; all behaviour lives in the runtime. On a user mistake the
//! macro reports a `syn::Error` on the narrowest span and still emits the user's function so
//! the rest of the crate keeps type-checking.

mod args;
mod shape;
mod step;
mod version;
mod workflow;

use proc_macro::TokenStream;

/// Makes an `async fn` a durable workflow. See `orch_runtime` for the semantics.
///
/// Generates a unit struct named after the function in PascalCase (`fn checkout` →
/// `Checkout`) to pass to `Runtime::start`.
///
/// Options: `name = "…"` (registered name; default the function name), `handle = Ident`
/// (the generated type's name, when the default collides with a type of yours),
/// `crate = "…"` (path to `orch_runtime` when re-exported).
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    workflow::expand(attr.into(), item.into()).into()
}

/// Makes an `async fn` a durable step: journaled and retried inside a workflow, a plain call
/// elsewhere.
///
/// Options: `name = "…"`, `retry = <Retry expression>`, `timeout = <Duration expression>`,
/// `crate = "…"`.
#[proc_macro_attribute]
pub fn step(attr: TokenStream, item: TokenStream) -> TokenStream {
    step::expand(attr.into(), item.into()).into()
}
