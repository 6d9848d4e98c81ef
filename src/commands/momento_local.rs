//! `fxcast momento-local`: a Momento-wire-compatible server on one port
//! (gRPC and gRPC-web; plaintext, or TLS with `--tls-cert`/`--tls-key`), so
//! the official Momento SDKs' local development settings reach it.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Args;
use fxcast_listener::ListenerConfig;
use fxcast_momento_local::{AcceptedKeys, MomentoLocalConfig, serve};

use super::serve::shutdown_signal;

#[derive(Debug, Args)]
pub(crate) struct MomentoLocalArgs {
    /// Address for gRPC and gRPC-web (127.0.0.1:0 picks a free port; the log
    /// says which). 8080 is where Momento SDKs look for a local server.
    #[arg(long, env = "FXCAST_MOMENTO_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// API key callers must present; repeat or comma-separate for several.
    /// `any` accepts every key, including none (local development). Tokens
    /// minted by GenerateDisposableToken are accepted either way.
    #[arg(
        long = "api-key",
        env = "FXCAST_MOMENTO_API_KEYS",
        value_delimiter = ',',
        default_value = "any",
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Cache that exists from the start; repeat or comma-separate for
    /// several (browser SDKs cannot create caches)
    #[arg(long = "cache", env = "FXCAST_MOMENTO_CACHES", value_delimiter = ',')]
    caches: Vec<String>,
    /// Most connections open at once; further clients wait until one closes
    /// [default: half the open-files limit less 128]
    #[arg(long, env = "FXCAST_MOMENTO_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// A new connection must send its first bytes within this long; also how
    /// long an HTTP/2 ping may go unanswered
    #[arg(long, env = "FXCAST_MOMENTO_HEADER_TIMEOUT", default_value = "10s")]
    header_timeout: humantime::Duration,
    /// A connection that neither reads nor writes for this long is closed
    #[arg(long, env = "FXCAST_MOMENTO_IDLE_TIMEOUT", default_value = "2m")]
    idle_timeout: humantime::Duration,
    /// PEM certificate chain: serve over TLS (with --tls-key), as the hosted
    /// service does; the files are reloaded when they change
    #[arg(long, env = "FXCAST_MOMENTO_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "FXCAST_MOMENTO_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Longest life of a minted disposable token (hosted Momento: 1 hour)
    #[arg(long, env = "FXCAST_MOMENTO_MAX_TOKEN_LIFE", default_value = "1h")]
    max_token_life: humantime::Duration,
    /// Subscriptions one client connection may hold (hosted Momento: 100);
    /// the next is refused with RESOURCE_EXHAUSTED
    #[arg(
        long,
        env = "FXCAST_MOMENTO_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        default_value_t = 100
    )]
    max_subscriptions_per_connection: usize,
    /// Operations per second each cache allows (publishes, subscribes, item
    /// calls); beyond it RESOURCE_EXHAUSTED, as the hosted service answers
    /// [default: no limit]
    #[arg(long, env = "FXCAST_MOMENTO_MAX_OPS_PER_SECOND")]
    max_ops_per_second: Option<std::num::NonZeroU32>,
}

fn accepted_keys(keys: &[String]) -> anyhow::Result<AcceptedKeys> {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    match keys.as_slice() {
        [] => anyhow::bail!("--api-key needs a key, or `any`"),
        [only] if only == "any" => Ok(AcceptedKeys::Any),
        keys if keys.iter().any(|k| k == "any") => {
            anyhow::bail!("--api-key any cannot be combined with specific keys")
        }
        keys => Ok(AcceptedKeys::Only(keys.to_vec())),
    }
}

pub(crate) async fn run(args: MomentoLocalArgs) -> anyhow::Result<()> {
    let config = MomentoLocalConfig {
        accepted_keys: accepted_keys(&args.api_keys)?,
        caches: args.caches.clone(),
        connections: ListenerConfig {
            max_connections: args
                .max_connections
                .unwrap_or_else(fxcast_listener::default_max_connections),
            header_timeout: args.header_timeout.into(),
            idle_timeout: args.idle_timeout.into(),
        },
        tls: super::http_tls(args.tls_cert.as_deref(), args.tls_key.as_deref())?,
        max_token_lifetime: args.max_token_life.into(),
        max_subscriptions_per_connection: args.max_subscriptions_per_connection,
        max_ops_per_second: args.max_ops_per_second,
        ..MomentoLocalConfig::default()
    };
    config.validate()?;
    let listener = fxcast_listener::bind(args.listen)
        .with_context(|| format!("cannot bind momento-local on {}", args.listen))?;
    let addr = listener.local_addr()?;
    match &config.accepted_keys {
        AcceptedKeys::Any if !addr.ip().is_loopback() => tracing::warn!(
            "momento-local accepts any API key and listens beyond loopback: \
             anyone who can reach it may use it (pass --api-key KEY to restrict)"
        ),
        AcceptedKeys::Any => tracing::info!("momento-local accepts any API key"),
        AcceptedKeys::Only(keys) => {
            tracing::info!(
                keys = keys.len(),
                "momento-local accepts only its configured API keys"
            );
        }
    }
    tracing::info!(
        addr = %addr,
        tls = config.tls.is_some(),
        caches = ?args.caches,
        max_token_life = %args.max_token_life,
        max_subscriptions_per_connection = config.max_subscriptions_per_connection,
        max_ops_per_second = config.max_ops_per_second.map_or(0, std::num::NonZeroU32::get),
        "momento-local listening"
    );
    serve(listener, config, shutdown_signal())
        .await
        .context("momento-local failed")?;
    tracing::info!("momento-local stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> anyhow::Result<AcceptedKeys> {
        accepted_keys(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn api_key_flags() {
        assert_eq!(keys(&["any"]).unwrap(), AcceptedKeys::Any);
        assert_eq!(
            keys(&["k1", " k2 "]).unwrap(),
            AcceptedKeys::Only(vec!["k1".into(), "k2".into()])
        );
        assert!(keys(&["any", "k1"]).is_err());
        assert!(keys(&[" "]).is_err());
    }
}
