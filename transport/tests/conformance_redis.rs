//! The Redis backend against the shared conformance suite, each test with
//! its own redis-server (a free port, its own data directory).

mod support;

use fxcast_transport::conformance::Limits;
use support::{redis_server::RedisServer, servers::on_own_server};

fxcast_transport::transport_conformance!(redis_streams, {
    (
        on_own_server::<RedisServer>(64).await,
        Limits { buffer: 64 },
    )
});
