//! The fxcast HTTP gateway: REST, WebSocket, SSE and the browser UI over
//! an upstream fxcast gRPC server.
//!
//! The gateway talks to the services only through their gRPC clients — over
//! loopback inside `fxcast serve` (assembled by `fxcast-app`), or to a remote
//! server with `fxcast gateway --upstream` — so gateways can run on other
//! machines. Clients' own credentials are forwarded, so the services decide
//! what each may do.
//!
//! # Layout
//! - [`serve_gateway`]: the gateway on a listener until stopped; [`upstream_endpoint`]: the channel settings towards the services.
//! - `server`: hyper under the router, on an `fxcast_listener::Listener`.
//! - `rest`: REST handlers; `ws`: the WebSocket; `sse`: Server-Sent Events.
//! - `ticker`: the gateway's single upstream rate stream, serialised once and shared.
//! - `upstream`, `session`: credentials towards the services.
//! - `metrics`: Prometheus; `openapi`: the OpenAPI document; `ui`: the embedded browser UI.

#![forbid(unsafe_code)]

mod error;
pub mod json;
mod metrics;
mod openapi;
pub mod orders;
mod rest;
mod revocations;
mod server;
mod session;
mod sse;
mod ticker;
mod ui;
mod upstream;
mod ws;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, Method, header},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
pub use error::ApiError;
use fxcast_services::auth::AnonymousPolicy;
pub use fxcast_services::stream::LagLimit;
pub use metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{
    compression::CompressionLayer, cors::CorsLayer, timeout::TimeoutLayer, trace::TraceLayer,
};
pub use upstream::{Authed, Bearer, Upstream, upstream_endpoint};
pub use ws::WsLimits;

/// Errors of the gateway and the assembly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream refused the gateway.
    #[error("upstream refused the gateway: {0}")]
    Upstream(#[from] tonic::Status),
    /// The upstream address is not usable.
    #[error("invalid upstream address: {0}")]
    UpstreamAddress(String),
    /// The HTTP server failed.
    #[error("HTTP server error: {0}")]
    Http(#[source] std::io::Error),
}

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Whether `POST /v1/tokens` without credentials issues browser tokens.
    pub anonymous_tokens: bool,
    /// Lifetime of anonymous browser tokens.
    pub anonymous_ttl: Duration,
    /// Anonymous tokens per client address per minute.
    pub anonymous_per_minute: u32,
    /// WebSocket limits.
    pub ws: WsLimits,
    /// Ticks held per symbol for SSE resumption.
    pub history: usize,
    /// Ticks buffered per symbol for the slowest connection before it is conflated.
    pub stream_buffer: usize,
    /// How often a WebSocket or SSE connection may be conflated before it is
    /// closed as a slow consumer.
    pub lag_limit: LagLimit,
    /// Origins allowed by CORS (empty: same origin only).
    pub cors_origins: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Connection cap and header/idle timeouts of the HTTP listener.
    pub connections: fxcast_listener::ListenerConfig,
    /// TLS of the HTTP listener (plaintext when `None`).
    pub tls: Option<fxcast_listener::Tls>,
    /// Momento operations per second the transport plans to spend, by kind,
    /// exported as `fxcast_gateway_momento_planned_ops_per_second`.
    pub momento_ops_plan: Vec<(&'static str, f64)>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            anonymous_tokens: false,
            anonymous_ttl: Duration::from_secs(15 * 60),
            anonymous_per_minute: 30,
            ws: WsLimits::default(),
            history: 1024,
            stream_buffer: 256,
            lag_limit: LagLimit::default(),
            cors_origins: Vec::new(),
            max_body: 16 * 1024,
            connections: fxcast_listener::ListenerConfig::default(),
            tls: None,
            momento_ops_plan: Vec::new(),
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) upstream: Upstream,
    pub(crate) ticker: ticker::Ticker,
    pub(crate) metrics: Metrics,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) anonymous: Arc<AnonymousPolicy>,
    pub(crate) stop: CancellationToken,
    pub(crate) revocations: revocations::Revocations,
}

/// Serves the gateway on `http` against `upstream` until `stop` is cancelled.
/// Connections are capped and timed out by [`GatewayConfig::connections`].
///
/// # Errors
/// When the upstream refuses the gateway's credentials or the server fails.
pub async fn serve_gateway(
    upstream: Upstream,
    config: GatewayConfig,
    http: TcpListener,
    stop: CancellationToken,
) -> Result<(), Error> {
    let metrics = Metrics::default();
    metrics.set_momento_plan(&config.momento_ops_plan);
    let ticker = tokio::select! {
        ticker = start_ticker(&upstream, &config, &metrics, &stop) => ticker?,
        () = stop.cancelled() => return Ok(()),
    };
    let revocations = revocations::Revocations::default();
    tokio::spawn(revocations.clone().follow(upstream.clone(), stop.clone()));
    let state = AppState {
        upstream,
        ticker,
        metrics,
        anonymous: Arc::new(AnonymousPolicy::new(
            config.anonymous_ttl,
            config.anonymous_per_minute,
        )),
        config: Arc::new(config),
        stop: stop.clone(),
        revocations,
    };
    let listener = fxcast_listener::Listener::new(
        "HTTP",
        http,
        state.config.connections,
        state.config.tls.clone(),
    );
    let _ = state.metrics.listener.set(listener.stats());
    let max_body = state.config.max_body;
    server::serve_http(listener, router(state), max_body, stop).await;
    Ok(())
}

/// Waits for the upstream to answer (it may still be starting), then starts
/// the ticker. Credential errors are final.
async fn start_ticker(
    upstream: &Upstream,
    config: &GatewayConfig,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<ticker::Ticker, Error> {
    let mut backoff = fxcast_transport::Backoff::new(fxcast_transport::BackoffPolicy::new(
        Duration::from_millis(50),
        Duration::from_secs(5),
    ));
    loop {
        match ticker::Ticker::start(
            upstream.clone(),
            config.history,
            config.stream_buffer,
            metrics.clone(),
            stop.clone(),
        )
        .await
        {
            Ok(ticker) => return Ok(ticker),
            Err(status)
                if status.code() == tonic::Code::Unavailable && !is_tls_failure(&status) =>
            {
                tracing::warn!(
                    message = status.message(),
                    "upstream not reachable yet; retrying"
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(status) => return Err(Error::Upstream(status)),
        }
    }
}

/// Whether `status` comes from a TLS failure towards the upstream (an
/// untrusted or misnamed certificate, a refused client certificate):
/// waiting does not mend those, so the gateway stops and says why.
fn is_tls_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        // tokio-rustls reports TLS errors as io errors of kind InvalidData.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        source = err.source();
    }
    false
}

async fn record_request(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = metrics::RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/symbols", get(rest::symbols))
        .route("/v1/rates", get(rest::rates))
        .route("/v1/rates/{symbol}", get(rest::rate))
        .route("/v1/tokens", post(rest::issue_token))
        .route("/v1/tokens/momento", post(rest::issue_momento_access))
        .route("/v1/orders", post(orders::place).get(orders::list))
        .route("/v1/orders/{order_id}", get(orders::get))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/", get(ui::index))
        .route("/app.js", get(ui::script))
        .route("/app.css", get(ui::style))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            rest::REQUEST_TIMEOUT,
        ))
        .layer(CompressionLayer::new());
    let streams = Router::new()
        .route("/v1/stream", get(ws::upgrade))
        .route("/v1/rates/stream", get(sse::stream));
    let cors = if state.config.cors_origins.is_empty() {
        CorsLayer::new()
    } else {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
    };
    let metrics = state.metrics.clone();
    api.merge(streams)
        .fallback(rest::not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body))
        .layer(middleware::from_fn_with_state(metrics, record_request))
        .layer(cors)
        // Spans name the path only: WebSocket/SSE URLs and signed URLs carry
        // the token in the query, and secrets never go into logs.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
        }))
        .with_state(state)
}
