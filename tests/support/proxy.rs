//! A TCP proxy in front of a Redis server that can silently freeze pub/sub connections.
//!
//! A real network can lose a connection without either end noticing (a NAT or load balancer
//! drops its state, a proxy hangs): the client's socket stays open, nothing arrives. Killing the
//! connection (`CLIENT KILL`) is not that fault: the client sees the close at once. This proxy
//! forwards bytes both ways; a connection whose client sent `SUBSCRIBE` is a pub/sub connection,
//! and while [`Proxy::freeze_pubsub`] is on, nothing is forwarded on those (in either direction)
//! and nothing is closed.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The proxy; it stops accepting when dropped (open connections end with their peers).
pub struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    pubsub_connections: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target` (`host:port`).
    /// Must be called inside a tokio runtime.
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let frozen = Arc::new(AtomicBool::new(false));
        let pubsub_connections = Arc::new(AtomicU64::new(0));
        let (frozen_task, pubsub_task) = (frozen.clone(), pubsub_connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                tokio::spawn(pipe(
                    client,
                    server,
                    frozen_task.clone(),
                    pubsub_task.clone(),
                ));
            }
        });
        Proxy {
            addr,
            frozen,
            pubsub_connections,
            accept,
        }
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops (or resumes) forwarding on pub/sub connections, without closing them.
    pub fn freeze_pubsub(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    /// How many connections have subscribed through the proxy so far.
    pub fn pubsub_connections(&self) -> u64 {
        self.pubsub_connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    frozen: Arc<AtomicBool>,
    pubsub_connections: Arc<AtomicU64>,
) {
    let is_pubsub = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = {
        let (is_pubsub, frozen) = (is_pubsub.clone(), frozen.clone());
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if !is_pubsub.load(Ordering::SeqCst)
                    && buf[..n]
                        .windows(9)
                        .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                {
                    is_pubsub.store(true, Ordering::SeqCst);
                    pubsub_connections.fetch_add(1, Ordering::SeqCst);
                }
                hold_while_frozen(&is_pubsub, &frozen).await;
                if server_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            hold_while_frozen(&is_pubsub, &frozen).await;
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn hold_while_frozen(is_pubsub: &AtomicBool, frozen: &AtomicBool) {
    while is_pubsub.load(Ordering::SeqCst) && frozen.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
