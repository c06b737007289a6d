use cache_layer::cached;

#[cached(none = true)]
async fn count(id: u64) -> u64 {
    id
}

#[cached(none)]
async fn load(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {}
