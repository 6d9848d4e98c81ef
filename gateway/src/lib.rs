//! The fxcast HTTP gateway, and the all-in-one `serve` assembly.
//!
//! The gateway talks to the services only through their gRPC clients — over
//! loopback inside `fxcast serve`, or to a remote server with `fxcast gateway
//! --upstream` — so gateways can run on other machines. Clients' own
//! credentials are forwarded, so the services decide what each may do.
//!
//! # Layout
//! - [`run`]: rate core + gRPC + gateway in one process; [`serve_gateway`]: the gateway alone.
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
mod session;
mod sse;
mod ticker;
mod ui;
mod upstream;
mod ws;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
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
pub use fxcast_services::stream::LagLimit;
use fxcast_services::{Config, RatesCore, auth::PerAddressLimit};
use fxcast_transport::Transport;
pub use metrics::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{
    compression::CompressionLayer, cors::CorsLayer, timeout::TimeoutLayer, trace::TraceLayer,
};
pub use upstream::{Authed, Bearer, Upstream};
pub use ws::WsLimits;

/// Errors of the gateway and the assembly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rate core or gRPC server failed.
    #[error(transparent)]
    Services(#[from] fxcast_services::Error),
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
    pub(crate) anonymous_limit: Arc<PerAddressLimit>,
    pub(crate) stop: CancellationToken,
    pub(crate) revocations: revocations::Revocations,
}

/// Runs fxcast all in one: rate core with its feed, gRPC on `grpc`, and the
/// gateway on `http` talking to that gRPC server over loopback, until
/// `shutdown` completes; then closes streams and drains both servers.
///
/// # Errors
/// When the core cannot start or a server fails.
pub async fn run(
    config: Config,
    gateway: GatewayConfig,
    transport: Arc<dyn Transport>,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let stop = CancellationToken::new();
    let core = Arc::new(RatesCore::start(config, transport, stop.child_token()).await?);
    let mut grpc_addr = grpc.local_addr().map_err(Error::Http)?;
    // Logged once the core is up (keys and API key exist), so whoever reads
    // this line can connect and authenticate at once.
    tracing::info!(grpc = %grpc_addr, http = %http.local_addr().map_err(Error::Http)?, "fxcast listening");
    if grpc_addr.ip().is_unspecified() {
        grpc_addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    let grpc_stop = stop.clone();
    let grpc_core = Arc::clone(&core);
    let grpc_server = tokio::spawn(async move {
        grpc_core
            .serve_grpc(grpc, grpc_stop.cancelled_owned())
            .await
    });

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .map_err(|e| Error::UpstreamAddress(e.to_string()))?
        .tcp_nodelay(true)
        // Long-lived streams (ticks, revocations) notice a dead upstream
        // connection within half a minute even when nothing is sent.
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy();
    let upstream = Upstream::new(channel, core.authority().api_key());
    let gateway_stop = stop.clone();
    let gateway_server =
        tokio::spawn(async move { serve_gateway(upstream, gateway, http, gateway_stop).await });

    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        () = stop.cancelled() => {}
    }
    stop.cancel();
    let (grpc_result, http_result) = tokio::join!(grpc_server, gateway_server);
    // Where every symbol's sequence continues next time: a clean restart
    // leaves no gap.
    if let Err(err) = core.publisher().checkpoint().await {
        tracing::warn!(error = %err, "could not record the sequences; the next run skips ahead");
    }
    grpc_result.map_err(|e| Error::Http(std::io::Error::other(e)))??;
    http_result.map_err(|e| Error::Http(std::io::Error::other(e)))??;
    tracing::info!("stopped");
    Ok(())
}

/// Serves the gateway on `http` against `upstream` until `stop` is cancelled.
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
        anonymous_limit: Arc::new(PerAddressLimit::new(config.anonymous_per_minute)),
        config: Arc::new(config),
        stop: stop.clone(),
        revocations,
    };
    axum::serve(
        http,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
    .map_err(Error::Http)
}

/// Waits for the upstream to answer (it may still be starting), then starts
/// the ticker. Credential errors are final.
async fn start_ticker(
    upstream: &Upstream,
    config: &GatewayConfig,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<ticker::Ticker, Error> {
    let mut backoff = Duration::from_millis(50);
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
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tracing::warn!(
                    message = status.message(),
                    "upstream not reachable yet; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(status) => return Err(Error::Upstream(status)),
        }
    }
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
