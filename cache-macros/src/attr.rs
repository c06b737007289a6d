//! Parsing of the attribute arguments: `#[cached(ttl = 300, key = "user:{id}", ...)]` and
//! `#[invalidate(tags = [...], keys = [...])]`.
//!
//! [`KEYS`] is the one list of keys: parsing looks keys up in it, "did you mean" hints and the
//! "valid keys are" lists come from it, and a unit test checks that the rustdoc and the README
//! document exactly these keys, in this order.
//!
//! Each `key = value` pair is read with `syn` (a value is an expression, so
//! `cache = REG.get::<A, B>()` keeps its generic arguments together) and checked on its own, so
//! one bad pair does not hide the errors of the others: all errors are collected with
//! [`syn::Error::combine`].

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Lit, LitBool, LitStr, Path, Token};

use crate::template::Template;

/// Which attribute is being parsed; decides the valid keys.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Macro {
    Cached,
    Invalidate,
}

impl Macro {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Macro::Cached => "#[cached]",
            Macro::Invalidate => "#[invalidate]",
        }
    }

    /// The keys this macro takes, in table order.
    fn keys(self) -> impl Iterator<Item = &'static KeySpec> {
        KEYS.iter().filter(move |spec| spec.macros.contains(&self))
    }

    fn valid_keys_list(self) -> String {
        self.keys()
            .map(|spec| format!("`{}`", spec.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a key sets; decides how its value is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KeyKind {
    Ttl,
    Key,
    Tags,
    Stampede,
    Stale,
    Jitter,
    Cache,
    Skip,
    None,
    Keys,
    Companions,
    Crate,
}

/// One attribute key.
#[derive(Debug)]
pub(crate) struct KeySpec {
    /// As written in the attribute.
    pub(crate) name: &'static str,
    kind: KeyKind,
    /// The macros that take it.
    pub(crate) macros: &'static [Macro],
    /// An example value, for "as in `name = ...`" hints.
    example: &'static str,
    /// Whether the key alone (`none`) means `key = true`.
    flag: bool,
}

const CACHED: &[Macro] = &[Macro::Cached];
const INVALIDATE: &[Macro] = &[Macro::Invalidate];
const BOTH: &[Macro] = &[Macro::Cached, Macro::Invalidate];

/// Every key of both macros, in the order the docs list them (each macro's keys keep this order).
pub(crate) const KEYS: &[KeySpec] = &[
    KeySpec::new("ttl", KeyKind::Ttl, CACHED, "300` or `ttl = \"5m\""),
    KeySpec::new("key", KeyKind::Key, CACHED, "\"user:{id}\""),
    KeySpec::new("tags", KeyKind::Tags, BOTH, "[\"user:{id}\", \"users\"]"),
    KeySpec::new("keys", KeyKind::Keys, INVALIDATE, "[\"user:{id}\"]"),
    KeySpec::new("stampede", KeyKind::Stampede, CACHED, "\"lock\""),
    KeySpec::new("stale", KeyKind::Stale, CACHED, "60` or `stale = \"1m\""),
    KeySpec::new("jitter", KeyKind::Jitter, CACHED, "0.1"),
    KeySpec::new("cache", KeyKind::Cache, BOTH, "&self.cache"),
    KeySpec::new("skip", KeyKind::Skip, CACHED, "[conn]"),
    KeySpec::new("none", KeyKind::None, CACHED, "true").flag(),
    KeySpec::new("companions", KeyKind::Companions, CACHED, "false").flag(),
    KeySpec::new("crate", KeyKind::Crate, BOTH, "::cache_layer"),
];

impl KeySpec {
    const fn new(
        name: &'static str,
        kind: KeyKind,
        macros: &'static [Macro],
        example: &'static str,
    ) -> Self {
        KeySpec {
            name,
            kind,
            macros,
            example,
            flag: false,
        }
    }

    /// A key that may stand alone for `key = true`.
    const fn flag(self) -> Self {
        KeySpec { flag: true, ..self }
    }

    fn lookup(name: &str) -> Option<&'static KeySpec> {
        KEYS.iter().find(|spec| spec.name == name)
    }
}

/// One of the four stampede modes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StampedeMode {
    None,
    Coalesce,
    Lock,
    Early,
}

impl StampedeMode {
    pub(crate) fn variant(self) -> &'static str {
        match self {
            StampedeMode::None => "None",
            StampedeMode::Coalesce => "Coalesce",
            StampedeMode::Lock => "Lock",
            StampedeMode::Early => "Early",
        }
    }
}

/// A parsed value with the span of its tokens (for later errors).
#[derive(Clone, Debug)]
pub(crate) struct WithSpan<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// Everything `#[cached(...)]` or `#[invalidate(...)]` can say.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) ttl_ms: Option<WithSpan<u64>>,
    pub(crate) key: Option<Template>,
    pub(crate) tags: Vec<Template>,
    pub(crate) keys: Vec<Template>,
    pub(crate) stampede: Option<WithSpan<StampedeMode>>,
    pub(crate) stale_ms: Option<WithSpan<u64>>,
    pub(crate) jitter: Option<WithSpan<f64>>,
    pub(crate) cache: Option<Expr>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) none: Option<WithSpan<bool>>,
    pub(crate) companions: Option<WithSpan<bool>>,
    pub(crate) krate: Option<Path>,
}

/// Parses the attribute arguments of `mac`, collecting every error.
pub(crate) fn parse(mac: Macro, tokens: TokenStream) -> Result<Args, syn::Error> {
    let mut args = Args::default();
    let mut errors: Option<syn::Error> = None;
    let mut seen: Vec<&'static str> = Vec::new();
    let parser = |input: ParseStream| -> syn::Result<()> {
        while !input.is_empty() {
            if let Err(e) = parse_entry(mac, input, &mut args, &mut seen) {
                push_error(&mut errors, e);
                skip_entry(input);
            }
            if input.is_empty() {
                break;
            }
            if let Err(e) = input.parse::<Token![,]>() {
                push_error(&mut errors, e);
                skip_entry(input);
                input.parse::<Option<Token![,]>>()?;
            }
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        push_error(&mut errors, e);
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(args),
    }
}

pub(crate) fn push_error(errors: &mut Option<syn::Error>, e: syn::Error) {
    match errors {
        Some(all) => all.combine(e),
        None => *errors = Some(e),
    }
}

/// Skips what is left of a bad entry: everything up to the next top-level comma.
fn skip_entry(input: ParseStream) {
    while !input.is_empty() && !input.peek(Token![,]) {
        if input.parse::<TokenTree>().is_err() {
            return;
        }
    }
}

/// One `key = value` (or a lone flag key): look the key up, read the value, store it in `args`.
fn parse_entry(
    mac: Macro,
    input: ParseStream,
    args: &mut Args,
    seen: &mut Vec<&'static str>,
) -> syn::Result<()> {
    let (spec, key_span) = parse_key(mac, input)?;
    if seen.contains(&spec.name) {
        return Err(syn::Error::new(
            key_span,
            format!("duplicate key `{}`: each key may be given once", spec.name),
        ));
    }
    seen.push(spec.name);
    match parse_value(spec, key_span, input)? {
        Some(value) => apply(spec, value, args),
        None => {
            set_flag(
                spec.kind,
                args,
                WithSpan {
                    value: true,
                    span: key_span,
                },
            );
            Ok(())
        }
    }
}

/// The key of an entry, checked against the table and the macro.
fn parse_key(mac: Macro, input: ParseStream) -> syn::Result<(&'static KeySpec, Span)> {
    let span = input.span();
    let Ok(ident) = input.call(Ident::parse_any) else {
        return Err(syn::Error::new(
            span,
            format!(
                "expected `key = value`; valid keys for {} are: {}",
                mac.name(),
                mac.valid_keys_list()
            ),
        ));
    };
    let name = ident.unraw().to_string();
    match KeySpec::lookup(&name) {
        Some(spec) if spec.macros.contains(&mac) => Ok((spec, ident.span())),
        Some(_) => Err(syn::Error::new(
            ident.span(),
            format!(
                "unknown key `{name}` for {}; valid keys are: {}",
                mac.name(),
                mac.valid_keys_list()
            ),
        )),
        None => {
            let hint = closest(&name, mac.keys().map(|spec| spec.name))
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            Err(syn::Error::new(
                ident.span(),
                format!(
                    "unknown key `{name}` for {}{hint}\nvalid keys are: {}",
                    mac.name(),
                    mac.valid_keys_list()
                ),
            ))
        }
    }
}

/// `= value` after a key, as tokens: an expression where it is one, else everything up to the
/// next comma (so a malformed value still gets a "`key` expects ..." error at its tokens).
/// `None` for a flag key standing alone.
fn parse_value(
    spec: &KeySpec,
    key_span: Span,
    input: ParseStream,
) -> syn::Result<Option<TokenStream>> {
    let at_end = input.is_empty() || input.peek(Token![,]);
    if at_end && spec.flag {
        return Ok(None);
    }
    let name = spec.name;
    if !input.peek(Token![=]) {
        return Err(syn::Error::new(
            if at_end { key_span } else { input.span() },
            format!(
                "expected `=` after `{name}`, as in `{name} = {}`",
                spec.example
            ),
        ));
    }
    input.parse::<Token![=]>()?;
    let fork = input.fork();
    let value = match fork.parse::<Expr>() {
        Ok(expr) if fork.is_empty() || fork.peek(Token![,]) => {
            input.parse::<Expr>()?;
            expr.into_token_stream()
        }
        _ => {
            let mut raw = TokenStream::new();
            while !input.is_empty() && !input.peek(Token![,]) {
                raw.extend([input.parse::<TokenTree>()?]);
            }
            raw
        }
    };
    if value.is_empty() {
        return Err(syn::Error::new(
            key_span,
            format!(
                "missing value for `{name}`, as in `{name} = {}`",
                spec.example
            ),
        ));
    }
    Ok(Some(value))
}

/// Reads `value` as what `spec` expects and stores it in `args`.
fn apply(spec: &KeySpec, value: TokenStream, args: &mut Args) -> syn::Result<()> {
    let span = syn::spanned::Spanned::span(&value);
    let wrong = |what: &str| {
        syn::Error::new_spanned(
            &value,
            format!(
                "`{name}` expects {what}, as in `{name} = {example}`",
                name = spec.name,
                example = spec.example
            ),
        )
    };
    match spec.kind {
        KeyKind::Ttl => {
            let ms = duration(&value, wrong)?;
            if ms == 0 {
                return Err(syn::Error::new_spanned(
                    &value,
                    "`ttl` must be greater than zero",
                ));
            }
            args.ttl_ms = Some(WithSpan { value: ms, span });
        }
        KeyKind::Stale => {
            let ms = duration(&value, wrong)?;
            args.stale_ms = Some(WithSpan { value: ms, span });
        }
        KeyKind::Key => {
            let lit: LitStr = syn::parse2(value.clone()).map_err(|_| wrong("a string template"))?;
            args.key = Some(Template::parse(&lit)?);
        }
        KeyKind::Tags => {
            args.tags = templates(value.clone())
                .map_err(|e| e.unwrap_or_else(|| wrong("a list of string templates")))?;
        }
        KeyKind::Keys => {
            args.keys = templates(value.clone())
                .map_err(|e| e.unwrap_or_else(|| wrong("a list of string templates")))?;
        }
        KeyKind::Stampede => {
            let lit: LitStr = syn::parse2(value.clone())
                .map_err(|_| wrong("one of \"none\", \"coalesce\", \"lock\", \"early\""))?;
            let mode = stampede_mode(&lit)?;
            args.stampede = Some(WithSpan { value: mode, span });
        }
        KeyKind::Jitter => {
            let fraction = match syn::parse2::<Lit>(value.clone()) {
                Ok(Lit::Float(f)) => f.base10_parse::<f64>()?,
                Ok(Lit::Int(i)) => i.base10_parse::<u32>()? as f64,
                _ => return Err(wrong("a fraction between 0.0 and 0.5")),
            };
            if !(0.0..=0.5).contains(&fraction) {
                return Err(syn::Error::new_spanned(
                    &value,
                    "`jitter` must be between 0.0 and 0.5 (a fraction of the TTL)",
                ));
            }
            args.jitter = Some(WithSpan {
                value: fraction,
                span,
            });
        }
        KeyKind::Cache => {
            let expr: Expr = syn::parse2(value.clone())
                .map_err(|_| wrong("an expression yielding a `&Cache`"))?;
            args.cache = Some(expr);
        }
        KeyKind::Skip => {
            args.skip = ident_list(value.clone()).map_err(|_| wrong("a list of argument names"))?;
        }
        KeyKind::None | KeyKind::Companions => {
            let lit: LitBool =
                syn::parse2(value.clone()).map_err(|_| wrong("`true` or `false`"))?;
            set_flag(
                spec.kind,
                args,
                WithSpan {
                    value: lit.value,
                    span,
                },
            );
        }
        KeyKind::Crate => {
            let path = match syn::parse2::<LitStr>(value.clone()) {
                Ok(lit) => lit.parse_with(Path::parse_mod_style),
                Err(_) => Path::parse_mod_style.parse2(value.clone()),
            }
            .map_err(|_| wrong("a path to the runtime crate"))?;
            args.krate = Some(path);
        }
    }
    Ok(())
}

fn set_flag(kind: KeyKind, args: &mut Args, flag: WithSpan<bool>) {
    match kind {
        KeyKind::None => args.none = Some(flag),
        KeyKind::Companions => args.companions = Some(flag),
        _ => unreachable!("only `none` and `companions` are flags"),
    }
}

/// Integer seconds or a duration string, in milliseconds.
fn duration(value: &TokenStream, wrong: impl Fn(&str) -> syn::Error) -> syn::Result<u64> {
    duration_value(value.clone()).map_err(|msg| match msg {
        Some(msg) => syn::Error::new_spanned(value, msg),
        None => wrong("integer seconds or a duration string like \"90s\", \"5m\", \"1h\""),
    })
}

/// A list of templates; `Err(None)` when the value is not a list of strings, `Err(Some(e))` with
/// every template error otherwise.
fn templates(value: TokenStream) -> Result<Vec<Template>, Option<syn::Error>> {
    let lits = string_list(value).map_err(|_| None)?;
    let mut templates = Vec::new();
    let mut errors = None;
    for lit in lits {
        match Template::parse(&lit) {
            Ok(t) => templates.push(t),
            Err(e) => push_error(&mut errors, e),
        }
    }
    match errors {
        Some(e) => Err(Some(e)),
        None => Ok(templates),
    }
}

fn stampede_mode(lit: &LitStr) -> syn::Result<StampedeMode> {
    Ok(match lit.value().as_str() {
        "none" => StampedeMode::None,
        "coalesce" => StampedeMode::Coalesce,
        "lock" => StampedeMode::Lock,
        "early" => StampedeMode::Early,
        other => {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "unknown stampede mode {other:?}; expected one of \"none\", \"coalesce\", \
                     \"lock\", \"early\""
                ),
            ))
        }
    })
}

/// The valid key closest to a misspelt one (edit distance at most 2).
fn closest(name: &str, valid: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    valid
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            row.push((prev[j] + cost).min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

/// `["a", "b"]` or a single `"a"`.
fn string_list(value: TokenStream) -> syn::Result<Vec<LitStr>> {
    let parser = |input: ParseStream| -> syn::Result<Vec<LitStr>> {
        if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            return Ok(vec![lit]);
        }
        let content;
        syn::bracketed!(content in input);
        let list = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
        Ok(list.into_iter().collect())
    };
    parser.parse2(value)
}

/// `[a, b]` or a single `a`.
fn ident_list(value: TokenStream) -> syn::Result<Vec<Ident>> {
    let parser = |input: ParseStream| -> syn::Result<Vec<Ident>> {
        if input.peek(syn::token::Bracket) {
            let content;
            syn::bracketed!(content in input);
            let list =
                Punctuated::<Ident, Token![,]>::parse_terminated_with(&content, Ident::parse_any)?;
            return Ok(list.into_iter().collect());
        }
        Ok(vec![input.call(Ident::parse_any)?])
    };
    parser.parse2(value)
}

/// Integer seconds or a duration string; `Err(None)` for a value of the wrong type,
/// `Err(Some(msg))` for a malformed string.
fn duration_value(value: TokenStream) -> Result<u64, Option<String>> {
    match syn::parse2::<Lit>(value) {
        Ok(Lit::Int(i)) => {
            let secs: u64 = i.base10_parse().map_err(|e| Some(e.to_string()))?;
            secs.checked_mul(1000)
                .ok_or_else(|| Some("duration is too long".to_owned()))
        }
        Ok(Lit::Str(s)) => parse_duration(&s.value()).map_err(Some),
        _ => Err(None),
    }
}

/// Parses `"90s"`, `"5m"`, `"1h30m"`, `"500ms"`, `"2d"` or `"90"` (seconds) into milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: use integer seconds or a number with a unit, like \
             \"500ms\", \"90s\", \"5m\", \"1h\", \"2d\" or \"1h30m\""
        )
    };
    let text_trimmed = text.trim();
    if text_trimmed.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text_trimmed.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let mut total: u64 = 0;
    let mut rest = text_trimmed;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    /// Every error message of parsing `tokens`, in order (none when it parses).
    fn errors(mac: Macro, tokens: TokenStream) -> Vec<String> {
        parse(mac, tokens)
            .err()
            .map(|e| e.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2d"), Ok(172_800_000));
        assert_eq!(parse_duration("42"), Ok(42_000));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn parses_every_cached_key() {
        let args = parse(
            Macro::Cached,
            quote!(
                ttl = "5m",
                key = "user:{id}",
                tags = ["user:{id}", "users"],
                stampede = "lock",
                stale = 60,
                jitter = 0.1,
                cache = &self.cache,
                skip = [conn],
                none = true,
                companions = false,
                crate = ::my::cache
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.ttl_ms.map(|t| t.value), Some(300_000));
        assert_eq!(args.stale_ms.map(|t| t.value), Some(60_000));
        assert_eq!(args.tags.len(), 2);
        assert_eq!(args.stampede.map(|s| s.value), Some(StampedeMode::Lock));
        assert_eq!(args.jitter.map(|s| s.value), Some(0.1));
        assert_eq!(args.skip.len(), 1);
        assert_eq!(args.none.map(|s| s.value), Some(true));
        assert_eq!(args.companions.map(|s| s.value), Some(false));
        assert!(args.krate.is_some() && args.cache.is_some() && args.key.is_some());
    }

    #[test]
    fn collects_all_errors() {
        let err = errors(
            Macro::Cached,
            quote!(tll = 1, ttl = "5 min", ttl = 3, keys = []),
        );
        assert_eq!(err.len(), 4, "{err:#?}");
        assert!(err[0].contains("did you mean `ttl`"));
        assert!(err[1].contains("invalid duration"));
        assert!(err[2].contains("duplicate key `ttl`"));
        assert!(err[3].contains("unknown key `keys` for #[cached]"));
    }

    /// The `## `key`` headings of a doc block, in order.
    fn doc_headings(doc: &str) -> Vec<&str> {
        doc.lines()
            .filter_map(|line| line.trim().strip_prefix("/// ## `"))
            .filter_map(|rest| rest.strip_suffix('`'))
            .collect()
    }

    fn table_keys(mac: Macro) -> Vec<&'static str> {
        mac.keys().map(|spec| spec.name).collect()
    }

    #[test]
    fn rustdoc_documents_every_key_of_the_table() {
        let lib = include_str!("lib.rs");
        let (cached_doc, rest) = lib
            .split_once("pub fn cached(")
            .unwrap_or_else(|| panic!("no `pub fn cached` in lib.rs"));
        let invalidate_doc = rest
            .split_once("pub fn invalidate(")
            .map_or("", |(doc, _)| doc);
        assert_eq!(doc_headings(cached_doc), table_keys(Macro::Cached));
        assert_eq!(doc_headings(invalidate_doc), table_keys(Macro::Invalidate));
    }

    #[test]
    fn readme_lists_every_key_of_the_table() {
        let readme = include_str!("../README.md");
        // `#[cached]`: one table row per key, "| `ttl` | ...".
        let cached: Vec<&str> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once("` |").map(|(name, _)| name))
            .collect();
        assert_eq!(cached, table_keys(Macro::Cached));
        // `#[invalidate]`: "Keys: `tags = [...]`, `keys = [...]`, ...".
        let line = readme
            .lines()
            .find(|line| line.starts_with("Keys: `"))
            .unwrap_or_else(|| panic!("no \"Keys: \" line for #[invalidate] in the README"));
        let invalidate: Vec<&str> = line
            .split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|code| code.split(" =").next())
            .collect();
        assert_eq!(invalidate, table_keys(Macro::Invalidate));
    }

    #[test]
    fn did_you_mean_comes_from_the_table() {
        let message = |tokens| errors(Macro::Invalidate, tokens).join("\n");
        assert!(message(quote!(tag = ["a"])).contains("did you mean `tags`?"));
        assert!(message(quote!(kes = ["a"])).contains("did you mean `keys`?"));
        // `ttl` is a key, but not one of #[invalidate]'s: no hint towards it.
        assert!(!message(quote!(tll = 1)).contains("did you mean"));
    }

    #[test]
    fn values_are_expressions_commas_in_generics_included() {
        let args = parse(
            Macro::Cached,
            quote!(cache = REG.get::<A, B>(), ttl = 5, skip = [a, b], key = "k"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cache = args.cache.map(|c| c.to_token_stream().to_string());
        assert_eq!(cache.as_deref(), Some("REG . get :: < A , B > ()"));
        assert_eq!(args.ttl_ms.map(|t| t.value), Some(5_000));
        assert_eq!(args.skip.len(), 2);
        // A malformed value is an error at its own tokens; the pairs after it are still read.
        let err = errors(Macro::Cached, quote!(tags = ["a" "b"], ttl = 0));
        assert_eq!(err.len(), 2, "{err:#?}");
        assert!(err[0].contains("`tags` expects a list of string templates"));
        assert!(err[1].contains("`ttl` must be greater than zero"));
    }

    #[test]
    fn flags_and_invalidate_keys() {
        let args = parse(Macro::Cached, quote!(none)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.none.map(|s| s.value), Some(true));
        let args = parse(Macro::Invalidate, quote!(tags = "a", keys = ["k:{id}"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((args.tags.len(), args.keys.len()), (1, 1));
        assert!(parse(Macro::Invalidate, quote!(ttl = 1)).is_err());
    }
}
