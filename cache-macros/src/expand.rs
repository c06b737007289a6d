//! Code generation for `#[cached]` and `#[invalidate]`.
//!
//! A `#[cached]` fn `get` becomes:
//!
//! - `get`: resolves the cache, builds the key and the policy, and calls the engine with a loader
//!   that runs the body; with no cache it runs the body directly;
//! - `get_uncached`: the original fn, renamed (the body lives here, once);
//! - `get_refresh`: runs the body and stores its result;
//! - `get_invalidate`: drops the entry of the given arguments.
//!
//! With `companions = false` (needed in trait impls, which cannot have extra methods) the body is
//! inlined into the loader instead. Everything generated calls `<crate>::__private::*` only, with
//! fully qualified `::core` paths, and names its locals `__cache_*`.

use std::collections::HashSet;

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{
    AttrStyle, Attribute, FnArg, GenericArgument, GenericParam, ItemFn, Pat, PathArguments,
    Receiver, ReturnType, Type,
};

use crate::attr::{self, push_error, Args, Macro, WithSpan};
use crate::template::Template;

/// Entry point of `#[cached]`.
pub(crate) fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Macro::Cached, args, item)
}

/// Entry point of `#[invalidate]`.
pub(crate) fn invalidate(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(Macro::Invalidate, args, item)
}

fn expand(mac: Macro, args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(e) => {
            let msg = format!(
                "{} goes on an `async fn` with a body (a free fn, or a method in an `impl` \
                 block): {e}",
                mac.name()
            );
            let err = syn::Error::new(e.span(), msg).to_compile_error();
            return quote!(#item #err);
        }
    };
    let mut errors = None;
    let args = match attr::parse(mac, args) {
        Ok(args) => Some(args),
        Err(e) => {
            push_error(&mut errors, e);
            None
        }
    };
    let info = analyze(mac, &func, args.as_ref(), &mut errors);
    match (errors, args) {
        (None, Some(args)) => match mac {
            Macro::Cached => expand_cached(&func, &args, &info),
            Macro::Invalidate => expand_invalidate(&func, &args, &info),
        },
        (Some(errors), _) => {
            let errors = errors.to_compile_error();
            quote!(#item #errors)
        }
        (None, None) => item,
    }
}

// ---------------------------------------------------------------------------------------------
// Analysis of the fn.
// ---------------------------------------------------------------------------------------------

/// One typed argument of the fn.
struct Arg {
    /// Name of the argument in generated signatures: the user's ident, or `__cache_argN` when the
    /// pattern is not a plain ident.
    binding: Ident,
    /// The name templates and `skip` refer to (`None` for destructuring patterns).
    name: Option<Ident>,
    /// The original pattern (`mut x`, `(a, b)`, ...).
    pat: Pat,
    /// Whether the original pattern differs from `binding` (then inlined bodies rebind it).
    rebind: bool,
    ty: Type,
    attrs: Vec<Attribute>,
    skipped: bool,
}

/// What the return type says about caching.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// `T`: cached as is (also `Option<T>` with `none = true`).
    Plain,
    /// `Option<T>`: `Some` cached.
    Option,
    /// `Result<T, E>`: `Ok` cached (also `Result<Option<T>, E>` with `none = true`).
    Result,
    /// `Result<Option<T>, E>`: `Ok(Some)` cached.
    ResultOption,
}

impl Shape {
    /// The `__private` marker type that tells the engine entry points this shape.
    fn marker(self) -> &'static str {
        match self {
            Shape::Plain => "Plain",
            Shape::Option => "Optional",
            Shape::Result => "Fallible",
            Shape::ResultOption => "FallibleOptional",
        }
    }
}

/// Whether the loader may outlive the call, which decides the `__private` loader kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LoaderKind {
    /// Free fn, owned argument types: the loader is `'static` and a stale entry can refresh in
    /// the background.
    Owned,
    /// A method, a generic fn or a borrowed argument: the loader runs in the calling task.
    Scoped,
}

impl LoaderKind {
    /// The `__private` read-through for this kind.
    fn entry_point(self) -> &'static str {
        match self {
            LoaderKind::Owned => "fetch",
            LoaderKind::Scoped => "fetch_scoped",
        }
    }
}

struct Info {
    receiver: Option<Receiver>,
    args: Vec<Arg>,
    ret: Option<Type>,
    shape: Shape,
    loader: LoaderKind,
}

/// Reads the fn: arguments, return shape, loader kind; pushes every misuse into `errors`.
fn analyze(
    mac: Macro,
    func: &ItemFn,
    args: Option<&Args>,
    errors: &mut Option<syn::Error>,
) -> Info {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        push_error(
            errors,
            syn::Error::new(
                sig.fn_token.span,
                format!(
                    "{} only works on an `async fn`: add `async` (the cache is asynchronous)",
                    mac.name()
                ),
            ),
        );
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) if !is_unit(ty) => Some((**ty).clone()),
        _ => None,
    };
    let none = args.and_then(|a| a.none.as_ref());
    if mac == Macro::Cached {
        check_return(sig, ret.as_ref(), none, errors);
    }
    let mut info = Info {
        receiver: sig.receiver().cloned(),
        args: typed_args(sig),
        shape: shape_of(ret.as_ref(), none.is_some_and(|n| n.value)),
        ret,
        loader: LoaderKind::Scoped,
    };
    if let Some(args) = args {
        check_args(mac, func, args, &mut info, errors);
    }
    info.loader = loader_kind(func, &info);
    info
}

/// The typed arguments, each with the name generated signatures use for it.
fn typed_args(sig: &syn::Signature) -> Vec<Arg> {
    let typed = sig
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| match input {
            FnArg::Typed(pat_type) => Some((i, pat_type)),
            FnArg::Receiver(_) => None,
        });
    typed
        .map(|(i, pat_type)| {
            let plain = match &*pat_type.pat {
                Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(p),
                _ => None,
            };
            Arg {
                binding: plain
                    .map_or_else(|| format_ident!("__cache_arg{}", i), |p| p.ident.clone()),
                name: plain.map(|p| p.ident.clone()),
                pat: (*pat_type.pat).clone(),
                // `mut x` and destructuring patterns are rebound from the plain binding.
                rebind: plain.is_none_or(|p| p.mutability.is_some()),
                ty: (*pat_type.ty).clone(),
                attrs: pat_type.attrs.clone(),
                skipped: false,
            }
        })
        .collect()
}

/// What the return type caches; `none = true` caches `None` too.
fn shape_of(ret: Option<&Type>, cache_none: bool) -> Shape {
    match ret.map(classify) {
        Some(Classified::Option) if cache_none => Shape::Plain,
        Some(Classified::Option) => Shape::Option,
        Some(Classified::ResultOption) if cache_none => Shape::Result,
        Some(Classified::ResultOption) => Shape::ResultOption,
        Some(Classified::Result) => Shape::Result,
        Some(Classified::Plain) | None => Shape::Plain,
    }
}

/// `#[cached]` needs a nameable return type, and `none` an optional one.
fn check_return(
    sig: &syn::Signature,
    ret: Option<&Type>,
    none: Option<&WithSpan<bool>>,
    errors: &mut Option<syn::Error>,
) {
    match ret {
        None => push_error(
            errors,
            syn::Error::new(
                match &sig.output {
                    ReturnType::Type(_, ty) => ty.span(),
                    ReturnType::Default => sig.ident.span(),
                },
                format!(
                    "#[cached] needs a return type: `{}` returns `()`, so there is nothing to \
                     cache (use #[invalidate] for fns that write)",
                    sig.ident
                ),
            ),
        ),
        Some(ty) if contains_impl(ty.to_token_stream()) => push_error(
            errors,
            syn::Error::new_spanned(
                ty,
                "#[cached] cannot store an `impl Trait` return type: name the concrete type",
            ),
        ),
        Some(_) => {}
    }
    let optional = matches!(
        ret.map(classify),
        Some(Classified::Option | Classified::ResultOption)
    );
    if let (Some(none), false) = (none, optional) {
        push_error(
            errors,
            syn::Error::new(
                none.span,
                "`none` only applies to fns returning `Option<T>` or `Result<Option<T>, E>`",
            ),
        );
    }
}

/// [`LoaderKind::Owned`] for free fns without type parameters whose arguments own their data.
fn loader_kind(func: &ItemFn, info: &Info) -> LoaderKind {
    let type_params = func
        .sig
        .generics
        .params
        .iter()
        .any(|p| !matches!(p, GenericParam::Const(_)));
    let borrowed = info.args.iter().any(|a| borrows(a.ty.to_token_stream()));
    if info.receiver.is_none() && !type_params && !borrowed {
        LoaderKind::Owned
    } else {
        LoaderKind::Scoped
    }
}

/// Checks `skip` and the templates against the arguments, and marks the skipped arguments.
fn check_args(
    mac: Macro,
    func: &ItemFn,
    args: &Args,
    info: &mut Info,
    errors: &mut Option<syn::Error>,
) {
    let names: Vec<String> = info
        .args
        .iter()
        .filter_map(|a| a.name.as_ref())
        .map(Ident::to_string)
        .collect();
    let available = || {
        let mut list: Vec<String> = Vec::new();
        if info.receiver.is_some() {
            list.push("`self`".to_owned());
        }
        list.extend(names.iter().map(|n| format!("`{n}`")));
        if list.is_empty() {
            "the fn has no named arguments".to_owned()
        } else {
            format!("arguments: {}", list.join(", "))
        }
    };

    for ident in &args.skip {
        let name = ident.to_string();
        if name == "self" {
            push_error(
                errors,
                syn::Error::new(
                    ident.span(),
                    "`self` is never part of the default key; no need to skip it",
                ),
            );
        } else if let Some(arg) = info
            .args
            .iter_mut()
            .find(|a| a.name.as_ref().is_some_and(|n| *n == name))
        {
            arg.skipped = true;
        } else {
            push_error(
                errors,
                syn::Error::new(
                    ident.span(),
                    format!(
                        "`skip` names `{name}`, which is not an argument of `{}`; {}",
                        func.sig.ident,
                        available()
                    ),
                ),
            );
        }
    }
    if mac == Macro::Invalidate && args.tags.is_empty() && args.keys.is_empty() {
        push_error(errors, syn::Error::new(Span::call_site(), "#[invalidate] needs something to invalidate: give `tags = [...]` and/or `keys = [...]`"));
    }

    let templates = args.key.iter().chain(&args.tags).chain(&args.keys);
    for template in templates {
        for (root, _) in template.placeholders() {
            let known = if root == "self" {
                info.receiver.is_some()
            } else {
                names.iter().any(|n| n == root)
            };
            if !known {
                push_error(
                    errors,
                    syn::Error::new(
                        template.span(),
                        format!(
                            "unknown argument `{root}` in template {:?}; {}",
                            template.lit.value(),
                            available()
                        ),
                    ),
                );
            }
        }
    }
}

enum Classified {
    Plain,
    Option,
    Result,
    ResultOption,
}

/// Looks at the last path segment: `Option<T>`, `Result<T, E>` (also `io::Result<T>` and
/// aliases named `Result`).
fn classify(ty: &Type) -> Classified {
    let ty = strip_parens(ty);
    let Type::Path(path) = ty else {
        return Classified::Plain;
    };
    if path.qself.is_some() {
        return Classified::Plain;
    }
    let Some(last) = path.path.segments.last() else {
        return Classified::Plain;
    };
    let first_ty = match &last.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    };
    match (last.ident.to_string().as_str(), first_ty) {
        ("Option", Some(_)) => Classified::Option,
        ("Result", Some(inner)) => match classify(inner) {
            Classified::Option => Classified::ResultOption,
            _ => Classified::Result,
        },
        _ => Classified::Plain,
    }
}

fn strip_parens(ty: &Type) -> &Type {
    match ty {
        Type::Paren(p) => strip_parens(&p.elem),
        Type::Group(g) => strip_parens(&g.elem),
        other => other,
    }
}

fn is_unit(ty: &Type) -> bool {
    matches!(strip_parens(ty), Type::Tuple(t) if t.elems.is_empty())
}

/// Whether a type (as tokens) contains `impl`.
fn contains_impl(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i == "impl",
        TokenTree::Group(g) => contains_impl(g.stream()),
        _ => false,
    })
}

/// Whether an argument type may borrow (so the loader cannot be `'static`): references other than
/// `&'static`, lifetimes other than `'static`, `impl Trait`, `Self`.
fn borrows(tokens: TokenStream) -> bool {
    let tts: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, tt) in tts.iter().enumerate() {
        match tt {
            TokenTree::Punct(p) if p.as_char() == '&' => {
                let is_static = matches!(
                    (tts.get(i + 1), tts.get(i + 2)),
                    (Some(TokenTree::Punct(q)), Some(TokenTree::Ident(id))) if q.as_char() == '\'' && id == "static"
                );
                if !is_static {
                    return true;
                }
            }
            TokenTree::Punct(p)
                if p.as_char() == '\''
                    && !matches!(tts.get(i + 1), Some(TokenTree::Ident(id)) if id == "static") =>
            {
                return true
            }
            TokenTree::Ident(id) if id == "impl" || id == "Self" => return true,
            TokenTree::Group(g) if borrows(g.stream()) => return true,
            _ => {}
        }
    }
    false
}

/// The same tokens, all with `span` (so errors about them point there).
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                TokenTree::Group(group)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// Every identifier in some tokens.
fn idents_in(tokens: TokenStream, out: &mut HashSet<String>) {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            TokenTree::Group(g) => idents_in(g.stream(), out),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces.
// ---------------------------------------------------------------------------------------------

fn private(args: &Args) -> TokenStream {
    match &args.krate {
        Some(path) => quote!(#path::__private),
        None => quote!(::cache_layer::__private),
    }
}

/// `static __CACHE_WARN ...; let __cache_handle = resolve(...);`
fn resolve_cache(p: &TokenStream, args: &Args, fn_name: &Ident) -> TokenStream {
    let name = fn_name.to_string();
    let explicit = match &args.cache {
        Some(expr) => quote_spanned!(expr.span()=> #p::explicit(#expr)),
        None => quote!(::core::option::Option::None),
    };
    quote! {
        static __CACHE_WARN: #p::WarnOnce = #p::WarnOnce::new();
        let __cache_handle: ::core::option::Option<#p::Cache> = #p::resolve(
            #explicit,
            &__CACHE_WARN,
            ::core::concat!(::core::module_path!(), "::", #name),
        );
    }
}

/// `format!(..)` of a template, with the placeholders spanned at the template.
fn render(p: &TokenStream, template: &Template) -> TokenStream {
    let span = template.span();
    let fmt = syn::LitStr::new(&template.format_string(), span);
    let values = template.placeholders().map(|(root, fields)| {
        let root = if root == "self" {
            quote_spanned!(span=> self)
        } else {
            Ident::new(root, span).into_token_stream()
        };
        let fields = fields.iter().map(|f| match f.parse::<u32>() {
            Ok(index) => syn::Index { index, span }.into_token_stream(),
            Err(_) => Ident::new(f, span).into_token_stream(),
        });
        quote_spanned!(span=> &(#root #(.#fields)*))
    });
    quote_spanned!(span=> #p::format!(#fmt #(, #values)*))
}

/// Whether `Self` can be named in the fn (it is a method, or its signature says `Self`).
fn knows_self(func: &ItemFn, info: &Info) -> bool {
    let mut idents = HashSet::new();
    idents_in(func.sig.to_token_stream(), &mut idents);
    info.receiver.is_some() || idents.contains("Self")
}

/// The key expression: `Option<String>` (`None` when an argument refused to serialize).
fn key_expr(p: &TokenStream, func: &ItemFn, args: &Args, info: &Info) -> TokenStream {
    if let Some(template) = &args.key {
        let rendered = render(p, template);
        return quote!(::core::option::Option::Some(#rendered));
    }
    let name = func.sig.ident.to_string();
    let key_args: Vec<&Arg> = info.args.iter().filter(|a| !a.skipped).collect();
    // Every type and const parameter: a different instantiation may compute something else.
    let generic_parts = func.sig.generics.params.iter().map(|g| match g {
        GenericParam::Type(t) => {
            let ident = &t.ident;
            quote!(__cache_kb.type_param(#p::type_name::<#ident>());)
        }
        GenericParam::Const(c) => {
            let ident = &c.ident;
            quote!(__cache_kb.const_param(#ident);)
        }
        GenericParam::Lifetime(_) => quote!(),
    });
    let self_part =
        knows_self(func, info).then(|| quote!(__cache_kb.self_type(#p::type_name::<Self>());));
    let arg_parts = key_args.iter().map(|arg| {
        let binding = &arg.binding;
        let span = arg.name.as_ref().map_or_else(|| arg.ty.span(), Ident::span);
        quote_spanned!(span=> #p::KeyBuilder::arg(&mut __cache_kb, &#binding);)
    });
    quote! {{
        fn __cache_path() {}
        static __CACHE_KEY_PREFIX: #p::KeyPrefix = #p::KeyPrefix::new();
        let mut __cache_kb = #p::KeyBuilder::with_prefix(&__CACHE_KEY_PREFIX, #p::type_name_of_val(&__cache_path), #name);
        #self_part
        #(#generic_parts)*
        #(#arg_parts)*
        __cache_kb.finish()
    }}
}

/// A `&Policy` for the call: built once and kept in a static of the generated fn when the
/// attribute's tags name no argument (nothing in it depends on the call), else built per call.
fn policy_ref(p: &TokenStream, args: &Args, observe: Option<&Ident>) -> TokenStream {
    let policy = policy_expr(p, args, observe);
    let per_call = args.tags.iter().any(|t| t.placeholders().next().is_some());
    if per_call {
        quote!(&#policy)
    } else {
        quote!({
            static __CACHE_POLICY: #p::PolicyCell = #p::PolicyCell::new();
            __CACHE_POLICY.get(|| #policy)
        })
    }
}

/// The policy; `observe` names the fn's `FunctionStats` static (the main fn has one).
fn policy_expr(p: &TokenStream, args: &Args, observe: Option<&Ident>) -> TokenStream {
    let ttl = args.ttl_ms.as_ref().map_or(300_000, |t| t.value);
    let mut policy = quote!(#p::policy(#p::Duration::from_millis(#ttl)));
    if let Some(stats) = observe {
        policy.extend(quote!(.observe(&#stats)));
    }
    if !args.tags.is_empty() {
        let tags = args.tags.iter().map(|t| render(p, t));
        policy.extend(quote!(.tags([#(#tags),*])));
    }
    if let Some(mode) = &args.stampede {
        let variant = Ident::new(mode.value.variant(), mode.span);
        policy.extend(quote!(.stampede(#p::Stampede::#variant)));
    }
    if let Some(stale) = &args.stale_ms {
        let ms = stale.value;
        policy.extend(quote!(.stale(#p::Duration::from_millis(#ms))));
    }
    if let Some(jitter) = &args.jitter {
        let f = jitter.value;
        policy.extend(quote!(.jitter(#f)));
    }
    policy
}

/// Attributes for the generated fn: inner attributes of the body become outer ones.
fn outer_attrs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs
        .iter()
        .cloned()
        .map(|mut a| {
            a.style = AttrStyle::Outer;
            a
        })
        .collect()
}

/// Attributes that also apply to the companions: `cfg` and lint levels.
fn companion_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|a| matches!(a.style, AttrStyle::Outer))
        .filter(|a| {
            let path = a.path();
            ["cfg", "allow", "warn", "deny", "forbid", "deprecated"]
                .iter()
                .any(|n| path.is_ident(n))
        })
        .collect()
}

/// The main fn's parameters: the receiver, then `binding: Type` per argument. A `mut self` stays
/// `mut` only where the body is inlined (with companions, `{fn}_uncached` takes it `mut`).
fn main_inputs(info: &Info, companions: Companions) -> TokenStream {
    let receiver = info.receiver.as_ref().map(|r| {
        let mut r = r.clone();
        if companions == Companions::Generated && matches!(r.kind, syn::ReceiverKind::Value) {
            r.mutability = None;
        }
        quote!(#r,)
    });
    let args = info.args.iter().map(|a| {
        let (attrs, binding, ty) = (&a.attrs, &a.binding, &a.ty);
        quote!(#(#attrs)* #binding: #ty)
    });
    quote!(#receiver #(#args),*)
}

/// `let <original pattern> = <binding>;` for arguments whose pattern is not a plain ident.
fn rebinds(info: &Info) -> Vec<TokenStream> {
    info.args
        .iter()
        .filter(|a| a.rebind)
        .map(|a| {
            let (pat, binding) = (&a.pat, &a.binding);
            quote!(let #pat = #binding;)
        })
        .collect()
}

/// A statement that fixes an async block's output type, so `?` and `return` in a moved body infer
/// as in the original fn (the trick `tracing::instrument` uses).
fn output_type_hint(ret: Option<&Type>) -> TokenStream {
    let Some(ret) = ret else { return quote!() };
    if contains_impl(ret.to_token_stream()) {
        return quote!();
    }
    quote! {
        #[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::let_with_type_underscore,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {
            let __cache_unreachable: #ret = loop {};
            return __cache_unreachable;
        }
    }
}

/// Turbofish for calling the `_uncached` fn: type and const params, unless an argument is
/// `impl Trait` (explicit generic arguments are not allowed then; inference does it).
fn turbofish(func: &ItemFn, info: &Info) -> TokenStream {
    if info
        .args
        .iter()
        .any(|a| contains_impl(a.ty.to_token_stream()))
    {
        return quote!();
    }
    let params: Vec<TokenStream> = func
        .sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.to_token_stream()),
            GenericParam::Const(c) => {
                let ident = &c.ident;
                Some(quote!({ #ident }))
            }
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    if params.is_empty() {
        quote!()
    } else {
        quote!(::<#(#params),*>)
    }
}

// ---------------------------------------------------------------------------------------------
// #[cached]
// ---------------------------------------------------------------------------------------------

fn expand_cached(func: &ItemFn, args: &Args, info: &Info) -> TokenStream {
    let cx = Cached::new(func, args, info);
    let main = cx.main_fn();
    match cx.companions {
        Companions::Omitted => main,
        Companions::Generated => {
            let uncached = cx.uncached_fn();
            let refresh = cx.refresh_fn();
            let invalidate = cx.invalidate_fn();
            quote!(#main #uncached #refresh #invalidate)
        }
    }
}

/// Whether `{fn}_uncached`, `{fn}_refresh` and `{fn}_invalidate` are generated (`companions`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Companions {
    /// The default: the body lives in `{fn}_uncached`, which the loader calls.
    Generated,
    /// `companions = false`: the body is inlined into the loader.
    Omitted,
}

/// What the fns generated for one `#[cached]` fn share.
struct Cached<'a> {
    func: &'a ItemFn,
    args: &'a Args,
    info: &'a Info,
    companions: Companions,
    /// `<crate>::__private`.
    p: TokenStream,
    /// `p` spanned at the return type, so errors about the cached type (not `Serialize`, body not
    /// `Send`, ...) point there.
    p_ret: TokenStream,
    ret_span: Span,
    /// The `__private` shape marker of the return type.
    shape: Ident,
    name_str: String,
    /// How generated docs name the fn: `get`, or `Self::get` for methods.
    what: String,
}

impl<'a> Cached<'a> {
    fn new(func: &'a ItemFn, args: &'a Args, info: &'a Info) -> Self {
        let p = private(args);
        let ret_span = info.ret.as_ref().map_or_else(Span::call_site, |r| r.span());
        let name_str = func.sig.ident.to_string();
        let what = if info.receiver.is_some() {
            format!("Self::{name_str}")
        } else {
            name_str.clone()
        };
        Cached {
            func,
            args,
            info,
            companions: match &args.companions {
                Some(flag) if !flag.value => Companions::Omitted,
                _ => Companions::Generated,
            },
            p_ret: respan(p.clone(), ret_span),
            p,
            ret_span,
            shape: Ident::new(info.shape.marker(), ret_span),
            name_str,
            what,
        }
    }

    fn uncached_ident(&self) -> Ident {
        format_ident!("{}_uncached", self.func.sig.ident)
    }

    /// `{fn}_uncached(args..)`, as `Self::` where the fn is in an impl.
    fn call_body(&self) -> TokenStream {
        let uncached = self.uncached_ident();
        let fish = turbofish(self.func, self.info);
        let bindings = self.info.args.iter().map(|a| &a.binding);
        if self.info.receiver.is_some() {
            quote!(Self::#uncached #fish (self, #(#bindings),*))
        } else if knows_self(self.func, self.info) {
            quote!(Self::#uncached #fish (#(#bindings),*))
        } else {
            quote!(#uncached #fish (#(#bindings),*))
        }
    }

    /// The closure that runs the body on a miss.
    fn loader(&self) -> TokenStream {
        let info = self.info;
        match self.companions {
            Companions::Generated if info.receiver.is_some() => {
                // Move the receiver into the call, so the closure is `FnOnce` and a `&mut self`
                // is not reborrowed from the closure's state.
                let uncached = self.uncached_ident();
                let fish = turbofish(self.func, info);
                let bindings = info.args.iter().map(|a| &a.binding);
                quote!(move || {
                    let __cache_self = self;
                    Self::#uncached #fish (__cache_self, #(#bindings),*)
                })
            }
            Companions::Generated => {
                let call_body = self.call_body();
                quote!(move || #call_body)
            }
            Companions::Omitted => {
                let hint = output_type_hint(info.ret.as_ref());
                let rebinds = rebinds(info);
                let block = &self.func.block;
                quote!(move || async move { #hint #(#rebinds)* #block })
            }
        }
    }

    /// The cached fn itself: cache, key, policy, then one engine call (or the body, uncached).
    fn main_fn(&self) -> TokenStream {
        let (p, p_ret, shape) = (&self.p, &self.p_ret, &self.shape);
        let fetch = Ident::new(self.info.loader.entry_point(), self.ret_span);
        let call_engine = quote_spanned!(self.ret_span=>
            #p_ret::#fetch(#p::Entry { cache: &__cache_handle, key: &__cache_key, policy: __cache_policy }, #p_ret::#shape, __cache_loader).await
        );
        let resolve = resolve_cache(p, self.args, &self.func.sig.ident);
        let key = key_expr(p, self.func, self.args, self.info);
        let stats = Ident::new("__CACHE_STATS", Span::call_site());
        let policy = policy_ref(p, self.args, Some(&stats));
        let loader = self.loader();
        let mut sig = self.func.sig.clone();
        let inputs = main_inputs(self.info, self.companions);
        sig.inputs = syn::parse_quote!(#inputs);
        let attrs = outer_attrs(&self.func.attrs);
        let (vis, name_str) = (&self.func.vis, &self.name_str);
        quote! {
            #(#attrs)*
            #vis #sig {
                #resolve
                static #stats: #p::FunctionStats =
                    #p::FunctionStats::new(::core::concat!(::core::module_path!(), "::", #name_str));
                let __cache_key: ::core::option::Option<#p::String> = #key;
                let __cache_policy: &#p::Policy = #policy;
                let __cache_loader = #loader;
                match (__cache_handle, __cache_key) {
                    (::core::option::Option::Some(__cache_handle), ::core::option::Option::Some(__cache_key)) => {
                        #call_engine
                    }
                    _ => __cache_loader().await,
                }
            }
        }
    }

    /// `{fn}_uncached`: the original fn, renamed.
    fn uncached_fn(&self) -> TokenStream {
        let mut body_fn = self.func.clone();
        body_fn.sig.ident = self.uncached_ident();
        // Arguments only the attribute uses (`cache = cache`, `key = "{id}"`) are used, as far as
        // the user is concerned: no "unused variable" warning from the body.
        let mut used_by_attr = HashSet::new();
        if let Some(expr) = &self.args.cache {
            idents_in(expr.to_token_stream(), &mut used_by_attr);
        }
        for template in self.args.key.iter().chain(&self.args.tags) {
            used_by_attr.extend(template.placeholders().map(|(root, _)| root.to_owned()));
        }
        let touches: Vec<syn::Stmt> = self
            .info
            .args
            .iter()
            .filter_map(|a| a.name.as_ref())
            .filter(|name| used_by_attr.contains(&name.to_string()))
            .map(|name| syn::parse_quote!(let _ = &#name;))
            .collect();
        body_fn.block.stmts.splice(0..0, touches);
        body_fn
            .attrs
            .retain(|a| matches!(a.style, AttrStyle::Inner(_)));
        let doc = format!(
            "The body of [`{}`], without the cache: always runs, never reads or writes an entry.\n\n\
             Generated by `#[cached]`.",
            self.what
        );
        let shared_attrs = companion_attrs(&self.func.attrs);
        quote! {
            #[doc = #doc]
            #(#shared_attrs)*
            #body_fn
        }
    }

    /// `{fn}_refresh`: runs the body and stores the result.
    fn refresh_fn(&self) -> TokenStream {
        let (p, p_ret, shape, name_str) = (&self.p, &self.p_ret, &self.shape, &self.name_str);
        let mut sig = self.func.sig.clone();
        sig.ident = format_ident!("{}_refresh", self.func.sig.ident);
        let inputs = main_inputs(self.info, self.companions);
        sig.inputs = syn::parse_quote!(#inputs);
        let store_call = quote_spanned!(self.ret_span=>
            #p_ret::store(#p::Entry { cache: __cache_handle, key: __cache_key, policy: __cache_policy }, #p_ret::#shape, &__cache_out, ::core::concat!(::core::module_path!(), "::", #name_str)).await
        );
        let doc = format!(
            "Runs the body of [`{}`] and stores its result as the entry for these arguments \
             (replacing a cached one), then returns it. What is stored follows the same rules as a \
             miss: `Err` is never stored; `None` is not stored (and drops the entry) unless \
             `none = true`.\n\nGenerated by `#[cached]`.",
            self.what
        );
        let resolve = resolve_cache(p, self.args, &self.func.sig.ident);
        let key = key_expr(p, self.func, self.args, self.info);
        let policy = policy_ref(p, self.args, None);
        let call_body = self.call_body();
        let shared_attrs = companion_attrs(&self.func.attrs);
        let vis = &self.func.vis;
        quote! {
            #[doc = #doc]
            #[allow(dead_code)]
            #(#shared_attrs)*
            #vis #sig {
                #resolve
                let __cache_key: ::core::option::Option<#p::String> = #key;
                let __cache_policy: &#p::Policy = #policy;
                let __cache_out = #call_body.await;
                if let (::core::option::Option::Some(__cache_handle), ::core::option::Option::Some(__cache_key)) =
                    (&__cache_handle, &__cache_key)
                {
                    #store_call;
                }
                __cache_out
            }
        }
    }

    fn invalidate_fn(&self) -> TokenStream {
        let shared_attrs = companion_attrs(&self.func.attrs);
        invalidate_companion(
            &self.p,
            self.func,
            self.args,
            self.info,
            &shared_attrs,
            &self.what,
        )
    }
}

/// `{fn}_invalidate(key args..) -> Result<bool, Error>`.
fn invalidate_companion(
    p: &TokenStream,
    func: &ItemFn,
    args: &Args,
    info: &Info,
    shared_attrs: &[&Attribute],
    what: &str,
) -> TokenStream {
    let name = &func.sig.ident;
    let vis = &func.vis;
    let ident = format_ident!("{}_invalidate", name);

    // The arguments the key (and the `cache = ...` expression) need.
    let mut needed = HashSet::new();
    if let Some(template) = &args.key {
        needed.extend(template.placeholders().map(|(root, _)| root.to_owned()));
    }
    if let Some(expr) = &args.cache {
        idents_in(expr.to_token_stream(), &mut needed);
    }
    let kept: Vec<&Arg> = info
        .args
        .iter()
        .filter(|a| {
            let named = a
                .name
                .as_ref()
                .is_some_and(|n| needed.contains(&n.to_string()));
            named || (args.key.is_none() && !a.skipped)
        })
        .collect();

    let generics = &func.sig.generics;
    let (_, _, where_clause) = generics.split_for_impl();
    let params = &generics.params;

    let receiver = info.receiver.as_ref().map(|_| quote!(&self,));
    let inputs = kept.iter().map(|a| {
        let (attrs, binding, ty) = (&a.attrs, &a.binding, &a.ty);
        quote!(#(#attrs)* #binding: #ty)
    });
    let resolve = resolve_cache(p, args, &ident);
    let key = key_expr(p, func, args, info);
    let doc = format!(
        "Drops the cached entry of [`{what}`] for these arguments, so the next call loads it \
         again. Returns whether an entry was removed (`false` also when no cache is installed).\n\n\
         Generated by `#[cached]`."
    );
    quote! {
        #[doc = #doc]
        #[allow(dead_code, clippy::extra_unused_type_parameters)]
        #(#shared_attrs)*
        #vis async fn #ident <#params> (#receiver #(#inputs),*)
            -> ::core::result::Result<bool, #p::Error>
            #where_clause
        {
            #resolve
            let __cache_key: ::core::option::Option<#p::String> = #key;
            #p::delete(__cache_handle, __cache_key).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// #[invalidate]
// ---------------------------------------------------------------------------------------------

fn expand_invalidate(func: &ItemFn, args: &Args, info: &Info) -> TokenStream {
    let p = private(args);
    let name = &func.sig.ident;
    let name_str = name.to_string();
    let vis = &func.vis;
    let sig = &func.sig;
    let attrs = outer_attrs(&func.attrs);
    let resolve = resolve_cache(&p, args, name);
    let tags = args.tags.iter().map(|t| render(&p, t));
    let keys = args.keys.iter().map(|t| render(&p, t));
    let hint = output_type_hint(info.ret.as_ref());
    let block = &func.block;
    let succeeded = match info.shape {
        Shape::Result | Shape::ResultOption => {
            quote!(::core::result::Result::is_ok(&__cache_out))
        }
        Shape::Plain | Shape::Option => quote!(true),
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            #resolve
            let __cache_tags: ::std::vec::Vec<#p::String> = ::std::vec![#(#tags),*];
            let __cache_keys: ::std::vec::Vec<#p::String> = ::std::vec![#(#keys),*];
            let __cache_out = async { #hint #block }.await;
            if #succeeded {
                #p::invalidate(__cache_handle, &__cache_tags, &__cache_keys, ::core::concat!(::core::module_path!(), "::", #name_str)).await;
            }
            __cache_out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> Type {
        syn::parse_str(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn classifies_return_types() {
        assert!(matches!(classify(&ty("Option<u8>")), Classified::Option));
        assert!(matches!(
            classify(&ty("std::result::Result<u8, E>")),
            Classified::Result
        ));
        assert!(matches!(
            classify(&ty("io::Result<u8>")),
            Classified::Result
        ));
        assert!(matches!(
            classify(&ty("Result<Option<u8>, E>")),
            Classified::ResultOption
        ));
        assert!(matches!(
            classify(&ty("Vec<Option<u8>>")),
            Classified::Plain
        ));
        assert!(matches!(classify(&ty("u8")), Classified::Plain));
    }

    #[test]
    fn borrowing_types() {
        for t in [
            "&str",
            "&'a T",
            "Cow<'_, str>",
            "impl Display",
            "Vec<&u8>",
            "Self",
        ] {
            assert!(borrows(ty(t).to_token_stream()), "{t}");
        }
        for t in [
            "u64",
            "String",
            "&'static str",
            "Vec<(u8, String)>",
            "Box<dyn Fn()>",
        ] {
            assert!(!borrows(ty(t).to_token_stream()), "{t}");
        }
    }
}
