//! `cache = expr` is read as one expression: commas inside generic arguments, calls and
//! closures do not end it.
use std::any::TypeId;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::LazyLock;

use cache_layer::{cached, invalidate, Cache};

/// A cache per pair of types.
struct Registry {
    caches: HashMap<(TypeId, TypeId), Cache>,
    fallback: Cache,
}

impl Registry {
    fn get<A: 'static, B: 'static>(&self) -> &Cache {
        self.caches
            .get(&(TypeId::of::<A>(), TypeId::of::<B>()))
            .unwrap_or(&self.fallback)
    }
}

struct Users;
struct Orders;

static REG: LazyLock<Registry> = LazyLock::new(|| {
    let mut caches = HashMap::new();
    caches.insert((TypeId::of::<Users>(), TypeId::of::<Orders>()), Cache::in_memory());
    Registry {
        caches,
        fallback: Cache::in_memory(),
    }
});

#[cached(cache = REG.get::<Users, Orders>(), ttl = 60, key = "orders:{user}")]
async fn orders(user: u64) -> Vec<u64> {
    vec![user]
}

#[cached(ttl = 60, cache = REG.get::<PhantomData<(Users, Orders)>, Orders>())]
async fn count(user: u64) -> u64 {
    user
}

#[invalidate(cache = REG.get::<Users, Orders>(), keys = ["orders:{user}"])]
async fn clear_orders(user: u64) {
    let _ = user;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(orders(7).await, vec![7]);
    let users_orders = REG.get::<Users, Orders>();
    assert_eq!(users_orders.get::<Vec<u64>>("orders:7").await.ok().flatten(), Some(vec![7]));
    clear_orders(7).await;
    assert_eq!(users_orders.get::<Vec<u64>>("orders:7").await.ok().flatten(), None);
    assert_eq!(count(3).await, 3);
}
