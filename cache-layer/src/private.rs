//! Support code for the `#[cached]` and `#[invalidate]` macros. Not a public API: the generated
//! code calls only what is in here, so the macro crate never names anything else.
//!
//! Everything here may change between patch releases; the macro crate is pinned with `=x.y.z`.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::ser::{self, Serialize};

pub use crate::{Cache, Error, FunctionStats, Policy, Stampede};
pub use std::any::{type_name, type_name_of_val};
pub use std::format;
pub use std::string::String;
pub use std::time::Duration;

pub use crate::value::Value;

// ---------------------------------------------------------------------------------------------
// Which cache a call uses.
// ---------------------------------------------------------------------------------------------

/// A per-fn "warned already" flag, so a missing cache is logged once per fn, not once per call.
#[derive(Debug)]
pub struct WarnOnce(AtomicBool);

impl WarnOnce {
    /// A flag that has not warned yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        WarnOnce(AtomicBool::new(false))
    }

    fn first(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
}

/// The cache named by `cache = expr`: a `&Cache` (deref coercion also takes `&Arc<Cache>`,
/// `&LazyLock<Cache>`, ...). Cloned, so a borrow of `self` ends at once.
pub fn explicit(cache: &Cache) -> Option<Cache> {
    Some(cache.clone())
}

/// The cache a generated fn uses: the explicit one, else the installed global one, else none (the
/// fn then runs uncached; the first such call of each fn logs a warning).
pub fn resolve(explicit: Option<Cache>, warned: &WarnOnce, fn_path: &str) -> Option<Cache> {
    if explicit.is_some() {
        return explicit;
    }
    let global = Cache::global();
    if global.is_none() && warned.first() {
        tracing::warn!(
            function = fn_path,
            "no cache installed (cache_layer::install) and no `cache = ...` given: calls run uncached"
        );
    }
    global
}

// ---------------------------------------------------------------------------------------------
// Read-through, one fn per return shape and loader kind.
// ---------------------------------------------------------------------------------------------

/// Internal error for `Option` fns: the body returned `None`, which is not cached.
#[derive(Debug)]
pub struct NoneResult;

/// Internal error for `Result<Option<T>, E>` fns: either the body's error or an uncached `None`.
#[derive(Debug)]
pub enum OkNone<E> {
    /// The body returned `Err(e)`.
    Err(E),
    /// The body returned `Ok(None)`.
    None,
}

impl<E> OkNone<E> {
    fn into_result<T>(self) -> Result<Option<T>, E> {
        match self {
            OkNone::Err(e) => Err(e),
            OkNone::None => Ok(None),
        }
    }
}

/// Plain `T`, `'static` loader.
pub async fn fetch<T, F, Fut>(cache: &Cache, key: &str, policy: &Policy, loader: F) -> T
where
    T: Value,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    cache.get_or_fetch(key, policy, loader).await
}

/// Plain `T`, borrowing loader.
pub async fn fetch_scoped<T, F, Fut>(cache: &Cache, key: &str, policy: &Policy, loader: F) -> T
where
    T: Value,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    cache.get_or_fetch_scoped(key, policy, loader).await
}

/// `Result<T, E>`: only `Ok` is cached. `'static` loader.
pub async fn try_fetch<T, E, F, Fut>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    loader: F,
) -> Result<T, E>
where
    T: Value,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    cache.try_get_or_fetch(key, policy, loader).await
}

/// `Result<T, E>`: only `Ok` is cached. Borrowing loader.
pub async fn try_fetch_scoped<T, E, F, Fut>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    loader: F,
) -> Result<T, E>
where
    T: Value,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    cache.try_get_or_fetch_scoped(key, policy, loader).await
}

/// `Option<T>`: only `Some` is cached. `'static` loader.
pub async fn fetch_some<T, F, Fut>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    loader: F,
) -> Option<T>
where
    T: Value,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    cache
        .try_get_or_fetch(key, policy, move || async move {
            loader().await.ok_or(NoneResult)
        })
        .await
        .ok()
}

/// `Option<T>`: only `Some` is cached. Borrowing loader.
pub async fn fetch_some_scoped<T, F, Fut>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    loader: F,
) -> Option<T>
where
    T: Value,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    cache
        .try_get_or_fetch_scoped(key, policy, move || async move {
            loader().await.ok_or(NoneResult)
        })
        .await
        .ok()
}

/// `Result<Option<T>, E>`: only `Ok(Some)` is cached. `'static` loader.
pub async fn try_fetch_some<T, E, F, Fut>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    loader: F,
) -> Result<Option<T>, E>
where
    T: Value,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
{
    let loaded = cache
        .try_get_or_fetch(key, policy, move || async move { ok_some(loader().await) })
        .await;
    loaded.map(Some).or_else(OkNone::into_result)
}

/// `Result<Option<T>, E>`: only `Ok(Some)` is cached. Borrowing loader.
pub async fn try_fetch_some_scoped<T, E, F, Fut>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    loader: F,
) -> Result<Option<T>, E>
where
    T: Value,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let loaded = cache
        .try_get_or_fetch_scoped(key, policy, move || async move { ok_some(loader().await) })
        .await;
    loaded.map(Some).or_else(OkNone::into_result)
}

fn ok_some<T, E>(loaded: Result<Option<T>, E>) -> Result<T, OkNone<E>> {
    match loaded {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(OkNone::None),
        Err(e) => Err(OkNone::Err(e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Companions: `{fn}_refresh` stores what the body returned, `{fn}_invalidate` drops the entry.
// ---------------------------------------------------------------------------------------------

async fn store_value<T: Value>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    value: &T,
    fn_path: &str,
) {
    if let Err(error) = cache.set(key, value, policy).await {
        tracing::warn!(function = fn_path, %error, "refresh could not store the new value");
    }
}

/// `{fn}_refresh` of a plain `T`.
pub async fn store<T: Value>(cache: &Cache, key: &str, policy: &Policy, value: &T, fn_path: &str) {
    store_value(cache, key, policy, value, fn_path).await;
}

/// `{fn}_refresh` of a `Result<T, E>`: stores `Ok`, and on `Err` leaves the entry alone.
pub async fn store_ok<T: Value, E>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    value: &Result<T, E>,
    fn_path: &str,
) {
    if let Ok(value) = value {
        store_value(cache, key, policy, value, fn_path).await;
    }
}

/// `{fn}_refresh` of an `Option<T>` (`None` not cached): stores `Some`, drops the entry on `None`.
pub async fn store_some<T: Value>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    value: &Option<T>,
    fn_path: &str,
) {
    match value {
        Some(value) => store_value(cache, key, policy, value, fn_path).await,
        None => drop_entry(cache, key, fn_path).await,
    }
}

/// `{fn}_refresh` of a `Result<Option<T>, E>` (`None` not cached).
pub async fn store_ok_some<T: Value, E>(
    cache: &Cache,
    key: &str,
    policy: &Policy,
    value: &Result<Option<T>, E>,
    fn_path: &str,
) {
    match value {
        Ok(Some(value)) => store_value(cache, key, policy, value, fn_path).await,
        Ok(None) => drop_entry(cache, key, fn_path).await,
        Err(_) => {}
    }
}

async fn drop_entry(cache: &Cache, key: &str, fn_path: &str) {
    if let Err(error) = cache.delete(key).await {
        tracing::warn!(function = fn_path, %error, "refresh could not drop the old value");
    }
}

/// `{fn}_invalidate`: drops one entry; `Ok(false)` when there was none (or no cache is installed).
pub async fn delete(cache: Option<Cache>, key: Option<String>) -> Result<bool, Error> {
    match (cache, key) {
        (Some(cache), Some(key)) => cache.delete(&key).await,
        _ => Ok(false),
    }
}

/// `#[invalidate]`: drops the rendered tags and keys after the body succeeded. Failures are logged
/// (the body's result is what the caller gets either way).
pub async fn invalidate(cache: Option<Cache>, tags: &[String], keys: &[String], fn_path: &str) {
    let Some(cache) = cache else { return };
    if !tags.is_empty() {
        if let Err(error) = cache.invalidate_tags(tags).await {
            tracing::warn!(function = fn_path, %error, ?tags, "could not invalidate tags");
        }
    }
    for key in keys {
        if let Err(error) = cache.delete(key).await {
            tracing::warn!(function = fn_path, %error, key = %key, "could not invalidate key");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys.
// ---------------------------------------------------------------------------------------------

/// Builds the default key of a cached fn: `path::to::fn::<TypeParams>(arg, arg, ..)`.
///
/// The path comes from the `type_name` of a fn item nested in the generated fn, so methods get
/// their type (`crate::m::Repo::get`, `<crate::m::Repo as crate::m::Load>::get`). Each argument is
/// written with an injective, readable encoding of its serde data model (strings quoted and
/// escaped, every compound value delimited), so two different argument tuples of one fn never
/// share a key: `("a:b", "c")` is `("a:b","c")` and `("a", "b:c")` is `("a","b:c")`.
#[derive(Debug)]
pub struct KeyBuilder {
    key: String,
    generics: Vec<String>,
    args: String,
    arg_count: usize,
    failed: bool,
}

impl KeyBuilder {
    /// Starts a key. `marker_path` is the `type_name_of_val` of a fn item declared inside the
    /// generated fn (or a companion of it), `fn_name` the name of the cached fn.
    pub fn new(marker_path: &str, fn_name: &str) -> Self {
        let mut key = container_path(marker_path);
        if !key.is_empty() {
            key.push_str("::");
        }
        key.push_str(fn_name);
        KeyBuilder {
            key,
            generics: Vec::new(),
            args: String::new(),
            arg_count: 0,
            failed: false,
        }
    }

    /// Adds `Self` when the path alone does not tell the instantiation (`Repo<_>::get`).
    pub fn self_type(&mut self, self_type: &str) {
        if has_erased_generics(&self.key) {
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
            self.args.push(',');
        }
        self.arg_count += 1;
        if value.write_key(&mut self.args).is_err() {
            self.failed = true;
        }
    }

    /// The key, or `None` when an argument refused to serialize (the call then runs uncached).
    pub fn finish(self) -> Option<String> {
        if self.failed {
            return None;
        }
        let mut key = self.key;
        if !self.generics.is_empty() {
            key.push_str("::<");
            key.push_str(&self.generics.join(","));
            key.push('>');
        }
        key.push('(');
        key.push_str(&self.args);
        key.push(')');
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

    fn display<D: fmt::Display>(self, value: D) -> Result<(), KeyError> {
        write!(self.out, "{value}")?;
        Ok(())
    }
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

    fn serialize_bool(self, v: bool) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_i8(self, v: i8) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), KeyError> {
        self.display(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), KeyError> {
        // Debug keeps `1.0` distinct from the integer `1` and `-0.0` from `0.0`.
        write!(self.out, "{v:?}")?;
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), KeyError> {
        write!(self.out, "{v:?}")?;
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), KeyError> {
        write!(self.out, "{v:?}")?;
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), KeyError> {
        write!(self.out, "{v:?}")?;
        Ok(())
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
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, KeyError> {
        Ok(self.open(&format!("{name}::{variant}"), '(', ')'))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, KeyError> {
        Ok(self.open("", '{', '}'))
    }
    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Compound<'a>, KeyError> {
        Ok(self.open(name, '{', '}'))
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, KeyError> {
        Ok(self.open(&format!("{name}::{variant}"), '{', '}'))
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = KeyError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), KeyError> {
        self.element(value)
    }
    fn end(self) -> Result<(), KeyError> {
        Compound::end(self)
    }
}

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

impl ser::SerializeStruct for Compound<'_> {
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

impl ser::SerializeStructVariant for Compound<'_> {
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
    fn failing_serialize_gives_no_key() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no"))
            }
        }
        assert_eq!(key(&[&|k| k.arg(&Refuses)]), None);
    }

    /// Counts `WARN` events.
    struct CountWarnings(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl tracing::Subscriber for CountWarnings {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            if *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn no_cache_warns_once_per_fn() {
        // No unit test of this crate installs a global cache.
        assert!(Cache::global().is_none());
        let warnings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = CountWarnings(warnings.clone());
        tracing::subscriber::with_default(subscriber, || {
            let (first, second) = (WarnOnce::new(), WarnOnce::new());
            for _ in 0..3 {
                assert!(resolve(None, &first, "app::first").is_none());
            }
            assert_eq!(warnings.load(Ordering::SeqCst), 1);
            assert!(resolve(None, &second, "app::second").is_none());
            assert_eq!(warnings.load(Ordering::SeqCst), 2);
            // An explicit cache never warns.
            let cache = Cache::in_memory();
            assert!(resolve(explicit(&cache), &WarnOnce::new(), "app::third").is_some());
            assert_eq!(warnings.load(Ordering::SeqCst), 2);
        });
    }
}
