use cache_layer::cached;

pub struct Conn;

#[derive(Clone, Debug)]
pub struct Filter {
    pub name: String,
}

#[cached(ttl = 60)]
async fn search(conn: &Conn, filter: Filter, page: u32) -> Vec<u64> {
    let _ = (conn, filter, page);
    vec![]
}

fn main() {}
