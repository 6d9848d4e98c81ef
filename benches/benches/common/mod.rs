//! The whole fxcast stack in the bench process, as `fxcast serve` runs it: a
//! rate core (no feed, memory transport, data directory in a fresh temporary
//! directory) serving gRPC on `127.0.0.1:0`, and the gateway serving HTTP on
//! `127.0.0.1:0`, talking to the core over loopback gRPC.
//!
//! Also the harness every end-to-end bench runs its cases with: a fixture
//! implements [`Rounds`], and [`bench_case`] / [`percentile_case`] time it
//! for criterion and for the percentile pass.
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

use criterion::{BenchmarkGroup, BenchmarkId, measurement::WallTime};
use fxcast_benches::{LatencySummary, PercentilePass};
use fxcast_proto::v1::Rate;
use fxcast_services::{Config, FeedKind, RatesCore, auth::Scopes, feed::Quote};
use rust_decimal::Decimal;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// The one symbol every bench uses.
pub const SYMBOL: &str = "USD_JPY";
/// Long enough for any run; streams end when their token expires.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The runtime every end-to-end bench uses: two workers (this machine has
/// two cores) shared by server, gateway, clients and the timing task.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A bench fixture that runs its timed operation round after round.
pub trait Rounds: Send + Sync + 'static {
    /// Runs `iters` rounds and hands each round's time to `record`.
    fn rounds(
        &self,
        iters: u64,
        record: impl FnMut(Duration) + Send,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// One criterion case: each sample runs its rounds on the runtime's workers
/// (not on the bench thread) and reports their summed time.
pub fn bench_case<F: Rounds>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    rt: &Runtime,
    fixture: &Arc<F>,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let fixture = Arc::clone(fixture);
            rt.block_on(rt.spawn(async move {
                let mut total = Duration::ZERO;
                fixture.rounds(iters, |d| total += d).await;
                total
            }))
            .expect("bench task")
        });
    });
}

/// One case of the percentile pass: `pass.warmup` untimed rounds, then
/// `pass.samples` rounds timed one by one; prints their distribution as `id`.
pub fn percentile_case<F: Rounds>(rt: &Runtime, pass: &PercentilePass, id: &str, fixture: &Arc<F>) {
    let (warmup, samples) = (pass.warmup as u64, pass.samples);
    let fixture = Arc::clone(fixture);
    let mut latencies = rt
        .block_on(rt.spawn(async move {
            fixture.rounds(warmup, drop).await;
            let mut latencies = Vec::with_capacity(samples);
            fixture.rounds(samples as u64, |d| latencies.push(d)).await;
            latencies
        }))
        .expect("percentile task");
    let summary = LatencySummary::from_samples(&mut latencies).expect("samples");
    pass.print(id, &summary);
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
    pub async fn start(mut config: Config) -> Self {
        config.feed = FeedKind::None;
        config.symbols = vec![SYMBOL.into()];
        let stack = fxcast_testkit::Stack::start(config).await;
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
