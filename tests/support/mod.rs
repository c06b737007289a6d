//! Test harness shared by the end-to-end tests (`mod support;`).
//!
//! * [`RedisServer`]: a private `redis-server` on a free port, killed on drop.
//! * [`RedisCluster`]: a private Redis Cluster (masters + replicas), killed on drop.
//! * [`SentinelGroup`]: a private master, replica and three sentinels, killed on drop.
//! * [`TlsFiles`]: a throwaway CA plus server and client certificates, for
//!   [`RedisServer::start_tls`].
//! * [`valkey`]: finds a `valkey-server` binary, for [`RedisServer::start_valkey`].
//! * [`acl`]: an ACL user limited to one namespace, made from the README's ACL line.
//! * [`http`]: the HTTP client of the `CacheLayer` tests.
//! * [`load`]: a read load for the failover tests, and the check that hits resume.
//! * [`shared_redis_url`] / [`unique_prefix`] / [`redis_cache`]: for tests that use the shared server
//!   (never flush or reconfigure it; namespace every key with a unique prefix).
//!
//! If `redis-server` is missing, run `scripts/test.sh`: it installs it.
#![allow(dead_code)]

pub mod acl;
pub mod cluster;
pub mod http;
pub mod load;
pub mod ports;
pub mod proxy;
pub mod redis_server;
pub mod sentinel;
pub mod tls;
pub mod valkey;

// Re-exports for convenience; a test file may use only some of them.
#[allow(unused_imports)]
pub use cluster::{
    parse_cluster_nodes, ClusterNodeInfo, RedisCluster, CLUSTER_NODE_ARGS, CLUSTER_READY_TIMEOUT,
};
#[allow(unused_imports)]
pub use ports::{free_cluster_port, free_port, port_is_free, CLUSTER_BUS_OFFSET};
#[allow(unused_imports)]
pub use proxy::Proxy;
#[allow(unused_imports)]
pub use redis_server::{info_field, parse_command_calls, Flavor, RedisServer};
#[allow(unused_imports)]
pub use sentinel::{SentinelGroup, MASTER_NAME};
#[allow(unused_imports)]
pub use tls::TlsFiles;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default bounded wait for a server to come up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// `true` when both `redis-server` and `redis-cli` can be executed.
pub fn redis_server_available() -> bool {
    ["redis-server", "redis-cli"].into_iter().all(binary_runs)
}

/// `true` when `binary --version` runs and succeeds.
pub fn binary_runs(binary: impl AsRef<std::ffi::OsStr>) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Panics with a helpful message when the Redis binaries are not installed.
pub fn require_redis_server() {
    static CHECKED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*CHECKED.get_or_init(redis_server_available) {
        panic!(
            "`redis-server` / `redis-cli` not found on PATH. Run `scripts/test.sh` \
             (it installs redis-server via apt-get and then runs the test suite)."
        );
    }
}

/// URL of the shared Redis: `$REDIS_URL`, or `redis://127.0.0.1:6379`.
///
/// The shared server is used concurrently by other tests and people: never
/// FLUSH*, CONFIG SET, SHUTDOWN or KEYS it; put every key under [`unique_prefix`].
pub fn shared_redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_string())
}

/// A cache on the shared Redis ([`shared_redis_url`]) in a namespace of its own
/// ([`unique_prefix`] of `test`).
pub fn redis_cache(test: &str) -> cache_layer::Cache {
    cache_layer::Cache::builder()
        .redis(shared_redis_url())
        .namespace(unique_prefix(test))
        .build()
        .expect("valid configuration")
}

/// A namespace unique to this call: `"{test_name}:{pid}:{counter}:{random}"`.
pub fn unique_prefix(test_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{test_name}:{}:{n}:{:016x}",
        std::process::id(),
        random_u64()
    )
}

/// A random-enough u64 without extra dependencies (std's SipHash keys are random per `RandomState`).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// Runs `act` (kill, pause, resume, restart, ...) on `server` off the runtime's workers, so the
/// tasks of a test keep running while it waits; a panic in `act` is the caller's.
pub async fn on_server(server: &std::sync::Arc<RedisServer>, act: fn(&RedisServer)) {
    let server = server.clone();
    tokio::task::spawn_blocking(move || act(&server))
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

/// Polls `cond` every `interval` until it returns true or `timeout` elapses.
/// Returns whether the condition became true.
pub fn wait_until(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
