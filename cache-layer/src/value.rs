//! What the engine can cache: the one [`Value`] trait, used by the read path and by the code the
//! `#[cached]` macro generates (re-exported from `__private`).

use serde::{de::DeserializeOwned, Serialize};

/// A value the engine can store: what a cached fn returns (or its `Ok` / `Some` part).
///
/// Serializable (the store holds bytes), cloneable (L1 and coalesced callers each get a copy) and
/// shareable between tasks. Implemented for every such type.
///
/// ```
/// fn cacheable<T: cache_layer::__private::Value>() {}
/// cacheable::<Vec<String>>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached: a cached value must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`",
    label = "the cached fn returns this",
    note = "for `Result<T, E>` only `T` is stored, for `Option<T>` only `T`"
)]
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T> Value for T where T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
