//! OrderService through the real tonic client against a real server on an
//! ephemeral port: what a trading client sees.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use fxcast_proto::v1::{
    GetOrderRequest, ListOrdersRequest, Order, OrderEvent, OrderStatus, PlaceOrderRequest, Rate,
    RejectReason, Side, StreamOrderEventsRequest, order_service_client::OrderServiceClient,
};
use fxcast_services::{
    BoxFuture, Config, FeedKind, OrdersConfig,
    orders::{
        LiquidityProvider, LpConfig, LpError, LpOrder, LpOutcome, PricePolicy, SimulatedLpConfig,
    },
    symbols::SymbolOverride,
};
use fxcast_testkit::{Authed, Stack, next_message};
use prost::Message;
use tonic::{Code, Status, Streaming};

type Client = OrderServiceClient<Authed>;

const TRADER: &str = "orders:place";

fn config(orders: OrdersConfig) -> Config {
    Config {
        feed: FeedKind::None,
        symbols: vec!["USD_JPY".into(), "EUR_USD".into(), "BTC_JPY".into()],
        orders,
        ..Default::default()
    }
}

/// The default configuration with an order book dealing with `lp`.
fn with_lp(lp: LpConfig) -> Config {
    config(OrdersConfig {
        lp,
        ..Default::default()
    })
}

/// The default configuration with `symbol`'s prices valid for `max_age`.
fn with_max_age(symbol: &str, max_age: &str) -> Config {
    let max_age = SymbolOverride {
        max_price_age: Some(max_age.into()),
        ..Default::default()
    };
    with_override(symbol, max_age)
}

/// The default configuration with `symbol` overridden.
fn with_override(symbol: &str, value: SymbolOverride) -> Config {
    Config {
        symbol_overrides: BTreeMap::from([(symbol.to_owned(), value)]),
        ..config(OrdersConfig::default())
    }
}

/// A quiet server (no feed) with USD_JPY 151.222/151.230 and EUR_USD
/// 1.08500/1.08508 published.
async fn desk_with(config: Config) -> Stack {
    let server = Stack::start(config).await;
    server.publish("USD_JPY", "151.222", "151.230").await;
    server.publish("EUR_USD", "1.08500", "1.08508").await;
    server
}

async fn desk() -> Stack {
    desk_with(config(OrdersConfig::default())).await
}

/// A [`desk`] and a trader "alice" on it.
async fn alice_at_desk() -> (Stack, Client) {
    let server = desk().await;
    let alice = client(&server, "alice", TRADER).await;
    (server, alice)
}

async fn client(server: &Stack, subject: &str, scopes: &str) -> Client {
    OrderServiceClient::new(server.authed_channel(&server.token(subject, scopes)).await)
}

fn order(id: &str, symbol: &str, side: Side, quantity: &str, price: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        client_order_id: id.into(),
        symbol: symbol.into(),
        side: side as i32,
        quantity: quantity.into(),
        price: price.into(),
        ..Default::default()
    }
}

fn buy(id: &str, price: &str) -> PlaceOrderRequest {
    order(id, "USD_JPY", Side::Buy, "1000", price)
}

fn sell(id: &str, price: &str) -> PlaceOrderRequest {
    order(id, "USD_JPY", Side::Sell, "1000", price)
}

/// A buy "c" of `quantity` `symbol` at `price`.
fn qty(symbol: &str, quantity: &str, price: &str) -> PlaceOrderRequest {
    order("c", symbol, Side::Buy, quantity, price)
}

async fn place(client: &mut Client, request: PlaceOrderRequest) -> Order {
    client
        .place_order(request)
        .await
        .expect("PlaceOrder failed")
        .into_inner()
}

async fn place_err(client: &mut Client, request: PlaceOrderRequest) -> Status {
    client
        .place_order(request)
        .await
        .expect_err("PlaceOrder should fail")
}

fn assert_filled(order: &Order, fill_price: &str) {
    assert_eq!(order.status(), OrderStatus::Filled, "{order:?}");
    assert_eq!(order.reject_reason(), RejectReason::Unspecified);
    assert_eq!(order.fill_price, fill_price, "{order:?}");
    assert_eq!(order.order_id.len(), 26, "{order:?}");
    assert!(!order.lp_execution_id.is_empty(), "{order:?}");
    assert!(order.created_at.is_some() && order.updated_at.is_some());
}

fn assert_moved(order: &Order, message: &str) {
    assert_rejected(order, RejectReason::PriceMoved, message);
}

fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "expected {part:?} in {text:?}");
}

fn assert_rejected(order: &Order, reason: RejectReason, message: &str) {
    assert_eq!(order.status(), OrderStatus::Rejected, "{order:?}");
    assert_eq!(order.reject_reason(), reason, "{order:?}");
    assert_eq!(order.message, message);
    assert!(
        order.fill_price.is_empty() && order.lp_execution_id.is_empty(),
        "{order:?}"
    );
}

async fn list_all(client: &mut Client) -> Vec<Order> {
    list(client, ListOrdersRequest::default()).await.unwrap()
}

async fn list(client: &mut Client, request: ListOrdersRequest) -> Result<Vec<Order>, Status> {
    Ok(client.list_orders(request).await?.into_inner().orders)
}

fn of_symbol(symbol: &str) -> ListOrdersRequest {
    ListOrdersRequest {
        symbol: symbol.into(),
        ..Default::default()
    }
}

async fn get(client: &mut Client, request: GetOrderRequest) -> Result<Order, Status> {
    Ok(client.get_order(request).await?.into_inner())
}

fn by_id(order_id: &str) -> GetOrderRequest {
    GetOrderRequest {
        order_id: order_id.into(),
        ..Default::default()
    }
}

fn by_client_id(client_order_id: &str) -> GetOrderRequest {
    GetOrderRequest {
        client_order_id: client_order_id.into(),
        ..Default::default()
    }
}

/// `status` has exactly `code` and `message`.
fn assert_status(status: &Status, code: Code, message: &str) {
    assert_eq!((status.code(), status.message()), (code, message));
}

#[tokio::test]
async fn orders_within_tolerance_fill_at_the_live_price_on_both_sides() {
    let (server, mut alice) = alice_at_desk().await;

    let filled = place(&mut alice, buy("b-1", "151.230")).await;
    assert_filled(&filled, "151.230");
    assert_eq!(
        filled.message,
        "filled at 151.230; ask 151.230 is 0.000 from 151.230, tolerance 0.010"
    );
    assert_eq!(
        (filled.subject.as_str(), filled.client_order_id.as_str()),
        ("alice", "b-1")
    );
    assert_eq!(filled.liquidity_provider, "simulated");
    assert_eq!(filled.lp_execution_id, format!("SIM-{}", filled.order_id));

    let moved = server.publish("USD_JPY", "151.226", "151.234").await;
    let filled = place(&mut alice, buy("b-2", "151.230")).await;
    assert_filled(&filled, "151.234");
    assert_eq!(
        (
            filled.market_price.as_str(),
            filled.applied_tolerance.as_str()
        ),
        ("151.234", "0.010")
    );
    assert_eq!(filled.market_rate_id, moved.rate_id);

    let filled = place(&mut alice, sell("s-1", "151.222")).await;
    assert_filled(&filled, "151.226");
    assert_eq!(
        filled.message,
        "filled at 151.226; bid 151.226 is 0.004 from 151.222, tolerance 0.010"
    );

    let filled = place(
        &mut alice,
        order("e-1", "EUR_USD", Side::Sell, "250000", "1.08505"),
    )
    .await;
    assert_filled(&filled, "1.08500");
}

#[tokio::test]
async fn orders_beyond_tolerance_are_rejected_with_the_numbers() {
    let (server, mut alice) = alice_at_desk().await;
    server.publish("USD_JPY", "151.237", "151.245").await;

    let rejected = place(&mut alice, buy("b-1", "151.230")).await;
    assert_moved(
        &rejected,
        "ask 151.245 is 0.015 from 151.230, tolerance 0.010",
    );
    assert_eq!(rejected.market_price, "151.245");
    assert_eq!(
        rejected.order_id.len(),
        26,
        "a rejected order is still an order"
    );
    assert!(
        rejected.liquidity_provider.is_empty(),
        "never sent to the LP"
    );

    let rejected = place(&mut alice, sell("s-1", "151.250")).await;
    assert_moved(
        &rejected,
        "bid 151.237 is 0.013 from 151.250, tolerance 0.010",
    );

    // Symmetric: a move in the client's favour beyond tolerance is rejected too.
    let rejected = place(&mut alice, buy("b-2", "151.260")).await;
    assert_moved(
        &rejected,
        "ask 151.245 is 0.015 from 151.260, tolerance 0.010",
    );

    // A tighter tolerance than the server's is honoured.
    for (id, tolerance, message) in [
        (
            "b-3",
            "0.004",
            "ask 151.245 is 0.005 from 151.240, tolerance 0.004",
        ),
        (
            "b-4",
            "0.25bp",
            "ask 151.245 is 0.005 from 151.240, tolerance 0.003781 (0.25bp)",
        ),
    ] {
        let mut tight = buy(id, "151.240");
        tight.tolerance = tolerance.into();
        assert_moved(&place(&mut alice, tight).await, message);
    }
    assert_eq!(
        list_all(&mut alice).await.len(),
        5,
        "rejections are journalled orders"
    );
}

#[tokio::test]
async fn tolerance_boundaries_are_inclusive() {
    let (_server, mut alice) = alice_at_desk().await;
    // ask 151.230: buys at 151.220 and 151.240 are exactly 0.010 away.
    assert_filled(&place(&mut alice, buy("b-lo", "151.220")).await, "151.230");
    assert_filled(&place(&mut alice, buy("b-hi", "151.240")).await, "151.230");
    let out = place(&mut alice, buy("b-out", "151.219")).await;
    assert_moved(&out, "ask 151.230 is 0.011 from 151.219, tolerance 0.010");
    // bid 151.222.
    assert_filled(&place(&mut alice, sell("s-lo", "151.212")).await, "151.222");
    assert_filled(&place(&mut alice, sell("s-hi", "151.232")).await, "151.222");
    let out = place(&mut alice, sell("s-out", "151.233")).await;
    assert_moved(&out, "bid 151.222 is 0.011 from 151.233, tolerance 0.010");
    let mut exact = buy("b-tight", "151.226");
    exact.tolerance = "0.004".into();
    assert_filled(&place(&mut alice, exact).await, "151.230");
}

#[tokio::test]
async fn adverse_only_policy_rejects_only_moves_against_the_client() {
    let server = desk_with(config(OrdersConfig {
        policy: PricePolicy::AdverseOnly,
        ..Default::default()
    }))
    .await;
    let mut alice = client(&server, "alice", TRADER).await;
    // Far in the buyer's favour: fills at the better live price.
    assert_filled(&place(&mut alice, buy("b-fav", "151.500")).await, "151.230");
    assert_filled(
        &place(&mut alice, sell("s-fav", "150.900")).await,
        "151.222",
    );
    // Against the client within tolerance (inclusive): fills.
    assert_filled(
        &place(&mut alice, buy("b-adv-ok", "151.220")).await,
        "151.230",
    );
    // Against the client beyond tolerance: rejected.
    assert_rejected(
        &place(&mut alice, buy("b-adv", "151.219")).await,
        RejectReason::PriceMoved,
        "ask 151.230 is 0.011 above 151.219, against the buyer; tolerance 0.010 (adverse-only)",
    );
    assert_rejected(
        &place(&mut alice, sell("s-adv", "151.233")).await,
        RejectReason::PriceMoved,
        "bid 151.222 is 0.011 below 151.233, against the seller; tolerance 0.010 (adverse-only)",
    );
}

#[tokio::test]
async fn stale_prices_are_rejected() {
    let server = Stack::start(with_max_age("EUR_USD", "500ms")).await;
    let mut alice = client(&server, "alice", TRADER).await;

    assert_rejected(
        &place(&mut alice, buy("no-rate", "151.230")).await,
        RejectReason::StalePrice,
        "no USD_JPY rate has been published yet",
    );

    let old = server.publish("EUR_USD", "1.08500", "1.08508").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rejected = place(
        &mut alice,
        order("old", "EUR_USD", Side::Buy, "1000", "1.08508"),
    )
    .await;
    assert_eq!(
        rejected.reject_reason(),
        RejectReason::StalePrice,
        "{rejected:?}"
    );
    let prefix = format!("the latest EUR_USD rate {} is ", old.rate_id);
    assert!(
        rejected.message.starts_with(&prefix) && rejected.message.ends_with("s old, max age 500ms"),
        "{}",
        rejected.message
    );
    server.publish("EUR_USD", "1.08500", "1.08508").await;
    assert_filled(
        &place(
            &mut alice,
            order("fresh", "EUR_USD", Side::Buy, "1000", "1.08508"),
        )
        .await,
        "1.08508",
    );

    // The feed is marked down: another process publishes a stale rate.
    let last = server.publish("USD_JPY", "151.222", "151.230").await;
    let down = Rate {
        sequence: last.sequence + 1,
        rate_id: format!(
            "USD_JPY-{}-{}",
            server.core.publisher().run_id(),
            last.sequence + 1
        ),
        stale: true,
        ..last
    };
    server
        .core
        .transport()
        .publish("rates.USD_JPY", down.encode_to_vec().into())
        .await
        .unwrap();
    let started = Instant::now();
    while !server.core.latest().get("USD_JPY").unwrap().rate.stale {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stale rate never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_rejected(
        &place(&mut alice, buy("down", "151.230")).await,
        RejectReason::StalePrice,
        &format!(
            "the USD_JPY feed is marked down (latest rate {} is stale)",
            down.rate_id
        ),
    );
}

#[tokio::test]
async fn a_quoted_rate_id_must_name_a_recent_rate_of_the_symbol() {
    let server = Stack::start(with_max_age("USD_JPY", "1s")).await;
    let mut alice = client(&server, "alice", TRADER).await;
    let quoted = server.publish("USD_JPY", "151.222", "151.230").await;
    server.publish("USD_JPY", "151.224", "151.232").await;

    // An older rate of the history that is still recent enough.
    let mut with_id = buy("q-ok", "151.230");
    with_id.rate_id = quoted.rate_id.clone();
    let filled = place(&mut alice, with_id).await;
    assert_filled(&filled, "151.232");
    assert_eq!(filled.rate_id, quoted.rate_id);

    let mut unknown = buy("q-unknown", "151.230");
    unknown.rate_id = format!("USD_JPY-{}-999", server.core.publisher().run_id());
    assert_rejected(
        &place(&mut alice, unknown.clone()).await,
        RejectReason::UnknownRate,
        &format!(
            "rate_id {} names no USD_JPY rate published within the last 1s",
            unknown.rate_id
        ),
    );
    let mut earlier_run = buy("q-earlier-run", "151.230");
    earlier_run.rate_id = format!("USD_JPY-00000000-{}", quoted.sequence);
    assert_eq!(
        place(&mut alice, earlier_run).await.reject_reason(),
        RejectReason::UnknownRate
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    server.publish("USD_JPY", "151.224", "151.232").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut too_old = buy("q-old", "151.230");
    too_old.rate_id = quoted.rate_id.clone();
    let rejected = place(&mut alice, too_old).await;
    assert_eq!(
        rejected.reject_reason(),
        RejectReason::UnknownRate,
        "{rejected:?}"
    );
    assert!(
        rejected
            .message
            .starts_with(&format!("rate_id {} was published ", quoted.rate_id))
            && rejected
                .message
                .ends_with("s ago, more than the USD_JPY max age 1s"),
        "{}",
        rejected.message
    );

    let mut other_symbol = buy("q-other", "151.230");
    other_symbol.rate_id = "EUR_USD-x-1".into();
    let status = place_err(&mut alice, other_symbol).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_contains(
        status.message(),
        "rate_id \"EUR_USD-x-1\" is not a USD_JPY rate",
    );
}

#[tokio::test]
async fn invalid_requests_are_refused_precisely_and_not_journalled() {
    let (_server, mut alice) = alice_at_desk().await;
    #[rustfmt::skip]
    let cases: Vec<(PlaceOrderRequest, &str)> = vec![
        (buy("", "151.230"), "client_order_id is required"),
        (buy(&"x".repeat(65), "151.230"), "client_order_id is 65 characters long, at most 64 are allowed"),
        (buy("no/slash", "151.230"), "client_order_id \"no/slash\" contains '/'"),
        (qty("", "1000", "151.230"), "symbol is required"),
        (qty("EUR_GBP", "1000", "151.230"), "unknown symbol \"EUR_GBP\""),
        (order("c", "USD_JPY", Side::Unspecified, "1000", "151.230"), "side is required: SIDE_BUY or SIDE_SELL"),
        (PlaceOrderRequest { side: 7, ..buy("c", "151.230") }, "side 7 is not a valid side"),
        (qty("USD_JPY", "", "151.230"), "quantity is required"),
        (qty("USD_JPY", "0", "151.230"), "quantity must be positive, got 0"),
        (qty("USD_JPY", "-5", "151.230"), "quantity \"-5\" is not a plain decimal number"),
        (qty("USD_JPY", "10.5", "151.230"), "quantity 10.5 is not a multiple of the USD_JPY lot size 1"),
        (qty("USD_JPY", "10000001", "151.230"), "quantity 10000001 is above the USD_JPY maximum 10000000"),
        (qty("BTC_JPY", "0.0005", "10000000"), "quantity 0.0005 is not a multiple of the BTC_JPY lot size 0.001"),
        (qty("BTC_JPY", "101", "10000000"), "quantity 101 is above the BTC_JPY maximum 100"),
        (buy("c", ""), "price is required"),
        (buy("c", "0"), "price must be positive, got 0"),
        (buy("c", "1.5e2"), "price \"1.5e2\" is not a plain decimal number"),
        (buy("c", "151.2305"), "price 151.2305 is not on the USD_JPY tick size 0.001"),
        (PlaceOrderRequest { tolerance: "loose".into(), ..buy("c", "151.230") }, "tolerance \"loose\" is not a tolerance"),
        (PlaceOrderRequest { tolerance: "0.020".into(), ..buy("c", "151.230") }, "tolerance 0.020 is above the USD_JPY maximum 0.010"),
        (PlaceOrderRequest { tolerance: "2bp".into(), ..buy("c", "151.230") }, "tolerance 2bp (0.030246 at price 151.230) is above the USD_JPY maximum 0.010"),
        (PlaceOrderRequest { rate_id: "USD_JPY 1".into(), ..buy("c", "151.230") }, "rate_id \"USD_JPY 1\" is not a rate id"),
    ];
    for (request, expected) in cases {
        let status = place_err(&mut alice, request).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{expected}: {status:?}"
        );
        assert_contains(status.message(), expected);
    }
    assert!(
        list_all(&mut alice).await.is_empty(),
        "invalid requests are not journalled"
    );
}

#[tokio::test]
async fn minimum_quantity_comes_from_the_symbol_configuration() {
    let lots = SymbolOverride {
        lot_size: Some("1000".into()),
        min_quantity: Some("10000".into()),
        tolerance: Some("0.005".into()),
        ..Default::default()
    };
    let server = desk_with(with_override("USD_JPY", lots)).await;
    let mut alice = client(&server, "alice", TRADER).await;
    for (quantity, expected) in [
        ("5000", "quantity 5000 is below the USD_JPY minimum 10000"),
        (
            "10500",
            "quantity 10500 is not a multiple of the USD_JPY lot size 1000",
        ),
    ] {
        let status = place_err(&mut alice, qty("USD_JPY", quantity, "151.230")).await;
        assert_eq!(status.message(), expected);
    }
    let moved = place(&mut alice, qty("USD_JPY", "10000", "151.224")).await;
    assert_rejected(
        &moved,
        RejectReason::PriceMoved,
        "ask 151.230 is 0.006 from 151.224, tolerance 0.005",
    );
}

#[tokio::test]
async fn a_retry_returns_the_original_order_and_a_conflicting_one_is_a_duplicate() {
    let (server, mut alice) = alice_at_desk().await;
    let original = place(&mut alice, buy("c-1", "151.230")).await;
    assert_filled(&original, "151.230");

    // The market moves far away: a retry still gets the original fill.
    server.publish("USD_JPY", "152.000", "152.008").await;
    let retried = place(&mut alice, buy("c-1", "151.230")).await;
    assert_eq!(retried, original);
    // The same values in another spelling are the same order.
    let retried = place(
        &mut alice,
        order("c-1", "USD_JPY", Side::Buy, "1000.00", "151.23"),
    )
    .await;
    assert_eq!(retried, original);

    let conflicting = place(
        &mut alice,
        order("c-1", "USD_JPY", Side::Buy, "2000", "151.230"),
    )
    .await;
    assert_rejected(
        &conflicting,
        RejectReason::DuplicateOrderId,
        &format!(
            "client_order_id c-1 is already used by order {} with quantity 1000 (now 2000); \
             use a new client_order_id for a new order",
            original.order_id
        ),
    );
    assert!(
        conflicting.order_id.is_empty(),
        "a duplicate is not an order of its own"
    );
    let conflicting = place(&mut alice, sell("c-1", "151.230")).await;
    assert_eq!(conflicting.reject_reason(), RejectReason::DuplicateOrderId);
    assert_contains(&conflicting.message, "side buy (now sell)");

    // A rejected order keeps its id too.
    let rejected = place(&mut alice, buy("c-2", "151.230")).await;
    assert_eq!(rejected.reject_reason(), RejectReason::PriceMoved);
    server.publish("USD_JPY", "151.222", "151.230").await;
    assert_eq!(
        place(&mut alice, buy("c-2", "151.230")).await,
        rejected,
        "a retry does not re-check"
    );

    let orders = list_all(&mut alice).await;
    assert_eq!(orders.len(), 2, "{orders:?}");
    let fetched = get(&mut alice, by_id(&original.order_id)).await.unwrap();
    assert_eq!(
        fetched, original,
        "the duplicate left the original untouched"
    );
}

/// An LP that counts executions and answers slowly, so concurrent retries
/// overlap the first execution.
#[derive(Debug, Default)]
struct CountingLp {
    executions: AtomicUsize,
}

impl LiquidityProvider for CountingLp {
    fn name(&self) -> &str {
        "counting"
    }

    fn needs_intent_record(&self) -> bool {
        false
    }

    fn execute<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async move {
            let n = self.executions.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(LpOutcome::Filled {
                price: order.price,
                execution_id: format!("CNT-{n}"),
            })
        })
    }

    fn recover<'a>(&'a self, _order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async {
            Ok(LpOutcome::Rejected {
                message: "never seen".into(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_retries_fill_exactly_once() {
    let lp = Arc::new(CountingLp::default());
    let server = desk_with(with_lp(LpConfig::Custom(lp.clone()))).await;
    let token = server.token("alice", TRADER);
    let channel = server.authed_channel(&token).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let mut client = OrderServiceClient::new(channel.clone());
            tokio::spawn(async move { place(&mut client, buy("once", "151.230")).await })
        })
        .collect();
    let mut orders = Vec::new();
    for task in tasks {
        orders.push(task.await.unwrap());
    }
    assert_eq!(
        lp.executions.load(Ordering::SeqCst),
        1,
        "the LP dealt more than once"
    );
    let ids: HashSet<_> = orders.iter().map(|o| o.order_id.clone()).collect();
    assert_eq!(ids.len(), 1, "every retry got the one order");
    for order in &orders {
        assert_filled(order, "151.230");
        assert_eq!(order.lp_execution_id, "CNT-1");
    }
    let mut alice = OrderServiceClient::new(channel);
    assert_eq!(list_all(&mut alice).await.len(), 1);
}

#[tokio::test]
async fn the_liquidity_provider_may_decline() {
    let lp = SimulatedLpConfig {
        reject_rate: "1".parse().unwrap(),
        ..Default::default()
    };
    let server = desk_with(with_lp(LpConfig::Simulated(lp))).await;
    let mut alice = client(&server, "alice", TRADER).await;
    let rejected = place(&mut alice, buy("lp-1", "151.230")).await;
    assert_rejected(
        &rejected,
        RejectReason::LpRejected,
        "the simulated LP declined on last look (reject rate 1)",
    );
    assert_eq!(
        (
            rejected.liquidity_provider.as_str(),
            rejected.market_price.as_str()
        ),
        ("simulated", "151.230")
    );
    assert_eq!(place(&mut alice, buy("lp-1", "151.230")).await, rejected);
}

#[tokio::test]
async fn callers_see_only_their_own_orders() {
    let (server, mut alice) = alice_at_desk().await;
    let mut bob = client(&server, "bob", "orders:place orders:read").await;
    let alices = place(&mut alice, buy("same-id", "151.230")).await;
    let bobs = place(&mut bob, sell("same-id", "151.222")).await;
    assert_filled(&bobs, "151.222");
    assert_ne!(
        alices.order_id, bobs.order_id,
        "client_order_id is per subject"
    );

    // Another subject's order does not exist for bob, by id as by
    // client_order_id: the answer is the one for an unknown id.
    for order_id in [alices.order_id.as_str(), "01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
        let err = get(&mut bob, by_id(order_id)).await.unwrap_err();
        let message = format!("you have no order with order_id \"{order_id}\"");
        assert_status(&err, Code::NotFound, &message);
    }
    let mut carol = client(&server, "carol", TRADER).await;
    let err = get(&mut carol, by_client_id("same-id")).await.unwrap_err();
    let message = "you have no order with client_order_id \"same-id\"";
    assert_status(&err, Code::NotFound, message);
    let by_client_id = get(&mut bob, by_client_id("same-id")).await.unwrap();
    assert_eq!(by_client_id, bobs);
    let err = bob.get_order(GetOrderRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(list_all(&mut bob).await, vec![bobs.clone()]);

    // orders:read reads but cannot place; neither scope: nothing.
    let mut reader = client(&server, "alice", "orders:read").await;
    assert_eq!(list_all(&mut reader).await, vec![alices.clone()]);
    let err = place_err(&mut reader, buy("r-1", "151.230")).await;
    let lacks_place = "this token lacks the orders:place scope";
    assert_status(&err, Code::PermissionDenied, lacks_place);
    let mut watcher = client(&server, "alice", "rates:subscribe=*").await;
    let err = list(&mut watcher, ListOrdersRequest::default()).await;
    let lacks_read = "this token lacks the orders:read scope (or orders:place)";
    assert_status(&err.unwrap_err(), Code::PermissionDenied, lacks_read);
    let mut anonymous = OrderServiceClient::new(server.channel().await);
    let err = anonymous
        .place_order(buy("a-1", "151.230"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn list_orders_filters_and_paginates_newest_first() {
    let (_server, mut alice) = alice_at_desk().await;
    let mut placed = Vec::new();
    for i in 0..7 {
        placed.push(place(&mut alice, buy(&format!("f-{i}"), "151.230")).await);
    }
    placed.push(place(&mut alice, buy("r-0", "151.100")).await);
    placed.push(
        place(
            &mut alice,
            order("e-0", "EUR_USD", Side::Buy, "1000", "1.08508"),
        )
        .await,
    );
    let middle = placed[3].created_at;

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = alice
            .list_orders(ListOrdersRequest {
                page_size: 4,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.orders
                .iter()
                .map(|o| o.client_order_id.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        pages,
        vec![
            vec!["e-0", "r-0", "f-6", "f-5"],
            vec!["f-4", "f-3", "f-2", "f-1"],
            vec!["f-0"]
        ],
    );

    let ids = |request: ListOrdersRequest| {
        let mut alice = alice.clone();
        async move {
            let orders = list(&mut alice, request).await.unwrap();
            orders
                .into_iter()
                .map(|o| o.client_order_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(of_symbol("EUR_USD")).await, ["e-0"]);
    let rejected = ListOrdersRequest {
        status: OrderStatus::Rejected as i32,
        ..Default::default()
    };
    assert_eq!(ids(rejected).await, ["r-0"]);
    let after = ListOrdersRequest {
        created_after: middle,
        ..Default::default()
    };
    assert_eq!(ids(after).await, ["e-0", "r-0", "f-6", "f-5", "f-4", "f-3"]);
    let before = ListOrdersRequest {
        created_before: middle,
        ..Default::default()
    };
    assert_eq!(ids(before).await, ["f-2", "f-1", "f-0"]);

    let nonsense = ListOrdersRequest {
        page_token: "nonsense".into(),
        ..Default::default()
    };
    let err = list(&mut alice, nonsense).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_contains(err.message(), "page_token \"nonsense\"");
    let status_42 = ListOrdersRequest {
        status: 42,
        ..Default::default()
    };
    let err = list(&mut alice, status_42).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn next_order_event(stream: &mut Streaming<OrderEvent>) -> Order {
    next_message(stream)
        .await
        .order
        .expect("event without order")
}

#[tokio::test]
async fn order_events_stream_the_callers_own_orders() {
    let (server, mut alice) = alice_at_desk().await;
    let mut bob = client(&server, "bob", TRADER).await;
    let mut blotter = client(&server, "alice", "orders:read").await;
    let mut events = blotter
        .stream_order_events(StreamOrderEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut usd_only = blotter
        .stream_order_events(StreamOrderEventsRequest {
            symbols: vec!["USD_JPY".into()],
        })
        .await
        .unwrap()
        .into_inner();

    place(&mut bob, buy("bob-1", "151.230")).await;
    let filled = place(&mut alice, buy("a-1", "151.230")).await;
    let rejected = place(&mut alice, buy("a-2", "151.000")).await;
    let eur = place(
        &mut alice,
        order("a-3", "EUR_USD", Side::Buy, "1000", "1.08508"),
    )
    .await;
    assert_eq!(
        next_order_event(&mut events).await,
        filled,
        "bob's order is not on alice's stream"
    );
    assert_eq!(next_order_event(&mut events).await, rejected);
    assert_eq!(next_order_event(&mut events).await, eur);
    assert_eq!(next_order_event(&mut usd_only).await, filled);
    assert_eq!(next_order_event(&mut usd_only).await, rejected);
    // A retry is not a new event.
    place(&mut alice, buy("a-1", "151.230")).await;
    let last = place(&mut alice, buy("a-4", "151.230")).await;
    assert_eq!(next_order_event(&mut usd_only).await, last);

    let err = blotter
        .stream_order_events(StreamOrderEventsRequest {
            symbols: vec!["NOPE".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// An external-style LP that needs intent records: it deals, but the first
/// confirmations get lost; `recover` tells what it dealt.
#[derive(Debug, Default)]
struct ForgetfulLp {
    dealt: Mutex<HashMap<String, LpOutcome>>,
    executions: AtomicUsize,
    hang: bool,
}

impl LiquidityProvider for ForgetfulLp {
    fn name(&self) -> &str {
        "forgetful"
    }

    fn execute<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async move {
            self.executions.fetch_add(1, Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            let outcome = LpOutcome::Filled {
                price: order.price,
                execution_id: format!("FG-{}", order.key),
            };
            self.dealt
                .lock()
                .unwrap()
                .entry(order.key.clone())
                .or_insert(outcome);
            Err(LpError {
                provider: "forgetful".into(),
                message: "confirmation timed out".into(),
            })
        })
    }

    fn recover<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async move {
            Ok(self
                .dealt
                .lock()
                .unwrap()
                .get(&order.key)
                .cloned()
                .unwrap_or(LpOutcome::Rejected {
                    message: "forgetful LP never received this order".into(),
                }))
        })
    }
}

async fn wait_for_status(client: &mut Client, client_order_id: &str, status: OrderStatus) -> Order {
    let started = Instant::now();
    loop {
        if let Ok(order) = get(client, by_client_id(client_order_id)).await
            && order.status() == status
        {
            return order;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{client_order_id} never became {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unconfirmed_deal_is_pending_until_the_lp_confirms_it() {
    let lp = Arc::new(ForgetfulLp::default());
    let server = desk_with(with_lp(LpConfig::Custom(lp.clone()))).await;
    let mut alice = client(&server, "alice", TRADER).await;
    let mut events = alice
        .stream_order_events(StreamOrderEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    let status = place_err(&mut alice, buy("u-1", "151.230")).await;
    assert_eq!(status.code(), Code::Unavailable);
    let unconfirmed = "confirmation timed out; its outcome is being confirmed";
    assert_contains(status.message(), unconfirmed);
    let pending = next_order_event(&mut events).await;
    assert_eq!(pending.status(), OrderStatus::Pending);
    assert!(
        pending
            .message
            .starts_with("sent to forgetful at 151.230; "),
        "{}",
        pending.message
    );
    let filled = wait_for_status(&mut alice, "u-1", OrderStatus::Filled).await;
    assert_filled(&filled, "151.230");
    assert_eq!(filled.lp_execution_id, "FG-alice/u-1");
    assert_eq!(next_order_event(&mut events).await, filled);
    assert_eq!(place(&mut alice, buy("u-1", "151.230")).await, filled);
    assert_eq!(lp.executions.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn orders_pending_at_a_crash_are_resolved_at_the_next_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let hanging = Arc::new(ForgetfulLp {
        hang: true,
        ..Default::default()
    });
    let first = desk_with(Config {
        data_dir: data_dir.path().to_owned(),
        ..with_lp(LpConfig::Custom(hanging.clone()))
    })
    .await;
    let mut alice = client(&first, "alice", TRADER).await;
    let in_flight = {
        let mut alice = alice.clone();
        tokio::spawn(async move { alice.place_order(buy("crash-1", "151.230")).await })
    };
    let pending = wait_for_status(&mut alice, "crash-1", OrderStatus::Pending).await;
    first.stop.cancel();
    in_flight.abort();

    // The LP did deal crash-1 before the crash.
    let after = Arc::new(ForgetfulLp::default());
    after.dealt.lock().unwrap().insert(
        "alice/crash-1".into(),
        LpOutcome::Filled {
            price: "151.230".parse().unwrap(),
            execution_id: "FG-X".into(),
        },
    );
    let second = desk_with(Config {
        data_dir: data_dir.path().to_owned(),
        ..with_lp(LpConfig::Custom(after.clone()))
    })
    .await;
    let mut alice = client(&second, "alice", TRADER).await;
    let resolved = get(&mut alice, by_id(&pending.order_id)).await.unwrap();
    assert_filled(&resolved, "151.230");
    assert_eq!(resolved.lp_execution_id, "FG-X");
    assert_eq!(place(&mut alice, buy("crash-1", "151.230")).await, resolved);
    assert_eq!(
        after.executions.load(Ordering::SeqCst),
        0,
        "never sent again"
    );
}

#[tokio::test]
async fn list_orders_refuses_unknown_symbols_as_get_latest_rate_does() {
    let (server, mut alice) = alice_at_desk().await;
    place(&mut alice, buy("l-1", "151.230")).await;
    let err = list(&mut alice, of_symbol("XXX")).await.unwrap_err();
    let unknown = "unknown symbol \"XXX\" (known: BTC_JPY, EUR_USD, USD_JPY)";
    assert_status(&err, Code::InvalidArgument, unknown);
    let mut rates = fxcast_proto::v1::rate_service_client::RateServiceClient::new(
        server
            .authed_channel(&server.token("alice", "rates:subscribe=*"))
            .await,
    );
    let latest = rates
        .get_latest_rate(fxcast_proto::v1::GetLatestRateRequest {
            symbol: "XXX".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (latest.code(), latest.message()),
        (err.code(), err.message())
    );
    // A known symbol filters (here: to nothing).
    let eur = list(&mut alice, of_symbol("EUR_USD")).await.unwrap();
    assert!(eur.is_empty());
}

#[tokio::test]
async fn orders_of_a_symbol_no_longer_configured_can_still_be_listed_by_it() {
    let data = tempfile::tempdir().unwrap();
    let with_btc = Config {
        data_dir: data.path().to_owned(),
        ..config(OrdersConfig::default())
    };
    let server = Stack::start(with_btc.clone()).await;
    server.publish("BTC_JPY", "10000000", "10000100").await;
    let mut alice = client(&server, "alice", TRADER).await;
    let btc = place(
        &mut alice,
        order("b-1", "BTC_JPY", Side::Buy, "0.001", "10000100"),
    )
    .await;
    server.stop.cancel();
    let _ = server.handle.await;

    let without_btc = Config {
        symbols: vec!["USD_JPY".into()],
        ..with_btc
    };
    let server = Stack::start(without_btc).await;
    let mut alice = client(&server, "alice", TRADER).await;
    let listed = list(&mut alice, of_symbol("BTC_JPY")).await.unwrap();
    assert_eq!(listed, vec![btc]);
    let mut bob = client(&server, "bob", TRADER).await;
    let err = list(&mut bob, of_symbol("BTC_JPY")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn a_megabyte_of_input_comes_back_as_64_bytes_and_its_length() {
    let (_server, mut alice) = alice_at_desk().await;
    let huge = "9".repeat(1 << 20);
    let err = place_err(
        &mut alice,
        order("m-1", "USD_JPY", Side::Buy, &huge, "151.230"),
    )
    .await;
    assert_eq!(
        (err.code(), err.message().to_owned()),
        (
            Code::InvalidArgument,
            format!(
                "quantity \"{}\"... (1048576 bytes) is not a plain decimal number such as \"1000\"",
                "9".repeat(64)
            )
        )
    );
    let symbol = "S".repeat(1 << 20);
    let err = place_err(
        &mut alice,
        order("m-2", &symbol, Side::Buy, "1000", "151.230"),
    )
    .await;
    assert_eq!(
        err.message(),
        format!(
            "unknown symbol \"{}\"... (1048576 bytes) (known: BTC_JPY, EUR_USD, USD_JPY)",
            "S".repeat(64)
        )
    );
    let err = get(&mut alice, by_id(&"o".repeat(1 << 20)))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message().to_owned()),
        (
            Code::NotFound,
            format!(
                "you have no order with order_id \"{}\"... (1048576 bytes)",
                "o".repeat(64)
            )
        )
    );
    let huge_token = ListOrdersRequest {
        page_token: "p".repeat(1 << 20),
        ..Default::default()
    };
    let err = list(&mut alice, huge_token).await.unwrap_err();
    assert!(err.message().len() < 200, "{} bytes", err.message().len());
}
