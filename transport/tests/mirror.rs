//! `MirroredTransport`: the primary passes the conformance suite unchanged,
//! messages of mirrored topics are copied to the mirror, and a failing
//! mirror never fails the primary.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use fxcast_transport::{
    Call, Error, MemoryConfig, MemoryTransport, MirroredTransport, Subscription, Transport,
    TransportHealth,
    conformance::{Limits, message, next, publish},
};
use tokio::sync::watch;

fxcast_transport::transport_conformance!(mirrored, {
    (
        MirroredTransport::new(
            Arc::new(MemoryTransport::new(MemoryConfig { capacity: 64 })),
            Arc::new(MemoryTransport::default()),
            "",
        ),
        Limits { buffer: 64 },
    )
});

#[tokio::test]
async fn mirrored_topics_are_copied_and_others_are_not() {
    let primary = Arc::new(MemoryTransport::default());
    let mirror = Arc::new(MemoryTransport::default());
    let bridged = MirroredTransport::new(primary.clone(), mirror.clone(), "rates.");
    let mut local = bridged.subscribe("rates.USD_JPY").await.unwrap();
    let mut copied = mirror.subscribe("rates.USD_JPY").await.unwrap();
    let mut private = mirror.subscribe("orders.alice").await.unwrap();
    publish(&bridged, "orders.alice", Bytes::from_static(b"order")).await;
    publish(&bridged, "rates.USD_JPY", Bytes::from_static(b"tick")).await;
    assert_eq!(next(&mut local).await, message(b"tick"));
    assert_eq!(next(&mut copied).await, message(b"tick"));
    // Local subscribers are the primary's only.
    assert_eq!(bridged.local_subscribers("rates.USD_JPY"), 1);
    drop(copied);
    publish(&bridged, "rates.USD_JPY", Bytes::from_static(b"next")).await;
    assert_eq!(next(&mut local).await, message(b"next"));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), private.next())
            .await
            .is_err(),
        "orders must not be mirrored"
    );
}

/// A mirror that refuses everything and says it is reconnecting.
#[derive(Debug)]
struct Down(watch::Sender<TransportHealth>);

impl Transport for Down {
    fn name(&self) -> &'static str {
        "down"
    }

    fn publish<'a>(&'a self, _: &'a str, _: Bytes) -> Call<'a, ()> {
        Box::pin(async {
            Err(Error::Unavailable {
                backend: "down",
                message: "unreachable".into(),
            })
        })
    }

    fn subscribe<'a>(&'a self, _: &'a str) -> Call<'a, Subscription> {
        unreachable!("the mirror is never subscribed to")
    }

    fn local_subscribers(&self, _: &str) -> usize {
        0
    }

    fn health(&self) -> watch::Receiver<TransportHealth> {
        self.0.subscribe()
    }
}

#[tokio::test]
async fn a_failing_mirror_never_fails_the_primary() {
    let (health, _) = watch::channel(TransportHealth::Reconnecting {
        reason: "unreachable".into(),
    });
    let bridged = MirroredTransport::new(
        Arc::new(MemoryTransport::default()),
        Arc::new(Down(health)),
        "rates.",
    );
    let mut local = bridged.subscribe("rates.EUR_USD").await.unwrap();
    for _ in 0..3 {
        publish(&bridged, "rates.EUR_USD", Bytes::from_static(b"tick")).await;
        assert_eq!(next(&mut local).await, message(b"tick"));
    }
    assert_eq!(bridged.mirror_failures(), 3);
    assert_eq!(bridged.name(), "memory");
    // Readiness follows the mirror: browsers depend on it.
    assert!(!bridged.health().borrow().is_connected());
}
