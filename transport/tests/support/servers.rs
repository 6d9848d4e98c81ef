//! The real nats-server and redis-server as one [`Engine`]: started,
//! killed (`kill -9`) and restarted on the same port by the outage
//! scenarios, and each backend's transport on a server of its own for the
//! conformance suite ([`on_own_server`]).

use fxcast_transport::{
    Transport,
    conformance::WithGuard,
    nats::{NatsConfig, NatsTransport},
    redis::{RedisConfig, RedisTransport},
};

/// A server a test starts, kills (`kill -9`) and restarts on the same
/// port, and its backend's transport.
pub(crate) trait Engine: Sized + Send + Sync + 'static {
    /// The scheme of the server's URLs (`nats`, `redis`).
    const SCHEME: &'static str;
    /// The transport of the server's backend.
    type Transport: Transport;
    /// A server of its own on a free port.
    fn start() -> Self;
    fn url(&self) -> String;
    fn port(&self) -> u16;
    fn kill(&mut self);
    fn restart(&mut self);
    /// A transport connected to this server with the backend's default
    /// config but for `buffer`.
    async fn connect_with_buffer(&self, buffer: usize) -> Self::Transport;
}

/// Implements [`Engine`] with the server's own methods of the same names,
/// for `$transport` configured by `$config`.
macro_rules! engine {
    ($server:ty, $scheme:literal, $transport:ident, $config:ident) => {
        impl Engine for $server {
            const SCHEME: &'static str = $scheme;
            type Transport = $transport;
            fn start() -> Self {
                Self::start()
            }
            fn url(&self) -> String {
                Self::url(self)
            }
            fn port(&self) -> u16 {
                Self::port(self)
            }
            fn kill(&mut self) {
                Self::kill(self);
            }
            fn restart(&mut self) {
                Self::restart(self);
            }
            async fn connect_with_buffer(&self, buffer: usize) -> $transport {
                $transport::connect($config {
                    url: self.url(),
                    buffer,
                    ..$config::default()
                })
                .await
                .expect(concat!("connect to ", $scheme, "-server"))
            }
        }
    };
}

engine!(
    super::nats_server::NatsServer,
    "nats",
    NatsTransport,
    NatsConfig
);
engine!(
    super::redis_server::RedisServer,
    "redis",
    RedisTransport,
    RedisConfig
);

/// A transport on a fresh server, which lives as long as it does.
pub(crate) async fn on_own_server<S: Engine>(buffer: usize) -> WithGuard<S::Transport, S> {
    let server = S::start();
    let transport = server.connect_with_buffer(buffer).await;
    WithGuard {
        transport,
        guard: server,
    }
}
