//! Parsing of the attribute arguments: `#[cached(ttl = 300, key = "user:{id}", ...)]` and
//! `#[invalidate(tags = [...], keys = [...])]`.
//!
//! Every `key = value` pair is parsed on its own, so one bad pair does not hide the errors of the
//! others: all errors are collected with [`syn::Error::combine`].

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitBool, LitStr, Path, Token};

use crate::template::Template;

mod kw {
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(key);
    syn::custom_keyword!(tags);
    syn::custom_keyword!(stampede);
    syn::custom_keyword!(stale);
    syn::custom_keyword!(jitter);
    syn::custom_keyword!(cache);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(none);
    syn::custom_keyword!(keys);
    syn::custom_keyword!(companions);
}

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

    fn valid_keys(self) -> &'static [&'static str] {
        match self {
            Macro::Cached => &[
                "ttl",
                "key",
                "tags",
                "stampede",
                "stale",
                "jitter",
                "cache",
                "skip",
                "none",
                "companions",
                "crate",
            ],
            Macro::Invalidate => &["tags", "keys", "cache", "crate"],
        }
    }

    fn valid_keys_list(self) -> String {
        self.valid_keys()
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
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
    /// `tags` given (even as an empty list), for the `#[invalidate]` "nothing to do" check.
    pub(crate) tags_given: bool,
}

/// Parses the attribute arguments of `mac`, collecting every error.
pub(crate) fn parse(mac: Macro, tokens: TokenStream) -> Result<Args, syn::Error> {
    let mut args = Args::default();
    let mut errors: Option<syn::Error> = None;
    let mut seen: Vec<String> = Vec::new();
    for entry in split_top_level_commas(tokens) {
        if let Err(e) = parse_entry(mac, entry, &mut args, &mut seen) {
            push_error(&mut errors, e);
        }
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

/// Splits `a = 1, b = [x, y], c = f(1, 2)` at the commas that are not inside a group.
fn split_top_level_commas(tokens: TokenStream) -> Vec<TokenStream> {
    let mut entries = Vec::new();
    let mut current = Vec::new();
    for tt in tokens {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => {
                entries.push(current.drain(..).collect());
            }
            _ => current.push(tt),
        }
    }
    if !current.is_empty() {
        entries.push(current.into_iter().collect());
    }
    entries
}

/// The key of one entry, parsed through the custom keywords.
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

fn parse_key(input: ParseStream) -> syn::Result<Option<(KeyKind, Span)>> {
    let span = input.span();
    macro_rules! try_kw {
        ($($kw:ident => $kind:ident),*) => {
            $(if input.peek(kw::$kw) {
                input.parse::<kw::$kw>()?;
                return Ok(Some((KeyKind::$kind, span)));
            })*
        };
    }
    try_kw!(ttl => Ttl, key => Key, tags => Tags, stampede => Stampede, stale => Stale,
        jitter => Jitter, cache => Cache, skip => Skip, none => None, keys => Keys,
        companions => Companions);
    if input.peek(Token![crate]) {
        input.parse::<Token![crate]>()?;
        return Ok(Some((KeyKind::Crate, span)));
    }
    Ok(None)
}

fn key_name(kind: &KeyKind) -> &'static str {
    match kind {
        KeyKind::Ttl => "ttl",
        KeyKind::Key => "key",
        KeyKind::Tags => "tags",
        KeyKind::Stampede => "stampede",
        KeyKind::Stale => "stale",
        KeyKind::Jitter => "jitter",
        KeyKind::Cache => "cache",
        KeyKind::Skip => "skip",
        KeyKind::None => "none",
        KeyKind::Keys => "keys",
        KeyKind::Companions => "companions",
        KeyKind::Crate => "crate",
    }
}

fn parse_entry(
    mac: Macro,
    entry: TokenStream,
    args: &mut Args,
    seen: &mut Vec<String>,
) -> syn::Result<()> {
    let parser = |input: ParseStream| -> syn::Result<()> {
        let Some((kind, key_span)) = parse_key(input)? else {
            return Err(unknown_key(mac, input));
        };
        let name = key_name(&kind);
        if !mac.valid_keys().contains(&name) {
            return Err(syn::Error::new(
                key_span,
                format!(
                    "unknown key `{name}` for {}; valid keys are: {}",
                    mac.name(),
                    mac.valid_keys_list()
                ),
            ));
        }
        if seen.iter().any(|s| s == name) {
            return Err(syn::Error::new(
                key_span,
                format!("duplicate key `{name}`: each key may be given once"),
            ));
        }
        seen.push(name.to_owned());

        if input.is_empty() && matches!(kind, KeyKind::None | KeyKind::Companions) {
            // Flag style: `none` means `none = true`.
            let flag = WithSpan {
                value: true,
                span: key_span,
            };
            match kind {
                KeyKind::None => args.none = Some(flag),
                _ => args.companions = Some(flag),
            }
            return Ok(());
        }
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                if input.is_empty() {
                    key_span
                } else {
                    input.span()
                },
                format!(
                    "expected `=` after `{name}`, as in `{name} = {}`",
                    example(&kind)
                ),
            ));
        }
        input.parse::<Token![=]>()?;
        let value: TokenStream = input.parse()?;
        if value.is_empty() {
            return Err(syn::Error::new(
                key_span,
                format!(
                    "missing value for `{name}`, as in `{name} = {}`",
                    example(&kind)
                ),
            ));
        }
        let span = value.span();
        let wrong = |what: &str| {
            syn::Error::new_spanned(
                &value,
                format!(
                    "`{name}` expects {what}, as in `{name} = {}`",
                    example(&kind)
                ),
            )
        };
        match kind {
            KeyKind::Ttl | KeyKind::Stale => {
                let ms = duration_value(value.clone()).map_err(|msg| match msg {
                    Some(msg) => syn::Error::new_spanned(&value, msg),
                    None => {
                        wrong("integer seconds or a duration string like \"90s\", \"5m\", \"1h\"")
                    }
                })?;
                if matches!(kind, KeyKind::Ttl) {
                    if ms == 0 {
                        return Err(syn::Error::new_spanned(
                            &value,
                            "`ttl` must be greater than zero",
                        ));
                    }
                    args.ttl_ms = Some(WithSpan { value: ms, span });
                } else {
                    args.stale_ms = Some(WithSpan { value: ms, span });
                }
            }
            KeyKind::Key => {
                let lit: LitStr =
                    syn::parse2(value.clone()).map_err(|_| wrong("a string template"))?;
                args.key = Some(Template::parse(&lit)?);
            }
            KeyKind::Tags | KeyKind::Keys => {
                let lits =
                    string_list(value.clone()).map_err(|_| wrong("a list of string templates"))?;
                let mut templates = Vec::new();
                let mut errors = None;
                for lit in lits {
                    match Template::parse(&lit) {
                        Ok(t) => templates.push(t),
                        Err(e) => push_error(&mut errors, e),
                    }
                }
                if let Some(e) = errors {
                    return Err(e);
                }
                if matches!(kind, KeyKind::Tags) {
                    args.tags = templates;
                    args.tags_given = true;
                } else {
                    args.keys = templates;
                }
            }
            KeyKind::Stampede => {
                let lit: LitStr = syn::parse2(value.clone())
                    .map_err(|_| wrong("one of \"none\", \"coalesce\", \"lock\", \"early\""))?;
                let mode = match lit.value().as_str() {
                    "none" => StampedeMode::None,
                    "coalesce" => StampedeMode::Coalesce,
                    "lock" => StampedeMode::Lock,
                    "early" => StampedeMode::Early,
                    other => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "unknown stampede mode {other:?}; expected one of \"none\", \
                                 \"coalesce\", \"lock\", \"early\""
                            ),
                        ))
                    }
                };
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
                let idents =
                    ident_list(value.clone()).map_err(|_| wrong("a list of argument names"))?;
                args.skip = idents;
            }
            KeyKind::None | KeyKind::Companions => {
                let lit: LitBool =
                    syn::parse2(value.clone()).map_err(|_| wrong("`true` or `false`"))?;
                let flag = WithSpan {
                    value: lit.value,
                    span,
                };
                if matches!(kind, KeyKind::None) {
                    args.none = Some(flag);
                } else {
                    args.companions = Some(flag);
                }
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
    };
    parser.parse2(entry)
}

fn example(kind: &KeyKind) -> &'static str {
    match kind {
        KeyKind::Ttl => "300` or `ttl = \"5m\"",
        KeyKind::Key => "\"user:{id}\"",
        KeyKind::Tags => "[\"user:{id}\", \"users\"]",
        KeyKind::Keys => "[\"user:{id}\"]",
        KeyKind::Stampede => "\"lock\"",
        KeyKind::Stale => "60` or `stale = \"1m\"",
        KeyKind::Jitter => "0.1",
        KeyKind::Cache => "&self.cache",
        KeyKind::Skip => "[conn]",
        KeyKind::None => "true",
        KeyKind::Companions => "false",
        KeyKind::Crate => "::cache_layer",
    }
}

fn unknown_key(mac: Macro, input: ParseStream) -> syn::Error {
    let valid = mac.valid_keys_list();
    match input.call(Ident::parse_any) {
        Ok(ident) => {
            let name = ident.unraw().to_string();
            let hint = closest(&name, mac.valid_keys())
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            syn::Error::new(
                ident.span(),
                format!(
                    "unknown key `{name}` for {}{hint}\nvalid keys are: {valid}",
                    mac.name()
                ),
            )
        }
        Err(_) => syn::Error::new(
            input.span(),
            format!(
                "expected `key = value`; valid keys for {} are: {valid}",
                mac.name()
            ),
        ),
    }
}

/// The valid key closest to a misspelt one (edit distance at most 2).
fn closest(name: &str, valid: &[&'static str]) -> Option<&'static str> {
    valid
        .iter()
        .map(|k| (edit_distance(name, k), *k))
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
        let err = parse(
            Macro::Cached,
            quote!(tll = 1, ttl = "5 min", ttl = 3, keys = []),
        )
        .err()
        .map(|e| e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .unwrap_or_default();
        assert_eq!(err.len(), 4, "{err:#?}");
        assert!(err[0].contains("did you mean `ttl`"));
        assert!(err[1].contains("invalid duration"));
        assert!(err[2].contains("duplicate key `ttl`"));
        assert!(err[3].contains("unknown key `keys` for #[cached]"));
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
