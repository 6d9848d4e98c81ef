//! The outage scenarios the NATS and Redis backend tests run against their
//! real servers: a server killed and restarted under a live publisher and
//! subscription, a subscriber cut off by a proxy, health following the
//! server, and payloads refused over the limit; and [`server_tests!`],
//! the tests both backends run alike on these and the shared-storage checks.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fxcast_transport::{
    Delivery, Error, GapCause, Subscription, Transport, TransportHealth, conformance::publish,
};
use tokio::sync::watch;

use super::numbers::{DEADLINE, Published, next, next_number, number, numbered, wait_health};
use super::proxy::Proxy;
use super::servers::Engine;

/// Publishes 1, 2, 3, ... on `topic` every millisecond from `publisher`
/// through `server` being killed and restarted; returns what was
/// acknowledged and every delivery `subscriber` made up to the last
/// acknowledged number. A refused number is not retried (a retry would be
/// a second message).
pub(crate) async fn publish_through_a_restart<T: Transport>(
    server: &mut impl Engine,
    publisher: T,
    subscriber: &T,
    topic: &'static str,
) -> (Published, Vec<Delivery>) {
    let mut health = subscriber.health();
    let mut subscription = subscriber.subscribe(topic).await.unwrap();
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
                    let numbers = if ok {
                        &mut published.acked
                    } else {
                        &mut published.failed
                    };
                    numbers.insert(n);
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
    println!(
        "published {} acked, {} refused during the outage; {} deliveries",
        published.acked.len(),
        published.failed.len(),
        deliveries.len()
    );
    (published, deliveries)
}

/// Connects a subscriber and then a publisher to `server` with `connect`,
/// runs [`publish_through_a_restart`] on `topic` and checks what arrived
/// with [`check_deliveries`]; returns the gaps seen and the subscriber, for
/// its stats.
pub(crate) async fn deliveries_through_a_restart<T, F>(
    server: &mut impl Engine,
    connect: impl Fn(String) -> F,
    topic: &'static str,
) -> (usize, T)
where
    T: Transport,
    F: Future<Output = T>,
{
    let subscriber = connect(server.url()).await;
    let publisher = connect(server.url()).await;
    let (published, deliveries) =
        publish_through_a_restart(server, publisher, &subscriber, topic).await;
    (check_deliveries(&published, &deliveries), subscriber)
}

/// Checks that each number arrived at most once, in order, and that a
/// number acknowledged to the publisher is missing only where a gap was
/// announced; returns the gaps seen.
pub(crate) fn check_deliveries(published: &Published, deliveries: &[Delivery]) -> usize {
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

/// A [`Proxy`] in front of `server`, a publisher connected to the server
/// and a subscriber reaching it only through the proxy, both connected by
/// `connect`.
pub(crate) async fn behind_a_proxy<S, T, F>(
    server: &S,
    connect: impl Fn(String) -> F,
) -> (Proxy, T, T)
where
    S: Engine,
    T: Transport,
    F: Future<Output = T>,
{
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let publisher = connect(server.url()).await;
    // The subscriber reaches the server only through the proxy.
    let subscriber = connect(format!("{}://{}", S::SCHEME, proxy.addr())).await;
    (proxy, publisher, subscriber)
}

/// `subscriber` (connected through `proxy`) subscribes to `topic` and
/// receives 1..=3 from `publisher`; then the proxy cuts it off, 4..=`last`
/// are published, and the proxy lets it reconnect. Returns the
/// subscription once the subscriber is connected again.
pub(crate) async fn publish_while_cut_off<T: Transport>(
    proxy: &Proxy,
    publisher: &T,
    subscriber: &T,
    topic: &str,
    last: u64,
) -> Subscription {
    let mut health = subscriber.health();
    let mut subscription = subscriber.subscribe(topic).await.unwrap();
    for n in 1..=3 {
        publish(publisher, topic, numbered(n)).await;
        assert_eq!(next_number(&mut subscription).await, n);
    }
    proxy.cut();
    let TransportHealth::Reconnecting { reason } = wait_health(&mut health, false).await else {
        unreachable!()
    };
    assert!(reason.contains("lost the connection"), "{reason}");
    for n in 4..=last {
        publish(publisher, topic, numbered(n)).await;
    }
    proxy.restore();
    wait_health(&mut health, true).await;
    subscription
}

/// [`publish_while_cut_off`] on `orders.alice` up to 6, then 7 once the
/// subscriber is back: 4..=6 are held by the stream while it is cut off,
/// and it receives 4..=7 and then 8, each once, in order.
pub(crate) async fn resumes_after_a_cut<T: Transport>(
    proxy: &Proxy,
    publisher: &T,
    subscriber: &T,
) {
    let mut subscription =
        publish_while_cut_off(proxy, publisher, subscriber, "orders.alice", 6).await;
    publish(publisher, "orders.alice", numbered(7)).await;
    for n in 4..=7 {
        assert_eq!(next_number(&mut subscription).await, n);
    }
    publish(publisher, "orders.alice", numbered(8)).await;
    assert_eq!(next_number(&mut subscription).await, 8);
}

/// Health turns to reconnecting (naming the lost connection) while
/// `server` is down, a publish (and, when `subscribe_refused`, a
/// subscribe) is refused meanwhile, and all works again after a restart.
pub(crate) async fn health_follows_the_server<T: Transport>(
    server: &mut impl Engine,
    transport: &T,
    subscribe_refused: bool,
) {
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
    if subscribe_refused {
        let err = transport.subscribe("rates.USD_CHF").await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    }

    server.restart();
    wait_health(&mut health, true).await;
    let mut subscription = transport.subscribe("rates.USD_CHF").await.unwrap();
    publish(transport, "rates.USD_CHF", numbered(2)).await;
    assert_eq!(next_number(&mut subscription).await, 2);
}

/// `transport`, configured with a 1,024-byte `max_payload`, delivers 1,024
/// bytes and refuses 1,025 at once, even with `server` gone: nothing is
/// sent.
pub(crate) async fn refuses_over_the_limit<T: Transport>(
    server: &mut impl Engine,
    transport: &T,
    backend: &str,
) {
    let mut subscription = transport.subscribe("rates.NZD_USD").await.unwrap();
    publish(transport, "rates.NZD_USD", Bytes::from(vec![1u8; 1024])).await;
    assert_eq!(
        next(&mut subscription).await,
        Delivery::Message(Bytes::from(vec![1u8; 1024]))
    );

    server.kill();
    let started = Instant::now();
    let err = transport
        .publish("rates.NZD_USD", Bytes::from(vec![1u8; 1025]))
        .await
        .unwrap_err();
    let Error::PayloadTooLarge {
        size: 1025,
        limit: 1024,
        backend: refused_by,
    } = err
    else {
        panic!("expected PayloadTooLarge, got {err}");
    };
    assert_eq!(refused_by, backend);
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// The tests NATS and Redis run alike, each against a real server of its
/// own: a killed server costing no message twice and none silently, a
/// process cut off resuming without loss or duplicates, retained payloads
/// reaching a process connected later, `retain_for` outliving `retain`,
/// health following the server, and payloads refused over the limit.
/// Expands to `#[tokio::test]` functions in the calling test file, for
/// `$server` (an [`Engine`] whose backend's config is `$config`; the
/// backend names itself in a refusal as its URL scheme), whose transport
/// counts reconnecting without a gap in the stats field `$restored`;
/// `$restores_after_a_cut` says whether a cut-off subscriber counts one
/// there too, `$subscribe_refused` whether a subscribe is refused while
/// the server is down.
#[allow(unused_macros)] // Only the NATS and Redis tests use it.
macro_rules! server_tests {
    (
        $server:ident,
        $config:ident,
        restored = $restored:ident,
        restores_after_a_cut = $restores_after_a_cut:literal,
        subscribe_refused = $subscribe_refused:literal $(,)?
    ) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_killed_server_costs_no_message_twice_and_none_silently() {
            use support::servers::Engine as _;
            let mut server = $server::start();
            let (gaps, subscriber) = support::outages::deliveries_through_a_restart(
                &mut server,
                $server::connect_fast,
                "rates.USD_JPY",
            )
            .await;
            let stats = subscriber.stats();
            assert!(stats.$restored >= 1, "{stats:?}");
            assert_eq!((gaps, stats.gaps), (0, 0), "{stats:?}");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_process_cut_off_resumes_without_loss_or_duplicates() {
            use support::servers::Engine as _;
            let server = $server::start();
            let (proxy, publisher, subscriber) =
                support::outages::behind_a_proxy(&server, $server::connect_fast).await;
            // 4..=6 are published while the subscriber is cut off: held by the stream.
            support::outages::resumes_after_a_cut(&proxy, &publisher, &subscriber).await;
            let stats = subscriber.stats();
            assert_eq!(stats.gaps, 0, "{stats:?}");
            if $restores_after_a_cut {
                assert!(stats.$restored >= 1, "{stats:?}");
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retained_payloads_reach_a_process_connected_later() {
            use support::servers::Engine as _;
            let server = $server::start();
            let first = $server::connect_fast(server.url()).await;
            support::numbers::retained_reach_a_later_process(first, || {
                $server::connect_fast(server.url())
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retain_for_outlives_retain() {
            use support::servers::Engine as _;
            let server = $server::start();
            let transport = $server::connect_with($config {
                retain_ttl: std::time::Duration::from_millis(500),
                max_payload: 1024,
                ..$server::fast_config(server.url())
            })
            .await;
            support::numbers::retain_for_outlives_retain(&transport).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn health_goes_unavailable_while_the_server_is_down_and_back_after() {
            use support::servers::Engine as _;
            let mut server = $server::start();
            let transport = $server::connect_fast(server.url()).await;
            support::outages::health_follows_the_server(
                &mut server,
                &transport,
                $subscribe_refused,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn payloads_over_the_limit_are_refused_before_sending() {
            use support::servers::Engine as _;
            let mut server = $server::start();
            let transport = $server::connect_with($config {
                max_payload: 1024,
                ..$server::fast_config(server.url())
            })
            .await;
            assert_eq!(transport.max_payload(), 1024);
            support::outages::refuses_over_the_limit(&mut server, &transport, $server::SCHEME)
                .await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use server_tests;
