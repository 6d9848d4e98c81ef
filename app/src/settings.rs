//! Every `fxcast serve` setting, declared once.
//!
//! [`Settings`] is at the same time the clap argument group (each field a
//! `--flag` with its `FXCAST_<NAME>` environment variable) and the serde
//! shape of the `--config` TOML file (each field a key of the same name).
//! Every field is optional, so a layer says only what it sets; [`Settings::over`]
//! lays one layer over another field by field. Precedence is therefore
//! written once: flag, then environment (clap reads both), then the file,
//! then the default applied in [`crate::Config::from_settings`].
//!
//! Adding a setting is adding one field here (and reading it where the typed
//! configuration is built).

use std::{
    collections::BTreeMap, fmt, net::SocketAddr, num::NonZeroU32, path::PathBuf, str::FromStr,
};

use clap::builder::BoolishValueParser;
use fxcast_services::{
    orders::{JournalSync, PricePolicy},
    pricing::Markup,
    symbols::SymbolOverride,
};
pub use fxcast_transport::Secret;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, de};

/// Declares the settings struct and its field-wise merge from one list of
/// fields, so a field can never be forgotten in the merge.
macro_rules! settings {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        pub struct $name { $($(#[$fmeta])* pub $field: $ty,)* }

        impl $name {
            /// This layer's values where it has them, `lower`'s elsewhere.
            #[must_use]
            pub fn over(self, lower: Self) -> Self {
                Self { $($field: Layer::over(self.$field, lower.$field),)* }
            }
        }
    };
}

/// A value that one configuration layer may set over another.
trait Layer {
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

impl Layer for NatsSettings {
    fn over(self, lower: Self) -> Self {
        // The struct's own field-wise merge.
        NatsSettings::over(self, lower)
    }
}

impl Layer for RedisSettings {
    fn over(self, lower: Self) -> Self {
        RedisSettings::over(self, lower)
    }
}

impl Layer for FixSettings {
    fn over(self, lower: Self) -> Self {
        FixSettings::over(self, lower)
    }
}

impl<V> Layer for BTreeMap<String, V> {
    fn over(mut self, lower: Self) -> Self {
        for (key, value) in lower {
            self.entry(key).or_insert(value);
        }
        self
    }
}

settings! {
    /// The settings of `fxcast serve`, from flags, environment or the TOML file.
    #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct Settings {
        /// gRPC listen address [default: 127.0.0.1:50051]
        #[arg(long, env = "FXCAST_GRPC_LISTEN")]
        grpc_listen: Option<SocketAddr>,
        /// HTTP gateway listen address [default: 127.0.0.1:8000]
        #[arg(long, env = "FXCAST_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
        /// Most connections open at once on each listener (gRPC, HTTP); further clients wait
        /// until one closes [default: half the open-files limit less 128, per listener]
        #[arg(long, env = "FXCAST_MAX_CONNECTIONS")]
        max_connections: Option<usize>,
        /// A new connection must send its first bytes, and an HTTP/1 request its whole header,
        /// within this long; also how long an HTTP/2 ping may go unanswered [default: 10s]
        #[arg(long, env = "FXCAST_HEADER_TIMEOUT")]
        #[serde(deserialize_with = "parsed")]
        header_timeout: Option<humantime::Duration>,
        /// A connection that neither reads nor writes for this long is closed; HTTP/2
        /// connections are pinged every half of it [default: 2m]
        #[arg(long, env = "FXCAST_IDLE_TIMEOUT")]
        #[serde(deserialize_with = "parsed")]
        idle_timeout: Option<humantime::Duration>,
        /// PEM certificate chain: serve gRPC and HTTP over TLS (with --tls-key); the files are
        /// re-read when they change, so certificates rotate without a restart
        #[arg(long, env = "FXCAST_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert
        #[arg(long, env = "FXCAST_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// PEM CA certificates: gRPC clients must present a certificate signed by one of them
        /// (needs --tls-cert)
        #[arg(long, env = "FXCAST_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// Pub/sub transport: memory (in-process), momento (Momento Topics; the API key comes
        /// from MOMENTO_API_KEY), nats (NATS JetStream, --nats-url) or redis (Redis pub/sub
        /// and streams, --redis-url) [default: memory]
        #[arg(long, env = "FXCAST_TRANSPORT")]
        #[serde(deserialize_with = "parsed")]
        transport: Option<TransportKind>,
        /// Momento cache holding the topics and the latest rates [default: fxcast]
        #[arg(long, env = "FXCAST_MOMENTO_CACHE")]
        momento_cache: Option<String>,
        /// Momento endpoint URL instead of the one the API key names, e.g. http://127.0.0.1:8080
        /// for fxcast momento-local (http:// is plaintext)
        #[arg(long, env = "FXCAST_MOMENTO_ENDPOINT")]
        momento_endpoint: Option<String>,
        /// With the memory transport: also mirror every rate, paced, to the Momento topics
        /// rates.<SYMBOL>, for browsers and remote consumers
        #[arg(long, env = "FXCAST_MOMENTO_BRIDGE", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", value_parser = BoolishValueParser::new())]
        momento_bridge: Option<bool>,
        /// Most publishes per second per Momento topic; faster rates are conflated, the latest
        /// wins; 0 sends every rate [default: 10]
        #[arg(long, env = "FXCAST_MOMENTO_PUBLISH_RATE")]
        momento_publish_rate: Option<u32>,
        /// How long the latest rates stay in the Momento cache [default: 5m]
        #[arg(long, env = "FXCAST_MOMENTO_LATEST_TTL")]
        #[serde(deserialize_with = "parsed")]
        momento_latest_ttl: Option<humantime::Duration>,
        /// Momento topics the order events of all subjects share (each process subscribes to
        /// at most this many, whatever the number of subjects); every process on the cache
        /// must use the same number; 0: a topic per subject [default: 16]
        #[arg(long, env = "FXCAST_MOMENTO_ORDER_SHARDS")]
        momento_order_shards: Option<u16>,
        /// Momento operations per second this process may spend; every publish, cache call and
        /// subscribe waits for its turn instead of being refused past the account's limit. Set
        /// it a little below the limit, shared among the processes on the account [default: no
        /// limit]
        #[arg(long, env = "FXCAST_MOMENTO_MAX_OPS_PER_SECOND")]
        momento_max_ops_per_second: Option<NonZeroU32>,
        /// Publish every symbol's rates as one Momento topic, `board.rates` (the latest of each
        /// symbol that changed, once per --momento-publish-rate interval), instead of a topic
        /// per symbol, so operations do not grow with the symbols; browser tokens get Momento
        /// access only when they may see every symbol
        #[arg(long, env = "FXCAST_MOMENTO_BOARD", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", value_parser = BoolishValueParser::new())]
        momento_board: Option<bool>,
        /// The NATS server of --transport nats: its URL and credentials (`[nats]` in the file).
        #[command(flatten)]
        nats: NatsSettings,
        /// The Redis server of --transport redis: its URL and password (`[redis]` in the file).
        #[command(flatten)]
        redis: RedisSettings,
        /// Upstream feed: simulated, bitflyer (live bitFlyer Lightning tickers), replay:<FILE>
        /// (a recording from `fxcast record`), or none (rates only via PublishRate) [default: simulated]
        /// The FIX 4.4 session to the LP of --feed fix / --lp fix (`[fix]` in the file).
        #[command(flatten)]
        fix: FixSettings,
        /// Upstream feed: simulated, bitflyer (live bitFlyer Lightning tickers), fix (an LP's
        /// prices over FIX, --fix-*), replay:<FILE> (a recording from `fxcast record`), or none
        /// (rates only via PublishRate) [default: simulated]
        #[arg(long, env = "FXCAST_FEED")]
        #[serde(deserialize_with = "parsed")]
        feed: Option<FeedName>,
        /// bitFlyer realtime WebSocket endpoint [default: wss://ws.lightstream.bitflyer.com/json-rpc]
        #[arg(long, env = "FXCAST_BITFLYER_ENDPOINT")]
        bitflyer_endpoint: Option<String>,
        /// A symbol whose feed has not ticked for this long is stale: its rate is re-published
        /// with stale=true, /readyz fails and orders on it are rejected [default: 5s]
        #[arg(long, env = "FXCAST_STALE_AFTER")]
        #[serde(deserialize_with = "parsed")]
        stale_after: Option<humantime::Duration>,
        /// Replay pace: 1 (real time), a factor such as 10 or 0.5, or max [default: 1]
        #[arg(long, env = "FXCAST_REPLAY_SPEED")]
        #[serde(deserialize_with = "parsed")]
        replay_speed: Option<fxcast_services::feed::ReplaySpeed>,
        /// Replay the file over and over
        #[arg(long = "loop", env = "FXCAST_LOOP", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", value_parser = BoolishValueParser::new())]
        #[serde(rename = "loop")]
        replay_loop: Option<bool>,
        /// Comma-separated symbols [default: USD_JPY,EUR_USD,GBP_USD,EUR_JPY,AUD_USD,BTC_JPY;
        /// with bitflyer or replay: BTC_JPY,ETH_JPY,FX_BTC_JPY]
        #[arg(long, env = "FXCAST_SYMBOLS")]
        symbols: Option<List>,
        /// Directory for durable state [default: ./fxcast-data]
        #[arg(long, env = "FXCAST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// TOML configuration file (flags and environment override it)
        #[arg(long, env = "FXCAST_CONFIG")]
        #[serde(skip)]
        config: Option<PathBuf>,
        /// Seed of the simulated feed [default: 42]
        #[arg(long, env = "FXCAST_SEED")]
        seed: Option<u64>,
        /// Time between simulated ticks, e.g. 250ms [default: 250ms]
        #[arg(long, env = "FXCAST_TICK_INTERVAL")]
        #[serde(deserialize_with = "parsed")]
        tick_interval: Option<humantime::Duration>,
        /// Markup per side for every symbol: a price (0.002) or basis points (1.5bp) [default: 0]
        #[arg(long, env = "FXCAST_MARKUP")]
        #[serde(deserialize_with = "parsed")]
        markup: Option<Markup>,
        /// Ticks held per symbol for resuming streams (gRPC resume_after_sequence, WebSocket
        /// resume_after) [default: 4096]
        #[arg(long, env = "FXCAST_STREAM_HISTORY")]
        stream_history: Option<usize>,
        /// Issue anonymous browser tokens even when the HTTP listener is not on loopback
        #[arg(long, env = "FXCAST_ALLOW_ANONYMOUS_TOKENS", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", value_parser = BoolishValueParser::new())]
        allow_anonymous_tokens: Option<bool>,
        /// Default token lifetime [default: 15m]
        #[arg(long, env = "FXCAST_TOKEN_TTL")]
        #[serde(deserialize_with = "parsed")]
        token_ttl: Option<humantime::Duration>,
        /// Longest token lifetime a request may ask for [default: 24h]
        #[arg(long, env = "FXCAST_MAX_TOKEN_TTL")]
        #[serde(deserialize_with = "parsed")]
        max_token_ttl: Option<humantime::Duration>,
        /// Signing keys file, shared by every server that must accept the same
        /// tokens (created on first start if missing) [default: <data-dir>/signing-keys.json]
        #[arg(long, env = "FXCAST_SIGNING_KEYS")]
        signing_keys: Option<PathBuf>,
        /// Origins allowed to call the HTTP API from browsers (comma-separated; default: same origin only)
        #[arg(long, env = "FXCAST_CORS_ORIGINS")]
        cors_origins: Option<List>,
        /// Order price check: symmetric or adverse-only [default: symmetric]
        #[arg(long, env = "FXCAST_PRICE_POLICY")]
        #[serde(deserialize_with = "parsed")]
        price_policy: Option<PricePolicy>,
        /// Orders are rejected as STALE_PRICE when the latest rate is older than this
        /// (per symbol: max_price_age in [symbol.X]) [default: 2s]
        #[arg(long, env = "FXCAST_MAX_PRICE_AGE")]
        #[serde(deserialize_with = "parsed")]
        max_price_age: Option<humantime::Duration>,
        /// Liquidity provider: simulated (in-process) or fix (an LP over FIX, --fix-*)
        /// [default: simulated]
        #[arg(long, env = "FXCAST_LP")]
        #[serde(deserialize_with = "parsed")]
        lp: Option<LpName>,
        /// Answer time of the simulated liquidity provider, e.g. 2ms [default: 0s]
        #[arg(long, env = "FXCAST_LP_LATENCY")]
        #[serde(deserialize_with = "parsed")]
        lp_latency: Option<humantime::Duration>,
        /// Fraction of orders the simulated liquidity provider declines, 0 to 1 [default: 0]
        #[arg(long, env = "FXCAST_LP_REJECT_RATE")]
        #[serde(deserialize_with = "parsed")]
        lp_reject_rate: Option<Fraction>,
        /// Seed of the simulated liquidity provider's decisions [default: 42]
        #[arg(long, env = "FXCAST_LP_SEED")]
        lp_seed: Option<u64>,
        /// Order journal durability: full (every commit synced) or normal (survives
        /// kill -9, not a power loss) [default: full]
        #[arg(long, env = "FXCAST_JOURNAL_SYNC")]
        #[serde(deserialize_with = "parsed")]
        journal_sync: Option<JournalSync>,
        /// Execute no orders here: forward every OrderService call (REST orders too) to the
        /// cluster's one order executor at this gRPC URL, e.g. http://10.0.0.5:50051, so a
        /// client_order_id fills at most once across processes (https:// trusts FXCAST_CA_CERT)
        #[arg(long, env = "FXCAST_ORDERS_UPSTREAM")]
        orders_upstream: Option<String>,
        /// Per-symbol conventions, from the file only: `[symbol.USD_JPY] markup = "0.003"`.
        #[arg(skip)]
        symbol: BTreeMap<String, SymbolOverride>,
    }
}

settings! {
    /// The NATS server of `--transport nats`: flags `--nats-*`, keys of the
    /// file's `[nats]` table. At most one kind of credentials.
    #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct NatsSettings {
        /// NATS server URL, tls:// for TLS; several separated by commas
        /// [default: nats://127.0.0.1:4222]
        #[arg(long = "nats-url", env = "FXCAST_NATS_URL")]
        url: Option<String>,
        /// NATS user (with --nats-password)
        #[arg(long = "nats-user", env = "FXCAST_NATS_USER")]
        user: Option<String>,
        /// NATS password of --nats-user; prefer the environment variable, flags show in `ps`
        #[arg(long = "nats-password", env = "FXCAST_NATS_PASSWORD", hide_env_values = true)]
        #[serde(deserialize_with = "parsed")]
        password: Option<Secret>,
        /// NATS token (nats-server --auth); prefer the environment variable
        #[arg(long = "nats-token", env = "FXCAST_NATS_TOKEN", hide_env_values = true)]
        #[serde(deserialize_with = "parsed")]
        token: Option<Secret>,
        /// NATS credentials file (a user JWT and NKey seed, as `nsc` writes it)
        #[arg(long = "nats-creds", env = "FXCAST_NATS_CREDS")]
        creds: Option<PathBuf>,
        /// PEM CA certificates a tls:// NATS server's certificate must chain to, instead of
        /// Mozilla's roots [default: FXCAST_CA_CERT when set]
        #[arg(long = "nats-ca", env = "FXCAST_NATS_CA")]
        ca: Option<PathBuf>,
    }
}

settings! {
    /// The Redis server of `--transport redis`: flags `--redis-*`, keys of
    /// the file's `[redis]` table.
    #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct RedisSettings {
        /// Redis server URL, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss:// for TLS
        /// [default: redis://127.0.0.1:6379]
        #[arg(id = "redis_url", long = "redis-url", env = "FXCAST_REDIS_URL")]
        url: Option<String>,
        /// Redis password, instead of the URL's; prefer the environment variable, flags show in
        /// `ps`
        #[arg(id = "redis_password", long = "redis-password", env = "FXCAST_REDIS_PASSWORD",
              hide_env_values = true)]
        #[serde(deserialize_with = "parsed")]
        password: Option<Secret>,
        /// PEM CA certificates a rediss:// server's certificate must chain to, instead of
        /// Mozilla's roots [default: FXCAST_CA_CERT when set]
        #[arg(id = "redis_ca", long = "redis-ca", env = "FXCAST_REDIS_CA")]
        ca: Option<PathBuf>,
    }
}

settings! {
    /// The FIX session of `--feed fix` / `--lp fix`: flags `--fix-*`, keys
    /// of the file's `[fix]` table, symbol mapping in `[fix.symbols]`.
    #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct FixSettings {
        /// The LP's FIX acceptor host
        #[arg(id = "fix_host", value_name = "HOST", long = "fix-host", env = "FXCAST_FIX_HOST")]
        host: Option<String>,
        /// The LP's FIX acceptor port
        #[arg(id = "fix_port", value_name = "PORT", long = "fix-port", env = "FXCAST_FIX_PORT")]
        port: Option<u16>,
        /// Our FIX SenderCompID (49)
        #[arg(id = "fix_sender_comp_id", value_name = "COMP_ID", long = "fix-sender-comp-id", env = "FXCAST_FIX_SENDER_COMP_ID")]
        sender_comp_id: Option<String>,
        /// The LP's FIX TargetCompID (56)
        #[arg(id = "fix_target_comp_id", value_name = "COMP_ID", long = "fix-target-comp-id", env = "FXCAST_FIX_TARGET_COMP_ID")]
        target_comp_id: Option<String>,
        /// FIX HeartBtInt, whole seconds [default: 30s]
        #[arg(id = "fix_heartbeat", value_name = "DURATION", long = "fix-heartbeat", env = "FXCAST_FIX_HEARTBEAT")]
        #[serde(deserialize_with = "parsed")]
        heartbeat: Option<humantime::Duration>,
        /// Username (553) on the FIX Logon
        #[arg(id = "fix_username", value_name = "USERNAME", long = "fix-username", env = "FXCAST_FIX_USERNAME")]
        username: Option<String>,
        /// Password (554) on the FIX Logon; prefer the environment variable, flags show in `ps`
        #[arg(id = "fix_password", value_name = "PASSWORD", long = "fix-password", env = "FXCAST_FIX_PASSWORD", hide_env_values = true)]
        #[serde(deserialize_with = "parsed")]
        password: Option<Secret>,
        /// fxcast symbol -> the LP's symbol, from the file only: `[fix.symbols] USD_JPY = "USD/JPY"`.
        #[arg(skip)]
        symbols: BTreeMap<String, String>,
    }
}

/// Which liquidity provider deals orders (`--lp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpName {
    /// The in-process simulator.
    Simulated,
    /// An LP over FIX 4.4.
    Fix,
}

impl FromStr for LpName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "simulated" => Ok(Self::Simulated),
            "fix" => Ok(Self::Fix),
            other => Err(format!("unknown --lp {other:?}; expected simulated or fix")),
        }
    }
}

impl Settings {
    /// These settings over the `--config` file they name, if any.
    ///
    /// # Errors
    /// [`crate::Error::ConfigFile`] when the file cannot be read or parsed.
    pub fn with_file(self) -> Result<Self, crate::Error> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file_error = |message: String| crate::Error::ConfigFile {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
        let file: Self = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
        Ok(self.over(file))
    }
}

/// Which transport carries the rates (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// In-process broadcast (the embedded default).
    Memory,
    /// Momento Topics, latest rates in a Momento cache.
    Momento,
    /// NATS: a JetStream stream of recent messages, latest in a key-value bucket.
    Nats,
    /// Redis: pub/sub with a stream per topic, latest as keys with a TTL.
    Redis,
}

impl FromStr for TransportKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(Self::Memory),
            "momento" => Ok(Self::Momento),
            "nats" => Ok(Self::Nats),
            "redis" => Ok(Self::Redis),
            other => Err(format!(
                "unknown --transport {other:?}; expected memory, momento, nats or redis"
            )),
        }
    }
}

/// Which feed drives the publisher (`--feed`), before its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedName {
    /// The seeded simulator.
    Simulated,
    /// bitFlyer Lightning's realtime API.
    Bitflyer,
    /// An LP's prices over FIX 4.4.
    Fix,
    /// A recording played back.
    Replay(PathBuf),
    /// No feed: rates arrive through `PublishRate` or the transport.
    None,
}

impl FromStr for FeedName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "simulated" => Ok(Self::Simulated),
            "bitflyer" => Ok(Self::Bitflyer),
            "fix" => Ok(Self::Fix),
            "none" => Ok(Self::None),
            other => match other.strip_prefix("replay:") {
                Some("") => {
                    Err("--feed replay:<FILE> needs a file, e.g. replay:session.jsonl".into())
                }
                Some(path) => Ok(Self::Replay(PathBuf::from(path))),
                None => Err(format!(
                    "unknown --feed {other:?}; expected simulated, bitflyer, fix, replay:<FILE> or none"
                )),
            },
        }
    }
}

/// A list: comma-separated on the command line, an array in the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl FromStr for List {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d).map(Self)
    }
}

/// A decimal from 0 to 1 (`--lp-reject-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction(pub Decimal);

impl FromStr for Fraction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decimal::from_str_exact(s)
            .ok()
            .filter(|r| !r.is_sign_negative() && *r <= Decimal::ONE)
            .map(Self)
            .ok_or_else(|| format!("{s:?} must be a decimal from 0 to 1, e.g. 0.02"))
    }
}

/// A file value written as its command-line string (`"250ms"`, `"1bp"`).
fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    Option::<String>::deserialize(d)?
        .map(|s| {
            s.parse()
                .map_err(|e| de::Error::custom(format!("{s:?}: {e}")))
        })
        .transpose()
}
