use cache_layer::cached;

#[cached(skip = [conn2, self])]
async fn get(conn: &str, id: u64) -> u64 {
    let _ = conn;
    id
}

fn main() {}
