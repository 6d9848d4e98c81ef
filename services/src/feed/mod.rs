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
mod health;
mod record;
mod replay;
mod simulated;

pub use bitflyer::{
    BITFLYER_DEFAULT_PRODUCTS, BITFLYER_ENDPOINT, Backoff, BitflyerConfig, BitflyerFeed,
};
pub(crate) use health::supervise;
pub use health::{FeedCounters, FeedHealth, FeedHealthSnapshot, SymbolHealth};
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
