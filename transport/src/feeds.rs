//! The per-topic feeds of a network backend, shared by Momento, NATS and
//! Redis.
//!
//! A process holds one subscription on the engine per topic, however many
//! local subscribers it has: the first local subscriber of a topic starts
//! the topic's *feed* (a backend task, its driver), which fans every
//! delivery out to the local subscribers through a bounded broadcast; the
//! last one to leave ends it. This module is that registry: starting a
//! feed once, waiting until its engine subscription is live, counting local
//! subscribers, and forgetting a feed when it ends. What a driver does on
//! the engine is the backend's.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{Delivery, Error, Subscription, local::LocalReader};

/// What the feeds of one transport have counted.
#[derive(Debug, Default)]
pub(crate) struct FeedCounters {
    /// Engine subscriptions made again (after a reconnect or a lapse):
    /// Momento's reconnects, NATS's resumes, Redis's resyncs.
    pub(crate) restarts: AtomicU64,
    /// Repeated deliveries dropped.
    pub(crate) duplicates: AtomicU64,
    /// Gaps announced to subscribers.
    pub(crate) gaps: AtomicU64,
}

/// Whether a new feed has its engine subscription yet.
#[derive(Debug, Clone)]
pub(crate) enum Establishing {
    /// Being set up.
    Pending,
    /// Live: every message published from now on is delivered.
    Live,
    /// Could not be set up; the message says why.
    Failed(String),
}

struct Feed {
    id: u64,
    sender: broadcast::Sender<Delivery>,
    state: watch::Receiver<Establishing>,
    /// Dropped (with the feed) to end the feed.
    _stop: DropGuard,
}

/// What a backend's driver gets when its topic's first subscriber starts it.
pub(crate) struct FeedStart {
    /// The feed's id (a later feed of the same topic has another).
    pub(crate) id: u64,
    /// Where the driver sends deliveries.
    pub(crate) sender: broadcast::Sender<Delivery>,
    /// Where the driver says whether its engine subscription is live.
    pub(crate) state: watch::Sender<Establishing>,
    /// Cancelled when the last subscriber has left, the feed was removed,
    /// or the registry's own token was cancelled.
    pub(crate) stop: CancellationToken,
    /// The registry, to [`Feeds::remove`] the feed when it gives up.
    pub(crate) feeds: Weak<Feeds>,
}

/// The feeds of one transport, by topic.
#[derive(Default)]
pub(crate) struct Feeds {
    // A std mutex: held for a map operation, never across an `.await`.
    by_topic: Mutex<HashMap<String, Feed>>,
    next_id: AtomicU64,
    /// Every feed's stop is a child of it.
    stop: CancellationToken,
}

impl Feeds {
    /// A registry whose feeds all stop when `stop` is cancelled.
    #[cfg(feature = "momento")]
    pub(crate) fn stopped_by(stop: CancellationToken) -> Self {
        Self {
            stop,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Feed>> {
        self.by_topic.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Local subscribers of `topic`.
    pub(crate) fn local_subscribers(&self, topic: &str) -> usize {
        self.lock()
            .get(topic)
            .map_or(0, |feed| feed.sender.receiver_count())
    }

    /// Forgets the feed `id` of `topic` (not a newer one of the same topic).
    pub(crate) fn remove(&self, topic: &str, id: u64) {
        let mut feeds = self.lock();
        if feeds.get(topic).is_some_and(|feed| feed.id == id) {
            feeds.remove(topic);
        }
    }

    /// A local subscription to `topic` of `backend`, buffering `buffer`
    /// deliveries; when it is the topic's first, `start` spawns the feed's
    /// driver. Returns once the driver said its engine subscription is live,
    /// so every message published afterwards is received.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the driver failed to set it up.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        backend: &'static str,
        topic: &str,
        buffer: usize,
        start: impl FnOnce(FeedStart),
    ) -> Result<Subscription, Error> {
        let (id, receiver, mut state) = {
            let mut feeds = self.lock();
            match feeds.get(topic) {
                Some(feed) => (feed.id, feed.sender.subscribe(), feed.state.clone()),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (sender, receiver) = broadcast::channel(buffer);
                    let (state_tx, state) = watch::channel(Establishing::Pending);
                    let stop = self.stop.child_token();
                    feeds.insert(
                        topic.to_owned(),
                        Feed {
                            id,
                            sender: sender.clone(),
                            state: state.clone(),
                            _stop: stop.clone().drop_guard(),
                        },
                    );
                    start(FeedStart {
                        id,
                        sender,
                        state: state_tx,
                        stop,
                        feeds: Arc::downgrade(self),
                    });
                    (id, receiver, state)
                }
            }
        };
        // Built first, so a failed or cancelled wait unsubscribes.
        let (feeds, topic_name) = (Arc::downgrade(self), topic.to_owned());
        let leave = move || {
            let Some(feeds) = feeds.upgrade() else {
                return;
            };
            let mut by_topic = feeds.lock();
            let last = by_topic
                .get(&topic_name)
                // Our own receiver is still alive while it leaves.
                .is_some_and(|feed| feed.id == id && feed.sender.receiver_count() <= 1);
            if last {
                by_topic.remove(&topic_name);
            }
        };
        let subscription = LocalReader::new(receiver, std::convert::identity, leave);
        let established = state
            .wait_for(|s| !matches!(s, Establishing::Pending))
            .await
            .map(|s| s.clone());
        match established {
            Ok(Establishing::Live) => Ok(Subscription::new(subscription)),
            Ok(Establishing::Failed(message)) => Err(Error::Unavailable { backend, message }),
            _ => Err(Error::Unavailable {
                backend,
                message: format!("the subscription to {topic} ended while it was being set up"),
            }),
        }
    }
}
