//! One pub/sub channel per topic per process, fanned out locally, resumed
//! from the topic's stream.
//!
//! A topic's *feed* is a task that holds the topic's subscription on the
//! link's pub/sub connection and a `tokio::sync::broadcast` ring every
//! local [`Subscription`] of the topic reads, as in the other backends: a
//! payload is stored once, a slow local reader is told
//! `Gap { cause: Lagged }` and memory stays bounded. The last local
//! subscription to go ends the feed and unsubscribes the channel.
//!
//! Every message carries the id of its entry in the topic's stream (the
//! publish script appends it and publishes `<id> <payload>` atomically),
//! and the feed keeps the id of the last message it delivered, its
//! *cursor*:
//! - **live**: a message from the current connection with an id past the
//!   cursor is delivered; one at or before it is a repeat and dropped;
//! - **resync**: after the link reconnected (or the feed's inbox
//!   overflowed), the feed reads the stream from just after the cursor
//!   and delivers what it missed, in order, before any newer live message
//!   (live messages the resync read are dropped as repeats). Messages of
//!   an older connection are dropped unread: the resync covers them;
//! - **gaps**: the stream keeps about `history` entries per topic
//!   (`MAXLEN ~`), and Redis records the newest id it ever trimmed
//!   (`max-deleted-entry-id`, Redis 7). If that is past the cursor,
//!   messages after the cursor are gone: a
//!   `Gap { missed: None, cause: Reconnected }` comes before the rest.
//!   When the server restarted (its `run_id` changed), the stream must
//!   also prove it is the one the cursor came from (the cursor's entry is
//!   still there, or was trimmed); a stream lost with an unpersisted
//!   server, or rebuilt without the cursor, is a gap too, never silent.
//!   Each page of the resync is read with the trim state in one script
//!   call, so a trim racing the resync is caught as well.
//!
//! [`Subscription`]: crate::Subscription

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use redis::{Script, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{
    BACKEND,
    link::{Connection, FeedEvent, FeedInbox, LinkHandle, StreamId},
};
use crate::{
    Backoff, BackoffPolicy, Delivery, Error, Gap, GapCause, Subscription, health::HealthBoard,
    local::LocalReader,
};

/// Stream entries read per script call while resyncing.
const PAGE: usize = 512;

/// Reads the stream's trim state and, when `ARGV[2]` is positive, up to
/// that many entries after the exclusive start `ARGV[1]`, in one atomic
/// step. `{0}` when the stream does not exist, else `{1, last generated
/// id, newest trimmed id, first id or '', entries}`.
const READ_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local fields = {}
for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
local first = ''
if fields['first-entry'] then first = fields['first-entry'][1] end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {1, fields['last-generated-id'], fields['max-deleted-entry-id'], first, entries}
";

/// What every feed needs. Holds no reference to the transport, so feeds
/// do not keep it alive.
#[derive(Clone)]
pub(super) struct FeedContext {
    pub(super) link: LinkHandle,
    /// Put before a topic to make its channel and keys.
    pub(super) prefix: String,
    pub(super) buffer: usize,
    pub(super) reconnect: BackoffPolicy,
    pub(super) health: HealthBoard,
    pub(super) read: Arc<Script>,
    pub(super) counters: Arc<FeedCounters>,
}

impl FeedContext {
    pub(super) fn new_read_script() -> Script {
        Script::new(READ_SCRIPT)
    }
}

/// What the feeds of one transport have seen.
#[derive(Debug, Default)]
pub(super) struct FeedCounters {
    pub(super) resyncs: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) gaps: AtomicU64,
}

/// Whether a new feed is subscribed yet.
#[derive(Debug, Clone)]
enum Establishing {
    Pending,
    Live,
    Failed(String),
}

struct Feed {
    id: u64,
    sender: broadcast::Sender<Delivery>,
    state: watch::Receiver<Establishing>,
    /// Dropped to end the feed.
    _stop: oneshot::Sender<()>,
}

/// The feeds of one transport, by topic.
#[derive(Default)]
pub(super) struct Feeds {
    // A std mutex: held for a map operation, never across an `.await`.
    by_topic: Mutex<HashMap<String, Feed>>,
    next_id: AtomicU64,
}

impl Feeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Feed>> {
        self.by_topic.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn local_subscribers(&self, topic: &str) -> usize {
        self.lock()
            .get(topic)
            .map_or(0, |feed| feed.sender.receiver_count())
    }

    /// Forgets the feed `id` of `topic` (not a newer one of the same topic).
    fn remove(&self, topic: &str, id: u64) {
        let mut feeds = self.lock();
        if feeds.get(topic).is_some_and(|feed| feed.id == id) {
            feeds.remove(topic);
        }
    }

    /// A local subscription to `topic`, starting the topic's feed if this
    /// is its first. Returns once the server confirmed the channel's
    /// subscription and the feed knows where the stream stands, so every
    /// message published afterwards is received.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the channel cannot be subscribed.
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        context: &FeedContext,
        topic: &str,
    ) -> Result<Subscription, Error> {
        let (id, receiver, mut state) = {
            let mut feeds = self.lock();
            match feeds.get(topic) {
                Some(feed) => (feed.id, feed.sender.subscribe(), feed.state.clone()),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (sender, receiver) = broadcast::channel(context.buffer);
                    let (state_tx, state) = watch::channel(Establishing::Pending);
                    let (stop_tx, stop) = oneshot::channel();
                    feeds.insert(
                        topic.to_owned(),
                        Feed {
                            id,
                            sender: sender.clone(),
                            state: state.clone(),
                            _stop: stop_tx,
                        },
                    );
                    let driver = Driver {
                        channel: format!("{}{topic}", context.prefix),
                        stream: super::stream_key(&context.prefix, topic),
                        context: context.clone(),
                        topic: topic.to_owned(),
                        sender,
                        id,
                        overflowed: Arc::default(),
                        announced: None,
                    };
                    tokio::spawn(driver.run(stop, state_tx, Arc::downgrade(self)));
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
            Ok(Establishing::Failed(message)) => Err(Error::Unavailable {
                backend: BACKEND,
                message,
            }),
            _ => Err(Error::Unavailable {
                backend: BACKEND,
                message: format!("the subscription to {topic} ended while it was being set up"),
            }),
        }
    }
}

/// Where a feed is in its stream.
#[derive(Debug, Clone)]
struct Position {
    /// The id of the last message delivered, or the stream's last id when
    /// the feed began ([`StreamId::ZERO`] if it had none).
    cursor: StreamId,
    /// The connection the cursor was last brought up to date on.
    generation: u64,
    /// The server process that connection reached.
    run_id: Arc<str>,
}

/// One call of the read script.
enum Read {
    Missing,
    Present {
        last: StreamId,
        max_deleted: StreamId,
        first: Option<StreamId>,
        entries: Vec<(StreamId, Bytes)>,
    },
}

/// Why a resync did not happen.
enum Unsynced {
    /// The link is reconnecting; it asks for a resync once it is back.
    NotConnected,
    /// The feed is ending.
    Stopped,
}

struct Driver {
    context: FeedContext,
    topic: String,
    channel: String,
    stream: String,
    sender: broadcast::Sender<Delivery>,
    id: u64,
    overflowed: Arc<AtomicBool>,
    /// The cursor at the last gap announced: resyncing again before
    /// anything was delivered is the same gap, announced once.
    announced: Option<StreamId>,
}

impl Driver {
    async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        state: watch::Sender<Establishing>,
        feeds: Weak<Feeds>,
    ) {
        let (inbox_tx, mut inbox) = mpsc::channel(self.context.buffer);
        let established = tokio::select! {
            _ = &mut stop => None,
            established = self.establish(inbox_tx) => Some(established),
        };
        let mut position = match established {
            Some(Ok(position)) => {
                state.send_replace(Establishing::Live);
                position
            }
            Some(Err(message)) => {
                state.send_replace(Establishing::Failed(message));
                if let Some(feeds) = feeds.upgrade() {
                    feeds.remove(&self.topic, self.id);
                }
                self.context.link.unsubscribe(self.channel.clone(), self.id);
                return;
            }
            None => {
                self.context.link.unsubscribe(self.channel.clone(), self.id);
                return;
            }
        };
        loop {
            let event = tokio::select! {
                _ = &mut stop => break,
                event = inbox.recv() => event,
            };
            let Some(event) = event else { break };
            let resync = match event {
                FeedEvent::Resync => true,
                _ if self.overflowed.load(Ordering::Acquire) => true,
                FeedEvent::Live { generation, .. } if generation < position.generation => continue,
                FeedEvent::Live { generation, .. } if generation > position.generation => true,
                FeedEvent::Live { id, payload, .. } => {
                    if id <= position.cursor {
                        self.context
                            .counters
                            .duplicates
                            .fetch_add(1, Ordering::Relaxed);
                    } else {
                        position.cursor = id;
                        let _ = self.sender.send(Delivery::Message(payload));
                    }
                    false
                }
            };
            if resync {
                match self.resync(&mut position, &mut stop).await {
                    Ok(()) | Err(Unsynced::NotConnected) => {}
                    Err(Unsynced::Stopped) => break,
                }
            }
        }
        self.context.link.unsubscribe(self.channel.clone(), self.id);
    }

    /// Subscribes the channel, then reads where the stream stands: what
    /// is published from then on has a later id and is delivered.
    async fn establish(&self, inbox: mpsc::Sender<FeedEvent>) -> Result<Position, String> {
        let inbox = FeedInbox {
            id: self.id,
            sender: inbox,
            overflowed: Arc::clone(&self.overflowed),
        };
        self.context
            .link
            .subscribe(self.channel.clone(), inbox)
            .await?;
        let connection = self.context.link.connection().map_err(|e| e.to_string())?;
        let cursor = match self.read(&connection, StreamId::ZERO, 0).await? {
            Read::Missing => StreamId::ZERO,
            Read::Present { last, .. } => last,
        };
        Ok(Position {
            cursor,
            generation: connection.generation,
            run_id: connection.run_id,
        })
    }

    /// One call of the read script.
    async fn read(
        &self,
        connection: &Connection,
        after: StreamId,
        count: usize,
    ) -> Result<Read, String> {
        let mut commands = connection.commands.clone();
        let reply = self
            .context
            .read
            .key(&self.stream)
            .arg(format!("({after}"))
            .arg(count)
            .invoke_async::<Value>(&mut commands)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                let message = format!("read the stream of {}: {e}", self.topic);
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.context
                        .link
                        .failed(connection.generation, message.clone());
                }
                return Err(message);
            }
        };
        parse_read(reply).ok_or_else(|| {
            format!(
                "read the stream of {}: an unexpected reply (is {} a stream fxcast wrote?)",
                self.topic, self.stream
            )
        })
    }

    /// Brings the cursor up to the stream's end on the current connection:
    /// delivers what the stream holds after it, after a gap if it no
    /// longer holds everything. Retries with backoff while the connection
    /// is up but the reads fail.
    async fn resync(
        &mut self,
        position: &mut Position,
        stop: &mut oneshot::Receiver<()>,
    ) -> Result<(), Unsynced> {
        let key = format!("subscription to {}", self.topic);
        let mut backoff = Backoff::new(self.context.reconnect);
        loop {
            // Cleared first: anything dropped from now on is read below.
            self.overflowed.store(false, Ordering::Release);
            let Ok(connection) = self.context.link.connection() else {
                return Err(Unsynced::NotConnected);
            };
            match self.catch_up(position, &connection).await {
                Ok(()) => {
                    self.context
                        .counters
                        .resyncs
                        .fetch_add(1, Ordering::Relaxed);
                    self.context.health.recover(&key);
                    return Ok(());
                }
                Err(message) => {
                    tracing::warn!(topic = %self.topic, %message, "redis stream not read; retrying");
                    self.context.health.fail(&key, message);
                    tokio::select! {
                        _ = &mut *stop => return Err(Unsynced::Stopped),
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    async fn catch_up(
        &mut self,
        position: &mut Position,
        connection: &Connection,
    ) -> Result<(), String> {
        let same_server = connection.run_id == position.run_id;
        loop {
            let cursor = position.cursor;
            let read = self.read(connection, cursor, PAGE).await?;
            let (lost, entries) = match read {
                // A stream that had entries is gone, or the server
                // restarted and may have lost some.
                Read::Missing => (cursor != StreamId::ZERO || !same_server, Vec::new()),
                Read::Present {
                    max_deleted,
                    first,
                    entries,
                    ..
                } => {
                    let same_stream = same_server
                        || first.is_some_and(|first| first <= cursor)
                        || (cursor != StreamId::ZERO && max_deleted >= cursor);
                    (!same_stream || max_deleted > cursor, entries)
                }
            };
            if lost && self.announced != Some(cursor) {
                self.announced = Some(cursor);
                let gap = Gap {
                    missed: None,
                    cause: GapCause::Reconnected,
                };
                self.context.counters.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %self.topic, %gap, %cursor, "redis stream no longer holds every message since the last one delivered");
                let _ = self.sender.send(Delivery::Gap(gap));
            }
            let full = entries.len() == PAGE;
            for (id, payload) in entries {
                if id > position.cursor {
                    position.cursor = id;
                    let _ = self.sender.send(Delivery::Message(payload));
                }
            }
            if !full {
                break;
            }
        }
        position.generation = connection.generation;
        position.run_id = Arc::clone(&connection.run_id);
        Ok(())
    }
}

fn parse_read(reply: Value) -> Option<Read> {
    let Value::Array(mut items) = reply else {
        return None;
    };
    if items.first() == Some(&Value::Int(0)) {
        return Some(Read::Missing);
    }
    if items.len() != 5 {
        return None;
    }
    let entries = items.pop()?;
    let first = items.pop()?;
    let max_deleted = items.pop()?;
    let last = items.pop()?;
    let id = |value: &Value| match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    };
    let first = match &first {
        Value::BulkString(bytes) if bytes.is_empty() => None,
        other => Some(id(other)?),
    };
    let Value::Array(entries) = entries else {
        return None;
    };
    let entries = entries
        .into_iter()
        .map(|entry| {
            let Value::Array(mut parts) = entry else {
                return None;
            };
            let Value::Array(fields) = parts.pop()? else {
                return None;
            };
            let entry_id = id(parts.first()?)?;
            // The fields are `p <payload>`.
            let mut fields = fields.into_iter();
            let payload = match (fields.next()?, fields.next()?) {
                (_, Value::BulkString(payload)) => Bytes::from(payload),
                _ => return None,
            };
            Some((entry_id, payload))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Read::Present {
        last: id(&last)?,
        max_deleted: id(&max_deleted)?,
        first,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn read_replies_are_parsed() {
        assert!(matches!(
            parse_read(Value::Array(vec![Value::Int(0)])),
            Some(Read::Missing)
        ));
        let reply = Value::Array(vec![
            Value::Int(1),
            bulk(b"5-1"),
            bulk(b"2-0"),
            bulk(b"3-0"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-1"),
                Value::Array(vec![bulk(b"p"), bulk(b"\x00payload")]),
            ])]),
        ]);
        let Some(Read::Present {
            last,
            max_deleted,
            first,
            entries,
        }) = parse_read(reply)
        else {
            panic!("not parsed");
        };
        assert_eq!(last, StreamId { ms: 5, seq: 1 });
        assert_eq!(max_deleted, StreamId { ms: 2, seq: 0 });
        assert_eq!(first, Some(StreamId { ms: 3, seq: 0 }));
        assert_eq!(
            entries,
            vec![(
                StreamId { ms: 5, seq: 1 },
                Bytes::from_static(b"\x00payload")
            )]
        );
        assert!(parse_read(Value::Nil).is_none());
    }
}
