//! Compile-pass and compile-fail cases for `#[cached]` and `#[invalidate]`.
//!
//! The `.stderr` files hold the reviewed compiler output. After a deliberate change to an error
//! message, regenerate them with `TRYBUILD=overwrite cargo test -p cache-macros --test ui` and
//! review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
