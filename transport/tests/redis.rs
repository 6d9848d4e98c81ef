//! The Redis backend beyond the shared conformance suite, against a real
//! redis-server per test (a free port, its own data directory): a server
//! killed with `kill -9` and restarted under a live subscription (with its
//! append-only file, and without any data), a process cut off by a proxy
//! and resuming (with and without the stream's history rolling past it),
//! retained payloads, health and the payload limit. Credentials are in
//! `redis_credentials.rs`, a binary of its own because it reads back
//! the logs.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fxcast_transport::{
    BackoffPolicy, Delivery, Error, Gap, GapCause, Transport, TransportHealth,
    conformance::publish,
    redis::{RedisConfig, RedisTransport},
};
use support::{
    numbers::{DEADLINE, Published, next, next_number, number, numbered, wait_health},
    proxy::Proxy,
    redis_server::RedisServer,
};
use tokio::sync::watch;

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

/// Publishes 1, 2, 3, ... on `topic` every millisecond through the server
/// being killed and restarted; returns what was acknowledged and every
/// delivery the subscription made up to the last acknowledged number.
async fn publish_through_a_restart(
    server: &mut RedisServer,
    subscriber: &RedisTransport,
    topic: &'static str,
) -> (Published, Vec<Delivery>) {
    let publisher = connect(server.url()).await;
    let mut health = subscriber.health();
    let mut subscription = subscriber.subscribe(topic).await.unwrap();

    // A refused number is not retried (a retry would be a second message).
    let published = Arc::new(Mutex::new(Published::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress) = watch::channel((0u64, 0u64));
    let task = tokio::spawn({
        let (published, stop) = (Arc::clone(&published), Arc::clone(&stop));
        async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let ok = publisher.publish(topic, numbered(n)).await.is_ok();
                {
                    // Released before the await below.
                    let mut published = published.lock().unwrap();
                    if ok {
                        published.acked.insert(n);
                    } else {
                        published.failed.insert(n);
                    }
                    progress_tx.send_replace((
                        published.acked.len() as u64,
                        published.failed.len() as u64,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut wait_progress = async |until: &dyn Fn(u64, u64) -> bool| {
        tokio::time::timeout(
            DEADLINE,
            progress.wait_for(|&(acked, failed)| until(acked, failed)),
        )
        .await
        .expect("the publisher made no progress")
        .unwrap();
    };

    wait_progress(&|acked, _| acked >= 200).await;
    server.kill();
    wait_health(&mut health, false).await;
    // At least one publish is refused while the server is down.
    wait_progress(&|_, failed| failed >= 1).await;
    server.restart();
    wait_health(&mut health, true).await;
    let acked_before = published.lock().unwrap().acked.len() as u64;
    wait_progress(&|acked, _| acked >= acked_before + 200).await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();

    let published = std::mem::take(&mut *published.lock().unwrap());
    let last = *published.acked.last().unwrap();
    let mut deliveries = Vec::new();
    loop {
        let delivery = next(&mut subscription).await;
        let done = matches!(&delivery, Delivery::Message(bytes) if number(bytes) >= last);
        deliveries.push(delivery);
        if done {
            break;
        }
    }
    (published, deliveries)
}

/// Checks that each number arrived at most once, in order, and that a
/// number acknowledged to the publisher is missing only where a gap was
/// announced; returns the gaps seen.
fn check_deliveries(published: &Published, deliveries: &[Delivery]) -> usize {
    let mut previous = 0;
    let mut gap_since_previous = false;
    let mut gaps = 0;
    for delivery in deliveries {
        match delivery {
            Delivery::Gap(gap) => {
                assert_eq!(gap.cause, GapCause::Reconnected, "{gap}");
                gap_since_previous = true;
                gaps += 1;
            }
            Delivery::Message(bytes) => {
                let n = number(bytes);
                assert!(
                    n > previous,
                    "{n} after {previous}: a duplicate or reordering"
                );
                if !gap_since_previous {
                    let lost: Vec<_> = published.acked.range(previous + 1..n).collect();
                    assert!(lost.is_empty(), "acknowledged {lost:?} silently lost");
                }
                previous = n;
                gap_since_previous = false;
            }
        }
    }
    gaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_costs_no_message_twice_and_none_silently() {
    // Every write is in the append-only file before it is acknowledged.
    let mut server = RedisServer::start();
    let subscriber = connect(server.url()).await;
    let (published, deliveries) =
        publish_through_a_restart(&mut server, &subscriber, "rates.USD_JPY").await;
    let gaps = check_deliveries(&published, &deliveries);
    let stats = subscriber.stats();
    println!(
        "published {} acked, {} refused during the outage; {} deliveries; {stats:?}",
        published.acked.len(),
        published.failed.len(),
        deliveries.len()
    );
    assert!(stats.resyncs >= 1, "{stats:?}");
    // The restarted server has the stream back: nothing lost.
    assert_eq!((gaps, stats.gaps), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_without_its_data_is_an_announced_gap() {
    // Nothing on disk: the restart loses the stream.
    let mut server = RedisServer::start_ephemeral();
    let subscriber = connect(server.url()).await;
    let (published, deliveries) =
        publish_through_a_restart(&mut server, &subscriber, "rates.EUR_JPY").await;
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
    let mut health = subscriber.health();
    let mut subscription = subscriber.subscribe("orders.alice").await.unwrap();
    for n in 1..=3 {
        publish(&publisher, "orders.alice", numbered(n)).await;
        assert_eq!(next_number(&mut subscription).await, n);
    }

    proxy.cut();
    let TransportHealth::Reconnecting { reason } = wait_health(&mut health, false).await else {
        unreachable!()
    };
    assert!(reason.contains("lost the connection"), "{reason}");
    // Published while the subscriber is cut off: held by the stream.
    for n in 4..=6 {
        publish(&publisher, "orders.alice", numbered(n)).await;
    }
    proxy.restore();
    wait_health(&mut health, true).await;
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
    let mut health = subscriber.health();
    let mut subscription = subscriber.subscribe("rates.EUR_USD").await.unwrap();
    for n in 1..=3 {
        publish(&publisher, "rates.EUR_USD", numbered(n)).await;
        assert_eq!(next_number(&mut subscription).await, n);
    }

    proxy.cut();
    wait_health(&mut health, false).await;
    // Far more than the stream keeps (MAXLEN ~ trims whole nodes of 100
    // entries, so it keeps at least 10 and at most a node more).
    const LAST: u64 = 1_000;
    for n in 4..=LAST {
        publish(&publisher, "rates.EUR_USD", numbered(n)).await;
    }
    proxy.restore();
    wait_health(&mut health, true).await;

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
    let mut health = transport.health();
    assert!(health.borrow().is_connected());

    server.kill();
    let TransportHealth::Reconnecting { reason } = wait_health(&mut health, false).await else {
        unreachable!()
    };
    assert!(reason.contains("lost the connection"), "{reason}");
    let err = transport
        .publish("rates.USD_CHF", numbered(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let err = transport.subscribe("rates.USD_CHF").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");

    server.restart();
    wait_health(&mut health, true).await;
    let mut subscription = transport.subscribe("rates.USD_CHF").await.unwrap();
    publish(&transport, "rates.USD_CHF", numbered(2)).await;
    assert_eq!(next_number(&mut subscription).await, 2);
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
    let mut subscription = transport.subscribe("rates.NZD_USD").await.unwrap();
    publish(&transport, "rates.NZD_USD", Bytes::from(vec![1u8; 1024])).await;
    assert_eq!(
        next(&mut subscription).await,
        Delivery::Message(Bytes::from(vec![1u8; 1024]))
    );

    // Refused at once even with the server gone: nothing was sent.
    server.kill();
    let started = Instant::now();
    let err = transport
        .publish("rates.NZD_USD", Bytes::from(vec![1u8; 1025]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PayloadTooLarge {
                size: 1025,
                limit: 1024,
                backend: "redis"
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
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
