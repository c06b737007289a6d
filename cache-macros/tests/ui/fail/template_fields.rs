use cache_layer::cached;

#[derive(serde::Serialize)]
pub struct User {
    pub id: u64,
}

// A field that does not exist, and an argument that is not `Display`: both point at the template.
#[cached(key = "user:{user.uid}", tags = ["{user}"])]
async fn profile(user: &User) -> String {
    user.id.to_string()
}

fn main() {}
