//! [`CacheBuilder`]: configures and builds a [`Cache`].

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use super::{Cache, Inner};
use crate::{
    breaker::Breaker,
    bus::{Bus, Listener},
    clock::{ClockReference, RedisClock},
    keys::KeySpace,
    l1::{Knowledge, L1Tier, TrustState, DEFAULT_L1_MAX_BYTES, IMPLICIT_L1_ENTRIES},
    metrics::{CacheMetrics, HotKeys},
    stampede::{flight::Flights, lock::LandedSignals},
    store::{endpoint::TlsConfig, Backend, MemoryStore, RedisStore, RedisStoreConfig, Store},
    BreakerConfig, BreakerState, Codec, Error,
};

/// Builds a [`Cache`]. Obtain one with [`Cache::builder`].
///
/// ```
/// use std::time::Duration;
/// use cache_layer::Cache;
///
/// // Succeeds even though nothing listens on port 1: connections are made lazily and a dead
/// // Redis only opens the circuit breaker.
/// let cache = Cache::builder()
///     .redis("redis://127.0.0.1:1")
///     .namespace("shop")
///     .local(10_000)
///     .op_timeout(Duration::from_millis(100))
///     .build()?;
/// # Ok::<(), cache_layer::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder {
    redis_url: Option<String>,
    cluster_nodes: Option<Vec<String>>,
    /// Sentinel URLs and the master's name.
    sentinel: Option<(Vec<String>, String)>,
    /// The Sentinel master's username (if any) and password.
    #[cfg(feature = "sentinel")]
    sentinel_auth: Option<(Option<String>, String)>,
    tls: TlsConfig,
    namespace: String,
    name: Option<String>,
    l1_entries: Option<u64>,
    l1_max_bytes: u64,
    redis: RedisStoreConfig,
    breaker: BreakerConfig,
    codec: Codec,
    memory_max_bytes: u64,
    hot_keys: Option<usize>,
    bus_fallback_ttl: Duration,
    tag_ttl: Duration,
    max_tags: u64,
    clock_skew: Duration,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            redis_url: None,
            cluster_nodes: None,
            sentinel: None,
            #[cfg(feature = "sentinel")]
            sentinel_auth: None,
            tls: TlsConfig::default(),
            namespace: "cache".to_owned(),
            name: None,
            l1_entries: None,
            l1_max_bytes: DEFAULT_L1_MAX_BYTES,
            redis: RedisStoreConfig::default(),
            breaker: BreakerConfig::default(),
            codec: Codec::default(),
            memory_max_bytes: 256 * 1024 * 1024,
            hot_keys: None,
            bus_fallback_ttl: Duration::from_secs(1),
            tag_ttl: Duration::from_secs(7 * 24 * 3600),
            max_tags: 100_000,
            clock_skew: Duration::from_secs(1),
        }
    }
}

impl CacheBuilder {
    /// Use the Redis at `url`: `redis://[user:password@]host:port[/db]`, or `rediss://...` for
    /// TLS (feature `tls`). Without this the cache uses the embedded in-memory store.
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Use the master named `master` of a Redis Sentinel group, found through any of `sentinels`
    /// (`redis://host:26379` each; `rediss://` for TLS to the sentinels and to the master; a
    /// password in a sentinel URL is the sentinels' own, see
    /// [`redis_sentinel_auth`](Self::redis_sentinel_auth) for the master's).
    ///
    /// Every new connection asks the sentinels for the current master, so after a failover the
    /// cache reconnects to the promoted replica; while it fails over, callers get the loader's
    /// value. Feature `sentinel`.
    ///
    /// ```
    /// let cache = cache_layer::Cache::builder()
    ///     .redis_sentinel(["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"], "mymaster")
    ///     .namespace("shop")
    ///     .build()?;
    /// # Ok::<(), cache_layer::Error>(())
    /// ```
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn redis_sentinel<I, S>(mut self, sentinels: I, master: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.sentinel = Some((
            sentinels.into_iter().map(Into::into).collect(),
            master.into(),
        ));
        self
    }

    /// The user and password of the master behind Sentinel (an empty `username` authenticates
    /// with the password only, as `requirepass` expects).
    ///
    /// ```
    /// let builder = cache_layer::Cache::builder()
    ///     .redis_sentinel(["redis://10.0.0.1:26379"], "mymaster")
    ///     .redis_sentinel_auth("shop-cache", "CHANGE-ME");
    /// ```
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn redis_sentinel_auth(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        let username = username.into();
        self.sentinel_auth = Some(((!username.is_empty()).then_some(username), password.into()));
        self
    }

    /// Trust the CA certificate(s) in `pem` for `rediss://` connections instead of the system's
    /// trust store (a private CA; self-signed servers). Applies to a single node, every Cluster
    /// node and the Sentinel group. Parsed by [`build`](Self::build): a bad PEM is an
    /// [`Error::Config`] there. Feature `tls`.
    ///
    /// ```no_run
    /// let cache = cache_layer::Cache::builder()
    ///     .redis("rediss://redis.internal:6380")
    ///     .tls_root_ca(std::fs::read("ca.crt")?)
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_ca = Some(pem.into());
        self
    }

    /// Present this client certificate chain and private key (PEM) to servers that require one
    /// (`tls-auth-clients yes`, mutual TLS). Feature `tls`.
    ///
    /// ```no_run
    /// let cache = cache_layer::Cache::builder()
    ///     .redis("rediss://redis.internal:6380")
    ///     .tls_root_ca(std::fs::read("ca.crt")?)
    ///     .tls_client_auth(std::fs::read("client.crt")?, std::fs::read("client.key")?)
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_auth(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_auth = Some((cert_chain_pem.into(), key_pem.into()));
        self
    }

    /// Use the Redis Cluster reachable through any of `nodes` (`redis://host:port` each). Every
    /// operation works the same as on a single node: keys are hash-tagged per entry, so no
    /// command is cross-slot, and MOVED/ASK redirects and failovers are followed by the client.
    ///
    /// ```
    /// let cache = cache_layer::Cache::builder()
    ///     .redis_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001", "redis://127.0.0.1:7002"])
    ///     .namespace("shop")
    ///     .build()?;
    /// # Ok::<(), cache_layer::Error>(())
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn redis_cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Key prefix for every Redis key of this cache (default `"cache"`). Appears verbatim in keys.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Name used in metrics labels and logs (default: the namespace).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds an in-process L1 tier holding at most `max_entries` decoded values, and at most
    /// [`local_max_bytes`](Self::local_max_bytes) of them (default [`DEFAULT_L1_MAX_BYTES`],
    /// 64 MiB), each weighed by its serialized size: HTTP responses and function results alike.
    pub fn local(mut self, max_entries: u64) -> Self {
        self.l1_entries = Some(max_entries);
        self
    }

    /// Byte budget of the L1 tier (default [`DEFAULT_L1_MAX_BYTES`], 64 MiB): an entry weighs its
    /// value's serialized (uncompressed) size plus its key and tags; values larger than the
    /// budget are never kept in L1. Only used with [`local`](Self::local).
    ///
    /// ```
    /// use cache_layer::Cache;
    ///
    /// // 10,000 entries, but never more than 256 MiB of them.
    /// let cache = Cache::builder().local(10_000).local_max_bytes(256 * 1024 * 1024).build()?;
    /// # Ok::<(), cache_layer::Error>(())
    /// ```
    pub fn local_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = bytes;
        self
    }

    /// Timeout of each Redis operation, including the wait for a pooled connection (default
    /// 250 ms). A timed-out operation counts as a failure for the breaker and the caller falls back
    /// to the source.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.redis.op_timeout = timeout;
        self
    }

    /// Longest wait for a pooled connection (default 250 ms; never longer than the op timeout).
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.redis.checkout_timeout = timeout;
        self
    }

    /// Timeout for establishing a connection: TCP connect plus handshake (default 250 ms). Runs in
    /// the background: callers never wait for it longer than the op timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.redis.connect_timeout = timeout;
        self
    }

    /// Number of multiplexed Redis connections, each carrying many concurrent commands (default:
    /// 1; see [`default_pool_size`](crate::store::default_pool_size)).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.redis.pool_size = size;
        self
    }

    /// Circuit-breaker settings.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Default payload codec (MessagePack unless changed).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Size bound of the embedded in-memory store, when no Redis is configured (default 256 MiB).
    ///
    /// The embedded store keeps entries encoded, as Redis does; a cache on it also keeps the
    /// decoded values it last served in an L1 tier (as [`local`](Self::local) would, with
    /// [`IMPLICIT_L1_ENTRIES`] entries and a quarter of this budget, at most
    /// [`local_max_bytes`](Self::local_max_bytes), unless `local` says otherwise), so a hit
    /// decodes nothing: the embedded store is in-process anyway, and its entries are coherent with
    /// the tier the same way Redis entries are.
    pub fn memory_max_bytes(mut self, bytes: u64) -> Self {
        self.memory_max_bytes = bytes;
        self
    }

    /// Tracks the `top` most-read keys (sampled, bounded memory), reported in
    /// [`Stats::hot_keys`](crate::Stats::hot_keys). Off by default.
    pub fn track_hot_keys(mut self, top: usize) -> Self {
        self.hot_keys = Some(top);
        self
    }

    /// How long L1 copies, cached tag times and the cached namespace version are trusted while
    /// the invalidation bus is not subscribed (Redis down, reconnecting, or not reached yet)
    /// (default 1 s). This bounds how long another instance's invalidation can go unnoticed here
    /// without the bus; with the bus up they follow within its delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = cache_layer::Cache::builder().bus_fallback_ttl(Duration::from_millis(500));
    /// ```
    pub fn bus_fallback_ttl(mut self, ttl: Duration) -> Self {
        self.bus_fallback_ttl = ttl;
        self
    }

    /// How long a tag's invalidation times are kept in Redis after its last invalidation
    /// (default 7 days). Tagged entries never live longer than this in Redis (their TTL is capped),
    /// so an expired tag key can only be missing for entries that are gone too.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = cache_layer::Cache::builder().tag_ttl(Duration::from_secs(24 * 3600));
    /// ```
    pub fn tag_ttl(mut self, ttl: Duration) -> Self {
        self.tag_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// How many tags' invalidation times each process keeps in memory (default 100 000). A tag
    /// that fell out is read again (one round trip) the next time an entry carrying it is read.
    ///
    /// ```
    /// let builder = cache_layer::Cache::builder().max_tracked_tags(10_000);
    /// ```
    pub fn max_tracked_tags(mut self, tags: u64) -> Self {
        self.max_tags = tags;
        self
    }

    /// Worst-case clock difference between this host and Redis assumed until the offset was
    /// measured (default 1 s; see the `clock` module docs). Once the bus is connected the measured
    /// offset is used, with an error of about half a round trip.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = cache_layer::Cache::builder().clock_skew(Duration::from_millis(200));
    /// ```
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    /// The store the configuration asks for.
    fn store(&self) -> Result<Backend, Error> {
        let given = [
            self.redis_url.is_some(),
            self.cluster_nodes.is_some(),
            self.sentinel.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Error::Config(
                "more than one of .redis(..), .redis_cluster(..), .redis_sentinel(..) was given; \
                 choose one"
                    .into(),
            ));
        }
        if let Some(url) = &self.redis_url {
            return Ok(Backend::Redis(RedisStore::with_tls(
                url,
                &self.tls,
                self.redis.clone(),
            )?));
        }
        #[cfg(feature = "cluster")]
        if let Some(nodes) = &self.cluster_nodes {
            return Ok(Backend::Cluster(crate::store::ClusterStore::with_tls(
                nodes,
                &self.tls,
                self.redis.clone(),
            )?));
        }
        #[cfg(feature = "sentinel")]
        if let Some((sentinels, master)) = &self.sentinel {
            let endpoint = crate::store::endpoint::sentinel_endpoint(
                sentinels,
                master,
                self.sentinel_auth.as_ref(),
                &self.tls,
                // Asking the sentinels and checking the master's role: a few round trips, each
                // bounded like a connection attempt.
                self.redis.connect_timeout * 4,
            )?;
            return Ok(Backend::Redis(RedisStore::with_endpoint(
                crate::store::endpoint::Endpoint::Sentinel(Arc::new(endpoint)),
                self.redis.clone(),
            )?));
        }
        if !self.tls.is_default() {
            return Err(Error::Config(
                "tls_root_ca / tls_client_auth need a Redis to connect to (.redis(\"rediss://..\"))"
                    .into(),
            ));
        }
        Ok(Backend::Memory(MemoryStore::new(self.memory_max_bytes)))
    }

    /// Builds the cache. Never connects: fails only on invalid configuration (bad URL or namespace).
    pub fn build(self) -> Result<Cache, Error> {
        let keys = KeySpace::new(&self.namespace)?;
        self.breaker.validate()?;
        let store = self.store()?;
        let name = self.name.unwrap_or_else(|| self.namespace.clone());
        let metrics = Arc::new(CacheMetrics::new(&name));
        let hook_metrics = metrics.clone();
        let shared = store.is_shared();
        let clock_reference = if shared {
            ClockReference::Store
        } else {
            ClockReference::Local
        };
        // Pub/sub only when other processes share the store (otherwise this one knows everything).
        let pubsub = shared.then(|| store.clone());
        let trust = Arc::new(TrustState::new(shared, self.bus_fallback_ttl));
        let bus = Bus::new(
            keys.bus_channel(),
            pubsub.clone(),
            trust.clone(),
            self.redis.connect_timeout + self.redis.op_timeout,
        );
        let landed = LandedSignals::new(keys.meta("landed"), pubsub);
        let refresh_failures = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(crate::cache::REFRESH_RETRY_AFTER)
            .build();
        // The embedded store (not shared) always reads through an L1 tier of decoded values.
        let l1_bounds = match self.l1_entries {
            Some(max) => Some((max, self.l1_max_bytes)),
            None if !shared => Some((
                IMPLICIT_L1_ENTRIES,
                (self.memory_max_bytes / 4).min(self.l1_max_bytes),
            )),
            None => None,
        };
        let breaker_config = self.breaker;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            let on_transition = move |to| {
                hook_metrics.breaker_transition(to);
                if to == BreakerState::Closed {
                    // Redis was skipped for a while: L1 starts over, missed invalidations replay.
                    if let Some(inner) = weak.upgrade() {
                        inner.start_over();
                    }
                }
            };
            Inner {
                name: name.clone(),
                keys,
                store,
                known: Knowledge::new(
                    l1_bounds.map(|(max, bytes)| {
                        let metrics = metrics.clone();
                        L1Tier::new(max, bytes, move || metrics.l1_eviction())
                    }),
                    trust,
                    self.max_tags,
                ),
                breaker: Breaker::new(breaker_config, name, Some(Arc::new(on_transition))),
                flights: Arc::new(Flights::default()),
                metrics,
                codec: self.codec,
                corrupt_logged: Default::default(),
                clock: RedisClock::new(clock_reference, self.clock_skew),
                bus,
                tag_ttl: self.tag_ttl,
                landed,
                refresh_failures,
                hot_keys: self.hot_keys.map(HotKeys::new),
                extensions: Default::default(),
                memory_policy: Default::default(),
            }
        });
        Ok(Cache { inner })
    }
}
