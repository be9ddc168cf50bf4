//! `#[step]`: parse → validate → generate.

use crate::args::{self, Args, Errors, Param};
use crate::checks;
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, ItemFn, Type};

const OPTIONS: &[&str] = &["name", "retry", "timeout", "queue", "crate"];

struct Step {
    func: ItemFn,
    name: String,
    params: Vec<Param>,
    ret: Type,
    error: Option<Type>,
    retry: Option<Expr>,
    timeout: Option<Expr>,
    /// `queue = "…"`: each attempt is a task on this queue, run by a worker.
    queue: Option<String>,
    krate: TokenStream,
}

pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        // Not a function (or unparsable): let rustc report the user's own tokens.
        Err(e) => {
            let err = syn::Error::new(e.span(), "#[step] goes on an `async fn`").to_compile_error();
            return quote!(#err #item);
        }
    };
    let body = checks::step(&func);
    let func = checks::strip_opt_outs(func);
    match parse(attr, &func) {
        Ok(step) => checks::report(body, generate(&step)),
        Err(e) => checks::report(Err(checks::join(e, body)), quote!(#func)),
    }
}

fn parse(attr: TokenStream, func: &ItemFn) -> Result<Step, syn::Error> {
    let mut errors = Errors::default();
    let args = Args::parse(attr, OPTIONS, &mut errors);
    if func.sig.asyncness.is_none() {
        errors.push(
            func.sig.fn_token.span(),
            "#[step] goes on an `async fn`: add `async`",
        );
    }
    args::signature(func, "step", &mut errors);
    let params = args::params(func, "step", &mut errors);
    for p in &params {
        if let Type::ImplTrait(t) = &p.ty {
            errors.push(
                t.impl_token.span,
                "step arguments are cloned for each attempt, so they need a nameable type, not \
                 `impl Trait`: add a generic parameter (`fn f<T: Trait + Clone>(x: T)`) or take \
                 a reference",
            );
        }
    }
    let name = args
        .string("name", &mut errors)
        .map(|(s, _)| s)
        .unwrap_or_else(|| func.sig.ident.to_string());
    let krate = args.krate(&mut errors);
    let queue = args.string("queue", &mut errors);
    if let Some((q, span)) = &queue {
        check_queue_name(q, *span, &mut errors);
        if !func.sig.generics.params.is_empty() {
            errors.push(
                func.sig.generics.span(),
                "a queued step cannot be generic: its workers must know the argument and \
                 output types; use concrete types",
            );
        }
        for p in &params {
            if let Type::Reference(r) = &p.ty {
                errors.push(
                    r.and_token.span,
                    "a queued step's arguments travel to its worker as JSON, so they cannot be \
                     references: take an owned value (`String`, not `&str`)",
                );
            }
        }
    }
    errors.finish()?;
    let ret = args::return_type(func);
    if let Type::Path(tp) = &ret
        && let Some(last) = tp.path.segments.last()
        && last.ident == "Result"
        && let syn::PathArguments::AngleBracketed(ab) = &last.arguments
        && ab.args.len() == 1
    {
        return Err(syn::Error::new_spanned(
            &ret,
            "spell the step's return type as `Result<T, E>`: through a one-argument alias \
             #[step] cannot see the error type, so errors would be taken as success and never \
             retried",
        ));
    }
    Ok(Step {
        error: args::result_error_type(&ret),
        ret,
        name,
        params,
        retry: args.get("retry").cloned(),
        timeout: args.get("timeout").cloned(),
        queue: queue.map(|(q, _)| q),
        krate,
        func: func.clone(),
    })
}

/// The rule of `orch_runtime::store::task::check_queue`, checked at compile time.
fn check_queue_name(name: &str, span: proc_macro2::Span, errors: &mut Errors) {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 64 || !ok_chars {
        errors.push(
            span,
            format!("`{name}` is not a queue name: use 1 to 64 letters, digits, `.`, `_` and `-`"),
        );
    }
}

fn generate(step: &Step) -> TokenStream {
    let Step {
        func,
        name,
        params,
        ret,
        error,
        retry,
        timeout,
        queue,
        krate,
    } = step;
    let attrs = &func.attrs;
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let generics = &func.sig.generics;
    let where_clause = &generics.where_clause;
    let block = &func.block;
    let body_ident = format_ident!("__orch_step_body");
    let body_params = body_params(params);
    let outer_params = outer_params(params);
    // Each attempt gets its own copy of the arguments; references copy for free.
    let clones = params.iter().map(|p| {
        let (name, ty) = (&p.name, &p.ty);
        quote_spanned!(ty.span()=> #krate::__private::clone_arg::<#ty>(&#name))
    });
    let retry = match retry {
        Some(e) => {
            quote_spanned!(e.span()=> { let __orch_retry: #krate::__private::Retry = #e; __orch_retry })
        }
        None => quote!(<#krate::__private::Retry as ::core::default::Default>::default()),
    };
    let timeout = match timeout {
        Some(e) => {
            quote_spanned!(e.span()=> ::core::option::Option::Some({ let __orch_timeout: ::core::time::Duration = #e; __orch_timeout }))
        }
        None => quote!(::core::option::Option::None),
    };
    let policy = match error {
        Some(err_ty) => quote! {
            #krate::__private::ErrorPolicy::<#ret> {
                judge: |__orch_r: &#ret| match __orch_r {
                    ::core::result::Result::Ok(_) => ::core::option::Option::None,
                    ::core::result::Result::Err(__orch_e) => {
                        #[allow(unused_imports)]
                        use #krate::__private::{ViaAlwaysRetry as _, ViaDisplay as _, ViaJson as _, ViaRetryable as _};
                        ::core::option::Option::Some((
                            (&#krate::__private::Probe(__orch_e)).__orch_describe(),
                            (&#krate::__private::Probe(__orch_e)).__orch_retryable(),
                        ))
                    }
                },
                rescue: |__orch_f| {
                    #[allow(unused_imports)]
                    use #krate::__private::{ViaFrom as _, ViaNoFrom as _};
                    (&#krate::__private::RescueProbe::<#err_ty>::new())
                        .__orch_rescue(__orch_f)
                        .map(::core::result::Result::Err)
                },
            }
        },
        None => quote! {
            #krate::__private::ErrorPolicy::<#ret> {
                judge: |_| ::core::option::Option::None,
                rescue: |_| ::core::option::Option::None,
            }
        },
    };
    let serde_check = if generics.params.is_empty() {
        quote_spanned!(ret.span()=> #krate::__private::assert_serde::<#ret>();)
    } else {
        quote!()
    };
    let fn_token = &func.sig.fn_token;
    let arg_types = params.iter().map(|p| {
        // The key a worker reads the argument under: the parameter's name (`arg<i>` for a
        // destructuring pattern), without `r#`.
        let name = p.name.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name);
        let name = name.strip_prefix("__orch_").unwrap_or(name);
        let ty = &p.ty;
        quote_spanned!(ty.span()=> (#name, #krate::__private::TypeSchema::of::<#ty>()))
    });
    let output_type = args::output_schema(ret, krate);
    // The step's JSON Schemas, registered for the API's definitions (queued or not).
    let step_def = quote! {
        const _: () = {
            const __ORCH_ARG_TYPES: &[(&str, #krate::__private::TypeSchema)] = &[#(#arg_types),*];
            const __ORCH_OUTPUT_TYPE: #krate::__private::TypeSchema = #output_type;
            #krate::__private::inventory::submit! {
                #krate::__private::StepDef {
                    name: #name,
                    args: __ORCH_ARG_TYPES,
                    output: __ORCH_OUTPUT_TYPE,
                }
            }
        };
    };
    let clones: Vec<TokenStream> = clones.collect();
    let names: Vec<&syn::Ident> = params.iter().map(|p| &p.name).collect();
    let tys: Vec<&Type> = params.iter().map(|p| &p.ty).collect();
    let mock_fn = quote! {
        dyn ::core::ops::Fn(#(#tys),*) -> ::core::option::Option<#krate::__private::BoxFuture<'static, #ret>>
            + ::core::marker::Send + ::core::marker::Sync
    };
    let doubles = doubles(ident, &func.vis, name, &names, &tys, ret, &mock_fn, krate);
    if let Some(queue) = queue {
        let queued = Queued {
            clones: &clones,
            mock_fn: &mock_fn,
            doubles: &doubles,
            name,
            queue,
            params,
            ret,
            policy: &policy,
            retry: &retry,
            timeout: &timeout,
            serde_check: &serde_check,
            step_def: &step_def,
            krate,
        };
        return generate_queued(func, &queued);
    }
    // Generic steps get no test doubles: the double's type would need the generics.
    if !generics.params.is_empty() {
        return quote! {
            #(#attrs)*
            #vis #fn_token #ident #generics (#(#outer_params),*) -> impl ::core::future::Future<Output = #ret> #where_clause {
                let __orch_call = #krate::__private::begin_step(#name);
                async move {
                    #[allow(clippy::all, unused_mut)]
                    async fn #body_ident #generics (#(#body_params),*) -> #ret #where_clause #block
                    let __orch_options = #krate::__private::StepOptions { retry: #retry, timeout: #timeout };
                    #krate::__private::run_step(
                        __orch_call,
                        __orch_options,
                        || #body_ident(#(#clones),*),
                        #policy,
                    ).await
                }
            }
        };
    }
    quote! {
        #(#attrs)*
        #vis #fn_token #ident (#(#outer_params),*) -> impl ::core::future::Future<Output = #ret> {
            let __orch_call = #krate::__private::begin_step(#name);
            async move {
                #serde_check
                #[allow(clippy::all, unused_mut)]
                async fn #body_ident (#(#body_params),*) -> #ret #block
                let __orch_options = #krate::__private::StepOptions { retry: #retry, timeout: #timeout };
                let __orch_mock = #krate::__private::find_mock::<#ident, #mock_fn>(&__orch_call);
                #krate::__private::run_step(
                    __orch_call,
                    __orch_options,
                    || match &__orch_mock {
                        ::core::option::Option::Some(__orch_m) => match __orch_m(#(#clones),*) {
                            ::core::option::Option::Some(__orch_f) => #krate::__private::Either::Left(__orch_f),
                            ::core::option::Option::None => #krate::__private::Either::Right(#body_ident(#(#clones),*)),
                        },
                        ::core::option::Option::None => #krate::__private::Either::Right(#body_ident(#(#clones),*)),
                    },
                    #policy,
                ).await
            }
        }

        #step_def

        #doubles
    }
}

/// The step's twin type and its test doubles (`step::mock(…)`, `step::fail_first(…)`), for
/// local and queued steps alike.
#[allow(clippy::too_many_arguments)]
fn doubles(
    ident: &syn::Ident,
    vis: &syn::Visibility,
    name: &str,
    names: &[&syn::Ident],
    tys: &[&Type],
    ret: &Type,
    mock_fn: &TokenStream,
    krate: &TokenStream,
) -> TokenStream {
    let twin_doc = format!(
        "Test doubles for step `{name}` (see `orch_runtime::testing`): \
         `{ident}::mock(…)` replaces it, `{ident}::fail_first(k, …)` fails its first k attempts."
    );
    quote! {
        #[doc = #twin_doc]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #ident {}

        #[allow(dead_code)]
        impl #ident {
            /// Replaces the step by `mock` (same arguments, same output) in a test runtime.
            #vis fn mock<__OrchM, __OrchF>(__orch_double: __OrchM) -> #krate::__private::MockEntry
            where
                __OrchM: ::core::ops::Fn(#(#tys),*) -> __OrchF + ::core::marker::Send + ::core::marker::Sync + 'static,
                __OrchF: ::core::future::Future<Output = #ret> + ::core::marker::Send + 'static,
            {
                let __orch_call: ::std::sync::Arc<#mock_fn> = ::std::sync::Arc::new(
                    move |#(#names: #tys),*| ::core::option::Option::Some(
                        ::std::boxed::Box::pin(__orch_double(#(#names),*)) as #krate::__private::BoxFuture<'static, #ret>
                    ),
                );
                #krate::__private::MockEntry::new::<#ident, #mock_fn>(#name, __orch_call)
            }

            /// Makes the first `attempts` attempts of the step return `failure()`; later
            /// attempts run the real step.
            #vis fn fail_first<__OrchE>(__orch_attempts: u32, __orch_failure: __OrchE) -> #krate::__private::MockEntry
            where
                __OrchE: ::core::ops::Fn() -> #ret + ::core::marker::Send + ::core::marker::Sync + 'static,
            {
                let __orch_seen = ::std::sync::atomic::AtomicU32::new(0);
                let __orch_call: ::std::sync::Arc<#mock_fn> = ::std::sync::Arc::new(
                    move |#(_: #tys),*| {
                        if __orch_seen.fetch_add(1, ::std::sync::atomic::Ordering::SeqCst) < __orch_attempts {
                            let __orch_v = __orch_failure();
                            ::core::option::Option::Some(::std::boxed::Box::pin(async move { __orch_v })
                                as #krate::__private::BoxFuture<'static, #ret>)
                        } else {
                            ::core::option::Option::None
                        }
                    },
                );
                #krate::__private::MockEntry::new::<#ident, #mock_fn>(#name, __orch_call)
            }
        }
    }
}

/// `pattern: Type` for each parameter: the body's signature (as the user wrote it).
fn body_params(params: &[Param]) -> Vec<TokenStream> {
    params
        .iter()
        .map(|p| {
            let (pat, ty) = (&p.pat, &p.ty);
            quote!(#pat: #ty)
        })
        .collect()
}

/// `name: Type` for each parameter: the generated function's signature.
fn outer_params(params: &[Param]) -> Vec<TokenStream> {
    params
        .iter()
        .map(|p| {
            let (name, ty) = (&p.name, &p.ty);
            quote!(#name: #ty)
        })
        .collect()
}

/// What a queued step's code is made of.
struct Queued<'a> {
    clones: &'a [TokenStream],
    mock_fn: &'a TokenStream,
    doubles: &'a TokenStream,
    name: &'a str,
    queue: &'a str,
    params: &'a [Param],
    ret: &'a Type,
    policy: &'a TokenStream,
    retry: &'a TokenStream,
    timeout: &'a TokenStream,
    serde_check: &'a TokenStream,
    step_def: &'a TokenStream,
    krate: &'a TokenStream,
}

/// A step whose attempts are tasks on a queue: the call enqueues the arguments as one JSON
/// object and waits for a worker's end; the step's body is registered for workers
/// (`orch_runtime::worker::QueuedStep`), which call the step outside a workflow (so its body
/// runs there).
fn generate_queued(func: &ItemFn, q: &Queued<'_>) -> TokenStream {
    let Queued {
        clones,
        mock_fn,
        doubles,
        name,
        queue,
        params,
        ret,
        policy,
        retry,
        timeout,
        serde_check,
        step_def,
        krate,
    } = q;
    let attrs = &func.attrs;
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let fn_token = &func.sig.fn_token;
    let block = &func.block;
    let body_ident = format_ident!("__orch_step_body");
    let body_params = body_params(params);
    let outer_params = outer_params(params);
    let names: Vec<&syn::Ident> = params.iter().map(|p| &p.name).collect();
    let tys: Vec<&Type> = params.iter().map(|p| &p.ty).collect();
    let keys: Vec<String> = params
        .iter()
        .map(|p| {
            let n = p.name.to_string();
            n.strip_prefix("r#").unwrap_or(&n).to_string()
        })
        .collect();
    let q = quote!(#krate::__private::queued);
    // The worker's locals must not shadow the step's own function (a parameter may share its
    // name).
    let locals: Vec<syn::Ident> = (0..params.len())
        .map(|i| format_ident!("__orch_arg_{}", i))
        .collect();
    quote! {
        #(#attrs)*
        #vis #fn_token #ident (#(#outer_params),*) -> impl ::core::future::Future<Output = #ret> {
            let __orch_call = #krate::__private::begin_step(#name);
            async move {
                #serde_check
                #[allow(clippy::all, unused_mut)]
                async fn #body_ident (#(#body_params),*) -> #ret #block
                let __orch_options = #krate::__private::StepOptions { retry: #retry, timeout: #timeout };
                let __orch_input: ::core::result::Result<::std::string::String, ::std::string::String> = (|| {
                    #[allow(unused_mut)]
                    let mut __orch_args = #q::Args::default();
                    #( __orch_args.put(#keys, &#names)?; )*
                    ::core::result::Result::Ok(__orch_args.json())
                })();
                let __orch_mock = #krate::__private::find_mock::<#ident, #mock_fn>(&__orch_call);
                #krate::__private::run_queued_step(
                    __orch_call,
                    __orch_options,
                    #queue,
                    __orch_input,
                    async || #body_ident(#(#clones),*).await,
                    || match &__orch_mock {
                        ::core::option::Option::Some(__orch_m) => __orch_m(#(#clones),*),
                        ::core::option::Option::None => ::core::option::Option::None,
                    },
                    #policy,
                ).await
            }
        }

        #step_def

        #doubles

        const _: () = {
            fn __orch_serve(
                __orch_input: ::std::string::String,
            ) -> #krate::__private::BoxFuture<'static, ::core::result::Result<::std::string::String, (::std::string::String, bool)>> {
                ::std::boxed::Box::pin(async move {
                    #[allow(unused_mut)]
                    let mut __orch_args = #q::Args::parse(&__orch_input, #name)?;
                    #( let #locals: #tys = __orch_args.take(#keys, #name)?; )*
                    let __orch_out = #ident(#(#locals),*).await;
                    #q::output(&__orch_out, #name)
                })
            }
            #krate::__private::inventory::submit! {
                #krate::__private::QueuedStep { name: #name, queue: #queue, run: __orch_serve }
            }
        };
    }
}
