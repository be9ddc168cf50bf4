//! Attribute arguments (`key = value, …`) and the checks shared by both macros.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, ItemFn, Lit, Meta, Pat, Token, Type};

/// Collects several errors and reports them together.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.add(syn::Error::new(span, msg));
    }
    pub fn add(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    pub fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `key = value` pairs, each key known to the caller.
pub struct Args {
    pub pairs: Vec<(Ident, Expr)>,
}

impl Args {
    pub fn parse(attr: TokenStream, known: &[&str], errors: &mut Errors) -> Args {
        let parsed = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr) {
            Ok(p) => p,
            Err(e) => {
                errors.push(
                    e.span(),
                    format!(
                        "expected `key = value` pairs separated by commas (keys: {}); {e}",
                        known.join(", ")
                    ),
                );
                return Args { pairs: Vec::new() };
            }
        };
        let mut pairs: Vec<(Ident, Expr)> = Vec::new();
        for meta in parsed {
            let nv = match meta {
                Meta::NameValue(nv) => nv,
                Meta::Path(p) => {
                    errors.push(
                        p.span(),
                        format!(
                            "options are `key = value` pairs (keys: {}); `{}` has no value",
                            known.join(", "),
                            p.to_token_stream()
                        ),
                    );
                    continue;
                }
                Meta::List(l) => {
                    errors.push(
                        l.path.span(),
                        format!(
                            "options are `key = value` pairs (keys: {}), not `key(...)`",
                            known.join(", ")
                        ),
                    );
                    continue;
                }
            };
            let Some(key) = nv.path.get_ident().cloned() else {
                errors.push(
                    nv.path.span(),
                    format!("unknown option; expected one of: {}", known.join(", ")),
                );
                continue;
            };
            let key_s = key.to_string();
            if !known.contains(&key_s.as_str()) {
                errors.push(
                    key.span(),
                    format!(
                        "unknown option `{key_s}`; expected one of: {}",
                        known.join(", ")
                    ),
                );
                continue;
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                errors.push(key.span(), format!("`{key_s}` is given twice"));
                continue;
            }
            pairs.push((key, nv.value));
        }
        Args { pairs }
    }

    pub fn get(&self, key: &str) -> Option<&Expr> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string-literal option.
    pub fn string(&self, key: &str, errors: &mut Errors) -> Option<(String, Span)> {
        let expr = self.get(key)?;
        if let Expr::Lit(l) = expr
            && let Lit::Str(s) = &l.lit
        {
            return Some((s.value(), s.span()));
        }
        errors.push(
            expr.span(),
            format!("`{key}` takes a string literal, e.g. {key} = \"...\""),
        );
        None
    }

    /// An identifier option (`handle = CheckoutFlow`).
    pub fn ident(&self, key: &str, errors: &mut Errors) -> Option<Ident> {
        let expr = self.get(key)?;
        if let Expr::Path(p) = expr
            && let Some(id) = p.path.get_ident()
        {
            return Some(id.clone());
        }
        errors.push(
            expr.span(),
            format!("`{key}` takes a type name, e.g. {key} = CheckoutFlow (no quotes)"),
        );
        None
    }

    /// The path to the runtime crate (`crate = "…"`, default `::orch_runtime`).
    pub fn krate(&self, errors: &mut Errors) -> TokenStream {
        match self.string("crate", errors) {
            Some((s, span)) => match syn::parse_str::<syn::Path>(&s) {
                Ok(p) => p.to_token_stream(),
                Err(_) => {
                    errors.push(span, format!("`crate = \"{s}\"` is not a path"));
                    quote!(::orch_runtime)
                }
            },
            None => quote!(::orch_runtime),
        }
    }
}

/// Qualifiers and shapes neither macro can carry over: `const`, `unsafe`, `extern`, variadic
/// parameters, an `impl Trait` output.
pub fn signature(func: &ItemFn, kind: &str, errors: &mut Errors) {
    let sig = &func.sig;
    if let Some(c) = &sig.constness {
        errors.push(
            c.span(),
            format!("a {kind} cannot be `const`: remove `const`"),
        );
    }
    if let Some(u) = &sig.unsafety {
        errors.push(
            u.span(),
            format!(
                "a {kind} cannot be `unsafe fn`: remove `unsafe` and use an `unsafe {{ … }}` \
                 block inside"
            ),
        );
    }
    if let Some(abi) = &sig.abi {
        errors.push(
            abi.extern_token.span(),
            format!("a {kind} cannot have an `extern` ABI: remove it"),
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push(
            v.dots.spans[0],
            format!("a {kind} cannot be variadic: take a `Vec` or a slice instead"),
        );
    }
    if let syn::ReturnType::Type(_, ty) = &sig.output
        && let Type::ImplTrait(t) = &**ty
    {
        errors.push(
            t.impl_token.span,
            format!(
                "a {kind}'s output is journaled as JSON, so it needs a concrete serde type, \
                 not `impl Trait`"
            ),
        );
    }
}

/// One typed parameter: the name used to pass it on, its pattern and type.
pub struct Param {
    pub name: Ident,
    pub pat: Pat,
    pub ty: Type,
}

/// Reads the parameters; receivers are refused (the caller says why).
pub fn params(func: &ItemFn, kind: &str, errors: &mut Errors) -> Vec<Param> {
    let mut out = Vec::new();
    for (i, arg) in func.sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => errors.push(
                r.span(),
                format!(
                    "a {kind} must be a free function, not a method: move it out of the impl block"
                ),
            ),
            FnArg::Typed(pt) => {
                let name = match &*pt.pat {
                    Pat::Ident(pi) => pi.ident.clone(),
                    _ => Ident::new(&format!("__orch_arg{i}"), pt.pat.span()),
                };
                out.push(Param {
                    name,
                    pat: (*pt.pat).clone(),
                    ty: (*pt.ty).clone(),
                });
            }
        }
    }
    out
}

/// `Result<T, E>` → `Some((T, E))` when the type is spelled as a two-argument `Result`.
pub fn result_types(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(tp) = ty else { return None };
    let last = tp.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(ab) = &last.arguments else {
        return None;
    };
    let types: Vec<&Type> = ab
        .args
        .iter()
        .filter_map(|a| match a {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    match types.as_slice() {
        [t, e] => Some(((*t).clone(), (*e).clone())),
        _ => None,
    }
}

/// The JSON Schema of a workflow's or step's return type (`TypeSchema::of`, which is also the
/// check that it has one). A `Result<T, E>` is described from `T` and `E`, so a missing schema
/// is reported on `T` or `E` with orch's message (through `Result`'s own impl rustc reports the
/// bare trait bound).
pub fn output_schema(ret: &Type, krate: &TokenStream) -> TokenStream {
    match result_types(ret) {
        Some((t, e)) => {
            let t = quote_spanned!(t.span()=> #t);
            let e = quote_spanned!(e.span()=> #e);
            quote_spanned!(ret.span()=> #krate::__private::TypeSchema::result::<#t, #e>())
        }
        None => quote_spanned!(ret.span()=> #krate::__private::TypeSchema::of::<#ret>()),
    }
}

/// `Result<T, E>` → `Some(E)` when the type is spelled as a two-argument `Result`.
pub fn result_error_type(ty: &Type) -> Option<Type> {
    result_types(ty).map(|(_, e)| e)
}

/// The declared return type, `()` when omitted.
pub fn return_type(func: &ItemFn) -> Type {
    match &func.sig.output {
        syn::ReturnType::Default => syn::parse_quote!(()),
        syn::ReturnType::Type(_, ty) => (**ty).clone(),
    }
}
