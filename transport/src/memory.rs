//! The in-process backend: one `tokio::sync::broadcast` channel per topic.
//!
//! `broadcast` is a bounded ring shared by all receivers of a topic: a
//! payload is stored once (as `Bytes`, a refcount) however many subscribers
//! there are, and a receiver that falls more than `capacity` messages behind
//! loses the oldest ones and is told how many (`Lagged`). That gives fan-out,
//! ordering, gap signalling and bounded memory without extra code.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{BoxFuture, Delivery, Error, Gap, GapCause, Subscription, Transport, validate_topic};

/// Settings of [`MemoryTransport`].
#[derive(Debug, Clone, Copy)]
pub struct MemoryConfig {
    /// Messages buffered per topic for the slowest subscriber; beyond it the
    /// subscriber sees a gap.
    pub capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { capacity: 1024 }
    }
}

/// In-process pub/sub: a cheap `Clone` handle to shared topic state.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    // A std mutex, not tokio's: it is held only for a map lookup or insert,
    // never across an `.await`, and this is cheaper on the publish path.
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    capacity: usize,
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new(MemoryConfig::default())
    }
}

impl MemoryTransport {
    /// Creates an empty transport.
    ///
    /// # Panics
    /// If `config.capacity` is zero.
    pub fn new(config: MemoryConfig) -> Self {
        assert!(
            config.capacity > 0,
            "memory transport capacity must be positive"
        );
        Self {
            shared: Arc::new(Shared {
                topics: Mutex::new(HashMap::new()),
                capacity: config.capacity,
            }),
        }
    }

    /// Number of topics that currently have subscribers.
    pub fn topic_count(&self) -> usize {
        self.shared
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn publish_now(&self, topic: &str, payload: Bytes) -> Result<(), Error> {
        validate_topic(topic)?;
        // Take the sender (a refcount) and release the map before sending:
        // waking a thousand subscribers must not block other topics'
        // publishes, subscribes and unsubscribes.
        let sender = self
            .shared
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned();
        if let Some(sender) = sender {
            // An error only means every receiver went away meanwhile.
            let _ = sender.send(payload);
        }
        Ok(())
    }

    fn subscribe_now(&self, topic: &str) -> Result<Subscription, Error> {
        validate_topic(topic)?;
        let mut topics = self.shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = match topics.get(topic) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(self.shared.capacity);
                topics.insert(topic.to_owned(), sender);
                receiver
            }
        };
        Ok(Subscription::new(MemorySubscription {
            inner: BroadcastStream::new(receiver),
            topic: topic.to_owned(),
            shared: Arc::downgrade(&self.shared),
        }))
    }
}

impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), Error>> {
        let result = self.publish_now(topic, payload);
        Box::pin(std::future::ready(result))
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Subscription, Error>> {
        let result = self.subscribe_now(topic);
        Box::pin(std::future::ready(result))
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        let topics = self.shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .get(topic)
            .map_or(0, broadcast::Sender::receiver_count)
    }
}

struct MemorySubscription {
    inner: BroadcastStream<Bytes>,
    topic: String,
    shared: Weak<Shared>,
}

impl Stream for MemorySubscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(payload) => Delivery::Message(payload),
                Err(BroadcastStreamRecvError::Lagged(n)) => Delivery::Gap(Gap {
                    missed: Some(n),
                    cause: GapCause::Lagged,
                }),
            })
        })
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        // Forget a topic once its last subscriber leaves, so topic state is
        // bounded by live subscriptions rather than by every name ever used.
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = topics.get(&self.topic) {
            // Our own receiver is still alive while `drop` runs.
            if sender.receiver_count() <= 1 {
                topics.remove(&self.topic);
            }
        }
    }
}
