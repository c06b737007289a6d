use cache_layer::cached;

#[cached(cache = "redis://127.0.0.1")]
async fn get(id: u64) -> u64 {
    id
}

fn main() {}
