//! The liquidity-provider seam: where a price-checked order is actually
//! dealt.
//!
//! A new provider is one new file implementing [`LiquidityProvider`] (plus,
//! to select it from configuration, one variant of
//! [`LpConfig`](super::LpConfig)); nothing else changes.

mod fix;
mod simulated;

use std::fmt;

use fxcast_transport::BoxFuture;
use rust_decimal::Decimal;

use super::model::Side;

pub use fix::{FixLp, FixLpConfig};
pub use simulated::{SimulatedLp, SimulatedLpConfig};

/// An order as sent to a liquidity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpOrder {
    /// The provider's idempotency key (FIX `ClOrdID`): derived from the
    /// subject and `client_order_id` only, so a retry of the same order -
    /// also after a crash - reaches the provider with the same key.
    pub key: String,
    /// fxcast's order id (for the provider's records).
    pub order_id: String,
    /// Symbol.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Quantity of the base currency.
    pub quantity: Decimal,
    /// The live price the order passed the price check at: the price to
    /// deal at.
    pub price: Decimal,
}

/// What the provider did with an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LpOutcome {
    /// Dealt.
    Filled {
        /// The price dealt at.
        price: Decimal,
        /// The provider's execution id.
        execution_id: String,
    },
    /// Declined (e.g. on last look); nothing was dealt.
    Rejected {
        /// The provider's reason, for the order's message.
        message: String,
    },
}

/// The provider could not say what happened to an order (it may or may not
/// have dealt it): a timeout, a lost connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("liquidity provider {provider}: {message}")]
pub struct LpError {
    /// Provider name.
    pub provider: String,
    /// What went wrong.
    pub message: String,
}

/// A liquidity provider.
///
/// Contract:
/// - [`execute`](Self::execute) is idempotent per [`LpOrder::key`]: sending
///   the same key again never deals twice and returns the first outcome;
/// - an `Err` means the outcome is unknown: the executor then asks
///   [`recover`](Self::recover) until it gets an answer.
pub trait LiquidityProvider: Send + Sync + fmt::Debug + 'static {
    /// Short name recorded on every order it handles (`"simulated"`).
    fn name(&self) -> &str;

    /// Whether the executor must journal a durable PENDING intent before
    /// [`execute`](Self::execute), so an order in flight during a crash is
    /// found and [`recover`](Self::recover)ed at the next start. Providers
    /// outside the process need it (default `true`); one whose deals die
    /// with the process (the simulator) does not, which saves a commit.
    fn needs_intent_record(&self) -> bool {
        true
    }

    /// Deals `order` at `order.price`, or declines it.
    ///
    /// # Errors
    /// [`LpError`] when the outcome is unknown.
    fn execute<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>>;

    /// What became of an order whose outcome was not confirmed (an `Err`
    /// from `execute`, or a crash while it was in flight). An order the
    /// provider never received is `Rejected`.
    ///
    /// # Errors
    /// [`LpError`] while the provider still cannot say.
    fn recover<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>>;
}
