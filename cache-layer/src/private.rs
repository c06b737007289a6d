//! Support code for the `#[cached]` and `#[invalidate]` macros. Not a public API: the generated
//! code calls only what is in here, so the macro crate never names anything else.
