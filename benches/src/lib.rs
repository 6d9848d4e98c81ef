//! fxcast's benchmarks and load generators.
//!
//! # Layout
//! - [`percentiles`]: the per-iteration percentile pass every bench binary
//!   runs after criterion ([`PercentilePass`], [`LatencySummary`]).
//! - [`harness`] (feature `harness`, on by default): the [`harness::Bench`]
//!   trait a bench fixture implements, the `main` that runs its cases for
//!   criterion and for the percentile pass, and [`harness::Arrivals`], the
//!   fan-out benches' count of receivers that have a round's message.
//! - [`load`]: the load generators `fxcast loadtest` runs against a server:
//!   [`load::orders`] (PlaceOrder throughput, closed or open loop) and
//!   [`load::rates`] (N WebSocket, SSE or gRPC subscribers), with their HDR
//!   histograms ([`load::histogram`]) and the server's memory from /proc
//!   ([`load::proc`]).
//! - `benches/`: the criterion benches (`transport`, `tick_to_client`,
//!   `place_order`, `feed_latency`, `tokens`); `benches/common` is the
//!   in-process stack the end-to-end ones share.
//! - `src/bin/bench-report.rs` (feature `report`): builds
//!   `docs/BENCHMARKS.md` and its plots from one run's results.
//!
//! `fxcast` depends on this crate without default features, so the binary
//! carries the load generators but neither criterion nor plotters.

#[cfg(feature = "harness")]
pub mod harness;
pub mod load;
pub mod percentiles;

pub use percentiles::{DEFAULT_PERCENTILE_SAMPLES, LatencySummary, PercentilePass, micros};
