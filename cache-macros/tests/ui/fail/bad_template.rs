use cache_layer::cached;

#[cached(key = "user:{id", tags = ["{}", "{id:?}", "a}b"])]
async fn get(id: u64) -> u64 {
    id
}

fn main() {}
