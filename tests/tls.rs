//! TLS end to end: private `redis-server --tls-port` processes with a CA, server and client
//! certificate generated for the test (`support::TlsFiles`, openssl CLI).
//!
//! - `rediss://` with the CA (`tls_root_ca`) works: misses fill, hits hit, over TLS;
//! - a plain `redis://` to the TLS port, and `rediss://` without the CA, fail with a clear error
//!   while read-through callers still get the loader's value;
//! - a server that requires client certificates accepts the cache only with `tls_client_auth`;
//! - the whole read-through / lock / tags / counters suite runs over TLS.

mod suites;
mod support;

use std::time::Duration;

use cache_layer::{Cache, Error, Policy};
use support::{unique_prefix, RedisServer, TlsFiles};

fn policy() -> Policy {
    Policy::ttl(Duration::from_secs(60))
}

/// A miss then a hit through `cache`; returns the loads the two calls ran.
async fn miss_then_hit(cache: &Cache, key: &str) -> u32 {
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    for _ in 0..2 {
        let (loads, expected) = (loads.clone(), format!("value of {key}"));
        let value: String = cache
            .get_or_fetch(key, &policy(), move || async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                expected
            })
            .await;
        assert_eq!(value, format!("value of {key}"));
    }
    loads.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_generated_ca_works_and_plain_or_untrusted_fails_clearly() {
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls, &[]);
    server.reset_stats();

    let cache = Cache::builder()
        .redis(server.tls_url())
        .tls_root_ca(tls.ca_pem())
        .namespace(unique_prefix("tls"))
        .build()
        .expect("valid configuration");
    assert_eq!(
        miss_then_hit(&cache, "product:1").await,
        1,
        "one load, then a hit"
    );
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.errors),
        (1, 1, 0),
        "{stats:?}"
    );
    cache.ping().await.expect("ping over TLS");
    // The commands arrived over the TLS port: the server counts them, and its TLS clients.
    assert!(server.command_calls("get") >= 2, "GETs reached the server");
    assert!(
        server.command_calls("set") >= 1,
        "the fill reached the server"
    );
    let clients: String = server.query(redis::cmd("CLIENT").arg("LIST"));
    assert!(
        clients
            .lines()
            .any(|c| c.contains(&format!("laddr=127.0.0.1:{}", server.tls_port().unwrap()))),
        "a client connected to the TLS port: {clients}"
    );

    // Plain text to the TLS port: the server drops it. A clear error, and callers still get
    // the loader's value.
    let plain = Cache::builder()
        .redis(format!("redis://127.0.0.1:{}", server.tls_port().unwrap()))
        .namespace(unique_prefix("tls-plain"))
        .build()
        .expect("valid configuration");
    let err = plain
        .get::<String>("k")
        .await
        .expect_err("plain text to a TLS port");
    assert!(
        matches!(err, Error::Redis(_) | Error::Timeout(_)),
        "a connection error: {err:?}"
    );
    let value: String = plain
        .get_or_fetch("k", &policy(), || async { "from the loader".to_string() })
        .await;
    assert_eq!(value, "from the loader");
    assert!(plain.ping().await.is_err(), "not ready");

    // TLS, but the server's certificate is not trusted (the system store has no test CA).
    let untrusted = Cache::builder()
        .redis(server.tls_url())
        .namespace(unique_prefix("tls-untrusted"))
        .build()
        .expect("valid configuration");
    let err = untrusted.ping().await.expect_err("unknown issuer");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "says it is the certificate: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_client_certificates_accepts_tls_client_auth() {
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls, &["--tls-auth-clients", "yes"]);

    let without = Cache::builder()
        .redis(server.tls_url())
        .tls_root_ca(tls.ca_pem())
        .namespace(unique_prefix("mtls-without"))
        .build()
        .expect("valid configuration");
    assert!(
        without.ping().await.is_err(),
        "no client certificate: refused"
    );

    let with = Cache::builder()
        .redis(server.tls_url())
        .tls_root_ca(tls.ca_pem())
        .tls_client_auth(tls.client_cert_pem(), tls.client_key_pem())
        .namespace(unique_prefix("mtls"))
        .build()
        .expect("valid configuration");
    with.ping().await.expect("client certificate accepted");
    assert_eq!(miss_then_hit(&with, "product:2").await, 1);
    assert_eq!(with.stats().errors, 0);
}

#[test]
fn bad_tls_settings_are_configuration_errors() {
    let err = Cache::builder()
        .redis("rediss://127.0.0.1:6380")
        .tls_root_ca("not a certificate")
        .build()
        .expect_err("unparseable CA");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let err = Cache::builder()
        .redis("rediss://127.0.0.1:6380")
        .tls_client_auth(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "no key",
        )
        .build()
        .expect_err("no private key");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let err = Cache::builder()
        .redis("redis://127.0.0.1:6379")
        .tls_root_ca(TlsFiles::generate().ca_pem())
        .build()
        .expect_err("CA for a plain URL");
    assert!(err.to_string().contains("rediss://"), "{err}");
}

/// The backend suites over TLS with a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suites_over_tls() {
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls, &["--tls-auth-clients", "yes"]);
    let builder = Cache::builder()
        .redis(server.tls_url())
        .tls_root_ca(tls.ca_pem())
        .tls_client_auth(tls.client_cert_pem(), tls.client_key_pem());
    let instances = |test: &str, count: usize| suites::build(&builder, &unique_prefix(test), count);
    suites::all(&instances).await;
}

/// The backend suites on a Redis Cluster spoken to over TLS only (`rediss://` seeds; the nodes
/// announce their TLS ports, gossip and replicate over TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls() {
    let tls = TlsFiles::generate();
    let cluster = support::RedisCluster::start_tls(&tls, 3, 1);
    let builder = suites::cold_tls_timeouts(
        Cache::builder()
            .redis_cluster(cluster.tls_urls())
            .tls_root_ca(tls.ca_pem()),
    );
    let instances = |test: &str, count: usize| suites::build(&builder, &unique_prefix(test), count);
    suites::all(&instances).await;
    let cache = instances("tls-ping", 1).remove(0);
    cache.ping().await.expect("ping over TLS");
    // Every master served the cache on its TLS port (the slot map sends TLS clients there).
    for port in cluster.masters() {
        let node = cluster.node(port);
        let tls_port = node.tls_port().expect("tls port");
        let clients: String = node.query(redis::cmd("CLIENT").arg("LIST"));
        assert!(
            clients
                .lines()
                .any(|c| c.contains(&format!("laddr=127.0.0.1:{tls_port} "))),
            "master {port}: no client on TLS port {tls_port}: {clients}"
        );
    }
}
