//! With no cache installed and no `cache = ...`, cached fns run their body on every call, the
//! companions report "nothing removed", `#[invalidate]` fns still run, and nothing panics.
//! (One warning per fn is logged; `cache_layer::__private`'s unit tests check the "once".)
//!
//! Nothing in this test binary may call `cache_layer::install`.

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_layer::{cached, invalidate, Cache};

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, tags = ["squares"])]
async fn square(n: u64) -> u64 {
    SQUARES.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[cached]
async fn maybe(n: u64) -> Result<Option<u64>, String> {
    Ok(Some(n))
}

#[invalidate(tags = ["squares"])]
async fn reset() -> Result<u8, String> {
    Ok(7)
}

struct Repo {
    loads: AtomicUsize,
}

impl Repo {
    #[cached(key = "repo:{id}")]
    async fn get(&self, id: u64) -> String {
        self.loads.fetch_add(1, Ordering::SeqCst);
        id.to_string()
    }
}

#[tokio::test]
async fn runs_uncached_without_panicking() {
    assert!(
        Cache::global().is_none(),
        "no test in this binary installs a cache"
    );
    for _ in 0..3 {
        assert_eq!(square(4).await, 16);
    }
    assert_eq!(
        SQUARES.load(Ordering::SeqCst),
        3,
        "every call runs the body"
    );
    assert_eq!(square_invalidate(4).await.ok(), Some(false));
    assert_eq!(square_refresh(4).await, 16);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 4);
    assert_eq!(maybe(1).await, Ok(Some(1)));
    assert_eq!(reset().await, Ok(7));

    let repo = Repo {
        loads: AtomicUsize::new(0),
    };
    assert_eq!(repo.get(1).await, "1");
    assert_eq!(repo.get(1).await, "1");
    assert_eq!(repo.loads.load(Ordering::SeqCst), 2);
    assert_eq!(repo.get_invalidate(1).await.ok(), Some(false));
}
