//! A TCP proxy in front of a Redis server that can silently freeze pub/sub connections, or hold
//! back one request on the connection that carries it.
//!
//! A real network can lose a connection without either end noticing (a NAT or load balancer
//! drops its state, a proxy hangs): the client's socket stays open, nothing arrives. Killing the
//! connection (`CLIENT KILL`) is not that fault: the client sees the close at once. This proxy
//! forwards bytes both ways; a connection whose client sent `SUBSCRIBE` is a pub/sub connection,
//! and while [`Proxy::freeze_pubsub`] is on, nothing is forwarded on those (in either direction)
//! and nothing is closed. [`Proxy::hold_next`] holds the next request containing a marker (and
//! whatever follows it on that connection) until [`Proxy::release`]: a request delayed on its way
//! while others, on other connections, overtake it.

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
    hold: Arc<Hold>,
    accept: tokio::task::JoinHandle<()>,
}

/// The state of [`Proxy::hold_next`].
#[derive(Default)]
struct Hold {
    /// The marker the next held request contains (empty: nothing armed).
    marker: std::sync::Mutex<Vec<u8>>,
    /// Reads held on the holding connection that contain the marker (the held request included).
    held_with_marker: AtomicU64,
    holding: AtomicBool,
    released: tokio::sync::Notify,
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
        let hold = Arc::new(Hold::default());
        let (frozen_task, pubsub_task) = (frozen.clone(), pubsub_connections.clone());
        let hold_task = hold.clone();
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
                    hold_task.clone(),
                ));
            }
        });
        Proxy {
            addr,
            frozen,
            pubsub_connections,
            hold,
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

    /// Holds the next request that contains `marker`, and everything after it on its
    /// connection, until [`release`](Self::release).
    pub fn hold_next(&self, marker: &[u8]) {
        self.hold.held_with_marker.store(0, Ordering::SeqCst);
        *self.hold.marker.lock().unwrap() = marker.to_vec();
    }

    /// Whether a request is being held.
    pub fn holding(&self) -> bool {
        self.hold.holding.load(Ordering::SeqCst)
    }

    /// Reads containing the marker held so far on the holding connection (the first is the
    /// held request; more means later requests queued behind it on the same connection).
    pub fn held_with_marker(&self) -> u64 {
        self.hold.held_with_marker.load(Ordering::SeqCst)
    }

    /// Forwards what is held, in order, and stops holding.
    pub fn release(&self) {
        self.hold.holding.store(false, Ordering::SeqCst);
        self.hold.released.notify_waiters();
    }
}

impl Hold {
    /// The marker, when `bytes` start a hold (disarming it).
    fn starts(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut marker = self.marker.lock().unwrap();
        if marker.is_empty() || !contains(bytes, &marker) {
            return None;
        }
        self.held_with_marker.store(1, Ordering::SeqCst);
        self.holding.store(true, Ordering::SeqCst);
        Some(std::mem::take(&mut *marker))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
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
    hold: Arc<Hold>,
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
                if let Some(marker) = hold.starts(&buf[..n]) {
                    // Keep reading (counting what queues behind it) until released.
                    let mut held = buf[..n].to_vec();
                    loop {
                        let released = hold.released.notified();
                        tokio::pin!(released);
                        released.as_mut().enable();
                        if !hold.holding.load(Ordering::SeqCst) {
                            break;
                        }
                        tokio::select! {
                            () = &mut released => break,
                            read = client_read.read(&mut buf) => match read {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if contains(&buf[..n], &marker) {
                                        hold.held_with_marker.fetch_add(1, Ordering::SeqCst);
                                    }
                                    held.extend_from_slice(&buf[..n]);
                                }
                            },
                        }
                    }
                    if server_write.write_all(&held).await.is_err() {
                        return;
                    }
                    continue;
                }
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
