//! The static shape of a workflow body: durable calls, branches, loops, parallel arms, exits.
//!
//! Read from the syntax alone (see `orch_runtime::graph` for what is recognised and why) and
//! emitted as a `static` tree of `::orch_runtime::__private::Node`. Never fails: what it does
//! not understand it leaves out.

use crate::names::{self, Meaning, Scope};
use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::visit_mut::{self, VisitMut};
use syn::{Block, Expr, ExprCall, ExprPath, ItemFn, Local, Macro, Pat, Token};

/// The macro's copy of `orch_runtime::graph::Node`.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Call {
        name: String,
        may_fail: bool,
    },
    Child {
        workflow: Ty,
        may_fail: bool,
    },
    Sleep {
        label: String,
    },
    Signal {
        name: String,
        timeout: bool,
    },
    Background(Vec<Node>),
    Status {
        label: String,
    },
    Branch {
        label: String,
        arms: Vec<(String, Vec<Node>)>,
    },
    Loop {
        label: String,
        body: Vec<Node>,
    },
    Parallel(Vec<Vec<Node>>),
    Return,
}

/// A type, compared and shown by its tokens.
#[derive(Clone)]
pub struct Ty(pub syn::Type);

impl PartialEq for Ty {
    fn eq(&self, other: &Ty) -> bool {
        self.0.to_token_stream().to_string() == other.0.to_token_stream().to_string()
    }
}

impl std::fmt::Debug for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_token_stream().to_string())
    }
}

/// Longest label kept, in characters.
const LABEL_MAX: usize = 60;

/// The shape of `func`'s body, as an expression of type `::orch_runtime::__private::Node`
/// that is valid in a `static`.
pub fn generate(func: &ItemFn, krate: &TokenStream) -> TokenStream {
    let mut nodes = extract_with(&func.block, Scope::of(func));
    // A `return` at the very end is the ordinary end.
    if nodes.last() == Some(&Node::Return) {
        nodes.pop();
    }
    let items = nodes.iter().map(|n| tokens(n, krate));
    quote!(#krate::__private::Node::Seq(&[#(#items),*]))
}

#[cfg(test)]
pub fn extract(body: &Block) -> Vec<Node> {
    extract_with(body, Scope::of_block(body))
}

fn extract_with(body: &Block, scope: Scope) -> Vec<Node> {
    let mut s = Shape {
        out: Vec::new(),
        scope,
    };
    s.block(body);
    s.out
}

fn tokens(node: &Node, krate: &TokenStream) -> TokenStream {
    let n = quote!(#krate::__private::Node);
    let list = |nodes: &[Node]| {
        let items = nodes.iter().map(|n| tokens(n, krate));
        quote!(&[#(#items),*])
    };
    match node {
        Node::Call { name, may_fail } => quote!(#n::Call { name: #name, may_fail: #may_fail }),
        Node::Child {
            workflow: Ty(workflow),
            may_fail,
        } => quote!(#n::Child {
            workflow: <#workflow as #krate::__private::Workflow>::NAME,
            may_fail: #may_fail,
        }),
        Node::Sleep { label } => quote!(#n::Sleep { label: #label }),
        Node::Signal { name, timeout } => quote!(#n::Signal { name: #name, timeout: #timeout }),
        Node::Background(inner) => {
            let inner = match inner.as_slice() {
                [one] => tokens(one, krate),
                many => {
                    let l = list(many);
                    quote!(#n::Seq(#l))
                }
            };
            quote!(#n::Background(&#inner))
        }
        Node::Status { label } => quote!(#n::Status { label: #label }),
        Node::Branch { label, arms } => {
            let arms = arms.iter().map(|(l, body)| {
                let body = list(body);
                quote!(#krate::__private::Arm { label: #l, body: #body })
            });
            quote!(#n::Branch { label: #label, arms: &[#(#arms),*] })
        }
        Node::Loop { label, body } => {
            let body = list(body);
            quote!(#n::Loop { label: #label, body: #body })
        }
        Node::Parallel(arms) => {
            let arms = arms.iter().map(|a| match a.as_slice() {
                [one] => tokens(one, krate),
                many => {
                    let l = list(many);
                    quote!(#n::Seq(#l))
                }
            });
            quote!(#n::Parallel(&[#(#arms),*]))
        }
        Node::Return => quote!(#n::Return),
    }
}

/// Whether a node list holds anything worth drawing a branch or loop for.
fn significant(nodes: &[Node]) -> bool {
    nodes.iter().any(|n| !matches!(n, Node::Status { .. }))
}

struct Shape {
    out: Vec<Node>,
    /// The body's own imports: what a bare name refers to, as the replay checks read it.
    scope: Scope,
}

impl Shape {
    /// Runs `f` on a fresh list and returns what it collected.
    fn nested(&mut self, f: impl FnOnce(&mut Shape)) -> Vec<Node> {
        let saved = std::mem::take(&mut self.out);
        f(self);
        std::mem::replace(&mut self.out, saved)
    }

    fn block(&mut self, b: &Block) {
        for stmt in &b.stmts {
            self.visit_stmt(stmt);
        }
    }

    /// An expression whose value is a future to be run (a `join!` arm, `background`'s
    /// argument): a plain call there is a durable call even without `.await`.
    fn future(&mut self, e: &Expr) {
        match strip(e) {
            Expr::Call(call) if self.durable_name(call).is_some() => self.call(call, false),
            Expr::Async(a) => self.block(&a.block),
            other => self.visit_expr(other),
        }
    }

    /// A durable call: its arguments first (they are evaluated first), then the call.
    fn call(&mut self, call: &ExprCall, may_fail: bool) {
        for arg in &call.args {
            self.visit_expr(arg);
        }
        if let Some(name) = self.durable_name(call) {
            self.out.push(Node::Call { name, may_fail });
        }
    }

    /// The name of a durable call: the last segment of a plain path that is not a primitive,
    /// a library function or a name the macro cannot identify (see [`names`]).
    fn durable_name(&self, call: &ExprCall) -> Option<String> {
        let Expr::Path(ExprPath { path, qself, .. }) = strip(&call.func) else {
            return None;
        };
        if qself.is_some() {
            return None;
        }
        match self.scope.meaning(path, true) {
            Meaning::Known(segs) => durable_name(&segs),
            // A bare `sleep(..)` may be tokio's: never drawn as a step.
            Meaning::Unknown(_) => None,
        }
    }

    /// `orch::…(…)`: the primitive's node, or `false` when `call` is not one.
    fn primitive(&mut self, call: &ExprCall) -> bool {
        let Expr::Path(p) = &*call.func else {
            return false;
        };
        let Meaning::Known(segs) = self.scope.meaning(&p.path, true) else {
            return false;
        };
        let Some(name) = names::durable(&segs) else {
            return false;
        };
        let arg = |i: usize| call.args.iter().nth(i);
        match name {
            "sleep" | "sleep_until" => {
                call.args.iter().for_each(|a| self.visit_expr(a));
                let what = arg(0).map(|a| label(a, false)).unwrap_or_default();
                let label = if name == "sleep" {
                    what
                } else {
                    format!("until {what}")
                };
                self.out.push(Node::Sleep { label });
            }
            "signal" | "signal_with_timeout" => {
                call.args.iter().for_each(|a| self.visit_expr(a));
                let name_of = match arg(0).map(strip) {
                    Some(Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    })) => s.value(),
                    Some(other) => label(other, true),
                    None => String::new(),
                };
                self.out.push(Node::Signal {
                    name: name_of,
                    timeout: name == "signal_with_timeout",
                });
            }
            "background" => {
                let inner = self.nested(|s| call.args.iter().for_each(|a| s.future(a)));
                if significant(&inner) {
                    self.out.push(Node::Background(inner));
                }
            }
            "set_attribute" => {
                // Bookkeeping, not a step of the process: not drawn.
                call.args.iter().for_each(|a| self.visit_expr(a));
            }
            "set_status" => {
                call.args.iter().for_each(|a| self.visit_expr(a));
                let label = arg(0).map(|a| label(a, false)).unwrap_or_default();
                self.out.push(Node::Status { label });
            }
            "call_workflow" => {
                call.args.iter().for_each(|a| self.visit_expr(a));
                let ty = p.path.segments.last().and_then(|s| match &s.arguments {
                    syn::PathArguments::AngleBracketed(ab) => {
                        ab.args.iter().find_map(|a| match a {
                            syn::GenericArgument::Type(t) => Some(t.clone()),
                            _ => None,
                        })
                    }
                    _ => None,
                });
                if let Some(workflow) = ty {
                    self.out.push(Node::Child {
                        workflow: Ty(workflow),
                        may_fail: false,
                    });
                }
            }
            _ => call.args.iter().for_each(|a| self.visit_expr(a)),
        }
        true
    }

    fn branch(&mut self, label: String, arms: Vec<(String, Vec<Node>)>) {
        if arms.iter().any(|(_, body)| significant(body)) {
            self.out.push(Node::Branch { label, arms });
        }
    }

    /// `if`: the condition's calls run first; `else if` nests a branch in the `else` arm.
    fn if_expr(&mut self, e: &syn::ExprIf) {
        let (label, then_label) = match &*e.cond {
            Expr::Let(l) => {
                self.visit_expr(&l.expr);
                (
                    format!("if let {} = {}", pattern(&l.pat), label(&l.expr, true)),
                    "then",
                )
            }
            cond => {
                self.visit_expr(cond);
                (format!("if {}", label(cond, true)), "then")
            }
        };
        let then = self.nested(|s| s.block(&e.then_branch));
        let otherwise = match &e.else_branch {
            None => Vec::new(),
            Some((_, els)) => self.nested(|s| match &**els {
                Expr::Block(b) => s.block(&b.block),
                other => s.visit_expr(other),
            }),
        };
        self.branch(
            label,
            vec![
                (then_label.to_string(), then),
                ("else".to_string(), otherwise),
            ],
        );
    }

    fn match_expr(&mut self, m: &syn::ExprMatch) {
        self.visit_expr(&m.expr);
        let arms = m
            .arms
            .iter()
            .map(|arm| {
                let mut l = pattern(&arm.pat);
                if let Some((_, guard)) = &arm.guard {
                    l = format!("{l} if {}", label(guard, true));
                }
                let body = self.nested(|s| s.visit_expr(&arm.body));
                (l, body)
            })
            .collect();
        self.branch(format!("match {}", label(&m.expr, true)), arms);
    }

    fn repeat(&mut self, label: String, body: Vec<Node>) {
        if significant(&body) {
            self.out.push(Node::Loop { label, body });
        }
    }

    /// `join!(a, b, …)` and `try_join!`: each argument is an arm.
    fn join(&mut self, mac: &Macro) -> bool {
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        let args = mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated);
        let Ok(args) = args else {
            return false;
        };
        if name == "join" || name == "try_join" {
            let arms: Vec<Vec<Node>> = args
                .iter()
                .map(|a| self.nested(|s| s.future(a)))
                .filter(|a| significant(a))
                .collect();
            match arms.len() {
                0 => {}
                1 => self.out.extend(arms.into_iter().flatten()),
                _ => self.out.push(Node::Parallel(arms)),
            }
        } else {
            // Any other macro whose arguments are expressions (`vec!`, `println!`, …).
            args.iter().for_each(|a| self.visit_expr(a));
        }
        true
    }
}

impl<'ast> Visit<'ast> for Shape {
    fn visit_expr(&mut self, e: &'ast Expr) {
        match e {
            Expr::Await(a) => match strip(&a.base) {
                Expr::Call(call) if self.durable_name(call).is_some() => self.call(call, false),
                _ => visit::visit_expr(self, e),
            },
            Expr::Try(t) => {
                let before = self.out.len();
                self.visit_expr(&t.expr);
                if let Some(call) = awaited_call(&t.expr)
                    && self.out.len() > before
                {
                    let name = self.durable_name(call);
                    match self.out.last_mut() {
                        Some(Node::Call { name: n, may_fail }) if name.as_ref() == Some(n) => {
                            *may_fail = true
                        }
                        Some(Node::Child { may_fail, .. }) if is_call_workflow(call) => {
                            *may_fail = true
                        }
                        _ => {}
                    }
                }
            }
            Expr::Call(call) => {
                if !self.primitive(call) {
                    visit::visit_expr(self, e);
                }
            }
            Expr::If(i) => self.if_expr(i),
            Expr::Match(m) => self.match_expr(m),
            Expr::ForLoop(f) => {
                self.visit_expr(&f.expr);
                let body = self.nested(|s| s.block(&f.body));
                let l = format!("for {} in {}", pattern(&f.pat), label(&f.expr, true));
                self.repeat(l, body);
            }
            Expr::While(w) => {
                let (l, body) = match &*w.cond {
                    Expr::Let(lt) => (
                        format!("while let {} = {}", pattern(&lt.pat), label(&lt.expr, true)),
                        self.nested(|s| {
                            s.visit_expr(&lt.expr);
                            s.block(&w.body);
                        }),
                    ),
                    cond => (
                        format!("while {}", label(cond, true)),
                        self.nested(|s| {
                            s.visit_expr(cond);
                            s.block(&w.body);
                        }),
                    ),
                };
                self.repeat(l, body);
            }
            Expr::Loop(l) => {
                let body = self.nested(|s| s.block(&l.body));
                self.repeat("loop".to_string(), body);
            }
            Expr::Return(r) => {
                if let Some(v) = &r.expr {
                    self.visit_expr(v);
                }
                self.out.push(Node::Return);
            }
            Expr::Macro(m) => {
                if !self.join(&m.mac) {
                    visit::visit_expr(self, e);
                }
            }
            // Not run where written.
            Expr::Closure(_) => {}
            _ => visit::visit_expr(self, e),
        }
    }

    fn visit_local(&mut self, l: &'ast Local) {
        let Some(init) = &l.init else { return };
        self.visit_expr(&init.expr);
        if let Some((_, diverge)) = &init.diverge {
            let otherwise = self.nested(|s| s.visit_expr(diverge));
            self.branch(
                format!("let {} = {}", pattern(&l.pat), label(&init.expr, true)),
                vec![
                    (pattern(&l.pat), Vec::new()),
                    ("else".to_string(), otherwise),
                ],
            );
        }
    }

    fn visit_stmt_macro(&mut self, m: &'ast syn::StmtMacro) {
        self.join(&m.mac);
    }

    // Nested items are not part of this body.
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// `e` without parentheses and groups.
fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        Expr::Group(g) => strip(&g.expr),
        other => other,
    }
}

/// The call awaited in `call(…).await`, seen through method calls on the result
/// (`f(…).await.map_err(…)?`).
fn awaited_call(e: &Expr) -> Option<&ExprCall> {
    match strip(e) {
        Expr::Await(a) => match strip(&a.base) {
            Expr::Call(c) => Some(c),
            _ => None,
        },
        Expr::MethodCall(m) => awaited_call(&m.receiver),
        _ => None,
    }
}

fn is_call_workflow(call: &ExprCall) -> bool {
    matches!(strip(&call.func), Expr::Path(p)
        if p.path.segments.last().is_some_and(|s| s.ident == "call_workflow"))
}

/// Modules whose functions are not durable calls.
const NOT_DURABLE: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "futures",
    "futures_util",
    "async_std",
    "orch",
    "durable",
    "orch_runtime",
];

/// The name of a durable call at the path `segs`: its last segment, unless the path is a
/// primitive, a library function or a constructor.
fn durable_name(segs: &[String]) -> Option<String> {
    if segs.len() > 1
        && segs[..segs.len() - 1]
            .iter()
            .any(|s| NOT_DURABLE.contains(&s.as_str()))
    {
        return None;
    }
    let last = segs.last()?;
    // `Type::new(…)`, `Some(…)`, `Ok(…)`: constructors, not calls of a step.
    if last.starts_with(|c: char| c.is_uppercase()) {
        return None;
    }
    if segs.len() > 1 && segs[segs.len() - 2].starts_with(|c: char| c.is_uppercase()) {
        return None;
    }
    Some(last.clone())
}

/// Source text of an expression, compact: call arguments become `…`, `.await` is dropped.
fn label(e: &Expr, elide: bool) -> String {
    let mut e = e.clone();
    if elide {
        Elide.visit_expr_mut(&mut e);
    }
    shorten(&tidy(e.to_token_stream()).replace(ELLIPSIS, "…"))
}

fn pattern(p: &Pat) -> String {
    shorten(&tidy(p.to_token_stream()))
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= LABEL_MAX {
        return s.to_string();
    }
    let mut out: String = s.chars().take(LABEL_MAX - 1).collect();
    out.push('…');
    out
}

const ELLIPSIS: &str = "__orch_ellipsis";

/// Replaces call arguments by a placeholder and drops `.await`.
struct Elide;

impl VisitMut for Elide {
    fn visit_expr_mut(&mut self, e: &mut Expr) {
        visit_mut::visit_expr_mut(self, e);
        match e {
            Expr::Await(a) => *e = (*a.base).clone(),
            Expr::Call(c) => {
                // `orch::signal_with_timeout::<bool>(…)` reads as `signal_with_timeout(…)`.
                if let Expr::Path(p) = &mut *c.func
                    && let Some(last) = p.path.segments.last().cloned()
                    && last
                        .ident
                        .to_string()
                        .starts_with(|ch: char| ch.is_lowercase())
                {
                    p.path = syn::Path::from(last.ident);
                }
                if !c.args.is_empty() {
                    c.args = Punctuated::new();
                    c.args.push(syn::parse_quote!(__orch_ellipsis));
                }
            }
            Expr::MethodCall(m) if !m.args.is_empty() => {
                m.args = Punctuated::new();
                m.args.push(syn::parse_quote!(__orch_ellipsis));
            }
            Expr::Closure(_) | Expr::Block(_) | Expr::Async(_) => {
                *e = syn::parse_quote!(__orch_ellipsis);
            }
            _ => {}
        }
    }
}

/// How a token sits next to its neighbours.
#[derive(Clone, Copy)]
struct Gap {
    before: bool,
    after: bool,
}

/// Token text spaced as people write it (`f(&x).y > 3`, not `f (& x) . y > 3`).
fn tidy(ts: TokenStream) -> String {
    let mut out = String::new();
    let mut prev: Option<Gap> = None;
    let mut prev_word = false;
    let tokens: Vec<TokenTree> = ts.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        let (text, gap, word) = match &tokens[i] {
            TokenTree::Ident(id) => (
                id.to_string(),
                Gap {
                    before: true,
                    after: true,
                },
                true,
            ),
            TokenTree::Literal(l) => (
                l.to_string(),
                Gap {
                    before: true,
                    after: true,
                },
                true,
            ),
            TokenTree::Group(g) => {
                let inner = tidy(g.stream());
                match g.delimiter() {
                    Delimiter::Parenthesis => (
                        format!("({inner})"),
                        Gap {
                            before: !prev_word,
                            after: true,
                        },
                        true,
                    ),
                    Delimiter::Bracket => (
                        format!("[{inner}]"),
                        Gap {
                            before: !prev_word,
                            after: true,
                        },
                        true,
                    ),
                    Delimiter::Brace => (
                        if inner.is_empty() {
                            "{}".to_string()
                        } else {
                            format!("{{ {inner} }}")
                        },
                        Gap {
                            before: true,
                            after: true,
                        },
                        true,
                    ),
                    Delimiter::None => (
                        inner,
                        Gap {
                            before: true,
                            after: true,
                        },
                        true,
                    ),
                }
            }
            TokenTree::Punct(_) => {
                let mut op = String::new();
                while let Some(TokenTree::Punct(p)) = tokens.get(i) {
                    op.push(p.as_char());
                    if p.spacing() == Spacing::Alone
                        || !matches!(tokens.get(i + 1), Some(TokenTree::Punct(_)))
                    {
                        break;
                    }
                    i += 1;
                }
                let unary = !prev_word;
                let gap = match op.as_str() {
                    "." | "::" => Gap {
                        before: false,
                        after: false,
                    },
                    // `0..n`, but `{ a, .. }`.
                    ".." | "..=" => Gap {
                        before: !prev_word,
                        after: false,
                    },
                    "," | ";" | ":" | "?" => Gap {
                        before: false,
                        after: true,
                    },
                    "!" if prev_word => Gap {
                        before: false,
                        after: false,
                    },
                    "&" | "!" | "-" | "*" | "&&" if unary => Gap {
                        before: true,
                        after: false,
                    },
                    "'" | "#" => Gap {
                        before: true,
                        after: false,
                    },
                    _ => Gap {
                        before: true,
                        after: true,
                    },
                };
                let word = op == "?";
                (op, gap, word)
            }
        };
        if let Some(p) = prev
            && p.after
            && gap.before
        {
            out.push(' ');
        }
        out.push_str(&text);
        prev = Some(gap);
        prev_word = word;
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(body: &str) -> Vec<Node> {
        let block: Block = syn::parse_str(body).expect("a block");
        extract(&block)
    }

    fn call(name: &str, may_fail: bool) -> Node {
        Node::Call {
            name: name.into(),
            may_fail,
        }
    }

    #[test]
    fn labels_read_like_code() {
        let e: Expr = syn::parse_str("charge_payment(&order, placed.total_cents).await")
            .expect("an expression");
        assert_eq!(label(&e, true), "charge_payment(…)");
        let e: Expr =
            syn::parse_str("order.total_cents > 10_000 && !order.vip").expect("an expression");
        assert_eq!(label(&e, true), "order.total_cents > 10_000 && !order.vip");
        let p: Pat = syn::parse_quote!(Err(StepError {
            permanent: true,
            ..
        }));
        assert_eq!(pattern(&p), "Err(StepError { permanent: true, .. })");
        let e: Expr = syn::parse_str("order.items.iter().take(3)").expect("an expression");
        assert_eq!(label(&e, true), "order.items.iter().take(…)");
    }

    #[test]
    fn calls_in_evaluation_order_with_try_exits() {
        let s = shape(
            "{ let a = first(&x).await?; let b = second(helper(&a).await).await; \
               let c = third().await.map_err(Wrap)?; Ok(Some(c)) }",
        );
        assert_eq!(
            s,
            [
                call("first", true),
                call("helper", false),
                call("second", false),
                call("third", true)
            ]
        );
    }

    #[test]
    fn library_calls_and_constructors_are_not_durable() {
        let s = shape(
            "{ tokio::time::sleep(d).await; std::future::ready(1).await; Client::new().await; \
               Ok::<_, ()>(x); plain(1); }",
        );
        assert_eq!(s, []);
    }

    #[test]
    fn a_bare_hazard_name_is_never_a_step_and_a_use_in_the_body_is_followed() {
        // Imported outside the function: the macro cannot tell orch's sleep from tokio's.
        let s = shape("{ sleep(d).await; spawn(f); let t = now().await; charge().await; }");
        assert_eq!(s, [call("charge", false)]);
        let s = shape(
            "{ use orch_runtime::orch::{sleep, signal as wait}; use tokio::time::sleep_until;                sleep(d).await; let go: bool = wait(\"go\").await; sleep_until(t).await;                orch_runtime::durable::sleep(d).await; }",
        );
        assert_eq!(
            s,
            [
                Node::Sleep { label: "d".into() },
                Node::Signal {
                    name: "go".into(),
                    timeout: false
                },
                Node::Sleep { label: "d".into() },
            ]
        );
    }

    #[test]
    fn branches_without_durable_work_are_left_out() {
        let s = shape("{ let x = if a { 1 } else { 2 }; match y { A => f(), B => g() } }");
        assert_eq!(s, []);
    }

    #[test]
    fn let_else_is_a_branch() {
        let s = shape("{ let Some(x) = find().await else { cleanup().await; return Err(e); }; }");
        assert_eq!(
            s,
            [
                call("find", false),
                Node::Branch {
                    label: "let Some(x) = find()".into(),
                    arms: vec![
                        ("Some(x)".into(), vec![]),
                        ("else".into(), vec![call("cleanup", false), Node::Return]),
                    ],
                },
            ]
        );
    }
}
