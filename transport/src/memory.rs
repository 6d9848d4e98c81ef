//! The in-process backend: one `tokio::sync::broadcast` channel per topic.
//!
//! `broadcast` is a bounded ring shared by all receivers of a topic: a
//! payload is stored once (as `Bytes`, a refcount) however many subscribers
//! there are, and a receiver that falls more than `capacity` messages behind
//! loses the oldest ones and is told how many (`Lagged`). That gives fan-out,
//! ordering, gap signalling and bounded memory without extra code.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::{Call, Delivery, Error, Subscription, Transport, local::LocalReader, validate_topic};

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
        let (shared, topic) = (Arc::downgrade(&self.shared), topic.to_owned());
        // Forget a topic once its last subscriber leaves, so topic state is
        // bounded by live subscriptions rather than by every name ever used.
        let leave = move || {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut topics = shared.topics.lock().unwrap_or_else(|e| e.into_inner());
            // Our own receiver is still alive while it leaves.
            if topics.get(&topic).is_some_and(|s| s.receiver_count() <= 1) {
                topics.remove(&topic);
            }
        };
        Ok(Subscription::new(LocalReader::new(
            receiver,
            Delivery::Message,
            leave,
        )))
    }
}

impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        let result = self.publish_now(topic, payload);
        Box::pin(std::future::ready(result))
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> Call<'a, Subscription> {
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
