//! A private Redis Cluster (N masters, R replicas each) for one test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{info_field, RedisServer};
use super::wait_until;

/// Bounded wait for the cluster to become (or become again) healthy.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounded wait for `redis-cli --cluster create`.
const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Arguments every cluster node is started with: cluster mode with its own config file, a 1 s node
/// timeout (failover tests finish quickly) and diskless replication without delay (replicas sync
/// at once, nothing touches the disk).
pub const CLUSTER_NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--repl-diskless-sync-delay",
    "0",
];

/// A local Redis Cluster. Every node is a [`RedisServer`] (own port, own temp
/// dir, killed on drop).
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    masters: usize,
    replicas_per_master: usize,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNodeInfo {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The master's node id for a replica.
    pub master_id: Option<String>,
    /// Inclusive slot ranges served by this node.
    pub slots: Vec<(u16, u16)>,
    pub connected: bool,
}

impl ClusterNodeInfo {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }
    pub fn is_replica(&self) -> bool {
        self.flags.iter().any(|f| f == "slave" || f == "replica")
    }
    /// Flagged `fail` or `fail?` (PFAIL).
    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }
    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|(a, b)| usize::from(*b) - usize::from(*a) + 1)
            .sum()
    }
    pub fn first_slot(&self) -> Option<u16> {
        self.slots.iter().map(|(a, _)| *a).min()
    }
}

/// Parses the output of `CLUSTER NODES`.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNodeInfo> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // "127.0.0.1:30001@40001[,hostname]"
            let addr = fields[1].split(['@', ',']).next()?;
            let port = addr.rsplit_once(':')?.1.parse().ok()?;
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('[')) // importing/migrating markers
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => {
                        let n = s.parse().ok()?;
                        Some((n, n))
                    }
                })
                .collect();
            Some(ClusterNodeInfo {
                id: fields[0].to_string(),
                port,
                flags: fields[2].split(',').map(str::to_string).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
                connected: fields[7] == "connected",
            })
        })
        .collect()
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes, creates the cluster
    /// with `redis-cli --cluster create`, and waits (bounded) until every node
    /// reports `cluster_state:ok` and knows every other node, and every replica
    /// has `master_link_status:up`. `masters` must be at least 3.
    pub fn start(masters: usize, replicas_per_master: usize) -> Self {
        Self::start_with(masters, replicas_per_master, &[])
    }

    /// Like [`start`](Self::start) with extra `redis-server` arguments for every node.
    pub fn start_with(masters: usize, replicas_per_master: usize, extra_args: &[&str]) -> Self {
        assert!(
            masters >= 3,
            "redis-cli --cluster create needs at least 3 masters"
        );
        let total = masters * (1 + replicas_per_master);
        let args: Vec<&str> = CLUSTER_NODE_ARGS
            .iter()
            .chain(extra_args.iter())
            .copied()
            .collect();
        let nodes: Vec<RedisServer> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..total)
                .map(|_| s.spawn(|| RedisServer::start_cluster_node(&args)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let cluster = RedisCluster {
            nodes,
            masters,
            replicas_per_master,
        };
        cluster.create();
        cluster.wait_for_state_ok();
        cluster.wait_for_roles();
        cluster
    }

    /// Waits until every node sees every replica as a replica: `--cluster create` assigns the
    /// roles with `CLUSTER REPLICATE`, which reaches the other nodes' views by gossip, so a node
    /// can report `cluster_state:ok` while it still lists a fresh replica as a slot-less master.
    fn wait_for_roles(&self) {
        let expected = self.masters * self.replicas_per_master;
        let mut last = String::new();
        let settled = wait_until(CLUSTER_READY_TIMEOUT, Duration::from_millis(50), || {
            for node in self.live_nodes() {
                let view =
                    parse_cluster_nodes(&node.query::<String>(redis::cmd("CLUSTER").arg("NODES")));
                let replicas = view
                    .iter()
                    .filter(|n| n.is_replica() && !n.is_failing())
                    .count();
                if replicas != expected {
                    last = format!(
                        "node {} sees {replicas} of {expected} replicas",
                        node.port()
                    );
                    return false;
                }
            }
            true
        });
        assert!(settled, "Redis Cluster roles did not settle: {last}");
    }

    fn create(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(node.addr());
        }
        cmd.arg("--cluster-replicas")
            .arg(self.replicas_per_master.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run redis-cli --cluster create");
        let finished = wait_until(CLUSTER_CREATE_TIMEOUT, Duration::from_millis(20), || {
            !matches!(child.try_wait(), Ok(None))
        });
        if !finished {
            let _ = child.kill();
        }
        let out = child
            .wait_with_output()
            .expect("wait for redis-cli --cluster create");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            finished && out.status.success() && !text.contains("[ERR]"),
            "redis-cli --cluster create failed (finished in time: {finished}, {}):\n{text}",
            out.status
        );
    }

    /// All nodes, including killed ones (see [`RedisServer::is_running`]).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// Nodes whose process is alive.
    pub fn live_nodes(&self) -> Vec<&RedisServer> {
        self.nodes.iter().filter(|n| n.is_running()).collect()
    }

    /// `redis://127.0.0.1:PORT` of every live node (seed list for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.live_nodes().iter().map(|n| n.url()).collect()
    }

    /// A cluster client seeded with every live node.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls()).expect("cluster client")
    }

    /// `CLUSTER NODES` as seen by the first live node.
    pub fn cluster_nodes(&self) -> Vec<ClusterNodeInfo> {
        let node = self
            .live_nodes()
            .into_iter()
            .next()
            .expect("no live cluster node");
        parse_cluster_nodes(&node.query::<String>(redis::cmd("CLUSTER").arg("NODES")))
    }

    /// Ports of the current masters that serve slots and are not failing,
    /// ordered by their first slot (index 0 serves slot 0 while healthy).
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<ClusterNodeInfo> = self
            .cluster_nodes()
            .into_iter()
            .filter(|n| n.is_master() && !n.is_failing() && !n.slots.is_empty())
            .collect();
        masters.sort_by_key(|n| n.first_slot());
        masters.into_iter().map(|n| n.port).collect()
    }

    /// Ports of the current live, non-failing replicas.
    pub fn replicas(&self) -> Vec<u16> {
        let mut replicas: Vec<u16> = self
            .cluster_nodes()
            .into_iter()
            .filter(|n| n.is_replica() && !n.is_failing())
            .map(|n| n.port)
            .collect();
        replicas.sort_unstable();
        replicas
    }

    /// SIGKILLs the node on `port` (it stays in [`nodes`](Self::nodes), dead).
    pub fn kill_node(&self, port: u16) {
        self.node(port).kill();
    }

    /// SIGKILLs `masters()[index]` and returns its port. Call
    /// [`wait_for_state_ok`](Self::wait_for_state_ok) to wait for the failover.
    pub fn kill_master(&self, index: usize) -> u16 {
        let masters = self.masters();
        let port = *masters
            .get(index)
            .unwrap_or_else(|| panic!("no master #{index}; masters: {masters:?}"));
        self.kill_node(port);
        port
    }

    /// Waits (bounded by 30 s) until every live replica has applied everything
    /// its master has written (`slave_repl_offset == master_repl_offset`), so a
    /// failover loses nothing that was written before this call.
    pub fn wait_for_replication(&self) {
        let mut last = String::new();
        let ok = wait_until(CLUSTER_READY_TIMEOUT, Duration::from_millis(10), || {
            for node in self.live_nodes() {
                let repl = node.info("replication");
                if info_field(&repl, "role").as_deref() != Some("slave") {
                    continue;
                }
                let master_port: Option<u16> =
                    info_field(&repl, "master_port").and_then(|p| p.parse().ok());
                let replica_offset = info_field(&repl, "slave_repl_offset");
                let Some(master) = master_port.map(|p| self.node(p)) else {
                    last = format!("replica {}: no master_port", node.port());
                    return false;
                };
                let master_offset = master.info_field("replication", "master_repl_offset");
                if replica_offset.is_none() || replica_offset != master_offset {
                    last = format!(
                        "replica {} at {replica_offset:?}, master {} at {master_offset:?}",
                        node.port(),
                        master.port()
                    );
                    return false;
                }
            }
            true
        });
        assert!(
            ok,
            "replication did not catch up within {CLUSTER_READY_TIMEOUT:?}: {last}"
        );
    }

    /// Waits (bounded by 30 s, panics with a diagnostic otherwise) until the
    /// cluster is healthy: see [`check_state`](Self::check_state).
    pub fn wait_for_state_ok(&self) {
        self.wait_for_state_ok_within(CLUSTER_READY_TIMEOUT);
    }

    /// Like [`wait_for_state_ok`](Self::wait_for_state_ok) with a custom bound.
    pub fn wait_for_state_ok_within(&self, timeout: Duration) {
        let start = Instant::now();
        let mut last = Err(String::from("not checked"));
        let ok = wait_until(timeout, Duration::from_millis(50), || {
            last = self.check_state();
            last.is_ok()
        });
        if !ok {
            let views: String = self
                .live_nodes()
                .iter()
                .map(|n| {
                    let nodes = redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query::<String>(&mut n.connection())
                        .unwrap_or_else(|e| format!("<error {e}>"));
                    format!("--- node {} ---\n{nodes}", n.port())
                })
                .collect();
            panic!(
                "Redis Cluster not healthy after {:?}: {}\n{views}",
                start.elapsed(),
                last.unwrap_err()
            );
        }
    }

    /// `Ok(())` when, on every live node: `cluster_state:ok`, every node is
    /// known, every slot-serving master is alive and not flagged fail/pfail,
    /// there are as many slot-serving masters as requested, and (for a replica)
    /// `master_link_status:up`. Otherwise the first reason it is not.
    pub fn check_state(&self) -> Result<(), String> {
        let live = self.live_nodes();
        let live_ports: Vec<u16> = live.iter().map(|n| n.port()).collect();
        for node in &live {
            let port = node.port();
            let mut conn = node
                .client()
                .get_connection_with_timeout(Duration::from_millis(500))
                .map_err(|e| format!("node {port}: connect: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_millis(500)))
                .map_err(|e| e.to_string())?;
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut conn)
                .map_err(|e| format!("node {port}: CLUSTER INFO: {e}"))?;
            let state = info_field(&info, "cluster_state");
            if state.as_deref() != Some("ok") {
                return Err(format!("node {port}: cluster_state {state:?}"));
            }
            let known = info_field(&info, "cluster_known_nodes").and_then(|v| v.parse().ok());
            if known != Some(self.nodes.len()) {
                return Err(format!(
                    "node {port}: knows {known:?} of {} nodes",
                    self.nodes.len()
                ));
            }
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut conn)
                .map_err(|e| format!("node {port}: CLUSTER NODES: {e}"))?;
            let view = parse_cluster_nodes(&text);
            let serving: Vec<&ClusterNodeInfo> =
                view.iter().filter(|n| !n.slots.is_empty()).collect();
            if let Some(bad) = serving
                .iter()
                .find(|n| n.is_failing() || !live_ports.contains(&n.port))
            {
                return Err(format!(
                    "node {port}: slots still served by dead/failing node {} ({:?})",
                    bad.port, bad.flags
                ));
            }
            if serving.len() != self.masters {
                return Err(format!(
                    "node {port}: {} slot-serving masters, expected {}",
                    serving.len(),
                    self.masters
                ));
            }
            let repl: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut conn)
                .map_err(|e| format!("node {port}: INFO replication: {e}"))?;
            if info_field(&repl, "role").as_deref() == Some("slave") {
                let link = info_field(&repl, "master_link_status");
                if link.as_deref() != Some("up") {
                    return Err(format!("replica {port}: master_link_status {link:?}"));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("masters", &self.masters)
            .field("replicas_per_master", &self.replicas_per_master)
            .field("nodes", &self.nodes)
            .finish()
    }
}
