//! The Momento backend: topics on Momento Topics, retained payloads in a
//! Momento cache, and disposable subscribe-only tokens for browsers.
//!
//! Several fxcast processes on different machines share one stream through
//! Momento: each publishes on `<cache>/<topic>` and each holds one Momento
//! subscription per topic, fanned out to its local subscribers.
//!
//! # What the SDK does, and what is done here
//! Publishing uses the SDK's `TopicClient`, the retained payloads its
//! `CacheClient`, and subscriber tokens its `AuthClient`. Subscriptions do
//! *not* use the SDK's `Subscription`: it hides heartbeats and
//! discontinuities, and on any stream error resubscribes immediately in a
//! loop, without backoff and without telling its reader (it spins while the
//! endpoint is down or a token has expired). Subscriptions therefore drive
//! the generated `momento_protos` `Pubsub` client over their own
//! connections (`feed`), which gives one subscription per topic per
//! process, dedupe by (page, sequence), gaps from sequence numbers,
//! reconnects with capped exponential backoff and jitter, and a health
//! status ([`Transport::health`]).
//!
//! Momento meters every publish and every delivery and limits operations
//! per second per account, so publishes can be paced per topic with
//! conflation ([`MomentoConfig::max_publish_rate`], `pacing`). Retained
//! payloads are always written in the background, conflated per key, so a
//! publish never waits for the cache.
//!
//! # Layout
//! - this file: [`MomentoConfig`], [`MomentoTransport`] and its
//!   [`Transport`] implementation;
//! - `board`: the latest rates of many symbols in few messages;
//! - `budget`: the operations-per-second budget;
//! - `credentials`: API key forms and endpoints;
//! - `feed`: the driver of one topic's Momento subscription (dedupe, gaps,
//!   reconnects) under the shared per-topic registry (`crate::feeds`);
//! - `pacing`: per-topic pacing with conflation;
//! - `shards`: many quiet topics (`orders.<subject>`) over a few Momento
//!   topics, so the subscriptions held stay bounded.

use std::{
    fmt,
    num::NonZeroU32,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::TryFutureExt;
use momento::{
    AuthClient, CacheClient, MomentoError, MomentoErrorCode, TopicClient,
    auth::{
        CacheSelector, ExpiresIn, Permission, Permissions, TopicPermission, TopicRole,
        TopicSelector,
    },
    cache::{CreateCacheResponse, GetResponse, SetRequest},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

mod board;
mod budget;
mod credentials;
mod feed;
mod pacing;
mod shards;

use crate::feeds::{FeedCounters, Feeds};
use crate::health::HealthBoard;
use crate::{
    Call, Error, Secret, SubscriberAccess, Subscription, Transport, TransportHealth, validate_topic,
};
use board::Board;
use budget::Budget;
use feed::{Connections, Credential, FeedContext};
use pacing::{Pacer, PacerConfig, SendFn};
use shards::Shards;

/// How failed subscriptions and publishes are retried: the first delay and
/// the cap of their [`Backoff`](crate::Backoff).
pub type ReconnectPolicy = crate::BackoffPolicy;

const BACKEND: &str = "momento";

/// Momento's largest topic message.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// Momento's largest cache item (hosted default), for [`Transport::retain_for`].
pub const MAX_ITEM_BYTES: usize = 5 * 1024 * 1024;

/// Hosted Momento's longest disposable token: it cannot be renewed, so
/// clients ask for a fresh one (`IssueMomentoAccess`) before it lapses.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// Settings of [`MomentoTransport`].
#[derive(Debug, Clone)]
pub struct MomentoConfig {
    /// The cache whose topics and items are used (`--momento-cache`).
    pub cache: String,
    /// The API key (`MOMENTO_API_KEY`): a v1 or v2 Momento key, or any key
    /// of a Momento-compatible server given with [`MomentoConfig::endpoint`].
    /// Never logged.
    pub api_key: Secret,
    /// The service endpoint of a v2 key (`MOMENTO_ENDPOINT`, e.g.
    /// `cell-4-us-west-2-1.prod.a.momentohq.com`).
    pub base_endpoint: Option<String>,
    /// Where every connection goes instead (`--momento-endpoint`):
    /// `http://127.0.0.1:8080` (plaintext, e.g. `fxcast momento-local`) or
    /// an `https://` URL.
    pub endpoint: Option<String>,
    /// Create the cache at start if it does not exist (needs a key that may
    /// manage caches).
    pub create_cache: bool,
    /// At most this many publishes per second per topic; what is published
    /// faster is conflated (the newest wins). `None`: every publish is sent
    /// at once and its outcome returned. Applies only to topics starting
    /// with [`MomentoConfig::paced_prefix`].
    pub max_publish_rate: Option<NonZeroU32>,
    /// Topics that may be paced and conflated (default `rates.`: only the
    /// latest price matters). Every other topic, such as `orders.<subject>`
    /// where each event matters, is always sent at once and in order.
    pub paced_prefix: String,
    /// Largest payload accepted; larger ones are refused before sending.
    pub max_payload: usize,
    /// How long a retained payload stays in the cache.
    pub retain_ttl: Duration,
    /// Messages buffered per topic for the slowest local subscriber.
    pub buffer: usize,
    /// How failed subscriptions and publishes are retried.
    pub reconnect: ReconnectPolicy,
    /// Deadline of a subscribe call and a cache read.
    pub request_timeout: Duration,
    /// Connections subscriptions are spread over, 100 topics each.
    pub subscription_connections: usize,
    /// Topics carried over shared shard topics instead of one Momento topic
    /// each (default `orders.`: one per trading subject, many and quiet).
    pub sharded_prefix: String,
    /// How many shard topics [`MomentoConfig::sharded_prefix`] spreads over
    /// (default 16; 0: a Momento topic per topic). Every process sharing the
    /// cache must use the same prefix and count.
    pub shards: u16,
    /// Operations per second this process may spend (publishes, cache
    /// calls, subscribes); each waits for its turn rather than be refused
    /// past the account's limit. Set it a little below the limit shared by
    /// the processes on the account. `None`: no pacing beyond
    /// [`MomentoConfig::max_publish_rate`].
    pub max_ops_per_second: Option<NonZeroU32>,
    /// Publish the paced topics ([`MomentoConfig::paced_prefix`]) as one
    /// board topic instead of a Momento topic each, so operations do not
    /// grow with the number of symbols. Needs
    /// [`MomentoConfig::max_publish_rate`].
    pub board: Option<MomentoBoard>,
}

/// The board of [`MomentoConfig::board`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MomentoBoard {
    /// The Momento topic carrying the board (e.g. `board.rates`).
    pub topic: String,
    /// Every topic the board carries (`rates.<SYMBOL>` of each symbol): a
    /// subscriber token is minted for the board only when it asks for all
    /// of them, since the board shows every symbol to whoever reads it.
    pub topics: Vec<String>,
}

impl Default for MomentoConfig {
    fn default() -> Self {
        Self {
            cache: "fxcast".to_owned(),
            api_key: Secret::default(),
            base_endpoint: None,
            endpoint: None,
            create_cache: true,
            max_publish_rate: None,
            paced_prefix: "rates.".to_owned(),
            max_payload: MAX_MESSAGE_BYTES,
            retain_ttl: Duration::from_secs(5 * 60),
            buffer: 1024,
            reconnect: ReconnectPolicy::default(),
            request_timeout: Duration::from_secs(5),
            subscription_connections: 4,
            sharded_prefix: "orders.".to_owned(),
            shards: 16,
            max_ops_per_second: None,
            board: None,
        }
    }
}

impl MomentoConfig {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| Err(Error::InvalidConfig(format!("momento: {reason}")));
        let cache_ok = !self.cache.is_empty()
            && self.cache.len() <= 255
            && self
                .cache
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !cache_ok {
            return invalid("the cache name must be 1-255 characters of A-Z a-z 0-9 - _ .");
        }
        if self.max_payload == 0 || self.max_payload > MAX_MESSAGE_BYTES {
            return invalid("max_payload must be 1 to 4096 bytes (Momento's message limit)");
        }
        if let Some(board) = &self.board {
            if self.max_publish_rate.is_none() {
                return invalid("the board needs a publish rate (it is sent once per interval)");
            }
            validate_topic(&board.topic).map_err(|e| Error::InvalidConfig(e.to_string()))?;
            if board.topic.starts_with(&self.paced_prefix) {
                return invalid("the board topic must not start with the paced prefix");
            }
        }
        if self.buffer == 0 || self.subscription_connections == 0 {
            return invalid("buffer and subscription_connections must be positive");
        }
        if self.retain_ttl.is_zero() || self.request_timeout.is_zero() {
            return invalid("retain_ttl and request_timeout must be positive");
        }
        self.reconnect.validate(BACKEND)
    }
}

/// About how many bytes one rate takes on the board: its topic, lengths and
/// a protobuf `Rate` with two timestamps, an id and a source.
const BOARD_RECORD_BYTES: f64 = 110.0;

/// The Momento operations per second a configuration spends on rates, for
/// capacity planning against an account's limit (orders add one publish
/// per order event and one delivery per process subscribed to its shard).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpsPlan {
    /// Publish operations per second, all symbols together (with the board,
    /// its messages, each billed per started KiB).
    pub publishes: f64,
    /// Latest-rate cache writes per second (as many as publishes).
    pub cache_writes: f64,
    /// Rates delivered per second to each subscriber of every symbol (a
    /// browser holding a Momento token, or another process).
    pub deliveries_per_subscriber: f64,
}

impl MomentoConfig {
    /// What publishing `symbols` rates that each tick `ticks_per_second`
    /// (`None`: unknown, e.g. a live feed) costs under this configuration's
    /// pacing; `None` when neither bounds it.
    pub fn ops_plan(&self, symbols: usize, ticks_per_second: Option<f64>) -> Option<OpsPlan> {
        let paced = self.max_publish_rate.map(|rate| f64::from(rate.get()));
        let per_symbol = match (paced, ticks_per_second) {
            (Some(paced), Some(ticks)) => paced.min(ticks),
            (Some(rate), None) | (None, Some(rate)) => rate,
            (None, None) => return None,
        };
        // Symbol counts are far below 2^52.
        #[allow(clippy::cast_precision_loss)]
        let rates = per_symbol * symbols as f64;
        // Momento bills a message per started KiB. A rate is well under one
        // alone; on the board, records of about `BOARD_RECORD_BYTES` share
        // messages sent at most `max_publish_rate` times a second.
        let publishes = match (&self.board, paced) {
            (Some(_), Some(paced)) if rates > 0.0 => {
                let sends = paced.min(rates);
                let bytes = rates / sends * BOARD_RECORD_BYTES;
                sends * (bytes / 1024.0).ceil()
            }
            _ => rates,
        };
        Some(OpsPlan {
            publishes,
            cache_writes: rates,
            deliveries_per_subscriber: publishes,
        })
    }
}

/// Counters of a [`MomentoTransport`] since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MomentoStats {
    /// Subscriptions re-established after they failed.
    pub reconnects: u64,
    /// Repeated messages dropped after a resume.
    pub duplicates: u64,
    /// Gaps signalled by subscriptions (discontinuities, jumps, new pages).
    pub gaps: u64,
    /// Publishes replaced by newer ones of their topic before being sent.
    pub conflated: u64,
    /// Paced publishes and retained writes that failed (and were retried).
    pub failed_sends: u64,
}

/// Pub/sub over Momento Topics. A cheap `Clone` handle; the last handle to
/// go ends every subscription and background task.
#[derive(Clone)]
pub struct MomentoTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: MomentoConfig,
    /// Where clients of [`Transport::subscriber_access`] connect.
    url: String,
    topics: TopicClient,
    cache: CacheClient,
    auth: AuthClient,
    feeds: Arc<Feeds>,
    shards: Arc<Shards>,
    budget: Option<Arc<Budget>>,
    feed_context: FeedContext,
    publisher: Option<Pacer>,
    /// With a board: what waits for it, and the pacer that sends it.
    board: Option<(Board, Pacer)>,
    retainer: Pacer,
    health: HealthBoard,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Inner {
    /// `call` within the configured request timeout.
    async fn within<T>(
        &self,
        what: String,
        call: impl Future<Output = Result<T, String>>,
    ) -> Result<T, Error> {
        Error::within(BACKEND, self.config.request_timeout, what, call).await
    }
}

impl fmt::Debug for MomentoTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MomentoTransport")
            .field("cache", &self.inner.config.cache)
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, err: &MomentoError) -> Error {
    Error::unavailable(BACKEND, format!("{what}: {}", described(err)))
}

/// A Momento error as fxcast reports it: its message and code.
fn described(err: &MomentoError) -> String {
    format!("{} ({:?})", err.message, err.error_code)
}

fn channel(url: &str) -> Result<Channel, Error> {
    let invalid = |e: tonic::transport::Error| {
        Error::InvalidConfig(format!("momento: unusable endpoint {url:?}: {e}"))
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(invalid)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        // Pings find a connection that died silently; heartbeats on a
        // subscription are not guaranteed.
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .map_err(invalid)?;
    }
    Ok(endpoint.connect_lazy())
}

/// The SDK's topic, cache and auth clients for `resolved` credentials.
fn sdk_clients(
    config: &MomentoConfig,
    resolved: &credentials::Resolved,
) -> Result<(TopicClient, CacheClient, AuthClient), Error> {
    let sdk = |what: &str, e: MomentoError| {
        Error::InvalidConfig(format!("momento: cannot build the {what}: {}", e.message))
    };
    let topics = TopicClient::builder()
        .configuration(momento::topics::configurations::InRegion::latest())
        .credential_provider(resolved.provider.clone())
        .build()
        .map_err(|e| sdk("topic client", e))?;
    let cache = CacheClient::builder()
        .default_ttl(config.retain_ttl)
        .configuration(momento::cache::configurations::InRegion::latest())
        .credential_provider(resolved.provider.clone())
        .build()
        .map_err(|e| sdk("cache client", e))?;
    let auth = AuthClient::builder()
        .credential_provider(resolved.provider.clone())
        .build()
        .map_err(|e| sdk("auth client", e))?;
    Ok((topics, cache, auth))
}

/// What every subscription shares: its connections (opened lazily), the
/// retry policy, the health board and the counters.
fn feed_context(
    config: &MomentoConfig,
    resolved: &credentials::Resolved,
    health: &HealthBoard,
    stop: &CancellationToken,
    budget: Option<Arc<Budget>>,
) -> Result<FeedContext, Error> {
    let credential = Credential::new(&resolved.authorization, &config.cache)?;
    let channels = (0..config.subscription_connections)
        .map(|_| channel(&resolved.url))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FeedContext {
        cache: config.cache.clone(),
        connections: Arc::new(Connections::new(channels, &credential)),
        buffer: config.buffer,
        reconnect: config.reconnect,
        request_timeout: config.request_timeout,
        health: health.clone(),
        stop: stop.clone(),
        budget,
        counters: Arc::new(FeedCounters::default()),
    })
}

impl MomentoTransport {
    /// Connects to Momento with `config`: checks the credentials, creates
    /// the cache when it is missing and `config.create_cache` allows it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for unusable settings or a malformed key;
    /// [`Error::Unavailable`] when Momento cannot be reached, refuses the
    /// key, or the cache is missing and cannot be created (the message says
    /// what to do).
    pub async fn connect(config: MomentoConfig) -> Result<Self, Error> {
        config.validate()?;
        let resolved = credentials::resolve(
            config.api_key.expose(),
            config.base_endpoint.as_deref(),
            config.endpoint.as_deref(),
        )?;
        let (topics, cache, auth) = sdk_clients(&config, &resolved)?;
        ensure_cache(&cache, &config).await?;

        let stop = CancellationToken::new();
        let health = HealthBoard::default();
        let budget = config
            .max_ops_per_second
            .map(|rate| Arc::new(Budget::new(rate)));
        let feed_context = feed_context(&config, &resolved, &health, &stop, budget.clone())?;
        let interval = config
            .max_publish_rate
            .map_or(Duration::ZERO, |rate| Duration::from_secs(1) / rate.get());
        let reconnect = config.reconnect;
        let pacer = |what, send| {
            let config = PacerConfig {
                what,
                interval,
                reconnect,
            };
            Pacer::new(config, send, health.clone(), stop.clone())
        };
        let publish = publish_fn(topics.clone(), config.cache.clone(), budget.clone());
        let board = config.board.as_ref().map(|_| {
            let board = Board::default();
            let send = board.send_fn(config.max_payload, publish.clone());
            (board, pacer("board", send))
        });
        let publisher = config.max_publish_rate.map(|_| pacer("publish", publish));
        let retain = retain_fn(
            cache.clone(),
            config.cache.clone(),
            config.retain_ttl,
            budget.clone(),
        );
        let retainer = pacer("retain", retain);
        tracing::info!(
            cache = %config.cache,
            endpoint = %resolved.url,
            max_publish_rate = ?config.max_publish_rate,
            shards = config.shards,
            max_ops_per_second = ?config.max_ops_per_second,
            "momento transport connected"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                url: resolved.url,
                topics,
                cache,
                auth,
                feeds: Arc::new(Feeds::stopped_by(feed_context.stop.clone())),
                shards: Arc::new(shards(&config)),
                board,
                budget,
                feed_context,
                publisher,
                retainer,
                health,
                stop,
                config,
            }),
        })
    }

    /// The cache in use.
    pub fn cache_name(&self) -> &str {
        &self.inner.config.cache
    }

    /// The topics endpoint connections go to.
    pub fn endpoint(&self) -> &str {
        &self.inner.url
    }

    /// What the transport has counted since it connected.
    pub fn stats(&self) -> MomentoStats {
        let counters = &self.inner.feed_context.counters;
        let publisher = self.inner.publisher.as_ref();
        MomentoStats {
            reconnects: counters.restarts.load(Ordering::Relaxed),
            duplicates: counters.duplicates.load(Ordering::Relaxed),
            gaps: counters.gaps.load(Ordering::Relaxed),
            conflated: publisher.map_or(0, Pacer::conflated)
                + self
                    .inner
                    .board
                    .as_ref()
                    .map_or(0, |(board, _)| board.conflated()),
            failed_sends: publisher.map_or(0, Pacer::failed)
                + self
                    .inner
                    .board
                    .as_ref()
                    .map_or(0, |(_, pacer)| pacer.failed())
                + self.inner.retainer.failed(),
        }
    }

    fn check_payload(&self, topic: &str, payload: &Bytes) -> Result<(), Error> {
        validate_topic(topic)?;
        // A shared topic's envelope names it in the same message.
        let limit = if self.inner.shards.on_board(topic) && self.inner.board.is_some() {
            self.inner
                .config
                .max_payload
                .saturating_sub(1 + shards::record_len(topic, b""))
        } else if self.inner.shards.covers(topic) {
            self.inner
                .config
                .max_payload
                .saturating_sub(Shards::overhead(topic))
        } else {
            self.inner.config.max_payload
        };
        Error::check_size(BACKEND, payload, limit)
    }

    async fn publish_now(&self, topic: &str, payload: Bytes) -> Result<(), Error> {
        let inner = &*self.inner;
        budget::take(inner.budget.as_deref()).await;
        send_publish(&inner.topics, &inner.config.cache, topic, payload).await
    }
}

/// The topics received over shared Momento topics: the order shards and
/// the board.
fn shards(config: &MomentoConfig) -> Shards {
    let shards = Shards::new(&config.sharded_prefix, config.shards);
    match &config.board {
        Some(board) => shards.with_board(&config.paced_prefix, &board.topic),
        None => shards,
    }
}

/// Makes sure the cache exists, creating it when allowed.
async fn ensure_cache(cache: &CacheClient, config: &MomentoConfig) -> Result<(), Error> {
    let name = &config.cache;
    let unreachable = |e: &MomentoError| {
        let hint = match e.error_code {
            MomentoErrorCode::AuthenticationError => {
                " (check MOMENTO_API_KEY; for fxcast momento-local any key works unless it was \
                 started with --api-key)"
            }
            MomentoErrorCode::ServerUnavailable | MomentoErrorCode::TimeoutError => {
                " (is the endpoint right and reachable? for fxcast momento-local pass \
                 --momento-endpoint http://HOST:PORT)"
            }
            _ => "",
        };
        Error::Unavailable {
            backend: BACKEND,
            message: format!(
                "cannot reach the Momento cache {name:?}: {} ({:?}){hint}",
                e.message, e.error_code
            ),
        }
    };
    if config.create_cache {
        match cache.create_cache(name.as_str()).await {
            Ok(CreateCacheResponse::Created) => {
                tracing::info!(cache = %name, "created the momento cache");
                return Ok(());
            }
            Ok(CreateCacheResponse::AlreadyExists) => return Ok(()),
            // The key may not manage caches; the cache may exist anyway.
            Err(e) if e.error_code == MomentoErrorCode::PermissionError => {}
            Err(e) => return Err(unreachable(&e)),
        }
    }
    match cache.get(name.as_str(), "fxcast:probe").await {
        Ok(_) => Ok(()),
        Err(e) if e.error_code == MomentoErrorCode::CacheNotFoundError => {
            let why = if config.create_cache {
                " and this API key may not create caches"
            } else {
                ""
            };
            Err(Error::Unavailable {
                backend: BACKEND,
                message: format!(
                    "the Momento cache {name:?} does not exist{why}: create it in the Momento \
                     console or with the Momento CLI (`momento cache create {name}`), or name an \
                     existing one with --momento-cache"
                ),
            })
        }
        Err(e) => Err(unreachable(&e)),
    }
}

async fn send_publish(
    topics: &TopicClient,
    cache: &str,
    topic: &str,
    payload: Bytes,
) -> Result<(), Error> {
    topics
        .publish(cache, topic, Vec::from(payload))
        .await
        .map(drop)
        .map_err(|e| unavailable(&format!("publish to {topic}"), &e))
}

fn publish_fn(topics: TopicClient, cache: String, budget: Option<Arc<Budget>>) -> SendFn {
    Arc::new(move |topic, payload| {
        let topics = topics.clone();
        let cache = cache.clone();
        let budget = budget.clone();
        Box::pin(async move {
            budget::take(budget.as_deref()).await;
            send_publish(&topics, &cache, &topic, payload).await
        })
    })
}

/// The cache key of `topic`'s retained payload.
fn retained_key(topic: &str) -> String {
    format!("latest:{topic}")
}

fn retain_fn(
    cache_client: CacheClient,
    cache: String,
    ttl: Duration,
    budget: Option<Arc<Budget>>,
) -> SendFn {
    Arc::new(move |topic, payload| {
        let cache_client = cache_client.clone();
        let budget = budget.clone();
        let request =
            SetRequest::new(cache.clone(), retained_key(&topic), Vec::from(payload)).ttl(ttl);
        Box::pin(async move {
            budget::take(budget.as_deref()).await;
            cache_client
                .send_request(request)
                .await
                .map(drop)
                .map_err(|e| unavailable(&format!("retain {topic}"), &e))
        })
    })
}

impl Transport for MomentoTransport {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(async move {
            self.check_payload(topic, &payload)?;
            let paced = topic.starts_with(&self.inner.config.paced_prefix);
            match (&self.inner.board, &self.inner.publisher) {
                (Some((board, pacer)), _) if paced => {
                    board.hold(topic, payload);
                    let board_topic = self.inner.config.board.as_ref().map(|b| b.topic.as_str());
                    pacer.offer(board_topic.unwrap_or_default(), Bytes::new());
                    Ok(())
                }
                (_, Some(pacer)) if paced => {
                    pacer.offer(topic, payload);
                    Ok(())
                }
                _ if self.inner.shards.covers(topic) => {
                    let (shard, envelope) = self.inner.shards.wrap(topic, &payload);
                    self.publish_now(&shard, envelope).await
                }
                _ => self.publish_now(topic, payload).await,
            }
        })
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> Call<'a, Subscription> {
        Box::pin(async move {
            validate_topic(topic)?;
            let inner = &*self.inner;
            if inner.shards.shared(topic) {
                return inner
                    .shards
                    .subscribe(&inner.feeds, &inner.feed_context, topic)
                    .await;
            }
            feed::subscribe(&inner.feeds, &inner.feed_context, topic).await
        })
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        if self.inner.shards.shared(topic) {
            return self.inner.shards.local_subscribers(topic);
        }
        self.inner.feeds.local_subscribers(topic)
    }

    fn health(&self) -> watch::Receiver<TransportHealth> {
        self.inner.health.subscribe()
    }

    fn retain<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(async move {
            self.check_payload(topic, &payload)?;
            self.inner.retainer.offer(topic, payload);
            Ok(())
        })
    }

    /// Written at once (not paced or conflated: this is for rare state such
    /// as revocations), for the longer of `keep` and the retained TTL.
    fn retain_for<'a>(&'a self, topic: &'a str, payload: Bytes, keep: Duration) -> Call<'a, ()> {
        Box::pin(async move {
            validate_topic(topic)?;
            Error::check_size(BACKEND, &payload, MAX_ITEM_BYTES)?;
            let inner = &*self.inner;
            let ttl = keep.max(inner.config.retain_ttl);
            let request = SetRequest::new(
                inner.config.cache.clone(),
                retained_key(topic),
                Vec::from(payload),
            )
            .ttl(ttl);
            budget::take(inner.budget.as_deref()).await;
            let call = inner.cache.send_request(request).map_err(|e| described(&e));
            inner
                .within(format!("retain {topic}"), call)
                .await
                .map(drop)
        })
    }

    fn retained<'a>(&'a self, topic: &'a str) -> Call<'a, Option<Bytes>> {
        Box::pin(async move {
            validate_topic(topic)?;
            let inner = &*self.inner;
            budget::take(inner.budget.as_deref()).await;
            let get = inner
                .cache
                .get(inner.config.cache.as_str(), retained_key(topic));
            let got = inner.within(
                format!("read the retained {topic}"),
                get.map_err(|e| described(&e)),
            );
            Ok(match got.await? {
                GetResponse::Hit { value } => Some(Bytes::from(Vec::<u8>::from(value))),
                GetResponse::Miss => None,
            })
        })
    }

    fn subscriber_access<'a>(
        &'a self,
        topics: &'a [String],
        valid_for: Duration,
    ) -> Call<'a, Option<SubscriberAccess>> {
        Box::pin(async move {
            for topic in topics {
                validate_topic(topic)?;
            }
            if topics.is_empty() {
                return Ok(None);
            }
            if valid_for < Duration::from_secs(1) {
                return Err(Error::InvalidConfig(
                    "momento: subscriber tokens must live at least one second".to_owned(),
                ));
            }
            let inner = &*self.inner;
            // With a board, the rates travel only on it, and it shows every
            // symbol: a token that may see only some gets no direct access.
            let board_topics;
            let topics = match &inner.config.board {
                Some(board) if topics.iter().any(|t| inner.shards.on_board(t)) => {
                    let all = board.topics.iter().all(|t| topics.contains(t));
                    if !all {
                        tracing::debug!(
                            "momento: the board shows every symbol; no subscriber token for a \
                             caller that may see only some"
                        );
                        return Ok(None);
                    }
                    board_topics = [board.topic.clone()];
                    &board_topics[..]
                }
                _ => topics,
            };
            // Subscribe-only, on exactly these topics of this cache: never
            // publish, never the cache's items, never other caches.
            let permissions = Permissions {
                permissions: topics
                    .iter()
                    .map(|topic| {
                        Permission::TopicPermission(TopicPermission {
                            role: TopicRole::SubscribeOnly,
                            cache: CacheSelector::CacheName {
                                name: inner.config.cache.clone(),
                            },
                            topic: TopicSelector::TopicName {
                                name: topic.clone(),
                            },
                        })
                    })
                    .collect(),
            };
            let seconds = valid_for.min(MAX_TOKEN_LIFETIME).as_secs();
            let minted = inner
                .auth
                .generate_disposable_token(permissions.into(), ExpiresIn::seconds(seconds))
                .await
                .map_err(|e| unavailable("mint a subscriber token", &e))?;
            let expires_at = UNIX_EPOCH + Duration::from_secs(minted.clone().expires_at().epoch());
            Ok(Some(SubscriberAccess {
                token: minted.auth_token().into(),
                expires_at: expires_at.min(SystemTime::now() + valid_for),
                namespace: inner.config.cache.clone(),
                topics: topics.to_vec(),
                endpoint: inner.url.clone(),
                max_messages_per_second: inner.config.max_publish_rate,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_counts_a_message_per_rate_or_per_board() {
        let per_topic = MomentoConfig {
            max_publish_rate: NonZeroU32::new(10),
            ..MomentoConfig::default()
        };
        // 20 symbols ticking 4 times a second, under the pace of 10.
        let plan = per_topic.ops_plan(20, Some(4.0)).unwrap();
        assert_eq!(plan.publishes, 80.0);
        assert_eq!(plan.deliveries_per_subscriber, 80.0);
        let board = MomentoConfig {
            board: Some(MomentoBoard {
                topic: "board.rates".into(),
                topics: Vec::new(),
            }),
            ..per_topic.clone()
        };
        // 10 boards a second, each of 8 records (880 bytes): one KiB each.
        let plan = board.ops_plan(20, Some(4.0)).unwrap();
        assert_eq!(plan.publishes, 10.0);
        assert_eq!(plan.cache_writes, 80.0);
        // 200 symbols: 80 records (8,800 bytes) per board, 9 KiB.
        assert_eq!(board.ops_plan(200, Some(4.0)).unwrap().publishes, 90.0);
        assert!(MomentoConfig::default().ops_plan(5, None).is_none());
    }

    #[test]
    fn settings_are_checked() {
        crate::assert_refused(
            MomentoConfig::validate,
            &[
                (|c| c.cache = "no spaces".into(), "cache name"),
                (|c| c.max_payload = 5000, "max_payload"),
                (|c| c.buffer = 0, "buffer"),
            ],
        );
        let debug = format!(
            "{:?}",
            MomentoConfig {
                api_key: "top-secret".into(),
                ..MomentoConfig::default()
            }
        );
        assert!(!debug.contains("top-secret"), "{debug}");
    }
}
