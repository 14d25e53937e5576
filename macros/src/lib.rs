//! `#[dbscope::test]`: the attribute of dbscope's testing toolkit. Use it through dbscope (its
//! `testing` feature re-exports it); it is sugar over `dbscope::testing::TestDb::builder()`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ItemFn, Lit, LitStr, Meta, MetaNameValue, Token, parse_macro_input};

/// Runs an `async fn(t: TestContext)` as a test on per-test copies of the app's binds, on the
/// one runtime every such test of the binary shares (`dbscope::testing::runtime()`), so that
/// transaction mode's PostgreSQL connection passes from one test to the next.
///
/// ```text
/// #[dbscope::test]                                        // binds from the environment
/// #[dbscope::test(mode = "database")]                     // "transaction" (default) or "database"
/// #[dbscope::test(config = "tests/dbscope.toml")]         // a file, the environment on top
/// #[dbscope::test(config = my_config)]                    // a `fn() -> dbscope::Config`
/// #[dbscope::test(migrations(main = "migrations"))]       // per bind, paths from the crate root
/// #[dbscope::test(fixtures(main = ["fixtures/users.sql"]))]
/// #[dbscope::test(keep)]                                  // database mode: keep the databases
/// #[dbscope::test(reuse = false)]                         // database mode: always a fresh clone
/// #[dbscope::test(capture_after_commit)]                  // hold after-commit hooks for the test
/// ```
///
/// The function may return `()` or a `Result` whose error is `Debug`; the test fails on a panic,
/// an `Err`, or a failed clean-up (a lost test transaction, say), and its databases are dropped
/// in every case.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(args with Punctuated::<Meta, Token![,]>::parse_terminated);
    let item = parse_macro_input!(item as ItemFn);
    match expand(args, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(args: Punctuated<Meta, Token![,]>, item: ItemFn) -> syn::Result<TokenStream2> {
    if item.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            item.sig.fn_token,
            "#[dbscope::test] needs an `async fn(t: dbscope::testing::TestContext)`",
        ));
    }
    if item.sig.inputs.len() != 1 {
        return Err(syn::Error::new_spanned(
            &item.sig,
            "#[dbscope::test] needs an `async fn(t: dbscope::testing::TestContext)`: one \
             argument, the test's context",
        ));
    }
    if let Some(attr) = item
        .attrs
        .iter()
        .find(|a| a.path().is_ident("should_panic"))
    {
        return Err(syn::Error::new_spanned(
            attr,
            "#[dbscope::test] cannot be combined with #[should_panic]: a failure to set the \
             test's databases up panics too, and would pass the test without running it; \
             check the panic inside the body (`tokio::spawn(work).await.unwrap_err()`)",
        ));
    }
    let mut steps = Vec::new();
    for arg in args {
        steps.extend(builder_steps(arg)?);
    }
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let name = &sig.ident;
    let inputs = &sig.inputs;
    let output = &sig.output;
    Ok(quote! {
        #(#attrs)*
        #[::core::prelude::v1::test]
        #vis fn #name() {
            async fn body(#inputs) #output #block
            let builder = ::dbscope::testing::TestDb::builder() #(#steps)*;
            ::dbscope::testing::runtime().block_on(::dbscope::testing::run_test(builder, body))
        }
    })
}

/// The builder calls one argument of the attribute stands for.
fn builder_steps(arg: Meta) -> syn::Result<Vec<TokenStream2>> {
    let key = arg
        .path()
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    match (key.as_str(), &arg) {
        ("keep", Meta::Path(_)) => Ok(vec![quote!(.keep(true))]),
        ("capture_after_commit", Meta::Path(_)) => Ok(vec![quote!(.capture_after_commit(true))]),
        ("reuse", Meta::NameValue(nv)) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(reuse),
                ..
            }) => Ok(vec![quote!(.reuse(#reuse))]),
            other => Err(syn::Error::new_spanned(other, "reuse is `true` or `false`")),
        },
        (
            "config",
            Meta::NameValue(MetaNameValue {
                value: Expr::Path(config),
                ..
            }),
        ) => Ok(vec![quote!(.config(#config()))]),
        ("mode", Meta::NameValue(nv)) => {
            let mode = string(&nv.value)?;
            let variant = match mode.value().as_str() {
                "transaction" => quote!(Transaction),
                "database" => quote!(Database),
                _ => {
                    return Err(syn::Error::new_spanned(
                        mode,
                        "mode is \"transaction\" or \"database\"",
                    ));
                }
            };
            Ok(vec![quote!(.mode(::dbscope::testing::Mode::#variant))])
        }
        ("config", Meta::NameValue(nv)) => {
            let path = string(&nv.value)?;
            Ok(vec![
                quote!(.config_file(concat!(env!("CARGO_MANIFEST_DIR"), "/", #path))),
            ])
        }
        ("migrations", Meta::List(list)) => per_bind(list, |bind, value| {
            let path = string(value)?;
            Ok(vec![
                quote!(.migrations(#bind, concat!(env!("CARGO_MANIFEST_DIR"), "/", #path))),
            ])
        }),
        ("fixtures", Meta::List(list)) => per_bind(list, |bind, value| {
            let paths: Vec<LitStr> = match value {
                Expr::Array(array) => array.elems.iter().map(string).collect::<syn::Result<_>>()?,
                other => vec![string(other)?],
            };
            Ok(paths
                .iter()
                .map(|path| {
                    quote!(.fixture_file(#bind, concat!(env!("CARGO_MANIFEST_DIR"), "/", #path)))
                })
                .collect())
        }),
        _ => Err(syn::Error::new_spanned(
            arg,
            "expected `mode = \"..\"`, `config = \"..\"` (or `config = a_fn`), \
             `migrations(bind = \"..\")`, `fixtures(bind = [\"..\"])`, `keep`, \
             `reuse = false` or `capture_after_commit`",
        )),
    }
}

/// `name = value` pairs, one per bind, in a list argument.
fn per_bind(
    list: &syn::MetaList,
    mut step: impl FnMut(LitStr, &Expr) -> syn::Result<Vec<TokenStream2>>,
) -> syn::Result<Vec<TokenStream2>> {
    let pairs = list.parse_args_with(Punctuated::<MetaNameValue, Token![,]>::parse_terminated)?;
    let mut out = Vec::new();
    for pair in pairs {
        let Some(bind) = pair.path.get_ident() else {
            return Err(syn::Error::new_spanned(pair.path, "a bind name"));
        };
        let bind = LitStr::new(&bind.to_string(), Span::call_site());
        out.extend(step(bind, &pair.value)?);
    }
    Ok(out)
}

fn string(expr: &Expr) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(item: &str) -> syn::Result<TokenStream2> {
        expand(Punctuated::new(), syn::parse_str(item).unwrap())
    }

    #[::core::prelude::v1::test]
    fn a_test_takes_its_context_and_nothing_else() {
        assert!(expanded("async fn ok(t: TestContext) {}").is_ok());
        let none = expanded("async fn none() {}").unwrap_err();
        assert!(none.to_string().contains("one argument"), "{none}");
        let two = expanded("async fn two(t: TestContext, u: u8) {}").unwrap_err();
        assert!(two.to_string().contains("one argument"), "{two}");
        let sync = expanded("fn sync(t: TestContext) {}").unwrap_err();
        assert!(sync.to_string().contains("async fn"), "{sync}");
    }

    #[::core::prelude::v1::test]
    fn should_panic_is_refused() {
        let err = expanded("#[should_panic] async fn p(t: TestContext) {}").unwrap_err();
        assert!(err.to_string().contains("should_panic"), "{err}");
    }
}
