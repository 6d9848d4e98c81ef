//! The Redis backend against the shared conformance suite, each test with
//! its own redis-server (a free port, its own data directory).

mod support;

use std::time::Duration;

use bytes::Bytes;
use fxcast_transport::{
    BoxFuture, Error, Subscription, Transport, TransportHealth,
    conformance::Limits,
    redis::{RedisConfig, RedisTransport},
};
use support::redis_server::RedisServer;
use tokio::sync::watch;

/// A transport and the server it uses, which lives as long as it does.
#[derive(Debug)]
struct Served {
    transport: RedisTransport,
    _server: ServerGuard,
}

struct ServerGuard(RedisServer);

impl std::fmt::Debug for ServerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RedisServer").field(&self.0.url()).finish()
    }
}

impl Transport for Served {
    fn name(&self) -> &'static str {
        self.transport.name()
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), Error>> {
        self.transport.publish(topic, payload)
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Subscription, Error>> {
        self.transport.subscribe(topic)
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.transport.local_subscribers(topic)
    }

    fn health(&self) -> watch::Receiver<TransportHealth> {
        self.transport.health()
    }

    fn retain<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), Error>> {
        self.transport.retain(topic, payload)
    }

    fn retain_for<'a>(
        &'a self,
        topic: &'a str,
        payload: Bytes,
        keep_for: Duration,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.transport.retain_for(topic, payload, keep_for)
    }

    fn retained<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, Error>> {
        self.transport.retained(topic)
    }
}

async fn connect(buffer: usize) -> Served {
    let server = RedisServer::start();
    let transport = RedisTransport::connect(RedisConfig {
        url: server.url(),
        buffer,
        ..RedisConfig::default()
    })
    .await
    .expect("connect to redis-server");
    Served {
        transport,
        _server: ServerGuard(server),
    }
}

fxcast_transport::transport_conformance!(redis_streams, {
    (connect(64).await, Limits { buffer: 64 })
});
