//! Attribute macros for [`cache-layer`](https://docs.rs/cache-layer). Use them through the runtime
//! crate, which re-exports them: `use cache_layer::{cached, invalidate};`.
//!
//! The generated code calls only `::cache_layer::__private::*` (or `<crate = path>::__private`),
//! so this crate never depends on the runtime's internals.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use proc_macro::TokenStream;

mod attr;
mod expand;
mod template;

/// Turns an `async fn` into a read-through cached call.
///
/// On a call, the fn builds its key from its arguments and asks the cache: a hit returns the
/// stored value without running the body; a miss runs the body once (concurrent callers of the
/// same key share that one run) and stores the result. When Redis is slow or down the body runs
/// and the caller never sees a cache error.
///
/// ```
/// use cache_layer::{cached, Cache};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] pub struct Product { pub id: u64 }
/// # #[derive(Debug)] pub struct DbError;
/// # async fn load_from_db(id: u64) -> Result<Product, DbError> { Ok(Product { id }) }
///
/// #[cached(ttl = 300, key = "product:{id}", tags = ["product:{id}", "catalog"], stampede = "lock")]
/// async fn get_product(id: u64) -> Result<Product, DbError> {
///     load_from_db(id).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// cache_layer::install(Cache::in_memory()); // once, at startup
/// let product = get_product(42).await.unwrap();
/// assert_eq!(product.id, 42);
/// # }
/// ```
///
/// # What gets cached
///
/// | return type | cached | not cached |
/// |---|---|---|
/// | `T` | every value | |
/// | `Result<T, E>` (also `io::Result<T>`, aliases named `Result`) | `Ok` | `Err` (the next call runs the body again) |
/// | `Option<T>` | `Some` | `None`, unless `none = true` |
/// | `Result<Option<T>, E>` | `Ok(Some)` | `Err`; `Ok(None)` unless `none = true` |
///
/// The cached value (`T`) must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`;
/// the error type `E` needs nothing. The shape is read from the last path segment of the return
/// type (`Option`, `Result`).
///
/// The fn must be `async` and return something (`-> ()` has nothing to cache: use
/// [`#[invalidate]`](macro@invalidate) for fns that write).
///
/// # Keys
///
/// ## `ttl`
///
/// How long an entry is fresh: integer seconds, or a string with units (`"500ms"`, `"90s"`,
/// `"5m"`, `"1h"`, `"2d"`, `"1h30m"`). Default: 300 seconds.
///
/// ```
/// # use cache_layer::cached;
/// #[cached(ttl = 90)]
/// async fn exchange_rate(currency: String) -> f64 { 1.1 }
///
/// #[cached(ttl = "1h30m")]
/// async fn report(day: u32) -> String { format!("report {day}") }
/// ```
///
/// ## `key`
///
/// The cache key, as a template: `{arg}` inserts an argument with `Display`, `{arg.field}` (also
/// `{arg.0}`, `{a.b.c}`) one of its fields, `{self.field}` a field of the receiver; `{{` and `}}`
/// are literal braces. Templates are checked at compile time: naming an unknown argument is an
/// error at the template.
///
/// ```
/// # use cache_layer::cached;
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] pub struct Profile;
/// pub struct User { pub id: u64 }
///
/// #[cached(key = "profile:{user.id}")]
/// async fn profile(user: &User) -> Profile { Profile }
/// ```
///
/// Without `key`, the default key is the fn's path plus an injective, readable encoding of every
/// argument that is not skipped, e.g. `shop::catalog::get_product(42,"en")` or, for a method,
/// `shop::Repo::find("ann")`. Two different argument tuples never share a key (`("a:b", "c")` and
/// `("a", "b:c")` differ). The arguments must implement `serde::Serialize`; the compile error
/// points at the argument that does not. Generic fns add their type and const parameters
/// (`parse::<u32>("7")`), so two instantiations never share entries; their `_invalidate`
/// companion takes the same generic parameters (use a turbofish where they cannot be inferred). `&self` / `&mut self` are not part of the key: two
/// instances share their entries unless the key names a field of `self` (`key = "{self.id}:.."`).
/// Prefer ordered collections (`BTreeMap`) over `HashMap` in key arguments.
///
/// ## `tags`
///
/// Templates (same syntax as `key`) recorded on the entry; [`Cache::invalidate_tag`] or
/// [`#[invalidate(tags = ...)]`](macro@invalidate) drops every entry carrying the tag.
///
/// ```
/// # use cache_layer::cached;
/// #[cached(tags = ["user:{user_id}", "orders"])]
/// async fn orders(user_id: u64, page: u32) -> Vec<u64> { vec![] }
/// ```
///
/// ## `stampede`
///
/// What concurrent misses of one key do: `"none"` (each caller loads), `"coalesce"` (default:
/// one load per process), `"lock"` (one load in the fleet, through a Redis lock), `"early"`
/// (probabilistic refresh shortly before expiry, so hot keys never miss).
///
/// ```
/// # use cache_layer::cached;
/// #[cached(ttl = 60, stampede = "lock")]
/// async fn leaderboard(game: u32) -> Vec<(String, u64)> { vec![] }
/// ```
///
/// ## `stale`
///
/// Grace period after the TTL (same formats as `ttl`): a stale value is served at once while it
/// is refreshed, and keeps being served while the body fails. For free fns whose arguments are
/// owned values the refresh runs in the background; for methods and borrowed arguments it runs
/// in the caller that noticed, while every other caller gets the stale value.
///
/// ```
/// # use cache_layer::cached;
/// #[cached(ttl = "5m", stale = "1h")]
/// async fn weather(city: String) -> String { format!("sunny in {city}") }
/// ```
///
/// ## `jitter`
///
/// Spreads TTLs by ±fraction (0.0 to 0.5) so entries written together do not expire together.
///
/// ```
/// # use cache_layer::cached;
/// #[cached(ttl = 600, jitter = 0.1)]
/// async fn price(sku: String) -> u64 { 999 }
/// ```
///
/// ## `cache`
///
/// Which [`Cache`] to use: an expression evaluated at each call, inside the fn, that yields a
/// `&Cache` (deref coercion applies, so `&Arc<Cache>` or `&LazyLock<Cache>` work too). So
/// `cache = &self.cache` works in methods. Without it the fn uses the
/// cache installed with [`cache_layer::install`]; with neither, the body runs uncached (one
/// warning is logged per fn) and nothing panics.
///
/// ```
/// use cache_layer::{cached, Cache};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] pub struct User;
///
/// pub struct Users { cache: Cache }
///
/// impl Users {
///     #[cached(cache = &self.cache, ttl = 60)]
///     pub async fn find(&self, name: &str) -> Option<User> { None }
/// }
/// ```
///
/// ## `skip`
///
/// Arguments left out of the default key: connections, clients, loggers, `impl Trait` arguments.
///
/// ```
/// # use cache_layer::cached;
/// # pub struct Pool;
/// #[cached(skip = [pool, log])]
/// async fn count(pool: &Pool, log: impl Fn(&str) + Send, table: String) -> u64 {
///     log("counting");
///     7
/// }
/// ```
///
/// ## `none`
///
/// `none = true` also caches `None` (and `Ok(None)`): "not found" answers are cached too.
///
/// ```
/// # use cache_layer::cached;
/// #[cached(none = true, ttl = 30)]
/// async fn find_user(email: String) -> Option<u64> { None }
/// ```
///
/// ## `companions`
///
/// `companions = false` generates no companion fns (see below). Required on methods of trait
/// impls, which cannot have extra methods; there the body is inlined into the cached fn.
///
/// ```
/// use cache_layer::{cached, Cache};
///
/// pub trait Catalog {
///     async fn title(&self, id: u64) -> String;
/// }
///
/// pub struct Db { cache: Cache }
///
/// impl Catalog for Db {
///     #[cached(cache = &self.cache, companions = false)]
///     async fn title(&self, id: u64) -> String { format!("book {id}") }
/// }
/// ```
///
/// ## `crate`
///
/// The path of the runtime crate, when it is not `::cache_layer` (renamed dependency, re-export).
///
/// ```
/// # use cache_layer::cached;
/// mod infra { pub use cache_layer as cache; }
///
/// #[cached(crate = infra::cache, ttl = 5)]
/// async fn answer() -> u32 { 42 }
/// ```
///
/// # Companions
///
/// For a cached fn `get(args..)` three more fns are generated next to it, with the same
/// visibility (for methods they are methods):
///
/// - `get_invalidate(key args..) -> Result<bool, cache_layer::Error>`: drops the entry of these
///   arguments. It takes the arguments the key is made of (all but the skipped ones, or the ones
///   the `key` template names) and whatever `cache = ...` mentions.
/// - `get_refresh(args..)`: runs the body and stores its result as the entry (what a miss would
///   store), then returns it.
/// - `get_uncached(args..)`: the body itself, never touching the cache.
///
/// ```
/// # use cache_layer::{cached, Cache};
/// #[cached(ttl = 60)]
/// async fn stock(sku: String) -> u32 { 3 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_layer::Error> {
/// # cache_layer::install(Cache::in_memory());
/// assert_eq!(stock("tea".into()).await, 3);
/// assert!(stock_invalidate("tea".into()).await?); // the entry was there
/// assert_eq!(stock_refresh("tea".into()).await, 3); // reloaded and stored
/// assert_eq!(stock_uncached("tea".into()).await, 3); // the body, no cache
/// # Ok(()) }
/// ```
///
/// # Recursion
///
/// A cached fn may call itself (with other arguments) or other cached fns: loads are shared
/// futures, not locks, so nothing deadlocks. Like any recursive `async fn` the recursive call
/// needs a box, and because the cache may run a load in the background the boxed future must be
/// declared `Send` (an `async fn` cannot prove its own future `Send` inside its body). Recurse
/// through a small boxed helper:
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use cache_layer::cached;
///
/// #[cached(ttl = 3600)]
/// async fn fib(n: u64) -> u64 {
///     if n < 2 { n } else { fib_boxed(n - 1).await + fib_boxed(n - 2).await }
/// }
///
/// fn fib_boxed(n: u64) -> Pin<Box<dyn Future<Output = u64> + Send>> {
///     Box::pin(fib(n))
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # cache_layer::install(cache_layer::Cache::in_memory());
/// assert_eq!(fib(50).await, 12_586_269_025);
/// # }
/// ```
///
/// A call that waits for its own key (same arguments) would wait forever, as infinite recursion
/// would.
///
/// # Methods, generics, borrowed arguments
///
/// Inherent methods (`&self`, `&mut self`, `self`, `self: Arc<Self>`) and trait-impl methods
/// work (trait impls need `companions = false`); attributes, doc comments, visibility, generics
/// and where clauses are kept. Arguments may borrow (`&str`, `&T`); then the load runs in the
/// calling task. Free fns whose arguments are all owned hand the load to a task of its own (so
/// stale entries refresh in the background), which needs the body's future to be `Send`.
///
/// An associated fn *without* `self` is recognised as being in an `impl` when its signature
/// names `Self`; otherwise the macro cannot tell it from a free fn, and the call to its
/// `_uncached` companion does not resolve: give it `companions = false`.
///
/// ```
/// # use cache_layer::cached;
/// use serde::{de::DeserializeOwned, Serialize};
///
/// /// Decodes a document.
/// #[cached(ttl = 60)]
/// pub(crate) async fn decode<T>(raw: &str) -> Option<T>
/// where
///     T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
/// {
///     None
/// }
/// ```
///
/// # Errors at compile time
///
/// Unknown or duplicate keys, values of the wrong type, a non-`async` fn, a missing return type,
/// a template naming an unknown argument and key arguments that are not `Serialize` are compile
/// errors pointing at the offending tokens (and listing the valid keys or arguments). The fn is
/// still emitted as written, so the rest of the crate keeps type-checking.
///
/// [`Cache`]: https://docs.rs/cache-layer/latest/cache_layer/struct.Cache.html
/// [`Cache::invalidate_tag`]: https://docs.rs/cache-layer/latest/cache_layer/struct.Cache.html#method.invalidate_tag
/// [`cache_layer::install`]: https://docs.rs/cache-layer/latest/cache_layer/fn.install.html
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(args.into(), item.into()).into()
}

/// Runs the body of an `async fn`, then, if it succeeded, invalidates cache tags and keys.
///
/// Success is `Ok` for a `Result` return type and any value otherwise; on `Err` the cache is left
/// alone. The templates are rendered from the arguments before the body runs (so the body may
/// consume them). Invalidation errors are logged, never returned: the caller gets the body's
/// result. Once the fn returns, no reader in this process gets a value that carried the tag or
/// key (see [`Cache::invalidate_tag`]).
///
/// ```
/// use cache_layer::{cached, invalidate, Cache};
/// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)] pub struct Product { pub price: u64 }
/// # #[derive(Debug)] pub struct DbError;
///
/// #[cached(ttl = 300, key = "product:{id}", tags = ["product:{id}"])]
/// async fn get_product(id: u64) -> Result<Product, DbError> { Ok(Product { price: 10 }) }
///
/// #[invalidate(tags = ["product:{id}"])]
/// async fn update_product(id: u64, price: u64) -> Result<(), DbError> { Ok(()) }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # cache_layer::install(Cache::in_memory());
/// # get_product(1).await.unwrap();
/// # update_product(1, 12).await.unwrap();
/// # }
/// ```
///
/// # Keys
///
/// ## `tags`
///
/// Templates (as in [`#[cached]`](macro@cached)): `{arg}`, `{arg.field}`, `{self.field}`.
///
/// ```
/// # use cache_layer::invalidate;
/// # pub struct Order { pub user_id: u64 }
/// #[invalidate(tags = ["user:{order.user_id}", "orders"])]
/// async fn place(order: Order) { /* ... */ }
/// ```
///
/// ## `keys`
///
/// Entry keys to delete, as templates (for entries cached with an explicit `key = "..."`).
///
/// ```
/// # use cache_layer::invalidate;
/// #[invalidate(keys = ["product:{id}", "product:{id}:reviews"])]
/// async fn delete_product(id: u64) -> std::io::Result<()> { Ok(()) }
/// ```
///
/// ## `cache`
///
/// The cache to invalidate in, evaluated at call time (`cache = &self.cache`); default: the
/// installed one (with none, nothing is invalidated and one warning is logged).
///
/// ```
/// use cache_layer::{invalidate, Cache};
/// pub struct Repo { cache: Cache }
/// impl Repo {
///     #[invalidate(cache = &self.cache, tags = ["user:{id}"])]
///     pub async fn rename(&mut self, id: u64, name: String) -> Result<(), String> { Ok(()) }
/// }
/// ```
///
/// ## `crate`
///
/// The path of the runtime crate, when it is not `::cache_layer`.
///
/// ```
/// # use cache_layer::invalidate;
/// mod infra { pub use cache_layer as cache; }
/// #[invalidate(crate = infra::cache, tags = ["all"])]
/// async fn reset() {}
/// ```
///
/// [`Cache::invalidate_tag`]: https://docs.rs/cache-layer/latest/cache_layer/struct.Cache.html#method.invalidate_tag
#[proc_macro_attribute]
pub fn invalidate(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::invalidate(args.into(), item.into()).into()
}
