//! Redis via a bb8 pool of multiplexed redis-rs connections.
//!
//! How the pool is run (each choice measured, see BENCHMARKS.md):
//!
//! - no `PING` on checkout (`test_on_check_out(false)`): health comes from errors and the breaker;
//! - the pool is built lazily (`build_unchecked`, no background tasks), so building never touches
//!   the network and works outside a Tokio runtime;
//! - a connection that saw an I/O error or a timeout is flagged and replaced at its next checkout
//!   (bb8-redis' own manager reports connections as never broken);
//! - the store keeps `pool_size` distinct connections in round-robin slots and clones a slot's
//!   multiplexed connection per operation (no checkout on the hot path), so any number of
//!   commands share the pool's connections concurrently; slots are filled from checkouts of
//!   every connection at once, which is what makes bb8 open distinct ones.
//!
//! Time bounds (nothing here can make a caller wait on a dead or hung Redis):
//!
//! - one operation — waiting for a pooled connection *and* the command(s) — has one deadline,
//!   `op_timeout` after it started (scripts that need a `SCRIPT LOAD` retry included);
//! - waiting for a pooled connection is also capped by `checkout_timeout` (bb8 otherwise waits
//!   30 s and retries connecting), and fails at once when a connection attempt fails (bb8 does not
//!   hand connect errors to waiting callers; we do, so a refused connection or a wrong password is
//!   reported as such instead of as a timeout);
//! - a new connection (TCP connect plus the `HELLO`/`AUTH`/`SELECT` handshake) is made in the
//!   background and bounded by `connect_timeout`; callers never wait for it past their deadline;
//! - redis-rs' own response timeout (= `op_timeout`) backs the deadline up.
//!
//! A command that fails because its connection was dropped (the server restarted, `CLIENT KILL`,
//! an idle timeout) is retried on another connection within the same deadline, except `SET NX`
//! whose first attempt may have succeeded.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use bb8_redis::{
    bb8::{self, ManageConnection, RunError},
    redis::{self, aio::MultiplexedConnection, AsyncConnectionConfig, FromRedisValue},
};
use tokio::{sync::watch, time::Instant};

use super::commands::{self, impl_store, Raw, Resend};
use super::endpoint::{self, Endpoint, TlsConfig};
use super::replicas::{self, Replicas};
use super::scripts::Invocation;
use super::ReplicaAck;
use crate::Error;

/// Connection settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// Longest time one operation may take, from asking the pool for a connection to the reply;
    /// past it the operation fails (and counts against the breaker).
    pub op_timeout: Duration,
    /// Longest time to wait for a pooled connection (never longer than `op_timeout`).
    pub checkout_timeout: Duration,
    /// Longest time to establish a new connection: TCP connect plus handshake (`HELLO`, `AUTH`).
    pub connect_timeout: Duration,
    /// Number of multiplexed connections the store keeps, each its own (default: 1; see
    /// [`default_pool_size`]).
    pub pool_size: u32,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            op_timeout: Duration::from_millis(250),
            checkout_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(250),
            pool_size: default_pool_size(),
        }
    }
}

/// One multiplexed connection.
///
/// ```
/// assert_eq!(cache_layer::store::default_pool_size(), 1);
/// ```
///
/// A multiplexed connection pipelines every command sent to it, from any number of callers, and
/// is driven by one task; more connections only help when that task is the bottleneck (a client
/// doing hundreds of thousands of operations per second with cores to spare). Each extra
/// connection costs batching: fewer commands per write and per read on both sides. With 64
/// concurrent hits on a 2-core machine, 2 connections did 0.75x–0.85x of a raw redis-rs `GET`
/// on one connection where 1 did 0.90x–0.96x (BENCHMARKS.md: the L2 hit tables'
/// `pool_size(2)` row).
pub fn default_pool_size() -> u32 {
    1
}

/// A pooled connection plus the flag that retires it after an I/O error or timeout.
pub(crate) struct PooledConnection {
    connection: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

/// The last failed connection attempt, published to callers waiting for a connection.
type ConnectFailures = watch::Sender<Option<redis::RedisError>>;

struct Manager {
    endpoint: Endpoint,
    connection_config: AsyncConnectionConfig,
    connect_failures: Arc<ConnectFailures>,
}

impl ManageConnection for Manager {
    type Connection = PooledConnection;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<PooledConnection, redis::RedisError> {
        let connected = async {
            // A node: its client. Sentinel: the current master, asked for on every connect.
            let client = self.endpoint.client().await?;
            client
                .get_multiplexed_async_connection_with_config(&self.connection_config)
                .await
        };
        match connected.await {
            Ok(connection) => Ok(PooledConnection {
                connection,
                broken: Arc::new(AtomicBool::new(false)),
            }),
            Err(err) => {
                tracing::debug!(error = %Error::Redis(err.clone()), "redis connection attempt failed");
                self.connect_failures.send_replace(Some(err.clone()));
                Err(err)
            }
        }
    }

    async fn is_valid(&self, conn: &mut PooledConnection) -> Result<(), redis::RedisError> {
        redis::cmd("PING")
            .query_async::<()>(&mut conn.connection)
            .await
    }

    fn has_broken(&self, conn: &mut PooledConnection) -> bool {
        conn.broken.load(Ordering::Relaxed)
    }
}

/// Whether `err` means the connection itself is gone (so another connection may succeed).
fn is_dropped_connection(err: &Error) -> bool {
    matches!(err, Error::Redis(e) if e.is_connection_dropped())
}

/// A connection cloned out of the pool (or a [`RecentConnections`] slot) for one operation, with
/// the handle that marks it broken and the operation's deadline.
pub(crate) struct Connection<'s> {
    pub(crate) inner: MultiplexedConnection,
    health: Health<'s>,
    deadline: Instant,
    op_timeout: Duration,
    /// The operation's whole time is left (first attempt, no pool wait): the connection's own
    /// response timeout (= `op_timeout`) enforces the deadline without a clock read or a timer.
    whole_budget: bool,
}

/// Where a [`Connection`] reports that it broke: through the slot it was cloned from, if the slot
/// still holds it (a slot is only refilled once its connection was flagged). Costs no reference
/// count on the hot path.
struct Health<'s> {
    slot: &'s ArcSwapOption<SharedConnection>,
    identity: u64,
}

impl Health<'_> {
    fn mark_broken(&self) {
        if let Some(shared) = self.slot.load().as_ref() {
            if identity_of(shared) == self.identity {
                shared.broken.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Connection<'_> {
    /// Runs a command, retiring the connection if it failed at the transport level.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Error> {
        let deadline = self.deadline;
        // The connection's own response timeout is `op_timeout`: when (nearly) all of the
        // operation's time is left, it alone enforces the deadline and the second timer is
        // skipped; after a slow checkout or a retry the remaining time is enforced here.
        if self.whole_budget
            || deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1)
                >= self.op_timeout
        {
            let result = cmd.query_async(&mut self.inner).await;
            return self.check(Ok(result));
        }
        let result = Box::pin(tokio::time::timeout_at(
            deadline,
            cmd.query_async(&mut self.inner),
        ))
        .await;
        self.check(result)
    }

    /// Runs a pipeline, retiring the connection if it failed at the transport level.
    #[allow(dead_code)] // for pipelined batches (write-behind counters)
    pub(crate) async fn query_pipeline<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        let deadline = self.deadline;
        let result = tokio::time::timeout_at(deadline, pipe.query_async(&mut self.inner)).await;
        self.check(result)
    }

    /// Invokes a Lua script (EVALSHA, falling back to loading it on NOSCRIPT), all within the
    /// operation's deadline.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &mut self,
        invocation: &Invocation,
    ) -> Result<T, Error> {
        let deadline = self.deadline;
        let result =
            tokio::time::timeout_at(deadline, invocation.invoke_async(&mut self.inner)).await;
        self.check(result)
    }

    fn check<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Error> {
        match result {
            Err(_elapsed) => {
                self.health.mark_broken();
                Err(Error::Timeout(self.op_timeout))
            }
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) if err.is_timeout() => {
                self.health.mark_broken();
                Err(Error::Timeout(self.op_timeout))
            }
            Ok(Err(err)) => {
                if err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error()
                {
                    self.health.mark_broken();
                }
                Err(Error::Redis(err))
            }
        }
    }
}

/// A Redis [`Store`](super::Store) on a bb8 pool of multiplexed connections.
///
/// Creating it does no I/O; connections are made on first use.
///
/// ```
/// use cache_layer::store::{RedisStore, RedisStoreConfig};
///
/// // Never fails because Redis is down: connecting is lazy.
/// let store = RedisStore::new("redis://127.0.0.1:1", RedisStoreConfig::default())?;
/// # Ok::<(), cache_layer::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pool: bb8::Pool<Manager>,
    endpoint: Endpoint,
    config: RedisStoreConfig,
    connect_failures: Arc<ConnectFailures>,
    recent: Arc<RecentConnections>,
    /// Taken to fill [`RecentConnections`] slots from the pool (see [`RedisStore::refill`]).
    filling: Arc<tokio::sync::Mutex<()>>,
    /// How connections are made (the pool's, and the write-behind `WAIT` connections').
    connection_config: AsyncConnectionConfig,
    /// Whether the server has replicas, and idle connections for writes that wait for one.
    replicas: Arc<Replicas>,
}

/// The server's name in [`Replicas`] (one node; behind Sentinel, whichever is the master).
const NODE: &str = "";

/// A pooled connection as shared through a [`RecentConnections`] slot.
struct SharedConnection {
    connection: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    /// Unique per slot fill (never 0, which stands for an empty slot): unlike an address, never
    /// reused, so a late failure report cannot flag the connection that replaced this one.
    identity: u64,
}

fn identity_of(shared: &Arc<SharedConnection>) -> u64 {
    shared.identity
}

/// Clones of healthy pooled connections, handed out without a pool checkout.
///
/// A bb8 checkout (mutex, bookkeeping, return on drop) plus its deadline timer cost about a third of
/// a loopback GET's CPU at high concurrency. Multiplexed connections are shareable, so the hot path
/// clones one of these instead; a slot whose connection was flagged broken (or is empty) sends the
/// caller through the pool, which retires the broken connection and refills the slot.
///
/// The hot path writes no shared memory beyond what cloning the connection itself costs: slots
/// are read through `arc-swap` (no reader count), the round robin is per thread, and a connection
/// is flagged broken through its slot instead of through a cloned flag.
struct RecentConnections {
    slots: Box<[ArcSwapOption<SharedConnection>]>,
    fills: std::sync::atomic::AtomicU64,
}

thread_local! {
    /// Per-thread round robin over the slots.
    static NEXT_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl RecentConnections {
    fn new(slots: usize) -> Self {
        RecentConnections {
            slots: (0..slots.max(1)).map(|_| ArcSwapOption::empty()).collect(),
            fills: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The next slot index (round robin, so load spreads over the pool's connections).
    fn pick(&self) -> usize {
        let next = NEXT_SLOT.with(|next| {
            let value = next.get().wrapping_add(1);
            next.set(value);
            value
        });
        next % self.slots.len()
    }

    /// A healthy connection from slot `index`, with the slot's health handle; or, when the slot
    /// is empty or its connection broken, the identity of what it holds (for [`put`](Self::put)).
    fn get(&self, index: usize) -> Result<(MultiplexedConnection, Health<'_>), u64> {
        let slot = &self.slots[index];
        let current = slot.load();
        match current.as_ref() {
            Some(shared) if !shared.broken.load(Ordering::Relaxed) => Ok((
                shared.connection.clone(),
                Health {
                    slot,
                    identity: identity_of(shared),
                },
            )),
            Some(shared) => Err(identity_of(shared)),
            None => Err(0),
        }
    }

    /// Fills slot `index` with a connection, unless another caller refilled it since it was seen
    /// holding `seen` (a healthy connection is never replaced).
    fn put(
        &self,
        index: usize,
        seen: u64,
        connection: &MultiplexedConnection,
        broken: &Arc<AtomicBool>,
    ) {
        let slot = &self.slots[index];
        let current = slot.load();
        if current.as_ref().map_or(0, identity_of) != seen {
            return;
        }
        let fresh = Arc::new(SharedConnection {
            connection: connection.clone(),
            broken: broken.clone(),
            identity: self.fills.fetch_add(1, Ordering::Relaxed) + 1,
        });
        slot.compare_and_swap(&*current, Some(fresh));
    }

    /// The slots that hold no healthy connection, each with the identity of what it holds.
    fn vacancies(&self) -> Vec<(usize, u64)> {
        (0..self.slots.len())
            .filter_map(|index| self.get(index).err().map(|seen| (index, seen)))
            .collect()
    }

    /// Whether a slot holds the healthy connection whose broken flag is `broken`.
    fn holds(&self, broken: &Arc<AtomicBool>) -> bool {
        self.slots.iter().any(|slot| {
            slot.load()
                .as_ref()
                .is_some_and(|shared| Arc::ptr_eq(&shared.broken, broken))
        })
    }

    /// A healthy connection from slot `preferred`, or else from any slot.
    fn any(&self, preferred: usize) -> Option<(MultiplexedConnection, Health<'_>)> {
        (0..self.slots.len())
            .map(|offset| (preferred + offset) % self.slots.len())
            .find_map(|index| self.get(index).ok())
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.endpoint)
            .field("config", &self.config)
            .finish()
    }
}

impl RedisStore {
    /// A store for the Redis at `url` (`redis://[user:password@]host:port[/db]`).
    ///
    /// Fails only when the URL is invalid or a timeout is zero; a Redis that is down is noticed
    /// on use.
    pub fn new(url: &str, config: RedisStoreConfig) -> Result<Self, Error> {
        Self::with_tls(url, &TlsConfig::default(), config)
    }

    /// A store for the node at `url` (`redis://` or `rediss://`) with TLS settings.
    pub(crate) fn with_tls(
        url: &str,
        tls: &TlsConfig,
        config: RedisStoreConfig,
    ) -> Result<Self, Error> {
        check_timeouts(&config)?;
        let client = endpoint::node_client(url, tls)?;
        Self::with_endpoint(Endpoint::Node(client), config)
    }

    /// A store whose connections go to `endpoint` (a node, or a Sentinel group's master).
    pub(crate) fn with_endpoint(
        endpoint: Endpoint,
        config: RedisStoreConfig,
    ) -> Result<Self, Error> {
        check_timeouts(&config)?;
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.op_timeout));
        let connect_failures = Arc::new(watch::Sender::new(None));
        let manager = Manager {
            endpoint: endpoint.clone(),
            connection_config: connection_config.clone(),
            connect_failures: connect_failures.clone(),
        };
        let pool = bb8::Pool::builder()
            .max_size(config.pool_size.max(1))
            .min_idle(None)
            .test_on_check_out(false)
            .connection_timeout(config.checkout_timeout.min(config.op_timeout))
            .retry_connection(false)
            // No reaper task: building must work outside a runtime. Multiplexed connections are
            // long-lived by design; broken ones are retired through `has_broken`.
            .max_lifetime(None)
            .idle_timeout(None)
            .build_unchecked(manager);
        let recent = Arc::new(RecentConnections::new(config.pool_size.max(1) as usize));
        Ok(RedisStore {
            pool,
            endpoint,
            config,
            connect_failures,
            recent,
            filling: Arc::default(),
            connection_config,
            replicas: Arc::default(),
        })
    }

    /// The store's settings.
    pub fn config(&self) -> &RedisStoreConfig {
        &self.config
    }

    /// A multiplexed connection cloned out of the pool (the checkout is released immediately) for
    /// one operation, whose commands must finish by `deadline`.
    ///
    /// `first`: the operation's first attempt, started just now (so its whole budget is left when
    /// a connection is at hand without waiting).
    async fn connection_until(
        &self,
        deadline: Instant,
        first: bool,
    ) -> Result<Connection<'_>, Error> {
        let slot = self.recent.pick();
        if let Ok((inner, health)) = self.recent.get(slot) {
            return Ok(Connection {
                inner,
                health,
                deadline,
                op_timeout: self.config.op_timeout,
                whole_budget: first,
            });
        }
        // Rare (start-up, after a failure): boxed, so the common path's future stays small.
        match Box::pin(tokio::time::timeout_at(deadline, self.refill(slot))).await {
            Ok(Ok((inner, health))) => Ok(Connection {
                inner,
                health,
                deadline,
                op_timeout: self.config.op_timeout,
                whole_budget: false,
            }),
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => Err(Error::Timeout(self.config.op_timeout)),
        }
    }

    /// Fills every slot that holds no healthy connection with a pooled connection no other slot
    /// holds, then hands out slot `slot`'s connection (or, when not every connection could be
    /// made, another slot's).
    ///
    /// bb8 hands out idle connections first, so filling one slot from one checkout would give
    /// every slot the same connection. Checking out as many connections as there are slots, all
    /// at once, makes the pool keep `pool_size` distinct ones (it opens the missing ones in
    /// parallel). Fills take turns, so they never wait on each other's checkouts.
    async fn refill(&self, slot: usize) -> Result<(MultiplexedConnection, Health<'_>), Error> {
        let _turn = self.filling.lock().await;
        if let Ok(filled) = self.recent.get(slot) {
            return Ok(filled); // another caller's fill, while this one waited
        }
        let checkouts =
            futures_util::future::join_all((0..self.recent.slots.len()).map(|_| self.checkout()))
                .await;
        let mut failure = None;
        let mut fresh = Vec::with_capacity(checkouts.len());
        for checkout in checkouts {
            match checkout {
                Ok(checkout) if !self.recent.holds(&checkout.broken) => fresh.push(checkout),
                Ok(_in_a_slot) => {}
                Err(err) => failure = Some(err),
            }
        }
        for (index, seen) in self.recent.vacancies() {
            let Some(checkout) = fresh.pop() else { break };
            self.recent
                .put(index, seen, &checkout.connection, &checkout.broken);
        }
        drop(fresh); // back to the pool: the slots hold clones
        match (self.recent.any(slot), failure) {
            (Some(filled), _) => Ok(filled),
            (None, Some(err)) => Err(err),
            (None, None) => Err(Error::Timeout(self.config.op_timeout)),
        }
    }

    /// A pool checkout of a healthy connection (the checkout is released when dropped).
    async fn checkout(&self) -> Result<bb8::PooledConnection<'_, Manager>, Error> {
        // Each broken connection found is dropped (bb8 asks `has_broken` and discards it), so this
        // loop ends after at most `pool_size` retirements.
        for _ in 0..=self.config.pool_size {
            let mut failures = self.connect_failures.subscribe();
            let checkout = tokio::select! {
                biased;
                checkout = self.pool.get() => match checkout {
                    Ok(checkout) => checkout,
                    Err(RunError::TimedOut) => return Err(Error::Timeout(self.config.op_timeout)),
                    Err(RunError::User(err)) => return Err(Error::Redis(err)),
                },
                // bb8 does not tell waiting callers that connecting failed; fail fast with the
                // reason instead of waiting for the timeout.
                Ok(()) = failures.changed() => {
                    let failure = failures.borrow_and_update().clone();
                    return Err(match failure {
                        Some(err) if err.is_timeout() => Error::Timeout(self.config.connect_timeout),
                        Some(err) => Error::Redis(err),
                        None => Error::Timeout(self.config.op_timeout),
                    });
                }
            };
            if checkout.broken.load(Ordering::Relaxed) {
                continue; // dropped: bb8 asks `has_broken` and discards it
            }
            return Ok(checkout);
        }
        Err(Error::Timeout(self.config.op_timeout))
    }

    /// Runs one operation within `op_timeout`. When its connection turns out to be dropped and
    /// `resend` allows, runs it again on another connection, within the same deadline: after a
    /// server restart or `CLIENT KILL` every pooled connection is dead, and each failed attempt
    /// retires one (a dead multiplexed connection fails at once), so at most `pool_size` retries.
    async fn run<'s, T, F, Fut>(&'s self, resend: Resend, mut op: F) -> Result<T, Error>
    where
        F: FnMut(Connection<'s>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = Instant::now() + self.config.op_timeout;
        let mut retries = match resend {
            Resend::Safe => self.config.pool_size,
            Resend::Never => 0,
        };
        let mut first = true;
        loop {
            let result = op(self.connection_until(deadline, first).await?).await;
            first = false;
            match result {
                Err(err)
                    if retries > 0 && is_dropped_connection(&err) && Instant::now() < deadline =>
                {
                    retries -= 1;
                    tracing::debug!(error = %err, "redis connection dropped; retrying on another");
                }
                other => return other,
            }
        }
    }
}

impl RedisStore {
    /// The server's connected replicas (`INFO replication`, remembered for 10 s).
    async fn replica_count(&self) -> Result<u32, Error> {
        if let Some(count) = self.replicas.cached(NODE) {
            return Ok(count);
        }
        let info = redis::cmd("INFO").arg("replication").clone();
        let reply = Raw::query::<String>(self, &info, Resend::Safe).await;
        self.replicas.learn(NODE, reply)
    }

    /// A new connection of its own (not pooled) to the server, for a write followed by `WAIT`.
    async fn own_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = self.endpoint.client().await?;
        client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await
    }

    /// [`Raw::invoke_acked`] within one op timeout.
    async fn invoke_acked_now<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        resend: Resend,
    ) -> Result<(T, ReplicaAck), Error> {
        if self.replica_count().await? == 0 {
            let reply = Raw::invoke(self, invocation, resend).await?;
            return Ok((reply, ReplicaAck::NoReplicas));
        }
        let timeout = replicas::ack_timeout(self.config.op_timeout);
        let mut retries = 1;
        loop {
            let connect = || self.own_connection();
            match replicas::invoke_on_own_connection(
                &self.replicas,
                NODE,
                connect,
                invocation,
                timeout,
            )
            .await
            {
                Ok(done) => return Ok(done),
                Err(err) if retries > 0 && replicas::may_resend(&err, resend) => {
                    // Behind Sentinel, a failover made the server a replica: the next connection
                    // goes to the new master.
                    retries -= 1;
                    tracing::debug!(error = %err, "write-behind write retried on a new connection");
                }
                Err(err) if err.is_timeout() => return Err(Error::Timeout(self.config.op_timeout)),
                Err(err) => return Err(Error::Redis(err)),
            }
        }
    }
}

fn check_timeouts(config: &RedisStoreConfig) -> Result<(), Error> {
    if config.op_timeout.is_zero() || config.connect_timeout.is_zero() {
        return Err(Error::Config(
            "redis op_timeout and connect_timeout must be greater than zero".into(),
        ));
    }
    Ok(())
}

impl Raw for RedisStore {
    async fn query<T: FromRedisValue + Send>(
        &self,
        cmd: &redis::Cmd,
        resend: Resend,
    ) -> Result<T, Error> {
        self.run(resend, |mut conn| async move { conn.query(cmd).await })
            .await
    }

    async fn invoke<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        resend: Resend,
    ) -> Result<T, Error> {
        self.run(
            resend,
            |mut conn| async move { conn.invoke(invocation).await },
        )
        .await
    }

    async fn invoke_acked<T: FromRedisValue + Send>(
        &self,
        invocation: &Invocation,
        _key: &str,
        resend: Resend,
    ) -> Result<(T, ReplicaAck), Error> {
        let op_timeout = self.config.op_timeout;
        // Boxed: the nested futures would otherwise make every caller's future type too deep
        // (one allocation per push, seal or claim).
        let attempt = Box::pin(self.invoke_acked_now(invocation, resend));
        match tokio::time::timeout(op_timeout, attempt).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Timeout(op_timeout)),
        }
    }

    /// One node holds every key: one pipelined round trip.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        match keys {
            [] => Ok(Vec::new()),
            [key] => Ok(vec![commands::get(self, key).await?]),
            keys => {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.add_command(commands::get_cmd(key));
                }
                let pipe = &pipe;
                self.run(Resend::Safe, |mut conn| async move {
                    conn.query_pipeline(pipe).await
                })
                .await
            }
        }
    }

    async fn pubsub_client(&self) -> Result<redis::Client, Error> {
        Ok(self.endpoint.client().await?)
    }
}

impl_store!(RedisStore);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{scripts, Store};

    const OP: Duration = Duration::from_millis(100);
    /// Scheduling slack on a busy machine.
    const SLACK: Duration = Duration::from_millis(400);

    fn store(addr: std::net::SocketAddr) -> RedisStore {
        let config = RedisStoreConfig {
            op_timeout: OP,
            checkout_timeout: OP,
            connect_timeout: OP,
            pool_size: 2,
        };
        RedisStore::new(&format!("redis://{addr}"), config).expect("valid url")
    }

    /// The health handle of slot 0's connection, which must be healthy.
    fn healthy(recent: &RecentConnections) -> Health<'_> {
        match recent.get(0) {
            Ok((_, health)) => health,
            Err(identity) => panic!("slot 0 holds no healthy connection (identity {identity})"),
        }
    }

    #[tokio::test]
    async fn a_late_failure_report_never_retires_the_connection_that_replaced_a_broken_one() {
        // Any multiplexed connection will do (the slots never send on it here): the shared Redis.
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let connection = redis::Client::open(url.as_str())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("the shared Redis (scripts/test.sh starts one)");
        let recent = RecentConnections::new(1);
        let first = Arc::new(AtomicBool::new(false));
        recent.put(0, 0, &connection, &first);

        // Two operations take the slot's connection; the second one fails and flags it.
        let late = healthy(&recent);
        let failing = healthy(&recent);
        failing.mark_broken();
        assert!(first.load(Ordering::Relaxed), "flagged through the slot");
        let seen = recent.get(0).err().expect("broken: callers go to the pool");

        // The pool's replacement fills the slot.
        let second = Arc::new(AtomicBool::new(false));
        recent.put(0, seen, &connection, &second);
        assert!(recent.get(0).is_ok());

        // The first operation fails too, late: its report must not retire the replacement.
        late.mark_broken();
        assert!(!second.load(Ordering::Relaxed));
        assert!(recent.get(0).is_ok());

        // A caller that saw the broken state long ago cannot overwrite the healthy replacement.
        let stale_fill = Arc::new(AtomicBool::new(false));
        recent.put(0, seen, &connection, &stale_fill);
        let current = healthy(&recent);
        current.mark_broken();
        assert!(
            second.load(Ordering::Relaxed),
            "the slot still held the replacement"
        );
        assert!(!stale_fill.load(Ordering::Relaxed));
    }

    /// The server-side ids of the connections `count` operations ran on, sent `concurrently` or
    /// one after the other.
    async fn connection_ids(
        store: &RedisStore,
        count: usize,
        concurrently: bool,
    ) -> std::collections::BTreeSet<i64> {
        let cmd = redis::cmd("CLIENT").arg("ID").clone();
        let one = || async {
            Raw::query::<i64>(store, &cmd, Resend::Safe)
                .await
                .expect("CLIENT ID on the shared Redis")
        };
        let mut ids = std::collections::BTreeSet::new();
        if concurrently {
            ids.extend(futures_util::future::join_all((0..count).map(|_| one())).await);
        } else {
            for _ in 0..count {
                ids.insert(one().await);
            }
        }
        ids
    }

    /// `pool_size` is how many connections the store talks on: each slot its own (bb8 hands out
    /// its idle connection first, so filling slots one checkout at a time gave every slot the
    /// same one), never more under a concurrent cold start, and a connection killed on the
    /// server is replaced by a new one.
    #[tokio::test]
    async fn operations_spread_over_pool_size_distinct_connections_and_a_killed_one_is_replaced() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let config = RedisStoreConfig {
            pool_size: 3,
            ..RedisStoreConfig::default()
        };
        let store = RedisStore::new(&url, config).expect("valid url");

        let cold = connection_ids(&store, 32, true).await;
        assert!(cold.len() <= 3, "a cold start opened {cold:?}");
        let before = connection_ids(&store, 12, false).await;
        assert_eq!(before.len(), 3, "round robin over 3 slots used {before:?}");
        assert!(cold.is_subset(&before), "{cold:?} vs {before:?}");

        let victim = *before.first().expect("three ids");
        let mut admin = redis::Client::open(url.as_str())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("the shared Redis (scripts/test.sh starts one)");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(victim)
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL ID");
        assert_eq!(killed, 1);

        // Every operation still succeeds (the dead connection's is resent on another one), and
        // the killed connection's slot gets a connection of its own again.
        let after = connection_ids(&store, 12, false).await;
        assert_eq!(after.len(), 3, "after the kill: {after:?}");
        assert!(!after.contains(&victim));
        assert_eq!(
            after.intersection(&before).count(),
            2,
            "{before:?} then {after:?}"
        );
    }

    /// A fill whose load saw no key runs `SET NX` instead of the conditional-fill script: on every
    /// state the key can be in, it must decide (and leave the key) exactly as the script does.
    #[tokio::test]
    async fn a_fill_that_saw_nothing_decides_as_the_conditional_fill_script_does() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let store = RedisStore::new(&url, RedisStoreConfig::default()).expect("valid url");
        let mut conn = redis::Client::open(url.as_str())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("the shared Redis (scripts/test.sh starts one)");
        let prefix = format!("fill-nx-test:{:016x}", rand::random::<u64>());
        let mut tombstone = b"CL\x02\x80".to_vec();
        tombstone.extend_from_slice(&[0; 28]);
        tombstone.extend_from_slice(b"12345678");
        let mut entry = b"CL\x02\x00".to_vec();
        entry.extend_from_slice(&[0; 28]);
        entry.extend_from_slice(b"87654321");
        let ttl = Duration::from_secs(60);
        // (name, how the key is prepared, whether the script stores over it when nothing was seen)
        let states: [(&str, Option<&[u8]>, bool); 5] = [
            ("absent", None, true),
            ("an entry", Some(&entry[..]), false),
            ("a tombstone", Some(&tombstone[..]), false),
            ("foreign bytes", Some(&b"plain"[..]), false),
            ("a hash", None, false),
        ];
        for (i, (name, bytes, expected)) in states.into_iter().enumerate() {
            let ours = format!("{prefix}:{i}:ours");
            let script = format!("{prefix}:{i}:script");
            for key in [&ours, &script] {
                match bytes {
                    Some(bytes) => {
                        let _: () = redis::cmd("SET")
                            .arg(key)
                            .arg(bytes)
                            .query_async(&mut conn)
                            .await
                            .expect("set");
                    }
                    None if name == "a hash" => {
                        let _: () = redis::cmd("HSET")
                            .arg(key)
                            .arg("f")
                            .arg("v")
                            .query_async(&mut conn)
                            .await
                            .expect("hset");
                    }
                    None => {}
                }
            }
            let stored = store
                .fill_if(&ours, b"filled".to_vec(), ttl, b"")
                .await
                .expect("fill");
            let mut invocation = scripts::FILL_IF.invocation(&[&script]);
            invocation.arg(&b"filled"[..]).arg(&b""[..]).arg(60_000);
            let by_script: i64 = invocation.invoke_async(&mut conn).await.expect("script");
            assert_eq!(stored, expected, "SET NX over {name}");
            assert_eq!(by_script == 1, expected, "the script over {name}");
            let dump = |key: String| {
                let mut conn = conn.clone();
                async move {
                    let kind: String = redis::cmd("TYPE")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .expect("type");
                    let value: Option<Vec<u8>> = if kind == "string" {
                        redis::cmd("GET")
                            .arg(&key)
                            .query_async(&mut conn)
                            .await
                            .expect("get")
                    } else {
                        None
                    };
                    let ttl: i64 = redis::cmd("PTTL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .expect("pttl");
                    (kind, value, ttl > 0)
                }
            };
            assert_eq!(
                dump(ours.clone()).await,
                dump(script.clone()).await,
                "both leave {name} the same way"
            );
            let _: () = redis::cmd("DEL")
                .arg(&ours)
                .arg(&script)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    }

    #[tokio::test]
    async fn a_server_that_never_answers_costs_at_most_one_op_timeout() {
        // The kernel completes TCP handshakes into the backlog, but nobody ever answers: the
        // connection handshake (or the command) hangs, exactly like a SIGSTOPped Redis.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let store = store(listener.local_addr().expect("addr"));
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let err = store.get("k").await.expect_err("nobody answers");
            let took = started.elapsed();
            assert!(matches!(err, Error::Timeout(_)), "{err}");
            // (Later calls may fail sooner: a connection attempt that just timed out is reported
            // to every caller waiting for a connection.)
            assert!(took < OP + SLACK, "took {took:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_fails_fast_with_the_reason() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        let store = store(addr);
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let err = store
                .set("k", b"v".to_vec(), OP)
                .await
                .expect_err("refused");
            let took = started.elapsed();
            assert!(
                err.to_string().starts_with("could not connect to redis"),
                "{err}"
            );
            assert!(took < OP, "not a timeout: took {took:?}");
        }
    }

    #[test]
    fn passwords_are_redacted_from_url_errors() {
        use endpoint::redact_password;
        assert_eq!(
            redact_password("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_password("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact_password("redis://host:6379"), "redis://host:6379");
        let err = RedisStore::new("redis://:secret@host:notaport", RedisStoreConfig::default())
            .expect_err("invalid url");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_rejected() {
        let config = RedisStoreConfig {
            op_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(matches!(
            RedisStore::new("redis://127.0.0.1:6379", config),
            Err(Error::Config(_))
        ));
    }
}
