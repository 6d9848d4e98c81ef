//! The NATS backend against the shared conformance suite, each test with
//! its own nats-server (JetStream on, a free port, its own store).

mod support;

use fxcast_transport::conformance::Limits;
use support::{nats_server::NatsServer, servers::on_own_server};

fxcast_transport::transport_conformance!(nats_jetstream, {
    (on_own_server::<NatsServer>(64).await, Limits { buffer: 64 })
});
