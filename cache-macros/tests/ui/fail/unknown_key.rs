use cache_layer::cached;

#[cached(tll = 60)]
async fn get(id: u64) -> u64 {
    id
}

#[cached(expiry = 60)]
async fn other(id: u64) -> u64 {
    id
}

fn main() {
    // The fn is still emitted as written: no "cannot find function" errors here.
    let _ = get(1);
    let _ = other(1);
}
