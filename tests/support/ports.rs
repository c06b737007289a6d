//! Free TCP port selection.
//!
//! A port is found by binding `127.0.0.1:0` and dropping the listener. Ports
//! handed out are remembered for the life of the process so that tests running
//! as threads (`cargo test`) never get the same port twice. Between processes
//! (`cargo nextest`) a collision is still possible in the window between the
//! probe and `redis-server`'s own bind; the server start-up detects "Address
//! already in use" and retries with another port.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, MutexGuard};

/// A cluster node also listens on `port + CLUSTER_BUS_OFFSET` (the cluster bus).
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

fn handed_out() -> MutexGuard<'static, BTreeSet<u16>> {
    static PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn probe_ephemeral() -> Option<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    listener.local_addr().ok().map(|a| a.port())
}

/// Whether `127.0.0.1:port` can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A currently free port on 127.0.0.1 not handed out before in this process.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let Some(port) = probe_ephemeral() else {
            continue;
        };
        let mut taken = handed_out();
        if taken.contains(&port) {
            continue;
        }
        taken.insert(port);
        return port;
    }
    panic!("could not find a free TCP port on 127.0.0.1 after 1000 attempts");
}

/// A free port `P` for a cluster node: `P < 55536` and both `P` and
/// `P + 10000` (the cluster bus) are free and not handed out before.
pub fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let Some(port) = probe_ephemeral() else {
            continue;
        };
        if port > u16::MAX - CLUSTER_BUS_OFFSET {
            continue;
        }
        let bus = port + CLUSTER_BUS_OFFSET;
        let mut taken = handed_out();
        if taken.contains(&port) || taken.contains(&bus) || !port_is_free(bus) {
            continue;
        }
        taken.insert(port);
        taken.insert(bus);
        return port;
    }
    panic!("could not find a free cluster port pair (P, P+10000) on 127.0.0.1 after 1000 attempts");
}
