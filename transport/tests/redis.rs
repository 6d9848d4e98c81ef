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
    Delivery, Gap, GapCause, Transport,
    conformance::publish,
    redis::{RedisConfig, RedisTransport},
};
use support::{
    // Fast retries, pings and short deadlines, so outages are short.
    configs::redis_config as config,
    numbers::{next, next_number, numbered},
    outages::{behind_a_proxy, deliveries_through_a_restart, publish_while_cut_off},
    redis_server::RedisServer,
    servers::Engine,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_without_its_data_is_an_announced_gap() {
    // Nothing on disk: the restart loses the stream.
    let mut server = RedisServer::start_ephemeral();
    let (gaps, subscriber) =
        deliveries_through_a_restart(&mut server, RedisServer::connect_fast, "rates.EUR_JPY").await;
    assert_eq!(gaps, 1, "the lost stream is announced once");
    assert_eq!(subscriber.stats().gaps, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rolled_past_a_process_cut_off_is_an_announced_gap() {
    let server = RedisServer::start();
    let (proxy, publisher, subscriber) =
        behind_a_proxy(&server, |url| RedisServer::connect_keeping(url, 10)).await;
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

// The tests this backend runs alike with NATS, from support/outages.rs.
// In a_killed_server_costs_no_message_twice_and_none_silently, every
// write is in the append-only file before it is acknowledged, and the
// restarted server has the stream back: nothing lost.
support::outages::server_tests! {
    RedisServer, RedisConfig, restored = resyncs,
    restores_after_a_cut = true, subscribe_refused = true,
}
