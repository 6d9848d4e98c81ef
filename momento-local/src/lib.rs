//! momento-local: a server that speaks Momento's own gRPC protocol, so the
//! official Momento SDKs (Rust, Python, Node, and `@gomomento/sdk-web` in a
//! browser) talk to it unchanged — offline, without an account.
//!
//! One port serves plaintext gRPC (HTTP/2) and gRPC-web (HTTP/1.1, with
//! CORS for browsers). The wire types and the tonic server traits come from
//! Momento's published `momento-protos` crate, which is built for the same
//! tonic (0.14) as the rest of fxcast.
//!
//! What it implements, with Momento's semantics:
//! - **Topics** (`cache_client.pubsub.Pubsub`): per-topic sequence numbers
//!   from 1 with a sequence page, a heartbeat first and on idle streams,
//!   resume from a bounded per-topic history (a `Discontinuity` when it
//!   cannot), a `Discontinuity` instead of unbounded buffering for a lagging
//!   subscriber, text and binary values, a payload limit (4 KiB default).
//! - **Cache** (`cache_client.Scs`): `Get`, `Set`, `Delete`, `Increment`,
//!   `KeysExist`, `ItemGetTtl`, `UpdateTtl`, `GetBatch`, `SetBatch` on scalar
//!   items with TTLs; caches must exist (`NOT_FOUND` naming the cache).
//! - **Control** (`control_client.ScsControl`): `CreateCache`, `DeleteCache`,
//!   `ListCaches`, `FlushCache`.
//! - **Tokens** (`token.Token`): `GenerateDisposableToken`; the permissions
//!   and expiry it grants are enforced on every call.
//!
//! Every other RPC answers `UNIMPLEMENTED` with a message naming it.
//!
//! It stands beside `fxcast-transport` rather than inside it: the Momento
//! backend is tested against it, but nothing here knows about transports.
//!
//! # Layout
//! - this file: [`MomentoLocalConfig`], [`serve`], [`Error`], routing, CORS,
//!   the sweeper;
//! - `auth`: [`AcceptedKeys`], disposable tokens, permission checks, the
//!   `Token` service;
//! - `pubsub`: topics and the `Pubsub` service;
//! - `cache`: caches, items and the `Scs` service;
//! - `control`: the `ScsControl` service;
//! - `limits`: subscriptions per connection and operations per second.

#![forbid(unsafe_code)]

use std::{
    future::Future,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Status,
    codegen::http::{self, HeaderName, Method},
    service::Routes,
};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// Implements RPCs momento-local does not serve: each answers
/// `UNIMPLEMENTED` naming itself. The methods are written out in the shape
/// `#[tonic::async_trait]` gives trait methods, because a macro inside the
/// impl expands after that attribute has run.
macro_rules! unimplemented_rpcs {
    ($service:literal: $($method:ident($request:ident) -> $response:ident;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _request: ::tonic::Request<$request>,
            ) -> ::std::pin::Pin<Box<
                dyn ::std::future::Future<
                    Output = Result<::tonic::Response<$response>, ::tonic::Status>,
                > + Send + 'async_trait,
            >>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                let rpc = stringify!($request).trim_end_matches("Request");
                Box::pin(::std::future::ready(Err(
                    $crate::unimplemented_rpc($service, rpc),
                )))
            }
        )*
    };
}

mod auth;
mod cache;
mod control;
mod limits;
mod pubsub;

pub use auth::AcceptedKeys;

use auth::{Authenticate, Authority, TokenService};
use cache::{CacheService, Caches};
use control::ControlService;
use limits::{OpsLimit, StreamCounts};
use pubsub::PubsubService;

use momento_protos::{
    cache_client::{pubsub::pubsub_server::PubsubServer, scs_server::ScsServer},
    control_client::scs_control_server::ScsControlServer,
    token::token_server::TokenServer,
};

/// Errors momento-local reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is unusable; the message says which.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The server failed while serving.
    #[error("momento-local server failed")]
    Server(#[source] tonic::transport::Error),
}

/// Settings of the momento-local server.
#[derive(Debug, Clone)]
pub struct MomentoLocalConfig {
    /// Which API keys callers may present; tokens minted by
    /// `GenerateDisposableToken` are accepted either way.
    pub accepted_keys: AcceptedKeys,
    /// Caches that exist from the start (browsers cannot create caches).
    pub caches: Vec<String>,
    /// The `endpoint` named in disposable tokens; defaults to the IP address
    /// the server listens on. SDKs reach momento-local through their
    /// local-development settings, not through this value.
    pub endpoint: Option<String>,
    /// Largest topic message (text or binary value), in bytes.
    pub max_message_bytes: usize,
    /// Largest cache value, in bytes.
    pub max_item_bytes: usize,
    /// Messages held per topic for `resume_at_topic_sequence_number`.
    pub topic_history: usize,
    /// How far a subscriber may fall behind before it is skipped ahead with
    /// a `Discontinuity`.
    pub subscriber_buffer: usize,
    /// A subscription that has sent nothing for this long gets a heartbeat.
    pub heartbeat_interval: Duration,
    /// A topic without subscribers and without publishes for this long is
    /// forgotten; when used again it starts over on a new sequence page.
    pub topic_idle_timeout: Duration,
    /// Connection cap and header/idle timeouts of the listener.
    pub connections: fxcast_listener::ListenerConfig,
    /// TLS of the listener (plaintext, as Momento SDKs' local-development
    /// settings expect, when `None`).
    pub tls: Option<fxcast_listener::Tls>,
    /// Longest-lived disposable token `GenerateDisposableToken` mints
    /// (hosted: 1 hour); longer requests are `INVALID_ARGUMENT`.
    pub max_token_lifetime: Duration,
    /// Subscriptions one client connection may hold at once (hosted: 100);
    /// the next is refused with `RESOURCE_EXHAUSTED`
    /// (`topic_subscriptions_limit_exceeded`).
    pub max_subscriptions_per_connection: usize,
    /// Operations per second each cache allows (publishes, subscribes and
    /// item calls; a second's worth may come at once); beyond it
    /// `RESOURCE_EXHAUSTED` (`operations_rate_limit_exceeded`). `None`: no
    /// limit (the hosted limit depends on the account).
    pub max_ops_per_second: Option<NonZeroU32>,
}

impl Default for MomentoLocalConfig {
    fn default() -> Self {
        Self {
            accepted_keys: AcceptedKeys::Any,
            caches: Vec::new(),
            endpoint: None,
            // Momento's topic message limit.
            max_message_bytes: 4 * 1024,
            max_item_bytes: 5 * 1024 * 1024,
            topic_history: 1024,
            subscriber_buffer: 1024,
            heartbeat_interval: Duration::from_secs(1),
            topic_idle_timeout: Duration::from_secs(10 * 60),
            connections: fxcast_listener::ListenerConfig::default(),
            tls: None,
            max_token_lifetime: Duration::from_secs(60 * 60),
            max_subscriptions_per_connection: 100,
            max_ops_per_second: None,
        }
    }
}

impl MomentoLocalConfig {
    /// Checks the settings, so a command line can refuse bad ones before it
    /// binds a port; [`serve`] checks them too.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the unusable setting.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| Err(Error::InvalidConfig(format!("momento-local: {reason}")));
        if self.max_message_bytes == 0 || self.max_item_bytes == 0 {
            return invalid("message and item size limits must be positive");
        }
        if self.topic_history == 0 || self.subscriber_buffer == 0 {
            return invalid("topic history and subscriber buffer must hold at least one message");
        }
        if self.heartbeat_interval.is_zero() || self.topic_idle_timeout.is_zero() {
            return invalid("heartbeat interval and topic idle timeout must be positive");
        }
        if self.max_token_lifetime < Duration::from_secs(1)
            || self.max_subscriptions_per_connection == 0
        {
            return invalid(
                "the token lifetime must be at least 1 s and the subscription limit positive",
            );
        }
        self.connections
            .validate()
            .or_else(|reason| invalid(&reason))?;
        if let AcceptedKeys::Only(keys) = &self.accepted_keys
            && (keys.is_empty() || keys.iter().any(String::is_empty))
        {
            return invalid("the accepted API keys must be non-empty");
        }
        for name in &self.caches {
            cache::validate_cache_name(name)
                .map_err(|status| Error::InvalidConfig(status.message().to_owned()))?;
        }
        Ok(())
    }
}

/// State every service shares.
#[derive(Debug)]
struct Shared {
    caches: Caches,
    limits: Limits,
    /// Subscriptions per client connection.
    streams: Arc<StreamCounts>,
    /// Operations per second per cache, when limited.
    ops: Option<OpsLimit>,
    /// Cancelled when the server stops, so open subscriptions end and the
    /// graceful shutdown does not wait for them forever.
    stopping: CancellationToken,
    /// The next topic sequence page. Seeded with the start time in
    /// milliseconds, so pages also grow across restarts and a client resuming
    /// against a restarted server learns that its numbers are stale.
    pages: AtomicU64,
}

impl Shared {
    fn new(config: &MomentoLocalConfig, stopping: CancellationToken) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(1));
        Self {
            caches: Caches::default(),
            limits: Limits::from(config),
            streams: Arc::new(StreamCounts::new(config.max_subscriptions_per_connection)),
            ops: config.max_ops_per_second.map(OpsLimit::new),
            stopping,
            pages: AtomicU64::new(now_ms),
        }
    }

    fn next_page(&self) -> u64 {
        self.pages.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts one operation on `cache` against the operations limit.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when the cache is over its limit.
    fn charge(&self, cache: &str) -> Result<(), Status> {
        self.ops.as_ref().map_or(Ok(()), |ops| ops.charge(cache))
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_message_bytes: usize,
    max_item_bytes: usize,
    topic_history: usize,
    subscriber_buffer: usize,
    heartbeat_interval: Duration,
    topic_idle_timeout: Duration,
}

impl From<&MomentoLocalConfig> for Limits {
    fn from(config: &MomentoLocalConfig) -> Self {
        Self {
            max_message_bytes: config.max_message_bytes,
            max_item_bytes: config.max_item_bytes,
            topic_history: config.topic_history,
            subscriber_buffer: config.subscriber_buffer,
            heartbeat_interval: config.heartbeat_interval,
            topic_idle_timeout: config.topic_idle_timeout,
        }
    }
}

/// How often expired items and idle topics are swept away.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the Momento protocol on `listener` until `shutdown` completes.
///
/// The caller binds the socket (so tests bind `127.0.0.1:0` and read the
/// port) and owns shutdown. When `shutdown` completes, open subscriptions
/// end with `UNAVAILABLE` and in-flight calls are drained. Connections are
/// capped and timed out by [`MomentoLocalConfig::connections`].
///
/// # Errors
/// [`Error::InvalidConfig`] for an unusable `config`, [`Error::Server`] when
/// the server fails.
pub async fn serve(
    listener: TcpListener,
    config: MomentoLocalConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::InvalidConfig(format!("momento-local: unusable listener: {e}")))?;
    let endpoint = config
        .endpoint
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let stopping = CancellationToken::new();
    let shared = Arc::new(Shared::new(&config, stopping.clone()));
    for name in &config.caches {
        // A name given twice is created once.
        let _ = shared.caches.create(name);
    }
    let authority = Arc::new(Authority::new(
        config.accepted_keys.clone(),
        endpoint,
        config.max_token_lifetime,
    ));
    let authenticate = Authenticate::new(authority.clone());

    // Cache values up to the item limit, plus room for keys and framing.
    let max_decoding = config.max_item_bytes.saturating_add(64 * 1024);
    let routes = Routes::new(tonic::service::interceptor::InterceptedService::new(
        PubsubServer::new(PubsubService::new(shared.clone())),
        authenticate.clone(),
    ))
    .add_service(tonic::service::interceptor::InterceptedService::new(
        ScsServer::new(CacheService::new(shared.clone())).max_decoding_message_size(max_decoding),
        authenticate.clone(),
    ))
    .add_service(tonic::service::interceptor::InterceptedService::new(
        ScsControlServer::new(ControlService::new(shared.clone())),
        authenticate.clone(),
    ))
    .add_service(tonic::service::interceptor::InterceptedService::new(
        TokenServer::new(TokenService::new(authority)),
        authenticate,
    ));
    // Leaderboards, functions, the auth service...: say which RPC is missing
    // instead of tonic's empty UNIMPLEMENTED.
    let routes = Routes::from(routes.into_axum_router().fallback(unknown_rpc));

    let sweeper = tokio::spawn(sweep(shared.clone()));
    let connections = config.connections;
    // TCP_NODELAY, keepalive, the connection cap and the timeouts.
    let incoming =
        fxcast_listener::Listener::new("momento-local", listener, connections, config.tls.clone())
            .into_incoming();
    let served = tonic::transport::Server::builder()
        // Closes HTTP/2 peers that stop answering pings.
        .http2_keepalive_interval(Some(connections.http2_keepalive_interval()))
        .http2_keepalive_timeout(Some(connections.http2_keepalive_timeout()))
        // gRPC-web arrives over HTTP/1.1 from browsers.
        .accept_http1(true)
        .layer(cors())
        .layer(tonic_web::GrpcWebLayer::new())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async {
            shutdown.await;
            stopping.cancel();
        })
        .await;
    shared.stopping.cancel();
    let _ = sweeper.await;
    served.map_err(Error::Server)
}

/// Browsers may call from any origin: momento-local is a development server
/// and credentials travel in the `authorization` header, never in cookies.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        // A wildcard would not cover `authorization`; echo what is asked.
        .allow_headers(AllowHeaders::mirror_request())
        .allow_methods(AllowMethods::list([Method::POST, Method::OPTIONS]))
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60))
}

async fn unknown_rpc(uri: http::Uri) -> http::Response<tonic::body::Body> {
    tonic::Status::unimplemented(format!("momento-local does not implement {}", uri.path()))
        .into_http()
}

/// `UNIMPLEMENTED` for an RPC of a service momento-local serves in part.
fn unimplemented_rpc(service: &str, rpc: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("momento-local does not implement {service}/{rpc}"))
}

/// Drops expired cache items and idle topics once a second, so memory
/// follows what is live rather than everything ever written.
async fn sweep(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.stopping.cancelled() => return,
            _ = interval.tick() => {
                shared.caches.sweep(shared.limits.topic_idle_timeout);
                if let Some(ops) = &shared.ops {
                    ops.sweep();
                }
            }
        }
    }
}
