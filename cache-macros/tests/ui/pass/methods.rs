//! Inherent methods (`&self`, `&mut self`, `self`, `self: Arc<Self>`), trait-impl methods, generic
//! impls, and `cache = &self.cache`.
#![allow(async_fn_in_trait)]
use std::sync::Arc;

use cache_layer::{cached, invalidate, Cache};

pub struct Repo {
    cache: Cache,
    prefix: String,
    writes: u32,
}

impl Repo {
    /// Borrowing method: the load runs in the caller.
    #[cached(cache = &self.cache, ttl = 60)]
    pub async fn name(&self, id: u64) -> String {
        format!("{}-{id}", self.prefix)
    }

    #[cached(cache = &self.cache, key = "repo:{self.prefix}:{id}")]
    pub async fn keyed(&self, id: u64) -> Option<String> {
        Some(format!("{}{id}", self.prefix))
    }

    #[cached(cache = &self.cache)]
    pub async fn bump(&mut self, by: u32) -> u32 {
        self.writes += by;
        self.writes
    }

    #[cached(cache = &self.cache)]
    pub async fn into_prefix(mut self, suffix: String) -> String {
        self.prefix.push_str(&suffix);
        self.prefix
    }

    #[cached(cache = &self.cache)]
    pub async fn shared(self: Arc<Self>, n: u8) -> u8 {
        n
    }

    #[invalidate(cache = &self.cache, tags = ["repo:{self.prefix}"], keys = ["repo:{self.prefix}:{id}"])]
    pub async fn write(&mut self, id: u64) -> Result<(), String> {
        self.writes += 1;
        let _ = id;
        Ok(())
    }

    /// An associated fn without `self`: the key gets the type through `Self` in the signature.
    #[cached]
    pub async fn make(n: u32) -> Option<Self> {
        let _ = n;
        None
    }
}

impl Clone for Repo {
    fn clone(&self) -> Self {
        Repo { cache: self.cache.clone(), prefix: self.prefix.clone(), writes: self.writes }
    }
}

impl serde::Serialize for Repo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Repo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let prefix = String::deserialize(d)?;
        Ok(Repo { cache: Cache::in_memory(), prefix, writes: 0 })
    }
}

/// A trait whose futures must be `Send`: the cached impls satisfy it.
pub trait Catalog {
    fn title(&self, id: u64) -> impl std::future::Future<Output = String> + Send;
    fn maybe(&self, id: u64) -> impl std::future::Future<Output = Result<u64, std::io::Error>> + Send;
}

impl Catalog for Repo {
    #[cached(cache = &self.cache, companions = false, tags = ["title:{id}"])]
    async fn title(&self, id: u64) -> String {
        if id == 0 {
            return "zero".to_owned();
        }
        format!("{}:{id}", self.prefix)
    }

    #[cached(cache = &self.cache, companions = false)]
    async fn maybe(&self, id: u64) -> Result<u64, std::io::Error> {
        let parsed: u64 = id.to_string().parse().map_err(std::io::Error::other)?;
        Ok(parsed)
    }
}

pub trait Counter {
    async fn incr(&mut self, by: u32) -> u32;
    async fn reset(&mut self) -> Result<(), String>;
    async fn make(n: u32) -> u32;
}

pub struct Count {
    cache: Cache,
    n: u32,
}

impl Counter for Count {
    #[cached(cache = &self.cache, companions = false)]
    async fn incr(&mut self, by: u32) -> u32 {
        self.n += by;
        self.n
    }

    #[invalidate(cache = &self.cache, tags = ["count"])]
    async fn reset(&mut self) -> Result<(), String> {
        self.n = 0;
        Ok(())
    }

    /// No `self` and no `Self` in the signature: `companions = false` inlines the body.
    #[cached(cache = &*GLOBAL, companions = false)]
    async fn make(n: u32) -> u32 {
        n * 2
    }
}

static GLOBAL: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Cache::in_memory);

pub struct Typed<T> {
    cache: Cache,
    value: T,
}

impl<T: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> Typed<T> {
    #[cached(cache = &self.cache)]
    pub async fn get(&self, n: u8) -> (T, u8) {
        (self.value.clone(), n)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cache = Cache::in_memory();
    let mut repo = Repo { cache: cache.clone(), prefix: "r".into(), writes: 0 };
    assert_eq!(repo.name(1).await, "r-1");
    assert_eq!(repo.keyed(1).await.as_deref(), Some("r1"));
    assert!(repo.keyed_invalidate(1).await.unwrap());
    assert_eq!(repo.name_refresh(1).await, "r-1");
    assert_eq!(repo.name_uncached(2).await, "r-2");
    assert!(repo.name_invalidate(1).await.unwrap());
    assert_eq!(repo.bump(2).await, 2);
    assert_eq!(repo.bump(2).await, 2); // cached
    assert_eq!(repo.bump_uncached(2).await, 4);
    assert_eq!(repo.write(1).await, Ok(()));
    assert_eq!(repo.title(0).await, "zero");
    assert_eq!(repo.title(3).await, "r:3");
    assert_eq!(repo.maybe(3).await.unwrap(), 3);
    assert!(Repo::make(1).await.is_none());
    assert!(Repo::make_invalidate(1).await.is_ok());
    let shared = Arc::new(repo.clone());
    assert_eq!(shared.clone().shared(4).await, 4);
    assert_eq!(repo.into_prefix("x".into()).await, "rx");

    let mut count = Count { cache: cache.clone(), n: 0 };
    assert_eq!(count.incr(2).await, 2);
    assert_eq!(count.incr(2).await, 2); // cached
    assert_eq!(count.reset().await, Ok(()));
    assert_eq!(<Count as Counter>::make(2).await, 4);

    let a = Typed { cache: cache.clone(), value: 1u8 };
    let b = Typed { cache: cache.clone(), value: "s".to_owned() };
    assert_eq!(a.get(1).await, (1, 1));
    assert_eq!(b.get(1).await, ("s".to_owned(), 1)); // a different key: `Self` is in it
}
