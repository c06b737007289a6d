use cache_layer::{cached, invalidate};

#[cached(ttl = 60)]
fn get(id: u64) -> u64 {
    id
}

#[invalidate(tags = ["x"])]
fn write(id: u64) {
    let _ = id;
}

fn main() {}
