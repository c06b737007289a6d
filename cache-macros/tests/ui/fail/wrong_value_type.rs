use cache_layer::cached;

// Every wrong value is reported, not just the first.
#[cached(ttl = true, key = 42, tags = [id], stampede = lock, jitter = "0.1", none = 1, skip = "id")]
async fn get(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
