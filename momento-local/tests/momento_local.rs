//! momento-local as Momento's own Rust SDK sees it: the server runs
//! in-process on an ephemeral port, the SDK is pointed at it with
//! `insecure_endpoint_override("http://127.0.0.1:PORT")`, and each test
//! asserts on what the SDK returns. Where the SDK hides the protocol
//! (heartbeats, discontinuities) a raw client built from `momento-protos`
//! checks the exact messages on the wire; gRPC-web is exercised with
//! tonic-web's client over HTTP/1.1.

use std::{
    collections::HashMap,
    net::SocketAddr,
    ops::RangeInclusive,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::StreamExt;
use fxcast_momento_local::{AcceptedKeys, Error, MomentoLocalConfig, serve};
use momento::{
    AuthClient, CacheClient, CredentialProvider, MomentoError, MomentoErrorCode,
    MomentoErrorCode::{
        AuthenticationError, BadRequestError, CacheNotFoundError, FailedPreconditionError,
        InvalidArgumentError, LimitExceededError, PermissionError,
    },
    TopicClient,
    auth::{DisposableTokenScopes, ExpiresIn, GenerateDisposableTokenRequest, PermissionScopes},
    cache::{
        CreateCacheResponse, DecreaseTtlResponse, GetResponse, IncreaseTtlResponse,
        ItemGetTtlResponse, SetRequest,
    },
    topics::{IntoTopicValue, SubscribeRequest, Subscription, SubscriptionValue, ValueKind},
};
use momento_protos::{
    cache_client::pubsub::{
        PublishRequest, SubscriptionItem, SubscriptionRequest, TopicItem, TopicValue,
        pubsub_client::PubsubClient, subscription_item::Kind, topic_value,
    },
    control_client::{CreateSigningKeyRequest, scs_control_client::ScsControlClient},
    leaderboard::{DeleteLeaderboardRequest, leaderboard_client::LeaderboardClient},
    token::{
        GenerateDisposableTokenRequest as RawTokenRequest, generate_disposable_token_request,
        token_client::TokenClient,
    },
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tonic::{Code, Status, Streaming, metadata::AsciiMetadataValue, transport::Channel};

/// How long any single expected event may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(20);

const CACHE: &str = "fxcast";

/// Starts momento-local on an ephemeral port with `config`, the cache
/// [`CACHE`] created.
async fn start(mut config: MomentoLocalConfig) -> Local {
    config.caches.push(CACHE.to_owned());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(serve(listener, config, stop.clone().cancelled_owned()));
    Local { addr, server, stop }
}

/// Starts momento-local with the default settings but what `change` sets.
async fn start_with(change: impl FnOnce(&mut MomentoLocalConfig)) -> Local {
    let mut config = MomentoLocalConfig::default();
    change(&mut config);
    start(config).await
}

async fn start_default() -> Local {
    start(MomentoLocalConfig::default()).await
}

/// [`start_default`], and a cache client with the development key.
async fn with_dev_cache() -> (Local, CacheClient) {
    let local = start_default().await;
    let cache = local.dev_cache();
    (local, cache)
}

/// A v1 token as Momento issues them: base64 of `{"endpoint", "api_key"}`.
fn v1_token(api_key: &str) -> String {
    STANDARD.encode(format!(
        r#"{{"endpoint":"127.0.0.1","api_key":"{api_key}"}}"#
    ))
}

/// A momento-local running in this test: where, and how to stop it.
struct Local {
    addr: SocketAddr,
    server: JoinHandle<Result<(), Error>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Local {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SDK credentials for `api_key`, pointed at this server in plaintext.
    fn credentials(&self, api_key: &str) -> CredentialProvider {
        self.credentials_from_token(&v1_token(api_key))
    }

    /// SDK credentials from a disposable token as the SDK returns it.
    fn credentials_from_token(&self, token: &str) -> CredentialProvider {
        CredentialProvider::from_disposable_token(token)
            .unwrap()
            .insecure_endpoint_override(&self.url())
    }

    fn topics(&self, credentials: CredentialProvider) -> TopicClient {
        TopicClient::builder()
            .configuration(momento::topics::configurations::Laptop::latest())
            .credential_provider(credentials)
            .build()
            .unwrap()
    }

    /// A cache client whose items live 60 s unless told otherwise.
    fn cache(&self, credentials: CredentialProvider) -> CacheClient {
        let laptop = momento::cache::configurations::Laptop::latest();
        let builder = CacheClient::builder().default_ttl(Duration::from_secs(60));
        let builder = builder
            .configuration(laptop)
            .credential_provider(credentials);
        builder.build().unwrap()
    }

    /// A cache client with the development key "dev".
    fn dev_cache(&self) -> CacheClient {
        self.cache(self.credentials("dev"))
    }

    /// A topic client with the development key "dev".
    fn dev_topics(&self) -> TopicClient {
        self.topics(self.credentials("dev"))
    }

    fn auth(&self, credentials: CredentialProvider) -> AuthClient {
        AuthClient::builder()
            .credential_provider(credentials)
            .build()
            .unwrap()
    }

    /// A plain tonic channel, for what the SDK does not expose.
    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn raw_pubsub(&self) -> PubsubClient<Channel> {
        PubsubClient::new(self.channel().await)
    }

    /// A raw subscription to `topic` from the start, past its first
    /// heartbeat.
    async fn subscribed(&self, topic: &str) -> Streaming<SubscriptionItem> {
        let mut stream = raw_subscribe(&mut self.raw_pubsub().await, topic, 0, 0).await;
        expect_heartbeat(&mut stream).await;
        stream
    }

    /// Stops the server and waits for it to finish.
    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("momento-local did not stop")
            .unwrap()
            .unwrap();
    }
}

/// `text` contains `part`, or the failure shows `text`.
fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{text}");
}

fn with_key<T>(message: T, api_key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        AsciiMetadataValue::try_from(api_key).unwrap(),
    );
    request
}

async fn next_value(subscription: &mut Subscription) -> SubscriptionValue {
    tokio::time::timeout(DEADLINE, subscription.next())
        .await
        .expect("no topic value within the deadline")
        .expect("subscription ended")
}

fn text(value: &SubscriptionValue) -> &str {
    match &value.kind {
        ValueKind::Text(text) => text,
        ValueKind::Binary(bytes) => panic!("expected text, got {bytes:?}"),
    }
}

async fn next_raw(stream: &mut Streaming<SubscriptionItem>) -> Kind {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("no subscription item within the deadline")
        .expect("subscription failed")
        .expect("subscription ended")
        .kind
        .expect("subscription item without a kind")
}

/// The next item of a raw subscription that is not a heartbeat.
async fn next_non_heartbeat(stream: &mut Streaming<SubscriptionItem>) -> Kind {
    loop {
        match next_raw(stream).await {
            Kind::Heartbeat(_) => continue,
            other => return other,
        }
    }
}

/// The item `kind` must be.
fn expect_item(kind: Kind) -> TopicItem {
    match kind {
        Kind::Item(item) => item,
        other => panic!("expected an item, got {other:?}"),
    }
}

/// `item` must be the text `text` numbered `sequence`.
fn assert_text_item(item: TopicItem, sequence: u64, text: &str) {
    assert_eq!(item.topic_sequence_number, sequence);
    assert_eq!(item.value.and_then(|v| v.kind), Some(text_value(text)));
}

/// The next item of a raw subscription, which must be a heartbeat.
async fn expect_heartbeat(stream: &mut Streaming<SubscriptionItem>) {
    let kind = next_raw(stream).await;
    assert!(
        matches!(kind, Kind::Heartbeat(_)),
        "expected a heartbeat, got {kind:?}"
    );
}

/// The TTL `key` in [`CACHE`] has left; it must exist.
async fn remaining_ttl(cache: &CacheClient, key: &str) -> Duration {
    let response = cache.item_get_ttl(CACHE, key).await.unwrap();
    response.try_into().unwrap()
}

/// The status a raw subscription ends with; it must end with one.
async fn end_status(stream: &mut Streaming<SubscriptionItem>) -> Status {
    loop {
        match tokio::time::timeout(DEADLINE, stream.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without saying why"),
            Err(status) => return status,
        }
    }
}

/// A subscription to `topic` in [`CACHE`] from `resume_at` on `page` (0, 0:
/// live only).
fn subscription_request(topic: &str, resume_at: u64, page: u64) -> SubscriptionRequest {
    SubscriptionRequest {
        cache_name: CACHE.into(),
        topic: topic.into(),
        resume_at_topic_sequence_number: resume_at,
        sequence_page: page,
    }
}

fn publish_request(cache: &str, topic: &str, value: topic_value::Kind) -> PublishRequest {
    PublishRequest {
        cache_name: cache.into(),
        topic: topic.into(),
        value: Some(TopicValue { kind: Some(value) }),
    }
}

fn text_value(text: &str) -> topic_value::Kind {
    topic_value::Kind::Text(text.into())
}

async fn raw_subscribe(
    client: &mut PubsubClient<Channel>,
    topic: &str,
    resume_at: u64,
    page: u64,
) -> Streaming<SubscriptionItem> {
    client
        .subscribe(subscription_request(topic, resume_at, page))
        .await
        .unwrap()
        .into_inner()
}

async fn raw_publish(client: &mut PubsubClient<Channel>, topic: &str, value: topic_value::Kind) {
    client
        .publish(publish_request(CACHE, topic, value))
        .await
        .unwrap();
}

/// Publishes `value` to `topic` in [`CACHE`] through the SDK.
async fn publish(topics: &TopicClient, topic: &str, value: impl IntoTopicValue + Send) {
    topics.publish(CACHE, topic, value).await.unwrap();
}

/// Subscribes to `topic` in [`CACHE`] through the SDK, resuming at `at`
/// on `page`.
async fn resume(topics: &TopicClient, topic: &str, at: u64, page: Option<u64>) -> Subscription {
    let request = SubscribeRequest::new(CACHE, topic, Some(at), page);
    topics.send_request(request).await.unwrap()
}

/// Publishes `m{n}` for every `n` in `numbers`.
async fn publish_numbered(topics: &TopicClient, topic: &str, numbers: RangeInclusive<u64>) {
    for n in numbers {
        publish(topics, topic, format!("m{n}")).await;
    }
}

/// Receives `m{n}` numbered `n` for every `n` in `numbers`.
async fn expect_numbered(subscription: &mut Subscription, numbers: RangeInclusive<u64>) {
    for n in numbers {
        let value = next_value(subscription).await;
        assert_eq!(value.topic_sequence_number, n);
        assert_eq!(text(&value), format!("m{n}"));
    }
}

/// The server's own message in `result`, which must be an error with
/// `code`.
fn expect_error<T>(result: Result<T, MomentoError>, code: MomentoErrorCode) -> String {
    let Err(error) = result else {
        panic!("expected an error");
    };
    assert_eq!(error.error_code, code, "{error:?}");
    // The server's own message, under the SDK's generic one.
    error.details().map(|d| d.message).unwrap_or_default()
}

/// The `api_key` inside a disposable token as the SDK returns it
/// (base64 of `{"endpoint", "api_key"}`).
fn api_key_in(token: &str) -> String {
    let json = STANDARD.decode(token).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    value["api_key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn publish_and_subscribe_in_order_with_text_and_binary() {
    let local = start_default().await;
    let topics = local.dev_topics();
    // Published before anyone subscribed: a subscription without a resume
    // point starts with the next message.
    publish(&topics, "rates.USD_JPY", "before").await;
    let mut subscription = topics.subscribe(CACHE, "rates.USD_JPY").await.unwrap();

    publish(&topics, "rates.USD_JPY", "first").await;
    publish(&topics, "rates.USD_JPY", vec![0u8, 255, 7]).await;
    publish(&topics, "rates.USD_JPY", "third").await;
    // Another topic has its own numbering.
    publish(&topics, "rates.EUR_USD", "other").await;

    let first = next_value(&mut subscription).await;
    assert_eq!((text(&first), first.topic_sequence_number), ("first", 2));
    assert!(first.topic_sequence_page > 0, "{first:?}");
    assert_eq!(first.publisher_id, "", "API-key publishers have no id");
    let second = next_value(&mut subscription).await;
    assert_eq!(second.kind, ValueKind::Binary(vec![0, 255, 7]));
    assert_eq!(second.topic_sequence_number, 3);
    let third = next_value(&mut subscription).await;
    assert_eq!((text(&third), third.topic_sequence_number), ("third", 4));
    assert_eq!(third.topic_sequence_page, first.topic_sequence_page);

    let mut other = resume(&topics, "rates.EUR_USD", 1, None).await;
    let value = next_value(&mut other).await;
    assert_eq!((text(&value), value.topic_sequence_number), ("other", 1));
    assert_ne!(value.topic_sequence_page, first.topic_sequence_page);
    local.shutdown().await;
}

#[tokio::test]
async fn every_subscriber_gets_every_message() {
    let local = start_default().await;
    let topics = local.dev_topics();
    let mut subscriptions = Vec::new();
    for _ in 0..8 {
        subscriptions.push(topics.subscribe(CACHE, "fanout").await.unwrap());
    }
    publish_numbered(&topics, "fanout", 1..=50).await;
    for subscription in &mut subscriptions {
        expect_numbered(subscription, 1..=50).await;
    }
    local.shutdown().await;
}

#[tokio::test]
async fn resume_after_a_reconnect_replays_from_the_sequence_number() {
    let local = start_default().await;
    let topics = local.dev_topics();
    let mut subscription = topics.subscribe(CACHE, "resume").await.unwrap();
    publish_numbered(&topics, "resume", 1..=5).await;
    let mut last = None;
    for _ in 1..=5 {
        last = Some(next_value(&mut subscription).await);
    }
    let last = last.unwrap();
    drop(subscription);

    // Published while disconnected.
    publish_numbered(&topics, "resume", 6..=8).await;
    // Resuming at a sequence number replays from it, inclusive, as Momento
    // does (the SDK resumes at the last number it saw).
    let (at, page) = (last.topic_sequence_number, last.topic_sequence_page);
    let mut resumed = resume(&topics, "resume", at, Some(page)).await;
    expect_numbered(&mut resumed, 5..=8).await;
    publish(&topics, "resume", "m9").await;
    let live = next_value(&mut resumed).await;
    assert_eq!((text(&live), live.topic_sequence_number), ("m9", 9));

    // A page this topic never had: its numbers no longer apply, so all
    // that is held is replayed from the start of the current page.
    let mut stale = resume(&topics, "resume", 300, Some(page + 12345)).await;
    for n in 1..=9u64 {
        assert_eq!(next_value(&mut stale).await.topic_sequence_number, n);
    }
    local.shutdown().await;
}

#[tokio::test]
async fn resume_beyond_the_history_announces_a_discontinuity() {
    let local = start_with(|config| config.topic_history = 4).await;
    let mut client = local.raw_pubsub().await;
    for n in 1..=10 {
        raw_publish(&mut client, "short", text_value(&format!("m{n}"))).await;
    }
    // The first message names the page.
    let mut probe = raw_subscribe(&mut client, "short", 10, 0).await;
    let item = expect_item(next_non_heartbeat(&mut probe).await);
    assert_eq!(item.topic_sequence_number, 10);
    let page = item.sequence_page;

    let mut stream = raw_subscribe(&mut client, "short", 2, page).await;
    // A subscription starts with a heartbeat.
    expect_heartbeat(&mut stream).await;
    match next_raw(&mut stream).await {
        Kind::Discontinuity(d) => {
            assert_eq!(
                (
                    d.last_topic_sequence,
                    d.new_topic_sequence,
                    d.new_sequence_page
                ),
                (2, 7, page)
            );
        }
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    for n in 7..=10 {
        assert_eq!(
            expect_item(next_raw(&mut stream).await).topic_sequence_number,
            n
        );
    }
    local.shutdown().await;
}

/// Publishes `count` 4000-byte values as fast as the server takes them.
async fn flood(local: &Local, topic: &str, count: u64) {
    let mut client = local.raw_pubsub().await;
    for n in 1..=count {
        let mut value = vec![0u8; 4000];
        value[..8].copy_from_slice(&n.to_be_bytes());
        raw_publish(&mut client, topic, topic_value::Kind::Binary(value)).await;
    }
}

#[tokio::test]
async fn a_lagging_subscriber_gets_a_discontinuity_then_newer_messages() {
    let local = start_with(|config| config.subscriber_buffer = 16).await;
    // Small HTTP/2 windows: the stalled reader stops the server quickly.
    let channel = tonic::transport::Endpoint::from_shared(local.url())
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut slow = PubsubClient::new(channel);
    let mut stream = raw_subscribe(&mut slow, "flood", 0, 0).await;
    expect_heartbeat(&mut stream).await;

    let total = 3000;
    flood(&local, "flood", total).await;

    let mut last = 0;
    let mut page = None;
    let mut discontinuities = 0;
    let mut received = 0;
    while last < total {
        match next_non_heartbeat(&mut stream).await {
            Kind::Item(item) => {
                assert_eq!(item.topic_sequence_number, last + 1, "a silent gap");
                assert_eq!(*page.get_or_insert(item.sequence_page), item.sequence_page);
                let Some(topic_value::Kind::Binary(bytes)) = item.value.and_then(|v| v.kind) else {
                    panic!("expected a binary value");
                };
                assert_eq!(bytes[..8], item.topic_sequence_number.to_be_bytes());
                last = item.topic_sequence_number;
                received += 1;
            }
            Kind::Discontinuity(d) => {
                assert_eq!(d.last_topic_sequence, last);
                assert!(d.new_topic_sequence > last + 1, "{d:?}");
                if let Some(page) = page {
                    assert_eq!(d.new_sequence_page, page);
                }
                discontinuities += 1;
                last = d.new_topic_sequence - 1;
            }
            Kind::Heartbeat(_) => unreachable!(),
        }
    }
    assert!(
        discontinuities >= 1,
        "no discontinuity for a stalled reader"
    );
    assert!(received < total, "{received} of {total} delivered");
    local.shutdown().await;
}

#[tokio::test]
async fn the_sdk_skips_ahead_when_its_subscription_lags() {
    let local = start_with(|config| config.subscriber_buffer = 16).await;
    let topics = local.dev_topics();
    let mut subscription = topics.subscribe(CACHE, "flood").await.unwrap();
    // Larger than the SDK's HTTP/2 windows (2 MiB per stream).
    let total = 2000;
    flood(&local, "flood", total).await;
    let mut previous = 0;
    let mut jumped = false;
    loop {
        let value = next_value(&mut subscription).await;
        let n = value.topic_sequence_number;
        assert!(n > previous, "out of order: {n} after {previous}");
        jumped |= n > previous + 1;
        previous = n;
        if n == total {
            break;
        }
    }
    assert!(jumped, "a stalled SDK subscription received every message");
    local.shutdown().await;
}

#[tokio::test]
async fn idle_subscriptions_get_heartbeats() {
    let local = start_with(|config| config.heartbeat_interval = Duration::from_millis(50)).await;
    let mut client = local.raw_pubsub().await;
    let mut stream = raw_subscribe(&mut client, "quiet", 0, 0).await;
    for _ in 0..3 {
        expect_heartbeat(&mut stream).await;
    }
    raw_publish(&mut client, "quiet", text_value("hello")).await;
    let item = expect_item(next_non_heartbeat(&mut stream).await);
    assert_eq!(item.topic_sequence_number, 1);
    local.shutdown().await;
}

#[tokio::test]
async fn messages_over_the_payload_limit_are_refused() {
    let local = start_default().await;
    let topics = local.dev_topics();
    topics
        .publish(CACHE, "big", vec![1u8; 4096])
        .await
        .expect("4 KiB is allowed");
    let error = topics
        .publish(CACHE, "big", vec![1u8; 4097])
        .await
        .expect_err("over 4 KiB");
    // The `err` code tells the SDK which limit it was.
    assert_eq!(
        error.message,
        "Request size limit exceeded for this account"
    );
    let details = expect_error(Err::<(), _>(error), LimitExceededError);
    assert_contains(&details, "4097 bytes exceeds the 4096-byte limit");
    local.shutdown().await;
}

#[tokio::test]
async fn unknown_caches_are_not_found() {
    let local = start_default().await;
    let credentials = local.credentials("dev");
    let topics = local.topics(credentials.clone());
    let cache = local.cache(credentials);
    let details = expect_error(topics.publish("nope", "t", "x").await, CacheNotFoundError);
    assert_contains(&details, "\"nope\"");
    expect_error(topics.subscribe("nope", "t").await, CacheNotFoundError);
    let details = expect_error(cache.get("nope", "k").await, CacheNotFoundError);
    assert_contains(&details, "\"nope\"");
    local.shutdown().await;
}

#[tokio::test]
async fn deleting_a_cache_ends_its_subscriptions() {
    let local = start_default().await;
    let mut stream = local.subscribed("doomed").await;
    local.dev_cache().delete_cache(CACHE).await.unwrap();
    let status = end_status(&mut stream).await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(CACHE), "{status:?}");
    local.shutdown().await;
}

#[tokio::test]
async fn cache_items_set_get_delete_and_expire() {
    let (local, cache) = with_dev_cache().await;

    cache.set(CACHE, "k", "v").await.unwrap();
    let got: String = cache.get(CACHE, "k").await.unwrap().try_into().unwrap();
    assert_eq!(got, "v");
    assert_eq!(cache.get(CACHE, "absent").await.unwrap(), GetResponse::Miss);

    let secs = Duration::from_secs;
    let remaining = remaining_ttl(&cache, "k").await;
    assert!(
        remaining <= secs(60) && remaining > secs(50),
        "{remaining:?}"
    );
    let increase = |ttl| cache.increase_ttl(CACHE, "k", secs(ttl));
    assert_eq!(increase(30).await.unwrap(), IncreaseTtlResponse::NotSet);
    assert_eq!(increase(600).await.unwrap(), IncreaseTtlResponse::Set);
    let decrease = |ttl| cache.decrease_ttl(CACHE, "k", secs(ttl));
    assert_eq!(decrease(900).await.unwrap(), DecreaseTtlResponse::NotSet);
    assert_eq!(decrease(20).await.unwrap(), DecreaseTtlResponse::Set);
    let remaining = remaining_ttl(&cache, "k").await;
    assert!(remaining <= secs(20), "{remaining:?}");
    assert_eq!(
        cache.item_get_ttl(CACHE, "absent").await.unwrap(),
        ItemGetTtlResponse::Miss
    );

    let exists: Vec<bool> = cache
        .keys_exist(CACHE, vec!["k", "absent"])
        .await
        .unwrap()
        .into();
    assert_eq!(exists, vec![true, false]);

    cache.delete(CACHE, "k").await.unwrap();
    assert_eq!(cache.get(CACHE, "k").await.unwrap(), GetResponse::Miss);

    cache
        .set_batch(CACHE, vec![("a", "1"), ("b", "2")])
        .await
        .unwrap();
    let batch: HashMap<String, String> = cache
        .get_batch(CACHE, vec!["a", "b", "c"])
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        batch,
        HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
    );

    // A short TTL: present, then gone once it has passed.
    let ttl = Duration::from_secs(1);
    cache
        .send_request(SetRequest::new(CACHE, "short", "x").ttl(ttl))
        .await
        .unwrap();
    let written = Instant::now();
    assert_ne!(cache.get(CACHE, "short").await.unwrap(), GetResponse::Miss);
    tokio::time::sleep_until((written + ttl).into()).await;
    assert_eq!(cache.get(CACHE, "short").await.unwrap(), GetResponse::Miss);
    local.shutdown().await;
}

#[tokio::test]
async fn increment_counts_and_refuses_non_integers() {
    let (local, cache) = with_dev_cache().await;
    assert_eq!(cache.increment(CACHE, "n", 5).await.unwrap().value(), 5);
    assert_eq!(cache.increment(CACHE, "n", -2).await.unwrap().value(), 3);
    let stored: String = cache.get(CACHE, "n").await.unwrap().try_into().unwrap();
    assert_eq!(stored, "3");
    cache.set(CACHE, "word", "abc").await.unwrap();
    expect_error(
        cache.increment(CACHE, "word", 1).await,
        FailedPreconditionError,
    );
    cache.set(CACHE, "max", i64::MAX.to_string()).await.unwrap();
    expect_error(
        cache.increment(CACHE, "max", 1).await,
        FailedPreconditionError,
    );
    local.shutdown().await;
}

#[tokio::test]
async fn items_over_the_size_limit_are_refused() {
    let local = start_with(|config| config.max_item_bytes = 1000).await;
    let cache = local.dev_cache();
    cache.set(CACHE, "ok", vec![0u8; 1000]).await.unwrap();
    let error = cache
        .set(CACHE, "big", vec![0u8; 1001])
        .await
        .expect_err("over the item limit");
    assert_eq!(error.message, "Item size limit exceeded for this account");
    let details = expect_error(Err::<(), _>(error), LimitExceededError);
    assert_contains(&details, "1001 bytes");
    local.shutdown().await;
}

#[tokio::test]
async fn caches_are_created_listed_flushed_and_deleted() {
    let (local, cache) = with_dev_cache().await;
    assert_eq!(
        cache.create_cache("orders").await.unwrap(),
        CreateCacheResponse::Created
    );
    assert_eq!(
        cache.create_cache("orders").await.unwrap(),
        CreateCacheResponse::AlreadyExists
    );
    let listed = cache.list_caches().await.unwrap().caches;
    let names: Vec<_> = listed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec![CACHE, "orders"]);
    assert_eq!(listed[0].topic_limits.max_publish_message_size_kb, 4);
    assert!(!listed[0].cache_id.is_empty());

    cache.set("orders", "k", "v").await.unwrap();
    cache.flush_cache("orders").await.unwrap();
    assert_eq!(cache.get("orders", "k").await.unwrap(), GetResponse::Miss);

    cache.delete_cache("orders").await.unwrap();
    expect_error(cache.delete_cache("orders").await, CacheNotFoundError);
    expect_error(cache.get("orders", "k").await, CacheNotFoundError);
    let names: Vec<_> = cache
        .list_caches()
        .await
        .unwrap()
        .caches
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec![CACHE.to_owned()]);
    expect_error(cache.create_cache("").await, InvalidArgumentError);
    local.shutdown().await;
}

/// Mints a disposable token with `scope` for five minutes through the SDK.
async fn mint(
    local: &Local,
    scope: impl Into<momento::auth::DisposableTokenScope>,
    token_id: Option<&str>,
) -> String {
    mint_expiring(local, scope, ExpiresIn::minutes(5), token_id)
        .await
        .0
}

/// Mints a disposable token with `scope` through the SDK; returns it and
/// when it expires, in seconds since the epoch.
async fn mint_expiring(
    local: &Local,
    scope: impl Into<momento::auth::DisposableTokenScope>,
    expires: ExpiresIn,
    token_id: Option<&str>,
) -> (String, u64) {
    let auth = local.auth(local.credentials("dev"));
    let mut request = GenerateDisposableTokenRequest::new(scope.into(), expires);
    if let Some(id) = token_id {
        request = request.token_id(id.to_owned());
    }
    let response = auth.send_request(request).await.unwrap();
    let expires_at = response.clone().expires_at().epoch();
    assert_eq!(response.clone().endpoint(), "127.0.0.1");
    (response.auth_token(), expires_at)
}

#[tokio::test]
async fn a_subscribe_only_token_can_subscribe_but_not_publish_or_read_the_cache() {
    let local = start_default().await;
    let scope = PermissionScopes::topic_subscribe_only(CACHE, "rates.USD_JPY");
    let token = mint(&local, scope, Some("browser-1")).await;
    let limited = local.credentials_from_token(&token);
    let topics = local.topics(limited.clone());
    let mut subscription = topics.subscribe(CACHE, "rates.USD_JPY").await.unwrap();

    let details = expect_error(
        topics.publish(CACHE, "rates.USD_JPY", "x").await,
        PermissionError,
    );
    assert_contains(&details, "publish to topic");
    expect_error(
        topics.subscribe(CACHE, "rates.EUR_USD").await,
        PermissionError,
    );
    let cache = local.cache(limited.clone());
    expect_error(cache.get(CACHE, "k").await, PermissionError);
    expect_error(cache.create_cache("mine").await, PermissionError);
    expect_error(
        local
            .auth(limited)
            .generate_disposable_token(
                PermissionScopes::topic_publish_subscribe(CACHE, "rates.USD_JPY").into(),
                ExpiresIn::minutes(1),
            )
            .await,
        PermissionError,
    );

    // A publishing token's id is the publisher id subscribers see.
    let scope = PermissionScopes::topic_publish_only(CACHE, "rates.USD_JPY");
    let publisher = mint(&local, scope, Some("feed-7")).await;
    local
        .topics(local.credentials_from_token(&publisher))
        .publish(CACHE, "rates.USD_JPY", "151.234")
        .await
        .unwrap();
    let value = next_value(&mut subscription).await;
    assert_eq!(text(&value), "151.234");
    assert_eq!(value.publisher_id, "feed-7");
    local.shutdown().await;
}

#[tokio::test]
async fn a_key_scoped_token_reaches_only_its_key() {
    let (local, cache) = with_dev_cache().await;
    cache.set(CACHE, "user:1", "alice").await.unwrap();
    cache.set(CACHE, "user:2", "bob").await.unwrap();
    let scope = DisposableTokenScopes::cache_key_read_only(CACHE, "user:1");
    let token = mint(&local, scope, None).await;
    let scoped = local.cache(local.credentials_from_token(&token));
    let got: String = scoped
        .get(CACHE, "user:1")
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(got, "alice");
    expect_error(scoped.get(CACHE, "user:2").await, PermissionError);
    expect_error(
        scoped.set(CACHE, "user:1", "mallory").await,
        PermissionError,
    );

    let scope = DisposableTokenScopes::cache_key_prefix_read_write(CACHE, "user:");
    let token = mint(&local, scope, None).await;
    let prefixed = local.cache(local.credentials_from_token(&token));
    prefixed.set(CACHE, "user:3", "carol").await.unwrap();
    assert_eq!(
        prefixed
            .increment(CACHE, "user:count", 1)
            .await
            .unwrap()
            .value(),
        1
    );
    expect_error(prefixed.set(CACHE, "admin", "x").await, PermissionError);
    local.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_refused_and_ends_its_subscription() {
    let local = start_default().await;
    let (token, expires_at) = mint_expiring(
        &local,
        PermissionScopes::topic_publish_subscribe(CACHE, "ticks"),
        ExpiresIn::seconds(1),
        None,
    )
    .await;
    let api_key = api_key_in(&token);
    let mut client = local.raw_pubsub().await;
    let mut stream = client
        .subscribe(with_key(subscription_request("ticks", 0, 0), &api_key))
        .await
        .expect("a fresh token may subscribe")
        .into_inner();
    expect_heartbeat(&mut stream).await;

    let status = end_status(&mut stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1
            >= expires_at,
        "ended before the token expired"
    );

    // From the second the SDK was told, the token is refused.
    let until = UNIX_EPOCH + Duration::from_secs(expires_at);
    if let Ok(left) = until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let topics = local.topics(local.credentials_from_token(&token));
    let details = expect_error(
        topics.publish(CACHE, "ticks", "late").await,
        AuthenticationError,
    );
    assert_contains(&details, "expired");
    local.shutdown().await;
}

#[tokio::test]
async fn configured_keys_are_the_only_keys_accepted() {
    let keys = AcceptedKeys::Only(vec!["s3cret-key".into()]);
    let local = start_with(|config| config.accepted_keys = keys).await;
    expect_error(
        local
            .cache(local.credentials("guess"))
            .get(CACHE, "k")
            .await,
        AuthenticationError,
    );
    let mut client = local.raw_pubsub().await;
    let status = client
        .publish(publish_request(CACHE, "t", text_value("x")))
        .await
        .expect_err("no key at all");
    assert_eq!(status.code(), Code::Unauthenticated);

    let auth = local.auth(local.credentials("s3cret-key"));
    let token = auth
        .generate_disposable_token(
            PermissionScopes::cache_read_write(CACHE).into(),
            ExpiresIn::minutes(5),
        )
        .await
        .unwrap()
        .auth_token();
    let minted = local.cache(local.credentials_from_token(&token));
    minted.set(CACHE, "k", "v").await.unwrap();

    // A token altered in transit fails its signature.
    let mut tampered = api_key_in(&token);
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    expect_error(
        local
            .cache(local.credentials(&tampered))
            .get(CACHE, "k")
            .await,
        AuthenticationError,
    );

    // Tokens do not outlive the server that minted them.
    let other = start_default().await;
    let details = expect_error(
        other
            .cache(other.credentials_from_token(&token))
            .get(CACHE, "k")
            .await,
        AuthenticationError,
    );
    assert_contains(&details, "another momento-local run");
    other.shutdown().await;
    local.shutdown().await;
}

#[tokio::test]
async fn token_requests_are_validated() {
    let local = start_default().await;
    let mut tokens = TokenClient::new(local.channel().await);
    let permissions = Some(momento_protos::permission_messages::Permissions {
        kind: Some(
            momento_protos::permission_messages::permissions::Kind::Explicit(
                momento_protos::permission_messages::ExplicitPermissions {
                    permissions: vec![],
                },
            ),
        ),
    });
    let request = |valid_for_seconds: u32, token_id: &str| RawTokenRequest {
        expires: Some(generate_disposable_token_request::Expires { valid_for_seconds }),
        auth_token: "dev".into(),
        permissions: permissions.clone(),
        token_id: token_id.into(),
    };
    for (bad, why) in [
        (request(0, ""), "zero lifetime"),
        (request(3600 + 1, ""), "over 1 hour"),
        (request(60, &"x".repeat(65)), "token id too long"),
        (
            RawTokenRequest {
                permissions: None,
                ..request(60, "")
            },
            "no permissions",
        ),
    ] {
        let status = tokens.generate_disposable_token(bad).await.expect_err(why);
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
    }
    let response = tokens
        .generate_disposable_token(request(3600, &"x".repeat(64)))
        .await
        .unwrap()
        .into_inner();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(response.valid_until >= now + 3600, "{response:?}");
    // The SDKs build `base64({"endpoint", "api_key"})` with the standard
    // alphabet and parse it with the URL-safe one: the key keeps to the
    // characters both share.
    assert!(
        response
            .api_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "{}",
        response.api_key
    );
    local.shutdown().await;
}

fn assert_unimplemented(status: &Status, rpc: &str) {
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains(rpc), "{status:?}");
}

#[tokio::test]
async fn unimplemented_rpcs_say_which() {
    let (local, cache) = with_dev_cache().await;
    let details = expect_error(cache.dictionary_fetch(CACHE, "d").await, BadRequestError);
    assert_contains(
        &details,
        "does not implement cache_client.Scs/DictionaryFetch",
    );
    let details = expect_error(cache.list_fetch(CACHE, "l").await, BadRequestError);
    assert_contains(&details, "cache_client.Scs/ListFetch");

    let channel = local.channel().await;
    let status: Status = ScsControlClient::new(channel.clone())
        .create_signing_key(CreateSigningKeyRequest { ttl_minutes: 5 })
        .await
        .expect_err("signing keys are not served");
    assert_unimplemented(&status, "control_client.ScsControl/CreateSigningKey");
    let status = LeaderboardClient::new(channel)
        .delete_leaderboard(with_key(
            DeleteLeaderboardRequest {
                leaderboard: "board".into(),
            },
            "dev",
        ))
        .await
        .expect_err("leaderboards are not served");
    assert_unimplemented(&status, "/leaderboard.Leaderboard/DeleteLeaderboard");
    local.shutdown().await;
}

#[tokio::test]
async fn grpc_web_serves_unary_calls_and_subscriptions() {
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use tonic_web::GrpcWebClientService;

    let local = start_default().await;
    let http1 = Client::builder(TokioExecutor::new()).build_http();
    let mut web = PubsubClient::with_origin(
        GrpcWebClientService::new(http1),
        local.url().parse().unwrap(),
    );
    let mut stream = web
        .subscribe(subscription_request("web", 0, 0))
        .await
        .unwrap()
        .into_inner();
    expect_heartbeat(&mut stream).await;
    web.publish(publish_request(CACHE, "web", text_value("over grpc-web")))
        .await
        .unwrap();
    let item = expect_item(next_non_heartbeat(&mut stream).await);
    assert_text_item(item, 1, "over grpc-web");
    let status = web
        .publish(publish_request("nope", "web", text_value("x")))
        .await
        .expect_err("unknown cache");
    assert_eq!(status.code(), Code::NotFound);
    local.shutdown().await;
}

/// What the socket operation `io` returns; it must succeed within the
/// deadline.
async fn within<T>(io: impl Future<Output = std::io::Result<T>>) -> T {
    tokio::time::timeout(DEADLINE, io).await.unwrap().unwrap()
}

/// Sends one HTTP/1.1 request; returns the status line and headers, and a
/// reader positioned at the chunked body.
async fn http1_request(addr: SocketAddr, request: String) -> (String, BufReader<TcpStream>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(tcp);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        within(reader.read_line(&mut line)).await;
        if line == "\r\n" || line.is_empty() {
            return (head, reader);
        }
        head.push_str(&line);
    }
}

/// The next chunk of a chunked HTTP/1.1 body; `None` at its end.
async fn next_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    within(reader.read_line(&mut size)).await;
    let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
    let mut chunk = vec![0u8; size + 2];
    within(reader.read_exact(&mut chunk)).await;
    chunk.truncate(size);
    (size > 0).then_some(chunk)
}

/// A gRPC-web text-mode frame: base64 of a length-prefixed message.
fn web_text_frame(message: &impl prost::Message) -> String {
    let message = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    STANDARD.encode(frame)
}

/// The message in a base64 gRPC-web data frame.
fn web_text_item(chunk: &[u8]) -> SubscriptionItem {
    let frame = STANDARD.decode(chunk).unwrap();
    assert_eq!(frame[0], 0, "expected a data frame: {frame:?}");
    prost::Message::decode(&frame[5..]).unwrap()
}

/// gRPC-web text mode (base64 frames over HTTP/1.1), which the browser SDK
/// speaks.
#[tokio::test]
async fn grpc_web_text_mode_serves_browsers() {
    let local = start_default().await;
    let post = |path: &str, body: String| {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/grpc-web-text\r\nAccept: application/grpc-web-text\r\n\
             X-Grpc-Web: 1\r\nAuthorization: dev\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            local.addr,
            body.len()
        );
        http1_request(local.addr, request)
    };
    let subscribe = subscription_request("browser", 0, 0);
    let frame = web_text_frame(&subscribe);
    let (head, mut stream) = post("/cache_client.pubsub.Pubsub/Subscribe", frame).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/grpc-web-text"),
        "{head}"
    );
    let first = web_text_item(&next_chunk(&mut stream).await.expect("a first frame"));
    assert!(matches!(first.kind, Some(Kind::Heartbeat(_))), "{first:?}");

    let publish = publish_request(CACHE, "browser", text_value("from a browser"));
    let frame = web_text_frame(&publish);
    let (head, mut reply) = post("/cache_client.pubsub.Pubsub/Publish", frame).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = Vec::new();
    while let Some(chunk) = next_chunk(&mut reply).await {
        body.extend(STANDARD.decode(chunk).unwrap());
    }
    // The trailers frame carries the status.
    assert!(
        String::from_utf8_lossy(&body).contains("grpc-status:0"),
        "{body:?}"
    );

    loop {
        let chunk = next_chunk(&mut stream).await.expect("more frames");
        match web_text_item(&chunk).kind {
            Some(Kind::Heartbeat(_)) => continue,
            Some(Kind::Item(item)) => {
                assert_text_item(item, 1, "from a browser");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    local.shutdown().await;
}

#[tokio::test]
async fn browsers_pass_the_cors_preflight() {
    let local = start_default().await;
    let mut tcp = TcpStream::connect(local.addr).await.unwrap();
    let request = format!(
        "OPTIONS /cache_client.pubsub.Pubsub/Subscribe HTTP/1.1\r\n\
         Host: {}\r\n\
         Origin: http://localhost:5173\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
         Connection: close\r\n\r\n",
        local.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within(tcp.read_to_string(&mut response)).await;
    let lower = response.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{response}");
    assert!(
        lower.contains("access-control-allow-origin: *"),
        "{response}"
    );
    assert!(
        lower.contains("access-control-allow-headers: authorization,content-type,x-grpc-web"),
        "{response}"
    );
    local.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_subscriptions() {
    let local = start_default().await;
    let mut stream = local.subscribed("open").await;
    local.shutdown().await;
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the subscription outlived the server");
    assert!(matches!(ended, None | Some(Code::Unavailable)), "{ended:?}");
}

#[tokio::test]
async fn unusable_settings_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = MomentoLocalConfig {
        topic_history: 0,
        ..MomentoLocalConfig::default()
    };
    let result = serve(listener, config, std::future::pending()).await;
    assert!(matches!(result, Err(Error::InvalidConfig(_))), "{result:?}");
}

#[tokio::test]
async fn a_connection_holds_100_subscriptions_and_is_refused_the_next_as_hosted_momento_does() {
    let local = start_default().await;
    let mut one = local.raw_pubsub().await;
    let mut held = Vec::new();
    for i in 0..100 {
        let mut stream = raw_subscribe(&mut one, &format!("t{i}"), 0, 0).await;
        expect_heartbeat(&mut stream).await;
        held.push(stream);
    }
    let refused = one
        .subscribe(subscription_request("t100", 0, 0))
        .await
        .expect_err("the 101st stream on one connection");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.metadata().get("err").unwrap(),
        "topic_subscriptions_limit_exceeded"
    );
    assert_contains(refused.message(), "Too many subscribers (limit: 100)");
    // Another connection has its own 100.
    let mut other = local.raw_pubsub().await;
    expect_heartbeat(&mut raw_subscribe(&mut other, "t100", 0, 0).await).await;
    // An ended subscription gives its slot back.
    drop(held.pop());
    let mut again = None;
    for _ in 0..200 {
        match one.subscribe(subscription_request("t100", 0, 0)).await {
            Ok(stream) => {
                again = Some(stream.into_inner());
                break;
            }
            // The server sees the reset a moment after the client drops it.
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    expect_heartbeat(&mut again.expect("a slot once one subscription ended")).await;
    local.shutdown().await;
}

#[tokio::test]
async fn the_sdks_see_the_hosted_error_past_the_operations_limit() {
    let local = start_with(|c| c.max_ops_per_second = std::num::NonZeroU32::new(20)).await;
    let topics = local.dev_topics();
    let mut refused = None;
    for i in 0..40 {
        if let Err(error) = topics.publish(CACHE, "ops", format!("{i}")).await {
            refused = Some((i, error));
            break;
        }
    }
    let (at, error) = refused.expect("refused within 40 publishes");
    assert!((20..=21).contains(&at), "refused after {at} publishes");
    assert_eq!(
        error.message,
        "Request rate limit exceeded for this account"
    );
    let details = expect_error(Err::<(), _>(error), LimitExceededError);
    assert_contains(&details, "allows 20 operations per second");
    // Item calls count against the same cache (a loaded machine may have
    // refilled a few operations meanwhile); a second later it is full again.
    let cache = local.dev_cache();
    let mut item_refused = None;
    for _ in 0..40 {
        if let Err(error) = cache.get(CACHE, "k").await {
            item_refused = Some(error);
            break;
        }
    }
    let error = item_refused.expect("an item call refused within 40 calls");
    expect_error(Err::<(), _>(error), LimitExceededError);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    topics.publish(CACHE, "ops", "again").await.unwrap();
    local.shutdown().await;
}
