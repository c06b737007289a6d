use cache_layer::cached;

#[cached(ttl = 60)]
async fn names(id: u64) -> impl Iterator<Item = String> {
    std::iter::once(id.to_string())
}

fn main() {}
