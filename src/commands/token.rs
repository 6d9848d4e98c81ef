//! `fxcast token`: issue, revoke and mint signed URLs; rotate the signing key.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::Args;
use fxcast_proto::v1::{
    IssueTokenRequest, RevokeTokenRequest, token_service_client::TokenServiceClient,
};
use fxcast_services::auth::{AuthConfig, Scope, Scopes, SymbolSet, issue_offline, keys::KeyFile};

use super::{api_key, connect, split_list, status_error};

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// Whom the token is for
    #[arg(long, default_value = "cli")]
    subject: String,
    /// A scope, repeatable: rates:subscribe=USD_JPY,EUR_USD | rates:subscribe=* | orders:place | orders:read | rates:publish | tokens:issue
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Lifetime, e.g. 10m (default 15m, at most 24h)
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// gRPC address of the fxcast server
    #[arg(long, env = "FXCAST_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The server's data directory (for the API key, and for --url / --rotate-key)
    #[arg(long, env = "FXCAST_DATA_DIR", default_value = "./fxcast-data")]
    data_dir: PathBuf,
    /// Mint offline, with the signing key, a subscribe-only URL for this stream
    /// endpoint (e.g. http://127.0.0.1:8000/v1/rates/stream); needs --symbols
    #[arg(long, conflicts_with_all = ["revoke", "rotate_key", "scopes"])]
    url: Option<String>,
    /// Symbols the signed URL may stream (comma-separated, or *)
    #[arg(long, requires = "url")]
    symbols: Option<String>,
    /// Revoke a token id instead of issuing
    #[arg(long, conflicts_with = "rotate_key")]
    revoke: Option<String>,
    /// Add a new signing key (offline); tokens signed by older keys keep working until they expire
    #[arg(long)]
    rotate_key: bool,
    /// The servers' signing keys file, for --url / --rotate-key [default: <data-dir>/signing-keys.json]
    #[arg(long, env = "FXCAST_SIGNING_KEYS")]
    signing_keys: Option<PathBuf>,
}

pub(crate) async fn run(args: TokenArgs) -> anyhow::Result<()> {
    if args.rotate_key {
        return rotate(&args);
    }
    if let Some(url) = &args.url {
        return signed_url(&args, url);
    }
    let key = api_key(&args.data_dir)?;
    let mut client = TokenServiceClient::new(connect(&args.server, &key).await?);
    if let Some(token_id) = &args.revoke {
        client
            .revoke_token(RevokeTokenRequest {
                token_id: token_id.clone(),
            })
            .await
            .map_err(|s| status_error(&s))?;
        eprintln!("revoked {token_id}");
        return Ok(());
    }
    if args.scopes.is_empty() {
        bail!("give at least one --scope (e.g. --scope rates:subscribe=USD_JPY)");
    }
    let request = IssueTokenRequest {
        subject: args.subject.clone(),
        scopes: args.scopes.clone(),
        ttl: args.ttl.map(prost_types_duration),
    };
    let issued = client
        .issue_token(request)
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    let expires = issued.expires_at.map(|t| t.to_string()).unwrap_or_default();
    eprintln!(
        "token {} for {} ({}) expires {expires}",
        issued.token_id,
        issued.subject,
        issued.scopes.join(" ")
    );
    println!("{}", issued.token);
    Ok(())
}

fn prost_types_duration(d: Duration) -> fxcast_proto::Duration {
    fxcast_proto::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn keys_path(args: &TokenArgs) -> PathBuf {
    AuthConfig {
        signing_keys: args.signing_keys.clone(),
        ..AuthConfig::default()
    }
    .signing_keys_path(&args.data_dir)
}

fn signed_url(args: &TokenArgs, url: &str) -> anyhow::Result<()> {
    let symbols = args
        .symbols
        .as_deref()
        .context("--url needs --symbols (comma-separated, or *)")?;
    let set = if symbols.trim() == "*" {
        SymbolSet::All
    } else {
        let list = split_list(symbols);
        if list.is_empty() {
            bail!("--symbols is empty");
        }
        SymbolSet::Only(list.into_iter().collect())
    };
    let scopes = Scopes(vec![Scope::RatesSubscribe(set.clone())]);
    // The scope string validates symbol names.
    let scopes: Scopes = scopes.to_string().parse().context("--symbols")?;
    let issued = issue_offline(
        &keys_path(args),
        &AuthConfig::default(),
        &args.subject,
        scopes,
        args.ttl,
    )
    .context("cannot sign the URL (is --data-dir the server's data directory?)")?;
    let mut query = Vec::new();
    if let SymbolSet::Only(list) = &set {
        query.push(format!(
            "symbols={}",
            list.iter().cloned().collect::<Vec<_>>().join(",")
        ));
    }
    query.push(format!("token={}", issued.token));
    let separator = if url.contains('?') { '&' } else { '?' };
    eprintln!(
        "signed URL for {} (token {}) valid until {:?}",
        args.subject, issued.token_id, issued.expires_at
    );
    println!("{url}{separator}{}", query.join("&"));
    Ok(())
}

fn rotate(args: &TokenArgs) -> anyhow::Result<()> {
    let path = keys_path(args);
    let mut file = KeyFile::load(&path)
        .with_context(|| format!("cannot rotate: no key file at {}", path.display()))?;
    let kid = file.rotate(std::time::SystemTime::now(), AuthConfig::default().max_ttl);
    file.save(&path)?;
    eprintln!(
        "new signing key {kid} in {}; servers verify it at once and sign with it after a restart",
        path.display()
    );
    Ok(())
}
