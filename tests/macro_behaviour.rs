//! `#[cached]` / `#[invalidate]` behaviour against the embedded in-memory store and the shared
//! Redis (a unique namespace per test). Every fn takes its cache as a skipped argument
//! (`cache = cache, skip = [cache, ..]`), so tests never share entries and nothing here depends on
//! the process-global `install` (see `macro_global.rs` and `macro_no_cache.rs` for that).

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_layer::{cached, invalidate, Cache};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use support::redis_cache;

/// The same scenarios run on both stores.
fn caches(test: &str) -> Vec<(&'static str, Cache)> {
    vec![("redis", redis_cache(test)), ("memory", Cache::in_memory())]
}

fn count(calls: &AtomicUsize) -> usize {
    calls.load(Ordering::SeqCst)
}

/// Guards against deadlocks: a hung test fails instead of hanging CI.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

// ---------------------------------------------------------------------------------------------
// Hits, misses, return shapes, default keys.
// ---------------------------------------------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls], ttl = 60)]
async fn square(cache: &Cache, calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[cached(cache = cache, skip = [cache, calls], ttl = "1m")]
async fn pair(cache: &Cache, calls: &AtomicUsize, a: String, b: &str) -> (String, String) {
    calls.fetch_add(1, Ordering::SeqCst);
    (a, b.to_owned())
}

#[cached(cache = cache, skip = [cache, calls])]
async fn fallible(cache: &Cache, calls: &AtomicUsize, n: u64) -> Result<u64, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    if n % 2 == 1 {
        return Err(format!("{n} is odd"));
    }
    Ok(n / 2)
}

#[cached(cache = cache, skip = [cache, calls])]
async fn find(cache: &Cache, calls: &AtomicUsize, n: u64) -> Option<u64> {
    calls.fetch_add(1, Ordering::SeqCst);
    (n > 0).then_some(n)
}

#[cached(cache = cache, skip = [cache, calls], none = true)]
async fn find_cache_none(cache: &Cache, calls: &AtomicUsize, n: u64) -> Option<u64> {
    calls.fetch_add(1, Ordering::SeqCst);
    (n > 0).then_some(n)
}

#[cached(cache = cache, skip = [cache, calls])]
async fn lookup(cache: &Cache, calls: &AtomicUsize, n: u64) -> Result<Option<u64>, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    match n {
        0 => Ok(None),
        1 => Err("one".into()),
        n => Ok(Some(n)),
    }
}

#[tokio::test]
async fn hits_skip_the_body_and_misses_run_it_once() {
    for (store, cache) in caches("macro_hits") {
        let calls = AtomicUsize::new(0);
        assert_eq!(square(&cache, &calls, 3).await, 9, "{store}");
        assert_eq!(square(&cache, &calls, 3).await, 9, "{store}");
        assert_eq!(count(&calls), 1, "{store}: the second call is a hit");
        assert_eq!(square(&cache, &calls, 4).await, 16, "{store}");
        assert_eq!(count(&calls), 2, "{store}: other arguments, other entry");
        // Per-function stats (shared by every test that calls `square`).
        let all = cache_layer::function_stats();
        let stats = all
            .iter()
            .find(|s| s.name == concat!(module_path!(), "::square"));
        assert!(
            stats.is_some_and(|s| s.hits >= 1 && s.loads >= 2),
            "{store}: {all:?}"
        );
        // The default key: module path, fn name, readable arguments.
        let key = format!("{}::square(3)", module_path!());
        assert_eq!(
            cache.get::<u64>(&key).await.ok().flatten(),
            Some(9),
            "{store}: {key}"
        );
    }
}

#[tokio::test]
async fn argument_tuples_never_share_a_key() {
    for (store, cache) in caches("macro_injective") {
        let calls = AtomicUsize::new(0);
        let first = pair(&cache, &calls, "a:b".into(), "c").await;
        let second = pair(&cache, &calls, "a".into(), "b:c").await;
        let third = pair(&cache, &calls, "a\",\"b".into(), "").await;
        assert_eq!(first, ("a:b".to_owned(), "c".to_owned()), "{store}");
        assert_eq!(second, ("a".to_owned(), "b:c".to_owned()), "{store}");
        assert_eq!(third, ("a\",\"b".to_owned(), String::new()), "{store}");
        assert_eq!(count(&calls), 3, "{store}");
        assert_eq!(
            pair(&cache, &calls, "a".into(), "b:c").await,
            second,
            "{store}"
        );
        assert_eq!(count(&calls), 3, "{store}");
    }
}

#[tokio::test]
async fn result_caches_ok_only() {
    for (store, cache) in caches("macro_result") {
        let calls = AtomicUsize::new(0);
        assert_eq!(
            fallible(&cache, &calls, 3).await,
            Err("3 is odd".into()),
            "{store}"
        );
        assert_eq!(
            fallible(&cache, &calls, 3).await,
            Err("3 is odd".into()),
            "{store}"
        );
        assert_eq!(count(&calls), 2, "{store}: errors are not cached");
        assert_eq!(fallible(&cache, &calls, 4).await, Ok(2), "{store}");
        assert_eq!(fallible(&cache, &calls, 4).await, Ok(2), "{store}");
        assert_eq!(count(&calls), 3, "{store}: Ok is cached");
    }
}

#[tokio::test]
async fn option_caches_some_and_none_only_when_asked() {
    for (store, cache) in caches("macro_option") {
        let calls = AtomicUsize::new(0);
        assert_eq!(find(&cache, &calls, 0).await, None, "{store}");
        assert_eq!(find(&cache, &calls, 0).await, None, "{store}");
        assert_eq!(count(&calls), 2, "{store}: None is not cached");
        assert_eq!(find(&cache, &calls, 5).await, Some(5), "{store}");
        assert_eq!(find(&cache, &calls, 5).await, Some(5), "{store}");
        assert_eq!(count(&calls), 3, "{store}: Some is cached");

        let calls = AtomicUsize::new(0);
        assert_eq!(find_cache_none(&cache, &calls, 0).await, None, "{store}");
        assert_eq!(find_cache_none(&cache, &calls, 0).await, None, "{store}");
        assert_eq!(count(&calls), 1, "{store}: none = true caches None");

        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            assert_eq!(lookup(&cache, &calls, 0).await, Ok(None), "{store}");
            assert_eq!(
                lookup(&cache, &calls, 1).await,
                Err("one".into()),
                "{store}"
            );
            assert_eq!(lookup(&cache, &calls, 2).await, Ok(Some(2)), "{store}");
        }
        assert_eq!(count(&calls), 5, "{store}: only Ok(Some) is cached");
    }
}

// ---------------------------------------------------------------------------------------------
// Tags, keys and #[invalidate].
// ---------------------------------------------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls], key = "product:{id}", tags = ["product:{id}", "catalog"])]
async fn product(cache: &Cache, calls: &AtomicUsize, id: u64) -> Result<String, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(format!("product {id} v{}", count(calls)))
}

#[invalidate(cache = cache, tags = ["product:{id}"])]
async fn update_product(cache: &Cache, id: u64, succeed: bool) -> Result<(), String> {
    let _ = id;
    if !succeed {
        return Err("db down".into());
    }
    Ok(())
}

#[invalidate(cache = cache, tags = ["catalog"])]
async fn rebuild_catalog(cache: &Cache) {}

#[invalidate(cache = cache, keys = ["product:{id}"])]
async fn drop_product(cache: &Cache, id: u64) -> Option<u64> {
    Some(id)
}

/// Reads until two reads agree. An entry loaded in the same millisecond as an invalidation of one
/// of its tags counts as invalidated (the engine errs on the side of never serving a value that
/// might predate the invalidation), so right after an invalidation a value may be loaded twice.
async fn settled<F, Fut>(read: F) -> Result<String, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let mut last = read().await;
    loop {
        let next = read().await;
        if next == last {
            return next;
        }
        last = next;
    }
}

#[tokio::test]
async fn invalidate_drops_tags_and_keys_on_success_only() {
    for (store, cache) in caches("macro_tags") {
        let calls = AtomicUsize::new(0);
        let one = || product(&cache, &calls, 1);
        let two = || product(&cache, &calls, 2);
        let v1 = one().await;
        let v2 = two().await;
        assert_eq!(v1, Ok("product 1 v1".into()), "{store}");
        assert_eq!(v2, Ok("product 2 v2".into()), "{store}");
        // The explicit key is used verbatim.
        assert_eq!(
            cache.get::<String>("product:1").await.ok().flatten(),
            v1.clone().ok(),
            "{store}"
        );

        assert_eq!(
            update_product(&cache, 1, false).await,
            Err("db down".into()),
            "{store}"
        );
        assert_eq!(one().await, v1, "{store}: Err leaves the cache alone");

        assert_eq!(update_product(&cache, 1, true).await, Ok(()), "{store}");
        let v1_after = settled(one).await;
        assert_ne!(v1_after, v1, "{store}: tag product:1 dropped, reloaded");
        assert_eq!(two().await, v2, "{store}: product:2 untouched");

        assert_eq!(drop_product(&cache, 2).await, Some(2), "{store}");
        let v2_after = two().await;
        assert_ne!(v2_after, v2, "{store}: key product:2 dropped, reloaded");
        assert_eq!(one().await, v1_after, "{store}: product:1 untouched");

        let loads = count(&calls);
        rebuild_catalog(&cache).await;
        assert_ne!(one().await, v1_after, "{store}: tag catalog dropped");
        assert_ne!(two().await, v2_after, "{store}: tag catalog dropped");
        assert!(count(&calls) >= loads + 2, "{store}");
    }
}

// ---------------------------------------------------------------------------------------------
// Companions.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn companions_invalidate_refresh_and_bypass() {
    for (store, cache) in caches("macro_companions") {
        let calls = AtomicUsize::new(0);
        assert_eq!(square(&cache, &calls, 7).await, 49, "{store}");
        assert_eq!(
            square_invalidate(&cache, 7).await.ok(),
            Some(true),
            "{store}"
        );
        assert_eq!(
            square_invalidate(&cache, 7).await.ok(),
            Some(false),
            "{store}: already gone"
        );
        assert_eq!(square(&cache, &calls, 7).await, 49, "{store}");
        assert_eq!(count(&calls), 2, "{store}: reloaded after invalidate");

        assert_eq!(square_refresh(&cache, &calls, 7).await, 49, "{store}");
        assert_eq!(count(&calls), 3, "{store}: refresh runs the body");
        assert_eq!(square(&cache, &calls, 7).await, 49, "{store}");
        assert_eq!(count(&calls), 3, "{store}: and stores the result");

        assert_eq!(square_uncached(&cache, &calls, 7).await, 49, "{store}");
        assert_eq!(square_uncached(&cache, &calls, 7).await, 49, "{store}");
        assert_eq!(count(&calls), 5, "{store}: uncached always runs the body");

        // Refresh of an Option that became None drops the entry.
        let calls = AtomicUsize::new(0);
        assert_eq!(find(&cache, &calls, 8).await, Some(8), "{store}");
        assert_eq!(find_refresh(&cache, &calls, 8).await, Some(8), "{store}");
        assert_eq!(count(&calls), 2, "{store}");
        assert_eq!(find(&cache, &calls, 8).await, Some(8), "{store}");
        assert_eq!(count(&calls), 2, "{store}");

        // Refresh of an Err leaves the entry alone; refresh of a template key works.
        let calls = AtomicUsize::new(0);
        assert_eq!(
            product(&cache, &calls, 9).await,
            Ok("product 9 v1".into()),
            "{store}"
        );
        assert_eq!(
            product_refresh(&cache, &calls, 9).await,
            Ok("product 9 v2".into()),
            "{store}"
        );
        assert_eq!(
            product(&cache, &calls, 9).await,
            Ok("product 9 v2".into()),
            "{store}"
        );
        assert_eq!(
            product_invalidate(&cache, 9).await.ok(),
            Some(true),
            "{store}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Methods.
// ---------------------------------------------------------------------------------------------

struct Repo {
    cache: Cache,
    tenant: String,
    calls: AtomicUsize,
    total: u64,
}

impl Repo {
    fn new(cache: &Cache, tenant: &str) -> Self {
        Repo {
            cache: cache.clone(),
            tenant: tenant.into(),
            calls: AtomicUsize::new(0),
            total: 0,
        }
    }

    /// `&self` is not part of the default key: instances share entries.
    #[cached(cache = &self.cache)]
    async fn shared_name(&self, id: u64) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("{}:{id}", self.tenant)
    }

    /// A key that names a field of `self` keeps instances apart.
    #[cached(cache = &self.cache, key = "{self.tenant}:name:{id}", tags = ["tenant:{self.tenant}"])]
    async fn name(&self, id: u64) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("{}:{id}", self.tenant)
    }

    #[cached(cache = &self.cache)]
    async fn add(&mut self, amount: u64) -> u64 {
        self.total += amount;
        self.total
    }

    #[invalidate(cache = &self.cache, tags = ["tenant:{self.tenant}"])]
    async fn rename_all(&mut self) -> Result<(), String> {
        self.total = 0;
        Ok(())
    }
}

trait Source {
    fn load(&self, id: u64) -> impl Future<Output = Result<u64, String>> + Send;
}

impl Source for Repo {
    #[cached(cache = &self.cache, companions = false)]
    async fn load(&self, id: u64) -> Result<u64, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if id == 0 {
            return Err("zero".into());
        }
        Ok(id * 10)
    }
}

#[tokio::test]
async fn methods_inherent_and_trait_impl() {
    for (store, cache) in caches("macro_methods") {
        let mut a = Repo::new(&cache, "a");
        let b = Repo::new(&cache, "b");

        assert_eq!(a.shared_name(1).await, "a:1", "{store}");
        assert_eq!(
            b.shared_name(1).await,
            "a:1",
            "{store}: &self is not in the default key"
        );
        assert_eq!(count(&a.calls) + count(&b.calls), 1, "{store}");

        assert_eq!(a.name(1).await, "a:1", "{store}");
        assert_eq!(
            b.name(1).await,
            "b:1",
            "{store}: {{self.tenant}} is in the key"
        );
        assert_eq!(a.name(1).await, "a:1", "{store}");
        assert_eq!(count(&a.calls), 2, "{store}");
        assert_eq!(
            cache
                .get::<String>("b:name:1")
                .await
                .ok()
                .flatten()
                .as_deref(),
            Some("b:1"),
            "{store}"
        );

        // Companions are methods.
        assert_eq!(a.name_invalidate(1).await.ok(), Some(true), "{store}");
        assert_eq!(a.name_refresh(1).await, "a:1", "{store}");
        assert_eq!(a.name_uncached(2).await, "a:2", "{store}");
        assert_eq!(count(&a.calls), 4, "{store}");

        // #[invalidate] on a &mut self method.
        assert_eq!(a.rename_all().await, Ok(()), "{store}");
        assert_eq!(a.name(1).await, "a:1", "{store}");
        assert_eq!(count(&a.calls), 5, "{store}: tag tenant:a dropped");
        assert_eq!(b.name(1).await, "b:1", "{store}");
        assert_eq!(count(&b.calls), 1, "{store}: tenant:b untouched");

        // &mut self: the body runs on a miss only.
        assert_eq!(a.add(5).await, 5, "{store}");
        assert_eq!(a.add(5).await, 5, "{store}: cached, the body did not run");
        assert_eq!(a.total, 5, "{store}");
        assert_eq!(a.add_uncached(5).await, 10, "{store}");

        // Trait impl (companions = false): Ok cached, Err not.
        let calls_before = count(&b.calls);
        assert_eq!(b.load(3).await, Ok(30), "{store}");
        assert_eq!(b.load(3).await, Ok(30), "{store}");
        assert_eq!(b.load(0).await, Err("zero".into()), "{store}");
        assert_eq!(b.load(0).await, Err("zero".into()), "{store}");
        assert_eq!(count(&b.calls) - calls_before, 3, "{store}");
        let key = format!("<{0}::Repo as {0}::Source>::load(3)", module_path!());
        assert_eq!(
            cache.get::<u64>(&key).await.ok().flatten(),
            Some(30),
            "{store}: {key}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Generics.
// ---------------------------------------------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls])]
async fn parse<T>(cache: &Cache, calls: &AtomicUsize, raw: &str) -> Option<T>
where
    T: std::str::FromStr + Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    calls.fetch_add(1, Ordering::SeqCst);
    raw.parse().ok()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Wrapped<T> {
    inner: T,
}

#[cached(cache = cache, skip = [cache, calls])]
async fn wrap<T>(cache: &Cache, calls: &AtomicUsize, value: T) -> Wrapped<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    calls.fetch_add(1, Ordering::SeqCst);
    Wrapped { inner: value }
}

#[tokio::test]
async fn generic_fns_keep_instantiations_apart() {
    for (store, cache) in caches("macro_generics") {
        let calls = AtomicUsize::new(0);
        assert_eq!(parse::<u32>(&cache, &calls, "7").await, Some(7), "{store}");
        assert_eq!(
            parse::<String>(&cache, &calls, "7").await.as_deref(),
            Some("7"),
            "{store}"
        );
        assert_eq!(parse::<u32>(&cache, &calls, "7").await, Some(7), "{store}");
        assert_eq!(
            parse::<String>(&cache, &calls, "7").await.as_deref(),
            Some("7"),
            "{store}"
        );
        assert_eq!(count(&calls), 2, "{store}: one entry per type");
        let key = format!("{}::parse::<u32>(\"7\")", module_path!());
        assert_eq!(
            cache.get::<u32>(&key).await.ok().flatten(),
            Some(7),
            "{store}: {key}"
        );
        assert_eq!(
            parse_invalidate::<u32>(&cache, "7").await.ok(),
            Some(true),
            "{store}"
        );
        assert_eq!(
            parse_invalidate::<String>(&cache, "7").await.ok(),
            Some(true),
            "{store}"
        );

        let calls = AtomicUsize::new(0);
        assert_eq!(
            wrap(&cache, &calls, 1u8).await,
            Wrapped { inner: 1u8 },
            "{store}"
        );
        assert_eq!(
            wrap(&cache, &calls, 1u64).await,
            Wrapped { inner: 1u64 },
            "{store}"
        );
        assert_eq!(
            wrap(&cache, &calls, 1u8).await,
            Wrapped { inner: 1u8 },
            "{store}"
        );
        assert_eq!(count(&calls), 2, "{store}");
    }
}

// ---------------------------------------------------------------------------------------------
// Recursion.
// ---------------------------------------------------------------------------------------------

/// Owned arguments: the `'static` path (loads run in their own task).
#[cached(cache = &cache, skip = [cache, calls], ttl = 600)]
async fn fib(cache: Cache, calls: Arc<AtomicUsize>, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    if n < 2 {
        return n;
    }
    fib_boxed(cache.clone(), calls.clone(), n - 1).await + fib_boxed(cache, calls, n - 2).await
}

fn fib_boxed(
    cache: Cache,
    calls: Arc<AtomicUsize>,
    n: u64,
) -> Pin<Box<dyn Future<Output = u64> + Send>> {
    Box::pin(fib(cache, calls, n))
}

/// Borrowed arguments: the scoped path (loads run in the caller).
#[cached(cache = cache, skip = [cache, calls], ttl = 600)]
async fn fib_ref(cache: &Cache, calls: &AtomicUsize, n: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    if n < 2 {
        return n;
    }
    fib_ref_boxed(cache, calls, n - 1).await + fib_ref_boxed(cache, calls, n - 2).await
}

fn fib_ref_boxed<'a>(
    cache: &'a Cache,
    calls: &'a AtomicUsize,
    n: u64,
) -> Pin<Box<dyn Future<Output = u64> + Send + 'a>> {
    Box::pin(fib_ref(cache, calls, n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursion_does_not_deadlock() {
    for (store, cache) in caches("macro_recursion") {
        let calls = Arc::new(AtomicUsize::new(0));
        let value = within("fib", fib(cache.clone(), calls.clone(), 60)).await;
        assert_eq!(value, 1_548_008_755_920, "{store}");
        assert_eq!(count(&calls), 61, "{store}: every n computed once");
        assert_eq!(
            within("fib again", fib(cache.clone(), calls.clone(), 60)).await,
            value,
            "{store}"
        );
        assert_eq!(count(&calls), 61, "{store}");

        // The borrowing path polls each level inside its caller, and debug builds spend about
        // 100 KiB of stack per level of the engine: keep the depth modest for the 2 MiB stacks of
        // test threads (the owned path above runs each level in its own task).
        let calls = AtomicUsize::new(0);
        let value = within("fib_ref", fib_ref(&cache, &calls, 12)).await;
        assert_eq!(value, 144, "{store}");
        assert_eq!(count(&calls), 13, "{store}");
        assert_eq!(
            within("fib_ref again", fib_ref(&cache, &calls, 12)).await,
            144,
            "{store}"
        );
        assert_eq!(count(&calls), 13, "{store}");
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency: 1000 callers, one body execution.
// ---------------------------------------------------------------------------------------------

const CALLERS: u64 = 1000;

/// Holds the load open until every caller has missed. A miss is counted right before the caller
/// joins the in-flight load (no await in between), so on a current-thread runtime all callers are
/// waiting on this load once `misses` reaches `CALLERS`.
async fn until_everyone_missed(cache: &Cache) {
    while cache.stats().misses < CALLERS {
        tokio::task::yield_now().await;
    }
}

#[cached(cache = &cache, skip = [cache, calls], ttl = 60)]
async fn slow_owned(cache: Cache, calls: Arc<AtomicUsize>, id: u64) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    until_everyone_missed(&cache).await;
    format!("value {id}")
}

#[cached(cache = cache, skip = [cache, calls], ttl = 60)]
async fn slow_borrowed(cache: &Cache, calls: &AtomicUsize, id: &str) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    until_everyone_missed(cache).await;
    format!("value {id}")
}

#[tokio::test(flavor = "current_thread")]
async fn thousand_concurrent_calls_run_the_body_once_spawned() {
    for (store, cache) in caches("macro_concurrent_spawned") {
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| tokio::spawn(slow_owned(cache.clone(), calls.clone(), 42)))
            .collect();
        let results = within(
            "1000 spawned callers",
            futures_util::future::join_all(tasks),
        )
        .await;
        for result in results {
            assert_eq!(result.expect("task completes"), "value 42", "{store}");
        }
        assert_eq!(
            count(&calls),
            1,
            "{store}: one body execution for {CALLERS} callers"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn thousand_concurrent_calls_run_the_body_once_borrowed() {
    for (store, cache) in caches("macro_concurrent_borrowed") {
        let calls = AtomicUsize::new(0);
        let callers = (0..CALLERS).map(|_| slow_borrowed(&cache, &calls, "k"));
        let results = within(
            "1000 borrowing callers",
            futures_util::future::join_all(callers),
        )
        .await;
        assert!(results.iter().all(|r| r == "value k"), "{store}");
        assert_eq!(
            count(&calls),
            1,
            "{store}: one body execution for {CALLERS} callers"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Policy keys through the macro.
// ---------------------------------------------------------------------------------------------

#[cached(cache = cache, skip = [cache, calls], ttl = "90s", stale = "1h", jitter = 0.1, stampede = "lock")]
async fn locked(cache: &Cache, calls: &AtomicUsize, id: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    id + 1
}

#[cached(cache = cache, skip = [cache, calls], stampede = "early", ttl = 600)]
async fn early(cache: &Cache, calls: &AtomicUsize, id: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    id + 2
}

#[cached(cache = cache, skip = [cache, calls], stampede = "none")]
async fn uncoalesced(cache: &Cache, calls: &AtomicUsize, id: u64) -> u64 {
    calls.fetch_add(1, Ordering::SeqCst);
    id + 3
}

#[tokio::test]
async fn every_stampede_mode_caches() {
    for (store, cache) in caches("macro_policy") {
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            assert_eq!(locked(&cache, &calls, 1).await, 2, "{store}");
            assert_eq!(early(&cache, &calls, 1).await, 3, "{store}");
            assert_eq!(uncoalesced(&cache, &calls, 1).await, 4, "{store}");
        }
        assert_eq!(count(&calls), 3, "{store}: one load per fn");
    }
}
