//! The HTTP server under the router: hyper directly, because
//! `axum::serve` exposes neither hyper's HTTP/1 header-read timeout nor its
//! HTTP/2 keepalive. Connections come from an `fxcast_listener::Listener`
//! (cap, fd-exhaustion backoff, idle and header timeouts, TLS). Every
//! request passes `guard` (head and body limits, JSON error bodies) first.

mod guard;

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

/// hyper's own limits on a request head: above `guard`'s, so that those
/// answer (in JSON) first.
const HEAD_BUFFER: usize = 64 * 1024;
const HEAD_FIELDS: usize = 256;

/// Serves `router` on `listener` until `stop` is cancelled, then waits for
/// open connections to finish (streams end on `stop` themselves). Request
/// bodies are at most `max_body` bytes and must arrive within the
/// listener's header timeout.
pub(crate) async fn serve_http(
    listener: Listener,
    router: Router,
    max_body: usize,
    stop: CancellationToken,
) {
    let config = *listener.config();
    let router = guard::guarded(
        router,
        guard::RequestLimits {
            max_body,
            body_timeout: config.header_timeout,
        },
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(HEAD_BUFFER)
        .max_headers(HEAD_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.http2_keepalive_interval())
        .keep_alive_timeout(config.http2_keepalive_timeout())
        .max_header_list_size(HEAD_BUFFER as u32);
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
                .serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service),
                )
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
