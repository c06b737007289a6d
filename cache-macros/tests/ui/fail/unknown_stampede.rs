use cache_layer::cached;

#[cached(stampede = "locked")]
async fn get(id: u64) -> u64 {
    id
}

fn main() {}
