//! The mechanisms every streaming interface (gRPC `StreamRates`, the
//! gateway's WebSocket and SSE) shares, each implemented once:
//!
//! - [`ring`]: per-symbol history rings with a broadcast of new ticks
//!   ([`SymbolRings`]); a lagging reader is handed the newest held tick.
//! - [`cursor`]: a stream's position per symbol ([`StreamCursor`]): resume,
//!   drop duplicates, announce gaps, conflate after a lag.
//! - [`lag`]: when a stream that keeps lagging is closed ([`LagCounter`]).
//!
//! An interface subscribes to rings, feeds every backlog tick and live item
//! through its cursor and sends what comes back ([`Delivery`]), formatting
//! gaps and the slow-consumer close in its own wire format.

pub mod cursor;
pub mod lag;
pub mod ring;

pub use cursor::{Delivery, Gap, GapCause, StreamCursor};
pub use lag::{LAG_DEBOUNCE, LagCounter, LagLimit, SlowConsumer};
pub use ring::{Live, LiveTicks, RingSubscription, Sequenced, SymbolRings, TickRing};

/// A minimal tick for the modules' tests.
#[cfg(test)]
mod test_tick {
    use std::sync::Arc;

    use super::Sequenced;

    #[derive(Debug, PartialEq)]
    pub(super) struct Numbered(pub(super) &'static str, pub(super) u64);

    impl Sequenced for Numbered {
        fn symbol(&self) -> &str {
            self.0
        }

        fn sequence(&self) -> u64 {
            self.1
        }
    }

    pub(super) fn tick(symbol: &'static str, sequence: u64) -> Arc<Numbered> {
        Arc::new(Numbered(symbol, sequence))
    }
}
