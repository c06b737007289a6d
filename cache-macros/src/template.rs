//! Key and tag templates: `"product:{id}"`, `"user:{user.id}:{kind}"`, `"{{literal braces}}"`.
//!
//! A placeholder names an argument of the fn (or `self`), optionally followed by fields
//! (`{user.id}`, `{pair.0}`). Placeholders are rendered with `Display`. Format specs are not
//! supported: a key must not change with formatting options.

use proc_macro2::Span;
use syn::LitStr;

/// A parsed template.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    pub(crate) lit: LitStr,
    pub(crate) segments: Vec<Segment>,
}

/// A piece of a template.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Segment {
    Text(String),
    Arg { root: String, fields: Vec<String> },
}

impl Template {
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<Self> {
        let segments = parse_segments(&lit.value()).map_err(|msg| {
            syn::Error::new(
                lit.span(),
                format!("invalid template {:?}: {msg}", lit.value()),
            )
        })?;
        Ok(Template {
            lit: lit.clone(),
            segments,
        })
    }

    pub(crate) fn span(&self) -> Span {
        self.lit.span()
    }

    /// The `format!` string: text with braces escaped, `{}` per placeholder.
    pub(crate) fn format_string(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(&text.replace('{', "{{").replace('}', "}}")),
                Segment::Arg { .. } => out.push_str("{}"),
            }
        }
        out
    }

    /// The placeholders, in order.
    pub(crate) fn placeholders(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Arg { root, fields } => Some((root.as_str(), fields.as_slice())),
            Segment::Text(_) => None,
        })
    }
}

fn parse_segments(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '}' => return Err("unmatched `}` (write `}}` for a literal brace)".to_owned()),
            '{' => {
                let mut inner = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    return Err("unclosed `{` (write `{{` for a literal brace)".to_owned());
                }
                if !literal.is_empty() {
                    segments.push(Segment::Text(std::mem::take(&mut literal)));
                }
                segments.push(parse_placeholder(&inner)?);
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Text(literal));
    }
    Ok(segments)
}

fn parse_placeholder(inner: &str) -> Result<Segment, String> {
    if inner.trim().is_empty() {
        return Err("empty placeholder `{}`: name an argument, like `{id}`".to_owned());
    }
    if inner.contains(':') {
        return Err(format!(
            "format specs are not supported in `{{{inner}}}`: placeholders use `Display`"
        ));
    }
    let mut parts = inner.split('.');
    let root = parts.next().unwrap_or_default();
    if !is_ident(root) {
        return Err(format!(
            "`{{{inner}}}` must start with an argument name, like `{{id}}` or `{{user.id}}`"
        ));
    }
    let mut fields = Vec::new();
    for field in parts {
        let is_index = !field.is_empty() && field.chars().all(|c| c.is_ascii_digit());
        if !is_ident(field) && !is_index {
            return Err(format!("invalid field `{field}` in `{{{inner}}}`"));
        }
        fields.push(field.to_owned());
    }
    Ok(Segment::Arg {
        root: root.to_owned(),
        fields,
    })
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(root: &str, fields: &[&str]) -> Segment {
        Segment::Arg {
            root: root.into(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn parses_placeholders_and_escapes() {
        assert_eq!(
            parse_segments("product:{id}"),
            Ok(vec![Segment::Text("product:".into()), arg("id", &[])])
        );
        assert_eq!(
            parse_segments("{user.id}-{pair.0}{{x}}"),
            Ok(vec![
                arg("user", &["id"]),
                Segment::Text("-".into()),
                arg("pair", &["0"]),
                Segment::Text("{x}".into()),
            ])
        );
        assert_eq!(
            parse_segments("catalog"),
            Ok(vec![Segment::Text("catalog".into())])
        );
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in ["{}", "{id", "id}", "{id:?}", "{1x}", "{a..b}", "{a.}"] {
            assert!(parse_segments(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_string_escapes_text() {
        let lit = LitStr::new("{{a}}:{id}", Span::call_site());
        let t = Template::parse(&lit).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.format_string(), "{{a}}:{}");
    }
}
