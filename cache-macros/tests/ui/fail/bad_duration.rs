use cache_layer::cached;

#[cached(ttl = "5 minutes", stale = "1x")]
async fn a(id: u64) -> u64 {
    id
}

#[cached(ttl = 0, jitter = 0.9)]
async fn b(id: u64) -> u64 {
    id
}

fn main() {}
