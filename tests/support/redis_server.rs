//! A private `redis-server` (or `valkey-server`, or `redis-server --sentinel`) process for one
//! test.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::ports::{free_cluster_port, free_port};
use super::tls::TlsFiles;
use super::{require_redis_server, STARTUP_TIMEOUT};

/// How many times a fresh port is tried when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 20;
/// How long `restart()` keeps retrying the same port (e.g. while it is in TIME_WAIT).
const RESTART_BIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeouts of the harness's own control connections.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll interval while waiting for a condition.
const POLL: Duration = Duration::from_millis(10);

/// A private `redis-server` listening on `127.0.0.1:port()`.
///
/// Started with `--bind 127.0.0.1 --save "" --appendonly no --dir <tempdir>`
/// (`--save`, `--appendonly` and `--dir` may be overridden through
/// [`RedisServer::start_with`]; `--port`, `--bind`, `--logfile` and
/// `--daemonize` are owned by the harness). The process is SIGKILLed and reaped
/// on drop. All methods take `&self`, so a server can be shared (e.g. in an `Arc`).
pub struct RedisServer {
    port: u16,
    /// The TLS port (`--tls-port`) of a server started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
    spec: Spec,
    child: Mutex<Option<Child>>,
    pid: AtomicU32,
    // Declared last: removed after the process is gone.
    dir: TempDir,
}

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `redis-server` on `PATH`.
    Redis,
    /// A `valkey-server` found by [`super::valkey::valkey_server`].
    Valkey,
}

impl Flavor {
    fn binary(self) -> PathBuf {
        match self {
            Flavor::Redis => PathBuf::from("redis-server"),
            Flavor::Valkey => super::valkey::valkey_server().unwrap_or_else(|| {
                panic!(
                    "no valkey-server binary: {}",
                    super::valkey::HOW_TO_GET_VALKEY
                )
            }),
        }
    }
}

/// What to run. The harness owns `--port`, `--bind`, `--logfile` and `--daemonize`.
#[derive(Clone)]
struct Spec {
    /// `redis-server`, or a `valkey-server` binary.
    binary: PathBuf,
    /// Contents of a config file passed as the first argument (written once, into the server's
    /// directory, so a Sentinel's own rewrites survive a restart).
    config: Option<String>,
    /// Arguments after the harness's own.
    args: Vec<String>,
    /// A Redis Cluster node (port `P < 55536`, `P + 10000` free).
    cluster_node: bool,
    /// Also listen for TLS on a second port with these certificates.
    tls: Option<TlsFiles>,
}

impl Spec {
    fn redis(args: &[&str]) -> Self {
        Spec {
            binary: PathBuf::from("redis-server"),
            config: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            cluster_node: false,
            tls: None,
        }
    }

    fn binary_name(&self) -> String {
        self.binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.binary.display().to_string())
    }
}

enum SpawnError {
    /// The port (or the cluster-bus port) was already taken.
    AddrInUse,
}

/// What a miss with a fill costs, as [`RedisServer::cache_command_calls`] counts it: the `GET` that
/// missed and the conditional fill (the load saw no key, so its condition is `SET NX PX`; no script).
pub const MISS_AND_FILL: [(&str, u64); 2] = [("get", 1), ("set", 1)];

impl RedisServer {
    /// Starts a server with the default arguments on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g.
    /// `&["--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_spec(Spec::redis(args))
    }

    /// Starts a server replicating `primary` (`--replicaof`, with extra `args`) and waits
    /// (bounded) until it acknowledges `primary`'s writes (see
    /// [`wait_for_link_to`](Self::wait_for_link_to)). Sets the primary's `repl-diskless-sync-delay` to 0 first (the default
    /// waits 5 s for more replicas before the initial sync).
    pub fn start_replica_of(primary: &RedisServer, args: &[&str]) -> Self {
        let _: () = primary.query(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("repl-diskless-sync-delay")
                .arg(0),
        );
        let port = primary.port().to_string();
        let mut all = vec!["--replicaof", "127.0.0.1", port.as_str()];
        all.extend_from_slice(args);
        let replica = Self::start_with(&all);
        replica.wait_for_link_to(primary);
        replica
    }

    /// Waits (bounded) until this replica's link to `primary` is up and a replica acknowledges
    /// `primary`'s writes: a probe write (`SET __harness:replica-probe`) followed by `WAIT 1 50`
    /// returns 1. (After a diskless initial sync the primary streams writes only once the
    /// replica's first `REPLCONF ACK` arrived, up to a second after the link is up.)
    pub fn wait_for_link_to(&self, primary: &RedisServer) {
        let mut last = String::new();
        let up = super::wait_until(STARTUP_TIMEOUT, POLL, || {
            let link = self.info_field("replication", "master_link_status");
            if link.as_deref() != Some("up") {
                last = format!("master_link_status {link:?}");
                return false;
            }
            let mut conn = primary.connection();
            let acked: redis::RedisResult<i64> = redis::pipe()
                .cmd("SET")
                .arg("__harness:replica-probe")
                .arg(1)
                .ignore()
                .cmd("WAIT")
                .arg(1)
                .arg(50)
                .query::<(i64,)>(&mut conn)
                .map(|(n,)| n);
            last = format!("link up, WAIT 1 50 after a write: {acked:?}");
            matches!(acked, Ok(n) if n >= 1)
        });
        assert!(
            up,
            "replica on port {} did not sync with port {} within {STARTUP_TIMEOUT:?}: {last}\n{}",
            self.port,
            primary.port(),
            self.log_tail(20)
        );
    }

    /// Starts a server whose port `P` satisfies the Redis Cluster constraints
    /// (`P < 55536`, `P + 10000` free). Used by [`super::RedisCluster`].
    pub fn start_cluster_node(args: &[&str]) -> Self {
        Self::start_cluster_node_of(Flavor::Redis, args)
    }

    /// [`start_cluster_node`](Self::start_cluster_node) for a Redis or a Valkey node.
    pub fn start_cluster_node_of(flavor: Flavor, args: &[&str]) -> Self {
        Self::start_spec(Spec {
            binary: flavor.binary(),
            cluster_node: true,
            ..Spec::redis(args)
        })
    }

    /// Starts a `valkey-server` (see [`super::valkey`]) with extra arguments. Panics when no
    /// Valkey binary is available: check [`super::valkey::valkey_available`] first.
    pub fn start_valkey(args: &[&str]) -> Self {
        Self::start_spec(Spec {
            binary: Flavor::Valkey.binary(),
            ..Spec::redis(args)
        })
    }

    /// Starts a server that also listens for TLS on [`tls_port`](Self::tls_port), with the
    /// certificates in `tls` (`--tls-cert-file`, `--tls-key-file`, `--tls-ca-cert-file`). Clients
    /// need no certificate unless `args` say `--tls-auth-clients yes`. The plain port stays open
    /// for the harness's own control connections.
    pub fn start_tls(tls: &TlsFiles, args: &[&str]) -> Self {
        Self::start_spec(Self::tls_spec(tls, args))
    }

    /// [`start_tls`](Self::start_tls) for a Redis Cluster node (see
    /// [`start_cluster_node`](Self::start_cluster_node)).
    pub fn start_tls_cluster_node(tls: &TlsFiles, args: &[&str]) -> Self {
        Self::start_spec(Spec {
            cluster_node: true,
            ..Self::tls_spec(tls, args)
        })
    }

    fn tls_spec(tls: &TlsFiles, args: &[&str]) -> Spec {
        let mut spec = Spec::redis(&[]);
        let has = |name: &str| args.iter().any(|a| a.eq_ignore_ascii_case(name));
        spec.args = vec![
            "--tls-cert-file".into(),
            tls.server_cert.display().to_string(),
            "--tls-key-file".into(),
            tls.server_key.display().to_string(),
            "--tls-ca-cert-file".into(),
            tls.ca_cert.display().to_string(),
        ];
        if !has("--tls-auth-clients") {
            spec.args.extend(["--tls-auth-clients".into(), "no".into()]);
        }
        spec.args.extend(args.iter().map(|s| s.to_string()));
        spec.tls = Some(tls.clone());
        spec
    }

    /// Starts `redis-server <config> --sentinel` with the given `sentinel.conf` contents (the
    /// file lives in the server's directory; Sentinel rewrites it as it learns the topology).
    /// With `tls`, the sentinel also listens for TLS and talks TLS to the data nodes.
    pub fn start_sentinel(config: &str, tls: Option<&TlsFiles>) -> Self {
        let mut spec = match tls {
            Some(tls) => Self::tls_spec(tls, &["--tls-replication", "yes"]),
            None => Spec::redis(&[]),
        };
        spec.args.push("--sentinel".into());
        spec.config = Some(config.to_owned());
        Self::start_spec(spec)
    }

    fn start_spec(spec: Spec) -> Self {
        if spec.binary == Path::new("redis-server") {
            require_redis_server();
        }
        for _ in 0..PORT_ATTEMPTS {
            let port = if spec.cluster_node {
                free_cluster_port()
            } else {
                free_port()
            };
            let server = RedisServer {
                port,
                tls_port: spec.tls.as_ref().map(|_| free_port()),
                spec: spec.clone(),
                child: Mutex::new(None),
                pid: AtomicU32::new(0),
                dir: tempfile::Builder::new()
                    .prefix("redis-harness-")
                    .tempdir()
                    .expect("create temp dir for redis-server"),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                // Someone else grabbed the port between our probe and the bind.
                Err(SpawnError::AddrInUse) => continue,
            }
        }
        panic!(
            "{}: no free port after {PORT_ATTEMPTS} attempts (args {:?})",
            spec.binary_name(),
            spec.args
        );
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port of a server started with [`start_tls`](Self::start_tls).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:TLS_PORT` of a server started with [`start_tls`](Self::start_tls)
    /// (the certificate is issued for `127.0.0.1` and `localhost`).
    pub fn tls_url(&self) -> String {
        let port = self
            .tls_port
            .unwrap_or_else(|| panic!("server on port {} was not started with TLS", self.port));
        format!("rediss://127.0.0.1:{port}")
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pid of the current (or, after `kill()`, the last) process.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// The server's working directory (`--dir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last `lines` lines of the server log (plus anything written to stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = tail_of_file(&self.log_path(), lines);
        let stderr = tail_of_file(&self.dir.path().join("stdio.log"), lines);
        if !stderr.trim().is_empty() {
            out.push_str("\n--- stdout/stderr ---\n");
            out.push_str(&stderr);
        }
        out
    }

    /// Whether the process is alive (a paused process counts as alive).
    pub fn is_running(&self) -> bool {
        match self.lock_child().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs the process and waits for it (no-op when already dead).
    pub fn kill(&self) {
        let mut guard = self.lock_child();
        if let Some(mut child) = guard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs the process and waits until the kernel reports it stopped.
    /// Connections are still accepted by the kernel but nothing is answered.
    pub fn pause(&self) {
        let pid = self.running_pid("pause");
        send_signal(pid, libc::SIGSTOP);
        let stopped = super::wait_until(STARTUP_TIMEOUT, Duration::from_millis(1), || {
            matches!(proc_state(pid), Some('T') | Some('t'))
        });
        assert!(stopped, "redis-server pid {pid} did not stop after SIGSTOP");
    }

    /// SIGCONTs a paused process and waits until it runs again.
    pub fn resume(&self) {
        let pid = self.running_pid("resume");
        send_signal(pid, libc::SIGCONT);
        let resumed = super::wait_until(STARTUP_TIMEOUT, Duration::from_millis(1), || {
            !matches!(proc_state(pid), Some('T') | Some('t'))
        });
        assert!(
            resumed,
            "redis-server pid {pid} did not resume after SIGCONT"
        );
    }

    /// Kills the server and starts it again on the same port, with the same
    /// arguments and directory (so a cluster node keeps its `nodes.conf`).
    /// Data is gone unless persistence was enabled through the arguments.
    pub fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + RESTART_BIND_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(SpawnError::AddrInUse) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(SpawnError::AddrInUse) => panic!(
                    "redis-server restart: port {} still in use after {:?}\n{}",
                    self.port,
                    RESTART_BIND_TIMEOUT,
                    self.log_tail(30)
                ),
            }
        }
    }

    /// A `redis::Client` for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
    }

    /// A sync connection with 2 s connect/read/write timeouts.
    pub fn connection(&self) -> redis::Connection {
        self.try_connection(CONTROL_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis-server on port {}: {e}", self.port))
    }

    fn try_connection(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        let conn = self.client().get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        Ok(conn)
    }

    /// Runs a command on a fresh control connection and panics on error.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("redis-server on port {}: {e}", self.port))
    }

    /// `redis-cli -h 127.0.0.1 -p PORT <args>`; returns stdout (panics if redis-cli fails).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (run scripts/test.sh to install it)");
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> String {
        self.query(redis::cmd("INFO").arg(section))
    }

    /// A field of `INFO <section>`, e.g. `info_field("replication", "role")`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        info_field(&self.info(section), field)
    }

    /// Number of calls of `cmd` (case-insensitive, e.g. `"get"`, `"evalsha"`,
    /// `"client|setname"`) since start or the last [`reset_stats`](Self::reset_stats),
    /// from `INFO commandstats`.
    pub fn command_calls(&self, cmd: &str) -> u64 {
        parse_command_calls(&self.info("commandstats"), cmd)
    }

    /// All `INFO commandstats` call counts as `(command, calls)`.
    pub fn all_command_calls(&self) -> Vec<(String, u64)> {
        self.info("commandstats")
            .lines()
            .filter_map(|line| {
                let rest = line.trim().strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                Some((name.to_string(), stat_value(stats, "calls")?))
            })
            .collect()
    }

    /// Commands clients sent since the last reset, sorted, without the harness's own `INFO` /
    /// `CONFIG RESETSTAT` (what a cache under test sent).
    pub fn cache_command_calls(&self) -> Vec<(String, u64)> {
        let mut calls: Vec<_> = self
            .all_command_calls()
            .into_iter()
            .filter(|(cmd, _)| cmd != "info" && cmd != "config|resetstat")
            .collect();
        calls.sort();
        calls
    }

    /// A cache builder for this server, in `namespace`.
    pub fn cache_builder(&self, namespace: impl Into<String>) -> cache_layer::CacheBuilder {
        cache_layer::Cache::builder()
            .redis(self.url())
            .namespace(namespace)
    }

    /// Asserts that the cache's commands since the last [`reset_stats`](Self::reset_stats)
    /// ([`cache_command_calls`](Self::cache_command_calls)) are exactly `expected`, in order.
    #[track_caller]
    pub fn assert_cache_commands(&self, expected: &[(&str, u64)], what: &str) {
        let expected: Vec<(String, u64)> = expected
            .iter()
            .map(|&(command, calls)| (command.to_string(), calls))
            .collect();
        assert_eq!(self.cache_command_calls(), expected, "{what}");
    }

    /// `CONFIG RESETSTAT` (zeroes the command statistics).
    pub fn reset_stats(&self) {
        let _: () = self.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running_pid(&self, what: &str) -> i32 {
        let guard = self.lock_child();
        let child = guard
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: redis-server on port {} is not running", self.port));
        child.id() as i32
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.conf")
    }

    fn command_line(&self) -> Vec<String> {
        let has = |name: &str| self.spec.args.iter().any(|a| a.eq_ignore_ascii_case(name));
        let mut argv: Vec<String> = Vec::new();
        if self.spec.config.is_some() {
            argv.push(self.config_path().display().to_string());
        }
        argv.extend([
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            self.log_path().display().to_string(),
        ]);
        if let Some(tls_port) = self.tls_port {
            argv.extend(["--tls-port".into(), tls_port.to_string()]);
            if self.spec.cluster_node {
                // With `tls-cluster yes` the bus would default to TLS port + 10000; keep it at
                // the plain port's (reserved with it, and where `CLUSTER MEET ip port` looks).
                let bus = self.port + super::ports::CLUSTER_BUS_OFFSET;
                argv.extend(["--cluster-port".into(), bus.to_string()]);
            }
        }
        if !has("--dir") {
            argv.extend(["--dir".into(), self.dir.path().display().to_string()]);
        }
        if !has("--save") {
            argv.extend(["--save".into(), String::new()]);
        }
        if !has("--appendonly") {
            argv.extend(["--appendonly".into(), "no".into()]);
        }
        argv.extend(self.spec.args.iter().cloned());
        argv
    }

    /// Spawns the process and waits until it answers on `port` (bounded).
    fn spawn_and_wait(&self) -> Result<(), SpawnError> {
        let log_path = self.log_path();
        let log_offset = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        if let Some(config) = &self.spec.config {
            if !self.config_path().exists() {
                std::fs::write(self.config_path(), config).expect("write server config file");
            }
        }
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdio.log"))
            .expect("open stdio log");
        let mut command = Command::new(&self.spec.binary);
        command
            .args(self.command_line())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdio.try_clone().expect("dup stdio log"))
            .stderr(stdio);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{}` not found. Run `scripts/test.sh` (it installs redis-server and fetches valkey-server).",
                self.spec.binary.display()
            ),
            Err(e) => panic!("spawn {}: {e}", self.spec.binary.display()),
        };
        let pid = child.id();
        self.pid.store(pid, Ordering::SeqCst);
        *self.lock_child() = Some(child);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let exited = {
                let mut guard = self.lock_child();
                match guard.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(status))) => {
                        guard.take();
                        Some(status.to_string())
                    }
                    Some(Ok(None)) => None,
                    Some(Err(e)) => Some(format!("wait error: {e}")),
                    None => Some("killed during start-up".to_string()),
                }
            };
            if let Some(status) = exited {
                let new_log = read_from(&log_path, log_offset);
                if new_log.contains("Address already in use") {
                    return Err(SpawnError::AddrInUse);
                }
                panic!(
                    "{} (port {}, args {:?}) exited during start-up ({status}). Log tail:\n{}",
                    self.spec.binary_name(),
                    self.port,
                    self.spec.args,
                    self.log_tail(30)
                );
            }
            if self.answers_as(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} (port {}, pid {pid}, args {:?}) did not answer PING within {:?}. Log tail:\n{}",
                    self.spec.binary_name(),
                    self.port,
                    self.spec.args,
                    STARTUP_TIMEOUT,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// PING succeeds *and* the server on the port is our process (not another
    /// test's server that won the race for the port).
    fn answers_as(&self, pid: u32) -> bool {
        let Ok(mut conn) = self.try_connection(Duration::from_millis(500)) else {
            return false;
        };
        if redis::cmd("PING").query::<String>(&mut conn).is_err() {
            return false;
        }
        let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn) else {
            return false;
        };
        info_field(&info, "process_id").and_then(|p| p.parse::<u32>().ok()) == Some(pid)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("binary", &self.spec.binary)
            .field("pid", &self.pid())
            .field("tls_port", &self.tls_port)
            .field("cluster_node", &self.spec.cluster_node)
            .field("args", &self.spec.args)
            .finish()
    }
}

/// A `field:value` line of an INFO reply.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.trim().split_once(':')?;
        (k == field).then(|| v.trim().to_string())
    })
}

/// Parses `cmdstat_<cmd>:calls=N,...` out of `INFO commandstats`; 0 when absent.
pub fn parse_command_calls(commandstats: &str, cmd: &str) -> u64 {
    let key = format!("cmdstat_{}", cmd.to_ascii_lowercase());
    commandstats
        .lines()
        .find_map(|line| {
            let (name, stats) = line.trim().split_once(':')?;
            if name != key {
                return None;
            }
            stat_value(stats, "calls")
        })
        .unwrap_or(0)
}

fn stat_value(stats: &str, name: &str) -> Option<u64> {
    stats.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn send_signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may contain spaces, so split after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
    }
    s
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
