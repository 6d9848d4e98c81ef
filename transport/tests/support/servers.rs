//! The real nats-server and redis-server as one [`Engine`]: started,
//! killed (`kill -9`) and restarted on the same port by the outage
//! scenarios, each backend's transport connected with a short history,
//! and on a server of its own for the conformance suite
//! ([`on_own_server`]).

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
    /// The transport of the server's backend, and its config.
    type Transport: Transport;
    type Config;
    /// A server of its own on a free port.
    fn start() -> Self;
    fn url(&self) -> String;
    fn port(&self) -> u16;
    fn kill(&mut self);
    fn restart(&mut self);
    /// A transport connected to this server with the backend's default
    /// config but for `buffer`.
    async fn connect_with_buffer(&self, buffer: usize) -> Self::Transport;
    /// The config for `url` with fast retries and short deadlines
    /// ([`super::configs`]).
    fn fast_config(url: String) -> Self::Config;
    /// A transport connected with `config`, or a panic.
    async fn connect_with(config: Self::Config) -> Self::Transport;
    /// A transport connected to `url` with [`Engine::fast_config`].
    async fn connect_fast(url: String) -> Self::Transport {
        Self::connect_with(Self::fast_config(url)).await
    }
    /// A transport connected to `url` with [`Engine::fast_config`], its
    /// streams keeping `history` messages per topic.
    async fn connect_keeping(url: String, history: u32) -> Self::Transport;
}

/// Implements [`Engine`] with the server's own methods of the same names,
/// for `$transport` configured by `$config` (`$fast`: the fast one).
macro_rules! engine {
    ($server:ty, $scheme:literal, $transport:ident, $config:ident, $fast:path) => {
        impl Engine for $server {
            const SCHEME: &'static str = $scheme;
            type Transport = $transport;
            type Config = $config;
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
            fn fast_config(url: String) -> $config {
                $fast(url)
            }
            async fn connect_with(config: $config) -> $transport {
                $transport::connect(config).await.unwrap()
            }
            async fn connect_keeping(url: String, history: u32) -> $transport {
                Self::connect_with($config {
                    history,
                    ..$fast(url)
                })
                .await
            }
        }
    };
}

engine!(
    super::nats_server::NatsServer,
    "nats",
    NatsTransport,
    NatsConfig,
    super::configs::nats_config
);
engine!(
    super::redis_server::RedisServer,
    "redis",
    RedisTransport,
    RedisConfig,
    super::configs::redis_config
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
