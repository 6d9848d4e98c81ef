//! The NATS backend against the shared conformance suite, each test with
//! its own nats-server (JetStream on, a free port, its own store).

mod support;

use fxcast_transport::{
    conformance::{Limits, WithGuard},
    nats::{NatsConfig, NatsTransport},
};
use support::nats_server::NatsServer;

/// A transport on a fresh nats-server, which lives as long as it does.
async fn connect(buffer: usize) -> WithGuard<NatsTransport, NatsServer> {
    let server = NatsServer::start();
    let transport = NatsTransport::connect(NatsConfig {
        url: server.url(),
        buffer,
        ..NatsConfig::default()
    })
    .await
    .expect("connect to nats-server");
    WithGuard {
        transport,
        guard: server,
    }
}

fxcast_transport::transport_conformance!(nats_jetstream, {
    (connect(64).await, Limits { buffer: 64 })
});
