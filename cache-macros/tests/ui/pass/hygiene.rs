//! Names that must not clash: args called `cache`, `key`, `result`, `policy`; a `Result` alias; an
//! item called `cached`; shadowed prelude names.
#![allow(dead_code)]

type Result<T> = std::result::Result<T, MyError>;

#[derive(Debug)]
pub struct MyError;

struct Option;
struct Some;
struct String;
struct Vec;
fn cached() {}
fn invalidate() {}
mod core {}

#[cache_layer::cached(tags = ["t:{key}"])]
async fn args_named_like_locals(cache: u32, key: u32, result: u32, policy: u32, handle: u32) -> u32 {
    cache + key + result + policy + handle
}

#[cache_layer::cached]
async fn alias(id: u32) -> Result<u32> {
    if id == 0 {
        return Err(MyError);
    }
    Ok(id)
}

#[cache_layer::cached(none = true)]
async fn full_option(id: u32) -> std::option::Option<u32> {
    std::option::Option::Some(id)
}

#[cache_layer::invalidate(tags = ["t:{key}"], keys = ["{result}"])]
async fn invalidating(key: u32, result: u32) -> Result<()> {
    let _ = (key, result);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    cached();
    invalidate();
    cache_layer::install(cache_layer::Cache::in_memory());
    assert_eq!(args_named_like_locals(1, 2, 3, 4, 5).await, 15);
    assert_eq!(alias(1).await.ok(), std::option::Option::Some(1));
    assert!(alias(0).await.is_err());
    assert_eq!(full_option(1).await, std::option::Option::Some(1));
    assert!(invalidating(1, 2).await.is_ok());
}
