use cache_layer::{cached, invalidate};

#[cached(key = "user:{idd}", tags = ["user:{id}", "org:{self.org}"])]
async fn get(id: u64, name: String) -> String {
    format!("{id}{name}")
}

#[invalidate(tags = ["user:{user_id}"])]
async fn write(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {}
