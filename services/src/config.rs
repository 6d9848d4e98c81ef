//! Settings of the rate core, independent of where they come from (flags,
//! environment, TOML: the binary merges those).

use std::{collections::BTreeMap, path::PathBuf};

use crate::{
    HubConfig, StreamLimits, auth::AuthConfig, feed::FeedKind, feed::SimulatorConfig,
    orders::OrdersConfig, pricing::Markup, symbols::SymbolOverride,
};

/// The symbols served when none are configured.
pub const DEFAULT_SYMBOLS: &[&str] = &[
    "USD_JPY", "EUR_USD", "GBP_USD", "EUR_JPY", "AUD_USD", "BTC_JPY",
];

/// Settings of [`RatesCore`](crate::RatesCore).
#[derive(Debug, Clone)]
pub struct Config {
    /// Symbols to price.
    pub symbols: Vec<String>,
    /// Markup applied to every symbol without its own.
    pub markup: Markup,
    /// Per-symbol conventions and markups.
    pub symbol_overrides: BTreeMap<String, SymbolOverride>,
    /// Which feed drives the publisher.
    pub feed: FeedKind,
    /// Simulator settings (used with [`FeedKind::Simulated`]).
    pub simulator: SimulatorConfig,
    /// A symbol whose feed has not ticked for this long is stale: its rate
    /// is re-published with `stale = true`, readiness fails and orders on
    /// it are rejected until ticks resume.
    pub stale_after: std::time::Duration,
    /// History and buffering of the local fan-out.
    pub hub: HubConfig,
    /// Slow-consumer limits of streams.
    pub stream_limits: StreamLimits,
    /// Directory for durable state (keys, revocations, the order journal).
    pub data_dir: PathBuf,
    /// Tokens and the admin API key.
    pub auth: AuthConfig,
    /// Order execution: price policy, max price age, liquidity provider,
    /// journal durability.
    pub orders: OrdersConfig,
    /// A local latest rate older than this is refreshed from the
    /// transport's shared storage (Momento's cache) before `GetLatestRate`
    /// answers or an order is priced.
    pub latest_fresh_for: std::time::Duration,
    /// Connection cap and timeouts of the gRPC listener.
    pub connections: fxcast_listener::ListenerConfig,
    /// TLS of the gRPC listener (plaintext when `None`).
    pub tls: Option<fxcast_listener::Tls>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            symbols: DEFAULT_SYMBOLS.iter().map(|s| (*s).to_owned()).collect(),
            markup: Markup::None,
            symbol_overrides: BTreeMap::new(),
            feed: FeedKind::Simulated,
            simulator: SimulatorConfig::default(),
            stale_after: std::time::Duration::from_secs(5),
            hub: HubConfig::default(),
            stream_limits: StreamLimits::default(),
            data_dir: PathBuf::from("./fxcast-data"),
            auth: AuthConfig::default(),
            orders: OrdersConfig::default(),
            latest_fresh_for: std::time::Duration::from_secs(1),
            connections: fxcast_listener::ListenerConfig::default(),
            tls: None,
        }
    }
}
