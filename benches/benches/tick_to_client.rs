//! End-to-end latency of a tick from the publisher to a client, over each
//! interface a client can use: gRPC `StreamRates`, the gateway's WebSocket
//! (`/v1/stream`) and its SSE stream (`/v1/rates/stream`), on loopback.
//!
//! Group `tick_to_client_e2e`, one id per interface and client count so the
//! interfaces sit side by side:
//!
//! - `grpc/1`, `ws/1`, `sse/1`: one streaming client;
//! - `grpc/10`, `ws/10`, `sse/10`: ten clients, each on its own connection
//!   and in its own task; timed until all ten have the rate;
//! - `grpc/nats-1`, ..., `sse/nats-10` and `grpc/redis-1`, ...: the same
//!   over the NATS and the Redis transport (a real nats-server or
//!   redis-server on loopback per case), so a tick crosses the engine
//!   between the publisher and the hub that feeds the streams.
//!
//! The stack is the one `fxcast serve` runs (see `common`): a rate core on
//! the memory transport (or NATS, Redis) serving gRPC, and the gateway talking to it over
//! loopback gRPC. gRPC clients connect to the core; WebSocket and SSE clients
//! connect to the gateway, so their path contains one more hop (core ->
//! gateway over gRPC, one upstream stream shared by every browser) plus JSON.
//! Every client holds a bearer token (`rates:subscribe=USD_JPY`, one hour)
//! checked once when its stream opens.
//!
//! One iteration is timed from just before `RatePublisher::publish` until the
//! client has read and decoded that rate (protobuf for gRPC, JSON for the
//! WebSocket and SSE; the sequence is checked). The timed path is: markup,
//! sequencing, protobuf encoding, transport publish, the hub's ingest task,
//! the stream task, framing, loopback TCP, and client decoding; for WebSocket
//! and SSE also the gateway's decoding, its one JSON encoding per tick and
//! its per-connection writers.
//!
//! Server, gateway, clients and the timing task share one 2-worker runtime.
//! With one client the timing task *is* the client; with ten, the last client
//! task wakes the timing task (`fxcast_benches::harness::Arrivals`), so that
//! case also contains one extra cross-task wake-up.
//!
//! After criterion, a percentile pass (see `fxcast_benches`) times 10,000
//! individual iterations per case and prints p50/p90/p99/max.

mod common;

use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::Stack;
use futures_util::{SinkExt, Stream, StreamExt};
use fxcast_benches::harness::{self, Arrivals, Bench};
use fxcast_proto::v1::{Rate, StreamRatesResponse, stream_rates_response::Event};
use fxcast_services::Config;
use tokio::{net::TcpStream, sync::Mutex, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tonic::Streaming;

const GROUP: &str = "tick_to_client_e2e";
const CLIENT_COUNTS: &[usize] = &[1, 10];

/// The transport between the publisher and the hub that feeds the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// In-process (ids `grpc/1`, ...).
    Memory,
    /// A real nats-server on loopback, JetStream on (ids `grpc/nats-1`, ...).
    Nats,
    /// A real redis-server on loopback (ids `grpc/redis-1`, ...).
    Redis,
}

impl Backend {
    const ALL: [Self; 3] = [Self::Memory, Self::Nats, Self::Redis];

    /// The case's parameter: the client count, after the backend's name
    /// for a network one.
    fn parameter(self, clients: usize) -> String {
        match self {
            Self::Memory => clients.to_string(),
            Self::Nats => format!("nats-{clients}"),
            Self::Redis => format!("redis-{clients}"),
        }
    }
}

/// How a client receives rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interface {
    Grpc,
    Ws,
    Sse,
}

impl Interface {
    const ALL: [Self; 3] = [Self::Grpc, Self::Ws, Self::Sse];

    fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Ws => "ws",
            Self::Sse => "sse",
        }
    }
}

/// What a client saw of one rate.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    sequence: u64,
    bid: String,
    ask: String,
}

impl From<&Rate> for Seen {
    fn from(rate: &Rate) -> Self {
        Self {
            sequence: rate.sequence,
            bid: rate.bid.clone(),
            ask: rate.ask.clone(),
        }
    }
}

impl Seen {
    /// From a `{"type":"rate",...}` JSON message (WebSocket frame or SSE data).
    fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON {text:?}: {e}"))?;
        let field = |name: &str| value[name].as_str().map(str::to_owned);
        match (value["sequence"].as_u64(), field("bid"), field("ask")) {
            (Some(sequence), Some(bid), Some(ask)) => Ok(Self { sequence, bid, ask }),
            _ => Err(format!("not a rate: {text}")),
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One client's open stream of `USD_JPY` rates.
enum Reader {
    Grpc(Streaming<StreamRatesResponse>),
    Ws(Box<Ws>),
    Sse { body: Body, buffer: Vec<u8> },
}

impl Reader {
    /// Connects a new client (its own connection) and opens a stream of the
    /// symbol. The server-side subscription is live on return.
    async fn open(stack: &Stack, interface: Interface, token: &str) -> Self {
        match interface {
            Interface::Grpc => {
                Self::Grpc(common::grpc_rate_stream(stack.grpc, common::SYMBOL, token).await)
            }
            Interface::Ws => {
                let url = format!("ws://{}/v1/stream?token={token}", stack.http);
                // A small read buffer, as the load generator uses:
                // tungstenite zero-fills its default 128 KiB one per read.
                let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4096);
                let (mut ws, _) =
                    tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                        .await
                        .expect("WebSocket connect");
                let subscribe =
                    serde_json::json!({"type": "subscribe", "symbols": [common::SYMBOL]});
                ws.send(Message::Text(subscribe.to_string().into()))
                    .await
                    .expect("send subscribe");
                // The acknowledgement comes once the subscription is live.
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"subscribed\"") => break,
                        Some(Ok(Message::Text(text))) if text.contains("\"heartbeat\"") => {}
                        other => panic!("expected the subscribe acknowledgement, got {other:?}"),
                    }
                }
                Self::Ws(Box::new(ws))
            }
            Interface::Sse => {
                let response = reqwest::Client::new()
                    .get(stack.url(&format!("/v1/rates/stream?symbols={}", common::SYMBOL)))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("SSE request");
                assert_eq!(response.status(), 200, "SSE stream refused");
                // The gateway subscribes before it answers with the headers.
                Self::Sse {
                    body: Box::pin(response.bytes_stream()),
                    buffer: Vec::new(),
                }
            }
        }
    }

    /// The next rate; `Ok(None)` when the stream ended, `Err` for anything
    /// other than a rate or a heartbeat (a gap, an error, a broken stream).
    async fn next_rate(&mut self) -> Result<Option<Seen>, String> {
        match self {
            Self::Grpc(stream) => match stream.message().await {
                Ok(Some(StreamRatesResponse {
                    event: Some(Event::Rate(rate)),
                })) => Ok(Some(Seen::from(&rate))),
                Ok(None) => Ok(None),
                other => Err(format!("{other:?}")),
            },
            Self::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        if text.starts_with("{\"type\":\"heartbeat\"") {
                            continue;
                        }
                        return Seen::from_json(&text).map(Some);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return Ok(None),
                    other => return Err(format!("{other:?}")),
                }
            },
            Self::Sse { body, buffer } => loop {
                if let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = buffer.drain(..end + 2).collect();
                    let event = std::str::from_utf8(&event).map_err(|e| e.to_string())?;
                    let mut kind = "message";
                    let mut data = None;
                    for line in event.lines() {
                        if let Some(value) = line.strip_prefix("event:") {
                            kind = value.trim_start();
                        } else if let Some(value) = line.strip_prefix("data:") {
                            data = Some(value.trim_start());
                        }
                    }
                    match (kind, data) {
                        ("rate", Some(data)) => return Seen::from_json(data).map(Some),
                        // Keep-alive comments and heartbeats.
                        (_, None) | ("heartbeat", _) => continue,
                        (kind, Some(data)) => return Err(format!("SSE {kind}: {data}")),
                    }
                }
                match body.next().await {
                    Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Ok(None),
                }
            },
        }
    }

    /// The next event, which must be a rate.
    async fn expect_rate(&mut self) -> Seen {
        match self.next_rate().await {
            Ok(Some(seen)) => seen,
            other => panic!("expected a rate on the stream, got {other:?}"),
        }
    }
}

/// A stack, the engine its transport runs on, and a token for streaming
/// clients.
struct Server {
    stack: Stack,
    token: String,
    _engine: Option<Box<dyn Send + Sync>>,
}

impl Server {
    async fn start(backend: Backend) -> Self {
        let (transport, engine) = match backend {
            Backend::Memory => (fxcast_app::TransportConfig::Memory, None),
            Backend::Nats => {
                let nats = fxcast_testkit::NatsServer::start();
                let config = fxcast_transport::nats::NatsConfig {
                    url: nats.url(),
                    ..Default::default()
                };
                let engine: Box<dyn Send + Sync> = Box::new(nats);
                (fxcast_app::TransportConfig::Nats(config), Some(engine))
            }
            Backend::Redis => {
                let redis = fxcast_testkit::RedisServer::start();
                let config = fxcast_transport::redis::RedisConfig {
                    url: redis.url(),
                    ..Default::default()
                };
                let engine: Box<dyn Send + Sync> = Box::new(redis);
                (fxcast_app::TransportConfig::Redis(config), Some(engine))
            }
        };
        let stack = Stack::start_on(Config::default(), transport).await;
        let token = stack.token(&format!("rates:subscribe={}", common::SYMBOL));
        Self {
            stack,
            token,
            _engine: engine,
        }
    }

    async fn open(&self, interface: Interface) -> Reader {
        Reader::open(&self.stack, interface, &self.token).await
    }

    async fn publish(&self) -> Rate {
        self.stack.publish().await
    }
}

/// Publishes one rate and reads every stream up to it, discarding whatever
/// came first (the snapshot of the latest rate a new stream starts with).
/// Returns the synchronised sequence.
async fn sync(server: &Server, readers: &mut [Reader]) -> u64 {
    let target = server.publish().await.sequence;
    for reader in readers {
        loop {
            let seen = reader.expect_rate().await;
            if seen.sequence == target {
                break;
            }
            assert!(
                seen.sequence < target,
                "stream ran ahead of the sync rate: {} > {target}",
                seen.sequence
            );
        }
    }
    target
}

/// One streaming client whose reader is the timing task itself.
struct OneClient {
    server: Server,
    reader: Mutex<Reader>,
}

impl OneClient {
    async fn start(backend: Backend, interface: Interface) -> Self {
        let server = Server::start(backend).await;
        let mut readers = [server.open(interface).await];
        sync(&server, &mut readers).await;
        let [reader] = readers;
        Self {
            server,
            reader: Mutex::new(reader),
        }
    }

    async fn round(&self, reader: &mut Reader) -> Duration {
        let start = Instant::now();
        let published = self.server.publish().await;
        let received = reader.expect_rate().await;
        let elapsed = start.elapsed();
        assert_eq!(
            received,
            Seen::from(&published),
            "the stream delivered a different rate than the one just published"
        );
        elapsed
    }

    async fn stop(self) {
        drop(self.reader);
        self.server.stack.stop().await;
    }
}

/// Several streaming clients, each reading in its own task; the last one to
/// receive a rate wakes the timing task.
struct ManyClients {
    server: Server,
    arrivals: Arc<Arrivals>,
    tasks: Vec<JoinHandle<()>>,
}

impl ManyClients {
    async fn start(backend: Backend, interface: Interface, clients: usize) -> Self {
        let server = Server::start(backend).await;
        let mut readers = Vec::with_capacity(clients);
        for _ in 0..clients {
            readers.push(server.open(interface).await);
        }
        let synced = sync(&server, &mut readers).await;
        let arrivals = Arc::new(Arrivals::new(clients));
        let tasks = readers
            .into_iter()
            .map(|reader| {
                tokio::spawn(client_reader(
                    reader,
                    synced,
                    Arc::clone(&arrivals),
                    server.stack.shutdown.clone(),
                ))
            })
            .collect();
        Self {
            server,
            arrivals,
            tasks,
        }
    }

    async fn round(&self) -> Duration {
        self.arrivals.reset();
        let start = Instant::now();
        self.server.publish().await;
        self.arrivals.all().await;
        start.elapsed()
    }

    async fn stop(self) {
        // Cancelling the shutdown token ends every stream, which ends the
        // readers.
        self.server.stack.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("client task");
        }
        self.server.stack.stop().await;
    }
}

async fn client_reader(
    mut reader: Reader,
    mut last: u64,
    arrivals: Arc<Arrivals>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        match reader.next_rate().await {
            Ok(Some(seen)) if seen.sequence == last + 1 => {
                last = seen.sequence;
                arrivals.arrive();
            }
            Ok(None) => return,
            _ if shutdown.is_cancelled() => return,
            // A gap, a rate out of order or an error mid-benchmark: the
            // round would never complete, so fail loudly.
            other => {
                eprintln!("client expected rate {} and got {other:?}", last + 1);
                std::process::exit(1);
            }
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one fixture per case, created once and held in an Arc"
)]
enum Fixture {
    One(OneClient),
    Many(ManyClients),
}

impl Bench for Fixture {
    const GROUP: &'static str = GROUP;
    type Case = (Backend, Interface, usize);

    fn cases() -> Vec<Self::Case> {
        Backend::ALL
            .iter()
            .flat_map(|&backend| {
                CLIENT_COUNTS.iter().flat_map(move |&clients| {
                    Interface::ALL.map(|interface| (backend, interface, clients))
                })
            })
            .collect()
    }

    fn id((backend, interface, clients): Self::Case) -> (&'static str, String) {
        (interface.name(), backend.parameter(clients))
    }

    async fn start((backend, interface, clients): Self::Case) -> Self {
        if clients == 1 {
            Self::One(OneClient::start(backend, interface).await)
        } else {
            Self::Many(ManyClients::start(backend, interface, clients).await)
        }
    }

    async fn round(&self) -> Duration {
        match self {
            Self::One(one) => one.round(&mut *one.reader.lock().await).await,
            Self::Many(many) => many.round().await,
        }
    }

    async fn stop(self) {
        match self {
            Self::One(one) => one.stop().await,
            Self::Many(many) => many.stop().await,
        }
    }
}

fn main() {
    harness::main::<Fixture>();
}
