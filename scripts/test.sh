#!/usr/bin/env bash
# Runs the whole test suite: installs redis-server/redis-cli if missing, makes
# sure a Redis answers on 127.0.0.1:6379 (the shared server some tests use),
# then runs `cargo test --workspace --all-targets "$@"`, the doc tests, and the HTTP caching
# test suite against examples/reverse_proxy.rs (scripts/cache-tests.sh: installs Node.js and
# http-cache-tests itself, fails below its floor of required passes).
#
# Integration tests start their own private redis-server processes (and a
# local Redis Cluster) through tests/support; they only need the binaries.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Run a command as root: directly if we are root, through sudo if available.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root for: $* (not root and no sudo)"
        return 1
    fi
}

install_redis() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "redis-server/redis-cli missing and apt-get unavailable; install Redis manually"
        exit 1
    fi
    log "installing redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y redis-server; then
        as_root apt-get update
        as_root apt-get install -y redis-server
    fi
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    install_redis
fi

if [ "${CI:-}" = "true" ]; then
    log "tool versions"
    rustc --version
    cargo --version
    redis-server --version
    redis-cli --version
fi

if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null || true)" != "PONG" ]; then
    log "no Redis on 127.0.0.1:6379; starting a throwaway one"
    redis-server --daemonize yes --port 6379 --bind 127.0.0.1 --save "" --appendonly no
    for _ in $(seq 1 100); do
        if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null || true)" = "PONG" ]; then
            break
        fi
        sleep 0.1
    done
    if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null || true)" != "PONG" ]; then
        log "redis-server on 127.0.0.1:6379 did not come up"
        exit 1
    fi
fi

log "cargo test --workspace --all-targets $*"
cargo test --workspace --all-targets "$@"

log "cargo test --workspace --doc"
cargo test --workspace --doc

log "scripts/cache-tests.sh (HTTP caching test suite against examples/reverse_proxy.rs)"
bash scripts/cache-tests.sh
