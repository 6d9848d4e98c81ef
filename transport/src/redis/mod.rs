//! The Redis backend: live fan-out over pub/sub, a stream per topic to
//! resume from after a reconnect, retained payloads as keys with a TTL.
//!
//! Several fxcast processes share one stream of messages through a Redis
//! server (7.0 or later). For a topic `rates.USD_JPY` and the default
//! [`RedisConfig::prefix`] `fxcast:`:
//! - the stream `fxcast:stream:rates.USD_JPY` holds the topic's recent
//!   messages (about [`RedisConfig::history`]: `XADD ... MAXLEN ~`);
//! - the channel `fxcast:rates.USD_JPY` carries each message live, as
//!   `<stream id> <payload>`;
//! - the key `fxcast:epoch:rates.USD_JPY` names the stream's incarnation
//!   (its entries are `<epoch>-0`, `<epoch>-1`, ...: a subscriber knows
//!   which id comes next, so a hole is counted exactly);
//! - the key `fxcast:latest:rates.USD_JPY` holds the retained payload,
//!   with a TTL.
//!
//! # Why a stream beside pub/sub
//! Redis pub/sub is best effort: a process whose connection drops misses
//! what was published meanwhile and cannot tell how much. A publish is
//! therefore one script call that appends the payload to the topic's
//! stream and publishes it with the entry's id, atomically (so the
//! channel's order is the stream's). Each process holds one channel
//! subscription per topic, fanned out locally (`feed`); after a reconnect
//! the feed reads the stream from just after the last id it delivered, so
//! nothing is lost or repeated, and announces a [`Gap`](crate::Gap) when
//! the stream no longer reaches back that far. Live delivery stays on
//! pub/sub (a push, one round trip from the publisher) rather than
//! blocking `XREAD`s per topic. The cost is the stream's memory, about
//! `history` payloads per topic, and one script call per publish.
//!
//! # Retained payloads
//! [`Transport::retain`] is `SET key payload PX retain_ttl`;
//! [`Transport::retain_for`] the same with the longer of `keep` and
//! `retain_ttl`. The server expires them, so clocks play no part; the
//! newest write wins.
//!
//! # Layout
//! - this file: [`RedisConfig`], [`RedisTransport`] and its [`Transport`]
//!   implementation;
//! - `endpoint`: the URL, TCP or TLS sockets, logging in;
//! - `link`: the command and pub/sub connections, reconnects, dispatch;
//! - `feed`: one channel per topic: fan-out, dedupe, resync, gaps.

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use redis::{RedisError, Script};
use tokio::sync::watch;

mod endpoint;
mod feed;
mod link;

use crate::feeds::{FeedCounters, Feeds};
use crate::{
    BackoffPolicy, Call, Error, Secret, Subscription, Transport, TransportHealth,
    health::HealthBoard, validate_topic,
};
use endpoint::Endpoint;
use feed::FeedContext;
use link::{Connection, LinkHandle, Timing};

const BACKEND: &str = "redis";

/// The largest value Redis stores in one key by default
/// (`proto-max-bulk-len`): the limit of [`Transport::retain_for`].
const MAX_ITEM: usize = 512 * 1024 * 1024;

/// Appends a payload to the topic's stream and publishes it with its id,
/// atomically: KEYS[1] the stream, KEYS[2] its epoch; ARGV[1] the channel,
/// ARGV[2] the history, ARGV[3] the payload. Returns the id.
///
/// Ids are `<epoch>-<n>`: Redis numbers the entries of one millisecond
/// value `n` = 0, 1, 2, ... The epoch is the server's time in milliseconds
/// when the stream was created, kept in its own key; a stream that is gone
/// while its epoch is not (deleted, or lost) is created with a later
/// epoch, and an epoch key that is gone is read back from the stream.
const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[2])
local exists = redis.call('EXISTS', KEYS[1]) == 1
if not epoch and exists then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then epoch = string.match(info[i + 1], '^(%d+)-') end
  end
  redis.call('SET', KEYS[2], epoch)
elseif not exists then
  local now = redis.call('TIME')
  local fresh = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if epoch and tonumber(epoch) >= fresh then fresh = tonumber(epoch) + 1 end
  epoch = string.format('%.0f', fresh)
  redis.call('SET', KEYS[2], epoch)
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], epoch .. '-*', 'p', ARGV[3])
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[3])
return id
";

/// Settings of [`RedisTransport`].
#[derive(Clone)]
pub struct RedisConfig {
    /// The server: `redis://[[user]:password@]host[:port][/db]`,
    /// `rediss://` for TLS. Credentials in it are never logged.
    pub url: String,
    /// The password, instead of the URL's (`FXCAST_REDIS_PASSWORD`).
    /// Never logged.
    pub password: Option<Secret>,
    /// PEM CA certificates a `rediss://` server's certificate must chain
    /// to; without it, Mozilla's roots.
    pub ca: Option<PathBuf>,
    /// Put before every topic to make its channel and keys (default
    /// `fxcast:`). Every process sharing the stream uses the same.
    pub prefix: String,
    /// Messages each topic's stream keeps, at least (`MAXLEN ~`, default
    /// 1024): how much a process that lost its connection can catch up on.
    pub history: u32,
    /// How long [`Transport::retain`] keeps a payload (default 5 minutes).
    pub retain_ttl: Duration,
    /// Messages buffered per topic for the slowest local subscriber.
    pub buffer: usize,
    /// How reconnects and failed stream reads are spaced.
    pub reconnect: BackoffPolicy,
    /// Deadline of a connection, a command and a ping.
    pub request_timeout: Duration,
    /// How often both connections are pinged; an unanswered ping means
    /// the connection is gone (default 1 s).
    pub heartbeat: Duration,
    /// Largest payload accepted (default 1 MiB); larger ones are refused
    /// before sending.
    pub max_payload: usize,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &crate::net::redacted(&self.url))
            .field("password", &self.password)
            .field("ca", &self.ca)
            .field("prefix", &self.prefix)
            .field("history", &self.history)
            .field("retain_ttl", &self.retain_ttl)
            .field("buffer", &self.buffer)
            .field("reconnect", &self.reconnect)
            .field("request_timeout", &self.request_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            password: None,
            ca: None,
            prefix: "fxcast:".to_owned(),
            history: 1024,
            retain_ttl: Duration::from_secs(5 * 60),
            buffer: 1024,
            reconnect: BackoffPolicy::default(),
            request_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            max_payload: 1024 * 1024,
        }
    }
}

impl RedisConfig {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| Err(Error::InvalidConfig(format!("redis: {reason}")));
        if self.prefix.is_empty() || !self.prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return invalid("prefix must be printable ASCII without spaces");
        }
        if self.history == 0 || self.buffer == 0 || self.max_payload == 0 {
            return invalid("history, buffer and max_payload must be positive");
        }
        if self.max_payload > MAX_ITEM {
            return invalid("max_payload cannot exceed Redis's 512 MiB");
        }
        if self.retain_ttl < Duration::from_millis(1)
            || self.request_timeout.is_zero()
            || self.heartbeat.is_zero()
        {
            return invalid("retain_ttl, request_timeout and heartbeat must be positive");
        }
        self.reconnect.validate(BACKEND)
    }
}

/// The stream of `topic`.
fn stream_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}stream:{topic}")
}

/// The epoch of `topic`'s stream (see [`PUBLISH_SCRIPT`]).
fn epoch_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}epoch:{topic}")
}

/// The retained payload of `topic`.
fn latest_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}latest:{topic}")
}

fn unavailable(message: String) -> Error {
    Error::unavailable(BACKEND, message)
}

/// Counters of a [`RedisTransport`] since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Times a feed read its stream to catch up (after a reconnect, or
    /// when its inbox overflowed).
    pub resyncs: u64,
    /// Repeated deliveries dropped.
    pub duplicates: u64,
    /// Gaps announced to subscribers.
    pub gaps: u64,
}

/// Pub/sub over Redis. A cheap `Clone` handle; the last handle to go ends
/// every subscription and closes the connections.
#[derive(Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    history: u32,
    link: LinkHandle,
    publish: Script,
    feeds: Arc<Feeds>,
    feed_context: FeedContext,
    health: HealthBoard,
    retain_ttl: Duration,
    max_payload: usize,
}

impl fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTransport")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisTransport {
    /// Connects to the server (a command and a pub/sub connection) and
    /// checks that it can hold fxcast's streams.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for unusable settings (or an unreadable CA
    /// file), [`Error::Unavailable`] when the server cannot be reached,
    /// refuses the credentials (the message says so, without them) or is
    /// older than Redis 7.0.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        config.validate()?;
        let endpoint = Endpoint::parse(
            &config.url,
            config.password.as_ref().map(Secret::expose),
            config.ca.as_deref(),
            config.request_timeout,
        )?;
        let url = endpoint.url().to_owned();
        let established = link::establish(&endpoint, config.request_timeout)
            .await
            .map_err(|e| unavailable(e.message))?;
        let server = established.server.clone();
        let major = server
            .version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok());
        if major.is_none_or(|major| major < 7) {
            return Err(unavailable(format!(
                "{url} runs Redis {}; fxcast needs 7.0 or later (its stream ids are \
                 `<epoch>-*`, which Redis accepts from 7.0 on)",
                server.version
            )));
        }
        if !server.aof {
            tracing::warn!(%url, "redis-server keeps no append-only file: if it restarts, subscribers resuming across the restart are told they may have missed messages");
        }
        let health = HealthBoard::default();
        let link = link::spawn(
            endpoint,
            established,
            Timing {
                request_timeout: config.request_timeout,
                heartbeat: config.heartbeat,
                reconnect: config.reconnect,
            },
            health.clone(),
        );
        let feed_context = FeedContext {
            link: link.clone(),
            prefix: config.prefix.clone(),
            buffer: config.buffer,
            reconnect: config.reconnect,
            health: health.clone(),
            read: Arc::new(FeedContext::new_read_script()),
            counters: Arc::new(FeedCounters::default()),
        };
        tracing::info!(%url, version = %server.version, prefix = %config.prefix, "redis transport connected");
        Ok(Self {
            inner: Arc::new(Inner {
                url,
                prefix: config.prefix,
                history: config.history,
                link,
                publish: Script::new(PUBLISH_SCRIPT),
                feeds: Arc::default(),
                feed_context,
                health,
                retain_ttl: config.retain_ttl,
                max_payload: config.max_payload,
            }),
        })
    }

    /// What the transport has counted since it connected.
    pub fn stats(&self) -> RedisStats {
        let counters = &self.inner.feed_context.counters;
        RedisStats {
            resyncs: counters.restarts.load(Ordering::Relaxed),
            duplicates: counters.duplicates.load(Ordering::Relaxed),
            gaps: counters.gaps.load(Ordering::Relaxed),
        }
    }

    /// The largest payload [`Transport::publish`] accepts.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload
    }

    /// The pub/sub channel `topic` travels on.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`].
    pub fn channel(&self, topic: &str) -> Result<String, Error> {
        validate_topic(topic)?;
        Ok(format!("{}{topic}", self.inner.prefix))
    }

    /// The error of a failed command; tells the link when the connection
    /// looks dead, so it is replaced at once.
    fn failed(&self, connection: &Connection, what: String, error: &RedisError) -> Error {
        let message = format!("{what}: {error}");
        if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
            self.inner
                .link
                .failed(connection.generation, message.clone());
        }
        unavailable(message)
    }

    /// Retains `payload` of up to `limit` bytes for the longer of `keep`
    /// and the configured `retain_ttl`.
    async fn set(
        &self,
        topic: &str,
        payload: Bytes,
        limit: usize,
        keep: Duration,
    ) -> Result<(), Error> {
        validate_topic(topic)?;
        Error::check_size(BACKEND, &payload, limit)?;
        let keep = keep.max(self.inner.retain_ttl);
        let connection = self.inner.link.connection()?;
        let mut commands = connection.commands.clone();
        let millis = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(latest_key(&self.inner.prefix, topic))
            .arg(payload.as_ref())
            .arg("PX")
            .arg(millis)
            .query_async::<()>(&mut commands)
            .await
            .map_err(|e| self.failed(&connection, format!("retain {topic}"), &e))
    }
}

impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(async move {
            let channel = self.channel(topic)?;
            Error::check_size(BACKEND, &payload, self.inner.max_payload)?;
            let connection = self.inner.link.connection()?;
            let mut commands = connection.commands.clone();
            let mut invocation = self.inner.publish.prepare_invoke();
            invocation
                .key(stream_key(&self.inner.prefix, topic))
                .key(epoch_key(&self.inner.prefix, topic))
                .arg(channel)
                .arg(self.inner.history)
                .arg(payload.as_ref());
            invocation
                .invoke_async::<String>(&mut commands)
                .await
                .map(drop)
                .map_err(|e| self.failed(&connection, format!("publish to {topic}"), &e))
        })
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> Call<'a, Subscription> {
        Box::pin(async move {
            validate_topic(topic)?;
            let inner = &*self.inner;
            feed::subscribe(&inner.feeds, &inner.feed_context, topic).await
        })
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.inner.feeds.local_subscribers(topic)
    }

    fn health(&self) -> watch::Receiver<TransportHealth> {
        self.inner.health.subscribe()
    }

    /// Kept for [`RedisConfig::retain_ttl`].
    fn retain<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(self.set(topic, payload, self.inner.max_payload, Duration::ZERO))
    }

    /// Kept for the longer of `keep` and [`RedisConfig::retain_ttl`];
    /// up to 512 MiB, the most Redis stores in one value by default.
    fn retain_for<'a>(&'a self, topic: &'a str, payload: Bytes, keep: Duration) -> Call<'a, ()> {
        Box::pin(self.set(topic, payload, MAX_ITEM, keep))
    }

    fn retained<'a>(&'a self, topic: &'a str) -> Call<'a, Option<Bytes>> {
        Box::pin(async move {
            validate_topic(topic)?;
            let connection = self.inner.link.connection()?;
            let mut commands = connection.commands.clone();
            redis::cmd("GET")
                .arg(latest_key(&self.inner.prefix, topic))
                .query_async::<Option<Vec<u8>>>(&mut commands)
                .await
                .map(|value| value.map(Bytes::from))
                .map_err(|e| self.failed(&connection, format!("read the retained {topic}"), &e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        crate::assert_refused(
            RedisConfig::validate,
            &[
                (|c| c.prefix = "has space".into(), "prefix"),
                (|c| c.history = 0, "history"),
                (|c| c.heartbeat = Duration::ZERO, "heartbeat"),
            ],
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let config = RedisConfig {
            url: "redis://fx:hunter2@example.com:6379".into(),
            password: Some("top-secret".into()),
            ..RedisConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("top-secret"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("example.com"), "{debug}");
    }

    #[test]
    fn keys_and_channels_of_a_topic_are_distinct() {
        assert_eq!(stream_key("fxcast:", "rates.X"), "fxcast:stream:rates.X");
        assert_eq!(latest_key("fxcast:", "rates.X"), "fxcast:latest:rates.X");
        assert_eq!(epoch_key("fxcast:", "rates.X"), "fxcast:epoch:rates.X");
    }
}
