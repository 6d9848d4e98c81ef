//! The in-process backend against the shared conformance suite.

use fxcast_transport::{MemoryConfig, MemoryTransport, conformance::Limits};

fxcast_transport::transport_conformance!(memory, {
    (
        MemoryTransport::new(MemoryConfig { capacity: 64 }),
        Limits { buffer: 64 },
    )
});

#[tokio::test]
async fn topic_state_is_freed_when_the_last_subscriber_leaves() {
    use fxcast_transport::Transport;
    let transport = MemoryTransport::default();
    let a = transport.subscribe("rates.X").await.unwrap();
    let b = transport.subscribe("rates.Y").await.unwrap();
    assert_eq!(transport.topic_count(), 2);
    drop(a);
    assert_eq!(transport.topic_count(), 1);
    drop(b);
    assert_eq!(transport.topic_count(), 0);
}
