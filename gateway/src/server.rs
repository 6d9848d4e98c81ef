//! The HTTP server under the router: hyper directly, because
//! `axum::serve` exposes neither hyper's HTTP/1 header-read timeout nor its
//! HTTP/2 keepalive. Connections come from an `fxcast_listener::Listener`
//! (cap, fd-exhaustion backoff, idle and header timeouts, TLS).

use std::{convert::Infallible, net::SocketAddr};

use axum::{Router, extract::ConnectInfo, http::Request};
use fxcast_listener::Listener;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `router` on `listener` until `stop` is cancelled, then waits for
/// open connections to finish (streams end on `stop` themselves).
pub(crate) async fn serve_http(listener: Listener, router: Router, stop: CancellationToken) {
    let config = *listener.config();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.http2_keepalive_interval())
        .keep_alive_timeout(config.http2_keepalive_timeout());
    let builder = std::sync::Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let handshake = tokio::select! {
            handshake = listener.accept_handshake() => handshake,
            () = stop.cancelled() => break,
        };
        let remote = handshake.remote_addr();
        // What `into_make_service_with_connect_info` would insert.
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                request
            })
            .map_err(|never: Infallible| match never {});
        let builder = std::sync::Arc::clone(&builder);
        let watcher = graceful.watcher();
        // The TLS handshake (if any) in the connection's own task.
        tokio::spawn(async move {
            let stream = match handshake.establish().await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(peer = %remote, error = %err, "TLS handshake failed");
                    return;
                }
            };
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
                .into_owned();
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(peer = %remote, error = %err, "HTTP connection ended");
            }
        });
    }
    // Stop accepting at once: new clients are refused, not left hanging.
    drop(listener);
    graceful.shutdown().await;
}
