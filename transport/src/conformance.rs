//! The conformance suite every [`Transport`] backend must pass.
//!
//! Each check is a plain `async fn` taking a transport and a [`Limits`];
//! [`transport_conformance!`](crate::transport_conformance) turns them into
//! one `#[tokio::test]` per check for a backend:
//!
//! ```ignore
//! fxcast_transport::transport_conformance!(memory, {
//!     (MemoryTransport::new(MemoryConfig { capacity: 64 }), Limits { buffer: 64 })
//! });
//! ```

use std::{fmt, time::Duration};

use bytes::Bytes;
use tokio::sync::watch;

use crate::{Call, Delivery, SubscriberAccess, Subscription, Transport, TransportHealth};

/// What the suite may assume about a backend under test.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most messages the backend buffers for one stalled subscriber.
    pub buffer: usize,
}

/// A backend under test together with what it needs alive (its server
/// process, a temporary directory): the suite takes a transport, and the
/// guard lives exactly as long as it does.
pub struct WithGuard<T, G> {
    /// The backend.
    pub transport: T,
    /// Dropped with the transport.
    pub guard: G,
}

impl<T: fmt::Debug, G> fmt::Debug for WithGuard<T, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.transport.fmt(f)
    }
}

impl<T: Transport, G: Send + Sync + 'static> Transport for WithGuard<T, G> {
    fn name(&self) -> &'static str {
        self.transport.name()
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        self.transport.publish(topic, payload)
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> Call<'a, Subscription> {
        self.transport.subscribe(topic)
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.transport.local_subscribers(topic)
    }

    fn health(&self) -> watch::Receiver<TransportHealth> {
        self.transport.health()
    }

    fn retain<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        self.transport.retain(topic, payload)
    }

    fn retain_for<'a>(&'a self, topic: &'a str, payload: Bytes, keep: Duration) -> Call<'a, ()> {
        self.transport.retain_for(topic, payload, keep)
    }

    fn retained<'a>(&'a self, topic: &'a str) -> Call<'a, Option<Bytes>> {
        self.transport.retained(topic)
    }

    fn subscriber_access<'a>(
        &'a self,
        topics: &'a [String],
        valid_for: Duration,
    ) -> Call<'a, Option<SubscriberAccess>> {
        self.transport.subscriber_access(topics, valid_for)
    }
}

/// How long any single expected delivery may take before the check fails.
const DEADLINE: Duration = Duration::from_secs(10);

fn payload(topic_tag: u8, n: u64) -> Bytes {
    let mut v = vec![topic_tag];
    v.extend_from_slice(&n.to_be_bytes());
    Bytes::from(v)
}

fn decode(bytes: &Bytes) -> (u8, u64) {
    assert_eq!(bytes.len(), 9, "payload was altered in transit: {bytes:?}");
    (
        bytes[0],
        u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
    )
}

/// Publishes `payload` on `topic`, failing the test when the backend refuses.
pub async fn publish(transport: &(impl Transport + ?Sized), topic: &str, payload: Bytes) {
    if let Err(err) = transport.publish(topic, payload).await {
        panic!("publish to {topic} failed: {err}");
    }
}

/// The next delivery of `sub`, failing the test when none comes within ten
/// seconds or the subscription ends.
pub async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("no delivery within the deadline")
        .expect("subscription ended unexpectedly")
}

/// The delivery of the message `payload`.
pub fn message(payload: &'static [u8]) -> Delivery {
    Delivery::Message(Bytes::from_static(payload))
}

async fn next_message(sub: &mut Subscription) -> (u8, u64) {
    match next(sub).await {
        Delivery::Message(bytes) => decode(&bytes),
        Delivery::Gap(gap) => panic!("unexpected gap: {gap}"),
    }
}

/// Messages on a topic arrive in publish order, intact.
pub async fn ordering_per_topic(transport: impl Transport, limits: Limits) {
    let mut sub = transport.subscribe("conf.order").await.expect("subscribe");
    let count = limits.buffer.min(500) as u64;
    for n in 0..count {
        publish(&transport, "conf.order", payload(1, n)).await;
    }
    for n in 0..count {
        assert_eq!(next_message(&mut sub).await, (1, n));
    }
}

/// Payload bytes are opaque: any bytes, including empty and non-UTF-8, survive.
pub async fn payloads_are_opaque(transport: impl Transport, _limits: Limits) {
    let mut sub = transport.subscribe("conf.bytes").await.expect("subscribe");
    let samples = [
        Bytes::new(),
        Bytes::from_static(&[0, 255, 128, 10, 13]),
        Bytes::from(vec![7u8; 1000]),
    ];
    for sample in &samples {
        publish(&transport, "conf.bytes", sample.clone()).await;
    }
    for sample in samples {
        assert_eq!(next(&mut sub).await, Delivery::Message(sample));
    }
}

/// A subscriber of one topic never sees another topic's messages.
pub async fn topics_are_isolated(transport: impl Transport, _limits: Limits) {
    let mut a = transport
        .subscribe("conf.iso.a")
        .await
        .expect("subscribe a");
    let mut b = transport
        .subscribe("conf.iso.b")
        .await
        .expect("subscribe b");
    publish(&transport, "conf.iso.a", payload(1, 1)).await;
    publish(&transport, "conf.iso.b", payload(2, 1)).await;
    publish(&transport, "conf.iso.a", payload(1, 2)).await;
    assert_eq!(next_message(&mut a).await, (1, 1));
    assert_eq!(next_message(&mut a).await, (1, 2));
    assert_eq!(next_message(&mut b).await, (2, 1));
}

/// Every subscriber receives every message, in order.
pub async fn fan_out(transport: impl Transport, _limits: Limits) {
    let mut subs = Vec::new();
    for _ in 0..100 {
        subs.push(transport.subscribe("conf.fanout").await.expect("subscribe"));
    }
    assert_eq!(transport.local_subscribers("conf.fanout"), 100);
    for n in 0..10 {
        publish(&transport, "conf.fanout", payload(3, n)).await;
    }
    for sub in &mut subs {
        for n in 0..10 {
            assert_eq!(next_message(sub).await, (3, n));
        }
    }
}

/// Publishing with nobody subscribed succeeds, and a later subscriber only
/// sees what is published after it subscribed.
pub async fn publish_without_subscribers(transport: impl Transport, _limits: Limits) {
    transport
        .publish("conf.nobody", payload(4, 0))
        .await
        .expect("publish to an empty topic");
    let mut sub = transport.subscribe("conf.nobody").await.expect("subscribe");
    publish(&transport, "conf.nobody", payload(4, 1)).await;
    assert_eq!(next_message(&mut sub).await, (4, 1));
}

/// Dropping a subscription unsubscribes it and leaves the others untouched.
pub async fn unsubscribe_on_drop(transport: impl Transport, _limits: Limits) {
    let first = transport.subscribe("conf.drop").await.expect("subscribe");
    let mut second = transport.subscribe("conf.drop").await.expect("subscribe");
    assert_eq!(transport.local_subscribers("conf.drop"), 2);
    drop(first);
    assert_eq!(transport.local_subscribers("conf.drop"), 1);
    publish(&transport, "conf.drop", payload(5, 1)).await;
    assert_eq!(next_message(&mut second).await, (5, 1));
    drop(second);
    assert_eq!(transport.local_subscribers("conf.drop"), 0);
    transport
        .publish("conf.drop", payload(5, 2))
        .await
        .expect("publish after everyone left");
}

/// A subscriber that stops reading is told it missed messages, then gets the
/// newest ones; it never receives more than the backend's buffer in between,
/// and a reading subscriber on the same topic misses nothing.
pub async fn lagging_subscriber_gets_gap_and_bounded_buffer(
    transport: impl Transport,
    limits: Limits,
) {
    let mut stalled = transport.subscribe("conf.lag").await.expect("subscribe");
    let mut reader = transport.subscribe("conf.lag").await.expect("subscribe");
    let total = (limits.buffer * 4) as u64;
    for n in 0..total {
        publish(&transport, "conf.lag", payload(6, n)).await;
        assert_eq!(
            next_message(&mut reader).await,
            (6, n),
            "a reading subscriber must not be slowed or lose messages"
        );
    }

    let mut missed_reported = 0u64;
    let mut saw_gap = false;
    let mut delivered = Vec::new();
    while delivered.last() != Some(&(total - 1)) {
        match next(&mut stalled).await {
            Delivery::Gap(gap) => {
                assert!(
                    delivered.is_empty() || saw_gap,
                    "gap must come before the newer messages"
                );
                saw_gap = true;
                missed_reported += gap.missed.unwrap_or(0);
            }
            Delivery::Message(bytes) => {
                let (tag, n) = decode(&bytes);
                assert_eq!(tag, 6);
                if let Some(&last) = delivered.last() {
                    assert!(
                        n > last,
                        "messages out of order after a gap: {n} after {last}"
                    );
                }
                delivered.push(n);
            }
        }
    }
    assert!(
        saw_gap,
        "a stalled subscriber must be told it missed messages"
    );
    assert!(
        delivered.len() <= limits.buffer,
        "{} messages were buffered for a stalled subscriber, more than the {} limit",
        delivered.len(),
        limits.buffer
    );
    if missed_reported > 0 {
        assert_eq!(
            missed_reported + delivered.len() as u64,
            total,
            "missed + delivered must equal published"
        );
    }
}

/// Many topics can be used at once and are cleaned up when unsubscribed.
pub async fn many_topics(transport: impl Transport, _limits: Limits) {
    let mut subs = Vec::new();
    for t in 0..50u8 {
        let topic = format!("conf.many.{t}");
        subs.push((t, transport.subscribe(&topic).await.expect("subscribe")));
    }
    for t in 0..50u8 {
        publish(
            &transport,
            &format!("conf.many.{t}"),
            payload(t, u64::from(t)),
        )
        .await;
    }
    for (t, sub) in &mut subs {
        assert_eq!(next_message(sub).await, (*t, u64::from(*t)));
    }
    drop(subs);
    for t in 0..50u8 {
        assert_eq!(transport.local_subscribers(&format!("conf.many.{t}")), 0);
    }
}

/// Invalid topic names are refused with [`crate::Error::InvalidTopic`].
pub async fn invalid_topics_are_refused(transport: impl Transport, _limits: Limits) {
    for bad in ["", "has space", "tab\there"] {
        let err = transport
            .publish(bad, Bytes::new())
            .await
            .expect_err("publish to an invalid topic");
        assert!(matches!(err, crate::Error::InvalidTopic { .. }), "{err}");
        let err = transport
            .subscribe(bad)
            .await
            .expect_err("subscribe to an invalid topic");
        assert!(matches!(err, crate::Error::InvalidTopic { .. }), "{err}");
    }
}

/// Generates one `#[tokio::test]` per conformance check for a backend.
///
/// `$make` is an expression evaluating to `(transport, Limits)`; it is
/// evaluated afresh inside each test.
#[macro_export]
macro_rules! transport_conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::transport_conformance!(@tests $make;
                ordering_per_topic,
                payloads_are_opaque,
                topics_are_isolated,
                fan_out,
                publish_without_subscribers,
                unsubscribe_on_drop,
                lagging_subscriber_gets_gap_and_bounded_buffer,
                many_topics,
                invalid_topics_are_refused,
            );
        }
    };
    (@tests $make:expr; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (transport, limits) = $make;
                $crate::conformance::$check(transport, limits).await;
            }
        )*
    };
}
