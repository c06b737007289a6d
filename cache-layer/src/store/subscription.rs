//! A pub/sub subscription to one channel, on a connection of its own.

use std::sync::Arc;

use bb8_redis::redis::{
    self,
    aio::{PubSubSink, PubSubStream},
};
use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::Error;

/// Messages published on one channel ([`Store::subscribe`](super::Store::subscribe)).
///
/// Delivery is at most once: messages sent while the subscription is down are lost, so callers
/// treat the end of a subscription as "anything may have changed".
pub struct Subscription {
    inner: Inner,
}

enum Inner {
    Redis {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Memory(broadcast::Receiver<Arc<[u8]>>),
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Redis { .. } => "redis",
            Inner::Memory(_) => "memory",
        };
        f.debug_struct("Subscription")
            .field("store", &kind)
            .finish()
    }
}

impl Subscription {
    pub(super) fn redis(pubsub: redis::aio::PubSub) -> Self {
        let (sink, stream) = pubsub.split();
        Subscription {
            inner: Inner::Redis { sink, stream },
        }
    }

    pub(super) fn memory(rx: broadcast::Receiver<Arc<[u8]>>) -> Self {
        Subscription {
            inner: Inner::Memory(rx),
        }
    }

    /// The next message's payload; `None` when the subscription ended (connection closed, or
    /// messages were dropped because this subscriber fell behind). Cancel-safe.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        match &mut self.inner {
            Inner::Redis { stream, .. } => stream
                .next()
                .await
                .map(|message| message.get_payload_bytes().to_vec()),
            Inner::Memory(rx) => rx.recv().await.ok().map(|bytes| bytes.to_vec()),
        }
    }

    /// Checks that the connection is alive (`PING` on the subscription's connection).
    pub async fn ping(&mut self) -> Result<(), Error> {
        match &mut self.inner {
            Inner::Redis { sink, .. } => {
                sink.ping::<redis::Value>().await?;
                Ok(())
            }
            Inner::Memory(_) => Ok(()),
        }
    }
}
