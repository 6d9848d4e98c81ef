//! Upstream feeds as a gRPC subscriber sees them: bitFlyer's realtime API
//! (served by a local fake on `127.0.0.1:0` that speaks the real protocol),
//! outages and recovery, recording and replay.

#[path = "common/bitflyer.rs"]
mod fake_bitflyer;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use fake_bitflyer::{FakeBitflyer, Ticker};
use fxcast_proto::v1::{
    GetLatestRateRequest, Order, OrderStatus, PlaceOrderRequest, Rate, RejectReason, Side,
    StreamRatesRequest, StreamRatesResponse, order_service_client::OrderServiceClient,
    stream_rates_response::Event,
};
use fxcast_services::{
    Config, FeedKind,
    feed::{
        Backoff, BitflyerConfig, Feed, FeedHealth, ReplayConfig, ReplayFeed, ReplaySpeed,
        record_bitflyer,
    },
    symbols::SymbolOverride,
};
use fxcast_testkit::{Stack, next_event};
use tonic::Streaming;

const BTC: &str = "lightning_ticker_BTC_JPY";
const ETH: &str = "lightning_ticker_ETH_JPY";
const FX_BTC: &str = "lightning_ticker_FX_BTC_JPY";

fn symbols(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Reconnects fast, so the tests spend their time on what they assert.
fn bitflyer_config(fake: &FakeBitflyer) -> BitflyerConfig {
    BitflyerConfig {
        endpoint: fake.url(),
        reconnect: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

/// BTC_JPY marked up by 100 JPY a side, ETH_JPY by 1bp, FX_BTC_JPY not at all.
fn markups() -> BTreeMap<String, SymbolOverride> {
    let markup = |m: &str| SymbolOverride {
        markup: Some(m.to_owned()),
        ..Default::default()
    };
    BTreeMap::from([
        ("BTC_JPY".to_owned(), markup("100")),
        ("ETH_JPY".to_owned(), markup("1bp")),
    ])
}

/// A stream of every symbol from sequence 1, so nothing published before
/// the stream was opened is missed.
async fn stream_all(server: &Stack) -> Streaming<StreamRatesResponse> {
    let request = StreamRatesRequest {
        resume_after_sequence: Some(0),
        ..Default::default()
    };
    server
        .client()
        .await
        .stream_rates(request)
        .await
        .unwrap()
        .into_inner()
}

/// Reads rates and checks the stream contract on every one: no gap events,
/// each symbol's sequence up by exactly one.
struct Watcher {
    stream: Streaming<StreamRatesResponse>,
    last: HashMap<String, u64>,
}

impl Watcher {
    async fn new(server: &Stack) -> Self {
        Self {
            stream: stream_all(server).await,
            last: HashMap::new(),
        }
    }

    async fn next(&mut self) -> Rate {
        let rate = match next_event(&mut self.stream).await {
            Event::Rate(rate) => rate,
            Event::Gap(gap) => panic!("gap in the stream: {gap:?}"),
        };
        let expected = self.last.get(&rate.symbol).map_or(1, |s| s + 1);
        assert_eq!(
            rate.sequence, expected,
            "{} sequence jumped: {rate:?}",
            rate.symbol
        );
        self.last.insert(rate.symbol.clone(), rate.sequence);
        rate
    }

    /// The next `n` rates, by symbol. Streams keep each symbol's order, not
    /// the order across symbols.
    async fn next_grouped(&mut self, n: usize) -> BTreeMap<String, Vec<Rate>> {
        let mut rates: BTreeMap<String, Vec<Rate>> = BTreeMap::new();
        for _ in 0..n {
            let rate = self.next().await;
            rates.entry(rate.symbol.clone()).or_default().push(rate);
        }
        rates
    }

    /// The next `n` rates, one of each symbol.
    async fn next_one_each(&mut self, n: usize) -> BTreeMap<String, Rate> {
        self.next_grouped(n)
            .await
            .into_iter()
            .map(|(symbol, mut rates)| {
                assert_eq!(rates.len(), 1, "{symbol} ticked more than once: {rates:?}");
                (symbol, rates.remove(0))
            })
            .collect()
    }
}

fn prices(rate: &Rate) -> (&str, &str, &str) {
    (rate.symbol.as_str(), rate.bid.as_str(), rate.ask.as_str())
}

async fn order_client(server: &Stack) -> OrderServiceClient<fxcast_testkit::Authed> {
    OrderServiceClient::new(
        server
            .authed_channel(&server.token("trader", "orders:place"))
            .await,
    )
}

/// Places a buy of 0.5 ETH_JPY at `price` with `orders`.
async fn buy_eth(
    orders: &mut OrderServiceClient<fxcast_testkit::Authed>,
    client_order_id: &str,
    price: &str,
) -> Order {
    let request = PlaceOrderRequest {
        client_order_id: client_order_id.to_owned(),
        symbol: "ETH_JPY".to_owned(),
        side: Side::Buy as i32,
        quantity: "0.5".to_owned(),
        price: price.to_owned(),
        ..Default::default()
    };
    orders.place_order(request).await.unwrap().into_inner()
}

const BTC_1: Ticker = Ticker {
    product: "BTC_JPY",
    bid: "4197736.0",
    ask: "4198000.0",
    tick_id: 38452797,
    timestamp: "2023-08-17T07:25:01.3680432Z",
};
const ETH_1: Ticker = Ticker {
    product: "ETH_JPY",
    bid: "250000.5",
    ask: "250010.0",
    tick_id: 9921,
    timestamp: "2023-08-17T07:25:01.4102113Z",
};
const FX_BTC_1: Ticker = Ticker {
    product: "FX_BTC_JPY",
    bid: "4205000.5",
    ask: "4205100.25",
    tick_id: 77120455,
    timestamp: "2023-08-17T07:25:01.4400000Z",
};
const BTC_2: Ticker = Ticker {
    product: "BTC_JPY",
    bid: "4197801.0",
    ask: "4198023.0",
    tick_id: 38452801,
    timestamp: "2023-08-17T07:25:01.5931007Z",
};

#[tokio::test]
async fn bitflyer_ticks_an_outage_and_the_recovery_as_a_subscriber_sees_them() {
    let mut fake = FakeBitflyer::start().await;
    let server = Stack::start(Config {
        feed: FeedKind::Bitflyer(bitflyer_config(&fake)),
        symbols: symbols(&["BTC_JPY", "ETH_JPY", "FX_BTC_JPY"]),
        symbol_overrides: markups(),
        stale_after: Duration::from_secs(1),
        ..Default::default()
    })
    .await;

    let mut first = fake.accept().await;
    assert_eq!(first.expect_subscriptions(3).await, [BTC, ETH, FX_BTC]);
    let mut watcher = Watcher::new(&server).await;

    // Noise the feed must reject, count and survive on the same connection.
    first
        .send(r#"{"jsonrpc":"2.0","id":42,"error":{"code":-32600,"message":"Invalid Request"}}"#)
        .await;
    first.send("this is not JSON").await;
    first.send_binary(b"\x00\x01binary").await;
    first
        .send(
            &BTC_1
                .notification()
                .replace("\"best_bid\":4197736.0", "\"best_bid\":\"4197736.0\""),
        )
        .await;
    first
        .send(
            &BTC_1
                .notification()
                .replace("lightning_ticker_BTC_JPY", "lightning_board_BTC_JPY"),
        )
        .await;
    first
        .send(&ETH_1.notification().replace("\"best_ask\":250010.0,", ""))
        .await;
    for ticker in [&BTC_1, &ETH_1, &FX_BTC_1] {
        first.send_ticker(ticker).await;
    }
    // Unknown fields are ignored.
    first
        .send(
            &BTC_2
                .notification()
                .replace("\"tick_id\"", "\"new_field\":{\"x\":[1.5]},\"tick_id\""),
        )
        .await;

    // Exact decimals, the symbol's scale, markup rounded away from the mid.
    let mut live = watcher.next_grouped(4).await;
    let btc = live.get_mut("BTC_JPY").unwrap().pop().unwrap();
    let live: BTreeMap<String, Rate> = live
        .into_iter()
        .map(|(symbol, mut rates)| {
            assert_eq!(rates.len(), 1, "{rates:?}");
            (symbol, rates.remove(0))
        })
        .collect();
    assert_eq!(prices(&live["BTC_JPY"]), ("BTC_JPY", "4197636", "4198100"));
    // 250000.5 - 25.00005 = 249975.49995 -> 249975; 250010 + 25.001 -> 250036.
    assert_eq!(prices(&live["ETH_JPY"]), ("ETH_JPY", "249975", "250036"));
    assert_eq!(
        prices(&live["FX_BTC_JPY"]),
        ("FX_BTC_JPY", "4205000", "4205101")
    );
    assert_eq!(live["BTC_JPY"].source_time, Some(BTC_1.source_time()));
    assert_eq!(live["FX_BTC_JPY"].source_time, Some(FX_BTC_1.source_time()));
    assert_eq!(
        (prices(&btc), btc.sequence),
        (("BTC_JPY", "4197701", "4198123"), 2)
    );
    for rate in live.values().chain([&btc]) {
        assert_eq!(
            (rate.source.as_str(), rate.stale),
            ("bitflyer", false),
            "{rate:?}"
        );
    }
    assert!(server.core.is_ready());

    let health = server.core.feed_health().snapshot();
    assert_eq!(health.source, Some("bitflyer"));
    assert_eq!(health.connected, Some(true));
    assert_eq!(health.counters.rpc_errors, 1, "{health:?}");
    assert_eq!(health.counters.malformed, 5, "{health:?}");
    assert_eq!(
        (health.counters.connects, health.counters.disconnects),
        (1, 0)
    );
    assert!(
        !fake.has_pending_connection(),
        "malformed messages must not cost the connection"
    );

    // Outage: the connection drops mid-stream and the next connect is refused.
    fake.refuse_connections(true);
    first.drop_abruptly();
    let stale = watcher.next_one_each(3).await;
    for (symbol, rate) in &stale {
        let before = if symbol == "BTC_JPY" {
            &btc
        } else {
            &live[symbol]
        };
        assert!(rate.stale, "{rate:?}");
        assert_eq!(
            prices(rate),
            prices(before),
            "the stale marker repeats the last price"
        );
        assert_eq!(rate.sequence, before.sequence + 1);
        assert_eq!(rate.source_time, before.source_time);
    }
    assert!(!server.core.is_ready());
    assert_eq!(
        server.core.feed_health().stale_symbols(),
        ["BTC_JPY", "ETH_JPY", "FX_BTC_JPY"]
    );
    let latest = server
        .client()
        .await
        .get_latest_rate(GetLatestRateRequest {
            symbol: "ETH_JPY".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest, stale["ETH_JPY"]);
    // The order path refuses the stale price.
    let mut orders = order_client(&server).await;
    let order = buy_eth(&mut orders, "during-outage", &stale["ETH_JPY"].ask).await;
    assert_eq!(order.status(), OrderStatus::Rejected, "{order:?}");
    assert_eq!(order.reject_reason(), RejectReason::StalePrice, "{order:?}");
    fake.wait_refusals(1).await;
    assert_eq!(server.core.feed_health().snapshot().connected, Some(false));

    // Recovery: the feed reconnects, subscribes every channel again, and the
    // first tick is published normally, right after the stale marker.
    fake.refuse_connections(false);
    let mut second = fake.accept().await;
    assert_eq!(second.expect_subscriptions(3).await, [BTC, ETH, FX_BTC]);
    let recovered_ticks = [
        Ticker {
            tick_id: 38452900,
            timestamp: "2023-08-17T07:25:09.0000001Z",
            ..BTC_2
        },
        Ticker {
            tick_id: 9950,
            timestamp: "2023-08-17T07:25:09.1000000Z",
            bid: "250005.0",
            ..ETH_1
        },
        Ticker {
            tick_id: 77120999,
            timestamp: "2023-08-17T07:25:09.2000000Z",
            ..FX_BTC_1
        },
    ];
    for ticker in &recovered_ticks {
        second.send_ticker(ticker).await;
    }
    let recovered = watcher.next_one_each(3).await;
    assert_eq!(
        prices(&recovered["BTC_JPY"]),
        ("BTC_JPY", "4197701", "4198123")
    );
    // 250005 - 25.0005 = 249979.9995 -> 249979.
    assert_eq!(
        prices(&recovered["ETH_JPY"]),
        ("ETH_JPY", "249979", "250036")
    );
    for (symbol, rate) in &recovered {
        assert!(!rate.stale, "{rate:?}");
        assert_eq!(rate.sequence, stale[symbol].sequence + 1);
    }
    assert_eq!(recovered["BTC_JPY"].sequence, 4);
    assert!(server.core.is_ready());
    let order = buy_eth(&mut orders, "after-recovery", &recovered["ETH_JPY"].ask).await;
    assert_eq!(order.status(), OrderStatus::Filled, "{order:?}");
    let health = server.core.feed_health().snapshot();
    assert_eq!(
        (health.counters.connects, health.counters.disconnects),
        (2, 1)
    );
    assert!(health.counters.connect_failures >= 1, "{health:?}");
    assert!(
        health.symbols.iter().all(|s| !s.stale && s.outages >= 1),
        "{health:?}"
    );
}

#[tokio::test]
async fn prices_keep_every_digit_a_float_would_lose() {
    let mut fake = FakeBitflyer::start().await;
    let overrides = BTreeMap::from([(
        "BTC_JPY".to_owned(),
        SymbolOverride {
            price_scale: Some(10),
            ..Default::default()
        },
    )]);
    let server = Stack::start(Config {
        feed: FeedKind::Bitflyer(bitflyer_config(&fake)),
        symbols: symbols(&["BTC_JPY"]),
        symbol_overrides: overrides,
        ..Default::default()
    })
    .await;
    let mut connection = fake.accept().await;
    connection.expect_subscriptions(1).await;
    let mut watcher = Watcher::new(&server).await;
    // 17 significant digits: as f64 the bid would come out as 4197736.123456789.
    connection
        .send_ticker(&Ticker {
            bid: "4197736.1234567891",
            ask: "4.19773612345678915e6",
            ..BTC_1
        })
        .await;
    let rate = watcher.next().await;
    assert_eq!(
        prices(&rate),
        ("BTC_JPY", "4197736.1234567891", "4197736.1234567892")
    );
}

/// Serves `tickers` on the next `connections` connections, after
/// acknowledging `channels` subscriptions; returns them still open.
async fn serve_tickers(
    fake: &mut FakeBitflyer,
    connections: usize,
    channels: usize,
    tickers: &[Ticker],
) -> Vec<fake_bitflyer::FakeConnection> {
    let mut open = Vec::new();
    for _ in 0..connections {
        let mut connection = fake.accept().await;
        connection.expect_subscriptions(channels).await;
        for ticker in tickers {
            connection.send_ticker(ticker).await;
        }
        open.push(connection);
    }
    open
}

fn session() -> Vec<Ticker> {
    let mut tickers = vec![BTC_1, ETH_1];
    tickers.push(Ticker {
        bid: "4197736.5",
        ask: "4197999.5",
        tick_id: 38452799,
        ..BTC_1
    });
    tickers.push(BTC_2);
    tickers.push(Ticker {
        bid: "249990.0",
        ask: "250001.5",
        tick_id: 9925,
        ..ETH_1
    });
    tickers.push(Ticker {
        bid: "4197802.0",
        ask: "4198010.0",
        tick_id: 38452805,
        ..BTC_2
    });
    tickers
}

/// What [`session`] publishes with [`markups`].
const SESSION_PRICES: [(&str, &str, &str); 6] = [
    ("BTC_JPY", "4197636", "4198100"),
    ("ETH_JPY", "249975", "250036"),
    // 4197736.5 - 100 -> 4197636; 4197999.5 + 100 -> 4198100.
    ("BTC_JPY", "4197636", "4198100"),
    ("BTC_JPY", "4197701", "4198123"),
    // 249990 - 24.999 -> 249965; 250001.5 + 25.00015 -> 250027.
    ("ETH_JPY", "249965", "250027"),
    ("BTC_JPY", "4197702", "4198110"),
];

async fn replay(path: &Path, speed: ReplaySpeed, looped: bool, count: usize) -> Vec<Rate> {
    let server = Stack::start(Config {
        feed: FeedKind::Replay(ReplayConfig {
            path: path.to_owned(),
            speed,
            looped,
        }),
        symbols: symbols(&["BTC_JPY", "ETH_JPY"]),
        symbol_overrides: markups(),
        ..Default::default()
    })
    .await;
    let mut watcher = Watcher::new(&server).await;
    let mut rates = Vec::new();
    for _ in 0..count {
        rates.push(watcher.next().await);
    }
    rates
}

/// Each symbol's prices in sequence order.
fn prices_by_symbol(rates: &[Rate]) -> BTreeMap<&str, Vec<(&str, &str, &str)>> {
    let mut sorted: Vec<&Rate> = rates.iter().collect();
    sorted.sort_by_key(|r| (r.symbol.clone(), r.sequence));
    let mut by_symbol: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for rate in sorted {
        by_symbol
            .entry(rate.symbol.as_str())
            .or_default()
            .push(prices(rate));
    }
    by_symbol
}

fn session_prices() -> BTreeMap<&'static str, Vec<(&'static str, &'static str, &'static str)>> {
    let mut by_symbol: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for p in SESSION_PRICES {
        by_symbol.entry(p.0).or_default().push(p);
    }
    by_symbol
}

/// What a comparison of two runs looks at: everything but the run's own
/// identity and clock, in symbol and sequence order.
fn published(
    rates: &[Rate],
) -> Vec<(
    String,
    u64,
    String,
    String,
    Option<prost_types::Timestamp>,
    bool,
)> {
    let mut published: Vec<_> = rates
        .iter()
        .map(|r| {
            (
                r.symbol.clone(),
                r.sequence,
                r.bid.clone(),
                r.ask.clone(),
                r.source_time,
                r.stale,
            )
        })
        .collect();
    published.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    published
}

#[tokio::test]
async fn a_recorded_session_replays_to_the_same_published_prices_deterministically() {
    let mut fake = FakeBitflyer::start().await;
    let ticks = session();
    // The live feed and the recorder watch the same session.
    let live = Stack::start(Config {
        feed: FeedKind::Bitflyer(bitflyer_config(&fake)),
        symbols: symbols(&["BTC_JPY", "ETH_JPY"]),
        symbol_overrides: markups(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.jsonl");
    let file = tokio::fs::File::create(&path).await.unwrap();
    let recorder = tokio::spawn(record_bitflyer(
        bitflyer_config(&fake),
        ["BTC_JPY", "ETH_JPY"],
        file,
        Some(ticks.len() as u64),
        std::future::pending(),
    ));
    let _connections = serve_tickers(&mut fake, 2, 2, &ticks).await;
    let summary = tokio::time::timeout(Duration::from_secs(10), recorder)
        .await
        .expect("the recorder did not stop after its notifications")
        .unwrap()
        .unwrap();
    assert_eq!(summary.notifications, ticks.len() as u64);
    let mut watcher = Watcher::new(&live).await;
    let mut live_rates = Vec::new();
    for _ in 0..ticks.len() {
        live_rates.push(watcher.next().await);
    }

    let recording = std::fs::read_to_string(&path).unwrap();
    assert_eq!(recording.lines().count(), ticks.len());
    for (line, ticker) in recording.lines().zip(&ticks) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            record["received_at"].as_str().unwrap().ends_with('Z'),
            "{line}"
        );
        // The notification is kept byte for byte.
        assert!(line.contains(&ticker.notification()), "{line}");
    }

    let first = replay(&path, ReplaySpeed::Max, false, ticks.len()).await;
    let second = replay(&path, ReplaySpeed::Max, false, ticks.len()).await;
    assert_eq!(published(&first), published(&second));
    assert_eq!(published(&first), published(&live_rates));
    assert!(first.iter().all(|r| r.source == "replay" && !r.stale));
    assert_eq!(prices_by_symbol(&first), session_prices());
}

#[tokio::test]
async fn a_looped_replay_starts_over_with_sequences_carrying_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.jsonl");
    // One record a second, replayed ten times faster (a looped replay at
    // `max` would outrun the history a late subscriber resumes from).
    let ticks = session();
    let lines: Vec<String> = ticks
        .iter()
        .enumerate()
        .map(|(i, t)| record(&format!("2023-08-17T07:25:0{i}.000000000Z"), t))
        .collect();
    std::fs::write(&path, lines.concat()).unwrap();
    let rates = replay(&path, "10".parse().unwrap(), true, ticks.len() * 2).await;
    let mut twice = session_prices();
    for prices in twice.values_mut() {
        prices.extend(prices.clone());
    }
    assert_eq!(prices_by_symbol(&rates), twice);
    for symbol in ["BTC_JPY", "ETH_JPY"] {
        let times: Vec<_> = rates
            .iter()
            .filter(|r| r.symbol == symbol)
            .map(|r| r.source_time)
            .collect();
        let (pass1, pass2) = times.split_at(times.len() / 2);
        assert_eq!(
            pass1, pass2,
            "{symbol}: the second pass has the recorded source times"
        );
    }
    let btc: Vec<u64> = rates
        .iter()
        .filter(|r| r.symbol == "BTC_JPY")
        .map(|r| r.sequence)
        .collect();
    assert_eq!(btc, [1, 2, 3, 4, 5, 6, 7, 8]);
}

fn record(received_at: &str, ticker: &Ticker) -> String {
    format!(
        "{{\"received_at\":\"{received_at}\",\"message\":{}}}\n",
        ticker.notification()
    )
}

#[tokio::test(start_paused = true)]
async fn replay_paces_records_by_their_receive_times_divided_by_the_speed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paced.jsonl");
    let lines = [
        record("2023-08-17T07:25:01.000000000Z", &BTC_1),
        // Malformed records are skipped without stopping the replay.
        "{\"received_at\":\"yesterday\",\"message\":{}}\n".to_owned(),
        "not json\n".to_owned(),
        "\n".to_owned(),
        record("2023-08-17T07:25:01.400000000Z", &ETH_1),
        record("2023-08-17T07:25:02.000000000Z", &BTC_2),
    ];
    std::fs::write(&path, lines.concat()).unwrap();

    for (speed, expected_ms) in [
        ("1", [0, 400, 1000]),
        ("2", [0, 200, 500]),
        ("0.5", [0, 800, 2000]),
    ] {
        let health = FeedHealth::new(["BTC_JPY", "ETH_JPY"], Duration::from_secs(5));
        let config = ReplayConfig {
            path: path.clone(),
            speed: speed.parse().unwrap(),
            looped: false,
        };
        let feed = ReplayFeed::open(config, ["BTC_JPY", "ETH_JPY"], health.clone()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let start = tokio::time::Instant::now();
        let run = tokio::spawn(Box::new(feed).run(tx));
        let mut offsets = Vec::new();
        let mut symbols = Vec::new();
        while let Some(quote) = rx.recv().await {
            offsets.push(start.elapsed().as_millis());
            symbols.push(quote.symbol);
        }
        run.await.unwrap().unwrap();
        assert_eq!(offsets, expected_ms, "speed {speed}");
        assert_eq!(symbols, ["BTC_JPY", "ETH_JPY", "BTC_JPY"]);
        assert_eq!(health.snapshot().counters.malformed, 2);
    }
}

#[tokio::test]
async fn a_missing_replay_file_fails_the_start() {
    let config = Config {
        feed: FeedKind::Replay(ReplayConfig {
            path: "/nonexistent/fxcast/replay.jsonl".into(),
            speed: ReplaySpeed::Max,
            looped: false,
        }),
        symbols: symbols(&["BTC_JPY"]),
        data_dir: tempfile::tempdir().unwrap().keep(),
        ..Default::default()
    };
    let transport: std::sync::Arc<dyn fxcast_transport::Transport> =
        std::sync::Arc::new(fxcast_transport::MemoryTransport::default());
    let err = fxcast_services::RatesCore::start(config, transport, Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot open replay file /nonexistent/fxcast/replay.jsonl"),
        "{err}"
    );
}
