//! Order execution: a client saw a price and wants to deal at it.
//!
//! `PlaceOrder` is accepted only while the live price is still within
//! tolerance of the price the client saw; it is then filled through a
//! [`LiquidityProvider`] and its final state is made durable in the
//! [`OrderJournal`] before it is acknowledged. `client_order_id` makes it
//! idempotent per subject, also across restarts and `kill -9`.
//!
//! The pipeline of one order ([`OrderExecutor::place`]):
//! validate (`INVALID_ARGUMENT`, nothing stored) -> one execution per
//! (subject, client_order_id) in this process -> look the id up in the
//! journal (a retry returns the original) -> price check against the latest
//! rate (tolerance, staleness, `rate_id`) -> LP -> journal (group commit) ->
//! event on `orders.<subject>` -> reply.
//!
//! # Layout
//! - `model`: [`Side`], [`OrderStatus`], [`RejectReason`], [`OrderTerms`],
//!   [`OrderRecord`] and their wire forms.
//! - `validate`: request checks with precise messages.
//! - `price_check`: [`Tolerance`], [`PricePolicy`] and the check itself.
//! - [`lp`]: the [`LiquidityProvider`] seam and the simulated LP.
//! - `journal`: the SQLite [`OrderJournal`] with its group-committing writer.
//! - `events`: order events on the transport and their local fan-out.
//! - `executor`: [`OrderExecutor`], the pipeline above.
//! - `service`: the tonic `OrderService`.
//! - `forward`: [`OrderForwarder`], `OrderService` of a node whose orders go
//!   to the cluster's one executor (`--orders-upstream`), and [`OrderRoute`],
//!   the choice between the two.

mod conventions;
mod events;
mod executor;
mod forward;
mod journal;
pub mod lp;
mod model;
mod price_check;
mod service;
mod validate;

use std::{sync::Arc, time::Duration};

pub use conventions::OrderConventions;
pub use events::orders_topic;
pub use executor::OrderExecutor;
pub use forward::{OrderForwarder, OrderRoute, OrdersUpstream};
pub use journal::{JournalSync, ListFilter, OrderJournal, OrderPage, Recorded};
pub use lp::{
    FixLp, FixLpConfig, LiquidityProvider, LpError, LpOrder, LpOutcome, SimulatedLp,
    SimulatedLpConfig,
};
pub use model::{OrderRecord, OrderStatus, OrderTerms, RejectReason, Side};
pub use price_check::{PricePolicy, Tolerance};
pub use service::OrderServiceImpl;

/// Which liquidity provider fills orders.
#[derive(Debug, Clone)]
pub enum LpConfig {
    /// The built-in simulated LP (the default).
    Simulated(SimulatedLpConfig),
    /// An LP over FIX 4.4 (`--lp fix`).
    Fix(FixLpConfig),
    /// A provider supplied by the embedding program (or a test).
    Custom(Arc<dyn LiquidityProvider>),
}

impl Default for LpConfig {
    fn default() -> Self {
        LpConfig::Simulated(SimulatedLpConfig::default())
    }
}

impl LpConfig {
    /// The provider this configuration describes.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for invalid settings.
    pub fn build(&self) -> Result<Arc<dyn LiquidityProvider>, crate::Error> {
        Ok(match self {
            LpConfig::Simulated(config) => {
                config.validate()?;
                Arc::new(SimulatedLp::new(config.clone()))
            }
            LpConfig::Fix(config) => Arc::new(FixLp::new(config.clone())?),
            LpConfig::Custom(lp) => Arc::clone(lp),
        })
    }
}

/// Settings of order execution. Per-symbol conventions (lot size, limits,
/// tolerance, max price age) live in [`OrderConventions`] on each
/// [`SymbolSpec`](crate::SymbolSpec).
#[derive(Debug, Clone)]
pub struct OrdersConfig {
    /// How the live price is compared with the order price.
    pub policy: PricePolicy,
    /// A rate older than this is stale for symbols without their own max age.
    pub max_price_age: Duration,
    /// The liquidity provider.
    pub lp: LpConfig,
    /// How the journal makes a commit durable.
    pub journal_sync: JournalSync,
    /// `Some`: this process executes no orders and forwards every
    /// `OrderService` call to the executor there (no journal, no LP here).
    pub upstream: Option<OrdersUpstream>,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            policy: PricePolicy::Symmetric,
            max_price_age: Duration::from_secs(2),
            lp: LpConfig::default(),
            journal_sync: JournalSync::Full,
            upstream: None,
        }
    }
}

/// File name of the journal inside the data directory.
pub const JOURNAL_FILE: &str = "orders.sqlite3";
