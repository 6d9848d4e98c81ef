//! FIX 4.4 connectivity through the real binary: `fxcast serve --feed fix
//! --lp fix` against a liquidity provider running on QuickFIX (the C++
//! engine, tests/fix-lp/lp.cpp), which enforces the FIX session rules on
//! every message fxcast sends.

use std::{path::Path, time::Duration};

use fxcast_proto::v1::{
    GetOrderRequest, Order, OrderStatus, PlaceOrderRequest, Rate, RejectReason, Side,
    order_service_client::OrderServiceClient, rate_service_client::RateServiceClient,
    stream_rates_response::Event,
};
use fxcast_testkit::{Authed, FIX_PASSWORD, FIX_SENDER, FIX_TARGET, FIX_USERNAME, FixLp};
use tonic::Streaming;

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");
const API_KEY: &str = "fix-test-api-key-0123456789abcdef";

/// The FIX session flags towards the test LP on `port`: its address, the
/// CompIDs and the username it expects.
fn session_flags(port: &str) -> [&str; 10] {
    [
        "--fix-host",
        "127.0.0.1",
        "--fix-port",
        port,
        "--fix-sender-comp-id",
        FIX_SENDER,
        "--fix-target-comp-id",
        FIX_TARGET,
        "--fix-username",
        FIX_USERNAME,
    ]
}

/// `fxcast serve` on the LP at `port`, USD_JPY mapped to the LP's
/// `USD/JPY`, 0.002 markup per side.
async fn serve(data: &Path, port: u16) -> fxcast_testkit::ServeProcess {
    let config = data.join("fxcast.toml");
    std::fs::write(&config, "[fix.symbols]\nUSD_JPY = \"USD/JPY\"\n").unwrap();
    let port = port.to_string();
    fxcast_testkit::spawn_serve(
        BIN,
        data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--feed",
            "fix",
            "--lp",
            "fix",
            "--symbols",
            "USD_JPY",
            "--markup",
            "0.002",
            "--stale-after",
            "2s",
            "--fix-heartbeat",
            "1s",
        ]
        .iter()
        .chain(&session_flags(&port))
        .copied()
        .collect::<Vec<_>>(),
        &[
            ("FXCAST_API_KEY", API_KEY),
            ("FXCAST_FIX_PASSWORD", FIX_PASSWORD),
        ],
    )
    .await
}

/// A QuickFIX LP (in a fresh directory) quoting `symbol` at
/// 151.230/151.250.
async fn quoting_lp(symbol: &str) -> (tempfile::TempDir, FixLp) {
    let dir = tempfile::tempdir().unwrap();
    let mut lp = FixLp::start(dir.path()).await;
    lp.command(&format!("price {symbol} 151.230 151.250")).await;
    (dir, lp)
}

/// `fxcast serve` on `lp` with a fresh data directory, and its clients.
async fn desk(lp: &FixLp) -> (tempfile::TempDir, fxcast_testkit::ServeProcess, Clients) {
    let data = tempfile::tempdir().unwrap();
    let served = serve(data.path(), lp.port()).await;
    let clients = clients(&served).await;
    (data, served, clients)
}

struct Clients {
    rates: RateServiceClient<Authed>,
    orders: OrderServiceClient<Authed>,
    token: String,
}

async fn clients(served: &fxcast_testkit::ServeProcess) -> Clients {
    let url = format!("http://{}", served.grpc);
    let scopes = ["orders:place", "rates:subscribe=USD_JPY"];
    let token = fxcast_testkit::issue_token(&url, API_KEY, "trader", &scopes)
        .await
        .token;
    let channel = fxcast_testkit::channel(&url, &token).await;
    Clients {
        rates: RateServiceClient::new(channel.clone()),
        orders: OrderServiceClient::new(channel),
        token,
    }
}

/// The next rate on `stream` that satisfies `wanted` (within 30 s).
async fn rate_where(
    stream: &mut Streaming<fxcast_proto::v1::StreamRatesResponse>,
    wanted: impl Fn(&Rate) -> bool,
) -> Rate {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let message =
                fxcast_testkit::next_message_within(stream, Duration::from_secs(30)).await;
            if let Some(Event::Rate(rate)) = message.event
                && wanted(&rate)
            {
                return rate;
            }
        }
    })
    .await;
    found.expect("no such rate within 30 s")
}

/// `PlaceOrder` of 1,000 USD_JPY at `rate` as `id`, which must be answered.
async fn place(
    orders: &mut OrderServiceClient<Authed>,
    rate: &Rate,
    id: &str,
    side: Side,
) -> Order {
    let request = order_at(rate, id, side);
    orders.place_order(request).await.unwrap().into_inner()
}

fn order_at(rate: &Rate, id: &str, side: Side) -> PlaceOrderRequest {
    PlaceOrderRequest {
        client_order_id: id.into(),
        symbol: "USD_JPY".into(),
        side: side as i32,
        quantity: "1000".into(),
        price: if side == Side::Buy {
            rate.ask.clone()
        } else {
            rate.bid.clone()
        },
        rate_id: rate.rate_id.clone(),
        tolerance: String::new(),
    }
}

/// The `D <ClOrdID> <n>` lines the LP printed for the client order `id`.
fn new_orders_for(lp: &FixLp, id: &str) -> usize {
    let suffix = format!("/{id}");
    lp.count(|l| {
        let mut words = l.split(' ');
        words.next() == Some("D") && words.next().is_some_and(|k| k.ends_with(&suffix))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lp_prices_reach_grpc_clients_with_markup_and_orders_fill_or_reject_at_the_lp() {
    let (_lp_dir, mut lp) = quoting_lp("USD/JPY").await;
    let (_data, served, mut c) = desk(&lp).await;
    // QuickFIX accepted the Logon with the credentials, and the market data
    // request asks for the LP's name of the symbol.
    lp.wait_for(1, |l| l == "V USD/JPY").await;
    let mut stream = fxcast_testkit::stream_symbols(&mut c.rates, &["USD_JPY"]).await;
    let rate = rate_where(&mut stream, |r| r.bid == "151.228").await;
    assert_eq!(
        (rate.bid.as_str(), rate.ask.as_str()),
        ("151.228", "151.252")
    );
    assert_eq!(rate.source, "fix");
    lp.command("price USD/JPY 151.240 151.260").await;
    let rate = rate_where(&mut stream, |r| r.ask == "151.262").await;
    assert_eq!(rate.bid, "151.238");
    assert!(!rate.stale);
    // The gateway's WebSocket clients get the same marked-up LP price.
    let url = format!("ws://{}/v1/stream?token={}", served.http, c.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    fxcast_testkit::subscribe(&mut ws, &["USD_JPY"]).await;
    let message = fxcast_testkit::next_json(&mut ws).await;
    assert_eq!(message["type"], "rate", "{message}");
    assert_eq!(
        (message["bid"].as_str(), message["ask"].as_str()),
        (Some("151.238"), Some("151.262")),
        "{message}"
    );

    // A buy at the quoted ask fills at the LP's ask.
    let filled = place(&mut c.orders, &rate, "buy-1", Side::Buy).await;
    assert_eq!(filled.status(), OrderStatus::Filled, "{filled:?}");
    assert_eq!(filled.fill_price, "151.260");
    assert_eq!(filled.liquidity_provider, "fix");
    assert!(filled.lp_execution_id.starts_with("EX"), "{filled:?}");
    assert_eq!(new_orders_for(&lp, "buy-1"), 1);

    // The LP declines: REJECTED with its text.
    lp.command("mode reject no liquidity at this size").await;
    let rejected = place(&mut c.orders, &rate, "sell-1", Side::Sell).await;
    assert_eq!(rejected.status(), OrderStatus::Rejected, "{rejected:?}");
    assert_eq!(rejected.reject_reason(), RejectReason::LpRejected);
    assert!(
        rejected.message.contains("no liquidity at this size"),
        "{rejected:?}"
    );
    // A retry of the same client_order_id answers from the journal: the
    // LP never sees a second NewOrderSingle.
    let again = place(&mut c.orders, &rate, "buy-1", Side::Buy).await;
    assert_eq!(again.order_id, filled.order_id);
    assert_eq!(new_orders_for(&lp, "buy-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fxcast_killed_before_the_execution_report_recovers_the_fill_with_order_status_request() {
    let (_lp_dir, mut lp) = quoting_lp("USD/JPY").await;
    let (data, mut served, mut c) = desk(&lp).await;
    let mut stream = fxcast_testkit::stream_symbols(&mut c.rates, &["USD_JPY"]).await;
    let rate = rate_where(&mut stream, |r| r.ask == "151.252").await;

    // The LP deals the order but holds its ExecutionReport.
    lp.command("mode hold").await;
    let mut orders = c.orders.clone();
    let request = order_at(&rate, "held-1", Side::Buy);
    let in_flight = tokio::spawn(async move { orders.place_order(request).await });
    lp.wait_for(1, |l| l.starts_with("HELD ") && l.ends_with("/held-1"))
        .await;
    // SIGKILL between NewOrderSingle and ExecutionReport.
    served.child.start_kill().unwrap();
    served.child.wait().await.unwrap();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the client never got an answer"
    );
    drop(stream);

    // The restart finds the PENDING order and asks the LP.
    let served = serve(data.path(), lp.port()).await;
    lp.wait_for(1, |l| l.starts_with("H ") && l.contains("/held-1 1"))
        .await;
    let mut c = clients(&served).await;
    let order = get_order(&mut c.orders, "held-1").await;
    assert_eq!(order.status(), OrderStatus::Filled, "{order:?}");
    assert_eq!(order.fill_price, "151.250");
    // The held report arriving late changes nothing.
    lp.command("release").await;
    lp.command("mode fill").await;
    let again = get_order(&mut c.orders, "held-1").await;
    assert_eq!(again, order);
    assert_eq!(
        new_orders_for(&lp, "held-1"),
        1,
        "exactly one NewOrderSingle"
    );
}

async fn get_order(orders: &mut OrderServiceClient<Authed>, id: &str) -> Order {
    let request = GetOrderRequest {
        client_order_id: id.into(),
        ..Default::default()
    };
    orders.get_order(request).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lp_restart_and_sequence_gaps_are_survived_with_sequence_numbers_intact() {
    let (lp_dir, mut lp) = quoting_lp("USD/JPY").await;
    let (_data, served, mut c) = desk(&lp).await;
    let mut stream = fxcast_testkit::stream_symbols(&mut c.rates, &["USD_JPY"]).await;
    rate_where(&mut stream, |r| r.ask == "151.252").await;
    lp.wait_for(1, |l| l.starts_with("LOGON ")).await;

    // The LP dies: fxcast's prices go stale, it reconnects with backoff.
    let port = lp.port();
    lp.kill().await;
    rate_where(&mut stream, |r| r.stale).await;
    let mut lp = FixLp::restart(lp_dir.path(), port).await;
    lp.command("price USD/JPY 151.330 151.350").await;
    lp.wait_for(1, |l| l.starts_with("LOGON ")).await;
    let logon = lp
        .lines()
        .into_iter()
        .find(|l| l.starts_with("LOGON "))
        .unwrap();
    let numbers: Vec<u64> = logon
        .split(' ')
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    // QuickFIX restored its store: both sides continue their numbering
    // (QuickFIX would have logged out a Logon whose number went backwards).
    assert!(numbers[0] > 2 && numbers[1] > 2, "{logon}");
    rate_where(&mut stream, |r| r.ask == "151.352" && !r.stale).await;

    // Both directions lose messages: the LP skips 3 outgoing numbers (fxcast
    // must ask for a resend and accept QuickFIX's gap fill) and expects 2
    // numbers below fxcast's (fxcast must answer the LP's ResendRequest with
    // a gap fill).
    lp.command("gap").await;
    lp.wait_for(1, |l| l.starts_with("ADMIN 2 ")).await;
    lp.wait_for(1, |l| l.starts_with("ADMIN 4 ") && l.contains("gapfill=Y"))
        .await;
    // The session stayed up and in sequence: prices still flow, an order
    // fills, and there was no new logon.
    lp.command("price USD/JPY 151.430 151.450").await;
    let rate = rate_where(&mut stream, |r| r.ask == "151.452").await;
    let filled = place(&mut c.orders, &rate, "after-gap", Side::Buy).await;
    assert_eq!(filled.status(), OrderStatus::Filled, "{filled:?}");
    assert_eq!(filled.fill_price, "151.450");
    assert_eq!(lp.count(|l| l.starts_with("LOGON ")), 1, "{:?}", lp.lines());
    assert_eq!(lp.count(|l| l == "LOGOUT"), 0, "{:?}", lp.lines());
    drop(served);
}

/// The in-process stack on the LP at `port` with `symbols`, configured the
/// way `fxcast serve --feed fix --lp fix` is, with an order timeout of
/// `order_timeout`.
async fn stack(
    port: u16,
    symbols: &[&str],
    order_timeout: Duration,
) -> (fxcast_testkit::Stack, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut settings = fxcast_app::Settings {
        feed: Some(fxcast_app::FeedName::Fix),
        lp: Some(fxcast_app::LpName::Fix),
        symbols: Some(fxcast_app::List(
            symbols.iter().map(|s| (*s).to_owned()).collect(),
        )),
        data_dir: Some(data.path().to_owned()),
        stale_after: Some(Duration::from_secs(2).into()),
        ..Default::default()
    };
    settings.fix.host = Some("127.0.0.1".into());
    settings.fix.port = Some(port);
    settings.fix.sender_comp_id = Some(FIX_SENDER.into());
    settings.fix.target_comp_id = Some(FIX_TARGET.into());
    settings.fix.heartbeat = Some(Duration::from_secs(1).into());
    settings.fix.username = Some(FIX_USERNAME.into());
    settings.fix.password = Some(FIX_PASSWORD.parse().unwrap());
    let mut config = fxcast_app::Config::from_settings(settings, &|_| None).unwrap();
    if let fxcast_services::orders::LpConfig::Fix(lp) = &mut config.core.orders.lp {
        lp.timeout = order_timeout;
    }
    (fxcast_testkit::Stack::start(config.core).await, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_market_data_reject_marks_the_symbol_down_with_the_lps_reason() {
    let (_lp_dir, mut lp) = quoting_lp("USD_JPY").await;
    lp.command("mdreject EUR_USD not streamed to this account")
        .await;
    let (stack, _data) = stack(lp.port(), &["USD_JPY", "EUR_USD"], Duration::from_secs(5)).await;
    lp.wait_for(1, |l| l == "V EUR_USD").await;
    let health = stack.core.feed_health().clone();
    let down = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let snapshot = health.snapshot();
            if let Some(down) = snapshot
                .symbols
                .iter()
                .find(|s| s.symbol == "EUR_USD")
                .and_then(|s| s.down.clone())
            {
                return (down, snapshot);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("EUR_USD marked down");
    assert!(down.0.contains("not streamed to this account"), "{down:?}");
    assert_eq!(down.1.source, Some("fix"));
    // USD_JPY is unaffected.
    let mut client = stack.client().await;
    let rate = fxcast_testkit::latest_rate(&mut client, "USD_JPY").await;
    let rate = match rate {
        Ok(rate) => rate,
        Err(_) => {
            let mut stream = fxcast_testkit::stream_symbols(&mut client, &["USD_JPY"]).await;
            fxcast_testkit::next_rate(&mut stream).await
        }
    };
    assert_eq!(
        (rate.bid.as_str(), rate.ask.as_str()),
        ("151.230", "151.250")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_lp_never_received_times_out_then_is_rejected_after_order_status_request() {
    let (_lp_dir, mut lp) = quoting_lp("USD_JPY").await;
    lp.command("mode drop").await;
    let (stack, _data) = stack(lp.port(), &["USD_JPY"], Duration::from_secs(1)).await;
    let token = stack.token("trader", "orders:place rates:subscribe=USD_JPY");
    let channel = stack.authed_channel(&token).await;
    let mut rates = RateServiceClient::new(channel.clone());
    let mut orders = OrderServiceClient::new(channel);
    let mut stream = fxcast_testkit::stream_symbols(&mut rates, &["USD_JPY"]).await;
    let rate = rate_where(&mut stream, |r| r.ask == "151.250").await;

    // No ExecutionReport: the outcome is unknown, the order stays PENDING.
    let lost = orders
        .place_order(order_at(&rate, "lost-1", Side::Buy))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), tonic::Code::Unavailable, "{lost:?}");
    lp.wait_for(1, |l| l.starts_with("DROPPED ") && l.ends_with("/lost-1"))
        .await;
    // Recovery asks the LP, which has no such order: REJECTED, never re-sent.
    lp.wait_for(1, |l| l.starts_with("H ") && l.ends_with("/lost-1 0"))
        .await;
    let order = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let order = get_order(&mut orders, "lost-1").await;
            if order.status() != OrderStatus::Pending {
                return order;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the order is resolved");
    assert_eq!(order.status(), OrderStatus::Rejected, "{order:?}");
    assert_eq!(order.reject_reason(), RejectReason::LpRejected);
    assert!(order.message.contains("Unknown order"), "{order:?}");
    assert_eq!(
        new_orders_for(&lp, "lost-1"),
        1,
        "exactly one NewOrderSingle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_by_the_lp_and_never_logged() {
    let lp_dir = tempfile::tempdir().unwrap();
    let lp = FixLp::start(lp_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    let port = lp.port().to_string();
    let mut command = tokio::process::Command::new(BIN);
    command
        .arg("serve")
        .args(fxcast_testkit::EPHEMERAL_LISTENERS)
        .args(["--feed", "fix", "--symbols", "USD_JPY"])
        .args(session_flags(&port))
        .arg("--data-dir")
        .arg(data.path())
        .env("FXCAST_FIX_PASSWORD", "not-the-password-31337");
    // The log names the LP's reason; the password appears nowhere in it
    // (the configuration is logged at start, redacted).
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("FXCAST_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut log =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = Vec::new();
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.contains("logon refused") {
                return line;
            }
        }
        panic!("fxcast exited: {seen:?}");
    })
    .await
    .expect("the refused logon is logged");
    assert!(refused.contains("bad username or password"), "{refused}");
    let all = seen.join("\n");
    assert!(all.contains("<redacted>"), "{all}");
    assert!(!all.contains("not-the-password-31337"), "{all}");
    lp.wait_for(1, |l| l == "ADMIN A bad-credentials").await;
}
