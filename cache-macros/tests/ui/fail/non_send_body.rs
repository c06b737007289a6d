// A free fn with owned arguments may refresh in the background, so its body must be `Send`.
use std::rc::Rc;

use cache_layer::cached;

async fn yield_now() {}

#[cached(ttl = 60)]
async fn count(id: u64) -> u64 {
    let local = Rc::new(id);
    yield_now().await;
    *local
}

fn main() {}
