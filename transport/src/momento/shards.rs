//! Many topics over a few Momento topics.
//!
//! A hosted Momento connection carries at most 100 subscriptions, and every
//! subscription is a stream the service holds open. Topics that are many
//! and quiet (one `orders.<subject>` per trading subject) therefore travel
//! over a fixed number of shard topics, `shard.<prefix><n>`: a publish to
//! `orders.alice` goes to the shard that `alice`'s topic hashes to, wrapped
//! in an envelope naming it; each process holds one Momento subscription
//! per shard it needs and hands each message to the local subscribers of
//! the topic its envelope names. So the subscriptions a process holds are
//! bounded by the shard count, whatever the number of subjects.
//!
//! Every process must use the same prefix and shard count: the hash
//! (FNV-1a) is fixed, so processes agree without talking to each other. A
//! gap on a shard (a reconnect, a lag) is a gap for every topic of it: the
//! messages missed may have been any of them.
//!
//! The rates board (`board`) travels the same way in the other direction:
//! one Momento topic whose messages each carry the latest payloads of
//! several topics (`rates.<SYMBOL>`), dispatched here to each topic's local
//! subscribers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::feed::{self, FeedContext};
use crate::feeds::Feeds;
use crate::{Delivery, Error, Subscription, local::LocalReader};

/// Envelope format of a sharded message: one topic and its payload.
const VERSION: u8 = 1;

/// Envelope format of a board message: records of a topic and a payload.
pub(super) const BOARD_VERSION: u8 = 2;

/// The hub key of the board (shards are numbered below it).
const BOARD: u16 = u16::MAX;

/// Bytes an envelope adds to a payload besides the topic name: the version
/// and the topic's length.
const HEADER: usize = 3;

/// Messages held for a local subscriber of one sharded topic. Such topics
/// are quiet; a subscriber this far behind gets a gap.
const TOPIC_BUFFER: usize = 64;

/// Which topics are sharded, and over how many shard topics.
#[derive(Debug)]
pub(super) struct Shards {
    prefix: String,
    count: u16,
    /// Topics starting with the first travel on the board topic, the second.
    board: Option<(String, String)>,
    hubs: Mutex<HashMap<u16, Arc<Hub>>>,
}

/// One shard's Momento subscription, dispatched to its topics' local
/// subscribers.
#[derive(Debug)]
struct Hub {
    /// The local senders of the topics subscribed to on this shard.
    topics: Mutex<HashMap<String, broadcast::Sender<Delivery>>>,
    /// Ends the dispatching task (and with it the shard's subscription).
    stop: CancellationToken,
}

impl Hub {
    fn topics(&self) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Delivery>>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shards {
    /// Topics starting with `prefix` over `count` shards; none when `count`
    /// is zero or `prefix` empty.
    pub(super) fn new(prefix: &str, count: u16) -> Self {
        Self {
            prefix: prefix.to_owned(),
            count,
            board: None,
            hubs: Mutex::default(),
        }
    }

    /// Topics starting with `prefix` are received from the board `topic`.
    pub(super) fn with_board(mut self, prefix: &str, topic: &str) -> Self {
        self.board = Some((prefix.to_owned(), topic.to_owned()));
        self
    }

    /// Whether `topic` is received from the board.
    pub(super) fn on_board(&self, topic: &str) -> bool {
        self.board
            .as_ref()
            .is_some_and(|(prefix, _)| topic.starts_with(prefix.as_str()))
    }

    /// The hub key and Momento topic `topic` is received from, if shared.
    fn route(&self, topic: &str) -> Option<(u16, String)> {
        if let Some((_, board)) = self.board.as_ref().filter(|_| self.on_board(topic)) {
            return Some((BOARD, board.clone()));
        }
        self.covers(topic).then(|| {
            let index = self.shard_of(topic);
            (index, self.shard_topic(index))
        })
    }

    /// Whether `topic` is received over a shared Momento topic (a shard or
    /// the board).
    pub(super) fn shared(&self, topic: &str) -> bool {
        self.on_board(topic) || self.covers(topic)
    }

    fn hubs(&self) -> MutexGuard<'_, HashMap<u16, Arc<Hub>>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `topic` travels over a shard.
    pub(super) fn covers(&self, topic: &str) -> bool {
        self.count > 0 && !self.prefix.is_empty() && topic.starts_with(&self.prefix)
    }

    /// The shard of `topic` (FNV-1a of its name).
    fn shard_of(&self, topic: &str) -> u16 {
        let hash = topic.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
        // The remainder is below `count`, a u16.
        u16::try_from(hash % u32::from(self.count)).unwrap_or(0)
    }

    /// The Momento topic of shard `index`.
    fn shard_topic(&self, index: u16) -> String {
        format!("shard.{}{index}", self.prefix)
    }

    /// The Momento topic and the envelope carrying `payload` for `topic`.
    pub(super) fn wrap(&self, topic: &str, payload: &[u8]) -> (String, Bytes) {
        let mut envelope = BytesMut::with_capacity(HEADER + topic.len() + payload.len());
        envelope.put_u8(VERSION);
        // Topic names are at most 256 bytes (`validate_topic`).
        envelope.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
        envelope.put_slice(topic.as_bytes());
        envelope.put_slice(payload);
        (self.shard_topic(self.shard_of(topic)), envelope.freeze())
    }

    /// How many bytes the envelope of `topic` adds.
    pub(super) fn overhead(topic: &str) -> usize {
        HEADER + topic.len()
    }

    /// Local subscribers of the sharded `topic`.
    pub(super) fn local_subscribers(&self, topic: &str) -> usize {
        let Some((index, _)) = self.route(topic) else {
            return 0;
        };
        let hub = self.hubs().get(&index).cloned();
        hub.and_then(|hub| {
            hub.topics()
                .get(topic)
                .map(broadcast::Sender::receiver_count)
        })
        .unwrap_or(0)
    }

    /// A local subscription to the sharded `topic`, subscribing to its shard
    /// first if no local subscriber holds it yet.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the shard cannot be subscribed to.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        feeds: &Arc<Feeds>,
        context: &FeedContext,
        topic: &str,
    ) -> Result<Subscription, Error> {
        let Some((index, shared)) = self.route(topic) else {
            return feed::subscribe(feeds, context, topic).await;
        };
        let existing = self.hubs().get(&index).cloned();
        let hub = match existing {
            Some(hub) => hub,
            None => {
                // Subscribed outside the lock; a racing subscriber may have
                // started the hub meanwhile, and then ours is dropped.
                let shard = feed::subscribe(feeds, context, &shared).await?;
                let mut hubs = self.hubs();
                match hubs.get(&index) {
                    Some(hub) => Arc::clone(hub),
                    None => {
                        let hub = Arc::new(Hub {
                            topics: Mutex::default(),
                            stop: context.stop.child_token(),
                        });
                        hubs.insert(index, Arc::clone(&hub));
                        tokio::spawn(dispatch(shard, Arc::downgrade(self), index, hub.clone()));
                        hub
                    }
                }
            }
        };
        // Registered under the hubs lock, so a hub being retired by its last
        // leaving subscriber is never joined.
        let receiver = {
            let hubs = self.hubs();
            match hubs.get(&index) {
                Some(live) if Arc::ptr_eq(live, &hub) => Some(
                    hub.topics()
                        .entry(topic.to_owned())
                        .or_insert_with(|| broadcast::channel(TOPIC_BUFFER).0)
                        .subscribe(),
                ),
                _ => None,
            }
        };
        // Retired between the two locks: start over.
        let Some(receiver) = receiver else {
            return Box::pin(self.subscribe(feeds, context, topic)).await;
        };
        let (shards, name) = (Arc::downgrade(self), topic.to_owned());
        let leave = move || {
            if let Some(shards) = shards.upgrade() {
                shards.leave(index, &name);
            }
        };
        Ok(Subscription::new(LocalReader::new(
            receiver,
            std::convert::identity,
            leave,
        )))
    }

    /// A local subscriber of `topic` on shard `index` leaves (its receiver
    /// still alive); the last one of a shard retires the shard's hub.
    fn leave(&self, index: u16, topic: &str) {
        let mut hubs = self.hubs();
        let Some(hub) = hubs.get(&index).cloned() else {
            return;
        };
        let mut topics = hub.topics();
        if topics
            .get(topic)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            topics.remove(topic);
        }
        if topics.is_empty() {
            hubs.remove(&index);
            hub.stop.cancel();
        }
    }
}

/// Reads shard `index`'s subscription and hands each message to the local
/// subscribers of the topic its envelope names, until the hub is retired
/// or the transport ends (then the topics' streams end too).
async fn dispatch(mut shard: Subscription, shards: Weak<Shards>, index: u16, hub: Arc<Hub>) {
    loop {
        let delivery = tokio::select! {
            () = hub.stop.cancelled() => return,
            delivery = shard.next() => delivery,
        };
        match delivery {
            Some(Delivery::Message(envelope)) => match records(&envelope) {
                Some(records) => {
                    let topics = hub.topics();
                    for (topic, payload) in records {
                        if let Some(sender) = topics.get(topic) {
                            let _ = sender.send(Delivery::Message(payload));
                        }
                    }
                }
                None => tracing::warn!(
                    shard = index,
                    bytes = envelope.len(),
                    "momento: dropped a sharded message that is not an fxcast envelope"
                ),
            },
            Some(Delivery::Gap(gap)) => {
                for sender in hub.topics().values() {
                    let _ = sender.send(Delivery::Gap(gap));
                }
            }
            None => break,
        }
    }
    // The transport ended: so do the topics' streams.
    if let Some(shards) = shards.upgrade() {
        let mut hubs = shards.hubs();
        if hubs.get(&index).is_some_and(|live| Arc::ptr_eq(live, &hub)) {
            hubs.remove(&index);
        }
    }
    hub.topics().clear();
}

/// The topics and payloads of an envelope; `None` when it is not one.
pub(super) fn records(envelope: &Bytes) -> Option<Vec<(&str, Bytes)>> {
    let (&version, rest) = envelope.split_first()?;
    match version {
        VERSION => {
            let (topic, at) = name(rest, 1)?;
            Some(vec![(topic, envelope.slice(at..))])
        }
        BOARD_VERSION => {
            let mut records = Vec::new();
            let mut at = 1;
            while at < envelope.len() {
                let (topic, start) = name(&envelope[at..], at)?;
                let len = usize::from(u16::from_be_bytes(
                    envelope.get(start..start + 2)?.try_into().ok()?,
                ));
                let end = start + 2 + len;
                if end > envelope.len() {
                    return None;
                }
                records.push((topic, envelope.slice(start + 2..end)));
                at = end;
            }
            Some(records)
        }
        _ => None,
    }
}

/// The length-prefixed topic name at the start of `bytes` (which begin at
/// `offset` of the envelope), and the envelope offset just past it.
fn name(bytes: &[u8], offset: usize) -> Option<(&str, usize)> {
    let len = usize::from(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?));
    let topic = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((topic, offset + 2 + len))
}

/// Appends one board record (`topic`, `payload`) to `board`.
pub(super) fn put_record(board: &mut BytesMut, topic: &str, payload: &[u8]) {
    // Topics are at most 256 bytes, payloads at most 4 KiB.
    board.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    board.put_slice(topic.as_bytes());
    board.put_u16(u16::try_from(payload.len()).unwrap_or(u16::MAX));
    board.put_slice(payload);
}

/// Bytes a board record of `topic` and `payload` takes.
pub(super) fn record_len(topic: &str, payload: &[u8]) -> usize {
    4 + topic.len() + payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_strangers_are_refused() {
        let shards = Shards::new("orders.", 16);
        let (shard, envelope) = shards.wrap("orders.alice", b"event");
        assert!(shard.starts_with("shard.orders."), "{shard}");
        assert_eq!(envelope.len(), Shards::overhead("orders.alice") + 5);
        let opened = records(&envelope).unwrap();
        assert_eq!(opened, [("orders.alice", Bytes::from_static(b"event"))]);
        let mut board = BytesMut::from(&[BOARD_VERSION][..]);
        put_record(&mut board, "rates.A", b"1");
        put_record(&mut board, "rates.BB", b"");
        assert_eq!(
            board.len(),
            1 + record_len("rates.A", b"1") + record_len("rates.BB", b"")
        );
        let board = board.freeze();
        assert_eq!(
            records(&board).unwrap(),
            [
                ("rates.A", Bytes::from_static(b"1")),
                ("rates.BB", Bytes::new())
            ]
        );
        assert!(records(&board.slice(..board.len() - 1)).is_none());
        assert!(records(&Bytes::from_static(b"")).is_none());
        assert!(records(&Bytes::from_static(b"\x02\x00\x01a")).is_none());
        assert!(records(&Bytes::from_static(b"\x01\x00\x09short")).is_none());
    }

    #[test]
    fn topics_spread_over_every_shard_and_always_land_on_the_same_one() {
        let shards = Shards::new("orders.", 16);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let topic = format!("orders.subject-{i}");
            let (first, _) = shards.wrap(&topic, b"");
            let (again, _) = shards.wrap(&topic, b"x");
            assert_eq!(first, again);
            seen.insert(first);
        }
        assert_eq!(seen.len(), 16);
        assert!(shards.covers("orders.x"));
        assert!(!shards.covers("rates.USD_JPY"));
        assert!(!Shards::new("orders.", 0).covers("orders.x"));
    }
}
