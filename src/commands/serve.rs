//! `fxcast serve`: flags, environment and TOML merged into one configuration.
//!
//! Precedence: command-line flag, then `FXCAST_<NAME>` environment variable,
//! then the `--config` file, then the built-in default.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Args;
use fxcast_gateway::GatewayConfig;
use fxcast_services::{
    Config, FeedKind,
    feed::{
        BITFLYER_DEFAULT_PRODUCTS, BITFLYER_ENDPOINT, BitflyerConfig, ReplayConfig, ReplaySpeed,
        SimulatorConfig,
    },
    orders::{JournalSync, LpConfig, PricePolicy, SimulatedLpConfig},
    pricing::Markup,
    symbols::SymbolOverride,
};
use fxcast_transport::{
    MemoryTransport, MirroredTransport, Transport,
    momento::{MomentoConfig, MomentoTransport},
};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::split_list;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// gRPC listen address [default: 127.0.0.1:50051]
    #[arg(long, env = "FXCAST_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// HTTP gateway listen address [default: 127.0.0.1:8000]
    #[arg(long, env = "FXCAST_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Pub/sub transport: memory (in-process) or momento (Momento Topics; the API key comes
    /// from MOMENTO_API_KEY) [default: memory]
    #[arg(long, env = "FXCAST_TRANSPORT")]
    transport: Option<String>,
    /// Momento cache holding the topics and the latest rates [default: fxcast]
    #[arg(long, env = "FXCAST_MOMENTO_CACHE")]
    momento_cache: Option<String>,
    /// Momento endpoint URL instead of the one the API key names, e.g. http://127.0.0.1:8080
    /// for fxcast momento-local (http:// is plaintext)
    #[arg(long, env = "FXCAST_MOMENTO_ENDPOINT")]
    momento_endpoint: Option<String>,
    /// With the memory transport: also mirror every rate, paced, to the Momento topics
    /// rates.<SYMBOL>, for browsers and remote consumers
    #[arg(long, env = "FXCAST_MOMENTO_BRIDGE")]
    momento_bridge: bool,
    /// Most publishes per second per Momento topic; faster rates are conflated, the latest
    /// wins; 0 sends every rate [default: 10]
    #[arg(long, env = "FXCAST_MOMENTO_PUBLISH_RATE")]
    momento_publish_rate: Option<u32>,
    /// How long the latest rates stay in the Momento cache [default: 5m]
    #[arg(long, env = "FXCAST_MOMENTO_LATEST_TTL", value_parser = humantime::parse_duration)]
    momento_latest_ttl: Option<Duration>,
    /// Upstream feed: simulated, bitflyer (live bitFlyer Lightning tickers), replay:<FILE>
    /// (a recording from `fxcast record`), or none (rates only via PublishRate) [default: simulated]
    #[arg(long, env = "FXCAST_FEED")]
    feed: Option<String>,
    /// bitFlyer realtime WebSocket endpoint [default: wss://ws.lightstream.bitflyer.com/json-rpc]
    #[arg(long, env = "FXCAST_BITFLYER_ENDPOINT")]
    bitflyer_endpoint: Option<String>,
    /// A symbol whose feed has not ticked for this long is stale: its rate is re-published
    /// with stale=true, /readyz fails and orders on it are rejected [default: 5s]
    #[arg(long, env = "FXCAST_STALE_AFTER", value_parser = humantime::parse_duration)]
    stale_after: Option<Duration>,
    /// Replay pace: 1 (real time), a factor such as 10 or 0.5, or max [default: 1]
    #[arg(long, env = "FXCAST_REPLAY_SPEED")]
    replay_speed: Option<String>,
    /// Replay the file over and over
    #[arg(long = "loop", env = "FXCAST_LOOP")]
    replay_loop: bool,
    /// Comma-separated symbols [default: USD_JPY,EUR_USD,GBP_USD,EUR_JPY,AUD_USD,BTC_JPY;
    /// with bitflyer or replay: BTC_JPY,ETH_JPY,FX_BTC_JPY]
    #[arg(long, env = "FXCAST_SYMBOLS")]
    symbols: Option<String>,
    /// Directory for durable state [default: ./fxcast-data]
    #[arg(long, env = "FXCAST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (flags and environment override it)
    #[arg(long, env = "FXCAST_CONFIG")]
    config: Option<PathBuf>,
    /// Seed of the simulated feed [default: 42]
    #[arg(long, env = "FXCAST_SEED")]
    seed: Option<u64>,
    /// Time between simulated ticks, e.g. 250ms [default: 250ms]
    #[arg(long, env = "FXCAST_TICK_INTERVAL", value_parser = humantime::parse_duration)]
    tick_interval: Option<Duration>,
    /// Markup per side for every symbol: a price (0.002) or basis points (1.5bp) [default: 0]
    #[arg(long, env = "FXCAST_MARKUP")]
    markup: Option<String>,
    /// Issue anonymous browser tokens even when the HTTP listener is not on loopback
    #[arg(long, env = "FXCAST_ALLOW_ANONYMOUS_TOKENS")]
    allow_anonymous_tokens: bool,
    /// Default token lifetime [default: 15m]
    #[arg(long, env = "FXCAST_TOKEN_TTL", value_parser = humantime::parse_duration)]
    token_ttl: Option<Duration>,
    /// Longest token lifetime a request may ask for [default: 24h]
    #[arg(long, env = "FXCAST_MAX_TOKEN_TTL", value_parser = humantime::parse_duration)]
    max_token_ttl: Option<Duration>,
    /// Signing keys file, shared by every server that must accept the same
    /// tokens (created on first start if missing) [default: <data-dir>/signing-keys.json]
    #[arg(long, env = "FXCAST_SIGNING_KEYS")]
    signing_keys: Option<PathBuf>,
    /// Origins allowed to call the HTTP API from browsers (comma-separated; default: same origin only)
    #[arg(long, env = "FXCAST_CORS_ORIGINS")]
    cors_origins: Option<String>,
    /// Order price check: symmetric or adverse-only [default: symmetric]
    #[arg(long, env = "FXCAST_PRICE_POLICY")]
    price_policy: Option<String>,
    /// Orders are rejected as STALE_PRICE when the latest rate is older than this
    /// (per symbol: max_price_age in [symbol.X]) [default: 2s]
    #[arg(long, env = "FXCAST_MAX_PRICE_AGE", value_parser = humantime::parse_duration)]
    max_price_age: Option<Duration>,
    /// Answer time of the simulated liquidity provider, e.g. 2ms [default: 0s]
    #[arg(long, env = "FXCAST_LP_LATENCY", value_parser = humantime::parse_duration)]
    lp_latency: Option<Duration>,
    /// Fraction of orders the simulated liquidity provider declines, 0 to 1 [default: 0]
    #[arg(long, env = "FXCAST_LP_REJECT_RATE")]
    lp_reject_rate: Option<String>,
    /// Seed of the simulated liquidity provider's decisions [default: 42]
    #[arg(long, env = "FXCAST_LP_SEED")]
    lp_seed: Option<u64>,
    /// Order journal durability: full (every commit synced) or normal (survives
    /// kill -9, not a power loss) [default: full]
    #[arg(long, env = "FXCAST_JOURNAL_SYNC")]
    journal_sync: Option<String>,
}

/// The `--config` file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    transport: Option<String>,
    momento_cache: Option<String>,
    momento_endpoint: Option<String>,
    momento_bridge: Option<bool>,
    momento_publish_rate: Option<u32>,
    #[serde(default, with = "humantime_option")]
    momento_latest_ttl: Option<Duration>,
    feed: Option<String>,
    bitflyer_endpoint: Option<String>,
    #[serde(default, with = "humantime_option")]
    stale_after: Option<Duration>,
    replay_speed: Option<String>,
    #[serde(rename = "loop")]
    replay_loop: Option<bool>,
    symbols: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    seed: Option<u64>,
    #[serde(default, with = "humantime_option")]
    tick_interval: Option<Duration>,
    markup: Option<String>,
    allow_anonymous_tokens: Option<bool>,
    #[serde(default, with = "humantime_option")]
    token_ttl: Option<Duration>,
    #[serde(default, with = "humantime_option")]
    max_token_ttl: Option<Duration>,
    signing_keys: Option<PathBuf>,
    cors_origins: Option<Vec<String>>,
    price_policy: Option<String>,
    #[serde(default, with = "humantime_option")]
    max_price_age: Option<Duration>,
    #[serde(default, with = "humantime_option")]
    lp_latency: Option<Duration>,
    lp_reject_rate: Option<String>,
    lp_seed: Option<u64>,
    journal_sync: Option<String>,
    /// Per-symbol conventions: `[symbol.USD_JPY] markup = "0.003"`.
    #[serde(default)]
    symbol: BTreeMap<String, SymbolOverride>,
}

mod humantime_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                humantime::parse_duration(&s).map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
            })
            .transpose()
    }
}

/// Which transport `serve` runs on.
#[derive(Debug)]
enum TransportChoice {
    /// In-process only.
    Memory,
    /// Momento Topics for every rate and order event.
    Momento(MomentoConfig),
    /// In-process, with every rate mirrored to Momento.
    Bridge(MomentoConfig),
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub(crate) struct Resolved {
    grpc_listen: SocketAddr,
    http_listen: SocketAddr,
    data_dir: PathBuf,
    transport: TransportChoice,
    core: Config,
    gateway: GatewayConfig,
}

/// The Momento settings from flags, environment and file. The API key comes
/// from `MOMENTO_API_KEY` only (flags show up in `ps`), a v2 key's endpoint
/// from `MOMENTO_ENDPOINT`.
fn momento_config(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<MomentoConfig> {
    let mut config = MomentoConfig {
        endpoint: args
            .momento_endpoint
            .clone()
            .or_else(|| file.momento_endpoint.clone()),
        base_endpoint: std::env::var("MOMENTO_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty()),
        ..MomentoConfig::default()
    };
    if let Some(cache) = args
        .momento_cache
        .clone()
        .or_else(|| file.momento_cache.clone())
    {
        config.cache = cache;
    }
    config.api_key = match std::env::var("MOMENTO_API_KEY") {
        Ok(key) if !key.is_empty() => key,
        // Plaintext is for a local Momento-compatible server, which takes
        // any key by default.
        _ if config
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://")) =>
        {
            tracing::info!(
                "MOMENTO_API_KEY is not set; using an empty key for the plaintext endpoint"
            );
            String::new()
        }
        _ => bail!(
            "Momento needs an API key: set MOMENTO_API_KEY (from the Momento console; for \
             fxcast momento-local any value works, with --momento-endpoint http://HOST:PORT)"
        ),
    };
    let rate = args
        .momento_publish_rate
        .or(file.momento_publish_rate)
        .unwrap_or(10);
    config.max_publish_rate = std::num::NonZeroU32::new(rate);
    if let Some(ttl) = args.momento_latest_ttl.or(file.momento_latest_ttl) {
        if ttl < Duration::from_secs(1) {
            bail!("--momento-latest-ttl must be at least 1s");
        }
        config.retain_ttl = ttl;
    }
    Ok(config)
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn resolve(args: ServeArgs) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };
    let mut core = Config::default();
    let bridge = args.momento_bridge || file.momento_bridge.unwrap_or(false);
    let transport = match args
        .transport
        .as_deref()
        .or(file.transport.as_deref())
        .unwrap_or("memory")
    {
        "memory" if bridge => TransportChoice::Bridge(momento_config(&args, &file)?),
        "memory" => TransportChoice::Memory,
        "momento" if bridge => bail!(
            "--momento-bridge mirrors the memory transport to Momento; with --transport momento \
             every rate goes through Momento already"
        ),
        "momento" => TransportChoice::Momento(momento_config(&args, &file)?),
        other => bail!("unknown --transport {other:?}; expected memory or momento"),
    };
    let feed = args.feed.or(file.feed);
    core.feed = match feed.as_deref().unwrap_or("simulated") {
        "simulated" => FeedKind::Simulated,
        "none" => FeedKind::None,
        "bitflyer" => FeedKind::Bitflyer(BitflyerConfig {
            endpoint: args
                .bitflyer_endpoint
                .or(file.bitflyer_endpoint)
                .unwrap_or_else(|| BITFLYER_ENDPOINT.to_owned()),
            ..BitflyerConfig::default()
        }),
        other => match other.strip_prefix("replay:") {
            Some("") => bail!("--feed replay:<FILE> needs a file, e.g. replay:session.jsonl"),
            Some(path) => FeedKind::Replay(ReplayConfig {
                path: PathBuf::from(path),
                speed: args
                    .replay_speed
                    .or(file.replay_speed)
                    .map(|s| s.parse::<ReplaySpeed>())
                    .transpose()
                    .context("--replay-speed")?
                    .unwrap_or_default(),
                looped: args.replay_loop || file.replay_loop.unwrap_or(false),
            }),
            None => bail!(
                "unknown --feed {other:?}; expected simulated, bitflyer, replay:<FILE> or none"
            ),
        },
    };
    if let Some(symbols) = args.symbols.map(|s| split_list(&s)).or(file.symbols) {
        core.symbols = symbols;
    } else if matches!(core.feed, FeedKind::Bitflyer(_) | FeedKind::Replay(_)) {
        // bitFlyer has no FX pairs: its product codes are the symbols.
        core.symbols = BITFLYER_DEFAULT_PRODUCTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }
    if let Some(stale_after) = args.stale_after.or(file.stale_after) {
        if stale_after.is_zero() {
            bail!("--stale-after must be positive");
        }
        core.stale_after = stale_after;
    }
    if let Some(markup) = args.markup.or(file.markup) {
        core.markup = markup.parse::<Markup>().context("--markup")?;
    }
    core.symbol_overrides = file.symbol;
    core.simulator = SimulatorConfig {
        seed: args.seed.or(file.seed).unwrap_or(42),
        tick_interval: args
            .tick_interval
            .or(file.tick_interval)
            .unwrap_or(Duration::from_millis(250)),
        max_quotes: None,
    };
    if core.simulator.tick_interval.is_zero() {
        bail!("--tick-interval must be positive");
    }
    if core.feed == FeedKind::Simulated && core.simulator.tick_interval >= core.stale_after {
        bail!(
            "--tick-interval {} must be shorter than --stale-after {}, or every symbol goes stale between ticks",
            humantime::format_duration(core.simulator.tick_interval),
            humantime::format_duration(core.stale_after)
        );
    }
    core.data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./fxcast-data"));
    let http_listen = args
        .http_listen
        .or(file.http_listen)
        .unwrap_or(([127, 0, 0, 1], 8000).into());
    // The secret comes from the environment only: flags show up in `ps`.
    core.auth.api_key = std::env::var("FXCAST_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    core.auth.anonymous_tokens = http_listen.ip().is_loopback()
        || args.allow_anonymous_tokens
        || file.allow_anonymous_tokens.unwrap_or(false);
    let gateway = GatewayConfig {
        anonymous_tokens: core.auth.anonymous_tokens,
        anonymous_ttl: core.auth.anonymous_ttl,
        anonymous_per_minute: core.auth.anonymous_per_minute,
        cors_origins: args
            .cors_origins
            .map(|s| split_list(&s))
            .or(file.cors_origins)
            .unwrap_or_default(),
        ..GatewayConfig::default()
    };
    if let Some(ttl) = args.token_ttl.or(file.token_ttl) {
        core.auth.default_ttl = ttl;
    }
    if let Some(ttl) = args.max_token_ttl.or(file.max_token_ttl) {
        core.auth.max_ttl = ttl;
    }
    core.auth.signing_keys = args.signing_keys.or(file.signing_keys);
    if core.auth.default_ttl.is_zero() || core.auth.default_ttl > core.auth.max_ttl {
        bail!("--token-ttl must be positive and at most --max-token-ttl");
    }
    if let Some(policy) = args.price_policy.or(file.price_policy) {
        core.orders.policy = policy
            .parse::<PricePolicy>()
            .map_err(anyhow::Error::msg)
            .context("--price-policy")?;
    }
    if let Some(age) = args.max_price_age.or(file.max_price_age) {
        if age.is_zero() {
            bail!("--max-price-age must be positive");
        }
        core.orders.max_price_age = age;
    }
    let mut lp = SimulatedLpConfig::default();
    if let Some(latency) = args.lp_latency.or(file.lp_latency) {
        lp.latency = latency;
    }
    if let Some(rate) = args.lp_reject_rate.or(file.lp_reject_rate) {
        lp.reject_rate = rust_decimal::Decimal::from_str_exact(&rate)
            .ok()
            .filter(|r| !r.is_sign_negative() && *r <= rust_decimal::Decimal::ONE)
            .with_context(|| {
                format!("--lp-reject-rate {rate:?} must be a decimal from 0 to 1, e.g. 0.02")
            })?;
    }
    if let Some(seed) = args.lp_seed.or(file.lp_seed) {
        lp.seed = seed;
    }
    core.orders.lp = LpConfig::Simulated(lp);
    if let Some(sync) = args.journal_sync.or(file.journal_sync) {
        core.orders.journal_sync = sync
            .parse::<JournalSync>()
            .map_err(anyhow::Error::msg)
            .context("--journal-sync")?;
    }
    Ok(Resolved {
        grpc_listen: args
            .grpc_listen
            .or(file.grpc_listen)
            .unwrap_or(([127, 0, 0, 1], 50051).into()),
        http_listen,
        data_dir: core.data_dir.clone(),
        transport,
        core,
        gateway,
    })
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let resolved = resolve(args)?;
    std::fs::create_dir_all(&resolved.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            resolved.data_dir.display()
        )
    })?;
    let grpc = TcpListener::bind(resolved.grpc_listen)
        .await
        .with_context(|| format!("cannot bind gRPC listener on {}", resolved.grpc_listen))?;
    let http = TcpListener::bind(resolved.http_listen)
        .await
        .with_context(|| format!("cannot bind HTTP listener on {}", resolved.http_listen))?;
    tracing::info!(data_dir = %resolved.data_dir.display(), "starting fxcast");
    let momento = |config: MomentoConfig| async move {
        let cache = config.cache.clone();
        MomentoTransport::connect(config)
            .await
            .with_context(|| format!("cannot use Momento (cache {cache:?})"))
    };
    let transport: Arc<dyn Transport> = match resolved.transport {
        TransportChoice::Memory => Arc::new(MemoryTransport::default()),
        TransportChoice::Momento(config) => Arc::new(momento(config).await?),
        TransportChoice::Bridge(config) => Arc::new(MirroredTransport::new(
            Arc::new(MemoryTransport::default()),
            Arc::new(momento(config).await?),
            "rates.",
        )),
    };
    fxcast_gateway::run(
        resolved.core,
        resolved.gateway,
        transport,
        grpc,
        http,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = term => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> ServeArgs {
        Wrapper::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults_follow_the_design() {
        let r = resolve(parse(&[])).unwrap();
        assert_eq!(r.grpc_listen.to_string(), "127.0.0.1:50051");
        assert_eq!(r.http_listen.to_string(), "127.0.0.1:8000");
        assert_eq!(r.data_dir, PathBuf::from("./fxcast-data"));
        assert_eq!(r.core.feed, FeedKind::Simulated);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fxcast.toml");
        std::fs::write(
            &path,
            "symbols = [\"USD_JPY\", \"XAU_USD\"]\nseed = 9\ntick_interval = \"20ms\"\nmarkup = \"1bp\"\n\
             [symbol.XAU_USD]\nprice_scale = 2\nstart_mid = \"2300.00\"\nmarkup = \"0.10\"\n",
        )
        .unwrap();
        let r = resolve(parse(&["--config", path.to_str().unwrap(), "--seed", "5"])).unwrap();
        assert_eq!(r.core.symbols, ["USD_JPY", "XAU_USD"]);
        assert_eq!(r.core.simulator.seed, 5);
        assert_eq!(r.core.simulator.tick_interval, Duration::from_millis(20));
        assert_eq!(r.core.markup.to_string(), "1bp");
        assert_eq!(r.core.symbol_overrides["XAU_USD"].price_scale, Some(2));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let err = resolve(parse(&["--transport", "carrier-pigeon"])).unwrap_err();
        assert!(err.to_string().contains("unknown --transport"), "{err}");
        let err = resolve(parse(&["--markup", "lots"])).unwrap_err();
        assert!(format!("{err:#}").contains("invalid markup"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let err = resolve(parse(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `colour`"),
            "{err:#}"
        );
    }

    #[test]
    fn momento_settings_come_from_flags_and_the_file() {
        let argv = [
            "--transport",
            "momento",
            "--momento-endpoint",
            "http://127.0.0.1:9",
            "--momento-cache",
            "prices",
            "--momento-publish-rate",
            "0",
        ];
        match resolve(parse(&argv)).unwrap().transport {
            TransportChoice::Momento(config) => {
                assert_eq!(config.cache, "prices");
                assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9"));
                assert_eq!(config.max_publish_rate, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            resolve(parse(&[])).unwrap().transport,
            TransportChoice::Memory
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fxcast.toml");
        std::fs::write(
            &path,
            "momento_bridge = true\nmomento_endpoint = \"http://127.0.0.1:9\"\nmomento_latest_ttl = \"30s\"\n",
        )
        .unwrap();
        match resolve(parse(&["--config", path.to_str().unwrap()]))
            .unwrap()
            .transport
        {
            TransportChoice::Bridge(config) => {
                assert_eq!(config.cache, "fxcast");
                assert_eq!(config.retain_ttl, Duration::from_secs(30));
                assert_eq!(config.max_publish_rate, std::num::NonZeroU32::new(10));
            }
            other => panic!("{other:?}"),
        }

        let err = resolve(parse(&["--transport", "momento", "--momento-bridge"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("--momento-bridge mirrors the memory transport"),
            "{err}"
        );
        let err = resolve(parse(&[
            "--transport",
            "momento",
            "--momento-endpoint",
            "http://127.0.0.1:9",
            "--momento-latest-ttl",
            "10ms",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("at least 1s"), "{err}");
        if std::env::var_os("MOMENTO_API_KEY").is_none() {
            let err = resolve(parse(&["--transport", "momento"])).unwrap_err();
            assert!(err.to_string().contains("set MOMENTO_API_KEY"), "{err}");
        }
    }

    #[test]
    fn order_settings_come_from_flags_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fxcast.toml");
        std::fs::write(
            &path,
            "price_policy = \"adverse-only\"\nlp_latency = \"3ms\"\nlp_reject_rate = \"0.25\"\n\
             [symbol.USD_JPY]\ntolerance = \"0.005\"\nmax_price_age = \"1s\"\n",
        )
        .unwrap();
        let argv = [
            "--config",
            path.to_str().unwrap(),
            "--max-price-age",
            "500ms",
            "--journal-sync",
            "normal",
        ];
        let r = resolve(parse(&argv)).unwrap();
        assert_eq!(r.core.orders.policy, PricePolicy::AdverseOnly);
        assert_eq!(r.core.orders.max_price_age, Duration::from_millis(500));
        assert_eq!(r.core.orders.journal_sync, JournalSync::Normal);
        match &r.core.orders.lp {
            LpConfig::Simulated(lp) => {
                assert_eq!(lp.latency, Duration::from_millis(3));
                assert_eq!(lp.reject_rate.to_string(), "0.25");
            }
            other => panic!("unexpected LP {other:?}"),
        }
        assert_eq!(
            r.core.symbol_overrides["USD_JPY"].tolerance.as_deref(),
            Some("0.005")
        );

        let err = resolve(parse(&["--price-policy", "lenient"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown price policy \"lenient\""),
            "{err:#}"
        );
        let err = resolve(parse(&["--lp-reject-rate", "1.5"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("must be a decimal from 0 to 1"),
            "{err:#}"
        );
        let err = resolve(parse(&["--journal-sync", "sometimes"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown journal sync"),
            "{err:#}"
        );
    }

    #[test]
    fn feed_settings_come_from_flags_and_the_file() {
        let r = resolve(parse(&["--feed", "bitflyer"])).unwrap();
        assert_eq!(r.core.feed, FeedKind::Bitflyer(BitflyerConfig::default()));
        assert_eq!(r.core.symbols, ["BTC_JPY", "ETH_JPY", "FX_BTC_JPY"]);
        assert_eq!(r.core.stale_after, Duration::from_secs(5));
        let argv = [
            "--feed",
            "bitflyer",
            "--bitflyer-endpoint",
            "ws://127.0.0.1:9/json-rpc",
            "--symbols",
            "BTC_JPY",
            "--stale-after",
            "750ms",
        ];
        let r = resolve(parse(&argv)).unwrap();
        match &r.core.feed {
            FeedKind::Bitflyer(config) => assert_eq!(config.endpoint, "ws://127.0.0.1:9/json-rpc"),
            other => panic!("{other:?}"),
        }
        assert_eq!(r.core.symbols, ["BTC_JPY"]);
        assert_eq!(r.core.stale_after, Duration::from_millis(750));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fxcast.toml");
        std::fs::write(
            &path,
            "feed = \"replay:session.jsonl\"\nreplay_speed = \"max\"\nloop = true\nstale_after = \"2s\"\n",
        )
        .unwrap();
        let r = resolve(parse(&[
            "--config",
            path.to_str().unwrap(),
            "--replay-speed",
            "10",
        ]))
        .unwrap();
        let expected = ReplayConfig {
            path: "session.jsonl".into(),
            speed: "10".parse().unwrap(),
            looped: true,
        };
        assert_eq!(r.core.feed, FeedKind::Replay(expected));
        assert_eq!(r.core.stale_after, Duration::from_secs(2));

        for (argv, message) in [
            (
                &["--feed", "carrier-pigeon"][..],
                "expected simulated, bitflyer, replay:<FILE> or none",
            ),
            (&["--feed", "replay:"], "needs a file"),
            (
                &["--feed", "replay:x.jsonl", "--replay-speed", "fast"],
                "invalid replay speed",
            ),
            (&["--stale-after", "0s"], "--stale-after must be positive"),
            (
                &["--tick-interval", "5s"],
                "must be shorter than --stale-after",
            ),
        ] {
            let err = resolve(parse(argv)).unwrap_err();
            assert!(format!("{err:#}").contains(message), "{argv:?}: {err:#}");
        }
    }
}
