//! Tests of the test harness itself (`tests/support`).

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::{
    free_cluster_port, free_port, parse_command_calls, port_is_free, shared_redis_url,
    unique_prefix, RedisCluster, RedisServer, CLUSTER_BUS_OFFSET,
};

fn process_exists(pid: u32) -> bool {
    // A reaped process no longer has a /proc entry.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn start_answers_and_drop_kills_and_frees_port() {
    let server = RedisServer::start();
    let port = server.port();
    let pid = server.pid();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert!(server.is_running());
    assert!(process_exists(pid));

    let mut conn = server.client().get_connection().unwrap();
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    // Defaults: no persistence, private dir.
    assert_eq!(
        server.cli(&["config", "get", "appendonly"]).trim(),
        "appendonly\nno"
    );
    assert_eq!(server.cli(&["config", "get", "save"]).trim(), "save");
    let dir = server.cli(&["config", "get", "dir"]);
    assert!(dir.contains(&*server.dir().to_string_lossy()), "dir: {dir}");
    drop(conn);

    drop(server);
    assert!(!process_exists(pid), "redis-server {pid} still exists");
    assert!(port_is_free(port), "port {port} not freed after drop");
}

#[test]
fn start_with_passes_arguments() {
    let server = RedisServer::start_with(&["--maxmemory", "2mb", "--appendonly", "yes"]);
    let maxmemory: Vec<String> = server.query(redis::cmd("CONFIG").arg("GET").arg("maxmemory"));
    assert_eq!(maxmemory, vec!["maxmemory", "2097152"]);
    assert_eq!(
        server.info_field("persistence", "aof_enabled").as_deref(),
        Some("1")
    );
    assert_eq!(server.cli(&["ping"]).trim(), "PONG");
}

#[test]
fn bad_arguments_panic_with_log_tail() {
    let result = std::panic::catch_unwind(|| RedisServer::start_with(&["--no-such-option", "1"]));
    let err = result.expect_err("start with a bogus option must panic");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("exited during start-up"), "message: {msg}");
    assert!(msg.contains("no-such-option"), "message: {msg}");
}

#[test]
fn kill_stops_the_server() {
    let server = RedisServer::start();
    let pid = server.pid();
    server.kill();
    assert!(!server.is_running());
    assert!(!process_exists(pid));
    assert!(server
        .client()
        .get_connection_with_timeout(Duration::from_millis(200))
        .is_err());
    server.kill(); // idempotent
}

#[test]
fn pause_makes_requests_time_out_and_resume_recovers() {
    let server = RedisServer::start();
    let conn = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut conn = conn;
    let _: () = conn.set("k", "v").unwrap();

    server.pause();
    let started = Instant::now();
    let res: redis::RedisResult<Option<String>> = conn.get("k");
    assert!(res.is_err(), "GET answered while paused: {res:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(server.is_running(), "a paused server is still alive");

    server.resume();
    // The old connection has an unanswered request in flight; use a new one.
    let mut fresh = server
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let v: Option<String> = fresh.get("k").unwrap();
    assert_eq!(v.as_deref(), Some("v"));
}

#[test]
fn drop_kills_a_paused_server() {
    let server = RedisServer::start();
    let pid = server.pid();
    server.pause();
    drop(server);
    assert!(!process_exists(pid));
}

#[test]
fn restart_keeps_port_and_url() {
    let server = RedisServer::start();
    let url = server.url();
    let old_pid = server.pid();
    let mut conn = server.client().get_connection().unwrap();
    let _: () = conn.set("before", "1").unwrap();
    // Leave a client connection open so the port has live sockets when killed.

    server.restart();
    assert_eq!(server.url(), url);
    assert_ne!(server.pid(), old_pid);
    assert!(!process_exists(old_pid));

    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    // No persistence by default: a restart starts empty.
    let v: Option<String> = conn.get("before").unwrap();
    assert_eq!(v, None);

    server.restart(); // twice in a row also works
    assert_eq!(server.cli(&["ping"]).trim(), "PONG");
}

#[test]
fn command_calls_counts_commands() {
    let server = RedisServer::start();
    let mut conn = server.client().get_connection().unwrap();
    let _: () = conn.set("a", "1").unwrap();
    server.reset_stats();
    assert_eq!(server.command_calls("get"), 0);

    let _: Option<String> = conn.get("a").unwrap();
    assert_eq!(server.command_calls("get"), 1);
    assert_eq!(server.command_calls("GET"), 1, "case-insensitive");
    assert_eq!(server.command_calls("set"), 0);

    let _: Option<String> = conn.get("a").unwrap();
    let _: Option<String> = conn.get("missing").unwrap();
    let _: () = conn.set("b", "2").unwrap();
    assert_eq!(server.command_calls("get"), 3);
    assert_eq!(server.command_calls("set"), 1);
    assert!(server.all_command_calls().contains(&("get".to_string(), 3)));

    server.reset_stats();
    assert_eq!(server.command_calls("get"), 0);
}

#[test]
fn parse_command_calls_handles_subcommands_and_absence() {
    let stats = "# Commandstats\r\n\
        cmdstat_get:calls=12,usec=30,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_client|setname:calls=3,usec=1,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_getex:calls=7,usec=1,usec_per_call=0.1,rejected_calls=0,failed_calls=0\r\n";
    assert_eq!(parse_command_calls(stats, "get"), 12);
    assert_eq!(parse_command_calls(stats, "GETEX"), 7);
    assert_eq!(parse_command_calls(stats, "client|setname"), 3);
    assert_eq!(parse_command_calls(stats, "set"), 0);
}

#[test]
fn free_ports_are_distinct_and_cluster_ports_have_free_bus() {
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (free_port(), free_cluster_port())))
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let (p, c) = h.join().unwrap();
        assert!(c < 55536, "cluster port {c} too high");
        all.extend([p, c, c + CLUSTER_BUS_OFFSET]);
    }
    let mut dedup = all.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        all.len(),
        "duplicate ports handed out: {all:?}"
    );
}

#[test]
fn parallel_servers_get_distinct_ports() {
    let servers: Vec<RedisServer> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(RedisServer::start)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for s in &servers {
        assert_eq!(s.cli(&["ping"]).trim(), "PONG");
    }
}

#[test]
fn shared_helpers() {
    let a = unique_prefix("shared_helpers");
    let b = unique_prefix("shared_helpers");
    assert_ne!(a, b);
    assert!(a.starts_with("shared_helpers:"));
    assert!(a.contains(&std::process::id().to_string()));

    let url = shared_redis_url();
    assert!(url.starts_with("redis://"), "{url}");
    // The shared server must be up (scripts/test.sh starts one); touch only our own key.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| {
            panic!("shared Redis at {url} is not reachable ({e}); run scripts/test.sh")
        });
    let key = format!("{a}:probe");
    let _: () = conn.set_ex(&key, "x", 30).unwrap();
    let v: Option<String> = conn.get(&key).unwrap();
    assert_eq!(v.as_deref(), Some("x"));
    let _: () = conn.del(&key).unwrap();
}

#[test]
fn cluster_comes_up_serves_and_fails_over() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 1);
    let up_in = started.elapsed();
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.urls().len(), 6);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    assert_eq!(cluster.replicas().len(), 3);
    for node in cluster.nodes() {
        assert!(node.port() < 55536);
    }

    // Keys spread over all three masters (distinct slots).
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    {
        let mut conn = cluster.client().get_connection().unwrap();
        for k in &keys {
            let _: () = conn.set(k, k).unwrap();
        }
        for k in &keys {
            let v: String = conn.get(k).unwrap();
            assert_eq!(&v, k);
        }
    }
    let per_master: Vec<u64> = masters
        .iter()
        .map(|p| cluster.node(*p).query::<u64>(&redis::cmd("DBSIZE")))
        .collect();
    assert!(per_master.iter().all(|n| *n > 0), "{per_master:?}");

    // Failover: kill the master serving slot 0; its replica takes over.
    cluster.wait_for_replication();
    let killed_at = Instant::now();
    let killed = cluster.kill_master(0);
    assert!(!cluster.node(killed).is_running());
    cluster.wait_for_state_ok_within(Duration::from_secs(20));
    let failover_in = killed_at.elapsed();
    let masters_after = cluster.masters();
    assert_eq!(masters_after.len(), 3, "{masters_after:?}");
    assert!(!masters_after.contains(&killed));
    assert_eq!(cluster.urls().len(), 5);

    // The async cluster client (what the engine uses) sees every key again.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = cluster.client().get_async_connection().await.unwrap();
        for k in &keys {
            let v: Option<String> = redis::AsyncCommands::get(&mut conn, k).await.unwrap();
            assert_eq!(v.as_deref(), Some(k.as_str()), "key {k} after failover");
        }
        let _: () = redis::AsyncCommands::set(&mut conn, "after", "1")
            .await
            .unwrap();
    });
    eprintln!("cluster up in {up_in:?}, failover in {failover_in:?}");
}

/// `redis-cli --tls` against a TLS server: with the CA it answers, a client certificate is
/// demanded when `--tls-auth-clients yes`, and the harness keeps controlling it on the plain port.
#[test]
fn tls_server_speaks_tls_with_the_generated_certificates() {
    let tls = support::TlsFiles::generate();
    let cli = |server: &RedisServer, extra: &[&str]| {
        let port = server.tls_port().expect("tls port").to_string();
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port, "--tls", "--cacert"])
            .arg(&tls.ca_cert)
            .args(extra)
            .arg("PING")
            .output()
            .expect("run redis-cli");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let server = RedisServer::start_tls(&tls, &[]);
    assert!(server.tls_url().starts_with("rediss://127.0.0.1:"));
    assert_eq!(cli(&server, &[]).trim(), "PONG");
    let _: () = server.query(&redis::cmd("PING")); // plain control port

    let strict = RedisServer::start_tls(&tls, &["--tls-auth-clients", "yes"]);
    assert_ne!(cli(&strict, &[]).trim(), "PONG", "no client certificate");
    let client_cert = tls.client_cert.display().to_string();
    let client_key = tls.client_key.display().to_string();
    assert_eq!(
        cli(&strict, &["--cert", &client_cert, "--key", &client_key]).trim(),
        "PONG"
    );
}

#[test]
fn sentinel_group_forms_and_fails_over() {
    let group = support::SentinelGroup::start();
    let master = group.master_port();
    assert_eq!(
        support::sentinel::role(group.master()).as_deref(),
        Some("master")
    );
    assert_eq!(
        support::sentinel::role(group.replica()).as_deref(),
        Some("slave")
    );
    let _: () = group.master().query(redis::cmd("SET").arg("k").arg("v"));
    group.wait_for_replication();
    let killed = group.kill_master();
    assert_eq!(killed, master);
    let promoted = group.wait_for_failover(killed);
    assert_ne!(promoted, killed);
    let value: String = group.node(promoted).query(redis::cmd("GET").arg("k"));
    assert_eq!(value, "v");
}

#[test]
fn valkey_server_starts_when_available() {
    if !support::valkey::valkey_available("valkey_server_starts_when_available") {
        return;
    }
    let server = RedisServer::start_valkey(&[]);
    let info = server.info("server");
    assert!(
        support::info_field(&info, "server_name").as_deref() == Some("valkey"),
        "not a Valkey server: {info}"
    );
    let _: () = server.query(redis::cmd("SET").arg("k").arg("v"));
    let value: String = server.query(redis::cmd("GET").arg("k"));
    assert_eq!(value, "v");
}

#[test]
fn acl_user_from_the_readme_is_limited_to_its_namespace() {
    let server = RedisServer::start();
    let url = support::acl::create_limited_user(&server, "ns");
    let mut conn = redis::Client::open(url)
        .expect("url")
        .get_connection()
        .expect("limited user logs in");
    let _: () = redis::cmd("SET")
        .arg("ns:{k}")
        .arg("v")
        .query(&mut conn)
        .expect("own namespace");
    let denied = redis::cmd("SET")
        .arg("other:{k}")
        .arg("v")
        .query::<()>(&mut conn)
        .expect_err("other namespace");
    assert!(
        denied.to_string().to_uppercase().contains("NOPERM"),
        "{denied}"
    );
    let denied = redis::cmd("FLUSHALL")
        .query::<()>(&mut conn)
        .expect_err("not a command we use");
    assert!(
        denied.to_string().to_uppercase().contains("NOPERM"),
        "{denied}"
    );
}
