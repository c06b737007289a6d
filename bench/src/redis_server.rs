//! A private redis-server for the benchmark run (killed on drop).

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `redis-server` on a free loopback port, without persistence.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl PrivateRedis {
    /// Starts one if `redis-server` is on PATH and `REDIS_URL` is not set; `aof`: with
    /// `appendonly yes` + `appendfsync always` (every write fsynced before it is acknowledged).
    pub fn start(aof: bool) -> Option<Self> {
        if std::env::var("REDIS_URL").is_ok() {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = std::env::temp_dir().join(format!("cache-layer-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if aof { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = PrivateRedis {
            child,
            port,
            _dir: dir,
        };
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
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}
