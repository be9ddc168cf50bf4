//! Procedural macros for orch: `#[workflow]` and `#[step]`.
//!
//! Thin by design: each entry point parses, validates and generates code that calls
//! `::orch_runtime::__private`; all behaviour lives in the runtime. On a user mistake the
//! macro reports a `syn::Error` on the narrowest span and still emits the user's function so
//! the rest of the crate keeps type-checking.

mod args;
mod checks;
mod names;
mod shape;
mod signals;
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
///
/// The body is replayed from the journal after a crash or restart, so calls that would come out
/// differently on replay are compile errors naming the durable replacement: the clock
/// (`SystemTime::now`, `Instant::now`, chrono's `Utc::now`/`Local::now` → `orch::now()`),
/// randomness (`rand::random`, `thread_rng` → `orch::random()`; `Uuid::new_v4` →
/// `orch::uuid()`), timers (`tokio::time::sleep`, `thread::sleep` → `orch::sleep()`), spawned
/// tasks (`tokio::spawn`, `thread::spawn` → `join!`/`try_join!` or `orch::background`),
/// `select!`, and iterating a `HashMap`/`HashSet` declared in the body or taken as input (→
/// `BTreeMap`/`BTreeSet`, or sort first). Paths are matched by their last two segments
/// (`time::sleep`, `SystemTime::now`, `Uuid::new_v4`), whatever the leading modules are;
/// closures and async blocks are checked, nested items are not.
///
/// The macro sees only the function, not the `use` items around it, so a *bare* call of a
/// hazard name (`sleep(..)`, `sleep_until`, `spawn`, `spawn_blocking`, `spawn_local`, `now`,
/// `random`, `rng`, `thread_rng`, `new_v4`, `now_v1`, `now_v7`, `idempotency_key`) is refused
/// as unidentifiable: after `use tokio::time::sleep;` it is a plain timer, after
/// `use orch_runtime::orch::sleep;` a durable one. Write the path so the macro can tell —
/// `orch::sleep(..)` (or `orch_runtime::orch::sleep`, `orch_runtime::durable::sleep`) for the
/// durable call, `tokio::time::sleep(..)` for the plain one (refused) — or put the `use`
/// inside the function body, where the macro follows it (renames and `orch::*` globs
/// included). A function of your own with such a name is called by a path
/// (`self::now()`, `helpers::now()`); a local variable of that name is not a call. The
/// process drawing (`SHAPE`) reads calls the same way, so a bare `sleep(..)` is never drawn
/// as a step. A renamed module imported outside the function (`use tokio::time as t;
/// t::sleep(..)`) is not seen.
///
/// The signals the body waits for by a literal name (`orch::signal::<T>("approve")`,
/// `orch::signal_with_timeout::<T>(..)`, or `let x: T = orch::signal("approve").await`) are
/// recorded with their payload types in the definition (the generated type's `SIGNALS`, the API's
/// definition view): sending a payload that does not deserialize into a name's only type is
/// refused (`Error::InvalidSignal`, HTTP 422). A name waited for with several types, or
/// whose type the macro cannot see, is not checked at send time; a payload that fits no wait
/// is journaled on the instance when received.
///
/// A statement the author knows to be deterministic opts out with `#[orch(deterministic)]`,
/// which the macro removes:
///
/// ```ignore
/// #[orch(deterministic)] // only logged, never decides anything
/// tracing::info!(at = ?std::time::SystemTime::now(), "charged");
/// ```
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    workflow::expand(attr.into(), item.into()).into()
}

/// Makes an `async fn` a durable step: journaled and retried inside a workflow, a plain call
/// elsewhere.
///
/// Options: `name = "…"`, `retry = <Retry expression>`, `timeout = <Duration expression>`,
/// `crate = "…"`.
///
/// Arguments are cloned for each attempt (references are copied), and errors are retried only
/// when the return type is spelled `Result<T, E>`. Beside the function the macro defines a type
/// of the same name holding the step's test doubles (`step_name::mock(…)`,
/// `step_name::fail_first(…)`), so a module of the same name in the same scope conflicts.
///
/// A step's work is journaled as one unit, so the durable primitives (`orch::sleep`,
/// `orch::now`, `orch::signal`, …) cannot work in its body: naming one there is a compile
/// error that says what to use instead. A call the macro cannot see (through an alias or a
/// helper function) panics at run time with a message naming the primitive and the step.
#[proc_macro_attribute]
pub fn step(attr: TokenStream, item: TokenStream) -> TokenStream {
    step::expand(attr.into(), item.into()).into()
}
