//! Per-function stats of `#[cached]` fns (and of any call site that asks for them).

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Mutex,
};

/// Counters of one cached function (or call site), shared by every cache it uses.
///
/// `#[cached]` declares one per function; any call site can do the same with
/// [`Policy::observe`](crate::Policy::observe). Read them with [`function_stats`].
///
/// ```
/// use std::time::Duration;
/// use cache_layer::{Cache, FunctionStats, Policy};
///
/// static PRODUCT_PAGE: FunctionStats = FunctionStats::new("product_page");
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::in_memory();
/// let policy = Policy::ttl(Duration::from_secs(60)).observe(&PRODUCT_PAGE);
/// for _ in 0..3 {
///     let _: u32 = cache.get_or_fetch("page:1", &policy, || async { 1 }).await;
/// }
/// let snapshot = PRODUCT_PAGE.snapshot();
/// assert_eq!((snapshot.hits, snapshot.misses, snapshot.loads), (2, 1, 1));
/// assert!(cache_layer::function_stats().iter().any(|s| s.name == "product_page"));
/// # }
/// ```
#[derive(Debug)]
pub struct FunctionStats {
    name: &'static str,
    /// Bumped on every call of a cached fn that hits: striped, so concurrent callers on several
    /// cores do not contend for one cache line.
    hits: super::Striped,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    registered: AtomicBool,
}

/// A copy of one function's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FunctionStatsSnapshot {
    /// The function's path (`module::fn` for `#[cached]` fns).
    pub name: &'static str,
    /// Calls answered from the cache (fresh or stale).
    pub hits: u64,
    /// Calls that found nothing usable.
    pub misses: u64,
    /// Times the function body ran.
    pub loads: u64,
    /// Body runs that returned an error.
    pub load_errors: u64,
}

static REGISTRY: Mutex<Vec<&'static FunctionStats>> = Mutex::new(Vec::new());

impl FunctionStats {
    /// Counters for the function called `name`.
    pub const fn new(name: &'static str) -> Self {
        FunctionStats {
            name,
            hits: super::Striped::new(),
            misses: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            load_errors: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    fn register(&'static self) {
        if !self.registered.load(Ordering::Relaxed) && !self.registered.swap(true, Ordering::AcqRel)
        {
            crate::util::lock(&REGISTRY).push(self);
        }
    }

    pub(crate) fn hit(&'static self) {
        self.register();
        self.hits.increment();
    }

    pub(crate) fn miss(&'static self) {
        self.register();
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn load(&'static self, ok: bool) {
        self.register();
        self.loads.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.load_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The current counters.
    pub fn snapshot(&self) -> FunctionStatsSnapshot {
        FunctionStatsSnapshot {
            name: self.name,
            hits: self.hits.get(),
            misses: self.misses.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            load_errors: self.load_errors.load(Ordering::Relaxed),
        }
    }
}

/// Counters of every cached function that has been called in this process, by name.
pub fn function_stats() -> Vec<FunctionStatsSnapshot> {
    let registry = crate::util::lock(&REGISTRY);
    let mut all: Vec<_> = registry.iter().map(|stats| stats.snapshot()).collect();
    all.sort_by(|a, b| a.name.cmp(b.name));
    all
}
