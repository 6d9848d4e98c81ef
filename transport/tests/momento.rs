//! The Momento backend beyond the shared conformance suite, against
//! momento-local started in-process on ephemeral ports: pacing and
//! conflation, the payload limit, reconnects after a cut connection and
//! after a server restart (resume, dedupe, gaps, health), retained payloads,
//! subscribe-only tokens checked with Momento's own Rust SDK, and what
//! happens when the cache or the endpoint is missing.

mod support;

use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

use bytes::Bytes;
use fxcast_momento_local::{MomentoLocalConfig, serve};
use fxcast_transport::{
    Delivery, Error, Gap, GapCause, Subscription, Transport, TransportHealth,
    conformance::publish,
    momento::{MomentoBoard, MomentoConfig, MomentoTransport, ReconnectPolicy},
};
use momento::{
    CacheClient, CredentialProvider, MomentoErrorCode, TopicClient,
    cache::{GetResponse, ItemGetTtlResponse},
    topics::ValueKind,
};
use support::{
    numbers::{DEADLINE, next, next_number, numbered, wait_health},
    proxy::Proxy,
    within::next_within,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

const CACHE: &str = "fxcast";

/// momento-local on `addr`, stoppable and restartable on the same port.
struct Local {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), fxcast_momento_local::Error>>,
}

impl Local {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), vec![CACHE.to_owned()]).await
    }

    async fn start_on(addr: SocketAddr, caches: Vec<String>) -> Self {
        let config = MomentoLocalConfig {
            caches,
            ..MomentoLocalConfig::default()
        };
        Self::start_with(addr, config).await
    }

    async fn start_with(addr: SocketAddr, config: MomentoLocalConfig) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server (open subscriptions end) and waits until it is gone.
    async fn stop(mut self) -> SocketAddr {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("momento-local did not stop")
            .unwrap()
            .unwrap();
        self.addr
    }

    fn sdk_credentials(&self, token: &str) -> CredentialProvider {
        CredentialProvider::from_disposable_token(token)
            .unwrap()
            .insecure_endpoint_override(&self.url())
    }
}

fn config(url: String) -> MomentoConfig {
    MomentoConfig {
        api_key: "test-key".into(),
        endpoint: Some(url),
        // Fast retries, so reconnect tests finish quickly.
        reconnect: ReconnectPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..MomentoConfig::default()
    }
}

async fn connect(url: String) -> MomentoTransport {
    MomentoTransport::connect(config(url)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_paced_per_topic_and_the_latest_wins() {
    let local = Local::start().await;
    let transport = MomentoTransport::connect(MomentoConfig {
        max_publish_rate: NonZeroU32::new(5),
        ..config(local.url())
    })
    .await
    .unwrap();
    let mut subscription = transport.subscribe("rates.USD_JPY").await.unwrap();
    for n in 0..50 {
        publish(&transport, "rates.USD_JPY", numbered(n)).await;
    }
    let mut received = Vec::new();
    while received.last() != Some(&49) {
        match next(&mut subscription).await {
            Delivery::Message(bytes) => {
                received.push(u64::from_be_bytes(bytes[..].try_into().unwrap()))
            }
            // The skipped payloads are not a transport gap: the publisher
            // chose to conflate, and the rate sequence numbers show it.
            Delivery::Gap(gap) => panic!("unexpected gap: {gap}"),
        }
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "something older was sent after something newer: {received:?}"
    );
    assert!(received.len() < 50, "nothing was conflated: {received:?}");
    assert_eq!(transport.stats().conflated, 50 - received.len() as u64);

    // Order events are not prices: every one is sent, in order, unpaced.
    let mut orders = transport.subscribe("orders.alice").await.unwrap();
    for n in 0..50 {
        publish(&transport, "orders.alice", numbered(n)).await;
    }
    for n in 0..50 {
        assert_eq!(next_number(&mut orders).await, n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_limit_are_refused_before_sending() {
    let local = Local::start().await;
    let transport = connect(local.url()).await;
    let mut subscription = transport.subscribe("rates.big").await.unwrap();
    let err = transport
        .publish("rates.big", Bytes::from(vec![1u8; 4097]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                size: 4097,
                limit: 4096,
                backend: "momento"
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "payload of 4097 bytes exceeds the 4096-byte limit of the momento transport"
    );
    let err = transport
        .retain("rates.big", Bytes::from(vec![1u8; 5000]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    // Exactly at the limit goes through, and is the first thing received.
    publish(&transport, "rates.big", Bytes::from(vec![2u8; 4096])).await;
    assert_eq!(
        next(&mut subscription).await,
        Delivery::Message(Bytes::from(vec![2u8; 4096]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_without_loss_or_duplicates() {
    let local = Local::start().await;
    let proxy = Proxy::start(local.addr).await;
    let publisher = connect(local.url()).await;
    // The subscriber reaches Momento only through the proxy.
    let subscriber = MomentoTransport::connect(MomentoConfig {
        create_cache: false,
        ..config(format!("http://{}", proxy.addr()))
    })
    .await
    .unwrap();
    let mut health = subscriber.health();
    let mut subscription = subscriber.subscribe("rates.EUR_USD").await.unwrap();
    for n in 1..=3 {
        publish(&publisher, "rates.EUR_USD", numbered(n)).await;
        assert_eq!(next_number(&mut subscription).await, n);
    }

    proxy.cut();
    let TransportHealth::Reconnecting { reason } = wait_health(&mut health, false).await else {
        unreachable!()
    };
    assert!(
        reason.starts_with("subscription to rates.EUR_USD: "),
        "{reason}"
    );
    // Published while the subscriber is cut off: held by Momento.
    for n in 4..=6 {
        publish(&publisher, "rates.EUR_USD", numbered(n)).await;
    }
    proxy.restore();
    wait_health(&mut health, true).await;
    publish(&publisher, "rates.EUR_USD", numbered(7)).await;

    // Resumed at the last message received: the repeat is dropped and
    // nothing is missing, so there is no gap.
    for n in 4..=7 {
        assert_eq!(next_number(&mut subscription).await, n);
    }
    let stats = subscriber.stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(stats.duplicates >= 1, "{stats:?}");
    assert_eq!(stats.gaps, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_gives_a_reconnect_and_a_gap_without_duplicates() {
    let local = Local::start().await;
    let transport = connect(local.url()).await;
    let mut health = transport.health();
    let mut subscription = transport.subscribe("rates.GBP_USD").await.unwrap();
    let mut other = transport.subscribe("rates.GBP_USD").await.unwrap();
    for n in 1..=3 {
        publish(&transport, "rates.GBP_USD", numbered(n)).await;
        assert_eq!(next_number(&mut subscription).await, n);
        assert_eq!(next_number(&mut other).await, n);
    }

    let addr = local.stop().await;
    wait_health(&mut health, false).await;
    let err = transport
        .publish("rates.GBP_USD", numbered(99))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    // Everything it held is gone, as after a crash.
    let _local = Local::start_on(addr, vec![CACHE.to_owned()]).await;
    wait_health(&mut health, true).await;
    for n in 4..=6 {
        publish(&transport, "rates.GBP_USD", numbered(n)).await;
    }

    for sub in [&mut subscription, &mut other] {
        assert_eq!(
            next(sub).await,
            Delivery::Gap(Gap {
                missed: None,
                cause: GapCause::Reconnected
            })
        );
        for n in 4..=6 {
            assert_eq!(next_number(sub).await, n);
        }
    }
    let stats = transport.stats();
    assert_eq!(
        stats.reconnects, 1,
        "one Momento subscription for both: {stats:?}"
    );
    assert_eq!(stats.gaps, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_payloads_reach_a_process_that_starts_later() {
    let local = Local::start().await;
    let first = MomentoTransport::connect(MomentoConfig {
        retain_ttl: Duration::from_secs(90),
        ..config(local.url())
    })
    .await
    .unwrap();
    first.retain("rates.AUD_USD", numbered(1)).await.unwrap();
    first.retain("rates.AUD_USD", numbered(2)).await.unwrap();

    let later = connect(local.url()).await;
    assert_eq!(later.retained("rates.NONE").await.unwrap(), None);
    // Written in the background: read until the newest is there.
    let retained = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(payload) = later.retained("rates.AUD_USD").await.unwrap()
                && payload == numbered(2)
            {
                return payload;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the retained payload never arrived");
    assert_eq!(retained, numbered(2));

    // Stored with the configured time to live.
    let cache = CacheClient::builder()
        .default_ttl(Duration::from_secs(60))
        .configuration(momento::cache::configurations::Laptop::latest())
        .credential_provider(local.sdk_credentials(&v1_token("any")))
        .build()
        .unwrap();
    let ItemGetTtlResponse::Hit { remaining_ttl } = cache
        .item_get_ttl(CACHE, "latest:rates.AUD_USD")
        .await
        .unwrap()
    else {
        panic!("no retained item");
    };
    assert!(
        remaining_ttl > Duration::from_secs(60) && remaining_ttl <= Duration::from_secs(90),
        "{remaining_ttl:?}"
    );
}

fn v1_token(api_key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE.encode(format!(
        r#"{{"endpoint":"127.0.0.1","api_key":"{api_key}"}}"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_tokens_may_only_subscribe_to_their_topics() {
    let local = Local::start().await;
    let transport = connect(local.url()).await;
    let topics = vec!["rates.USD_JPY".to_owned(), "rates.EUR_USD".to_owned()];
    let access = transport
        .subscriber_access(&topics, Duration::from_secs(600))
        .await
        .unwrap()
        .expect("momento offers subscriber access");
    assert_eq!(access.namespace, CACHE);
    assert_eq!(access.topics, topics);
    assert_eq!(access.endpoint, local.url());
    let left = access
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    assert!(!format!("{access:?}").contains(access.token.expose()));

    // Momento's own SDK with the token: it subscribes and receives ...
    let topic_client = TopicClient::builder()
        .configuration(momento::topics::configurations::Laptop::latest())
        .credential_provider(local.sdk_credentials(access.token.expose()))
        .build()
        .unwrap();
    let mut subscription = topic_client
        .subscribe(CACHE, "rates.USD_JPY")
        .await
        .unwrap();
    publish(&transport, "rates.USD_JPY", Bytes::from_static(b"tick")).await;
    let value = next_within(
        &mut subscription,
        DEADLINE,
        "no topic value within the deadline",
    )
    .await;
    assert_eq!(value.kind, ValueKind::Binary(b"tick".to_vec()));

    // ... but cannot publish, reach other topics, or read the cache.
    let err = topic_client
        .publish(CACHE, "rates.USD_JPY", "forged")
        .await
        .unwrap_err();
    assert_eq!(err.error_code, MomentoErrorCode::PermissionError, "{err}");
    let err = topic_client
        .subscribe(CACHE, "orders.alice")
        .await
        .err()
        .expect("subscribing to another topic is refused");
    assert_eq!(err.error_code, MomentoErrorCode::PermissionError, "{err}");
    let cache = CacheClient::builder()
        .default_ttl(Duration::from_secs(60))
        .configuration(momento::cache::configurations::Laptop::latest())
        .credential_provider(local.sdk_credentials(access.token.expose()))
        .build()
        .unwrap();
    let err = cache
        .get(CACHE, "latest:rates.USD_JPY")
        .await
        .map(|r: GetResponse| r)
        .unwrap_err();
    assert_eq!(err.error_code, MomentoErrorCode::PermissionError, "{err}");

    // Nothing to subscribe to, nothing issued.
    assert!(
        transport
            .subscriber_access(&[], Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cache_is_created_or_explained() {
    let local = Local::start_on("127.0.0.1:0".parse().unwrap(), Vec::new()).await;
    let err = MomentoTransport::connect(MomentoConfig {
        cache: "prices".into(),
        create_cache: false,
        ..config(local.url())
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the Momento cache \"prices\" does not exist")
            && err.contains("momento cache create prices"),
        "{err}"
    );
    let transport = MomentoTransport::connect(MomentoConfig {
        cache: "prices".into(),
        ..config(local.url())
    })
    .await
    .unwrap();
    assert_eq!(transport.cache_name(), "prices");
    // Created once, found the next time.
    MomentoTransport::connect(MomentoConfig {
        cache: "prices".into(),
        ..config(local.url())
    })
    .await
    .unwrap();

    let addr = local.stop().await;
    let err = MomentoTransport::connect(config(format!("http://{addr}")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach the Momento cache"), "{err}");
    assert!(
        !err.contains("test-key"),
        "the key must never be shown: {err}"
    );
}

/// The messages `subscription` has ready now, without waiting for more.
fn ready(subscription: &mut Subscription) -> Vec<Delivery> {
    let mut ready = Vec::new();
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    while let std::task::Poll::Ready(Some(delivery)) =
        futures_util::Stream::poll_next(std::pin::Pin::new(&mut *subscription), &mut cx)
    {
        ready.push(delivery);
    }
    ready
}

#[tokio::test]
async fn ten_thousand_order_subjects_stream_at_once_within_the_subscription_cap() {
    // momento-local refuses a 101st subscription on a connection, as the
    // hosted service does; the transport has 4 connections.
    let local = Local::start().await;
    let server = connect(local.url()).await;
    let other_process = connect(local.url()).await;
    let mut subscriptions = Vec::new();
    for i in 0..10_000 {
        let topic = format!("orders.subject-{i}");
        subscriptions.push(server.subscribe(&topic).await.unwrap());
    }
    assert_eq!(server.local_subscribers("orders.subject-9999"), 1);
    // Events from another process reach exactly their subject.
    let picked = [0_usize, 1, 17, 4_242, 9_999];
    for &i in &picked {
        let topic = format!("orders.subject-{i}");
        other_process
            .publish(&topic, numbered(i as u64))
            .await
            .unwrap();
    }
    for &i in &picked {
        assert_eq!(next_number(&mut subscriptions[i]).await, i as u64);
    }
    // A last event, then no subject holds anything it should not: deliveries
    // of one shard are dispatched in order, so the last one arriving means
    // any stray would have arrived before it.
    other_process
        .publish("orders.subject-9999", numbered(10_000))
        .await
        .unwrap();
    assert_eq!(next_number(&mut subscriptions[9_999]).await, 10_000);
    for (i, subscription) in subscriptions.iter_mut().enumerate() {
        let stray = ready(subscription);
        assert!(stray.is_empty(), "subject-{i} got {stray:?}");
    }
    // Leaving frees the subject: nobody is left on it.
    subscriptions.truncate(1);
    assert_eq!(server.local_subscribers("orders.subject-9999"), 0);
    assert_eq!(server.local_subscribers("orders.subject-0"), 1);
}

#[tokio::test]
async fn without_shards_the_per_connection_cap_bounds_the_subjects() {
    let local = Local::start().await;
    let server = MomentoTransport::connect(MomentoConfig {
        shards: 0,
        subscription_connections: 2,
        ..config(local.url())
    })
    .await
    .unwrap();
    let mut held = Vec::new();
    for i in 0..200 {
        held.push(server.subscribe(&format!("orders.s{i}")).await.unwrap());
    }
    let refused = server.subscribe("orders.s200").await.unwrap_err();
    assert!(
        matches!(&refused, Error::Unavailable { message, .. } if message.contains("100 topics each")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_sharded_payload_keeps_to_the_message_limit_with_its_envelope() {
    let local = Local::start().await;
    let server = connect(local.url()).await;
    let topic = "orders.alice";
    let room = 4096 - (3 + topic.len());
    let mut subscription = server.subscribe(topic).await.unwrap();
    server
        .publish(topic, Bytes::from(vec![7u8; room]))
        .await
        .unwrap();
    match next(&mut subscription).await {
        Delivery::Message(payload) => assert_eq!(payload.len(), room),
        other => panic!("{other:?}"),
    }
    let refused = server
        .publish(topic, Bytes::from(vec![7u8; room + 1]))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::PayloadTooLarge { limit, .. } if limit == room),
        "{refused:?}"
    );
}

#[tokio::test]
async fn an_operations_limit_is_met_with_pacing_rather_than_errors() {
    let limit = NonZeroU32::new(40).unwrap();
    let local = Local::start_with(
        "127.0.0.1:0".parse().unwrap(),
        MomentoLocalConfig {
            caches: vec![CACHE.to_owned()],
            max_ops_per_second: Some(limit),
            ..MomentoLocalConfig::default()
        },
    )
    .await;
    let paced = MomentoTransport::connect(MomentoConfig {
        max_ops_per_second: Some(limit),
        ..config(local.url())
    })
    .await
    .unwrap();
    let mut subscription = paced.subscribe("orders.alice").await.unwrap();
    let received = tokio::spawn(async move {
        for n in 0..120 {
            assert_eq!(next_number(&mut subscription).await, n);
        }
    });
    let started = std::time::Instant::now();
    // Three seconds' worth: each waits for its turn, none is refused.
    for n in 0..120 {
        paced.publish("orders.alice", numbered(n)).await.unwrap();
    }
    let took = started.elapsed();
    received.await.unwrap();
    assert!(
        took >= Duration::from_secs(2),
        "120 operations at 40/s took {took:?}"
    );
    // The limit is real: a process without the budget is refused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let unpaced = connect(local.url()).await;
    let mut refused = None;
    for n in 0..120 {
        if let Err(error) = unpaced.publish("orders.bob", numbered(n)).await {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("refused past 40 operations per second");
    assert!(
        matches!(&refused, Error::Unavailable { message, .. } if message.contains("LimitExceeded")),
        "{refused:?}"
    );
}

fn board_config(url: String) -> MomentoConfig {
    MomentoConfig {
        max_publish_rate: NonZeroU32::new(5),
        board: Some(MomentoBoard {
            topic: "board.rates".into(),
            topics: vec!["rates.A".into(), "rates.B".into(), "rates.C".into()],
        }),
        ..config(url)
    }
}

#[tokio::test]
async fn the_board_carries_every_symbol_in_one_topic_and_each_reaches_its_subscribers() {
    let local = Local::start().await;
    let publisher = MomentoTransport::connect(board_config(local.url()))
        .await
        .unwrap();
    let reader = MomentoTransport::connect(board_config(local.url()))
        .await
        .unwrap();
    let mut a = reader.subscribe("rates.A").await.unwrap();
    let mut b = reader.subscribe("rates.B").await.unwrap();
    // What Momento sees: the board topic only.
    let access = publisher
        .subscriber_access(
            &["rates.A".into(), "rates.B".into(), "rates.C".into()],
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("a token for a caller that sees every symbol");
    assert_eq!(access.topics, ["board.rates"]);
    let sdk = TopicClient::builder()
        .configuration(momento::topics::configurations::Laptop::latest())
        .credential_provider(local.sdk_credentials(access.token.expose()))
        .build()
        .unwrap();
    let mut board = sdk.subscribe(CACHE, "board.rates").await.unwrap();

    // Two seconds of three symbols ticking every 20 ms: at 5 boards a
    // second, about 10 messages carry the 300 publishes.
    let started = std::time::Instant::now();
    let mut last = [0u64; 3];
    for n in 1..=100u64 {
        for (i, symbol) in ["rates.A", "rates.B", "rates.C"].iter().enumerate() {
            publisher.publish(symbol, numbered(n)).await.unwrap();
            last[i] = n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // Each subscriber sees its own symbol only, in order, ending with the last.
    for subscription in [&mut a, &mut b] {
        let mut seen = 0;
        while seen < 100 {
            let n = next_number(subscription).await;
            assert!(n > seen, "{n} after {seen}");
            seen = n;
        }
    }
    let mut messages = 0;
    let mut records = 0;
    while records < 300 {
        let item = next_within(
            &mut board,
            DEADLINE,
            "the board went quiet before the last rates",
        )
        .await;
        let ValueKind::Binary(bytes) = item.kind else {
            panic!("a text board message");
        };
        assert_eq!(bytes[0], 2, "a board envelope");
        messages += 1;
        // Every record is 4 bytes of lengths, a 7-byte topic and 8 bytes.
        let count = (bytes.len() - 1) / (4 + 7 + 8);
        records += count;
        if count == 3 && bytes.ends_with(&numbered(100)) {
            break;
        }
    }
    let most = (elapsed.as_secs_f64() * 5.0).ceil() as usize + 2;
    assert!(messages <= most, "{messages} board messages in {elapsed:?}");
    assert!(publisher.stats().conflated > 0);
    assert_eq!(last, [100; 3]);
}

#[tokio::test]
async fn the_board_gives_no_subscriber_token_to_a_caller_that_sees_only_some_symbols() {
    let local = Local::start().await;
    let transport = MomentoTransport::connect(board_config(local.url()))
        .await
        .unwrap();
    let some = transport
        .subscriber_access(&["rates.A".into()], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(some.is_none(), "{some:?}");
}
