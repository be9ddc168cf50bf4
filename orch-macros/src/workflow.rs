//! `#[workflow]`: parse → validate → generate.

use crate::args::{self, Args, Errors, Param};
use crate::{checks, shape, signals, version};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, Type};

const OPTIONS: &[&str] = &["name", "handle", "crate"];

struct Workflow {
    func: ItemFn,
    name: String,
    marker: Ident,
    params: Vec<Param>,
    ret: Type,
    is_result: bool,
    version: String,
    krate: TokenStream,
}

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let err =
                syn::Error::new(e.span(), "#[workflow] goes on an `async fn`").to_compile_error();
            return quote!(#err #item);
        }
    };
    let body = checks::workflow(&func);
    let func = checks::strip_opt_outs(func);
    match parse(attr, &func) {
        Ok(wf) => checks::report(body, generate(&wf)),
        Err(e) => checks::report(Err(checks::join(e, body)), quote!(#func)),
    }
}

fn pascal_case(s: &str) -> String {
    s.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

fn parse(attr: TokenStream, func: &ItemFn) -> Result<Workflow, syn::Error> {
    let mut errors = Errors::default();
    let args = Args::parse(attr, OPTIONS, &mut errors);
    if func.sig.asyncness.is_none() {
        errors.push(
            func.sig.fn_token.span(),
            "#[workflow] goes on an `async fn`: add `async`",
        );
    }
    if !func.sig.generics.params.is_empty() {
        errors.push(
            func.sig.generics.span(),
            "a workflow cannot be generic: the runtime must know its input and output types to \
             resume it; write one workflow per concrete type",
        );
    }
    args::signature(func, "workflow", &mut errors);
    let params = args::params(func, "workflow", &mut errors);
    for p in &params {
        if let Type::Reference(r) = &p.ty {
            errors.push(
                r.span(),
                "workflow inputs are stored with the instance, so they are taken by value: \
                 remove the `&`",
            );
        }
        if let Type::ImplTrait(t) = &p.ty {
            errors.push(
                t.span(),
                "workflow inputs need a concrete serde type, not `impl Trait`",
            );
        }
    }
    let name = match args.string("name", &mut errors) {
        Some((s, span)) => {
            if s.is_empty() {
                errors.push(span, "the workflow name cannot be empty");
            }
            s
        }
        None => func.sig.ident.to_string(),
    };
    let krate = args.krate(&mut errors);
    let handle = args.ident("handle", &mut errors);
    errors.finish()?;
    let ret = args::return_type(func);
    let marker = handle.unwrap_or_else(|| {
        Ident::new(
            &pascal_case(&func.sig.ident.to_string()),
            func.sig.ident.span(),
        )
    });
    Ok(Workflow {
        is_result: args::result_error_type(&ret).is_some(),
        ret,
        name,
        marker,
        params,
        version: version::of(func),
        krate,
        func: func.clone(),
    })
}

fn generate(wf: &Workflow) -> TokenStream {
    let Workflow {
        func,
        name,
        marker,
        params,
        ret,
        is_result,
        version,
        krate,
    } = wf;
    let attrs = &func.attrs;
    let vis = &func.vis;
    let ident = &func.sig.ident;
    // (name, type as written) of each argument, for the API's definition view.
    let arg_docs: Vec<TokenStream> = params
        .iter()
        .map(|p| {
            let name = p.name.to_string();
            let ty = quote::ToTokens::to_token_stream(&p.ty).to_string();
            quote::quote! { (#name, #ty) }
        })
        .collect();
    let block = &func.block;
    let body_ident = format_ident!("__orch_workflow_{}", ident);
    let names: Vec<&Ident> = params.iter().map(|p| &p.name).collect();
    let tys: Vec<&Type> = params.iter().map(|p| &p.ty).collect();
    let outer_params = params.iter().map(|p| {
        let (n, t) = (&p.name, &p.ty);
        quote!(#n: #t)
    });
    let body_params = params.iter().map(|p| {
        let (pat, ty) = (&p.pat, &p.ty);
        quote!(#pat: #ty)
    });
    let (input_ty, input_expr, input_pat) = match params.len() {
        1 => (quote!(#(#tys)*), quote!(#(#names)*), quote!(#(#names)*)),
        _ => (
            quote!((#(#tys,)*)),
            quote!((#(#names,)*)),
            quote!((#(#names,)*)),
        ),
    };
    let succeeded = if *is_result {
        quote!(output.is_ok())
    } else {
        quote!({
            let _ = output;
            true
        })
    };
    let checks = tys
        .iter()
        .map(|t| quote_spanned!(t.span()=> #krate::__private::assert_serde::<#t>();))
        .chain(std::iter::once(
            quote_spanned!(ret.span()=> #krate::__private::assert_serde::<#ret>();),
        ));
    // Each type's JSON Schema; `TypeSchema::of` is also the check that it has one, reported
    // on the user's type.
    let arg_types = tys
        .iter()
        .map(|t| quote_spanned!(t.span()=> #krate::__private::TypeSchema::of::<#t>()));
    let output_type = args::output_schema(ret, krate);
    let marker_doc = format!(
        "The workflow `{name}` (from `fn {ident}`): pass it to `Runtime::start` to run it durably."
    );
    let fn_token = &func.sig.fn_token;
    let box_body = quote_spanned!(ident.span()=> ::std::boxed::Box::pin(#body_ident(#(#names),*)));
    let shape = shape::generate(func, krate);
    let signal_defs = signals::tokens(&signals::collect(func), krate);
    let signals_doc =
        format!("The signals `{name}`'s body waits for (literal names), with their payload types.");
    let shape_doc = format!("The static shape of `{name}`'s body, drawn by `orch_runtime::graph`.");
    quote! {
        #(#attrs)*
        #vis #fn_token #ident(#(#outer_params),*) -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send + 'static {
            #krate::__private::call_workflow::<#marker>(#input_expr)
        }

        #[doc = #marker_doc]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #marker;

        #[allow(clippy::all, unused_mut)]
        async fn #body_ident(#(#body_params),*) -> #ret #block

        const _: () = {
            #[allow(dead_code)]
            fn __orch_static_checks() {
                #(#checks)*
            }

            impl #krate::__private::Workflow for #marker {
                type Input = #input_ty;
                type Output = #ret;
                const NAME: &'static str = #name;
                const VERSION: &'static str = #version;
                fn run(input: Self::Input) -> #krate::__private::BoxFuture<'static, Self::Output> {
                    let #input_pat = input;
                    // Spanned at the fn's name: a body that is not `Send` is reported there.
                    #box_body
                }
                fn succeeded(output: &Self::Output) -> bool {
                    #succeeded
                }
            }

            impl #marker {
                #[doc = #shape_doc]
                pub const SHAPE: &'static #krate::__private::Node = &#shape;
                #[doc = #signals_doc]
                pub const SIGNALS: &'static [#krate::__private::SignalDef] = #signal_defs;
            }

            const __ORCH_ARG_TYPES: &[#krate::__private::TypeSchema] = &[#(#arg_types),*];
            const __ORCH_OUTPUT_TYPE: #krate::__private::TypeSchema = #output_type;

            #krate::__private::inventory::submit! {
                #krate::__private::WorkflowDef::of::<#marker>()
                    .with_types(__ORCH_ARG_TYPES, __ORCH_OUTPUT_TYPE)
                    .with_shape(#marker::SHAPE)
                    .with_args(&[#(#arg_docs),*])
                    .with_signals(#marker::SIGNALS)
            }
        };
    }
}
