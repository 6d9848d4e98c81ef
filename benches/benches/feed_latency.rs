//! Feed-to-subscriber latency: a bitFlyer ticker frame on the WebSocket to
//! the rate in a gRPC `StreamRates` client.
//!
//! Group `bitflyer_ws_to_grpc`, case `ticker/1`:
//!
//! A local stand-in for bitFlyer's realtime API (tokio-tungstenite on
//! `127.0.0.1:0`, the real JSON-RPC 2.0 protocol: subscribe acknowledgement,
//! then `channelMessage` ticker notifications in bitFlyer's format) feeds a
//! [`RatesCore`] running `--feed bitflyer` against it (symbol `BTC_JPY`, no
//! markup, memory transport). One streaming gRPC client reads the symbol over
//! loopback TCP with a bearer token.
//!
//! One iteration is timed from just before the fake server writes a ticker
//! frame (with a new best bid) until the client's `stream.message()` returns
//! the rate with that bid. The timed path is: WebSocket write and loopback
//! TCP, the feed's frame read, JSON-RPC classification and exact decimal
//! decoding, the feed channel, the health supervisor, markup, sequencing and
//! encoding, the transport publish, the hub (decode, history, broadcast), the
//! stream task, tonic/HTTP/2, loopback TCP and client decoding. It is an
//! upper bound of "frame received by fxcast to rate received by the client"
//! by the fake server's write and one loopback hop (a few microseconds).
//!
//! Server, feed, fake upstream and client share one 2-worker runtime (this
//! machine has two cores). After criterion, a percentile pass (see
//! `fxcast_benches`) times 10,000 individual iterations and prints
//! p50/p90/p99/max.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod common;

use futures_util::{SinkExt, StreamExt};
use fxcast_benches::harness::{self, Bench};
use fxcast_proto::v1::{Rate, StreamRatesResponse, stream_rates_response::Event};
use fxcast_services::{
    Config, FeedKind, RatesCore,
    auth::{Scope, Scopes},
    feed::BitflyerConfig,
};
use fxcast_transport::{MemoryTransport, Transport};
use tempfile::TempDir;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex,
    task::JoinHandle,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

const GROUP: &str = "bitflyer_ws_to_grpc";
const SYMBOL: &str = "BTC_JPY";
/// Long enough for any run: nothing goes stale, pings and idle checks stay
/// out of the measurement.
const HOUR: Duration = Duration::from_secs(3600);

/// A ticker notification exactly as bitFlyer sends it.
fn ticker(bid: u64, tick_id: u64) -> String {
    let ask = bid + 2500;
    format!(
        r#"{{"jsonrpc":"2.0","method":"channelMessage","params":{{"channel":"lightning_ticker_BTC_JPY","message":{{"product_code":"BTC_JPY","state":"RUNNING","timestamp":"2025-03-14T01:30:00.1180128Z","tick_id":{tick_id},"best_bid":{bid}.0,"best_ask":{ask}.0,"best_bid_size":0.01,"best_ask_size":0.0455,"total_bid_depth":421.10836527,"total_ask_depth":450.67930478,"market_bid_size":0.0,"market_ask_size":0.0,"ltp":{ask}.0,"volume":1916.28004622,"volume_by_product":1916.28004622}}}}}}"#
    )
}

struct Fixture {
    core: Arc<RatesCore>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), fxcast_services::Error>>,
    /// The fake bitFlyer's side of the feed's WebSocket.
    upstream: Mutex<WebSocketStream<TcpStream>>,
    stream: Mutex<Streaming<StreamRatesResponse>>,
    ticks: AtomicU64,
    _data_dir: TempDir,
}

/// The rate core's config: `--feed bitflyer` against `endpoint`.
fn config(endpoint: String, data_dir: &TempDir) -> Config {
    Config {
        feed: FeedKind::Bitflyer(BitflyerConfig {
            endpoint,
            ping_interval: HOUR,
            idle_timeout: HOUR,
            ..Default::default()
        }),
        symbols: vec![SYMBOL.into()],
        stale_after: HOUR,
        data_dir: data_dir.path().to_owned(),
        ..Default::default()
    }
}

/// Accepts the feed's connection on the fake bitFlyer and acknowledges its
/// subscription as bitFlyer does.
async fn accept_feed(fake: TcpListener) -> WebSocketStream<TcpStream> {
    let (socket, _) = fake.accept().await.expect("feed connects");
    socket.set_nodelay(true).expect("nodelay");
    let mut upstream = tokio_tungstenite::accept_async(socket)
        .await
        .expect("handshake");
    let Some(Ok(Message::Text(request))) = upstream.next().await else {
        panic!("expected the subscribe request");
    };
    assert!(request.contains("lightning_ticker_BTC_JPY"), "{request}");
    let id: String = request
        .split("\"id\":")
        .nth(1)
        .expect("request id")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let ack = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":true}}"#);
    upstream.send(Message::text(ack)).await.expect("ack");
    upstream
}

/// Serves the core's gRPC on loopback and opens a client stream of the
/// symbol.
async fn client_stream(
    core: &Arc<RatesCore>,
    shutdown: &CancellationToken,
) -> (
    JoinHandle<Result<(), fxcast_services::Error>>,
    Streaming<StreamRatesResponse>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn({
        let core = Arc::clone(core);
        let shutdown = shutdown.clone();
        async move { core.serve_grpc(listener, shutdown.cancelled_owned()).await }
    });
    let scope: Scope = format!("rates:subscribe={SYMBOL}").parse().expect("scope");
    let token = core
        .authority()
        .issue("bench", Scopes(vec![scope]), Some(HOUR))
        .expect("issue token")
        .token;
    (task, common::grpc_rate_stream(addr, SYMBOL, &token).await)
}

impl Bench for Fixture {
    const GROUP: &'static str = GROUP;
    type Case = ();

    fn cases() -> Vec<Self::Case> {
        vec![()]
    }

    fn id((): Self::Case) -> (&'static str, String) {
        ("ticker", "1".to_owned())
    }

    async fn start((): Self::Case) -> Self {
        let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let endpoint = format!("ws://{}/json-rpc", fake.local_addr().expect("addr"));
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::default());
        let shutdown = CancellationToken::new();
        let core = RatesCore::start(config(endpoint, &data_dir), transport, shutdown.clone())
            .await
            .expect("rate core");
        let core = Arc::new(core);
        let upstream = accept_feed(fake).await;
        let (task, stream) = client_stream(&core, &shutdown).await;
        let fixture = Self {
            core,
            shutdown,
            task,
            upstream: Mutex::new(upstream),
            stream: Mutex::new(stream),
            ticks: AtomicU64::new(0),
            _data_dir: data_dir,
        };
        fixture.round().await;
        fixture
    }

    /// Sends one ticker and waits for its rate; returns the elapsed time.
    async fn round(&self) -> Duration {
        let mut upstream = self.upstream.lock().await;
        let mut stream = self.stream.lock().await;
        let n = self.ticks.fetch_add(1, Ordering::Relaxed);
        // A new bid every time, so each frame is a distinct rate.
        let bid = 12_000_000 + n % 1_000_000;
        let frame = Message::text(ticker(bid, n + 1));
        let expected = bid.to_string();
        let start = Instant::now();
        upstream.send(frame).await.expect("send ticker");
        loop {
            let rate = next_rate(&mut stream).await;
            // The first round may see the stream's initial snapshot first.
            if rate.bid == expected {
                break;
            }
        }
        start.elapsed()
    }

    async fn stop(self) {
        drop(self.stream);
        drop(self.upstream);
        assert!(self.core.is_ready());
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within 10 s")
            .expect("server task")
            .expect("server");
    }
}

async fn next_rate(stream: &mut Streaming<StreamRatesResponse>) -> Rate {
    match stream.message().await {
        Ok(Some(StreamRatesResponse {
            event: Some(Event::Rate(rate)),
        })) => {
            assert!(!rate.stale, "the feed went stale mid-benchmark: {rate:?}");
            rate
        }
        other => panic!("expected a rate on the stream, got {other:?}"),
    }
}

fn main() {
    harness::main::<Fixture>();
}
