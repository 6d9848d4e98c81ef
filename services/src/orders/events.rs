//! Order events on the transport (`orders.<subject>`) and their local
//! fan-out to `StreamOrderEvents` clients.
//!
//! Like the rate hub, the process holds at most one transport subscription
//! per subject topic however many streams of that subject are open; it is
//! dropped with the last stream.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Weak},
};

use bytes::Bytes;
use fxcast_proto::v1::{Order, OrderEvent};
use fxcast_transport::{Delivery, Transport};
use prost::Message;
use tokio::{sync::broadcast, task::AbortHandle};

use super::model::OrderRecord;
use crate::Error;

/// Longest topic name the transports accept.
const MAX_TOPIC: usize = 256;
/// Events buffered per subject for the slowest local stream.
const STREAM_BUFFER: usize = 1024;

/// The topic on which `subject`'s order events are published.
///
/// Subjects are already limited to `[A-Za-z0-9._@-]` when tokens are
/// issued; anything else is percent-encoded here all the same, so the topic
/// is always a valid name, and distinct subjects get distinct topics (an
/// over-long subject is cut and suffixed with a hash; streams also check the
/// subject inside each event).
pub fn orders_topic(subject: &str) -> String {
    let mut topic = String::with_capacity(7 + subject.len());
    topic.push_str("orders.");
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-') {
            topic.push(char::from(b));
        } else {
            let _ = write!(topic, "%{b:02X}");
        }
    }
    if topic.len() > MAX_TOPIC {
        // FNV-1a: stable across runs and processes, which the topic must be.
        let hash = subject.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        topic.truncate(MAX_TOPIC - 17);
        let _ = write!(topic, "~{hash:016x}");
    }
    topic
}

/// Encodes and publishes an event of `order`. A failure is logged, not
/// returned: the order itself is already durable and answered.
pub(crate) async fn publish(transport: &Arc<dyn Transport>, order: &OrderRecord) {
    let event = OrderEvent {
        order: Some(order.to_proto()),
    };
    let topic = orders_topic(&order.subject);
    if let Err(err) = transport
        .publish(&topic, Bytes::from(event.encode_to_vec()))
        .await
    {
        tracing::warn!(%topic, order_id = %order.order_id, error = %err, "could not publish order event");
    }
}

/// What a subject's local streams receive.
#[derive(Debug, Clone)]
pub(crate) enum FeedItem {
    /// An order reached a new status.
    Event(Arc<Order>),
    /// The transport lost events; the message says how.
    Lost(String),
}

/// The live transport subscription of one subject, shared by its streams.
/// Dropping the last handle stops it.
#[derive(Debug)]
pub(crate) struct SubjectFeed {
    sender: broadcast::Sender<FeedItem>,
    task: AbortHandle,
}

impl Drop for SubjectFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per-subject fan-out of order events. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub(crate) struct OrderEventHub {
    transport: Arc<dyn Transport>,
    // A tokio mutex: held across the transport subscribe, so two first
    // streams of one subject cannot both subscribe.
    feeds: Arc<tokio::sync::Mutex<HashMap<String, Weak<SubjectFeed>>>>,
}

impl OrderEventHub {
    pub(crate) fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            feeds: Arc::default(),
        }
    }

    /// Starts receiving `subject`'s events: every event published after this
    /// returns is delivered. Keep the returned feed alive while receiving.
    ///
    /// # Errors
    /// The transport's error when it cannot subscribe.
    pub(crate) async fn subscribe(
        &self,
        subject: &str,
    ) -> Result<(Arc<SubjectFeed>, broadcast::Receiver<FeedItem>), Error> {
        let mut feeds = self.feeds.lock().await;
        feeds.retain(|_, feed| feed.strong_count() > 0);
        if let Some(feed) = feeds.get(subject).and_then(Weak::upgrade) {
            let receiver = feed.sender.subscribe();
            return Ok((feed, receiver));
        }
        let topic = orders_topic(subject);
        let mut subscription = self.transport.subscribe(&topic).await?;
        let (sender, receiver) = broadcast::channel(STREAM_BUFFER);
        let forward = sender.clone();
        let owner = subject.to_owned();
        let task = tokio::spawn(async move {
            while let Some(delivery) = subscription.next().await {
                let item = match delivery {
                    Delivery::Message(payload) => match OrderEvent::decode(payload) {
                        Ok(OrderEvent { order: Some(order) }) if order.subject == owner => {
                            FeedItem::Event(Arc::new(order))
                        }
                        Ok(_) => continue,
                        Err(err) => {
                            tracing::warn!(%topic, error = %err, "dropping undecodable order event");
                            continue;
                        }
                    },
                    Delivery::Gap(gap) => {
                        FeedItem::Lost(format!("the transport lost order events ({gap})"))
                    }
                };
                // No receivers is fine: the last stream is just closing.
                let _ = forward.send(item);
            }
        });
        let feed = Arc::new(SubjectFeed {
            sender,
            task: task.abort_handle(),
        });
        feeds.insert(subject.to_owned(), Arc::downgrade(&feed));
        Ok((feed, receiver))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_valid_and_distinct() {
        assert_eq!(
            orders_topic("alice@example.com"),
            "orders.alice@example.com"
        );
        assert_eq!(orders_topic("a b/ü"), "orders.a%20b%2F%C3%BC");
        assert_ne!(orders_topic("a b"), orders_topic("a%20b"));
        let long_a = orders_topic(&"a".repeat(300));
        let long_b = orders_topic(&format!("{}b", "a".repeat(299)));
        assert_eq!(long_a.len(), MAX_TOPIC);
        assert_ne!(long_a, long_b);
        for topic in [long_a, orders_topic("x y"), orders_topic("\u{1F600}")] {
            fxcast_transport::validate_topic(&topic).unwrap();
        }
    }
}
