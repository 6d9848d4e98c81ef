//! The typed configuration of a running fxcast: each crate's own `Config`,
//! built from [`Settings`] with the defaults and the checks that span
//! several settings.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, sync::Arc, time::Duration};

use fxcast_fix::{FixSession, SessionConfig, SymbolMap};
use fxcast_gateway::GatewayConfig;
use fxcast_services::{
    FeedKind,
    feed::{
        BITFLYER_DEFAULT_PRODUCTS, BitflyerConfig, FixFeedConfig, ReplayConfig, SimulatorConfig,
    },
    orders::{FixLpConfig, LpConfig, OrdersUpstream, SimulatedLpConfig},
};
use fxcast_transport::{
    Transport,
    momento::{MomentoBoard, MomentoConfig},
    nats::{NatsConfig, NatsCredentials},
    redis::RedisConfig,
};

use crate::{
    Error,
    settings::{FeedName, LpName, Secret, Settings, TransportKind},
};

/// Where secrets come from: the process environment in `fxcast serve`, a
/// map in tests. Secrets are never flags (flags show up in `ps`).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as a [`Lookup`], empty values as unset.
pub fn environment(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Which transport the application runs on.
#[derive(Clone)]
pub enum TransportConfig {
    /// In-process only.
    Memory,
    /// Momento Topics for every rate and order event.
    Momento(MomentoConfig),
    /// In-process, with every rate mirrored to Momento (`--momento-bridge`).
    Bridge(MomentoConfig),
    /// NATS JetStream for every rate, order event and retained payload.
    Nats(NatsConfig),
    /// Redis pub/sub and streams for every rate and order event, keys for
    /// retained payloads.
    Redis(RedisConfig),
    /// A transport built by the caller (tests sharing one between servers).
    Given(Arc<dyn Transport>),
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Momento(c) => f.debug_tuple("Momento").field(c).finish(),
            Self::Bridge(c) => f.debug_tuple("Bridge").field(c).finish(),
            Self::Nats(c) => f.debug_tuple("Nats").field(c).finish(),
            Self::Redis(c) => f.debug_tuple("Redis").field(c).finish(),
            Self::Given(t) => write!(f, "Given({})", t.name()),
        }
    }
}

/// Everything a running fxcast needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address (`127.0.0.1:0` picks a free port).
    pub grpc_listen: SocketAddr,
    /// HTTP listen address of the gateway.
    pub http_listen: SocketAddr,
    /// The pub/sub transport.
    pub transport: TransportConfig,
    /// The rate core: symbols, feed, auth, orders, data directory.
    pub core: fxcast_services::Config,
    /// The HTTP gateway.
    pub gateway: GatewayConfig,
}

impl Default for Config {
    /// The design's defaults: loopback ports 50051 and 8000, memory
    /// transport, simulated feed.
    fn default() -> Self {
        Self {
            grpc_listen: ([127, 0, 0, 1], 50051).into(),
            http_listen: ([127, 0, 0, 1], 8000).into(),
            transport: TransportConfig::Memory,
            core: fxcast_services::Config::default(),
            gateway: GatewayConfig::default(),
        }
    }
}

impl Config {
    /// The configuration `settings` describe, with secrets from `env`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that is wrong and why.
    pub fn from_settings(settings: Settings, env: Lookup<'_>) -> Result<Self, Error> {
        let mut config = Self {
            transport: transport(&settings, env)?,
            ..Self::default()
        };
        if let Some(addr) = settings.grpc_listen {
            config.grpc_listen = addr;
        }
        if let Some(addr) = settings.http_listen {
            config.http_listen = addr;
        }
        let connections = connections(&settings)?;
        config.core.connections = connections;
        config.gateway.connections = connections;
        (config.core.tls, config.gateway.tls) = tls(&settings)?;
        let fix = fix(&settings)?;
        config.core.feed = feed(&settings, fix.as_ref());
        apply_market(&mut config, &settings)?;
        apply_auth(&mut config, &settings, env)?;
        apply_orders(&mut config.core, &settings, env)?;
        if let (Some(LpName::Fix), Some((session, symbols))) = (settings.lp, &fix) {
            config.core.orders.lp = LpConfig::Fix(FixLpConfig {
                session: session.clone(),
                symbols: symbols.clone(),
                timeout: FIX_ORDER_TIMEOUT,
            });
        }
        apply_board(&mut config, &settings)?;
        if let Some(path) = settings.data_dir {
            config.core.data_dir = path;
        }
        Ok(config)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &PathBuf {
        &self.core.data_dir
    }

    /// The FIX session of `--feed fix` / `--lp fix`, if either uses one.
    pub fn fix_session(&self) -> Option<FixSession> {
        match (&self.core.feed, &self.core.orders.lp) {
            (FeedKind::Fix(feed), _) => Some(feed.session.clone()),
            (_, LpConfig::Fix(lp)) => Some(lp.session.clone()),
            _ => None,
        }
    }
}

fn positive(value: Option<humantime::Duration>, flag: &str) -> Result<Option<Duration>, Error> {
    match value.map(Duration::from) {
        Some(d) if d.is_zero() => Err(Error::Config(format!("{flag} must be positive"))),
        other => Ok(other),
    }
}

/// TLS of the gRPC and the HTTP listener: one certificate, each listener
/// with its own ALPN; client certificates on the gRPC port only.
fn tls(
    settings: &Settings,
) -> Result<(Option<fxcast_listener::Tls>, Option<fxcast_listener::Tls>), Error> {
    use fxcast_listener::{Tls, TlsFiles, tls};
    let unusable = |err: tls::TlsError| Error::Config(format!("TLS: {err}"));
    let Some(grpc) = TlsFiles::from_flags(
        settings.tls_cert.clone(),
        settings.tls_key.clone(),
        settings.tls_client_ca.clone(),
    )
    .map_err(unusable)?
    else {
        return Ok((None, None));
    };
    let http = TlsFiles {
        client_ca: None,
        ..grpc.clone()
    };
    Ok((
        Some(Tls::load(grpc, tls::ALPN_GRPC).map_err(unusable)?),
        Some(Tls::load(http, tls::ALPN_HTTP).map_err(unusable)?),
    ))
}

/// The connection cap and timeouts, the same on both listeners.
fn connections(settings: &Settings) -> Result<fxcast_listener::ListenerConfig, Error> {
    let mut connections = fxcast_listener::ListenerConfig::default();
    if let Some(max) = settings.max_connections {
        if max == 0 {
            return Err(Error::Config("--max-connections must be at least 1".into()));
        }
        connections.max_connections = max;
    }
    if let Some(timeout) = positive(settings.header_timeout, "--header-timeout")? {
        connections.header_timeout = timeout;
    }
    if let Some(timeout) = positive(settings.idle_timeout, "--idle-timeout")? {
        connections.idle_timeout = timeout;
    }
    Ok(connections)
}

/// `--momento-board`: every symbol's rates on one Momento topic.
fn apply_board(config: &mut Config, settings: &Settings) -> Result<(), Error> {
    if !settings.momento_board.unwrap_or(false) {
        return Ok(());
    }
    let (TransportConfig::Momento(momento) | TransportConfig::Bridge(momento)) =
        &mut config.transport
    else {
        return Err(Error::Config(
            "--momento-board needs --transport momento or --momento-bridge".into(),
        ));
    };
    if momento.max_publish_rate.is_none() {
        return Err(Error::Config(
            "--momento-board sends the board at --momento-publish-rate; it cannot be 0".into(),
        ));
    }
    momento.board = Some(MomentoBoard {
        topic: "board.rates".into(),
        topics: config
            .core
            .symbols
            .iter()
            .map(|symbol| fxcast_services::rates_topic(symbol))
            .collect(),
    });
    Ok(())
}

fn transport(settings: &Settings, env: Lookup<'_>) -> Result<TransportConfig, Error> {
    let bridge = settings.momento_bridge.unwrap_or(false);
    Ok(match settings.transport.unwrap_or(TransportKind::Memory) {
        TransportKind::Memory if bridge => TransportConfig::Bridge(momento(settings, env)?),
        TransportKind::Memory => TransportConfig::Memory,
        TransportKind::Momento if bridge => {
            return Err(Error::Config(
                "--momento-bridge mirrors the memory transport to Momento; with --transport \
                     momento every rate goes through Momento already"
                    .into(),
            ));
        }
        TransportKind::Momento => TransportConfig::Momento(momento(settings, env)?),
        TransportKind::Nats if bridge => {
            return Err(Error::Config(
                "--momento-bridge mirrors the memory transport to Momento; it cannot be combined \
                 with --transport nats"
                    .into(),
            ));
        }
        TransportKind::Nats => TransportConfig::Nats(nats(&settings.nats, env)?),
        TransportKind::Redis if bridge => {
            return Err(Error::Config(
                "--momento-bridge mirrors the memory transport to Momento; it cannot be combined \
                 with --transport redis"
                    .into(),
            ));
        }
        TransportKind::Redis => TransportConfig::Redis(redis(&settings.redis, env)),
    })
}

/// The Redis settings: the URL, the password (`FXCAST_REDIS_PASSWORD`, else
/// the URL's), and the CA of a `rediss://` server (`--redis-ca`, else
/// `FXCAST_CA_CERT`).
fn redis(settings: &crate::RedisSettings, env: Lookup<'_>) -> RedisConfig {
    let mut config = RedisConfig::default();
    if let Some(url) = &settings.url {
        config.url.clone_from(url);
    }
    config.password.clone_from(&settings.password);
    config.ca = settings
        .ca
        .clone()
        .or_else(|| env("FXCAST_CA_CERT").map(PathBuf::from));
    config
}

/// The NATS settings: the URL, at most one kind of credentials, and the CA
/// of a `tls://` server (`--nats-ca`, else `FXCAST_CA_CERT`, the CA file
/// fxcast's other TLS clients trust).
fn nats(settings: &crate::NatsSettings, env: Lookup<'_>) -> Result<NatsConfig, Error> {
    let mut config = NatsConfig::default();
    if let Some(url) = &settings.url {
        config.url.clone_from(url);
    }
    let given = [
        settings.user.is_some() || settings.password.is_some(),
        settings.token.is_some(),
        settings.creds.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(Error::Config(
            "NATS takes one kind of credentials: --nats-user with --nats-password, \
             --nats-token, or --nats-creds"
                .into(),
        ));
    }
    config.credentials = match (&settings.user, &settings.password) {
        (Some(user), Some(password)) => NatsCredentials::UserPassword {
            user: user.clone(),
            password: password.clone(),
        },
        (Some(_), None) => {
            return Err(Error::Config(
                "--nats-user needs a password: set FXCAST_NATS_PASSWORD (or --nats-password)"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::Config("--nats-password needs --nats-user".into()));
        }
        (None, None) => match (&settings.token, &settings.creds) {
            (Some(token), _) => NatsCredentials::Token(token.clone()),
            (None, Some(path)) => NatsCredentials::CredsFile(path.clone()),
            (None, None) => NatsCredentials::None,
        },
    };
    config.ca = settings
        .ca
        .clone()
        .or_else(|| env("FXCAST_CA_CERT").map(PathBuf::from));
    Ok(config)
}

/// The Momento settings. The API key comes from `MOMENTO_API_KEY` only, a
/// v2 key's endpoint from `MOMENTO_ENDPOINT`.
fn momento(settings: &Settings, env: Lookup<'_>) -> Result<MomentoConfig, Error> {
    let mut config = MomentoConfig {
        endpoint: settings.momento_endpoint.clone(),
        base_endpoint: env("MOMENTO_ENDPOINT"),
        ..MomentoConfig::default()
    };
    if let Some(cache) = &settings.momento_cache {
        config.cache.clone_from(cache);
    }
    let plaintext = config
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    config.api_key = match env("MOMENTO_API_KEY") {
        Some(key) => key.into(),
        // Plaintext is for a local Momento-compatible server, which takes
        // any key by default.
        None if plaintext => {
            tracing::info!(
                "MOMENTO_API_KEY is not set; using an empty key for the plaintext endpoint"
            );
            Secret::default()
        }
        None => {
            return Err(Error::Config(
                "Momento needs an API key: set MOMENTO_API_KEY (from the Momento console; for \
                 fxcast momento-local any value works, with --momento-endpoint http://HOST:PORT)"
                    .into(),
            ));
        }
    };
    config.max_publish_rate = NonZeroU32::new(settings.momento_publish_rate.unwrap_or(10));
    if let Some(shards) = settings.momento_order_shards {
        config.shards = shards;
    }
    config.max_ops_per_second = settings.momento_max_ops_per_second;
    if let Some(ttl) = settings.momento_latest_ttl.map(Duration::from) {
        if ttl < Duration::from_secs(1) {
            return Err(Error::Config(
                "--momento-latest-ttl must be at least 1s".into(),
            ));
        }
        config.retain_ttl = ttl;
    }
    Ok(config)
}

/// How long `--lp fix` waits for an ExecutionReport before leaving the
/// order PENDING for recovery with OrderStatusRequest.
const FIX_ORDER_TIMEOUT: Duration = Duration::from_secs(5);

/// The one FIX session of the process, when `--feed fix` or `--lp fix`
/// needs it (both share it), with the symbol mapping.
fn fix(settings: &Settings) -> Result<Option<(FixSession, SymbolMap)>, Error> {
    if settings.feed != Some(FeedName::Fix) && settings.lp != Some(LpName::Fix) {
        return Ok(None);
    }
    let fix = &settings.fix;
    let required = |value: &Option<String>, flag: &str| {
        value
            .clone()
            .ok_or_else(|| Error::Config(format!("--feed fix / --lp fix need {flag}")))
    };
    let host = required(&fix.host, "--fix-host")?;
    let port = fix
        .port
        .ok_or_else(|| Error::Config("--feed fix / --lp fix need --fix-port".into()))?;
    let sender = required(&fix.sender_comp_id, "--fix-sender-comp-id")?;
    let target = required(&fix.target_comp_id, "--fix-target-comp-id")?;
    let data_dir = settings
        .data_dir
        .clone()
        .unwrap_or_else(|| fxcast_services::Config::default().data_dir);
    let mut session = SessionConfig::new(&host, port, &sender, &target, data_dir.join("fix"));
    if let Some(heartbeat) = fix.heartbeat {
        session.heartbeat = heartbeat.into();
    }
    session.username.clone_from(&fix.username);
    session.password.clone_from(&fix.password);
    if session.password.is_some() != session.username.is_some() {
        return Err(Error::Config(
            "--fix-username and --fix-password (FXCAST_FIX_PASSWORD) go together".into(),
        ));
    }
    let session = FixSession::new(session).map_err(|e| Error::Config(e.to_string()))?;
    let symbols = SymbolMap::new(fix.symbols.clone()).map_err(Error::Config)?;
    Ok(Some((session, symbols)))
}

fn feed(settings: &Settings, fix: Option<&(FixSession, SymbolMap)>) -> FeedKind {
    match settings.feed.clone().unwrap_or(FeedName::Simulated) {
        FeedName::Simulated => FeedKind::Simulated,
        FeedName::Fix => match fix {
            Some((session, symbols)) => FeedKind::Fix(FixFeedConfig {
                session: session.clone(),
                symbols: symbols.clone(),
            }),
            None => FeedKind::None,
        },
        FeedName::None => FeedKind::None,
        FeedName::Bitflyer => FeedKind::Bitflyer(BitflyerConfig {
            endpoint: settings
                .bitflyer_endpoint
                .clone()
                .unwrap_or_else(|| BitflyerConfig::default().endpoint),
            ..BitflyerConfig::default()
        }),
        FeedName::Replay(path) => FeedKind::Replay(ReplayConfig {
            path,
            speed: settings.replay_speed.unwrap_or_default(),
            looped: settings.replay_loop.unwrap_or(false),
        }),
    }
}

/// Symbols, markup, staleness, the simulator and stream history.
fn apply_market(config: &mut Config, settings: &Settings) -> Result<(), Error> {
    let core = &mut config.core;
    if let Some(symbols) = &settings.symbols {
        core.symbols.clone_from(&symbols.0);
    } else if matches!(core.feed, FeedKind::Bitflyer(_) | FeedKind::Replay(_)) {
        // bitFlyer has no FX pairs: its product codes are the symbols.
        core.symbols = BITFLYER_DEFAULT_PRODUCTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }
    if let Some(stale_after) = positive(settings.stale_after, "--stale-after")? {
        core.stale_after = stale_after;
    }
    if let Some(markup) = &settings.markup {
        core.markup = markup.clone();
    }
    core.symbol_overrides.clone_from(&settings.symbol);
    core.simulator = SimulatorConfig {
        seed: settings.seed.unwrap_or(42),
        tick_interval: positive(settings.tick_interval, "--tick-interval")?
            .unwrap_or(Duration::from_millis(250)),
        max_quotes: None,
    };
    if core.feed == FeedKind::Simulated && core.simulator.tick_interval >= core.stale_after {
        return Err(Error::Config(format!(
            "--tick-interval {} must be shorter than --stale-after {}, or every symbol goes stale between ticks",
            humantime::format_duration(core.simulator.tick_interval),
            humantime::format_duration(core.stale_after)
        )));
    }
    if let Some(history) = settings.stream_history {
        if history == 0 {
            return Err(Error::Config("--stream-history must be positive".into()));
        }
        core.hub.history = history;
        config.gateway.history = history;
    }
    if let Some(origins) = &settings.cors_origins {
        config.gateway.cors_origins.clone_from(&origins.0);
    }
    Ok(())
}

/// Tokens: the API key from the environment, lifetimes, anonymous tokens.
fn apply_auth(config: &mut Config, settings: &Settings, env: Lookup<'_>) -> Result<(), Error> {
    let auth = &mut config.core.auth;
    auth.api_key = env("FXCAST_API_KEY").map(Secret::from);
    auth.anonymous_tokens =
        config.http_listen.ip().is_loopback() || settings.allow_anonymous_tokens.unwrap_or(false);
    if let Some(ttl) = settings.token_ttl {
        auth.default_ttl = ttl.into();
    }
    if let Some(ttl) = settings.max_token_ttl {
        auth.max_ttl = ttl.into();
    }
    auth.signing_keys.clone_from(&settings.signing_keys);
    if auth.default_ttl.is_zero() || auth.default_ttl > auth.max_ttl {
        return Err(Error::Config(
            "--token-ttl must be positive and at most --max-token-ttl".into(),
        ));
    }
    config.gateway.anonymous_tokens = auth.anonymous_tokens;
    config.gateway.anonymous_ttl = auth.anonymous_ttl;
    config.gateway.anonymous_per_minute = auth.anonymous_per_minute;
    Ok(())
}

/// Price checks, the simulated liquidity provider and journal durability.
fn apply_orders(
    core: &mut fxcast_services::Config,
    settings: &Settings,
    env: Lookup<'_>,
) -> Result<(), Error> {
    let orders = &mut core.orders;
    if let Some(policy) = settings.price_policy {
        orders.policy = policy;
    }
    if let Some(age) = positive(settings.max_price_age, "--max-price-age")? {
        orders.max_price_age = age;
    }
    let mut lp = SimulatedLpConfig::default();
    if let Some(latency) = settings.lp_latency {
        lp.latency = latency.into();
    }
    if let Some(rate) = settings.lp_reject_rate {
        lp.reject_rate = rate.0;
    }
    if let Some(seed) = settings.lp_seed {
        lp.seed = seed;
    }
    orders.lp = LpConfig::Simulated(lp);
    if let Some(sync) = settings.journal_sync {
        orders.journal_sync = sync;
    }
    orders.upstream = settings
        .orders_upstream
        .as_ref()
        .map(|url| match url.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() => Ok(OrdersUpstream {
                url: url.clone(),
                ca: env("FXCAST_CA_CERT").map(PathBuf::from),
            }),
            _ => Err(Error::Config(format!(
                "--orders-upstream {url:?} must be an http:// or https:// URL of the order executor's gRPC listener"
            ))),
        })
        .transpose()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use fxcast_services::{
        FeedKind,
        feed::{BitflyerConfig, ReplayConfig},
        orders::{JournalSync, LpConfig, PricePolicy},
    };

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        settings: Settings,
    }

    /// `fxcast serve ARGV` as settings; a clap error is a config error.
    fn parse(argv: &[&str]) -> Result<Settings, Error> {
        Wrapper::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .map(|w| w.settings)
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The configuration, with an empty environment.
    fn resolve(settings: Result<Settings, Error>) -> Result<Config, Error> {
        Config::from_settings(settings?.with_file()?, &|_| None)
    }

    /// `contents` as a config file `fxcast.toml` in a fresh directory
    /// (removed when the returned guard is dropped), and its path.
    fn config_file(contents: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fxcast.toml");
        std::fs::write(&path, contents).unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    }

    /// An environment with only `FXCAST_CA_CERT` set.
    fn ca_env(name: &str) -> Option<String> {
        (name == "FXCAST_CA_CERT").then(|| "/etc/fxcast/ca.pem".to_owned())
    }

    /// Resolving each `argv` fails with an error containing its message.
    fn refused(cases: &[(&[&str], &str)]) {
        for (argv, message) in cases {
            let err = resolve(parse(argv)).unwrap_err();
            assert!(format!("{err:#}").contains(message), "{argv:?}: {err:#}");
        }
    }

    /// The settings of `argv`, resolved; `secret` shows in neither's Debug.
    fn resolve_hiding(argv: &[&str], secret: &str) -> Config {
        let settings = parse(argv).unwrap();
        assert!(!format!("{settings:?}").contains(secret));
        let config = resolve(Ok(settings)).unwrap();
        assert!(!format!("{config:?}").contains(secret));
        config
    }

    /// The settings of the `$kind` transport, which `$config` must use.
    macro_rules! transport_of {
        ($config:expr, $kind:ident) => {
            match $config.transport {
                TransportConfig::$kind(settings) => settings,
                other => panic!("{other:?}"),
            }
        };
    }

    #[test]
    fn defaults_follow_the_design() {
        let r = resolve(parse(&[])).unwrap();
        assert_eq!(r.grpc_listen.to_string(), "127.0.0.1:50051");
        assert_eq!(r.http_listen.to_string(), "127.0.0.1:8000");
        assert_eq!(r.core.data_dir, PathBuf::from("./fxcast-data"));
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
    fn the_board_and_the_momento_budget_come_from_flags() {
        let argv = [
            "--transport",
            "momento",
            "--momento-endpoint",
            "http://127.0.0.1:9",
            "--symbols",
            "USD_JPY,EUR_USD",
            "--momento-board",
            "--momento-order-shards",
            "4",
            "--momento-max-ops-per-second",
            "90",
        ];
        let config = transport_of!(resolve(parse(&argv)).unwrap(), Momento);
        let board = config.board.expect("a board");
        assert_eq!(board.topic, "board.rates");
        assert_eq!(board.topics, ["rates.USD_JPY", "rates.EUR_USD"]);
        assert_eq!(config.shards, 4);
        assert_eq!(config.max_ops_per_second, std::num::NonZeroU32::new(90));
        refused(&[
            (&["--momento-board"], "needs --transport momento"),
            (
                &[&argv[..], &["--momento-publish-rate", "0"]].concat(),
                "cannot be 0",
            ),
        ]);
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
        let config = transport_of!(resolve(parse(&argv)).unwrap(), Momento);
        assert_eq!(config.cache, "prices");
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(config.max_publish_rate, None);
        assert!(matches!(
            resolve(parse(&[])).unwrap().transport,
            TransportConfig::Memory
        ));

        let (_dir, file) = config_file(
            "momento_bridge = true\nmomento_endpoint = \"http://127.0.0.1:9\"\nmomento_latest_ttl = \"30s\"\n",
        );
        match resolve(parse(&["--config", &file])).unwrap().transport {
            TransportConfig::Bridge(config) => {
                assert_eq!(config.cache, "fxcast");
                assert_eq!(config.retain_ttl, Duration::from_secs(30));
                assert_eq!(config.max_publish_rate, std::num::NonZeroU32::new(10));
            }
            other => panic!("{other:?}"),
        }

        refused(&[
            (
                &["--transport", "momento", "--momento-bridge"],
                "--momento-bridge mirrors the memory transport",
            ),
            (
                &[
                    "--transport",
                    "momento",
                    "--momento-endpoint",
                    "http://127.0.0.1:9",
                    "--momento-latest-ttl",
                    "10ms",
                ],
                "at least 1s",
            ),
            (&["--transport", "momento"], "set MOMENTO_API_KEY"),
        ]);
    }

    #[test]
    fn nats_settings_come_from_flags_the_file_and_the_environment() {
        let argv = [
            "--transport",
            "nats",
            "--nats-url",
            "nats://10.0.0.7:4222",
            "--nats-user",
            "fx",
            "--nats-password",
            "pass-from-flag",
        ];
        let nats = transport_of!(resolve_hiding(&argv, "pass-from-flag"), Nats);
        assert_eq!(nats.url, "nats://10.0.0.7:4222");
        let user_password = NatsCredentials::UserPassword {
            user: "fx".into(),
            password: "pass-from-flag".into(),
        };
        assert_eq!((nats.credentials, nats.ca), (user_password, None));

        // The file's [nats] table, a flag over it, the CA from the
        // environment's FXCAST_CA_CERT.
        let (_dir, file) = config_file(
            "transport = \"nats\"\n[nats]\nurl = \"tls://nats.example:4222\"\ntoken = \"tok-from-file\"\n",
        );
        let settings = parse(&["--config", &file]).unwrap().with_file().unwrap();
        assert!(!format!("{settings:?}").contains("tok-from-file"));
        let config = Config::from_settings(settings, &ca_env).unwrap();
        assert!(!format!("{config:?}").contains("tok-from-file"));
        let nats = transport_of!(config, Nats);
        assert_eq!(nats.url, "tls://nats.example:4222");
        let token = NatsCredentials::Token("tok-from-file".into());
        assert_eq!(nats.credentials, token);
        assert_eq!(nats.ca, Some(PathBuf::from("/etc/fxcast/ca.pem")));
        let settings = parse(&["--config", &file, "--nats-url", "tls://other:4222"])
            .and_then(Settings::with_file)
            .unwrap();
        let argv_ca = parse(&["--nats-ca", "/tmp/nats-ca.pem"]).unwrap();
        let nats = transport_of!(
            Config::from_settings(argv_ca.over(settings), &ca_env).unwrap(),
            Nats
        );
        assert_eq!(nats.url, "tls://other:4222");
        assert_eq!(nats.ca, Some(PathBuf::from("/tmp/nats-ca.pem")));
        let argv = ["--transport", "nats", "--nats-creds", "/run/fx.creds"];
        let nats = transport_of!(resolve(parse(&argv)).unwrap(), Nats);
        assert_eq!(nats.url, "nats://127.0.0.1:4222");
        let creds = NatsCredentials::CredsFile("/run/fx.creds".into());
        assert_eq!(nats.credentials, creds);

        let nats = ["--transport", "nats"];
        refused(&[
            (
                &[&nats[..], &["--nats-user", "fx"]].concat(),
                "--nats-user needs a password",
            ),
            (
                &[&nats[..], &["--nats-password", "p"]].concat(),
                "--nats-password needs --nats-user",
            ),
            (
                &[&nats[..], &["--nats-token", "t", "--nats-creds", "f.creds"]].concat(),
                "one kind of credentials",
            ),
            (
                &[&nats[..], &["--momento-bridge"]].concat(),
                "cannot be combined with --transport nats",
            ),
        ]);
    }

    #[test]
    fn redis_settings_come_from_flags_the_file_and_the_environment() {
        let argv = [
            "--transport",
            "redis",
            "--redis-url",
            "redis://10.0.0.8:6380/2",
            "--redis-password",
            "pass-from-flag",
        ];
        let redis = transport_of!(resolve_hiding(&argv, "pass-from-flag"), Redis);
        assert_eq!(redis.url, "redis://10.0.0.8:6380/2");
        assert_eq!(
            redis.password.as_ref().map(Secret::expose),
            Some("pass-from-flag")
        );
        assert_eq!(redis.ca, None);

        // The file's [redis] table, a flag over it, the CA from the
        // environment's FXCAST_CA_CERT; the URL's password is never shown.
        let (_dir, file) = config_file(
            "transport = \"redis\"\n[redis]\nurl = \"rediss://:url-secret@redis.example:6380\"\n",
        );
        let settings = parse(&["--config", &file]).unwrap().with_file().unwrap();
        let config = Config::from_settings(settings, &ca_env).unwrap();
        assert!(!format!("{config:?}").contains("url-secret"));
        let redis = transport_of!(config, Redis);
        assert_eq!(redis.url, "rediss://:url-secret@redis.example:6380");
        assert_eq!(redis.password, None);
        assert_eq!(redis.ca, Some(PathBuf::from("/etc/fxcast/ca.pem")));
        let settings = parse(&["--config", &file, "--redis-ca", "/tmp/redis-ca.pem"])
            .and_then(Settings::with_file)
            .unwrap();
        let redis = transport_of!(Config::from_settings(settings, &ca_env).unwrap(), Redis);
        assert_eq!(redis.ca, Some(PathBuf::from("/tmp/redis-ca.pem")));
        let config = resolve(parse(&["--transport", "redis"])).unwrap();
        let redis = transport_of!(config, Redis);
        assert_eq!(redis.url, "redis://127.0.0.1:6379");
        refused(&[(
            &["--transport", "redis", "--momento-bridge"],
            "cannot be combined with --transport redis",
        )]);
    }

    #[test]
    fn order_settings_come_from_flags_and_the_file() {
        let (_dir, file) = config_file(
            "price_policy = \"adverse-only\"\nlp_latency = \"3ms\"\nlp_reject_rate = \"0.25\"\n\
             [symbol.USD_JPY]\ntolerance = \"0.005\"\nmax_price_age = \"1s\"\n",
        );
        let argv = [
            "--config",
            &file,
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

        refused(&[
            (
                &["--price-policy", "lenient"],
                "unknown price policy \"lenient\"",
            ),
            (
                &["--lp-reject-rate", "1.5"],
                "must be a decimal from 0 to 1",
            ),
            (&["--journal-sync", "sometimes"], "unknown journal sync"),
        ]);
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

        let (_dir, file) = config_file(
            "feed = \"replay:session.jsonl\"\nreplay_speed = \"max\"\nloop = true\nstale_after = \"2s\"\n",
        );
        let r = resolve(parse(&["--config", &file, "--replay-speed", "10"])).unwrap();
        let expected = ReplayConfig {
            path: "session.jsonl".into(),
            speed: "10".parse().unwrap(),
            looped: true,
        };
        assert_eq!(r.core.feed, FeedKind::Replay(expected));
        assert_eq!(r.core.stale_after, Duration::from_secs(2));

        refused(&[
            (
                &["--feed", "carrier-pigeon"],
                "expected simulated, bitflyer, fix, replay:<FILE> or none",
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
        ]);
    }

    #[test]
    fn fix_settings_build_one_shared_session() {
        let (_dir, file) = config_file(
            "[fix]\nhost = \"lp.example\"\nport = 9878\nsender_comp_id = \"DESK\"\n\
             target_comp_id = \"LP\"\nheartbeat = \"10s\"\nusername = \"desk\"\n\
             [fix.symbols]\nUSD_JPY = \"USD/JPY\"\n",
        );
        let argv = [
            "--config",
            &file,
            "--feed",
            "fix",
            "--lp",
            "fix",
            "--fix-port",
            "9879",
            "--fix-password",
            "s3cret-pw",
            "--data-dir",
            "/tmp/fxcast-fix-config",
        ];
        let r = resolve(parse(&argv)).unwrap();
        let FeedKind::Fix(feed) = &r.core.feed else {
            panic!("{:?}", r.core.feed)
        };
        let LpConfig::Fix(lp) = &r.core.orders.lp else {
            panic!("{:?}", r.core.orders.lp)
        };
        assert_eq!(feed.session, lp.session, "one session for both");
        let session = feed.session.config();
        assert_eq!((session.host.as_str(), session.port), ("lp.example", 9879));
        assert_eq!(session.sender_comp_id, "DESK");
        assert_eq!(session.heartbeat, Duration::from_secs(10));
        assert_eq!(session.username.as_deref(), Some("desk"));
        assert_eq!(
            session.password.as_ref().map(|p| p.expose()),
            Some("s3cret-pw")
        );
        assert_eq!(
            session.store_dir,
            PathBuf::from("/tmp/fxcast-fix-config/fix")
        );
        assert_eq!(feed.symbols.to_lp("USD_JPY"), "USD/JPY");
        assert!(
            !format!("{r:?}").contains("s3cret-pw"),
            "the password is redacted"
        );
        assert_eq!(r.fix_session(), Some(feed.session.clone()));

        refused(&[
            (&["--lp", "fix"], "--fix-host"),
            (&["--lp", "tcp"], "unknown --lp"),
        ]);
        let plain = resolve(parse(&[])).unwrap();
        assert!(plain.fix_session().is_none());
    }

    #[test]
    fn orders_upstream_names_the_executor_and_trusts_the_ca_of_the_environment() {
        assert_eq!(resolve(parse(&[])).unwrap().core.orders.upstream, None);
        let argv = ["--orders-upstream", "https://exec.internal:50051"];
        let r = Config::from_settings(parse(&argv).unwrap().with_file().unwrap(), &ca_env).unwrap();
        assert_eq!(
            r.core.orders.upstream,
            Some(OrdersUpstream {
                url: "https://exec.internal:50051".into(),
                ca: Some(PathBuf::from("/etc/fxcast/ca.pem")),
            })
        );
        let not_http = "must be an http:// or https:// URL";
        refused(&[
            (&["--orders-upstream", "exec.internal:50051"], not_http),
            (&["--orders-upstream", "nats://exec:4222"], not_http),
            (&["--orders-upstream", "http://"], not_http),
        ]);
    }
}
