//! FIX liquidity provider latencies: an LP quote to a gRPC client, and a
//! PlaceOrder round trip through the FIX LP.
//!
//! Group `fix_lp`:
//!
//! - `quote/1`: the fake LP writes one MarketDataIncrementalRefresh (X)
//!   with a new best bid on the FIX session; timed until a gRPC
//!   `StreamRates` client receives the rate with that bid. The timed path:
//!   loopback TCP, FIX framing and checksum, the session rules (sequence
//!   check, persisted number), the event broadcast, the feed's top-of-book
//!   update with exact decimals, the health supervisor, markup, sequencing
//!   and encoding, the transport, the hub, tonic and loopback TCP.
//! - `place_order/1`: `OrderService/PlaceOrder` over loopback gRPC, buying at
//!   the ask; timed until the FILLED answer. The timed path adds to the
//!   simulated-LP bench (`place_order_e2e`) the PENDING intent commit, the
//!   NewOrderSingle (its sequence number fsynced before it is written), the
//!   fake LP's ExecutionReport and its parsing.
//!
//! The fake LP is a scripted FIX 4.4 acceptor in this process (the
//! `fxcast-fix` codec; it answers the Logon, the MarketDataRequest and every
//! NewOrderSingle at once), so the numbers are fxcast's own, without a real
//! LP's processing. The journal syncs every commit (`--journal-sync full`).
//! A background task sends a quote every 100 ms during the order case so the
//! price never goes stale. Everything shares one 2-worker runtime.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use fxcast_benches::harness::{self, Bench};
use fxcast_fix::{
    Decoded, Decoder, FixSession, Message, SessionConfig, SymbolMap, encode, utc_timestamp,
};
use fxcast_proto::v1::{
    OrderStatus, PlaceOrderRequest, Side, StreamRatesRequest, StreamRatesResponse,
    order_service_client::OrderServiceClient, rate_service_client::RateServiceClient,
    stream_rates_response::Event,
};
use fxcast_services::{
    Config, FeedKind,
    feed::FixFeedConfig,
    orders::{FixLpConfig, LpConfig},
};
use fxcast_testkit::Authed;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, tcp::OwnedWriteHalf},
    sync::Mutex,
    task::JoinHandle,
};
use tonic::Streaming;

const GROUP: &str = "fix_lp";
const SYMBOL: &str = "USD_JPY";
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Quote,
    PlaceOrder,
}

/// The fake LP's side of the session.
struct FakeLp {
    writer: Mutex<OwnedWriteHalf>,
    seq: AtomicU64,
}

impl FakeLp {
    async fn send(&self, body: Message) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut fields = body.fields().iter();
        let msg_type = fields.next().map(|(_, v)| v.clone()).unwrap_or_default();
        let mut m = Message::new(&msg_type)
            .with(49, "LP")
            .with(56, "FXCAST")
            .with(34, seq)
            .with(52, utc_timestamp(SystemTime::now()));
        for (t, v) in fields {
            m.push(*t, v);
        }
        let bytes = encode("FIX.4.4", &m).expect("encodable");
        self.writer
            .lock()
            .await
            .write_all(&bytes)
            .await
            .expect("write");
    }

    async fn quote(&self, bid: &str, ask: &str) {
        let x = Message::new("X")
            .with(262, "bench")
            .with(268, 2)
            .with(279, 1)
            .with(269, 0)
            .with(55, SYMBOL)
            .with(270, bid)
            .with(279, 1)
            .with(269, 1)
            .with(55, SYMBOL)
            .with(270, ask);
        self.send(x).await;
    }
}

async fn read_message(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    decoder: &mut Decoder,
) -> Message {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(Decoded::Message(m)) = decoder.next_frame() {
            return m;
        }
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "fxcast closed the FIX connection");
        decoder.extend(&buffer[..n]);
    }
}

struct Fixture {
    case: Case,
    stack: fxcast_testkit::Stack,
    lp: Arc<FakeLp>,
    lp_task: JoinHandle<()>,
    refresher: Option<JoinHandle<()>>,
    stream: Mutex<Streaming<StreamRatesResponse>>,
    orders: OrderServiceClient<Authed>,
    n: AtomicU64,
    _data: tempfile::TempDir,
}

impl Bench for Fixture {
    const GROUP: &'static str = GROUP;
    type Case = Case;

    fn cases() -> Vec<Case> {
        vec![Case::Quote, Case::PlaceOrder]
    }

    fn id(case: Case) -> (&'static str, String) {
        match case {
            Case::Quote => ("quote", "1".to_owned()),
            Case::PlaceOrder => ("place_order", "1".to_owned()),
        }
    }

    async fn start(case: Case) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let data = tempfile::tempdir().expect("data dir");
        let mut session_config =
            SessionConfig::new("127.0.0.1", port, "FXCAST", "LP", data.path().join("fix"));
        session_config.heartbeat = HOUR;
        let session = FixSession::new(session_config).expect("session");
        let config = Config {
            feed: FeedKind::Fix(FixFeedConfig {
                session: session.clone(),
                symbols: SymbolMap::default(),
            }),
            symbols: vec![SYMBOL.into()],
            stale_after: HOUR,
            data_dir: data.path().to_owned(),
            ..Default::default()
        };
        let mut config = config;
        config.orders.lp = LpConfig::Fix(FixLpConfig {
            session,
            symbols: SymbolMap::default(),
            timeout: Duration::from_secs(5),
        });
        let start_stack = tokio::spawn(fxcast_testkit::Stack::start(config));

        // The fake LP: Logon, the MarketDataRequest, then answers orders.
        let (socket, _) = listener.accept().await.expect("fxcast connects");
        socket.set_nodelay(true).expect("nodelay");
        let (mut reader, writer) = socket.into_split();
        let lp = Arc::new(FakeLp {
            writer: Mutex::new(writer),
            seq: AtomicU64::new(1),
        });
        let mut decoder = Decoder::new("FIX.4.4");
        let logon = read_message(&mut reader, &mut decoder).await;
        assert_eq!(logon.msg_type(), "A");
        lp.send(Message::new("A").with(98, 0).with(108, 3600)).await;
        let lp_task = tokio::spawn(serve_orders(Arc::clone(&lp), reader, decoder));
        lp.quote("151.500", "151.508").await;
        let stack = start_stack.await.expect("stack task");

        let token = stack.token("bench", "rates:subscribe=USD_JPY orders:place");
        let channel = stack.authed_channel(&token).await;
        let mut rates = RateServiceClient::new(channel.clone());
        let mut stream = rates
            .stream_rates(StreamRatesRequest {
                symbols: vec![SYMBOL.into()],
                ..Default::default()
            })
            .await
            .expect("stream")
            .into_inner();
        // The quote above can reach the session before the feed listens, and
        // an order needs a rate: quote until the stream shows one (5 s at most).
        for attempt in 1.. {
            assert!(attempt <= 50, "no rate on the stream after 50 quotes");
            lp.quote("151.500", "151.508").await;
            let rate = tokio::time::timeout(Duration::from_millis(100), async {
                while let Some(m) = stream.message().await.expect("stream") {
                    if let Some(Event::Rate(_)) = m.event {
                        return;
                    }
                }
                panic!("the rate stream ended");
            });
            if rate.await.is_ok() {
                break;
            }
        }
        let refresher = (case == Case::PlaceOrder).then(|| {
            let lp = Arc::clone(&lp);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    lp.quote("151.500", "151.508").await;
                }
            })
        });
        let fixture = Self {
            case,
            stack,
            lp,
            lp_task,
            refresher,
            stream: Mutex::new(stream),
            orders: OrderServiceClient::new(channel),
            n: AtomicU64::new(0),
            _data: data,
        };
        fixture.round().await;
        fixture
    }

    async fn round(&self) -> Duration {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        match self.case {
            Case::Quote => {
                let mut stream = self.stream.lock().await;
                let bid = format!("151.{:03}", n % 500);
                let ask = format!("152.{:03}", n % 500);
                let start = Instant::now();
                self.lp.quote(&bid, &ask).await;
                loop {
                    let message = stream.message().await.expect("stream").expect("open");
                    if let Some(Event::Rate(rate)) = message.event
                        && rate.bid == bid
                    {
                        break;
                    }
                }
                start.elapsed()
            }
            Case::PlaceOrder => {
                let request = PlaceOrderRequest {
                    client_order_id: format!("bench-{n}"),
                    symbol: SYMBOL.into(),
                    side: Side::Buy as i32,
                    quantity: "1000".into(),
                    price: "151.508".into(),
                    ..Default::default()
                };
                let mut orders = self.orders.clone();
                let start = Instant::now();
                let order = orders.place_order(request).await.expect("PlaceOrder");
                let elapsed = start.elapsed();
                let order = order.into_inner();
                assert_eq!(order.status(), OrderStatus::Filled, "{}", order.message);
                elapsed
            }
        }
    }

    async fn stop(self) {
        if let Some(refresher) = self.refresher {
            refresher.abort();
        }
        self.lp_task.abort();
        drop(self.stream);
        self.stack.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.stack.handle).await;
    }
}

/// Answers every NewOrderSingle with a fill at its limit price.
async fn serve_orders(
    lp: Arc<FakeLp>,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut decoder: Decoder,
) {
    let mut executions = 0u64;
    loop {
        let m = read_message(&mut reader, &mut decoder).await;
        if m.msg_type() != "D" {
            continue;
        }
        executions += 1;
        let field = |t: u32| m.get(t).unwrap_or("").to_owned();
        let er = Message::new("8")
            .with(37, format!("O{executions}"))
            .with(17, format!("E{executions}"))
            .with(150, "F")
            .with(39, "2")
            .with(54, field(54))
            .with(55, field(55))
            .with(11, field(11))
            .with(38, field(38))
            .with(31, field(44))
            .with(32, field(38))
            .with(14, field(38))
            .with(151, 0)
            .with(6, field(44));
        lp.send(er).await;
    }
}

fn main() {
    harness::main::<Fixture>();
}
