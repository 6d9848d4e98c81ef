//! End-to-end latency of `StreamRates` over loopback gRPC.
//!
//! Group `grpc_stream_rates_e2e`:
//!
//! - `memory/1`: one streaming client;
//! - `memory/10`: ten streaming clients, each on its own HTTP/2 connection
//!   and in its own task; timed until all ten have the rate.
//!
//! A [`RatesCore`] (no feed, symbol `USD_JPY`, memory transport, data
//! directory in a fresh temporary directory) serves gRPC on `127.0.0.1:0`;
//! the clients connect with tonic over real TCP, each with a bearer token
//! (`rates:subscribe=USD_JPY`, one hour) issued by the core's authority (the
//! token is checked once when the stream opens, not per message). One
//! iteration is timed from just before `RatePublisher::publish` until the
//! client's `stream.message()` returns that rate (its sequence is checked).
//! The timed path is: markup, sequencing, protobuf encoding, transport publish,
//! the hub's ingest task (decode, history, local broadcast), the stream task,
//! tonic/HTTP/2 framing, loopback TCP, and client decoding.
//!
//! Server, clients and the timing task share one 2-worker multi-threaded
//! runtime (this machine has two cores). With one client the timing task *is*
//! the client; with ten, the last client task wakes the timing task through a
//! [`Notify`], so that case also contains one extra cross-task wake-up.
//!
//! After criterion, a percentile pass (see `fxcast_benches`) times 10,000
//! individual iterations per case and prints p50/p90/p99/max.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use criterion::{BenchmarkId, Criterion};
use fxcast_benches::{LatencySummary, PercentilePass};
use fxcast_proto::v1::{
    Rate, StreamRatesRequest, StreamRatesResponse, rate_service_client::RateServiceClient,
    stream_rates_response::Event,
};
use fxcast_services::{
    Config, FeedKind, RatesCore,
    auth::{Scope, Scopes},
    feed::Quote,
};
use fxcast_transport::{MemoryTransport, Transport};
use rust_decimal::Decimal;
use tempfile::TempDir;
use tokio::{
    net::TcpListener,
    runtime::Runtime,
    sync::{Mutex, Notify},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Streaming, metadata::MetadataValue, transport::Channel};

const GROUP: &str = "grpc_stream_rates_e2e";
const SYMBOL: &str = "USD_JPY";
const CLIENT_COUNTS: &[usize] = &[1, 10];
/// Long enough for any run; streams end when their token expires.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn full_id(clients: usize) -> String {
    format!("{GROUP}/memory/{clients}")
}

/// A rate core serving gRPC on loopback.
struct Server {
    core: Arc<RatesCore>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), fxcast_services::Error>>,
    quotes: AtomicU64,
    /// `authorization` metadata value for streaming clients.
    bearer: MetadataValue<tonic::metadata::Ascii>,
    /// Keys, API key and revocation store of this run; removed on drop.
    _data_dir: TempDir,
}

impl Server {
    async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let config = Config {
            feed: FeedKind::None,
            symbols: vec![SYMBOL.into()],
            data_dir: data_dir.path().to_owned(),
            ..Default::default()
        };
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::default());
        let shutdown = CancellationToken::new();
        let core = Arc::new(
            RatesCore::start(config, transport, shutdown.clone())
                .await
                .expect("rate core"),
        );
        let scope: Scope = format!("rates:subscribe={SYMBOL}").parse().expect("scope");
        let token = core
            .authority()
            .issue("bench", Scopes(vec![scope]), Some(TOKEN_TTL))
            .expect("issue token")
            .token;
        let bearer = format!("Bearer {token}").parse().expect("ascii token");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn({
            let core = Arc::clone(&core);
            let shutdown = shutdown.clone();
            async move { core.serve_grpc(listener, shutdown.cancelled_owned()).await }
        });
        Self {
            core,
            addr,
            shutdown,
            task,
            quotes: AtomicU64::new(0),
            bearer,
            _data_dir: data_dir,
        }
    }

    /// Publishes the next quote (USD_JPY, 3 decimals, prices walking within
    /// a small range, bid < ask) and returns the published rate.
    async fn publish(&self) -> Rate {
        let n = self.quotes.fetch_add(1, Ordering::Relaxed);
        let bid = Decimal::new(151_500 + (n % 97) as i64, 3);
        let ask = bid + Decimal::new(8 + (n % 3) as i64, 3);
        let quote = Quote {
            symbol: SYMBOL.into(),
            bid,
            ask,
            source_time: SystemTime::now(),
        };
        let tick = self
            .core
            .publisher()
            .publish(quote, "bench")
            .await
            .expect("publish");
        tick.rate.clone()
    }

    /// Connects a new client (its own HTTP/2 connection) and opens a stream
    /// of the symbol. The server-side subscription is live on return.
    async fn open_stream(&self) -> Streaming<StreamRatesResponse> {
        let mut client: RateServiceClient<Channel> =
            RateServiceClient::connect(format!("http://{}", self.addr))
                .await
                .expect("connect");
        let mut request = Request::new(StreamRatesRequest {
            symbols: vec![SYMBOL.into()],
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        client
            .stream_rates(request)
            .await
            .expect("stream_rates")
            .into_inner()
    }

    /// Ends the streams and the server.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within 10 s")
            .expect("server task")
            .expect("server");
    }
}

/// The next event of `stream`, which must be a rate.
async fn next_rate(stream: &mut Streaming<StreamRatesResponse>) -> Rate {
    match stream.message().await {
        Ok(Some(StreamRatesResponse {
            event: Some(Event::Rate(rate)),
        })) => rate,
        other => panic!("expected a rate on the stream, got {other:?}"),
    }
}

/// Publishes one rate and reads every stream up to it, discarding whatever
/// came first (the snapshot of the latest rate a new stream starts with).
/// Returns the synchronised sequence.
async fn sync(server: &Server, streams: &mut [Streaming<StreamRatesResponse>]) -> u64 {
    let target = server.publish().await.sequence;
    for stream in streams {
        loop {
            let rate = next_rate(stream).await;
            if rate.sequence == target {
                break;
            }
            assert!(
                rate.sequence < target,
                "stream ran ahead of the sync rate: {} > {target}",
                rate.sequence
            );
        }
    }
    target
}

/// One streaming client whose reader is the timing task itself.
struct OneClient {
    server: Server,
    stream: Mutex<Streaming<StreamRatesResponse>>,
}

impl OneClient {
    async fn start() -> Self {
        let server = Server::start().await;
        let mut streams = [server.open_stream().await];
        sync(&server, &mut streams).await;
        let [stream] = streams;
        Self {
            server,
            stream: Mutex::new(stream),
        }
    }

    async fn round(&self, stream: &mut Streaming<StreamRatesResponse>) -> Duration {
        let start = Instant::now();
        let published = self.server.publish().await;
        let received = next_rate(stream).await;
        let elapsed = start.elapsed();
        check(&published, &received);
        elapsed
    }

    async fn stop(self) {
        drop(self.stream);
        self.server.stop().await;
    }
}

fn check(published: &Rate, received: &Rate) {
    assert_eq!(
        (received.sequence, &received.bid, &received.ask),
        (published.sequence, &published.bid, &published.ask),
        "the stream delivered a different rate than the one just published"
    );
}

/// Several streaming clients, each reading in its own task; the last one to
/// receive a rate wakes the timing task.
struct ManyClients {
    server: Server,
    received: Arc<AtomicUsize>,
    done: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl ManyClients {
    async fn start(clients: usize) -> Self {
        let server = Server::start().await;
        let mut streams = Vec::with_capacity(clients);
        for _ in 0..clients {
            streams.push(server.open_stream().await);
        }
        let synced = sync(&server, &mut streams).await;
        let received = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Notify::new());
        let tasks = streams
            .into_iter()
            .map(|stream| {
                tokio::spawn(client_reader(
                    stream,
                    synced,
                    clients,
                    Arc::clone(&received),
                    Arc::clone(&done),
                    server.shutdown.clone(),
                ))
            })
            .collect();
        Self {
            server,
            received,
            done,
            tasks,
        }
    }

    async fn round(&self) -> Duration {
        // The previous round's last increment happened before its notify.
        self.received.store(0, Ordering::Relaxed);
        let start = Instant::now();
        self.server.publish().await;
        self.done.notified().await;
        start.elapsed()
    }

    async fn stop(self) {
        // Cancelling the shutdown token ends every stream with UNAVAILABLE,
        // which ends the readers.
        self.server.shutdown.cancel();
        for task in self.tasks {
            task.await.expect("client task");
        }
        self.server.stop().await;
    }
}

async fn client_reader(
    mut stream: Streaming<StreamRatesResponse>,
    mut last: u64,
    clients: usize,
    received: Arc<AtomicUsize>,
    done: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        match stream.message().await {
            Ok(Some(StreamRatesResponse {
                event: Some(Event::Rate(rate)),
            })) if rate.sequence == last + 1 => {
                last = rate.sequence;
                if received.fetch_add(1, Ordering::AcqRel) + 1 == clients {
                    done.notify_one();
                }
            }
            Ok(None) => return,
            Err(_) if shutdown.is_cancelled() => return,
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

impl Fixture {
    async fn start(clients: usize) -> Self {
        if clients == 1 {
            Self::One(OneClient::start().await)
        } else {
            Self::Many(ManyClients::start(clients).await)
        }
    }

    /// Runs `iters` rounds and returns each round's time to `record`.
    async fn rounds(&self, iters: u64, mut record: impl FnMut(Duration)) {
        match self {
            Self::One(one) => {
                let mut stream = one.stream.lock().await;
                for _ in 0..iters {
                    record(one.round(&mut stream).await);
                }
            }
            Self::Many(many) => {
                for _ in 0..iters {
                    record(many.round().await);
                }
            }
        }
    }

    async fn stop(self) {
        match self {
            Self::One(one) => one.stop().await,
            Self::Many(many) => many.stop().await,
        }
    }
}

fn bench_stream_rates(c: &mut Criterion) {
    let mut group = c.benchmark_group(GROUP);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    let rt = runtime();
    for &clients in CLIENT_COUNTS {
        let fixture = Arc::new(rt.block_on(Fixture::start(clients)));
        group.bench_function(BenchmarkId::new("memory", clients), |b| {
            b.iter_custom(|iters| {
                let fixture = Arc::clone(&fixture);
                rt.block_on(rt.spawn(async move {
                    let mut total = Duration::ZERO;
                    fixture.rounds(iters, |d| total += d).await;
                    total
                }))
                .expect("bench task")
            });
        });
        let fixture = Arc::into_inner(fixture).expect("no bench task holds the fixture");
        rt.block_on(fixture.stop());
    }
    group.finish();
}

fn percentiles(pass: &PercentilePass) {
    pass.print_heading(GROUP);
    let rt = runtime();
    for &clients in CLIENT_COUNTS {
        let id = full_id(clients);
        if !pass.wants(&id) {
            continue;
        }
        let fixture = Arc::new(rt.block_on(Fixture::start(clients)));
        let (warmup, samples) = (pass.warmup as u64, pass.samples);
        let task_fixture = Arc::clone(&fixture);
        let mut latencies = rt
            .block_on(rt.spawn(async move {
                task_fixture.rounds(warmup, drop).await;
                let mut latencies = Vec::with_capacity(samples);
                task_fixture
                    .rounds(samples as u64, |d| latencies.push(d))
                    .await;
                latencies
            }))
            .expect("percentile task");
        let summary = LatencySummary::from_samples(&mut latencies).expect("samples");
        pass.print(&id, &summary);
        let fixture = Arc::into_inner(fixture).expect("no task holds the fixture");
        rt.block_on(fixture.stop());
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_stream_rates(&mut criterion);
    criterion.final_summary();
    if let Some(pass) = PercentilePass::from_env_and_args() {
        percentiles(&pass);
    }
}
