// In a trait impl the companions (`_invalidate`, `_refresh`, `_uncached`) cannot exist:
// `companions = false` is required there.
use cache_layer::{cached, Cache};

pub trait Catalog {
    fn title(&self, id: u64) -> impl std::future::Future<Output = String> + Send;
}

pub struct Db {
    cache: Cache,
}

impl Catalog for Db {
    #[cached(cache = &self.cache)]
    async fn title(&self, id: u64) -> String {
        id.to_string()
    }
}

fn main() {}
