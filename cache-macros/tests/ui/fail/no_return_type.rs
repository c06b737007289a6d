use cache_layer::cached;

#[cached(ttl = 60)]
async fn nothing(id: u64) {
    let _ = id;
}

#[cached(ttl = 60)]
async fn unit(id: u64) -> () {
    let _ = id;
}

fn main() {}
