//! One module per subcommand.

pub(crate) mod compare_load;
pub(crate) mod gateway;
pub(crate) mod loadtest;
pub(crate) mod momento_local;
pub(crate) mod order;
pub(crate) mod rates_load;
pub(crate) mod record;
pub(crate) mod serve;
pub(crate) mod subscribe;
pub(crate) mod token;

/// Structured logs to stderr; `RUST_LOG` filters (default `info`).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// The TLS of an HTTP listener (ALPN `h2`, `http/1.1`) from a command's
/// `--tls-cert`/`--tls-key`: `None` for plaintext.
pub(crate) fn http_tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> anyhow::Result<Option<fxcast_listener::Tls>> {
    let files = fxcast_listener::TlsFiles::from_flags(
        cert.map(std::path::Path::to_owned),
        key.map(std::path::Path::to_owned),
        None,
    )?;
    Ok(files
        .map(|files| fxcast_listener::Tls::load(files, fxcast_listener::tls::ALPN_HTTP))
        .transpose()?)
}

/// Splits a comma-separated list, trimming blanks.
pub(crate) fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How a client command authenticates.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Credentials {
    /// Bearer token; without it a short-lived one is issued with the admin
    /// API key (FXCAST_API_KEY or <data-dir>/api-key)
    #[arg(long, env = "FXCAST_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Data directory of a local server, to find its API key
    #[arg(long, env = "FXCAST_DATA_DIR", default_value = "./fxcast-data")]
    pub(crate) data_dir: std::path::PathBuf,
}

/// The admin API key: `FXCAST_API_KEY`, else `<data-dir>/api-key`.
pub(crate) fn api_key(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Ok(key) = std::env::var("FXCAST_API_KEY") {
        return Ok(key);
    }
    let path = fxcast_services::auth::api_key_path(data_dir);
    let key = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no credentials: pass --token, set FXCAST_TOKEN or FXCAST_API_KEY, or point --data-dir at the server's data directory (cannot read {})",
            path.display()
        )
    })?;
    Ok(key.trim().to_owned())
}

/// A channel to a server carrying a bearer credential.
pub(crate) type AuthedChannel = fxcast_proto::Authed;

/// Connects to `server` with `credential` (a token or the API key). An
/// `https://` server is verified against the PEM CA file in
/// `FXCAST_CA_CERT` when set, else against the Mozilla roots.
pub(crate) async fn connect(server: &str, credential: &str) -> anyhow::Result<AuthedChannel> {
    use anyhow::Context;
    let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("invalid server address {server:?}"))?;
    let ca = std::env::var_os("FXCAST_CA_CERT").map(std::path::PathBuf::from);
    let channel = fxcast_listener::tls::client_endpoint(endpoint, ca.as_deref())
        .context("FXCAST_CA_CERT")?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let bearer = fxcast_proto::Bearer::token(credential)
        .map_err(|_| anyhow::anyhow!("the token contains characters not allowed in a header"))?;
    Ok(fxcast_proto::authed(channel, bearer))
}

/// The token a client command uses: `--token`/`FXCAST_TOKEN`, or one issued
/// for `scopes` (15 minutes) with the admin API key.
pub(crate) async fn client_token(
    server: &str,
    credentials: &Credentials,
    scopes: &[&str],
) -> anyhow::Result<String> {
    if let Some(token) = &credentials.token {
        return Ok(token.clone());
    }
    let key = api_key(&credentials.data_dir)?;
    let mut tokens = fxcast_proto::v1::token_service_client::TokenServiceClient::new(
        connect(server, &key).await?,
    );
    let request = fxcast_proto::v1::IssueTokenRequest {
        subject: std::env::var("USER")
            .ok()
            .filter(|u| fxcast_services::auth::validate_subject(u).is_ok())
            .unwrap_or_else(|| "cli".into()),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl: None,
    };
    let issued = tokens
        .issue_token(request)
        .await
        .map_err(|s| status_error(&s).context("cannot get a token"))?;
    Ok(issued.into_inner().token)
}

/// A gRPC status as a one-line error: `PermissionDenied: <message>`.
pub(crate) fn status_error(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
