//! Visibility, doc comments, attributes, inner attributes, `cfg`, `crate = path`, no cache
//! installed, and the generated future being `Send`.
#![deny(missing_docs)]
//! Crate docs.

mod infra {
    pub use cache_layer as cache;
}

mod api {
    /// Documented and public: the companions get docs of their own.
    #[cache_layer::cached(ttl = 10)]
    #[must_use = "the value is the point"]
    #[allow(clippy::needless_pass_by_value)]
    pub async fn documented(id: u32) -> u32 {
        #![allow(unused_variables)]
        let unused = 1;
        id
    }

    /// Restricted visibility.
    #[cache_layer::cached]
    pub(crate) async fn restricted(id: u32) -> u32 {
        id
    }

    /// Compiled out.
    #[cfg(any())]
    #[cache_layer::cached]
    pub async fn gone(id: u32) -> u32 {
        id
    }

    /// Through a re-export.
    #[cache_layer::cached(crate = crate::infra::cache)]
    pub async fn via_reexport(id: u32) -> u32 {
        id
    }

    /// Invalidation through a re-export.
    #[cache_layer::invalidate(crate = "crate::infra::cache", tags = ["x"])]
    pub async fn invalidate_via_reexport() {}
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // No cache installed: every call runs the body, nothing panics.
    assert_eq!(assert_send(api::documented(1)).await, 1);
    assert_eq!(api::restricted(2).await, 2);
    assert_eq!(api::via_reexport(3).await, 3);
    assert!(!api::documented_invalidate(1).await.unwrap());
    api::invalidate_via_reexport().await;
    let handle = tokio::spawn(api::documented_refresh(4));
    assert_eq!(handle.await.unwrap(), 4);
}
