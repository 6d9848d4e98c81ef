//! `fxcast gateway --upstream URL`: the HTTP gateway alone, in front of a
//! (possibly remote) fxcast gRPC server.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Args;
use fxcast_gateway::{GatewayConfig, Upstream, serve_gateway, upstream_endpoint};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{api_key, serve::shutdown_signal, split_list};

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// gRPC address of the fxcast services
    #[arg(
        long,
        env = "FXCAST_UPSTREAM",
        default_value = "http://127.0.0.1:50051"
    )]
    upstream: String,
    /// HTTP listen address
    #[arg(long, env = "FXCAST_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    http_listen: SocketAddr,
    /// Where to find the upstream's API key when FXCAST_API_KEY is not set
    #[arg(long, env = "FXCAST_DATA_DIR", default_value = "./fxcast-data")]
    data_dir: PathBuf,
    /// Issue anonymous browser tokens even when not listening on loopback
    #[arg(long, env = "FXCAST_ALLOW_ANONYMOUS_TOKENS")]
    allow_anonymous_tokens: bool,
    /// Origins allowed to call the API from browsers (comma-separated)
    #[arg(long, env = "FXCAST_CORS_ORIGINS")]
    cors_origins: Option<String>,
}

pub(crate) async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let key = api_key(&args.data_dir)?;
    let channel = upstream_endpoint(&args.upstream)
        .context("--upstream")?
        .connect_lazy();
    let http = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("cannot bind HTTP listener on {}", args.http_listen))?;
    let config = GatewayConfig {
        anonymous_tokens: args.http_listen.ip().is_loopback() || args.allow_anonymous_tokens,
        cors_origins: args
            .cors_origins
            .as_deref()
            .map(split_list)
            .unwrap_or_default(),
        ..GatewayConfig::default()
    };
    tracing::info!(http = %http.local_addr()?, upstream = %args.upstream, "fxcast gateway listening");
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_gateway(
        Upstream::new(channel, &key),
        config,
        http,
        stop.clone(),
    ));
    tokio::select! {
        () = shutdown_signal() => stop.cancel(),
        result = server => return Ok(result??),
    }
    Ok(())
}
