//! Cross-process stampede protection: a distributed lock per entry, and "value landed" signals.
//!
//! The loader takes `SET <entry>:lock <token> NX PX <ttl>` and releases it with a compare-and-delete
//! script, so it never deletes another holder's lock. The others wait for the value: a pub/sub
//! message on `<namespace>:__landed` wakes them as soon as it is stored, with short polling as the
//! fallback (a missed message costs at most one poll interval). If the holder dies, its lock expires
//! after its TTL and a waiter takes over; after the policy's `lock_wait` a waiter calls the source
//! itself without storing (nginx `proxy_cache_lock` rule), so a stuck holder costs at most one wait.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{broadcast, watch};

use crate::{
    envelope::Timing,
    store::{Backend, Store},
    Policy,
};

/// How often a waiter re-checks the entry when no signal arrives.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A random token identifying one lock holder.
pub(crate) fn new_token() -> Vec<u8> {
    format!("{:032x}", rand::random::<u128>()).into_bytes()
}

/// Lock TTL: a few times the last known load time (when an older entry tells us), else the
/// policy's lock wait; never below 500 ms nor above the lock wait.
pub(crate) fn lock_ttl(policy: &Policy, hint: Option<&Timing>) -> Duration {
    let ceiling = policy.lock_wait.max(Duration::from_millis(500));
    match hint {
        Some(timing) if timing.delta_ms > 0 => {
            let expected = Duration::from_millis(u64::from(timing.delta_ms));
            (expected * 4 + Duration::from_millis(250)).clamp(Duration::from_millis(500), ceiling)
        }
        _ => ceiling,
    }
}

/// Process-local fan-out of "value landed" messages from one pub/sub subscription per cache.
pub(crate) struct LandedSignals {
    channel: String,
    /// The store to subscribe on; `None` when no other process shares it.
    store: Option<Backend>,
    tx: broadcast::Sender<Arc<str>>,
    started: AtomicBool,
    /// Dropped with the cache; the subscriber task sees the channel close and exits.
    shutdown: watch::Sender<()>,
}

impl LandedSignals {
    pub(crate) fn new(channel: String, store: Option<Backend>) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let (shutdown, _) = watch::channel(());
        LandedSignals {
            channel,
            store,
            tx,
            started: AtomicBool::new(false),
            shutdown,
        }
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Subscribes to landed keys, starting the pub/sub task on first use.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        let rx = self.tx.subscribe();
        if let Some(store) = &self.store {
            if !self.started.swap(true, Ordering::AcqRel) {
                tokio::spawn(run_subscriber(
                    store.clone(),
                    self.channel.clone(),
                    self.tx.clone(),
                    self.shutdown.subscribe(),
                ));
            }
        }
        rx
    }
}

/// Waits until `key` is announced on `rx` or `wait` passes.
pub(crate) async fn wait_for_landing(
    rx: &mut broadcast::Receiver<Arc<str>>,
    key: &str,
    wait: Duration,
) {
    let announced = async {
        loop {
            match rx.recv().await {
                Ok(landed) if &*landed == key => return,
                Ok(_) => continue,
                // Missed messages: re-check the entry now.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let _ = tokio::time::timeout(wait, announced).await;
}

async fn run_subscriber(
    store: Backend,
    channel: String,
    tx: broadcast::Sender<Arc<str>>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let session = async {
            let mut subscription = store.subscribe(&channel).await?;
            while let Some(message) = subscription.next().await {
                if let Ok(key) = String::from_utf8(message) {
                    let _ = tx.send(Arc::from(key));
                }
            }
            Ok::<(), crate::Error>(())
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            result = session => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "lock signal subscription failed; polling until it is back");
                }
            }
        }
        // Reconnect after a pause; waiters keep polling meanwhile.
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ttl_follows_the_last_load_time_within_bounds() {
        let policy = Policy::ttl(Duration::from_secs(60)).lock_wait(Duration::from_secs(5));
        let t = |delta_ms| Timing {
            created_ms: 0,
            fresh_until_ms: 0,
            stale_until_ms: 0,
            delta_ms,
        };
        assert_eq!(lock_ttl(&policy, None), Duration::from_secs(5));
        assert_eq!(
            lock_ttl(&policy, Some(&t(200))),
            Duration::from_millis(1050)
        );
        assert_eq!(lock_ttl(&policy, Some(&t(10))), Duration::from_millis(500));
        assert_eq!(lock_ttl(&policy, Some(&t(60_000))), Duration::from_secs(5));
    }

    #[test]
    fn tokens_are_unique() {
        assert_ne!(new_token(), new_token());
    }
}
