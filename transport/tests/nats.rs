//! The NATS backend beyond the shared conformance suite, against a real
//! nats-server per test (JetStream on, a free port, its own store): a
//! server killed with `kill -9` and restarted under a live subscription, a
//! process cut off by a proxy and resuming (with and without the stream's
//! history rolling past it), retained payloads, health, credentials and
//! the payload limit. An ignored test measures publish-to-receive latency.

mod support;

use std::time::{Duration, Instant};

use fxcast_transport::{
    Delivery, Error, Gap, GapCause, Transport,
    conformance::publish,
    nats::{NatsConfig, NatsCredentials, NatsTransport},
};
use support::{
    // Fast retries and short deadlines, so outages are short.
    configs::nats_config as config,
    nats_server::NatsServer,
    numbers::{next, next_number, number, numbered},
    outages::{behind_a_proxy, publish_while_cut_off},
    servers::Engine,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rolled_past_a_process_cut_off_is_an_announced_gap() {
    let server = NatsServer::start();
    let (proxy, publisher, subscriber) =
        behind_a_proxy(&server, |url| NatsServer::connect_keeping(url, 5)).await;
    // More than the stream keeps per topic: 4..=15 are discarded.
    let mut subscription =
        publish_while_cut_off(&proxy, &publisher, &subscriber, "rates.EUR_USD", 20).await;

    assert_eq!(
        next(&mut subscription).await,
        Delivery::Gap(Gap {
            missed: None,
            cause: GapCause::Reconnected
        })
    );
    for n in 16..=20 {
        assert_eq!(next_number(&mut subscription).await, n);
    }
    publish(&publisher, "rates.EUR_USD", numbered(21)).await;
    assert_eq!(next_number(&mut subscription).await, 21);
    assert_eq!(subscriber.stats().gaps, 1);
}

async fn refused(config: NatsConfig, secret: &str) {
    let err = NatsTransport::connect(config).await.unwrap_err();
    let Error::Unavailable { message, .. } = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        message.to_lowercase().contains("authorization"),
        "the cause is named: {message}"
    );
    assert!(message.contains("credentials"), "{message}");
    assert!(!message.contains(secret), "the secret leaked: {message}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_never_shown() {
    let server = NatsServer::start_with(&["--user", "fx", "--pass", "right-pass"]);
    let with = |credentials| NatsConfig {
        credentials,
        ..config(server.url())
    };
    refused(
        with(NatsCredentials::UserPassword {
            user: "fx".into(),
            password: "wrong-pass".into(),
        }),
        "wrong-pass",
    )
    .await;
    refused(with(NatsCredentials::None), "right-pass").await;
    refused(
        config(format!("nats://fx:wrong-pass@127.0.0.1:{}", server.port())),
        "wrong-pass",
    )
    .await;

    let transport = NatsTransport::connect(with(NatsCredentials::UserPassword {
        user: "fx".into(),
        password: "right-pass".into(),
    }))
    .await
    .unwrap();
    assert!(!format!("{transport:?}").contains("right-pass"));
    let mut subscription = transport.subscribe("rates.AUD_USD").await.unwrap();
    publish(&transport, "rates.AUD_USD", numbered(1)).await;
    assert_eq!(next_number(&mut subscription).await, 1);

    let server = NatsServer::start_with(&["--auth", "right-token"]);
    refused(
        NatsConfig {
            credentials: NatsCredentials::Token("wrong-token".into()),
            ..config(server.url())
        },
        "wrong-token",
    )
    .await;
    NatsTransport::connect(NatsConfig {
        credentials: NatsCredentials::Token("right-token".into()),
        ..config(server.url())
    })
    .await
    .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn report(what: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort();
    println!(
        "{what}: {} messages in {elapsed:?}: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
}

/// Publish-to-receive latency for one subscriber over 10,000 messages, each
/// published once the previous one was acknowledged, through the transport
/// (JetStream publish and consumer) and, for comparison, over core NATS.
/// `cargo test --release -p fxcast-transport --features nats --test nats -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it with --release --ignored --nocapture"]
async fn publish_to_receive_latency() {
    const MESSAGES: u64 = 10_000;
    let server = NatsServer::start();
    let publisher = NatsServer::connect_fast(server.url()).await;
    let subscriber = NatsServer::connect_fast(server.url()).await;
    let mut subscription = subscriber.subscribe("rates.USD_JPY").await.unwrap();
    let base = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::new();
        while (latencies.len() as u64) < MESSAGES {
            let Delivery::Message(bytes) = next(&mut subscription).await else {
                panic!("gap during the measurement");
            };
            let sent = Duration::from_nanos(number(&bytes));
            latencies.push(base.elapsed() - sent);
        }
        latencies
    });
    let started = Instant::now();
    for _ in 0..MESSAGES {
        let sent = base.elapsed().as_nanos() as u64;
        publish(&publisher, "rates.USD_JPY", numbered(sent)).await;
    }
    let latencies = receiver.await.unwrap();
    report("nats transport (JetStream)", latencies, started.elapsed());

    // Core NATS on the same server, publish then flush per message.
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut core = client.subscribe("bench.core").await.unwrap();
    client.flush().await.unwrap();
    let receiver = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut latencies = Vec::new();
        while (latencies.len() as u64) < MESSAGES {
            let message = core.next().await.unwrap();
            let sent = Duration::from_nanos(number(&message.payload));
            latencies.push(base.elapsed() - sent);
        }
        latencies
    });
    let started = Instant::now();
    for _ in 0..MESSAGES {
        let sent = base.elapsed().as_nanos() as u64;
        client.publish("bench.core", numbered(sent)).await.unwrap();
        client.flush().await.unwrap();
    }
    let latencies = receiver.await.unwrap();
    report("core NATS (no stream)", latencies, started.elapsed());
}

// The tests this backend runs alike with Redis, from support/outages.rs.
// In a_killed_server_costs_no_message_twice_and_none_silently, the stream
// holds far more than the outage's messages: nothing lost.
// In a_process_cut_off_resumes_without_loss_or_duplicates, the server
// paused the consumer while nobody listened on its inbox, so either it
// (once async-nats resubscribed the inbox) or the consumer resumed after
// the reconnect delivers 4..=7: which one depends on timing, and either
// way each arrives once, in order.
support::outages::server_tests! {
    NatsServer, NatsConfig, restored = resumes,
    restores_after_a_cut = false, subscribe_refused = false,
}
