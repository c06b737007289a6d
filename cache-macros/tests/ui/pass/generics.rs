//! Generic fns, const generics, where clauses, reference and `impl Trait` arguments, destructuring
//! patterns, `mut` arguments.
use std::fmt::Display;

use cache_layer::{cached, Cache};
use serde::{de::DeserializeOwned, Serialize};

pub trait Conn {
    fn query(&self, q: &str) -> u64;
}

pub struct Db;

impl Conn for Db {
    fn query(&self, q: &str) -> u64 {
        q.len() as u64
    }
}

#[cached(skip = [conn])]
pub async fn count<C: Conn + Sync>(conn: &C, table: &str) -> u64 {
    conn.query(table)
}

#[cached]
pub async fn parse<T>(raw: &str) -> Option<T>
where
    T: std::str::FromStr + Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    raw.parse().ok()
}

#[cached(skip = [log, conn])]
async fn with_impl(log: impl Fn(&str) + Send, conn: &impl Conn, id: u32) -> u64 {
    log("loading");
    conn.query("x") + u64::from(id)
}

#[cached(key = "show:{value}")]
async fn show(value: impl Display + Send) -> String {
    value.to_string()
}

#[cached]
async fn fixed<const N: usize>(id: usize) -> usize {
    id + N
}

#[cached]
async fn size_of<T>() -> usize {
    std::mem::size_of::<T>()
}

#[cached]
async fn destructure((a, b): (u32, u32), mut c: u32, Wrapper(d): Wrapper) -> u32 {
    c += 1;
    a + b + c + d
}

#[cached(companions = false)]
async fn destructure_inline((a, b): (u32, u32), mut c: u32) -> u32 {
    c += 1;
    a + b + c
}

#[derive(serde::Serialize)]
pub struct Wrapper(u32);

#[cached]
async fn lifetimes<'a, 'b: 'a>(a: &'a str, b: &'b str) -> String {
    format!("{a}{b}")
}

#[cached]
async fn static_str(s: &'static str) -> usize {
    s.len()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    cache_layer::install(Cache::in_memory());
    assert_eq!(count(&Db, "users").await, 5);
    assert!(count_invalidate::<Db>("users").await.unwrap());
    assert_eq!(parse::<u32>("7").await, Some(7));
    assert_eq!(parse::<String>("7").await.as_deref(), Some("7"));
    assert_eq!(parse::<u32>("x").await, None);
    assert!(parse_invalidate::<u32>("7").await.unwrap());
    assert_eq!(with_impl(|_| {}, &Db, 1).await, 2);
    assert!(with_impl_invalidate(1).await.unwrap());
    assert_eq!(show(5).await, "5");
    assert!(show_invalidate(5).await.unwrap());
    // Type and const parameters are part of the key.
    assert_eq!(fixed::<1>(1).await, 2);
    assert_eq!(fixed::<2>(1).await, 3);
    assert!(fixed_invalidate::<2>(1).await.unwrap());
    assert_eq!(size_of::<u8>().await, 1);
    assert_eq!(size_of::<u64>().await, 8);
    assert_eq!(destructure((1, 2), 3, Wrapper(4)).await, 11);
    assert_eq!(destructure_uncached((1, 2), 3, Wrapper(4)).await, 11);
    assert_eq!(destructure_inline((1, 2), 3).await, 7);
    assert_eq!(lifetimes("a", "b").await, "ab");
    assert!(lifetimes_invalidate("a", "b").await.unwrap());
    assert_eq!(static_str("abc").await, 3);
}
