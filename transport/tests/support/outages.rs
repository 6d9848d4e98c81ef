//! The outage scenarios the NATS and Redis backend tests run against their
//! real servers: a server killed and restarted under a live publisher and
//! subscription, a subscriber cut off by a proxy, health following the
//! server, and payloads refused over the limit.

use std::{
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

/// A server a test kills (`kill -9`) and restarts on the same port.
pub(crate) trait Engine {
    fn kill(&mut self);
    fn restart(&mut self);
}

impl Engine for super::nats_server::NatsServer {
    fn kill(&mut self) {
        Self::kill(self);
    }
    fn restart(&mut self) {
        Self::restart(self);
    }
}

impl Engine for super::redis_server::RedisServer {
    fn kill(&mut self) {
        Self::kill(self);
    }
    fn restart(&mut self) {
        Self::restart(self);
    }
}

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
