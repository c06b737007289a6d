//! Support code for the `#[cached]` and `#[invalidate]` macros. Not a public API: the generated
//! code calls only what is in here, so the macro crate never names anything else.
//!
//! A cached fn makes one call per concern, whatever its return type:
//!
//! - [`resolve`]: which cache the call uses ([`explicit`] for `cache = expr`);
//! - [`KeyBuilder`] (or a template): the key; [`policy`]: the policy;
//! - [`fetch`] (or [`fetch_scoped`] for a loader that borrows): the read-through itself, and
//!   [`store`] for its `{fn}_refresh` companion. All three are generic over the return shape, a
//!   [`Shape`] marker: [`Plain`], [`Optional`], [`Fallible`], [`FallibleOptional`]. The loader
//!   kind is a separate fn, not a trait, so that `Send` and `Value` are bounds of the fn the
//!   generated code calls and rustc's errors name them directly;
//! - [`delete`] for `{fn}_invalidate`, [`invalidate`] for `#[invalidate]`.
//!
//! Everything here may change between patch releases; the macro crate is pinned with `=x.y.z`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::keys::args::{KeyArg, KeyBuilder, KeyError, KeyPrefix};
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
// The policy.
// ---------------------------------------------------------------------------------------------

/// The policy of a cached fn: `Policy::ttl(ttl)`, counted under the `door="fn"` metrics label.
pub fn policy(ttl: Duration) -> Policy {
    let mut policy = Policy::ttl(ttl);
    policy.door = crate::metrics::Door::Fn;
    policy
}

/// The policy of a cached fn whose attribute's tags name no argument: built on the fn's first
/// call and kept in a static of the generated fn, so a call does not build it again.
#[derive(Debug)]
pub struct PolicyCell(std::sync::OnceLock<Policy>);

impl PolicyCell {
    /// A policy not built yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        PolicyCell(std::sync::OnceLock::new())
    }

    /// The policy, built by `build` on the first call.
    pub fn get(&self, build: impl FnOnce() -> Policy) -> &Policy {
        self.0.get_or_init(build)
    }
}

// ---------------------------------------------------------------------------------------------
// Read-through and refresh, generic over the return shape.
// ---------------------------------------------------------------------------------------------

/// How a cached fn's return type `R` splits into the cached value and what passes through
/// uncached (an `Err`, a `None`). Implemented by the four zero-sized markers the macro picks from
/// the return type: [`Plain`], [`Optional`], [`Fallible`], [`FallibleOptional`].
///
/// `T` is the part that is stored, `U` the part that is not (`Infallible`, [`NoneResult`], `E`,
/// [`OkNone<E>`]). [`fetch`], [`fetch_scoped`] and [`store`] require `T: Value`
/// in their own signatures (not through this trait), so a return type that cannot be cached gets
/// `Value`'s error message at the return type.
pub trait Shape<R, T, U>: Copy {
    /// Splits a loaded result: `Ok` is stored, `Err` goes back to the caller as is.
    fn split(out: R) -> Result<T, U>;
    /// Puts a cached value or an uncached result back into the return type.
    fn join(out: Result<T, U>) -> R;
    /// What `{fn}_refresh` does with a result of the body.
    fn refresh(out: &R) -> Refresh<'_, T>;
}

/// What `{fn}_refresh` does with the body's result.
#[derive(Debug)]
pub enum Refresh<'a, T> {
    /// Store it as the entry.
    Store(&'a T),
    /// Drop the entry (an uncached `None`: the old value is no longer the answer).
    Drop,
    /// Leave the entry alone (an `Err`).
    Keep,
}

/// `T`: every value is cached (also `Option<T>` with `none = true`).
#[derive(Debug, Clone, Copy)]
pub struct Plain;

/// `Option<T>`: `Some` is cached, `None` is not.
#[derive(Debug, Clone, Copy)]
pub struct Optional;

/// `Result<T, E>`: `Ok` is cached, `Err` is not (also `Result<Option<T>, E>` with `none = true`).
#[derive(Debug, Clone, Copy)]
pub struct Fallible;

/// `Result<Option<T>, E>`: `Ok(Some)` is cached, `Ok(None)` and `Err` are not.
#[derive(Debug, Clone, Copy)]
pub struct FallibleOptional;

/// The uncached part of an `Option<T>`: the body returned `None`.
#[derive(Debug)]
pub struct NoneResult;

/// The uncached part of a `Result<Option<T>, E>`: the body's error, or `Ok(None)`.
#[derive(Debug)]
pub enum OkNone<E> {
    /// The body returned `Err(e)`.
    Err(E),
    /// The body returned `Ok(None)`.
    None,
}

impl<T> Shape<T, T, Infallible> for Plain {
    fn split(out: T) -> Result<T, Infallible> {
        Ok(out)
    }
    fn join(out: Result<T, Infallible>) -> T {
        match out {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }
    fn refresh(out: &T) -> Refresh<'_, T> {
        Refresh::Store(out)
    }
}

impl<T> Shape<Option<T>, T, NoneResult> for Optional {
    fn split(out: Option<T>) -> Result<T, NoneResult> {
        out.ok_or(NoneResult)
    }
    fn join(out: Result<T, NoneResult>) -> Option<T> {
        out.ok()
    }
    fn refresh(out: &Option<T>) -> Refresh<'_, T> {
        out.as_ref().map_or(Refresh::Drop, Refresh::Store)
    }
}

impl<T, E> Shape<Result<T, E>, T, E> for Fallible {
    fn split(out: Result<T, E>) -> Result<T, E> {
        out
    }
    fn join(out: Result<T, E>) -> Result<T, E> {
        out
    }
    fn refresh(out: &Result<T, E>) -> Refresh<'_, T> {
        out.as_ref().map_or(Refresh::Keep, Refresh::Store)
    }
}

impl<T, E> Shape<Result<Option<T>, E>, T, OkNone<E>> for FallibleOptional {
    fn split(out: Result<Option<T>, E>) -> Result<T, OkNone<E>> {
        match out {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(OkNone::None),
            Err(e) => Err(OkNone::Err(e)),
        }
    }
    fn join(out: Result<T, OkNone<E>>) -> Result<Option<T>, E> {
        match out {
            Ok(value) => Ok(Some(value)),
            Err(OkNone::None) => Ok(None),
            Err(OkNone::Err(e)) => Err(e),
        }
    }
    fn refresh(out: &Result<Option<T>, E>) -> Refresh<'_, T> {
        match out {
            Ok(Some(value)) => Refresh::Store(value),
            Ok(None) => Refresh::Drop,
            Err(_) => Refresh::Keep,
        }
    }
}

/// The entry a generated fn reads or writes: its cache, key and policy.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The cache resolved for this call.
    pub cache: &'a Cache,
    /// The rendered or built key.
    pub key: &'a str,
    /// The fn's policy.
    pub policy: &'a Policy,
}

/// The read-through of a cached fn whose loader is `'static` (a free fn with owned arguments):
/// returns the cached value, or runs the loader (once for concurrent callers, possibly in a task
/// of its own, so a stale entry refreshes in the background) and stores what the shape `S` says
/// is cacheable.
pub async fn fetch<T, U, R, S, F, Fut>(entry: Entry<'_>, _shape: S, loader: F) -> R
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
    S: Shape<R, T, U>,
    T: Value,
    U: Send + 'static,
{
    let Entry { cache, key, policy } = entry;
    let split = move || async move { S::split(loader().await) };
    S::join(cache.try_get_or_fetch(key, policy, split).await)
}

/// [`fetch`] for a loader that borrows the caller's arguments or `self`: it runs in the calling
/// task.
pub async fn fetch_scoped<T, U, R, S, F, Fut>(entry: Entry<'_>, _shape: S, loader: F) -> R
where
    T: Value,
    S: Shape<R, T, U>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let Entry { cache, key, policy } = entry;
    let split = move || async move { S::split(loader().await) };
    S::join(cache.try_get_or_fetch_scoped(key, policy, split).await)
}

/// `{fn}_refresh`: stores the body's result as the entry (what a miss would store), drops the
/// entry on an uncached `None`, leaves it alone on `Err`. Failures are logged: the caller gets the
/// body's result either way.
pub async fn store<T: Value, U, R, S: Shape<R, T, U>>(
    entry: Entry<'_>,
    _shape: S,
    out: &R,
    fn_path: &str,
) {
    let Entry { cache, key, policy } = entry;
    match S::refresh(out) {
        Refresh::Store(value) => {
            if let Err(error) = cache.set(key, value, policy).await {
                tracing::warn!(function = fn_path, %error, "refresh could not store the new value");
            }
        }
        Refresh::Drop => {
            if let Err(error) = cache.delete(key).await {
                tracing::warn!(function = fn_path, %error, "refresh could not drop the old value");
            }
        }
        Refresh::Keep => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Invalidation.
// ---------------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

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
