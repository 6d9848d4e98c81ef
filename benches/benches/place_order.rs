//! Latency of placing one order end to end, through the durable journal.
//!
//! Group `place_order_e2e`:
//!
//! - `grpc/full`: `OrderService/PlaceOrder` over loopback gRPC, journal
//!   `synchronous=FULL` (the default: every commit is synced to disk);
//! - `rest/full`: `POST /v1/orders` on the gateway, which calls the same gRPC
//!   service over loopback, same journal;
//! - `grpc/normal`: gRPC with `--journal-sync normal` (synced at checkpoints:
//!   survives `kill -9`, not a power loss), to show what durability costs.
//!
//! The stack is the one `fxcast serve` runs (see `common`); its data
//! directory, and so the SQLite journal, is a temporary directory on the
//! system's temporary-files disk (ext4 on the machine the report was made
//! on). The liquidity provider is the built-in simulated one with no added
//! latency, so the time is fxcast's own: authentication, validation, the
//! price check against the latest rate, the journal's two commits (accepted,
//! then filled), the LP call, and the transport.
//!
//! One iteration is one order at a time from one client (a single HTTP/2
//! connection for gRPC; one keep-alive HTTP/1.1 connection for REST), timed
//! from the call to the decoded response, which must say FILLED. Each order
//! has a fresh `client_order_id` (a retry with the same id would be answered
//! from the journal without executing again). A background task republishes
//! the same quote every 100 ms so the price never goes stale; orders buy at
//! its ask.
//!
//! After criterion, a percentile pass (see `fxcast_benches`) times 10,000
//! individual orders per case and prints p50/p90/p99/max.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::Stack;
use fxcast_benches::harness::{self, Bench};
use fxcast_proto::v1::{
    OrderStatus, PlaceOrderRequest, Side, order_service_client::OrderServiceClient,
};
use fxcast_services::{Config, orders::JournalSync};
use rust_decimal::Decimal;
use tokio::task::JoinHandle;
use tonic::{Request, transport::Channel};

const GROUP: &str = "place_order_e2e";
const BID: &str = "151.500";
const ASK: &str = "151.508";

/// How an order reaches the order service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interface {
    Grpc,
    Rest,
}

/// The cases: interface and journal durability.
const CASES: &[(Interface, JournalSync)] = &[
    (Interface::Grpc, JournalSync::Full),
    (Interface::Rest, JournalSync::Full),
    (Interface::Grpc, JournalSync::Normal),
];

fn names(interface: Interface, sync: JournalSync) -> (&'static str, &'static str) {
    let interface = match interface {
        Interface::Grpc => "grpc",
        Interface::Rest => "rest",
    };
    let sync = match sync {
        JournalSync::Full => "full",
        JournalSync::Normal => "normal",
    };
    (interface, sync)
}

/// A stack with a fresh price and one client.
struct Fixture {
    stack: Arc<Stack>,
    interface: Interface,
    grpc: OrderServiceClient<Channel>,
    http: reqwest::Client,
    bearer: String,
    orders: AtomicU64,
    refresher: JoinHandle<()>,
}

impl Bench for Fixture {
    const GROUP: &'static str = GROUP;
    type Case = (Interface, JournalSync);

    fn cases() -> Vec<Self::Case> {
        CASES.to_vec()
    }

    fn id((interface, sync): Self::Case) -> (&'static str, String) {
        let (function, parameter) = names(interface, sync);
        (function, parameter.to_owned())
    }

    async fn start((interface, sync): Self::Case) -> Self {
        let mut config = Config::default();
        config.orders.journal_sync = sync;
        let stack = Arc::new(Stack::start(config).await);
        let (bid, ask): (Decimal, Decimal) = (BID.parse().expect("bid"), ASK.parse().expect("ask"));
        stack.publish_quote(bid, ask).await;
        // Keeps the price younger than the 2 s max age, as a live feed would.
        let refresher = tokio::spawn({
            let stack = Arc::clone(&stack);
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = every.tick() => { stack.publish_quote(bid, ask).await; }
                        () = stack.shutdown.cancelled() => return,
                    }
                }
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stack.grpc))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        let bearer = format!("Bearer {}", stack.token("orders:place orders:read"));
        let fixture = Self {
            stack,
            interface,
            grpc: OrderServiceClient::new(channel),
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .expect("HTTP client"),
            bearer,
            orders: AtomicU64::new(0),
            refresher,
        };
        // The first order opens the connections.
        fixture.place().await;
        fixture
    }

    async fn round(&self) -> Duration {
        self.place().await
    }

    async fn stop(self) {
        self.stack.shutdown.cancel();
        self.refresher.await.expect("refresher");
        drop((self.grpc, self.http));
        let stack = Arc::into_inner(self.stack).expect("nothing else holds the stack");
        stack.stop().await;
    }
}

impl Fixture {
    /// Places one buy at the ask and checks that it filled.
    async fn place(&self) -> Duration {
        let n = self.orders.fetch_add(1, Ordering::Relaxed);
        let client_order_id = format!("bench-{n}");
        match self.interface {
            Interface::Grpc => {
                let mut request = Request::new(PlaceOrderRequest {
                    client_order_id,
                    symbol: common::SYMBOL.into(),
                    side: Side::Buy as i32,
                    quantity: "1000".into(),
                    price: ASK.into(),
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("authorization", self.bearer.parse().expect("ascii token"));
                let mut client = self.grpc.clone();
                let start = Instant::now();
                let order = client.place_order(request).await.expect("PlaceOrder");
                let elapsed = start.elapsed();
                let order = order.into_inner();
                assert_eq!(
                    order.status(),
                    OrderStatus::Filled,
                    "order not filled: {}",
                    order.message
                );
                elapsed
            }
            Interface::Rest => {
                let body = serde_json::json!({
                    "client_order_id": client_order_id,
                    "symbol": common::SYMBOL,
                    "side": "buy",
                    "quantity": "1000",
                    "price": ASK,
                });
                let start = Instant::now();
                let response = self
                    .http
                    .post(self.stack.url("/v1/orders"))
                    .header("authorization", &self.bearer)
                    .json(&body)
                    .send()
                    .await
                    .expect("POST /v1/orders");
                let status = response.status();
                let order: serde_json::Value = response.json().await.expect("order JSON");
                let elapsed = start.elapsed();
                assert_eq!(status, 200, "POST /v1/orders: {order}");
                assert_eq!(order["status"], "filled", "order not filled: {order}");
                elapsed
            }
        }
    }
}

fn main() {
    harness::main::<Fixture>();
}
