//! Body checks: calls that break replay in a `#[workflow]` body, and durable primitives in a
//! `#[step]` body, reported at compile time on the user's own tokens.
//!
//! A workflow is replayed from its journal, so everything it does outside steps must come out
//! the same on every run. The checks match paths by their trailing segments (`SystemTime::now`
//! whatever it is imported as), follow closures and async blocks (they run in the workflow) but
//! not nested items, and read the arguments of function-like macros (`println!`, `join!`) when
//! they parse as expressions. A statement marked `#[orch(deterministic)]` is not checked; the
//! marker is removed before the body is emitted.

use crate::args::Errors;
use crate::names::{self, Meaning, Scope};
use proc_macro2::{Delimiter, Group, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{
    Attribute, Expr, ExprCall, ExprMacro, ExprMethodCall, ExprPath, FnArg, Ident, Item, ItemFn,
    Local, Macro, Pat, Path, Stmt, Token, Type,
};

/// What marks a statement as deterministic: `#[orch(deterministic)]`.
const OPT_OUT: &str = "deterministic";

/// Checks a workflow's body (and its parameters, for maps it iterates) for calls that break
/// replay.
pub fn workflow(func: &ItemFn) -> Result<(), syn::Error> {
    let mut errors = Errors::default();
    let mut scan = Scan {
        errors: &mut errors,
        mode: Mode::Workflow,
        hashed: Vec::new(),
        scope: Scope::of(func),
    };
    for arg in &func.sig.inputs {
        if let FnArg::Typed(pt) = arg
            && is_hashed_type(&pt.ty)
            && let Some(name) = binding(&pt.pat)
        {
            scan.hashed.push(name);
        }
    }
    scan.visit_block(&func.block);
    errors.finish()
}

/// Checks a step's body for durable primitives, which work only in a workflow body.
pub fn step(func: &ItemFn) -> Result<(), syn::Error> {
    let mut errors = Errors::default();
    Scan {
        errors: &mut errors,
        mode: Mode::Step,
        hashed: Vec::new(),
        scope: Scope::of(func),
    }
    .visit_block(&func.block);
    errors.finish()
}

/// The function with every `#[orch(…)]` statement marker removed: it is ours, not rustc's.
pub fn strip_opt_outs(mut func: ItemFn) -> ItemFn {
    // Token surgery rather than a syntax-tree walk: attributes sit on many node kinds, and
    // removing one never makes the rest unparsable.
    if let Ok(block) = syn::parse2(strip_markers(func.block.to_token_stream())) {
        func.block = Box::new(block);
    }
    func
}

/// Emits `tokens` with the errors of `checked`, if any, in front of them.
pub fn report(checked: Result<(), syn::Error>, tokens: TokenStream) -> TokenStream {
    match checked {
        Ok(()) => tokens,
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(tokens);
            out
        }
    }
}

/// `first` with the errors of `more`, if any, after it.
pub fn join(mut first: syn::Error, more: Result<(), syn::Error>) -> syn::Error {
    if let Err(e) = more {
        first.combine(e);
    }
    first
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Workflow,
    Step,
}

struct Scan<'e> {
    errors: &'e mut Errors,
    mode: Mode,
    /// Locals (and parameters) known to hold a `HashMap`/`HashSet`.
    hashed: Vec<Ident>,
    /// The body's own imports and local names, to tell what a called name refers to.
    scope: Scope,
}

impl Scan<'_> {
    /// Reports `path` when it names a call the mode forbids; `whole` is what the error covers,
    /// `call` whether the path is called (a bare name that is not called is a variable).
    fn check_path(&mut self, path: &Path, whole: &dyn ToTokens, call: bool) -> bool {
        let msg = match (self.mode, self.scope.meaning(path, call)) {
            (Mode::Workflow, Meaning::Known(segs)) => replay_hazard(&segs),
            (Mode::Workflow, Meaning::Unknown(name)) => Some(names::unknown_message(&name)),
            (Mode::Step, Meaning::Known(segs)) => step_misuse(&segs),
            // In a step a plain timer or clock is fine, and a durable one panics at run time.
            (Mode::Step, Meaning::Unknown(_)) => None,
        };
        match msg {
            Some(msg) => {
                self.errors.add(syn::Error::new_spanned(whole, msg));
                true
            }
            None => false,
        }
    }

    /// Is `expr` (`m`, `&m`, `&mut m`, `(m)`) one of the hashed locals?
    fn is_hashed(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Path(p) => p
                .path
                .get_ident()
                .is_some_and(|id| self.hashed.contains(id)),
            Expr::Reference(r) => self.is_hashed(&r.expr),
            Expr::Paren(p) => self.is_hashed(&p.expr),
            _ => false,
        }
    }

    fn hash_order(&mut self, whole: &dyn ToTokens) {
        self.errors.add(syn::Error::new_spanned(
            whole,
            "iterating a HashMap or HashSet visits entries in an order that changes from one \
             process to the next, so a replay can take a different path: use a BTreeMap or \
             BTreeSet, or collect and sort before iterating (or mark the statement \
             `#[orch(deterministic)]` if the order cannot matter)",
        ));
    }

    /// Tracks `let` bindings: a new `HashMap`/`HashSet` is remembered, a shadowing binding of
    /// the same name forgotten.
    fn track(&mut self, local: &Local) {
        let (pat, ty) = match &local.pat {
            Pat::Type(pt) => (&*pt.pat, Some(&*pt.ty)),
            other => (other, None),
        };
        let Some(name) = binding(pat) else { return };
        self.hashed.retain(|n| *n != name);
        let hashed = ty.is_some_and(is_hashed_type)
            || local
                .init
                .as_ref()
                .is_some_and(|init| makes_hashed(&init.expr));
        if hashed {
            self.hashed.push(name);
        }
    }

    /// Runs `f` with every name bound by `pats` no longer taken for a hashed local.
    fn shadowing<'p>(
        &mut self,
        pats: impl IntoIterator<Item = &'p Pat>,
        f: impl FnOnce(&mut Self),
    ) {
        struct Names(Vec<Ident>);
        impl<'ast> Visit<'ast> for Names {
            fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
                self.0.push(p.ident.clone());
                visit::visit_pat_ident(self, p);
            }
        }
        let mut names = Names(Vec::new());
        for pat in pats {
            names.visit_pat(pat);
        }
        let saved = self.hashed.clone();
        self.hashed.retain(|n| !names.0.contains(n));
        f(self);
        self.hashed = saved;
    }

    /// Whether `attrs` mark the statement deterministic; a misplaced or misspelled marker is
    /// reported.
    fn marked(&mut self, attrs: &[Attribute]) -> bool {
        let mut skip = false;
        for attr in attrs.iter().filter(|a| is_marker(a)) {
            match self.mode {
                Mode::Step => self.errors.add(syn::Error::new_spanned(
                    attr,
                    "`#[orch(deterministic)]` only applies in a #[workflow] body: a step body is \
                     not replayed, so remove the marker",
                )),
                Mode::Workflow if is_opt_out(attr) => skip = true,
                Mode::Workflow => self.errors.add(syn::Error::new_spanned(
                    attr,
                    "the only statement marker is `#[orch(deterministic)]`, which skips the \
                     replay checks for that statement",
                )),
            }
        }
        skip
    }

    /// Macro arguments that parse as expressions (`println!`, `vec!`, `join!`) are checked too.
    fn visit_macro_args(&mut self, mac: &Macro) {
        if let Ok(args) = Punctuated::<Expr, Token![,]>::parse_terminated.parse2(mac.tokens.clone())
        {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Scan<'_> {
    fn visit_item(&mut self, _: &'ast Item) {
        // A nested item is not part of the body's control flow; it is checked only if called
        // … which the macro cannot see. Leave it alone.
    }

    fn visit_stmt(&mut self, stmt: &'ast Stmt) {
        let attrs: &[Attribute] = match stmt {
            Stmt::Local(l) => &l.attrs,
            Stmt::Macro(m) => &m.attrs,
            // An expression statement's attributes are the expression's: see `visit_expr`.
            Stmt::Expr(..) | Stmt::Item(_) => &[],
        };
        if self.marked(attrs) {
            return;
        }
        visit::visit_stmt(self, stmt);
        if let Stmt::Local(local) = stmt {
            self.track(local);
        }
    }

    fn visit_expr(&mut self, expr: &'ast Expr) {
        if let Some(attrs) = expr_attrs(expr)
            && self.marked(attrs)
        {
            return;
        }
        visit::visit_expr(self, expr);
    }

    fn visit_expr_call(&mut self, call: &'ast ExprCall) {
        if self.mode == Mode::Workflow
            && let Expr::Path(p) = &*call.func
            && segments(&p.path).last().is_some_and(|s| s == "background")
            && let Some(Expr::Async(block)) = call.args.first()
        {
            self.errors.add(syn::Error::new_spanned(
                block,
                "orch::background takes one step call, e.g. `orch::background(record(order.clone()))`: \
                 durable calls inside an async block would take their journal positions in \
                 another task, racing the workflow; put several calls in a #[workflow] fn and \
                 pass that child workflow's call instead",
            ));
        }
        if let Expr::Path(p) = &*call.func
            && self.check_path(&p.path, call, true)
        {
            for arg in &call.args {
                self.visit_expr(arg);
            }
            return;
        }
        visit::visit_expr_call(self, call);
    }

    fn visit_expr_path(&mut self, p: &'ast ExprPath) {
        self.check_path(&p.path, p, false);
    }

    fn visit_expr_method_call(&mut self, call: &'ast ExprMethodCall) {
        const ITERATE: &[&str] = &[
            "iter",
            "iter_mut",
            "into_iter",
            "keys",
            "values",
            "values_mut",
            "into_keys",
            "into_values",
            "drain",
        ];
        if self.mode == Mode::Workflow
            && ITERATE.iter().any(|m| call.method == m)
            && self.is_hashed(&call.receiver)
        {
            self.hash_order(call);
        }
        visit::visit_expr_method_call(self, call);
    }

    fn visit_expr_for_loop(&mut self, f: &'ast syn::ExprForLoop) {
        if self.mode == Mode::Workflow && self.is_hashed(&f.expr) {
            self.hash_order(&f.expr);
        }
        self.visit_expr(&f.expr);
        // The loop variable may shadow a map's name inside the body.
        self.shadowing([&*f.pat], |scan| scan.visit_block(&f.body));
    }

    fn visit_expr_closure(&mut self, c: &'ast syn::ExprClosure) {
        // The closure runs in the workflow; its parameters may shadow a map's name.
        self.shadowing(c.inputs.iter(), |scan| scan.visit_expr(&c.body));
    }

    fn visit_arm(&mut self, arm: &'ast syn::Arm) {
        self.shadowing([&arm.pat], |scan| {
            if let Some((_, guard)) = &arm.guard {
                scan.visit_expr(guard);
            }
            scan.visit_expr(&arm.body);
        });
    }

    fn visit_expr_if(&mut self, e: &'ast syn::ExprIf) {
        // `if let PAT = …`: the pattern's names shadow within the then-branch.
        if let Expr::Let(l) = &*e.cond {
            self.visit_expr(&l.expr);
            self.shadowing([&*l.pat], |scan| scan.visit_block(&e.then_branch));
        } else {
            self.visit_expr(&e.cond);
            self.visit_block(&e.then_branch);
        }
        if let Some((_, other)) = &e.else_branch {
            self.visit_expr(other);
        }
    }

    fn visit_expr_macro(&mut self, m: &'ast ExprMacro) {
        self.visit_macro(&m.mac);
    }

    fn visit_macro(&mut self, mac: &'ast Macro) {
        let last = mac.path.segments.last().map(|s| s.ident.to_string());
        if self.mode == Mode::Workflow
            && matches!(last.as_deref(), Some("select" | "select_biased"))
        {
            self.errors.add(syn::Error::new_spanned(
                mac,
                "`select!` races futures and drops the losers, and which one wins is not \
                 recorded, so a replay can take a different branch: use join! or restructure; \
                 a durable select is not available yet",
            ));
            return;
        }
        if self.mode == Mode::Workflow
            && matches!(last.as_deref(), Some("join" | "try_join"))
            && let Ok(args) =
                Punctuated::<Expr, Token![,]>::parse_terminated.parse2(mac.tokens.clone())
        {
            for arg in &args {
                if let Expr::Async(block) = arg
                    && awaits(block) > 1
                {
                    self.errors.add(syn::Error::new_spanned(
                        block,
                        "a branch of join! that awaits several durable calls in sequence is not \
                         replay-safe: replayed calls finish at once, so on replay the branches \
                         interleave differently and the calls get other journal positions; make \
                         each branch one call, e.g. move the sequence into a #[workflow] fn and \
                         join that child workflow",
                    ));
                }
            }
        }
        self.visit_macro_args(mac);
    }
}

/// How many `.await`s an async block contains (nested closures and items aside).
fn awaits(block: &syn::ExprAsync) -> usize {
    struct Count(usize);
    impl<'ast> Visit<'ast> for Count {
        fn visit_expr_await(&mut self, e: &'ast syn::ExprAwait) {
            self.0 += 1;
            visit::visit_expr_await(self, e);
        }
        fn visit_item(&mut self, _: &'ast Item) {}
        fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
    }
    let mut count = Count(0);
    count.visit_expr_async(block);
    count.0
}

/// Why the path `segs` breaks replay in a workflow body, with its durable replacement.
fn replay_hazard(segs: &[String]) -> Option<String> {
    const NOW: &str = "use `orch::now().await`, which records the time in the journal";
    const RANDOM: &str = "use `orch::random().await`, which records the value in the journal";
    const SLEEP: &str = "use `orch::sleep(duration).await`, a durable timer";
    let tail = &segs[segs.len().saturating_sub(2)..];
    let name = segs.join("::");
    let (what, fix) = match tail {
        [a, b] if a == "SystemTime" && b == "now" => ("time", NOW.to_string()),
        [a, b] if a == "Instant" && b == "now" => (
            "instant",
            format!("{NOW}, and measure durations between two of its values"),
        ),
        [a, b] if (a == "Utc" || a == "Local") && b == "now" => (
            "time",
            format!("{NOW}, and convert it with `chrono::DateTime::<chrono::Utc>::from`"),
        ),
        [a, b] if a == "rand" && (b == "random" || b == "rng") => ("value", RANDOM.to_string()),
        [.., b] if b == "thread_rng" => ("value", RANDOM.to_string()),
        [a, b] if a == "Uuid" && (b == "new_v4" || b == "now_v7" || b == "now_v1") => (
            "id",
            "use `orch::uuid().await`, which records the id in the journal".to_string(),
        ),
        [a, b]
            if (a == "tokio" || a == "task" || a == "thread")
                && matches!(b.as_str(), "spawn" | "spawn_blocking" | "spawn_local") =>
        {
            return Some(format!(
                "`{name}` starts a task outside the journal: it runs again on every replay \
                 and is lost on a crash; await the work in the workflow with `join!` or \
                 `try_join!`, or run optional work with `orch::background(...)`{OPT_OUT_HINT}"
            ));
        }
        [a, b] if a == "time" && (b == "sleep" || b == "sleep_until") => {
            return Some(format!(
                "`{name}` is a plain timer: it starts over on every replay and is lost on a \
                 crash; {SLEEP}{OPT_OUT_HINT}"
            ));
        }
        [a, b] if a == "thread" && b == "sleep" => {
            return Some(format!(
                "`{name}` blocks the runtime's thread and does not survive a restart; \
                 {SLEEP}{OPT_OUT_HINT}"
            ));
        }
        [a, b] if names::DURABLE_MODULES.contains(&a.as_str()) && b == "idempotency_key" => {
            return Some(format!(
                "`{name}` is a step's key: in a workflow body it is a fresh random value on \
                 every replay; call it inside the step, or use `orch::uuid().await` for a \
                 recorded id{OPT_OUT_HINT}"
            ));
        }
        _ => return None,
    };
    Some(format!(
        "`{name}` gives a different {what} when the workflow is replayed; {fix}{OPT_OUT_HINT}"
    ))
}

const OPT_OUT_HINT: &str =
    " (or mark the statement `#[orch(deterministic)]` if it cannot change the workflow's path)";

/// Why the path `segs` is a durable primitive that cannot work in a step, with the plain
/// equivalent.
fn step_misuse(segs: &[String]) -> Option<String> {
    let name = names::durable(segs)?;
    let instead = match name {
        "sleep" => "inside a step use `tokio::time::sleep`",
        "sleep_until" => "inside a step use `tokio::time::sleep_until`",
        "now" => "inside a step use `std::time::SystemTime::now()`",
        "random" => "inside a step use a plain random number (`fastrand`, `rand::random()`)",
        "uuid" => "inside a step use `uuid::Uuid::new_v4()`",
        "signal" | "signal_with_timeout" => {
            "wait for the signal in the workflow and pass its payload to the step as an argument"
        }
        "set_status" => "set the status in the workflow, before or after calling the step",
        "set_attribute" => "set the attribute in the workflow, before or after calling the step",
        "background" => {
            "start background work from the workflow, or use `tokio::spawn` for work the \
             journal need not know about"
        }
        "patched" => "branch on `orch::patched` in the workflow and call a different step",
        "call_workflow" => "start the child workflow from the workflow body",
        _ => return None,
    };
    Some(format!(
        "`orch::{name}` only works in a #[workflow] body (a step's work is journaled as one \
         unit): {instead}"
    ))
}

fn segments(path: &Path) -> Vec<String> {
    path.segments.iter().map(|s| s.ident.to_string()).collect()
}

/// `HashMap<…>`/`HashSet<…>` (any path ending so), also behind `&`.
fn is_hashed_type(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) => tp
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "HashMap" || s.ident == "HashSet"),
        Type::Reference(r) => is_hashed_type(&r.elem),
        Type::Paren(p) => is_hashed_type(&p.elem),
        _ => false,
    }
}

/// `HashMap::new()`, `HashSet::with_capacity(n)`, `HashMap::from([…])`, `….collect::<HashMap<…>>()`.
fn makes_hashed(expr: &Expr) -> bool {
    match expr {
        Expr::Call(call) => match &*call.func {
            Expr::Path(p) => {
                let segs = segments(&p.path);
                matches!(
                    segs.as_slice(),
                    [.., ty, _] if ty == "HashMap" || ty == "HashSet"
                )
            }
            _ => false,
        },
        Expr::MethodCall(m) if m.method == "collect" => m.turbofish.as_ref().is_some_and(|t| {
            t.args.iter().any(|a| match a {
                syn::GenericArgument::Type(ty) => is_hashed_type(ty),
                _ => false,
            })
        }),
        Expr::Paren(p) => makes_hashed(&p.expr),
        _ => false,
    }
}

/// The name a simple pattern binds (`m`, `mut m`).
fn binding(pat: &Pat) -> Option<Ident> {
    match pat {
        Pat::Ident(pi) if pi.subpat.is_none() => Some(pi.ident.clone()),
        Pat::Type(pt) => binding(&pt.pat),
        _ => None,
    }
}

fn is_marker(attr: &Attribute) -> bool {
    attr.path().is_ident("orch")
}

fn is_opt_out(attr: &Attribute) -> bool {
    is_marker(attr) && attr.parse_args::<Ident>().is_ok_and(|id| id == OPT_OUT)
}

/// `tokens` without `#[orch(…)]` attributes, at any depth.
fn strip_markers(tokens: TokenStream) -> TokenStream {
    let mut out: Vec<TokenTree> = Vec::new();
    for tt in tokens {
        match tt {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket && is_marker_group(&g) => {
                if matches!(out.last(), Some(TokenTree::Punct(p)) if p.as_char() == '#') {
                    out.pop();
                    continue;
                }
                out.push(TokenTree::Group(g));
            }
            TokenTree::Group(g) => {
                let mut inner = Group::new(g.delimiter(), strip_markers(g.stream()));
                inner.set_span(g.span());
                out.push(TokenTree::Group(inner));
            }
            other => out.push(other),
        }
    }
    out.into_iter().collect()
}

/// `[orch(…)]`: the bracketed part of a marker.
fn is_marker_group(g: &Group) -> bool {
    let mut it = g.stream().into_iter();
    matches!(
        (it.next(), it.next(), it.next()),
        (Some(TokenTree::Ident(id)), Some(TokenTree::Group(args)), None)
            if id == "orch" && args.delimiter() == Delimiter::Parenthesis
    )
}

macro_rules! expr_attrs {
    ($e:expr, $($v:ident),*) => {
        match $e {
            $(Expr::$v(x) => Some(&x.attrs),)*
            _ => None,
        }
    };
}

fn expr_attrs(e: &Expr) -> Option<&Vec<Attribute>> {
    expr_attrs!(
        e, Array, Assign, Async, Await, Binary, Block, Break, Call, Cast, Closure, Const, Continue,
        Field, ForLoop, Group, If, Index, Infer, Let, Lit, Loop, Macro, Match, MethodCall, Paren,
        Path, Range, RawAddr, Reference, Repeat, Return, Struct, Try, TryBlock, Tuple, Unary,
        Unsafe, While, Yield
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    /// The messages the workflow check reports for `func`, in order.
    fn workflow_errors(func: ItemFn) -> Vec<String> {
        messages(workflow(&func))
    }

    fn step_errors(func: ItemFn) -> Vec<String> {
        messages(step(&func))
    }

    fn messages(r: Result<(), syn::Error>) -> Vec<String> {
        match r {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn names(errors: &[String], needle: &str) -> usize {
        errors.iter().filter(|e| e.contains(needle)).count()
    }

    #[test]
    fn clock_random_uuid_spawn_and_sleep_name_their_durable_replacement() {
        let errors = workflow_errors(parse_quote! {
            async fn wf() {
                let a = std::time::SystemTime::now();
                let b = Instant::now();
                let c = chrono::Utc::now();
                let d = Local::now();
                let e: u64 = rand::random();
                let f = rand::thread_rng();
                let g = uuid::Uuid::new_v4();
                tokio::spawn(async {});
                std::thread::spawn(|| {});
                tokio::time::sleep(d).await;
                std::thread::sleep(d);
            }
        });
        assert_eq!(errors.len(), 11, "{errors:#?}");
        assert_eq!(names(&errors, "orch::now()"), 4);
        assert_eq!(names(&errors, "orch::random()"), 2);
        assert_eq!(names(&errors, "orch::uuid()"), 1);
        assert_eq!(names(&errors, "join!"), 2);
        assert_eq!(names(&errors, "orch::sleep(duration)"), 2);
    }

    #[test]
    fn durable_calls_and_lookalikes_pass() {
        let errors = workflow_errors(parse_quote! {
            async fn wf(order: Order) -> u64 {
                let t = orch::now().await;
                orch::sleep(secs(1)).await;
                let r = orch::random().await;
                let mine = self::random();
                let s = my::sleep();
                let m: BTreeMap<u32, u32> = BTreeMap::new();
                for (k, v) in &m {}
                let v = vec![1, 2];
                for x in v.iter() {}
                r
            }
        });
        assert!(errors.is_empty(), "{errors:#?}");
    }

    #[test]
    fn bare_hazard_names_are_refused_unless_a_use_in_the_body_says_what_they_are() {
        let errors = workflow_errors(parse_quote! {
            async fn wf(now: u64) {
                sleep(d).await;
                spawn(async {});
                let r = random();
                let id = new_v4();
                let t = thread_rng();
                let n = now;
                let here = now();
            }
        });
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert_eq!(names(&errors, "cannot be identified"), 5);
        assert_eq!(names(&errors, "`orch::sleep(..)`"), 1);
        assert_eq!(names(&errors, "`tokio::time::sleep(..)`"), 1);
        let errors = workflow_errors(parse_quote! {
            async fn wf() {
                use orch_runtime::orch::{sleep, now};
                use tokio::spawn as go;
                use tokio::time;
                sleep(d).await;
                let t = now().await;
                go(async {});
                time::sleep(d).await;
                #[orch(deterministic)]
                random();
            }
        });
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(names(&errors, "`tokio::spawn` starts a task"), 1);
        assert_eq!(names(&errors, "`tokio::time::sleep` is a plain timer"), 1);
    }

    #[test]
    fn closures_async_blocks_and_macro_arguments_are_checked_nested_items_are_not() {
        let errors = workflow_errors(parse_quote! {
            async fn wf() {
                let f = || std::time::SystemTime::now();
                let g = async { tokio::time::sleep(d).await };
                println!("{:?}", Instant::now());
                let ids: Vec<_> = (0..3).map(|_| Uuid::new_v4()).collect();
                let h = Uuid::new_v4;
                fn helper() -> std::time::SystemTime { std::time::SystemTime::now() }
                impl Foo { fn at() { tokio::spawn(async {}); } }
            }
        });
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }

    #[test]
    fn a_name_rebound_by_a_pattern_is_no_longer_the_map() {
        let errors = workflow_errors(parse_quote! {
            async fn wf(groups: Vec<Vec<u32>>) {
                let m: HashMap<u32, u32> = HashMap::new();
                for m in groups.clone() { for x in m.iter() { use_it(x); } }
                let _ = groups.iter().map(|m| m.len());
                if let Some(m) = groups.first() { for x in m { use_it(x); } }
                match groups.last() { Some(m) => { for x in m.iter() { use_it(x); } } None => {} }
                for (k, v) in m.iter() { use_it(k); }
            }
        });
        assert_eq!(
            names(&errors, "HashMap"),
            1,
            "only the real map: {errors:?}"
        );
    }

    #[test]
    fn join_branches_with_several_awaits_and_background_blocks_are_refused() {
        let errors = workflow_errors(parse_quote! {
            async fn wf() {
                let (a, b) = join!(async { x().await; y().await }, z());
                let (c, d) = join!(async { x().await }, async move { z().await });
                orch::background(async { x().await; });
            }
        });
        assert_eq!(names(&errors, "a branch of join!"), 1, "{errors:?}");
        assert_eq!(
            names(&errors, "orch::background takes one step call"),
            1,
            "{errors:?}"
        );
    }

    #[test]
    fn select_is_refused_with_join_as_the_way_out() {
        let errors = workflow_errors(parse_quote! {
            async fn wf() {
                tokio::select! { _ = a => {}, _ = b => {} }
                let x = select! { _ = a => 1, _ = b => 2 };
            }
        });
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(names(&errors, "use join! or restructure"), 2);
    }

    #[test]
    fn iterating_a_hash_map_or_set_declared_in_the_body_is_refused() {
        let errors = workflow_errors(parse_quote! {
            async fn wf(totals: HashMap<String, u64>) {
                let mut a = HashMap::new();
                let b: HashSet<u32> = Default::default();
                let c = std::collections::HashMap::<u32, u32>::with_capacity(4);
                let d = xs.into_iter().collect::<HashSet<_>>();
                for (k, v) in &a {}
                for x in b.iter() {}
                let keys: Vec<_> = c.keys().collect();
                for x in d {}
                for (k, v) in totals {}
                let n = a.len() + a.get(&1).copied().unwrap_or(0);
                let a = vec![1];
                for x in &a {}
            }
        });
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert_eq!(names(&errors, "BTreeMap"), 5);
    }

    #[test]
    fn a_marked_statement_is_skipped_and_the_marker_stripped() {
        let func: ItemFn = parse_quote! {
            async fn wf() {
                #[orch(deterministic)]
                let started = std::time::Instant::now();
                #[orch(deterministic)]
                let m: HashMap<u32, u32> = HashMap::new();
                #[orch(deterministic)]
                tracing::info!(elapsed = ?started.elapsed(), "at {:?}", std::time::SystemTime::now());
                let total: u32 = m.values().sum();
                #[orch(determinstic)]
                let late = Instant::now();
            }
        };
        let errors = workflow_errors(func.clone());
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(names(&errors, "the only statement marker"), 1);
        assert_eq!(names(&errors, "orch::now()"), 1);
        let stripped = strip_opt_outs(func).to_token_stream().to_string();
        assert!(!stripped.contains("orch"), "{stripped}");
    }

    #[test]
    fn durable_primitives_in_a_step_name_the_plain_equivalent() {
        let errors = step_errors(parse_quote! {
            async fn st() -> Result<(), StepError> {
                orch::sleep(secs(1)).await;
                let t = orch::now().await;
                let p: String = orch::signal("go").await;
                orch::set_status("x").await;
                let f = || orch_runtime::orch::uuid();
                let key = orch::idempotency_key();
                tokio::time::sleep(d).await;
                let now = std::time::SystemTime::now();
                Ok(())
            }
        });
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert_eq!(names(&errors, "only works in a #[workflow] body"), 5);
        assert_eq!(names(&errors, "tokio::time::sleep"), 1);
        assert_eq!(names(&errors, "uuid::Uuid::new_v4()"), 1);
    }
}
