//! The fxcast HTTP gateway and the all-in-one `serve` assembly.
//!
//! Today it serves `/healthz` and `/readyz` beside the gRPC server; REST,
//! WebSocket, SSE and the browser UI are added here (see the gateway issue).
//!
//! # Layout
//! - [`run`]: starts the rate core, the gRPC server and the HTTP listener
//!   from already-bound listeners, and shuts all of them down together.
//! - [`router`]: the axum routes.

#![forbid(unsafe_code)]

use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use fxcast_services::{Config, RatesCore};
use fxcast_transport::Transport;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors of the gateway assembly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rate core or gRPC server failed.
    #[error(transparent)]
    Services(#[from] fxcast_services::Error),
    /// The HTTP server failed.
    #[error("HTTP server error: {0}")]
    Http(#[source] std::io::Error),
}

/// Runs fxcast all in one: rate core with its feed, gRPC on `grpc`, HTTP on
/// `http`, until `shutdown` completes; then stops streams and drains both
/// servers.
///
/// The caller binds the listeners, so tests can bind `127.0.0.1:0`.
///
/// # Errors
/// When the core cannot start or a server fails.
pub async fn run(
    config: Config,
    transport: Arc<dyn Transport>,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let stop = CancellationToken::new();
    let core = Arc::new(RatesCore::start(config, transport, stop.child_token()).await?);

    let grpc_stop = stop.clone();
    let grpc_core = Arc::clone(&core);
    let grpc_server = tokio::spawn(async move {
        grpc_core
            .serve_grpc(grpc, grpc_stop.cancelled_owned())
            .await
    });
    let http_stop = stop.clone();
    let http_server = tokio::spawn(async move {
        axum::serve(http, router(Arc::clone(&core)))
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .await
            .map_err(Error::Http)
    });

    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        () = stop.cancelled() => {}
    }
    stop.cancel();
    let (grpc_result, http_result) = tokio::join!(grpc_server, http_server);
    grpc_result.map_err(|e| Error::Http(std::io::Error::other(e)))??;
    http_result.map_err(|e| Error::Http(std::io::Error::other(e)))??;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP routes.
pub fn router(core: Arc<RatesCore>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(core)
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(core): State<Arc<RatesCore>>) -> Response {
    let missing: Vec<&str> = core
        .symbols()
        .names()
        .filter(|s| core.latest().get(s).is_none())
        .collect();
    if missing.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let body = json!({"error": {
            "code": "not_ready",
            "message": format!("no rate published yet for {}", missing.join(", ")),
        }});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
