//! `fxcast gateway --upstream URL`: the HTTP gateway alone, in front of a
//! (possibly remote) fxcast gRPC server.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Args;
use fxcast_gateway::{GatewayConfig, Upstream, serve_gateway, upstream_endpoint};
use tokio_util::sync::CancellationToken;

use super::{api_key, serve::shutdown_signal, split_list};

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// gRPC address of the fxcast services; `https://` for TLS
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
    /// PEM CA certificate(s) that sign an `https://` upstream's certificate
    /// [default: the Mozilla root certificates]
    #[arg(long, env = "FXCAST_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// PEM client certificate for an upstream that requires one
    /// (`serve --tls-client-ca`), with --upstream-key
    #[arg(long, env = "FXCAST_UPSTREAM_CERT", requires = "upstream_key")]
    upstream_cert: Option<PathBuf>,
    /// PEM private key of --upstream-cert
    #[arg(long, env = "FXCAST_UPSTREAM_KEY", requires = "upstream_cert")]
    upstream_key: Option<PathBuf>,
    /// PEM certificate chain: serve HTTP over TLS (with --tls-key); the files
    /// are reloaded when they change
    #[arg(long, env = "FXCAST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "FXCAST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The channel towards the services: TLS for `https://`, with the CA and
/// client certificate of the flags.
fn upstream(args: &GatewayArgs) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = upstream_endpoint(&args.upstream).context("--upstream")?;
    let tls = endpoint.uri().scheme_str() == Some("https");
    if !tls && (args.upstream_ca.is_some() || args.upstream_cert.is_some()) {
        anyhow::bail!("--upstream-ca and --upstream-cert need an https:// --upstream");
    }
    if !tls && !endpoint.uri().host().is_some_and(is_loopback_host) {
        tracing::warn!(
            upstream = %args.upstream,
            "the upstream is plaintext beyond loopback: the API key and tokens cross the network in the clear (use https://)"
        );
    }
    let endpoint = if tls {
        let identity = args
            .upstream_cert
            .as_deref()
            .zip(args.upstream_key.as_deref());
        let config = fxcast_listener::tls::client_config(args.upstream_ca.as_deref(), identity)
            .context("upstream TLS")?;
        endpoint.tls_config(config).context("upstream TLS")?
    } else {
        endpoint
    };
    Ok(endpoint.connect_lazy())
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let key = api_key(&args.data_dir)?;
    let channel = upstream(&args)?;
    let http = fxcast_listener::bind(args.http_listen)
        .with_context(|| format!("cannot bind HTTP listener on {}", args.http_listen))?;
    let config = GatewayConfig {
        anonymous_tokens: args.http_listen.ip().is_loopback() || args.allow_anonymous_tokens,
        cors_origins: args
            .cors_origins
            .as_deref()
            .map(split_list)
            .unwrap_or_default(),
        tls: super::http_tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?,
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
