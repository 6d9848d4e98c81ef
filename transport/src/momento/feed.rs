//! One Momento subscription per topic per process, fanned out locally.
//!
//! A topic's *feed* is a task holding the single Momento subscription and a
//! `tokio::sync::broadcast` ring that every local [`Subscription`] of the
//! topic reads (as in the memory backend: a payload is stored once, a slow
//! local reader is told `Gap { cause: Lagged }` and memory stays bounded).
//! The last local subscription to go ends the feed and its Momento
//! subscription.
//!
//! The feed drives the generated `Pubsub` client itself rather than the
//! SDK's `Subscription` (see the module documentation of `momento`), so it
//! sees heartbeats, discontinuities and errors, and adds:
//! - **dedupe** by (sequence page, sequence number): a resumed subscription
//!   may repeat what was already delivered;
//! - **gap detection**: a discontinuity, a jump within a page or a change of
//!   page becomes a [`Delivery::Gap`]; right after a resubscription its
//!   cause is [`GapCause::Reconnected`];
//! - **reconnects** with capped exponential backoff and jitter, resuming at
//!   the last (page, sequence) received, and the transport's health saying
//!   which topic is reconnecting meanwhile.
//!
//! [`Subscription`]: crate::Subscription

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use momento_protos::cache_client::pubsub::{
    Discontinuity, SubscriptionItem, SubscriptionRequest, pubsub_client::PubsubClient,
    subscription_item::Kind, topic_value,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tonic::{
    Status, Streaming, metadata::AsciiMetadataValue, service::Interceptor,
    service::interceptor::InterceptedService, transport::Channel,
};

use super::BACKEND;
use super::ReconnectPolicy;
use crate::feeds::{Establishing, FeedCounters, Feeds};
use crate::health::HealthBoard;
use crate::{Backoff, Delivery, Error, Gap, GapCause, Subscription};

/// Momento serves at most this many concurrent subscriptions on one HTTP/2
/// connection (the SDK's `MAX_CONCURRENT_STREAMS_PER_CHANNEL`).
pub(super) const STREAMS_PER_CONNECTION: usize = 100;

/// Adds the credential (and the cache, as the SDKs do) to every call.
#[derive(Clone)]
pub(super) struct Credential {
    authorization: AsciiMetadataValue,
    cache: AsciiMetadataValue,
}

impl Credential {
    pub(super) fn new(authorization: &str, cache: &str) -> Result<Self, Error> {
        let invalid = |what: &str| {
            Error::InvalidConfig(format!(
                "momento: the {what} contains characters that cannot travel in a header"
            ))
        };
        Ok(Self {
            authorization: authorization.parse().map_err(|_| invalid("API key"))?,
            cache: cache.parse().map_err(|_| invalid("cache name"))?,
        })
    }
}

impl Interceptor for Credential {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.authorization.clone());
        metadata.insert("cache", self.cache.clone());
        Ok(request)
    }
}

type Client = PubsubClient<InterceptedService<Channel, Credential>>;

/// The connections subscriptions are spread over, each used for at most
/// [`STREAMS_PER_CONNECTION`] topics.
pub(super) struct Connections {
    clients: Vec<(Client, AtomicUsize)>,
}

/// A topic's claim on a connection, released when dropped.
struct Lease {
    connections: Arc<Connections>,
    index: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.connections.clients[self.index]
            .1
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    pub(super) fn new(channels: Vec<Channel>, credential: &Credential) -> Self {
        Self {
            clients: channels
                .into_iter()
                .map(|channel| {
                    let client =
                        PubsubClient::new(InterceptedService::new(channel, credential.clone()));
                    (client, AtomicUsize::new(0))
                })
                .collect(),
        }
    }

    /// The least used connection, if one has room.
    fn lease(self: &Arc<Self>) -> Option<(Client, Lease)> {
        let (index, (client, count)) = self
            .clients
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, count))| count.load(Ordering::Relaxed))?;
        if count.fetch_add(1, Ordering::Relaxed) >= STREAMS_PER_CONNECTION {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some((
            client.clone(),
            Lease {
                connections: Arc::clone(self),
                index,
            },
        ))
    }
}

/// What every feed needs. Holds no reference to the transport, so feeds do
/// not keep it alive.
#[derive(Clone)]
pub(super) struct FeedContext {
    pub(super) cache: String,
    pub(super) connections: Arc<Connections>,
    pub(super) buffer: usize,
    pub(super) reconnect: ReconnectPolicy,
    pub(super) request_timeout: Duration,
    pub(super) health: HealthBoard,
    /// Cancelled when the transport goes away.
    pub(super) stop: CancellationToken,
    /// Every subscribe call waits for its turn in it.
    pub(super) budget: Option<Arc<super::Budget>>,
    pub(super) counters: Arc<FeedCounters>,
}

/// A local subscription to `topic`, starting the topic's feed (a
/// [`Driver`] on a Momento subscription of its own) if this is its first.
/// Returns once the Momento subscription is established, so every message
/// published afterwards is received.
///
/// # Errors
/// [`Error::Unavailable`] when Momento refuses or cannot be reached.
pub(super) async fn subscribe(
    feeds: &Arc<Feeds>,
    context: &FeedContext,
    topic: &str,
) -> Result<Subscription, Error> {
    feeds
        .subscribe(BACKEND, topic, context.buffer, |start| {
            let driver = Driver {
                context: context.clone(),
                topic: topic.to_owned(),
                sender: start.sender,
                stop: start.stop,
            };
            tokio::spawn(driver.run(start.state, start.feeds, start.id));
        })
        .await
}

fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {}", status.code(), status.message())
    }
}

/// A position in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    page: u64,
    sequence: u64,
}

/// Dedupe and gap detection over the items of successive subscriptions.
#[derive(Debug, Default)]
struct Tracker {
    /// The last item delivered (or skipped past by a discontinuity).
    last: Option<Position>,
    /// No item or discontinuity since the latest resubscription.
    resumed: bool,
}

impl Tracker {
    /// Where a resubscription resumes: at the last item, inclusive (a
    /// service that resumes after it is just as right; a repeat is dropped).
    fn resume_point(&self) -> (u64, u64) {
        self.last.map_or((0, 0), |p| (p.sequence, p.page))
    }

    fn cause(&self) -> GapCause {
        if self.resumed {
            GapCause::Reconnected
        } else {
            // The service skipped this subscription ahead mid-stream.
            GapCause::Lagged
        }
    }

    /// Deliveries for `item`, appended to `out`.
    fn on_item(
        &mut self,
        item: SubscriptionItem,
        counters: &FeedCounters,
        out: &mut Vec<Delivery>,
    ) {
        match item.kind {
            None | Some(Kind::Heartbeat(_)) => {}
            Some(Kind::Discontinuity(Discontinuity {
                new_topic_sequence,
                new_sequence_page,
                ..
            })) => {
                let missed = match self.last {
                    Some(last) if last.page == new_sequence_page => {
                        let missed = new_topic_sequence.saturating_sub(last.sequence + 1);
                        (missed > 0).then_some(Some(missed))
                    }
                    _ => Some(None),
                };
                if let Some(missed) = missed {
                    counters.gaps.fetch_add(1, Ordering::Relaxed);
                    out.push(Delivery::Gap(Gap {
                        missed,
                        cause: self.cause(),
                    }));
                }
                self.last = Some(Position {
                    page: new_sequence_page,
                    sequence: new_topic_sequence.saturating_sub(1),
                });
                self.resumed = false;
            }
            Some(Kind::Item(item)) => {
                let at = Position {
                    page: item.sequence_page,
                    sequence: item.topic_sequence_number,
                };
                match self.last {
                    Some(last) if last.page == at.page && at.sequence <= last.sequence => {
                        counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Some(last) if last.page == at.page && at.sequence == last.sequence + 1 => {}
                    Some(last) => {
                        let missed =
                            (last.page == at.page).then(|| at.sequence - last.sequence - 1);
                        counters.gaps.fetch_add(1, Ordering::Relaxed);
                        out.push(Delivery::Gap(Gap {
                            missed,
                            cause: self.cause(),
                        }));
                    }
                    None => {}
                }
                self.last = Some(at);
                self.resumed = false;
                let payload = match item.value.and_then(|v| v.kind) {
                    Some(topic_value::Kind::Binary(bytes)) => Bytes::from(bytes),
                    Some(topic_value::Kind::Text(text)) => Bytes::from(text.into_bytes()),
                    None => {
                        tracing::warn!(
                            sequence = at.sequence,
                            "momento sent a topic item without a value; skipped"
                        );
                        return;
                    }
                };
                out.push(Delivery::Message(payload));
            }
        }
    }
}

/// The task behind one feed.
struct Driver {
    context: FeedContext,
    topic: String,
    sender: broadcast::Sender<Delivery>,
    stop: CancellationToken,
}

enum Opened {
    // Boxed: a stream is large, and one is opened per (re)subscription.
    Stream(Box<Streaming<SubscriptionItem>>),
    Failed(String),
    Stopped,
}

impl Driver {
    async fn open(&self, client: &mut Client, (sequence, page): (u64, u64)) -> Opened {
        let request = SubscriptionRequest {
            cache_name: self.context.cache.clone(),
            topic: self.topic.clone(),
            resume_at_topic_sequence_number: sequence,
            sequence_page: page,
        };
        let (budget, timeout) = (self.context.budget.clone(), self.context.request_timeout);
        // The wait for a turn is not part of the call's deadline.
        let call = async move {
            super::budget::take(budget.as_deref()).await;
            tokio::time::timeout(timeout, client.subscribe(request)).await
        };
        tokio::select! {
            biased;
            () = self.stop.cancelled() => Opened::Stopped,
            result = call => match result {
                Ok(Ok(response)) => Opened::Stream(Box::new(response.into_inner())),
                Ok(Err(status)) => Opened::Failed(describe(&status)),
                Err(_) => Opened::Failed(format!(
                    "no answer within {:?}",
                    self.context.request_timeout
                )),
            },
        }
    }

    async fn run(self, state: watch::Sender<Establishing>, feeds: Weak<Feeds>, id: u64) {
        let Some((client, _lease, stream)) = self.establish(&state, &feeds, id).await else {
            return;
        };
        let _ = state.send(Establishing::Live);
        tracing::debug!(topic = %self.topic, "momento subscription established");
        self.follow(client, stream).await;
    }

    /// Leases a connection and opens the first stream on it. When either
    /// fails, the feed leaves `feeds` and `state` says why.
    async fn establish(
        &self,
        state: &watch::Sender<Establishing>,
        feeds: &Weak<Feeds>,
        id: u64,
    ) -> Option<(Client, Lease, Box<Streaming<SubscriptionItem>>)> {
        let fail = |message: String| {
            if let Some(feeds) = feeds.upgrade() {
                feeds.remove(&self.topic, id);
            }
            let _ = state.send(Establishing::Failed(message));
        };
        let Some((mut client, lease)) = self.context.connections.lease() else {
            let connections = self.context.connections.clients.len();
            fail(format!(
                "cannot subscribe to {}: all {connections} subscription connections carry \
                 {STREAMS_PER_CONNECTION} topics each; raise `subscription_connections`",
                self.topic
            ));
            return None;
        };
        match self.open(&mut client, (0, 0)).await {
            Opened::Stream(stream) => Some((client, lease, stream)),
            Opened::Failed(reason) => {
                fail(format!("cannot subscribe to {}: {reason}", self.topic));
                None
            }
            Opened::Stopped => None,
        }
    }

    /// Delivers from `stream`, resubscribing where it left off whenever it
    /// is lost, until the feed stops.
    async fn follow(&self, mut client: Client, mut stream: Box<Streaming<SubscriptionItem>>) {
        let health_key = format!("subscription to {}", self.topic);
        let mut tracker = Tracker::default();
        let mut backoff = Backoff::new(self.context.reconnect);
        loop {
            let Some(reason) = self.deliver(&mut stream, &mut tracker, &mut backoff).await else {
                return;
            };
            tracing::warn!(topic = %self.topic, %reason, "momento subscription lost; reconnecting");
            self.context.health.fail(&health_key, reason);
            drop(stream);
            let resubscribed = self.resubscribe(&mut client, &tracker, &mut backoff, &health_key);
            let Some(resumed) = resubscribed.await else {
                return;
            };
            stream = resumed;
            self.context
                .counters
                .restarts
                .fetch_add(1, Ordering::Relaxed);
            self.context.health.recover(&health_key);
            tracker.resumed = true;
            if tracker.last.is_none() {
                // Nothing received yet, so nothing to resume from: whatever
                // was published while disconnected is lost.
                self.context.counters.gaps.fetch_add(1, Ordering::Relaxed);
                let _ = self.sender.send(Delivery::Gap(Gap {
                    missed: None,
                    cause: GapCause::Reconnected,
                }));
            }
            tracing::info!(topic = %self.topic, "momento subscription resumed");
        }
    }

    /// Fans `stream`'s items out to the subscribers until it is lost (the
    /// reason) or the feed stops (`None`).
    async fn deliver(
        &self,
        stream: &mut Streaming<SubscriptionItem>,
        tracker: &mut Tracker,
        backoff: &mut Backoff,
    ) -> Option<String> {
        let mut out = Vec::with_capacity(2);
        loop {
            let next = tokio::select! {
                biased;
                () = self.stop.cancelled() => return None,
                next = stream.message() => next,
            };
            match next {
                Ok(Some(item)) => {
                    // The stream works: the next failure starts the
                    // backoff from the beginning again.
                    backoff.reset();
                    tracker.on_item(item, &self.context.counters, &mut out);
                    for delivery in out.drain(..) {
                        // No receivers only means nobody reads right now.
                        let _ = self.sender.send(delivery);
                    }
                }
                Ok(None) => return Some("the service ended the subscription".to_owned()),
                Err(status) => return Some(describe(&status)),
            }
        }
    }

    /// Opens the stream again at the tracker's resume point, backing off
    /// between attempts; `None` once the feed stops.
    async fn resubscribe(
        &self,
        client: &mut Client,
        tracker: &Tracker,
        backoff: &mut Backoff,
        health_key: &str,
    ) -> Option<Box<Streaming<SubscriptionItem>>> {
        loop {
            let delay = backoff.next_delay();
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            match self.open(client, tracker.resume_point()).await {
                Opened::Stream(stream) => return Some(stream),
                Opened::Failed(reason) => {
                    tracing::debug!(topic = %self.topic, %reason, ?delay, "momento resubscribe failed");
                    self.context.health.fail(health_key, reason);
                }
                Opened::Stopped => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use momento_protos::cache_client::pubsub::{Heartbeat, TopicItem, TopicValue};

    use super::*;

    fn item(page: u64, sequence: u64) -> SubscriptionItem {
        SubscriptionItem {
            kind: Some(Kind::Item(TopicItem {
                topic_sequence_number: sequence,
                value: Some(TopicValue {
                    kind: Some(topic_value::Kind::Binary(sequence.to_be_bytes().to_vec())),
                }),
                publisher_id: String::new(),
                sequence_page: page,
            })),
        }
    }

    fn discontinuity(last: u64, new: u64, page: u64) -> SubscriptionItem {
        SubscriptionItem {
            kind: Some(Kind::Discontinuity(Discontinuity {
                last_topic_sequence: last,
                new_topic_sequence: new,
                new_sequence_page: page,
            })),
        }
    }

    fn feed(tracker: &mut Tracker, items: Vec<SubscriptionItem>) -> Vec<Delivery> {
        let counters = FeedCounters::default();
        let mut out = Vec::new();
        for item in items {
            tracker.on_item(item, &counters, &mut out);
        }
        out
    }

    fn message(sequence: u64) -> Delivery {
        Delivery::Message(Bytes::from(sequence.to_be_bytes().to_vec()))
    }

    fn gap(missed: Option<u64>, cause: GapCause) -> Delivery {
        Delivery::Gap(Gap { missed, cause })
    }

    #[test]
    fn repeats_after_a_resume_are_dropped() {
        let mut tracker = Tracker::default();
        let heartbeat = SubscriptionItem {
            kind: Some(Kind::Heartbeat(Heartbeat {})),
        };
        let out = feed(&mut tracker, vec![heartbeat, item(7, 1), item(7, 2)]);
        assert_eq!(out, [message(1), message(2)]);
        assert_eq!(tracker.resume_point(), (2, 7));
        tracker.resumed = true;
        let out = feed(&mut tracker, vec![item(7, 2), item(7, 3)]);
        assert_eq!(out, [message(3)]);
    }

    #[test]
    fn jumps_and_page_changes_are_gaps() {
        let mut tracker = Tracker::default();
        feed(&mut tracker, vec![item(7, 1)]);
        tracker.resumed = true;
        let out = feed(&mut tracker, vec![item(7, 5), item(7, 9)]);
        assert_eq!(
            out,
            [
                gap(Some(3), GapCause::Reconnected),
                message(5),
                gap(Some(3), GapCause::Lagged),
                message(9)
            ]
        );
        let out = feed(&mut tracker, vec![item(8, 1)]);
        assert_eq!(out, [gap(None, GapCause::Lagged), message(1)]);
    }

    #[test]
    fn discontinuities_are_gaps_once() {
        let mut tracker = Tracker::default();
        feed(&mut tracker, vec![item(7, 10)]);
        tracker.resumed = true;
        // A restarted service: another page, its messages from 1.
        let out = feed(
            &mut tracker,
            vec![discontinuity(10, 1, 9), item(9, 1), item(9, 2)],
        );
        assert_eq!(
            out,
            [gap(None, GapCause::Reconnected), message(1), message(2)]
        );
        // Skipped ahead on the same page: the count is known.
        let out = feed(&mut tracker, vec![discontinuity(2, 6, 9), item(9, 6)]);
        assert_eq!(out, [gap(Some(3), GapCause::Lagged), message(6)]);
        // A discontinuity that skips nothing is not a gap.
        let out = feed(&mut tracker, vec![discontinuity(6, 7, 9), item(9, 7)]);
        assert_eq!(out, [message(7)]);
    }
}
