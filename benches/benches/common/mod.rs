//! The whole fxcast stack in the bench process, as `fxcast serve` runs it: a
//! rate core (no feed, memory transport, data directory in a fresh temporary
//! directory) serving gRPC on `127.0.0.1:0`, and the gateway serving HTTP on
//! `127.0.0.1:0`, talking to the core over loopback gRPC.
//!
//! Also [`grpc_rate_stream`], the streaming gRPC client the benches read
//! rates with. (The harness that times the fixtures is
//! `fxcast_benches::harness`.)
//!
//! Shared by the end-to-end benches (`tick_to_client`, `place_order`,
//! `feed_latency`); each includes it with `mod common;` and uses what it
//! needs.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use fxcast_proto::{
    Bearer,
    v1::{Rate, StreamRatesRequest, StreamRatesResponse, rate_service_client::RateServiceClient},
};
use fxcast_services::{Config, FeedKind, RatesCore, auth::Scopes, feed::Quote};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Endpoint};

/// The one symbol every bench uses.
pub const SYMBOL: &str = "USD_JPY";
/// Long enough for any run; streams end when their token expires.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A gRPC `StreamRates` of `symbol` on a new connection to `addr`, sending
/// `token`.
pub async fn grpc_rate_stream(
    addr: SocketAddr,
    symbol: &str,
    token: &str,
) -> Streaming<StreamRatesResponse> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let bearer = Bearer::token(token).expect("ascii token");
    RateServiceClient::new(fxcast_proto::authed(channel, bearer))
        .stream_rates(StreamRatesRequest {
            symbols: vec![symbol.into()],
            ..Default::default()
        })
        .await
        .expect("stream_rates")
        .into_inner()
}

/// Rate core, gRPC server and gateway on loopback (the testkit's stack),
/// with the bench's quote walk.
pub struct Stack {
    pub core: Arc<RatesCore>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub shutdown: CancellationToken,
    stack: fxcast_testkit::Stack,
    quotes: AtomicU64,
}

impl Stack {
    /// Starts the stack with `config` (its feed and symbols are set here)
    /// and waits until the gateway is ready, which needs one published rate.
    pub async fn start(config: Config) -> Self {
        Self::start_on(config, fxcast_app::TransportConfig::Memory).await
    }

    /// [`Stack::start`] on `transport`.
    pub async fn start_on(mut config: Config, transport: fxcast_app::TransportConfig) -> Self {
        config.feed = FeedKind::None;
        config.symbols = vec![SYMBOL.into()];
        let stack = fxcast_testkit::Stack::start_on(config, Default::default(), transport).await;
        let stack = Self {
            core: Arc::clone(&stack.core),
            grpc: stack.addr,
            http: stack.http,
            shutdown: stack.stop.clone(),
            stack,
            quotes: AtomicU64::new(0),
        };
        stack.publish().await;
        stack.stack.wait_ready().await;
        stack
    }

    /// A token for `scopes`, issued by the core's authority.
    pub fn token(&self, scopes: &str) -> String {
        let scopes: Scopes = scopes.parse().expect("scopes");
        self.core
            .authority()
            .issue("bench", scopes, Some(TOKEN_TTL))
            .expect("issue token")
            .token
    }

    /// `http://<gateway><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Publishes the next quote (3 decimals, prices walking within a small
    /// range, bid < ask) and returns the published rate.
    pub async fn publish(&self) -> Rate {
        let n = self.quotes.fetch_add(1, Ordering::Relaxed);
        let bid = Decimal::new(151_500 + (n % 97) as i64, 3);
        let ask = bid + Decimal::new(8 + (n % 3) as i64, 3);
        self.publish_quote(bid, ask).await
    }

    /// Publishes `bid`/`ask` and returns the published rate.
    pub async fn publish_quote(&self, bid: Decimal, ask: Decimal) -> Rate {
        let quote = Quote {
            symbol: SYMBOL.into(),
            bid,
            ask,
            source_time: SystemTime::now(),
        };
        self.core
            .publisher()
            .publish(quote, "bench")
            .await
            .expect("publish")
            .rate
            .clone()
    }

    /// Ends the streams and both servers.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.stack.handle)
            .await
            .expect("servers stop within 10 s")
            .expect("server task")
            .expect("servers");
    }
}
