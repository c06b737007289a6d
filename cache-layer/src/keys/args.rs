//! The default key of a `#[cached]` fn: its path, generic arguments and an injective, readable
//! encoding of its arguments (a small serde `Serializer`).
//!
//! The macro's generated code reaches these through `__private`; nothing else in the crate uses
//! them. The Redis layout around a user key is the parent module's concern.

use std::fmt::{self, Write as _};

use serde::ser::{self, Serialize};

/// Builds the default key of a cached fn: `path::to::fn::<TypeParams>(arg, arg, ..)`.
///
/// The path comes from the `type_name` of a fn item nested in the generated fn, so methods get
/// their type (`crate::m::Repo::get`, `<crate::m::Repo as crate::m::Load>::get`). Each argument is
/// written with an injective, readable encoding of its serde data model (strings quoted and
/// escaped, every compound value delimited), so two different argument tuples of one fn never
/// share a key: `("a:b", "c")` is `("a:b","c")` and `("a", "b:c")` is `("a","b:c")`.
///
/// The key is written into one buffer as it goes (path, `(`, arguments); type parameters, when
/// there are any, are spliced in after the fn name at the end.
#[derive(Debug)]
pub struct KeyBuilder {
    /// `path::fn(` and the arguments written so far.
    key: String,
    /// Where `::<generics>` goes: right after the fn name.
    name_end: usize,
    generics: Vec<String>,
    arg_count: usize,
    failed: bool,
}

/// Room reserved for the arguments beyond the path (a few integers or a short string fit).
const ARGS_HINT: usize = 32;

/// The `path::fn` part of a cached fn's keys, computed on its first call and kept in a static of
/// the generated fn (it depends on the fn only, never on a call's arguments or instantiation).
#[derive(Debug)]
pub struct KeyPrefix(std::sync::OnceLock<String>);

impl KeyPrefix {
    /// A prefix not computed yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        KeyPrefix(std::sync::OnceLock::new())
    }
}

/// `container::fn_name` (just `fn_name` at the crate root of a path-less marker).
fn fn_path(marker_path: &str, fn_name: &str) -> String {
    let mut path = container_path(marker_path);
    if !path.is_empty() {
        path.push_str("::");
    }
    path.push_str(fn_name);
    path
}

impl KeyBuilder {
    /// Starts a key. `marker_path` is the `type_name_of_val` of a fn item declared inside the
    /// generated fn (or a companion of it), `fn_name` the name of the cached fn.
    pub fn new(marker_path: &str, fn_name: &str) -> Self {
        Self::starting_with(&fn_path(marker_path, fn_name))
    }

    /// [`new`](Self::new) with the path taken from (or computed once into) `prefix`: what the
    /// generated code calls, so a call does not re-derive its fn's path.
    pub fn with_prefix(prefix: &KeyPrefix, marker_path: &str, fn_name: &str) -> Self {
        Self::starting_with(prefix.0.get_or_init(|| fn_path(marker_path, fn_name)))
    }

    fn starting_with(path: &str) -> Self {
        let mut key = String::with_capacity(path.len() + 2 + ARGS_HINT);
        key.push_str(path);
        let name_end = key.len();
        key.push('(');
        KeyBuilder {
            key,
            name_end,
            generics: Vec::new(),
            arg_count: 0,
            failed: false,
        }
    }

    /// Adds `Self` when the path alone does not tell the instantiation (`Repo<_>::get`).
    pub fn self_type(&mut self, self_type: &str) {
        if has_erased_generics(&self.key[..self.name_end]) {
            self.generics.push(format!("Self={self_type}"));
        }
    }

    /// Adds a type parameter that the key depends on.
    pub fn type_param(&mut self, name: &str) {
        self.generics.push(name.to_owned());
    }

    /// Adds a const parameter's value.
    pub fn const_param<C: fmt::Display>(&mut self, value: C) {
        self.generics.push(value.to_string());
    }

    /// Adds one argument.
    pub fn arg<T: KeyArg + ?Sized>(&mut self, value: &T) {
        if self.arg_count > 0 {
            self.key.push(',');
        }
        self.arg_count += 1;
        if value.write_key(&mut self.key).is_err() {
            self.failed = true;
        }
    }

    /// The key, or `None` when an argument refused to serialize (the call then runs uncached).
    pub fn finish(self) -> Option<String> {
        if self.failed {
            return None;
        }
        let mut key = self.key;
        key.push(')');
        if !self.generics.is_empty() {
            let generics = format!("::<{}>", self.generics.join(","));
            key.insert_str(self.name_end, &generics);
        }
        Some(key)
    }
}

/// An argument that can be part of a default cache key: anything `serde::Serialize`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key: it does not implement `serde::Serialize`",
    label = "this argument is part of the default key",
    note = "derive `serde::Serialize` for it, leave it out of the key with `skip = [arg]`, or give an explicit `key = \"...\"`"
)]
pub trait KeyArg {
    /// Appends the key encoding of `self`.
    fn write_key(&self, out: &mut String) -> Result<(), KeyError>;
}

impl<T: Serialize + ?Sized> KeyArg for T {
    fn write_key(&self, out: &mut String) -> Result<(), KeyError> {
        self.serialize(KeySerializer { out })
    }
}

/// Strips the marker fn's own name, compiler-made segments (`{{closure}}` of async fn bodies)
/// and the generated fn's name from a `type_name_of_val` path, leaving the module path or the impl
/// (`crate::m`, `crate::m::Repo<_>`, `<crate::m::Repo as crate::m::Load>`).
fn container_path(marker_path: &str) -> String {
    let mut segments: Vec<&str> = marker_path
        .split("::")
        .filter(|segment| !segment.starts_with('{'))
        .collect();
    // The marker fn, then the generated fn (`get`, `get_invalidate`, `get_refresh`).
    segments.pop();
    segments.pop();
    segments.join("::")
}

/// Whether a path shows generic arguments as `_` (impl generics a nested fn cannot see).
fn has_erased_generics(path: &str) -> bool {
    path.split(['<', '>', ',', ' ']).any(|part| part == "_")
}

/// Why an argument could not be written into a key (its `Serialize` impl failed).
#[derive(Debug)]
pub struct KeyError(String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

impl ser::Error for KeyError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        KeyError(msg.to_string())
    }
}

impl From<fmt::Error> for KeyError {
    fn from(_: fmt::Error) -> Self {
        KeyError("formatting failed".to_owned())
    }
}

/// The key encoding: a readable, injective rendering of the serde data model.
///
/// | data model          | written as            |
/// |---------------------|-----------------------|
/// | bool, ints, floats  | `true`, `-3`, `1.5`   |
/// | char, str           | `'c'`, `"a:b"` (Rust escapes) |
/// | bytes               | `x0aff` (hex)         |
/// | none, some, unit    | `None`, `Some(v)`, `()` |
/// | seq, tuple, map     | `[a,b]`, `(a,b)`, `{k:v}` |
/// | structs             | `Name{f:v}`, `Name(a,b)`, `Name` |
/// | enum variants       | `E::V`, `E::V(v)`, `E::V(a,b)`, `E::V{f:v}` |
///
/// Newtype structs are transparent (`UserId(7)` is `7`). Every string is quoted and escaped and
/// every compound value is delimited, so an encoding parses back to one data-model tree.
struct KeySerializer<'a> {
    out: &'a mut String,
}

/// Writes the elements of a compound value, separated by commas, and its closing delimiter.
struct Compound<'a> {
    out: &'a mut String,
    first: bool,
    close: char,
}

impl Compound<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.sep();
        value.serialize(KeySerializer { out: self.out })
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), KeyError> {
        self.sep();
        self.out.push_str(name);
        self.out.push(':');
        value.serialize(KeySerializer { out: self.out })
    }

    fn end(self) -> Result<(), KeyError> {
        self.out.push(self.close);
        Ok(())
    }
}

impl<'a> KeySerializer<'a> {
    fn open(self, prefix: &str, open: char, close: char) -> Compound<'a> {
        self.out.push_str(prefix);
        self.out.push(open);
        Compound {
            out: self.out,
            first: true,
            close,
        }
    }
}

/// Scalar `serialize_*` methods that write their value with `Display` or `Debug`, or (integers)
/// with the crate's decimal writer, which writes what `Display` writes.
macro_rules! written_with {
    (display: $($method:ident($ty:ty)),*) => {$(
        fn $method(self, v: $ty) -> Result<(), KeyError> {
            write!(self.out, "{v}")?;
            Ok(())
        }
    )*};
    (debug: $($method:ident($ty:ty)),*) => {$(
        fn $method(self, v: $ty) -> Result<(), KeyError> {
            write!(self.out, "{v:?}")?;
            Ok(())
        }
    )*};
    (unsigned: $($method:ident($ty:ty)),*) => {$(
        fn $method(self, v: $ty) -> Result<(), KeyError> {
            crate::util::push_decimal(self.out, u64::from(v));
            Ok(())
        }
    )*};
    (signed: $($method:ident($ty:ty)),*) => {$(
        fn $method(self, v: $ty) -> Result<(), KeyError> {
            crate::util::push_signed_decimal(self.out, i64::from(v));
            Ok(())
        }
    )*};
}

/// Appends `v` quoted and escaped, as `Debug` does: a string of printable ASCII without quote or
/// backslash is written as is (`Debug` leaves every such character alone).
fn push_quoted(out: &mut String, v: &str) -> Result<(), KeyError> {
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.reserve(v.len() + 2);
        out.push('"');
        out.push_str(v);
        out.push('"');
    } else {
        write!(out, "{v:?}")?;
    }
    Ok(())
}

/// `serialize_tuple_variant` and `serialize_struct_variant`: `E::V` then the delimited fields.
macro_rules! variant_compound {
    ($method:ident, $open:literal, $close:literal) => {
        fn $method(
            self,
            name: &'static str,
            _index: u32,
            variant: &'static str,
            _len: usize,
        ) -> Result<Compound<'a>, KeyError> {
            Ok(self.open(&format!("{name}::{variant}"), $open, $close))
        }
    };
}

impl<'a> ser::Serializer for KeySerializer<'a> {
    type Ok = ();
    type Error = KeyError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    written_with!(display: serialize_bool(bool), serialize_i128(i128), serialize_u128(u128));
    written_with!(unsigned: serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64));
    written_with!(signed: serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64));
    // Debug keeps `1.0` distinct from the integer `1` and `-0.0` from `0.0`, and quotes and
    // escapes chars and strings.
    written_with!(debug: serialize_f32(f32), serialize_f64(f64), serialize_char(char));
    fn serialize_str(self, v: &str) -> Result<(), KeyError> {
        push_quoted(self.out, v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), KeyError> {
        self.out.push('x');
        for byte in v {
            write!(self.out, "{byte:02x}")?;
        }
        Ok(())
    }
    fn serialize_none(self) -> Result<(), KeyError> {
        self.out.push_str("None");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), KeyError> {
        self.out.push_str("Some(");
        value.serialize(KeySerializer {
            out: &mut *self.out,
        })?;
        self.out.push(')');
        Ok(())
    }
    fn serialize_unit(self) -> Result<(), KeyError> {
        self.out.push_str("()");
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<(), KeyError> {
        self.out.push_str(name);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), KeyError> {
        write!(self.out, "{name}::{variant}")?;
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        write!(self.out, "{name}::{variant}(")?;
        value.serialize(KeySerializer {
            out: &mut *self.out,
        })?;
        self.out.push(')');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, KeyError> {
        Ok(self.open("", '[', ']'))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, KeyError> {
        Ok(self.open("", '(', ')'))
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, KeyError> {
        Ok(self.open(name, '(', ')'))
    }
    variant_compound!(serialize_tuple_variant, '(', ')');
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, KeyError> {
        Ok(self.open("", '{', '}'))
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Compound<'a>, KeyError> {
        Ok(self.open(name, '{', '}'))
    }
    variant_compound!(serialize_struct_variant, '{', '}');
}

/// The `Serialize*` traits of sequences and tuples write through [`Compound`]: elements
/// separated by commas, then the closing delimiter.
macro_rules! compound {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = KeyError;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
                self.element(value)
            }
            fn end(self) -> Result<(), KeyError> {
                Compound::end(self)
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

macro_rules! named_fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = KeyError;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), KeyError> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), KeyError> {
                Compound::end(self)
            }
        }
    )*};
}

named_fields!(SerializeStruct, SerializeStructVariant);

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), KeyError> {
        self.element(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.out.push(':');
        value.serialize(KeySerializer { out: self.out })
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn encode<T: Serialize + ?Sized>(value: &T) -> String {
        let mut out = String::new();
        value.write_key(&mut out).ok();
        out
    }

    fn key(args: &[&dyn Fn(&mut KeyBuilder)]) -> Option<String> {
        let mut builder = KeyBuilder::new("app::m::get::{{closure}}::__cache_path", "get");
        for arg in args {
            arg(&mut builder);
        }
        builder.finish()
    }

    #[derive(serde::Serialize)]
    struct User {
        id: u64,
        name: String,
    }

    #[derive(serde::Serialize)]
    struct UserId(u64);

    #[derive(serde::Serialize)]
    enum Shape {
        Dot,
        Circle(f64),
        Rect(u32, u32),
        Named { label: String },
    }

    #[test]
    fn readable_scalars_and_strings() {
        assert_eq!(encode(&42u64), "42");
        assert_eq!(encode(&-3i8), "-3");
        assert_eq!(encode(&1.0f64), "1.0");
        assert_eq!(encode(&-0.0f64), "-0.0");
        assert_eq!(encode(&true), "true");
        assert_eq!(encode("a:b"), "\"a:b\"");
        assert_eq!(encode(&'\''), "'\\''");
        assert_eq!(encode("quote\"back\\"), "\"quote\\\"back\\\\\"");
    }

    #[test]
    fn compound_values() {
        assert_eq!(
            encode(&User {
                id: 7,
                name: "ann".into()
            }),
            "User{id:7,name:\"ann\"}"
        );
        assert_eq!(encode(&UserId(7)), "7");
        assert_eq!(encode(&vec![1, 2]), "[1,2]");
        assert_eq!(encode(&(1, "x")), "(1,\"x\")");
        assert_eq!(encode(&Some(Some(1))), "Some(Some(1))");
        assert_eq!(encode(&Some(None::<u8>)), "Some(None)");
        assert_eq!(encode(&None::<Option<u8>>), "None");
        assert_eq!(encode(&Some(())), "Some(())");
        let map: BTreeMap<&str, u8> = [("a", 1), ("b", 2)].into_iter().collect();
        assert_eq!(encode(&map), "{\"a\":1,\"b\":2}");
        assert_eq!(encode(&Shape::Dot), "Shape::Dot");
        assert_eq!(encode(&Shape::Circle(1.5)), "Shape::Circle(1.5)");
        assert_eq!(encode(&Shape::Rect(1, 2)), "Shape::Rect(1,2)");
        assert_eq!(
            encode(&Shape::Named { label: "l".into() }),
            "Shape::Named{label:\"l\"}"
        );
        assert_eq!(encode(&Bytes(vec![0, 255])), "x00ff");
    }

    /// A value that serializes with `serialize_bytes`, without pulling in serde_bytes.
    struct Bytes(Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    #[test]
    fn argument_tuples_never_share_a_key() {
        let a = key(&[&|k| k.arg("a:b"), &|k| k.arg("c")]);
        let b = key(&[&|k| k.arg("a"), &|k| k.arg("b:c")]);
        let c = key(&[&|k| k.arg("a\",\"b"), &|k| k.arg("")]);
        let d = key(&[&|k| k.arg("a"), &|k| k.arg("b")]);
        assert_eq!(a.as_deref(), Some("app::m::get(\"a:b\",\"c\")"));
        let all = [a, b, c, d];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_ne!(
            key(&[&|k| k.arg(&Some(None::<u8>))]),
            key(&[&|k| k.arg(&None::<Option<u8>>)])
        );
        assert_ne!(
            key(&[&|k| k.arg(&vec![1, 2])]),
            key(&[&|k| k.arg(&vec![12])])
        );
        assert_ne!(key(&[]), key(&[&|k| k.arg(&())]));
    }

    #[test]
    fn paths_of_free_fns_methods_and_trait_impls() {
        assert_eq!(
            container_path("app::m::get::{{closure}}::__cache_path"),
            "app::m"
        );
        assert_eq!(
            container_path("app::m::get_invalidate::__cache_path"),
            "app::m"
        );
        assert_eq!(
            container_path("app::Repo::get::{{closure}}::__cache_path"),
            "app::Repo"
        );
        assert_eq!(
            container_path("<app::Repo as app::Load>::get::{{closure}}::__cache_path"),
            "<app::Repo as app::Load>"
        );
        assert_eq!(
            container_path("app::Repo<_>::get::__cache_path"),
            "app::Repo<_>"
        );
        assert_eq!(
            container_path("app::test::{{closure}}::get::{{closure}}::__cache_path"),
            "app::test"
        );
        assert_eq!(container_path("get::__cache_path"), "");
        assert!(has_erased_generics("app::Repo<_>"));
        assert!(has_erased_generics("<app::Repo<u8, _> as app::Load>"));
        assert!(!has_erased_generics("<app::Repo as app::Load>"));
    }

    #[test]
    fn generics_and_self() {
        let mut builder = KeyBuilder::new("app::Repo<_>::get::__cache_path", "get");
        builder.self_type("app::Repo<u8>");
        builder.type_param("alloc::string::String");
        builder.const_param(3);
        builder.arg(&1u8);
        assert_eq!(
            builder.finish().as_deref(),
            Some("app::Repo<_>::get::<Self=app::Repo<u8>,alloc::string::String,3>(1)")
        );
        let mut builder = KeyBuilder::new("app::Repo::get::__cache_path", "get");
        builder.self_type("app::Repo");
        assert_eq!(builder.finish().as_deref(), Some("app::Repo::get()"));
    }

    #[test]
    fn fast_paths_write_what_display_and_debug_write() {
        for v in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            assert_eq!(encode(&v), v.to_string());
        }
        for v in [0i64, -1, 7, -10, i64::from(i32::MIN), i64::MIN, i64::MAX] {
            assert_eq!(encode(&v), v.to_string());
        }
        assert_eq!(encode(&u8::MAX), "255");
        assert_eq!(encode(&i16::MIN), "-32768");
        assert_eq!(encode(&u128::MAX), u128::MAX.to_string());
        for s in [
            "",
            "plain",
            "a:b c",
            "quote\"",
            "back\\slash",
            "tab\t",
            "new\nline",
            "\u{7f}",
            "caf\u{e9}",
            "e\u{301}",
            "\u{200b}",
            "'single'",
            "~!@#$%^&*()_+{}|<>?",
        ] {
            assert_eq!(encode(s), format!("{s:?}"), "{s:?}");
        }
    }

    #[test]
    fn a_prefix_is_computed_once_and_gives_the_same_keys() {
        static PREFIX: KeyPrefix = KeyPrefix::new();
        let marker = "app::m::get::{{closure}}::__cache_path";
        for id in [1u64, 2] {
            let mut cached = KeyBuilder::with_prefix(&PREFIX, marker, "get");
            let mut plain = KeyBuilder::new(marker, "get");
            cached.arg(&id);
            plain.arg(&id);
            assert_eq!(cached.finish(), plain.finish());
        }
        assert_eq!(PREFIX.0.get().map(String::as_str), Some("app::m::get"));
    }

    #[test]
    fn failing_serialize_gives_no_key() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no"))
            }
        }
        assert_eq!(key(&[&|k| k.arg(&Refuses)]), None);
    }
}
