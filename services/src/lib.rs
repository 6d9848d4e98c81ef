//! fxcast's domain core and its gRPC services.
//!
//! Quotes flow from a [`feed`] through [`pricing`] into the [`RatePublisher`],
//! which numbers them per symbol, records the [`LatestRates`] and publishes the
//! encoded rate once on the transport topic `rates.<SYMBOL>`. The [`RateHub`]
//! holds this process's single subscription per topic and fans ticks out to
//! `StreamRates` clients, with a bounded per-symbol history for resumption.
//!
//! # Layout
//! - [`symbols`], [`pricing`]: symbol conventions and markup.
//! - [`feed`]: the [`Feed`](feed::Feed) trait, the simulator, bitFlyer's
//!   realtime ticker, recording and replay, and per-symbol feed health
//!   (stale marking).
//! - `rates`, `publisher`, `hub`: ticks, the latest-rate cache, publishing and fan-out.
//! - [`stream`]: what every streaming interface (gRPC here, WebSocket and SSE
//!   in the gateway) shares: history rings, the stream cursor, the lag limit.
//! - `rate_service`: the tonic `RateService`.
//! - `server`: [`RatesCore`], which assembles all of the above and serves gRPC.
//! - [`quote`]: client input quoted in error messages, bounded.
//! - `words`: settings spelled as one of a few words (`FromStr`/`Display`).
//! - [`auth`]: scopes and the authenticated [`Caller`](auth::Caller) of a request.
//! - [`orders`]: order execution: validation, price check, liquidity
//!   provider, the SQLite journal and the tonic `OrderService`.

#![forbid(unsafe_code)]

pub mod auth;
mod config;
mod error;
pub mod feed;
mod hub;
pub mod orders;
pub mod pricing;
mod publisher;
pub mod quote;
mod rate_service;
mod rates;
mod sequences;
mod server;
pub mod stream;
pub mod symbols;
mod words;

pub use config::{Config, DEFAULT_SYMBOLS};
pub use error::Error;
pub use feed::FeedKind;
pub use fxcast_transport::BoxFuture;
pub use hub::{HubConfig, RateHub, SymbolSubscription};
pub use orders::{OrderExecutor, OrderJournal, OrderServiceImpl, OrdersConfig};
pub use publisher::RatePublisher;
pub use rate_service::{RateServiceImpl, StreamLimits};
pub use rates::{LatestRates, Tick, parse_price, rates_topic};
pub use sequences::{BLOCK as SEQUENCE_BLOCK, SEQUENCES_FILE};
pub use server::RatesCore;
pub use symbols::{SymbolSpec, SymbolTable};
