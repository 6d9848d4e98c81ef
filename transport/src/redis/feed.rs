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
//! publish script appends it and publishes `<id> <payload>` atomically).
//! An id is `<epoch>-<n>`: the epoch names the stream's incarnation (set
//! when the stream is created, new if it is ever lost and created again)
//! and `n` counts its entries from 0, so the feed knows which id comes
//! next and can tell a repeat, a hole and a different stream apart:
//! - **live**: the next id of the current connection is delivered; an
//!   earlier one is a repeat and dropped; anything else (a later one, an
//!   other epoch, a message of a newer connection, an overflowed inbox)
//!   makes the feed resync first. Messages of an older connection are
//!   dropped unread: the resync covers them;
//! - **resync**: after the link reconnected (or whenever continuity is in
//!   doubt), the feed reads the stream from the id it expects next and
//!   delivers what it missed, in order, before any newer live message
//!   (live messages the resync read are dropped as repeats);
//! - **gaps**: the stream keeps about `history` entries per topic
//!   (`MAXLEN ~`) and drops the oldest first, so entries it no longer
//!   holds show as a hole in `n`: a `Gap { missed: Some(k), cause:
//!   Reconnected }` says exactly how many before the rest. A stream that
//!   is gone, or of another epoch (the server lost it, e.g. restarted
//!   without persistence), is `Gap { missed: None, .. }`: what it held
//!   is unknown. When the server restarted (its `run_id` changed), a feed
//!   that had seen no stream yet cannot prove nothing was lost either,
//!   and says so. Never silent.
//!
//! [`Subscription`]: crate::Subscription

use std::sync::{
    Arc, Weak,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use redis::{Script, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    BACKEND,
    link::{Connection, FeedEvent, FeedInbox, LinkHandle, StreamId},
};
use crate::{
    Backoff, BackoffPolicy, Delivery, Error, Gap, GapCause, Subscription,
    feeds::{Establishing, FeedCounters, Feeds},
    health::HealthBoard,
};

/// Stream entries read per script call while resyncing.
const PAGE: usize = 512;

/// The stream's last id and, when `ARGV[2]` is positive, up to that many
/// entries from the start `ARGV[1]` (`-`, or an id, inclusive), in one
/// atomic step. `{0}` when the stream does not exist, else
/// `{1, last generated id, entries}`.
const READ_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = ''
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {1, last, entries}
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

/// A local subscription to `topic`, starting the topic's feed if this is
/// its first. Returns once the server confirmed the channel's subscription
/// and the feed knows where the stream stands, so every message published
/// afterwards is received.
///
/// # Errors
/// [`Error::Unavailable`] when the channel cannot be subscribed.
pub(super) async fn subscribe(
    feeds: &Arc<Feeds>,
    context: &FeedContext,
    topic: &str,
) -> Result<Subscription, Error> {
    feeds
        .subscribe(BACKEND, topic, context.buffer, |start| {
            let driver = Driver {
                channel: format!("{}{topic}", context.prefix),
                stream: super::stream_key(&context.prefix, topic),
                context: context.clone(),
                topic: topic.to_owned(),
                sender: start.sender,
                id: start.id,
                overflowed: Arc::default(),
            };
            tokio::spawn(driver.run(start.stop, start.state, start.feeds));
        })
        .await
}

/// Where a feed is in its stream.
#[derive(Debug, Clone)]
struct Position {
    /// The epoch of the stream the feed reads; 0 while there was none.
    epoch: u64,
    /// The `n` of the entry the feed delivers next.
    next: u64,
    /// The connection the position was last brought up to date on.
    generation: u64,
    /// The server process that connection reached.
    run_id: Arc<str>,
}

impl Position {
    /// Where reading resumes: the expected entry, or the stream's start.
    fn start(&self) -> String {
        if self.epoch == 0 {
            "-".to_owned()
        } else {
            StreamId {
                ms: self.epoch,
                seq: self.next,
            }
            .to_string()
        }
    }
}

/// One call of the read script.
enum Read {
    Missing,
    Present {
        last: StreamId,
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
}

impl Driver {
    async fn run(
        mut self,
        stop: CancellationToken,
        state: watch::Sender<Establishing>,
        feeds: Weak<Feeds>,
    ) {
        let (inbox_tx, mut inbox) = mpsc::channel(self.context.buffer);
        let established = tokio::select! {
            () = stop.cancelled() => None,
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
                () = stop.cancelled() => break,
                event = inbox.recv() => event,
            };
            let Some(event) = event else { break };
            let resync = match event {
                FeedEvent::Resync => true,
                _ if self.overflowed.load(Ordering::Acquire) => true,
                FeedEvent::Live { generation, .. } if generation < position.generation => continue,
                FeedEvent::Live { generation, .. } if generation > position.generation => true,
                FeedEvent::Live { id, payload, .. } => {
                    // A stream created after the feed began starts at 0.
                    let first_of_new_stream = position.epoch == 0 && id.seq == 0;
                    if first_of_new_stream || (id.ms == position.epoch && id.seq == position.next) {
                        position.epoch = id.ms;
                        position.next = id.seq + 1;
                        let _ = self.sender.send(Delivery::Message(payload));
                        false
                    } else if id.ms == position.epoch && id.seq < position.next {
                        self.context
                            .counters
                            .duplicates
                            .fetch_add(1, Ordering::Relaxed);
                        false
                    } else {
                        true
                    }
                }
            };
            if resync {
                match self.resync(&mut position, &stop).await {
                    Ok(()) | Err(Unsynced::NotConnected) => {}
                    Err(Unsynced::Stopped) => break,
                }
            }
        }
        self.context.link.unsubscribe(self.channel.clone(), self.id);
        // A feed that ends while its reads fail takes its failure along.
        self.context
            .health
            .recover(&format!("subscription to {}", self.topic));
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
        let (epoch, next) = match self.read(&connection, "-", 0).await? {
            Read::Missing => (0, 0),
            Read::Present { last, .. } => (last.ms, last.seq + 1),
        };
        Ok(Position {
            epoch,
            next,
            generation: connection.generation,
            run_id: connection.run_id,
        })
    }

    /// One call of the read script.
    async fn read(
        &self,
        connection: &Connection,
        start: &str,
        count: usize,
    ) -> Result<Read, String> {
        let mut commands = connection.commands.clone();
        let reply = self
            .context
            .read
            .key(&self.stream)
            .arg(start)
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

    /// Brings the position up to the stream's end on the current
    /// connection: delivers what the stream holds from the expected entry
    /// on, after a gap if it no longer holds everything. Retries with backoff while the connection
    /// is up but the reads fail.
    async fn resync(
        &mut self,
        position: &mut Position,
        stop: &CancellationToken,
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
                        .restarts
                        .fetch_add(1, Ordering::Relaxed);
                    self.context.health.recover(&key);
                    return Ok(());
                }
                Err(message) => {
                    tracing::warn!(topic = %self.topic, %message, "redis stream not read; retrying");
                    self.context.health.fail(&key, message);
                    tokio::select! {
                        () = stop.cancelled() => return Err(Unsynced::Stopped),
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
            let read = self.read(connection, &position.start(), PAGE).await?;
            let Read::Present { last, entries } = read else {
                // A stream that was there is gone; or the server
                // restarted, and a stream it held may be lost with it.
                if position.epoch != 0 || !same_server {
                    self.gap(None, position);
                }
                position.epoch = 0;
                position.next = 0;
                break;
            };
            let unknown = if position.epoch == 0 {
                // No stream when the feed began: created since, and all
                // of it is new, unless the server restarted meanwhile.
                !same_server
            } else {
                last.ms != position.epoch
            };
            if unknown {
                // Another incarnation: what the old one held is unknown.
                // Read it from its start; its own holes are part of this
                // gap.
                self.gap(None, position);
                position.epoch = last.ms;
                position.next = match self.read(connection, "-", 1).await? {
                    Read::Present { entries, .. } => {
                        entries.first().map_or(last.seq + 1, |e| e.0.seq)
                    }
                    Read::Missing => 0,
                };
                continue;
            }
            position.epoch = last.ms;
            let full = entries.len() == PAGE;
            for (id, payload) in entries {
                if id.ms != position.epoch || id.seq < position.next {
                    continue;
                }
                if id.seq > position.next {
                    // Trimmed before this process read them.
                    self.gap(Some(id.seq - position.next), position);
                }
                position.next = id.seq + 1;
                let _ = self.sender.send(Delivery::Message(payload));
            }
            if !full {
                if last.seq >= position.next {
                    // Held nothing from the expected entry on (deleted).
                    self.gap(Some(last.seq + 1 - position.next), position);
                    position.next = last.seq + 1;
                }
                break;
            }
        }
        position.generation = connection.generation;
        position.run_id = Arc::clone(&connection.run_id);
        Ok(())
    }

    fn gap(&self, missed: Option<u64>, position: &Position) {
        let gap = Gap {
            missed,
            cause: GapCause::Reconnected,
        };
        self.context.counters.gaps.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = %self.topic, %gap, epoch = position.epoch, next = position.next, "redis stream no longer holds every message since the last one delivered");
        let _ = self.sender.send(Delivery::Gap(gap));
    }
}

fn parse_read(reply: Value) -> Option<Read> {
    let Value::Array(mut items) = reply else {
        return None;
    };
    if items.first() == Some(&Value::Int(0)) {
        return Some(Read::Missing);
    }
    if items.len() != 3 {
        return None;
    }
    let entries = items.pop()?;
    let last = items.pop()?;
    let id = |value: &Value| match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
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
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-1"),
                Value::Array(vec![bulk(b"p"), bulk(b"\x00payload")]),
            ])]),
        ]);
        let Some(Read::Present { last, entries }) = parse_read(reply) else {
            panic!("not parsed");
        };
        assert_eq!(last, StreamId { ms: 5, seq: 1 });
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
