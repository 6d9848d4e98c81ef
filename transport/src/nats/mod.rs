//! The NATS backend: live fan-out and resume through a JetStream stream,
//! retained payloads in a JetStream key-value bucket.
//!
//! Several fxcast processes share one stream through a NATS server (or
//! cluster): each publishes `<topic>` on the subject
//! `<subject_prefix><topic>` (`fxcast.rates.USD_JPY`, see `subject` for
//! the characters NATS gives a meaning) and each holds one consumer per
//! topic, fanned out to its local subscribers (`feed`).
//!
//! # Why every message goes through JetStream
//! Core NATS is best effort: a process whose connection drops misses what
//! was published meanwhile and cannot tell how much. Publishes therefore go
//! to a stream ([`NatsConfig::stream`], subjects `<prefix>>`, the last
//! [`NatsConfig::history`] messages of each subject kept), and live
//! delivery is an ephemeral push consumer per topic rather than a core
//! subscription: every delivery carries its stream sequence, so after a
//! reconnect the feed resumes right after the last message it delivered,
//! drops repeats, and announces a [`Gap`](crate::Gap) when the stream no
//! longer holds what it missed. A core subscription beside the stream would
//! deliver messages without sequences, leaving no exact point to resume
//! from. The cost is a stored write per publish (the publish waits for the
//! stream's acknowledgement).
//!
//! # Retained payloads
//! [`Transport::retain`] and [`Transport::retain_for`] write a key-value
//! bucket ([`NatsConfig::bucket`], one revision per key; keys are the
//! encoded topic). A bucket has one maximum age for every key, while
//! `retain` keeps a payload for [`NatsConfig::retain_ttl`] and `retain_for`
//! for as long as asked, so the bucket has no maximum age and each value
//! starts with its expiry (8 bytes, big-endian milliseconds since the Unix
//! epoch); [`Transport::retained`] treats an expired value as missing. The
//! newest write of a topic wins either way. Expiry compares the writer's
//! and the reader's clocks, so they should agree to well within a TTL.
//!
//! # Layout
//! - this file: [`NatsConfig`], [`NatsCredentials`], [`NatsTransport`] and
//!   its [`Transport`] implementation;
//! - `subject`: topics as subjects and keys;
//! - `feed`: one consumer per topic: fan-out, dedupe, resume, gaps;
//! - the health board, TLS and URL redaction are the crate's (`health`,
//!   `net`), shared with the Redis backend.

use std::{
    fmt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::{
    ConnectErrorKind, ConnectOptions, Event,
    jetstream::{self, kv, stream},
};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::watch;

mod feed;
mod subject;

use crate::feeds::{FeedCounters, Feeds};
use crate::{
    Backoff, BackoffPolicy, Call, Error, Secret, Subscription, Transport, TransportHealth,
    validate_topic,
};
use crate::{
    health::HealthBoard,
    net::{redacted, tls_client_config, tls_refused},
};
use feed::FeedContext;

const BACKEND: &str = "nats";

/// Bytes before a retained payload in the bucket: its expiry.
const EXPIRY_BYTES: usize = 8;

/// The health board's key for the connection itself.
const CONNECTION: &str = "connection";

/// How the transport proves who it is to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsCredentials {
    /// No credentials (or what the URL carries, `nats://user:pass@host`).
    #[default]
    None,
    /// A user and password (`--user`/`--pass` of nats-server).
    UserPassword {
        /// The user.
        user: String,
        /// The password. Never logged.
        password: Secret,
    },
    /// A token (`--auth` of nats-server). Never logged.
    Token(Secret),
    /// A `.creds` file (a user JWT and its NKey seed), as `nsc` writes it.
    CredsFile(PathBuf),
}

impl NatsCredentials {
    async fn options(&self) -> Result<ConnectOptions, Error> {
        Ok(match self {
            Self::None => ConnectOptions::new(),
            Self::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.expose().to_owned())
            }
            Self::Token(token) => ConnectOptions::with_token(token.expose().to_owned()),
            Self::CredsFile(path) => {
                ConnectOptions::with_credentials_file(path)
                    .await
                    .map_err(|e| {
                        Error::InvalidConfig(format!(
                            "nats: cannot read the credentials file {}: {e}",
                            path.display()
                        ))
                    })?
            }
        })
    }
}

/// Settings of [`NatsTransport`].
#[derive(Clone)]
pub struct NatsConfig {
    /// The server (`nats://host:4222`, `tls://host:4222` for TLS; several
    /// separated by commas). Credentials in it are never logged.
    pub url: String,
    /// How to authenticate.
    pub credentials: NatsCredentials,
    /// PEM CA certificates a `tls://` server's certificate must chain to;
    /// without it, Mozilla's roots.
    pub ca: Option<PathBuf>,
    /// Put before every topic to make its subject (default `fxcast.`); it
    /// must end with `.`. Every process sharing the stream uses the same.
    pub subject_prefix: String,
    /// The JetStream stream holding the recent messages of every topic,
    /// created when missing (default `FXCAST`).
    pub stream: String,
    /// Messages the stream keeps per topic (default 1024): how much a
    /// process that lost its connection can catch up on.
    pub history: u32,
    /// The key-value bucket of retained payloads, created when missing
    /// (default `fxcast_latest`).
    pub bucket: String,
    /// How long [`Transport::retain`] keeps a payload (default 5 minutes).
    pub retain_ttl: Duration,
    /// Messages buffered per topic for the slowest local subscriber.
    pub buffer: usize,
    /// How reconnects to the server and re-created consumers are spaced.
    pub reconnect: BackoffPolicy,
    /// Deadline of a publish, a JetStream call and a bucket read or write.
    pub request_timeout: Duration,
    /// Largest payload accepted (default 1 MiB, and never more than the
    /// server's `max_payload`); larger ones are refused before sending.
    pub max_payload: usize,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redacted(&self.url))
            .field("credentials", &self.credentials)
            .field("ca", &self.ca)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream", &self.stream)
            .field("history", &self.history)
            .field("bucket", &self.bucket)
            .field("retain_ttl", &self.retain_ttl)
            .field("buffer", &self.buffer)
            .field("reconnect", &self.reconnect)
            .field("request_timeout", &self.request_timeout)
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials: NatsCredentials::None,
            ca: None,
            subject_prefix: "fxcast.".to_owned(),
            stream: "FXCAST".to_owned(),
            history: 1024,
            bucket: "fxcast_latest".to_owned(),
            retain_ttl: Duration::from_secs(5 * 60),
            buffer: 1024,
            reconnect: BackoffPolicy::default(),
            request_timeout: Duration::from_secs(5),
            max_payload: 1024 * 1024,
        }
    }
}

impl NatsConfig {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| Err(Error::InvalidConfig(format!("nats: {reason}")));
        let name_ok = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        let prefix = &self.subject_prefix;
        let prefix_ok = prefix.ends_with('.') && prefix[..prefix.len() - 1].split('.').all(name_ok);
        if !prefix_ok {
            return invalid(
                "subject_prefix must be dot-separated tokens of A-Z a-z 0-9 - _ ending with '.'",
            );
        }
        if !name_ok(&self.stream) || !name_ok(&self.bucket) {
            return invalid("stream and bucket names must be 1 or more of A-Z a-z 0-9 - _");
        }
        if self.history == 0 || self.buffer == 0 || self.max_payload == 0 {
            return invalid("history, buffer and max_payload must be positive");
        }
        if self.retain_ttl.is_zero() || self.request_timeout.is_zero() {
            return invalid("retain_ttl and request_timeout must be positive");
        }
        self.reconnect.validate(BACKEND)
    }
}

fn unavailable(message: String) -> Error {
    Error::unavailable(BACKEND, message)
}

/// Counters of a [`NatsTransport`] since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsStats {
    /// Consumers re-created (after a reconnect or missed heartbeats).
    pub resumes: u64,
    /// Repeated deliveries dropped.
    pub duplicates: u64,
    /// Gaps announced to subscribers.
    pub gaps: u64,
}

/// Pub/sub over NATS JetStream. A cheap `Clone` handle; the last handle to
/// go ends every subscription.
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    jetstream: jetstream::Context,
    bucket: kv::Store,
    feeds: Arc<Feeds>,
    feed_context: FeedContext,
    health: HealthBoard,
    retain_ttl: Duration,
    request_timeout: Duration,
    max_payload: usize,
    max_item: usize,
}

impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// The delay before reconnect attempt `attempts` (counted from 1).
fn reconnect_delay(policy: BackoffPolicy, attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let mut backoff = Backoff::new(policy);
    let mut delay = backoff.next_delay();
    // Doubling past 64 steps changes nothing: the cap is reached.
    for _ in 2..attempts.min(64) {
        delay = backoff.next_delay();
    }
    delay
}

/// What the client reports about its connection, turned into health and
/// the reconnection count the feeds watch.
fn connection_events(
    health: &HealthBoard,
    url: &str,
    reconnected: watch::Sender<u64>,
) -> impl Fn(Event) -> std::future::Ready<()> + Send + Sync + 'static {
    let health = health.clone();
    let url = url.to_owned();
    let down = AtomicBool::new(false);
    move |event: Event| {
        match event {
            Event::Disconnected => {
                down.store(true, Ordering::Relaxed);
                tracing::warn!(%url, "nats connection lost; reconnecting");
                health.fail(CONNECTION, format!("lost the connection to {url}"));
            }
            Event::Connected => {
                health.recover(CONNECTION);
                if down.swap(false, Ordering::Relaxed) {
                    tracing::info!(%url, "nats connection re-established");
                    reconnected.send_modify(|n| *n += 1);
                }
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!(sid, "nats dropped messages for a slow subscription");
            }
            other => tracing::info!(%url, event = %other, "nats connection event"),
        }
        std::future::ready(())
    }
}

/// Opens the client connection (retried forever once up); a refusal says
/// what to check, without the credentials.
async fn connect_client(
    config: &NatsConfig,
    url: &str,
    on_event: impl Fn(Event) -> std::future::Ready<()> + Send + Sync + 'static,
) -> Result<async_nats::Client, Error> {
    let policy = config.reconnect;
    config
        .credentials
        .options()
        .await?
        // Used only when the URL says tls:// or the server asks for TLS.
        .tls_client_config(tls_client_config(BACKEND, config.ca.as_deref())?)
        .name("fxcast")
        .connection_timeout(config.request_timeout)
        .request_timeout(Some(config.request_timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| reconnect_delay(policy, attempts))
        .event_callback(on_event)
        .connect(config.url.as_str())
        .await
        .map_err(|e| {
            let hint = match e.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    " (the server refused the credentials: check the user and password, \
                     token or .creds file)"
                }
                // A refused certificate comes as an I/O error.
                _ if tls_refused(&e) => {
                    " (the server's certificate is not trusted: it must chain to the CA \
                     file, or to Mozilla's roots without one)"
                }
                ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns => {
                    " (is nats-server running and reachable there?)"
                }
                ConnectErrorKind::Tls => " (check the server's certificate and the tls:// URL)",
                _ => "",
            };
            unavailable(format!("cannot connect to {url}: {e}{hint}"))
        })
}

/// Opens (creating when missing) the stream of recent messages and the
/// bucket of retained payloads.
async fn open_storage(
    js: &jetstream::Context,
    config: &NatsConfig,
    url: &str,
) -> Result<(stream::Stream, jetstream::kv::Store), Error> {
    let no_jetstream = |what: &str, e: &dyn fmt::Display| {
        unavailable(format!(
            "{what} on {url}: {e} (is JetStream enabled, nats-server -js?)"
        ))
    };
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            description: Some("fxcast: the recent messages of every topic".to_owned()),
            subjects: vec![format!("{}>", config.subject_prefix)],
            max_messages_per_subject: i64::from(config.history),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            allow_direct: true,
            ..stream::Config::default()
        })
        .await
        .map_err(|e| no_jetstream(&format!("cannot open the stream {}", config.stream), &e))?;
    // The bucket's stream is written here rather than by
    // `create_key_value`, whose account query async-nats 0.51 cannot
    // read from nats-server 2.9; it is what that call creates.
    let no_bucket = |e: &dyn fmt::Display| {
        no_jetstream(&format!("cannot open the bucket {}", config.bucket), e)
    };
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{}", config.bucket),
        description: Some("fxcast: retained payloads, each with its expiry".to_owned()),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        ..stream::Config::default()
    })
    .await
    .map_err(|e| no_bucket(&e))?;
    let bucket = js
        .get_key_value(&config.bucket)
        .await
        .map_err(|e| no_bucket(&e))?;
    Ok((stream, bucket))
}

impl NatsTransport {
    /// Connects to the server and makes sure the stream and the bucket
    /// exist.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for unusable settings (or an unreadable
    /// credentials file), [`Error::Unavailable`] when the server cannot be
    /// reached, refuses the credentials (the message says so, without
    /// them) or has no JetStream.
    pub async fn connect(config: NatsConfig) -> Result<Self, Error> {
        config.validate()?;
        let url = redacted(&config.url);
        let health = HealthBoard::default();
        let (reconnected_tx, reconnected) = watch::channel(0u64);
        let client = connect_client(
            &config,
            &url,
            connection_events(&health, &url, reconnected_tx),
        )
        .await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let (stream, bucket) = open_storage(&js, &config, &url).await?;
        let server_max = match client.server_info().max_payload {
            0 => config.max_payload,
            n => n,
        };
        let max_payload = config.max_payload.min(server_max);
        if max_payload < config.max_payload {
            tracing::info!(
                max_payload,
                "nats server accepts smaller payloads than configured"
            );
        }
        let feed_context = FeedContext {
            client,
            jetstream: js.clone(),
            stream,
            history: u64::from(config.history),
            buffer: config.buffer,
            reconnect: config.reconnect,
            request_timeout: config.request_timeout,
            heartbeat: Duration::from_secs(2),
            health: health.clone(),
            reconnected,
            counters: Arc::new(FeedCounters::default()),
        };
        tracing::info!(%url, stream = %config.stream, bucket = %config.bucket, "nats transport connected");
        Ok(Self {
            inner: Arc::new(Inner {
                url,
                prefix: config.subject_prefix,
                jetstream: js,
                bucket,
                feeds: Arc::default(),
                feed_context,
                health,
                retain_ttl: config.retain_ttl,
                request_timeout: config.request_timeout,
                max_payload,
                max_item: server_max.saturating_sub(EXPIRY_BYTES),
            }),
        })
    }

    /// What the transport has counted since it connected.
    pub fn stats(&self) -> NatsStats {
        let counters = &self.inner.feed_context.counters;
        NatsStats {
            resumes: counters.restarts.load(Ordering::Relaxed),
            duplicates: counters.duplicates.load(Ordering::Relaxed),
            gaps: counters.gaps.load(Ordering::Relaxed),
        }
    }

    /// The largest payload [`Transport::publish`] accepts.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload
    }

    /// The subject `topic` travels on.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`].
    pub fn subject(&self, topic: &str) -> Result<String, Error> {
        validate_topic(topic)?;
        Ok(format!("{}{}", self.inner.prefix, subject::encode(topic)?))
    }

    async fn within<T, E: fmt::Display>(
        &self,
        what: String,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Error> {
        Error::within(BACKEND, self.inner.request_timeout, what, call).await
    }

    /// Retains `payload` of up to `limit` bytes for the longer of `keep`
    /// and the configured `retain_ttl`.
    async fn put(
        &self,
        topic: &str,
        payload: Bytes,
        limit: usize,
        keep: Duration,
    ) -> Result<(), Error> {
        validate_topic(topic)?;
        Error::check_size(BACKEND, &payload, limit)?;
        let keep = keep.max(self.inner.retain_ttl);
        let key = subject::encode(topic)?;
        let expires = SystemTime::now()
            .checked_add(keep)
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, |at| {
                u64::try_from(at.as_millis()).unwrap_or(u64::MAX)
            });
        let mut value = BytesMut::with_capacity(EXPIRY_BYTES + payload.len());
        value.put_u64(expires);
        value.put_slice(&payload);
        self.within(
            format!("retain {topic}"),
            self.inner.bucket.put(key, value.freeze()),
        )
        .await
        .map(drop)
    }
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(async move {
            let subject = self.subject(topic)?;
            Error::check_size(BACKEND, &payload, self.inner.max_payload)?;
            let js = &self.inner.jetstream;
            self.within(format!("publish to {topic}"), async move {
                js.publish(subject, payload).await?.await
            })
            .await
            .map(drop)
        })
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> Call<'a, Subscription> {
        Box::pin(async move {
            let subject = self.subject(topic)?;
            let inner = &*self.inner;
            feed::subscribe(&inner.feeds, &inner.feed_context, topic, subject).await
        })
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.inner.feeds.local_subscribers(topic)
    }

    fn health(&self) -> watch::Receiver<TransportHealth> {
        self.inner.health.subscribe()
    }

    /// Kept for [`NatsConfig::retain_ttl`].
    fn retain<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(self.put(topic, payload, self.inner.max_payload, Duration::ZERO))
    }

    /// Kept for the longer of `keep` and [`NatsConfig::retain_ttl`]; up
    /// to the server's `max_payload` (less the 8 bytes of the expiry).
    fn retain_for<'a>(&'a self, topic: &'a str, payload: Bytes, keep: Duration) -> Call<'a, ()> {
        Box::pin(self.put(topic, payload, self.inner.max_item, keep))
    }

    fn retained<'a>(&'a self, topic: &'a str) -> Call<'a, Option<Bytes>> {
        Box::pin(async move {
            validate_topic(topic)?;
            let key = subject::encode(topic)?;
            let value = self
                .within(
                    format!("read the retained {topic}"),
                    self.inner.bucket.get(key),
                )
                .await?;
            Ok(value.and_then(unexpired))
        })
    }
}

/// The payload of a bucket value, unless it has expired (or is not one of
/// ours).
fn unexpired(value: Bytes) -> Option<Bytes> {
    let expiry: [u8; EXPIRY_BYTES] = value.get(..EXPIRY_BYTES)?.try_into().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let now = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
    (u64::from_be_bytes(expiry) > now).then(|| value.slice(EXPIRY_BYTES..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        crate::assert_refused(
            NatsConfig::validate,
            &[
                (|c| c.subject_prefix = "fxcast".into(), "subject_prefix"),
                (|c| c.subject_prefix = "fx.*.".into(), "subject_prefix"),
                (|c| c.stream = "has.dot".into(), "stream"),
                (|c| c.history = 0, "history"),
            ],
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let config = NatsConfig {
            url: "nats://u:hunter2@example.com:4222".into(),
            credentials: NatsCredentials::UserPassword {
                user: "u".into(),
                password: "top-secret".into(),
            },
            ..NatsConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("top-secret"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let token = format!("{:?}", NatsCredentials::Token("tok-secret".into()));
        assert!(!token.contains("tok-secret"), "{token}");
        assert_eq!(
            redacted("nats://u:hunter2@a:4222,tls://b:4222"),
            "nats://<redacted>@a:4222,tls://b:4222"
        );
    }

    #[test]
    fn expired_values_are_missing() {
        let mut value = BytesMut::new();
        value.put_u64(1);
        value.put_slice(b"old");
        assert_eq!(unexpired(value.freeze()), None);
        let mut value = BytesMut::new();
        value.put_u64(u64::MAX);
        value.put_slice(b"new");
        assert_eq!(unexpired(value.freeze()), Some(Bytes::from_static(b"new")));
        assert_eq!(unexpired(Bytes::from_static(b"short")), None);
    }

    #[test]
    fn reconnects_back_off_up_to_the_cap() {
        let policy = BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(reconnect_delay(policy, 1), Duration::ZERO);
        assert!(reconnect_delay(policy, 2) <= Duration::from_millis(100));
        assert!(reconnect_delay(policy, 1_000) <= Duration::from_secs(2));
    }
}
