//! The Redis backend against the shared conformance suite, each test with
//! its own redis-server (a free port, its own data directory).

mod support;

use fxcast_transport::{
    conformance::{Limits, WithGuard},
    redis::{RedisConfig, RedisTransport},
};
use support::redis_server::RedisServer;

/// A transport on a fresh redis-server, which lives as long as it does.
async fn connect(buffer: usize) -> WithGuard<RedisTransport, RedisServer> {
    let server = RedisServer::start();
    let transport = RedisTransport::connect(RedisConfig {
        url: server.url(),
        buffer,
        ..RedisConfig::default()
    })
    .await
    .expect("connect to redis-server");
    WithGuard {
        transport,
        guard: server,
    }
}

fxcast_transport::transport_conformance!(redis_streams, {
    (connect(64).await, Limits { buffer: 64 })
});
