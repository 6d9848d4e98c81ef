//! Numbered messages, the waits the backend tests share, and the
//! shared-storage check of the network backends.

use std::{collections::BTreeSet, future::Future, time::Duration};

use bytes::Bytes;
use fxcast_transport::{Delivery, Error, Subscription, Transport, TransportHealth};
use tokio::sync::watch;

/// How long any single expected event may take before a test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// The payload carrying `n`.
pub(crate) fn numbered(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

/// The number a [`numbered`] payload carries.
pub(crate) fn number(bytes: &Bytes) -> u64 {
    u64::from_be_bytes(bytes[..].try_into().expect("an 8-byte number"))
}

/// The next delivery, within [`DEADLINE`].
pub(crate) async fn next(subscription: &mut Subscription) -> Delivery {
    super::within::next_within(subscription, DEADLINE, "no delivery within the deadline").await
}

/// The number of the next delivery, which must be a message.
pub(crate) async fn next_number(subscription: &mut Subscription) -> u64 {
    match next(subscription).await {
        Delivery::Message(bytes) => number(&bytes),
        Delivery::Gap(gap) => panic!("unexpected gap: {gap}"),
    }
}

/// The health once it is (or is not) connected, within [`DEADLINE`].
pub(crate) async fn wait_health(
    health: &mut watch::Receiver<TransportHealth>,
    connected: bool,
) -> TransportHealth {
    tokio::time::timeout(DEADLINE, health.wait_for(|h| h.is_connected() == connected))
        .await
        .expect("health did not change within the deadline")
        .unwrap()
        .clone()
}

/// What a publisher task did: numbers acknowledged and numbers refused.
#[derive(Default)]
pub(crate) struct Published {
    pub(crate) acked: BTreeSet<u64>,
    pub(crate) failed: BTreeSet<u64>,
}

/// What `first` retains, a process connected later (`later`) reads: the
/// newest payload of each topic, any topic name the backend accepts, and
/// nothing for a topic never retained; a bad name is refused.
pub(crate) async fn retained_reach_a_later_process<T, F>(first: T, later: impl FnOnce() -> F)
where
    T: Transport,
    F: Future<Output = T>,
{
    for (topic, value) in [
        ("rates.EUR_USD", &b"1.0842"[..]),
        ("odd*topic>", b"wild"),
        ("rates.EUR_USD", b"1.0843"),
    ] {
        first
            .retain(topic, Bytes::from_static(value))
            .await
            .unwrap();
    }
    drop(first);

    let later = later().await;
    assert_eq!(
        later.retained("rates.EUR_USD").await.unwrap(),
        Some(Bytes::from_static(b"1.0843")),
        "the newest retained payload"
    );
    assert_eq!(
        later.retained("odd*topic>").await.unwrap(),
        Some(Bytes::from_static(b"wild"))
    );
    assert_eq!(later.retained("rates.NEVER").await.unwrap(), None);
    let err = later.retained("has space").await.unwrap_err();
    assert!(matches!(err, Error::InvalidTopic { .. }), "{err}");
}

/// `retain_for` keeps what `retain` lets go: `transport` retains for 500 ms
/// and takes payloads of at most 1 KiB; `retain_for` holds a larger one
/// (state such as revocations) past that.
pub(crate) async fn retain_for_outlives_retain(transport: &impl Transport) {
    transport
        .retain("rates.GBP_USD", Bytes::from_static(b"1.27"))
        .await
        .unwrap();
    // Larger than a message may be: retain_for holds state such as
    // revocations.
    let revocations = Bytes::from(vec![7u8; 100 * 1024]);
    transport
        .retain_for(
            "auth.revocations",
            revocations.clone(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let err = transport
        .retain("rates.GBP_USD", Bytes::from(vec![0u8; 1025]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    assert!(transport.retained("rates.GBP_USD").await.unwrap().is_some());

    // Past retain's TTL (the point of the test is time passing).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(transport.retained("rates.GBP_USD").await.unwrap(), None);
    assert_eq!(
        transport.retained("auth.revocations").await.unwrap(),
        Some(revocations)
    );
}
