//! The signals a workflow body waits for: `orch::signal::<T>("name")` and
//! `orch::signal_with_timeout::<T>("name", d)`, with the payload type from the turbofish or
//! from a `let` annotation (`let ok: bool = orch::signal("approve").await;`). Recorded in the
//! workflow's definition so a payload that does not fit is refused when it is sent.

use crate::names::{self, Meaning, Scope};
use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{Expr, ExprCall, GenericArgument, ItemFn, Lit, PathArguments, Type};

/// One wait: the signal's name and, when the macro can tell, its payload type.
pub struct Wait {
    name: String,
    ty: Option<Type>,
}

/// Every wait with a literal name in `func`'s body (closures and async blocks included,
/// nested items not), without repeats.
pub fn collect(func: &ItemFn) -> Vec<Wait> {
    let mut c = Collect {
        scope: Scope::of(func),
        hint: None,
        out: Vec::new(),
    };
    c.visit_block(&func.block);
    c.out
}

/// The waits as `SignalDef` constructors.
pub fn tokens(waits: &[Wait], krate: &TokenStream) -> TokenStream {
    let defs = waits.iter().map(|w| {
        let name = &w.name;
        match &w.ty {
            // Spanned at the type: one without a JSON Schema is reported there.
            Some(ty) => {
                quote_spanned!(ty.span()=> #krate::__private::SignalDef::typed::<#ty>(#name))
            }
            None => quote!(#krate::__private::SignalDef::untyped(#name)),
        }
    });
    quote!(&[#(#defs),*])
}

struct Collect {
    scope: Scope,
    /// The type annotated on the `let` whose initializer is being visited.
    hint: Option<(*const ExprCall, Type)>,
    out: Vec<Wait>,
}

impl Collect {
    /// `orch::signal` or `orch::signal_with_timeout` (true for the latter), if `call` is one.
    fn primitive(&self, call: &ExprCall) -> Option<bool> {
        let Expr::Path(p) = &*call.func else {
            return None;
        };
        let Meaning::Known(segs) = self.scope.meaning(&p.path, true) else {
            return None;
        };
        match names::durable(&segs)? {
            "signal" => Some(false),
            "signal_with_timeout" => Some(true),
            _ => None,
        }
    }
}

/// The call in `e`, seen through `.await` and parentheses.
fn called(e: &Expr) -> Option<&ExprCall> {
    match e {
        Expr::Await(a) => called(&a.base),
        Expr::Paren(p) => called(&p.expr),
        Expr::Call(c) => Some(c),
        _ => None,
    }
}

/// `T` of `Option<T>`.
fn option_inner(ty: &Type) -> Option<Type> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(ab) = &last.arguments else {
        return None;
    };
    match ab.args.first()? {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

/// Whether a type says something (not `_`, not `impl Trait`).
fn concrete(ty: &Type) -> bool {
    !matches!(ty, Type::Infer(_) | Type::ImplTrait(_))
}

impl<'ast> Visit<'ast> for Collect {
    fn visit_item(&mut self, _: &'ast syn::Item) {}

    fn visit_local(&mut self, l: &'ast syn::Local) {
        if let (syn::Pat::Type(pt), Some(init)) = (&l.pat, &l.init)
            && let Some(call) = called(&init.expr)
        {
            self.hint = Some((call as *const ExprCall, (*pt.ty).clone()));
        }
        visit::visit_local(self, l);
        self.hint = None;
    }

    fn visit_expr_call(&mut self, call: &'ast ExprCall) {
        if let Some(timeout) = self.primitive(call)
            && let Some(Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            })) = call.args.first()
        {
            let turbofish = match &*call.func {
                Expr::Path(p) => p.path.segments.last().and_then(|s| match &s.arguments {
                    PathArguments::AngleBracketed(ab) => ab.args.iter().find_map(|a| match a {
                        GenericArgument::Type(t) => Some(t.clone()),
                        _ => None,
                    }),
                    _ => None,
                }),
                _ => None,
            };
            let annotated = self
                .hint
                .as_ref()
                .filter(|(at, _)| std::ptr::eq(*at, call))
                .and_then(|(_, ty)| {
                    if timeout {
                        option_inner(ty)
                    } else {
                        Some(ty.clone())
                    }
                });
            let ty = turbofish.or(annotated).filter(concrete);
            let wait = Wait {
                name: s.value(),
                ty,
            };
            let same = |w: &Wait| {
                w.name == wait.name
                    && w.ty.as_ref().map(|t| t.to_token_stream().to_string())
                        == wait.ty.as_ref().map(|t| t.to_token_stream().to_string())
            };
            if !self.out.iter().any(same) {
                self.out.push(wait);
            }
        }
        visit::visit_expr_call(self, call);
    }
}
