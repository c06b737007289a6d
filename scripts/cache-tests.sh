#!/usr/bin/env bash
# Runs the HTTP caching test suite (http-cache-tests, the suite behind cache-tests.fyi) against
# examples/reverse_proxy.rs and compares the result with the published results the suite ships.
#
#   bash scripts/cache-tests.sh            # whole suite; fails when required passes < FLOOR
#   bash scripts/cache-tests.sh <test-id>  # one test, with the requests and responses it saw
#   CACHE_TESTS_REDIS=redis://127.0.0.1:6379 bash scripts/cache-tests.sh   # entries in Redis
#
# Installs node/npm (apt-get) when missing and http-cache-tests@$VERSION with npm into
# $CACHE_TESTS_DIR (default: ~/.cache/cache-layer/http-cache-tests-$VERSION, outside the
# repository), starts the suite's origin server and the proxy (in-memory store, or Redis with
# CACHE_TESTS_REDIS: entries then stay until their TTLs) on free ports,
# runs the suite's CLI against the proxy, and prints our required / optimal pass counts beside
# the other implementations'. Results: target/cache-tests/{results.json,failures.txt}.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

VERSION=0.4.5
# Required tests that must pass; raise it when conformance improves, never lower it to get green.
FLOOR=154

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'cache-tests: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root for: $* (not root and no sudo)"; fi
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "node/npm missing and apt-get unavailable; install Node.js >= 18"
    log "installing nodejs and npm (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y nodejs npm || { as_root apt-get update; as_root apt-get install -y nodejs npm; }
fi

DIR=${CACHE_TESTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cache-layer/http-cache-tests-$VERSION}
SUITE="$DIR/node_modules/http-cache-tests"
if [ ! -f "$SUITE/cli.mjs" ] || ! grep -q "\"version\": \"$VERSION\"" "$SUITE/package.json"; then
    log "installing http-cache-tests@$VERSION into $DIR"
    mkdir -p "$DIR"
    npm install --prefix "$DIR" --no-save --no-audit --no-fund --loglevel=error \
        "http-cache-tests@$VERSION" >&2 || die "npm install http-cache-tests@$VERSION failed"
fi
[ -f "$SUITE/cli.mjs" ] || die "http-cache-tests not found in $SUITE after installing"

log "building examples/reverse_proxy.rs"
cargo build --quiet --example reverse_proxy || die "could not build the reverse_proxy example"
PROXY_BIN="$ROOT/target/debug/examples/reverse_proxy"

OUT="$ROOT/target/cache-tests"
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Waits until file $1 has a line matching $2 and prints the first "host:port" on it.
wait_for_address() {
    for _ in $(seq 1 200); do
        if grep -q "$2" "$1" 2>/dev/null; then
            grep -m1 "$2" "$1" | grep -oE '127\.0\.0\.1:[0-9]+|localhost:[0-9]+|\[::\]:[0-9]+' | head -n1
            return 0
        fi
        sleep 0.05
    done
    return 1
}

log "starting the suite's origin server"
(cd "$SUITE" && exec env npm_config_protocol=http npm_config_port=0 \
    npm_config_pidfile="$WORK/server.pid" node server/server.mjs) >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
ORIGIN=$(wait_for_address "$WORK/origin.log" "Listening on") || { cat "$WORK/origin.log" >&2; die "origin server did not start"; }
ORIGIN_PORT=${ORIGIN##*:}

log "starting reverse_proxy in front of 127.0.0.1:$ORIGIN_PORT"
PROXY_ARGS=(--origin "http://127.0.0.1:$ORIGIN_PORT" --listen 127.0.0.1:0)
if [ -n "${CACHE_TESTS_REDIS:-}" ]; then
    # A namespace of its own per run: the suite's URLs are unique anyway, nothing is flushed.
    PROXY_ARGS+=(--redis "$CACHE_TESTS_REDIS" --namespace "cache-tests-$$-$(date +%s)")
fi
"$PROXY_BIN" "${PROXY_ARGS[@]}" >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
PROXY=$(wait_for_address "$WORK/proxy.log" "listening on") || { cat "$WORK/proxy.log" >&2; die "reverse_proxy did not start"; }

if [ $# -ge 1 ]; then
    log "running $1 against http://$PROXY/"
    (cd "$SUITE" && npm run --silent cli --base="http://$PROXY" --id="$1")
    exit 0
fi

log "running the suite against http://$PROXY/"
(cd "$SUITE" && npm run --silent cli --base="http://$PROXY") >"$OUT/results.json" 2>"$OUT/cli.log" \
    || { cat "$OUT/cli.log" >&2; die "the suite's CLI failed"; }
node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$OUT/results.json" 2>/dev/null \
    || { head -c 2000 "$OUT/results.json" >&2; cat "$OUT/cli.log" >&2; die "the suite produced no results"; }

node "$ROOT/scripts/cache-tests-summary.mjs" "$SUITE" "$OUT/results.json" "$OUT/failures.txt" | tee "$OUT/summary.txt"
REQUIRED=$(sed -n 's/^REQUIRED=//p' "$OUT/summary.txt")
[ -n "$REQUIRED" ] || die "could not read the required pass count"
log "required tests failed: $(wc -l <"$OUT/failures.txt") (listed in target/cache-tests/failures.txt)"
if [ "$REQUIRED" -lt "$FLOOR" ]; then
    die "required passes $REQUIRED < floor $FLOOR"
fi
log "required passes $REQUIRED >= floor $FLOOR"
