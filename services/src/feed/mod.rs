//! Upstream price feeds.
//!
//! A [`Feed`] produces raw [`Quote`]s (before markup) into a channel; the
//! [`RatePublisher`](crate::RatePublisher) turns them into published rates.
//! Every feed — the simulator, bitFlyer, a replay file — sits behind this one
//! trait. [`FeedHealth`] tracks each symbol's liveness: the core runs every
//! feed under a supervisor that marks a silent symbol's rate stale.

use std::time::SystemTime;

use rust_decimal::Decimal;
use tokio::sync::mpsc;

use crate::BoxFuture;

mod bitflyer;
mod fix;
mod health;
mod record;
mod replay;
mod simulated;

pub use bitflyer::{
    BITFLYER_DEFAULT_PRODUCTS, BITFLYER_ENDPOINT, Backoff, BitflyerConfig, BitflyerFeed,
};
pub use fix::{FixFeed, FixFeedConfig};
pub use health::{FeedCounters, FeedHealth, FeedHealthSnapshot, SymbolHealth};
pub(crate) use health::{supervise, watch_arrivals};
pub use record::{RecordSummary, record_bitflyer};
pub use replay::{ParseReplaySpeedError, ReplayConfig, ReplayFeed, ReplaySpeed};
pub use simulated::{SimulatedFeed, SimulatorConfig};

/// One raw price from a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Symbol as configured (e.g. `USD_JPY`).
    pub symbol: String,
    /// Best bid.
    pub bid: Decimal,
    /// Best ask.
    pub ask: Decimal,
    /// When the feed observed it.
    pub source_time: SystemTime,
}

/// Which upstream feed drives the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedKind {
    /// The built-in seeded random walk.
    Simulated,
    /// No feed: rates arrive through `PublishRate` or from other processes
    /// over the transport.
    None,
    /// bitFlyer Lightning's realtime ticker; the symbols are its product
    /// codes.
    Bitflyer(BitflyerConfig),
    /// A recorded bitFlyer session played back.
    Replay(ReplayConfig),
    /// An LP's prices over FIX 4.4 (market data requests on the shared
    /// FIX session).
    Fix(FixFeedConfig),
}

impl FeedKind {
    /// The feed this kind names over `symbols`, reporting into `health`
    /// (the simulator runs with `simulator`); `None` for [`FeedKind::None`].
    ///
    /// # Errors
    /// [`crate::Error::Config`] when the feed's settings are unusable (a
    /// replay file that cannot be opened, a bad endpoint).
    pub fn build(
        &self,
        simulator: &SimulatorConfig,
        symbols: &crate::SymbolTable,
        health: &FeedHealth,
    ) -> Result<Option<Box<dyn Feed>>, crate::Error> {
        Ok(match self {
            Self::None => None,
            Self::Simulated => Some(Box::new(SimulatedFeed::new(symbols, simulator.clone()))),
            Self::Bitflyer(config) => Some(Box::new(BitflyerFeed::new(
                config.clone(),
                symbols.names(),
                health.clone(),
            )?)),
            Self::Replay(config) => Some(Box::new(ReplayFeed::open(
                config.clone(),
                symbols.names(),
                health.clone(),
            )?)),
            Self::Fix(config) => Some(Box::new(FixFeed::new(
                config.clone(),
                symbols.names(),
                health.clone(),
            )?)),
        })
    }
}

/// A source of quotes.
pub trait Feed: Send + 'static {
    /// Short name, used as the rates' `source` (`"simulated"`, `"bitflyer"`).
    fn name(&self) -> &'static str;

    /// Produces quotes into `out` until `out` is closed or the feed ends.
    fn run(
        self: Box<Self>,
        out: mpsc::Sender<Quote>,
    ) -> BoxFuture<'static, Result<(), crate::Error>>;
}
