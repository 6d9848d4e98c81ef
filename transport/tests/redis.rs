//! The Redis backend beyond the shared conformance suite, against a real
//! redis-server per test (a free port, its own data directory): a server
//! killed with `kill -9` and restarted under a live subscription (with its
//! append-only file, and without any data), a process cut off by a proxy
//! and resuming (with and without the stream's history rolling past it),
//! retained payloads, health and the payload limit. Credentials are in
//! `redis_credentials.rs`, a binary of its own because it reads back
//! the logs.

mod support;

use std::time::Duration;

use fxcast_transport::{
    BackoffPolicy, Delivery, Gap, GapCause, Transport,
    conformance::publish,
    redis::{RedisConfig, RedisTransport},
};
use support::{
    numbers::{next, next_number, numbered},
    outages::{
        check_deliveries, health_follows_the_server, publish_through_a_restart,
        publish_while_cut_off, refuses_over_the_limit,
    },
    proxy::Proxy,
    redis_server::RedisServer,
};

fn config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        // Fast retries, pings and short deadlines, so outages are short.
        reconnect: BackoffPolicy::new(Duration::from_millis(20), Duration::from_millis(250)),
        request_timeout: Duration::from_secs(2),
        heartbeat: Duration::from_millis(250),
        ..RedisConfig::default()
    }
}

async fn connect(url: String) -> RedisTransport {
    RedisTransport::connect(config(url)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_costs_no_message_twice_and_none_silently() {
    // Every write is in the append-only file before it is acknowledged.
    let mut server = RedisServer::start();
    let subscriber = connect(server.url()).await;
    let publisher = connect(server.url()).await;
    let (published, deliveries) =
        publish_through_a_restart(&mut server, publisher, &subscriber, "rates.USD_JPY").await;
    let gaps = check_deliveries(&published, &deliveries);
    let stats = subscriber.stats();
    assert!(stats.resyncs >= 1, "{stats:?}");
    // The restarted server has the stream back: nothing lost.
    assert_eq!((gaps, stats.gaps), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_without_its_data_is_an_announced_gap() {
    // Nothing on disk: the restart loses the stream.
    let mut server = RedisServer::start_ephemeral();
    let subscriber = connect(server.url()).await;
    let publisher = connect(server.url()).await;
    let (published, deliveries) =
        publish_through_a_restart(&mut server, publisher, &subscriber, "rates.EUR_JPY").await;
    let gaps = check_deliveries(&published, &deliveries);
    assert_eq!(gaps, 1, "the lost stream is announced once");
    assert_eq!(subscriber.stats().gaps, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_cut_off_resumes_without_loss_or_duplicates() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let publisher = connect(server.url()).await;
    // The subscriber reaches the server only through the proxy.
    let subscriber = connect(format!("redis://{}", proxy.addr())).await;
    // 4..=6 are published while the subscriber is cut off: held by the stream.
    let mut subscription =
        publish_while_cut_off(&proxy, &publisher, &subscriber, "orders.alice", 6).await;
    publish(&publisher, "orders.alice", numbered(7)).await;

    for n in 4..=7 {
        assert_eq!(next_number(&mut subscription).await, n);
    }
    publish(&publisher, "orders.alice", numbered(8)).await;
    assert_eq!(next_number(&mut subscription).await, 8);
    let stats = subscriber.stats();
    assert_eq!(stats.gaps, 0, "{stats:?}");
    assert!(stats.resyncs >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rolled_past_a_process_cut_off_is_an_announced_gap() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let short = |url| RedisConfig {
        history: 10,
        ..config(url)
    };
    let publisher = RedisTransport::connect(short(server.url())).await.unwrap();
    let subscriber = RedisTransport::connect(short(format!("redis://{}", proxy.addr())))
        .await
        .unwrap();
    // Far more than the stream keeps (MAXLEN ~ trims whole nodes of 100
    // entries, so it keeps at least 10 and at most a node more).
    const LAST: u64 = 1_000;
    let mut subscription =
        publish_while_cut_off(&proxy, &publisher, &subscriber, "rates.EUR_USD", LAST).await;

    // A gap counting exactly what was trimmed, then what the stream
    // still holds, in order, up to the last one.
    let Delivery::Gap(Gap {
        missed: Some(missed),
        cause: GapCause::Reconnected,
    }) = next(&mut subscription).await
    else {
        panic!("expected a counted gap");
    };
    let first = next_number(&mut subscription).await;
    assert_eq!(first, 4 + missed, "missed + delivered = published");
    assert!(LAST - first < 200, "resumed at {first}");
    for n in first + 1..=LAST {
        assert_eq!(next_number(&mut subscription).await, n);
    }
    publish(&publisher, "rates.EUR_USD", numbered(LAST + 1)).await;
    assert_eq!(next_number(&mut subscription).await, LAST + 1);
    assert_eq!(subscriber.stats().gaps, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_payloads_reach_a_process_connected_later() {
    let server = RedisServer::start();
    let first = connect(server.url()).await;
    support::numbers::retained_reach_a_later_process(first, || connect(server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_for_outlives_retain() {
    let server = RedisServer::start();
    let transport = RedisTransport::connect(RedisConfig {
        retain_ttl: Duration::from_millis(500),
        max_payload: 1024,
        ..config(server.url())
    })
    .await
    .unwrap();
    support::numbers::retain_for_outlives_retain(&transport).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_goes_unavailable_while_the_server_is_down_and_back_after() {
    let mut server = RedisServer::start();
    let transport = connect(server.url()).await;
    health_follows_the_server(&mut server, &transport, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_limit_are_refused_before_sending() {
    let mut server = RedisServer::start();
    let transport = RedisTransport::connect(RedisConfig {
        max_payload: 1024,
        ..config(server.url())
    })
    .await
    .unwrap();
    assert_eq!(transport.max_payload(), 1024);
    refuses_over_the_limit(&mut server, &transport, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_is_named_at_start() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let err = RedisTransport::connect(config(url.clone()))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("is redis-server running"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_stays_connected_across_heartbeats() {
    let server = RedisServer::start();
    let transport = RedisTransport::connect(RedisConfig {
        heartbeat: Duration::from_millis(50),
        ..config(server.url())
    })
    .await
    .unwrap();
    let mut subscription = transport.subscribe("rates.USD_SEK").await.unwrap();
    let mut health = transport.health();
    // Twenty heartbeats on a subscribed pub/sub connection (where PING
    // answers differently): each must be taken as an answer, not a loss.
    let changed = tokio::time::timeout(Duration::from_secs(1), health.changed()).await;
    assert!(changed.is_err(), "health changed: {:?}", *health.borrow());
    assert_eq!(transport.stats().resyncs, 0, "{:?}", transport.stats());
    publish(&transport, "rates.USD_SEK", numbered(1)).await;
    assert_eq!(next_number(&mut subscription).await, 1);
}
