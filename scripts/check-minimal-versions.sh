#!/usr/bin/env bash
# Checks that the published crates (cache-layer, cache-macros) build with the
# LOWEST versions their Cargo.toml requirements allow, so a service whose tree
# pins an older patch of a dependency can still add cache-layer.
#
# Works on a throwaway copy of the two crates in their own workspace (the
# repository's Cargo.lock is never touched, and the examples/bench/test crate,
# which are not published, cannot raise the versions), resolves it with
# `cargo update -Z direct-minimal-versions` (direct dependencies at their
# minimum, everything else at the newest compatible version, as a user's
# resolver may pick), then type-checks every target in the default, all and no
# feature sets, and each optional feature alone.
#
# `-Z` flags need nightly cargo; RUSTC_BOOTSTRAP=1 lets stable cargo use them
# for this resolution step only. The copy's target directory is kept under
# target/minimal-versions so reruns are incremental.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
log() { printf '==> %s\n' "$*" >&2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cp -r cache-layer cache-macros README.md "$work"/
for f in LICENSE-MIT LICENSE-APACHE CHANGELOG.md; do
    [ -f "$f" ] && cp "$f" "$work"/
done
cat >"$work/Cargo.toml" <<'TOML'
[workspace]
members = ["cache-layer", "cache-macros"]
resolver = "2"
TOML

export CARGO_TARGET_DIR="$root/target/minimal-versions"
cd "$work"

log "minimal versions: cargo update -Z direct-minimal-versions"
RUSTC_BOOTSTRAP=1 cargo update -Z direct-minimal-versions --quiet

log "minimal versions: resolved direct dependencies of cache-layer"
cargo tree -p cache-layer --depth 1 --all-features -e normal --prefix none | sort -u | sed 's/^/    /' >&2

features=$(sed -n '/^\[features\]/,/^\[/p' cache-layer/Cargo.toml |
    sed -n 's/^\([a-z][a-z0-9_-]*\) *=.*/\1/p' | grep -v '^default$')

run() {
    log "minimal versions: cargo check $*"
    cargo check --quiet "$@"
}
run --workspace --all-targets
run --workspace --all-targets --all-features
run -p cache-layer --lib --no-default-features
for feature in $features; do
    run -p cache-layer --lib --no-default-features --features "$feature"
done
log "minimal versions: ok"
