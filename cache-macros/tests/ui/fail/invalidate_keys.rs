use cache_layer::invalidate;

#[invalidate(ttl = 60, tags = ["a"])]
async fn a() {}

#[invalidate(cache = &CACHE)]
async fn nothing_to_do() {}

static CACHE: std::sync::LazyLock<cache_layer::Cache> = std::sync::LazyLock::new(cache_layer::Cache::in_memory);

fn main() {}
