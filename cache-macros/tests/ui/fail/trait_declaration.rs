use cache_layer::cached;

pub trait Catalog {
    #[cached(ttl = 60)]
    async fn title(&self, id: u64) -> String;
}

fn main() {}
