use cache_layer::cached;

#[cached(ttl = 60, key = "a:{id}", ttl = "5m")]
async fn get(id: u64) -> u64 {
    id
}

fn main() {}
