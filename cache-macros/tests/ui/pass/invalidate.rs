//! `#[invalidate]`: runs the body, invalidates only on success; works with `?`, early `return`,
//! arguments the body consumes, non-`Result` returns.
use cache_layer::{cached, invalidate, Cache};

#[cached(key = "product:{id}", tags = ["product:{id}"])]
async fn product(id: u64) -> String {
    format!("p{id}")
}

#[invalidate(tags = ["product:{id}"])]
async fn rename(id: u64, name: String) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    check(&name)?;
    drop(name); // the body may consume its arguments
    Ok(())
}

fn check(name: &str) -> Result<(), String> {
    if name == "bad" { Err("bad".into()) } else { Ok(()) }
}

#[invalidate(keys = ["product:{id}"])]
async fn touch(id: u64) {
    let _ = id;
}

#[invalidate(tags = ["product:{id}"])]
async fn returns_value(id: u64) -> u64 {
    id * 2
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    cache_layer::install(Cache::in_memory());
    assert_eq!(product(1).await, "p1");
    assert_eq!(rename(1, String::new()).await, Err("empty".into()));
    assert_eq!(rename(1, "bad".into()).await, Err("bad".into()));
    assert_eq!(rename(1, "ok".into()).await, Ok(()));
    touch(1).await;
    assert_eq!(returns_value(2).await, 4);
}
