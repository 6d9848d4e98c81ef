//! Topics with Momento's semantics, and the `Pubsub` service.
//!
//! Each topic (named within a cache) numbers its messages 1, 2, 3, … on a
//! *sequence page* chosen when the topic is created: a topic that was
//! forgotten and is used again starts over on a greater page, which tells a
//! resuming client that the numbers it holds no longer apply.
//!
//! A message is stored once (an `Arc`) in two bounded places: the topic's
//! history, for `resume_at_topic_sequence_number`, and a
//! `tokio::sync::broadcast` ring that fans it out live. A subscriber that
//! falls more than the ring's capacity behind is skipped ahead to the oldest
//! message still in the ring and told so with a `Discontinuity`; nothing is
//! buffered per subscriber beyond what HTTP/2 flow control holds.
//!
//! Every subscription starts with a heartbeat (the Python and Node SDKs
//! treat the first message as the sign that a subscription is established)
//! and gets one whenever it has been idle for the heartbeat interval.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime},
};

use futures_util::Stream;
use momento_protos::{
    cache_client::pubsub::{
        Discontinuity, Heartbeat, PublishRequest, SubscriptionItem, SubscriptionRequest, TopicItem,
        TopicValue, pubsub_server::Pubsub, subscription_item, topic_value,
    },
    common::Empty,
};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    Limits, Shared,
    auth::{Caller, TopicAccess},
    cache::limit_exceeded,
    limits::StreamSlot,
};

/// The topics of one cache.
#[derive(Debug, Default)]
pub(super) struct Topics {
    // A std mutex: held only for a map operation, never across an `.await`.
    by_name: Mutex<HashMap<String, Arc<Topic>>>,
}

impl Topics {
    fn get_or_create(&self, name: &str, shared: &Shared) -> Arc<Topic> {
        let mut topics = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Topic::new(shared.next_page(), &shared.limits)))
            .clone()
    }

    /// Forgets every topic: with the last `Arc` of a topic its broadcast
    /// sender goes, and its subscriptions see the channel closed.
    pub(super) fn close_all(&self) {
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Forgets topics nobody has subscribed to or published on for `idle`.
    pub(super) fn sweep(&self, idle: Duration) {
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, topic| !topic.idle_for(idle));
    }
}

/// One topic: its sequence, history and live fan-out.
#[derive(Debug)]
pub(super) struct Topic {
    page: u64,
    state: Mutex<TopicState>,
    live: broadcast::Sender<Arc<Published>>,
}

#[derive(Debug)]
struct TopicState {
    /// The last sequence number given out; 0 before the first message.
    last: u64,
    /// The most recent messages, oldest first, contiguous up to `last`.
    history: VecDeque<Arc<Published>>,
    history_capacity: usize,
    /// The last publish, subscribe or unsubscribe.
    last_active: Instant,
}

/// A published message, built once for every subscriber.
#[derive(Debug)]
struct Published {
    sequence: u64,
    item: SubscriptionItem,
}

/// Where a new subscription starts.
struct Attached {
    receiver: broadcast::Receiver<Arc<Published>>,
    discontinuity: Option<Discontinuity>,
    replay: Vec<Arc<Published>>,
    /// The sequence number just before the first live message.
    last_seen: u64,
    page: u64,
}

impl Topic {
    fn new(page: u64, limits: &Limits) -> Self {
        let (live, _) = broadcast::channel(limits.subscriber_buffer);
        Self {
            page,
            state: Mutex::new(TopicState {
                last: 0,
                history: VecDeque::with_capacity(limits.topic_history.min(1024)),
                history_capacity: limits.topic_history,
                last_active: Instant::now(),
            }),
            live,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TopicState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, value: TopicValue, publisher_id: &str) {
        let mut state = self.state();
        state.last += 1;
        let published = Arc::new(Published {
            sequence: state.last,
            item: SubscriptionItem {
                kind: Some(subscription_item::Kind::Item(TopicItem {
                    topic_sequence_number: state.last,
                    value: Some(value),
                    publisher_id: publisher_id.to_owned(),
                    sequence_page: self.page,
                })),
            },
        });
        if state.history.len() == state.history_capacity {
            state.history.pop_front();
        }
        state.history.push_back(published.clone());
        state.last_active = Instant::now();
        // Sent under the lock: the ring receives messages in sequence order,
        // and a subscriber attaching meanwhile finds each message exactly
        // once, in the history or live. An error only means no subscribers.
        let _ = self.live.send(published);
    }

    /// Attaches a subscriber that resumes at `resume_at` (0: live only) on
    /// `page` (0: whatever page the topic is on).
    fn attach(&self, resume_at: u64, page: u64) -> Attached {
        let mut state = self.state();
        state.last_active = Instant::now();
        let receiver = self.live.subscribe();
        let next = state.last + 1;
        let first_held = state.history.front().map(|p| p.sequence);
        let same_page = page == 0 || page == self.page;
        let (discontinuity, replay_from) = match first_held {
            _ if resume_at == 0 || (same_page && resume_at == next) => (None, None),
            Some(first) if same_page && (first..next).contains(&resume_at) => {
                (None, Some(resume_at))
            }
            // Evicted, from another page, or ahead of this topic: replay all
            // that is held, announced as a discontinuity.
            _ => (
                Some(Discontinuity {
                    last_topic_sequence: resume_at,
                    new_topic_sequence: first_held.unwrap_or(next),
                    new_sequence_page: self.page,
                }),
                first_held,
            ),
        };
        let replay = match replay_from {
            Some(from) => state
                .history
                .iter()
                .filter(|p| p.sequence >= from)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Attached {
            receiver,
            discontinuity,
            replay,
            last_seen: state.last,
            page: self.page,
        }
    }

    fn touch(&self) {
        self.state().last_active = Instant::now();
    }

    fn idle_for(&self, idle: Duration) -> bool {
        self.live.receiver_count() == 0 && self.state().last_active.elapsed() >= idle
    }
}

/// Marks the topic active when a subscription ends, so its history is kept
/// for a client that resubscribes. Holds the topic weakly: a deleted cache's
/// topics must go away even while subscriptions are open.
struct Detach(Weak<Topic>);

impl Drop for Detach {
    fn drop(&mut self) {
        if let Some(topic) = self.0.upgrade() {
            topic.touch();
        }
    }
}

fn heartbeat() -> SubscriptionItem {
    SubscriptionItem {
        kind: Some(subscription_item::Kind::Heartbeat(Heartbeat {})),
    }
}

fn discontinuity(discontinuity: Discontinuity) -> SubscriptionItem {
    SubscriptionItem {
        kind: Some(subscription_item::Kind::Discontinuity(discontinuity)),
    }
}

/// Checks the topic name (non-empty), then that `caller` may `access` the
/// topic.
fn authorize(caller: &Caller, cache: &str, topic: &str, access: TopicAccess) -> Result<(), Status> {
    if topic.is_empty() {
        return Err(Status::invalid_argument("topic name is empty"));
    }
    caller.require_topic(cache, topic, access)
}

/// `cache_client.pubsub.Pubsub`.
#[derive(Debug)]
pub(super) struct PubsubService {
    shared: Arc<Shared>,
}

impl PubsubService {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// # Errors
    /// `INVALID_ARGUMENT` without a value, `RESOURCE_EXHAUSTED` for a value
    /// over the message limit.
    fn check_size(&self, value: Option<&TopicValue>) -> Result<(), Status> {
        let size = match value.and_then(|v| v.kind.as_ref()) {
            Some(topic_value::Kind::Text(text)) => text.len(),
            Some(topic_value::Kind::Binary(bytes)) => bytes.len(),
            None => return Err(Status::invalid_argument("value is required")),
        };
        let limit = self.shared.limits.max_message_bytes;
        if size > limit {
            return Err(limit_exceeded(
                "request_size_limit_exceeded",
                format!("topic message of {size} bytes exceeds the {limit}-byte limit"),
            ));
        }
        Ok(())
    }
}

/// A subscription's stream of items.
pub(super) type SubscriptionStream =
    Pin<Box<dyn Stream<Item = Result<SubscriptionItem, Status>> + Send>>;

#[tonic::async_trait]
impl Pubsub for PubsubService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<Empty>, Status> {
        let caller = Caller::of(&request)?;
        // The cache comes from the body: the Python and Node SDKs send no
        // `cache` header on topic calls.
        let PublishRequest {
            cache_name,
            topic,
            value,
        } = request.into_inner();
        authorize(&caller, &cache_name, &topic, TopicAccess::Publish)?;
        self.check_size(value.as_ref())?;
        let cache = self.shared.caches.get(&cache_name)?;
        self.shared.charge(&cache_name)?;
        let value = value.unwrap_or_default();
        cache
            .topics
            .get_or_create(&topic, &self.shared)
            .publish(value, caller.publisher_id());
        Ok(Response::new(Empty {}))
    }

    type SubscribeStream = SubscriptionStream;

    async fn subscribe(
        &self,
        request: Request<SubscriptionRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request)?;
        let peer = request.remote_addr();
        let SubscriptionRequest {
            cache_name,
            topic,
            resume_at_topic_sequence_number,
            sequence_page,
        } = request.into_inner();
        authorize(&caller, &cache_name, &topic, TopicAccess::Subscribe)?;
        let cache = self.shared.caches.get(&cache_name)?;
        let slot = self.shared.streams.claim(peer)?;
        self.shared.charge(&cache_name)?;
        let topic = cache.topics.get_or_create(&topic, &self.shared);
        let attached = topic.attach(resume_at_topic_sequence_number, sequence_page);
        let stream = subscription(
            attached,
            Arc::downgrade(&topic),
            SubscriptionEnds {
                slot,
                cache: cache_name,
                token_expiry: caller.expires_at(),
                stopping: self.shared.stopping.clone(),
            },
            self.shared.limits.heartbeat_interval,
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What ends a subscription besides the client going away.
struct SubscriptionEnds {
    /// Its place among the connection's subscriptions, given back when the
    /// stream is dropped.
    slot: Option<StreamSlot>,
    /// Deleting it closes its topics.
    cache: String,
    /// A disposable token's expiry: the subscription ends with it.
    token_expiry: Option<SystemTime>,
    stopping: CancellationToken,
}

enum Event {
    Received(Result<Arc<Published>, RecvError>),
    Idle,
    Expired,
    Stopping,
}

fn subscription(
    attached: Attached,
    topic: Weak<Topic>,
    ends: SubscriptionEnds,
    heartbeat_interval: Duration,
) -> impl Stream<Item = Result<SubscriptionItem, Status>> + Send + 'static {
    async_stream::stream! {
        let _detach = Detach(topic);
        let _slot = ends.slot;
        let Attached { mut receiver, discontinuity: resumed, replay, mut last_seen, page } = attached;
        yield Ok(heartbeat());
        if let Some(d) = resumed {
            yield Ok(discontinuity(d));
        }
        for published in replay {
            yield Ok(published.item.clone());
        }
        let expiry = async move {
            match ends.token_expiry {
                Some(at) => {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let idle = tokio::time::sleep(heartbeat_interval);
        tokio::pin!(idle);
        loop {
            let event = tokio::select! {
                biased;
                () = ends.stopping.cancelled() => Event::Stopping,
                () = &mut expiry => Event::Expired,
                received = receiver.recv() => Event::Received(received),
                () = &mut idle => Event::Idle,
            };
            match event {
                Event::Received(Ok(published)) => {
                    last_seen = published.sequence;
                    yield Ok(published.item.clone());
                }
                Event::Received(Err(RecvError::Lagged(missed))) => {
                    // The ring moved on: the next message received is the
                    // oldest it still holds.
                    let next = last_seen + missed + 1;
                    yield Ok(discontinuity(Discontinuity {
                        last_topic_sequence: last_seen,
                        new_topic_sequence: next,
                        new_sequence_page: page,
                    }));
                    last_seen = next - 1;
                }
                Event::Received(Err(RecvError::Closed)) => {
                    yield Err(Status::not_found(format!(
                        "cache {:?} was deleted",
                        ends.cache
                    )));
                    break;
                }
                Event::Idle => yield Ok(heartbeat()),
                Event::Expired => {
                    yield Err(Status::unauthenticated(
                        "disposable token expired: subscribe again with a fresh token",
                    ));
                    break;
                }
                Event::Stopping => {
                    yield Err(Status::unavailable("momento-local is shutting down"));
                    break;
                }
            }
            idle.as_mut().reset(tokio::time::Instant::now() + heartbeat_interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MomentoLocalConfig;

    fn shared() -> Shared {
        Shared::new(&MomentoLocalConfig::default(), CancellationToken::new())
    }

    fn text(value: &str) -> TopicValue {
        TopicValue {
            kind: Some(topic_value::Kind::Text(value.into())),
        }
    }

    #[test]
    fn idle_topics_are_forgotten_and_start_over_on_a_greater_page() {
        let shared = shared();
        let topics = Topics::default();
        let topic = topics.get_or_create("t", &shared);
        topic.publish(text("a"), "");
        let page = topic.page;

        // Subscribed: kept however long it is quiet.
        let attached = topic.attach(1, page);
        assert_eq!(attached.replay.len(), 1);
        topics.sweep(Duration::ZERO);
        assert!(Arc::ptr_eq(&topics.get_or_create("t", &shared), &topic));

        // Recently active: kept.
        drop(attached);
        topics.sweep(Duration::from_secs(600));
        assert!(Arc::ptr_eq(&topics.get_or_create("t", &shared), &topic));

        // Idle and unsubscribed: forgotten; its numbers no longer apply.
        topics.sweep(Duration::ZERO);
        let fresh = topics.get_or_create("t", &shared);
        assert!(fresh.page > page);
        let resumed = fresh.attach(1, page);
        let d = resumed.discontinuity.expect("a discontinuity");
        assert_eq!(
            (
                d.last_topic_sequence,
                d.new_topic_sequence,
                d.new_sequence_page
            ),
            (1, 1, fresh.page)
        );
        assert!(resumed.replay.is_empty());
    }
}
