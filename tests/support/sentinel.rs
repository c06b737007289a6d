//! A private Redis Sentinel group for one test: one master, one replica and three
//! `redis-server --sentinel` processes watching them as [`MASTER_NAME`]. Every process is a
//! [`RedisServer`] (own free port, own temp dir, killed on drop).

use std::time::Duration;

use super::redis_server::{info_field, RedisServer};
use super::tls::TlsFiles;
use super::wait_until;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "mymaster";
/// Bounded wait for the group to form, and for a failover.
pub const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the sentinels wait before they consider an unanswering master down.
const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// One master, one replica, three sentinels (quorum 2).
pub struct SentinelGroup {
    /// The two data nodes; which one is the master changes on failover.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    tls: bool,
}

impl SentinelGroup {
    /// Starts the group and waits (bounded) until the replica is in sync and every sentinel
    /// sees the master, the replica and the two other sentinels.
    pub fn start() -> Self {
        Self::start_impl(None)
    }

    /// A group spoken to over TLS only: data nodes and sentinels listen for TLS with `tls`'s
    /// certificates, replicate and monitor over TLS, and the sentinels report TLS ports; clients
    /// use [`sentinel_tls_urls`](Self::sentinel_tls_urls).
    pub fn start_tls(tls: &TlsFiles) -> Self {
        Self::start_impl(Some(tls))
    }

    fn start_impl(tls: Option<&TlsFiles>) -> Self {
        let data_node = |args: &[&str]| match tls {
            Some(tls) => {
                let mut all = vec!["--tls-replication", "yes"];
                all.extend_from_slice(args);
                RedisServer::start_tls(tls, &all)
            }
            None => RedisServer::start_with(args),
        };
        let master = data_node(&["--repl-diskless-sync-delay", "0"]);
        // Where replicas and sentinels reach the master: its TLS port in a TLS group.
        let master_port = master.tls_port().unwrap_or(master.port()).to_string();
        let replica = data_node(&[
            "--repl-diskless-sync-delay",
            "0",
            "--replicaof",
            "127.0.0.1",
            &master_port,
        ]);
        let config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} {}\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            DOWN_AFTER.as_millis()
        );
        let sentinels: Vec<RedisServer> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|_| s.spawn(|| RedisServer::start_sentinel(&config, tls)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let group = SentinelGroup {
            data: vec![master, replica],
            sentinels,
            tls: tls.is_some(),
        };
        group.wait_for_link();
        group.wait_for_discovery();
        group
    }

    /// `redis://127.0.0.1:PORT` of every sentinel (what `redis_sentinel` is given).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| s.url()).collect()
    }

    /// `rediss://127.0.0.1:TLS_PORT` of every sentinel of a [`start_tls`](Self::start_tls) group.
    pub fn sentinel_tls_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| s.tls_url()).collect()
    }

    /// The sentinel processes.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The data node on `port` (its plain or, in a TLS group, its TLS port).
    pub fn node(&self, port: u16) -> &RedisServer {
        self.data
            .iter()
            .find(|n| n.port() == port || n.tls_port() == Some(port))
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The master's port as the first live sentinel reports it (its TLS port in a TLS group).
    pub fn master_port(&self) -> u16 {
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("no live sentinel");
        reported_master(sentinel).expect("sentinel reports a master")
    }

    /// The current master.
    pub fn master(&self) -> &RedisServer {
        self.node(self.master_port())
    }

    /// The current replica (the data node that is not the master).
    pub fn replica(&self) -> &RedisServer {
        let master = self.master().port();
        self.data
            .iter()
            .find(|n| n.port() != master)
            .expect("two data nodes")
    }

    /// Waits until the replica has applied everything the master has written, so a failover
    /// loses nothing written before this call.
    pub fn wait_for_replication(&self) {
        let (master, replica) = (self.master(), self.replica());
        let mut last = String::new();
        let caught_up = wait_until(SENTINEL_READY_TIMEOUT, Duration::from_millis(10), || {
            let ours = master.info_field("replication", "master_repl_offset");
            let theirs = replica.info_field("replication", "slave_repl_offset");
            last = format!("master at {ours:?}, replica at {theirs:?}");
            ours.is_some() && ours == theirs
        });
        assert!(caught_up, "replication did not catch up: {last}");
    }

    /// SIGKILLs the current master and returns its port. See
    /// [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_master(&self) -> u16 {
        let port = self.master_port();
        self.node(port).kill();
        port
    }

    /// Waits (bounded) until every sentinel reports a master other than `old` and that node
    /// says `role:master`; returns its port.
    pub fn wait_for_failover(&self, old: u16) -> u16 {
        let mut last = String::new();
        let mut promoted = 0;
        let done = wait_until(SENTINEL_READY_TIMEOUT, Duration::from_millis(50), || {
            let reports: Vec<Option<u16>> = self.sentinels.iter().map(reported_master).collect();
            last = format!("sentinels report masters {reports:?} (old master {old})");
            let Some(Some(first)) = reports.first().copied() else {
                return false;
            };
            if first == old || reports.iter().any(|r| *r != Some(first)) {
                return false;
            }
            promoted = first;
            self.node(first)
                .info_field("replication", "role")
                .as_deref()
                == Some("master")
        });
        assert!(
            done,
            "no failover within {SENTINEL_READY_TIMEOUT:?}: {last}"
        );
        promoted
    }

    fn wait_for_link(&self) {
        let replica = &self.data[1];
        let up = wait_until(SENTINEL_READY_TIMEOUT, Duration::from_millis(20), || {
            replica
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up")
        });
        assert!(
            up,
            "replica {} never linked to its master:\n{}",
            replica.port(),
            replica.log_tail(20)
        );
    }

    fn wait_for_discovery(&self) {
        let mut last = String::new();
        let ready = wait_until(SENTINEL_READY_TIMEOUT, Duration::from_millis(50), || {
            self.sentinels.iter().all(|sentinel| {
                let fields = master_fields(sentinel);
                let field = |name: &str| fields.get(name).map(String::as_str);
                last = format!("sentinel {}: {fields:?}", sentinel.port());
                field("flags") == Some("master")
                    && field("num-slaves") == Some("1")
                    && field("num-other-sentinels") == Some("2")
            })
        });
        assert!(ready, "sentinel group did not form: {last}");
    }
}

/// `SENTINEL MASTER mymaster` as a map (empty when the sentinel does not answer).
fn master_fields(sentinel: &RedisServer) -> std::collections::HashMap<String, String> {
    let reply: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER_NAME)
        .query(&mut sentinel.connection())
        .unwrap_or_default();
    reply
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
        .collect()
}

/// The master port `sentinel` reports (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
fn reported_master(sentinel: &RedisServer) -> Option<u16> {
    if !sentinel.is_running() {
        return None;
    }
    let reply: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(MASTER_NAME)
        .query(&mut sentinel.connection())
        .ok()?;
    reply?.1.parse().ok()
}

/// `role` of a data node's `INFO replication`.
pub fn role(node: &RedisServer) -> Option<String> {
    info_field(&node.info("replication"), "role")
}

impl std::fmt::Debug for SentinelGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelGroup")
            .field("data", &self.data)
            .field("sentinels", &self.sentinels)
            .field("tls", &self.tls)
            .finish()
    }
}
