//! Private redis-servers for the benchmark run: one standalone server, and a 3-master cluster for
//! the cluster section (each a process on a free loopback port with its own temp dir, killed on
//! drop).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `redis-server` on a free loopback port, without persistence.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// A free loopback port (bound and released; the server binds it right after).
fn free_port() -> Option<u16> {
    Some(
        TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

impl PrivateRedis {
    /// Starts one if `redis-server` is on PATH and `REDIS_URL` is not set; `aof`: with
    /// `appendonly yes` + `appendfsync always` (every write fsynced before it is acknowledged).
    pub fn start(aof: bool) -> Option<Self> {
        if std::env::var("REDIS_URL").is_ok() {
            return None;
        }
        let appendonly = if aof { "yes" } else { "no" };
        Self::spawn(
            "server",
            &["--appendonly", appendonly, "--appendfsync", "always"],
        )
    }

    /// Starts a `redis-server` with `args` (after port, bind and `--save ""`), waits until it
    /// answers `PING` (at most 5 s).
    fn spawn(role: &str, args: &[&str]) -> Option<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "cache-layer-bench-{}-{role}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = PrivateRedis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if server
                .command(&["PING"])
                .is_some_and(|out| out.trim() == "PONG")
            {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against the server.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        String::from_utf8(output.stdout).ok()
    }

    /// Resets `INFO commandstats`.
    pub fn reset_stats(&self) {
        let _ = self.command(&["CONFIG", "RESETSTAT"]);
    }

    /// CPU time the server process has used so far (`used_cpu_user` + `used_cpu_sys`), in
    /// seconds; `None` if it cannot be read.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let info = self.command(&["INFO", "cpu"])?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Some(field("used_cpu_user")? + field("used_cpu_sys")?)
    }

    /// Calls per command since the last reset (without INFO/CONFIG themselves).
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        let info = self.command(&["INFO", "commandstats"]).unwrap_or_default();
        let mut calls: Vec<(String, u64)> = info
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .filter(|(name, _)| name != "info" && name != "config|resetstat")
            .collect();
        calls.sort();
        calls
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local Redis Cluster of three masters (no replicas), each a [`PrivateRedis`].
pub struct PrivateCluster {
    nodes: Vec<PrivateRedis>,
}

/// Bounded waits while the cluster forms.
const CLUSTER_READY: Duration = Duration::from_secs(30);

impl PrivateCluster {
    /// Starts three cluster-mode nodes, joins them with `redis-cli --cluster create` and waits
    /// (at most 30 s) until every node reports `cluster_state:ok`. `Err` says what failed.
    pub fn start() -> Result<Self, String> {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--appendonly",
            "no",
        ];
        let nodes: Vec<PrivateRedis> = (0..3)
            .map(|_| PrivateRedis::spawn("cluster", &args))
            .collect::<Option<_>>()
            .ok_or("cannot start a cluster-mode redis-server")?;
        let cluster = PrivateCluster { nodes };
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let mut child = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot run redis-cli --cluster create: {err}"))?;
        let deadline = Instant::now() + CLUSTER_READY;
        let created = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
            }
        };
        if !created {
            return Err("redis-cli --cluster create failed".into());
        }
        while Instant::now() < deadline {
            let ok = cluster.nodes.iter().all(|node| {
                node.command(&["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(cluster);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the cluster did not reach cluster_state:ok within 30 s".into())
    }

    /// The seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateRedis::url).collect()
    }

    /// Resets `INFO commandstats` on every node.
    pub fn reset_stats(&self) {
        self.nodes.iter().for_each(PrivateRedis::reset_stats);
    }

    /// Calls per command since the last reset, summed over the nodes (without `CLUSTER`, which
    /// clients send to learn the slot map).
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        let mut total: std::collections::BTreeMap<String, u64> = Default::default();
        for node in &self.nodes {
            for (command, calls) in node.command_calls() {
                if !command.starts_with("cluster") {
                    *total.entry(command).or_default() += calls;
                }
            }
        }
        total.into_iter().collect()
    }
}
