//! Orders survive `kill -9` of the real `fxcast` binary: every acknowledged
//! order reads back unchanged after a restart on the same `--data-dir`, a
//! retry of any client_order_id returns the one order it names (never a
//! second fill), and `fxcast order` retries across the restart too.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::Duration,
};

use fxcast_proto::v1::{
    GetOrderRequest, ListOrdersRequest, Order, OrderStatus, PlaceOrderRequest, Side,
    order_service_client::OrderServiceClient, rate_service_client::RateServiceClient,
};
use tokio::{
    process::{Child, Command},
    sync::mpsc,
};

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");
const API_KEY: &str = "orders-restart-test-api-key-0123456789";

struct Served {
    child: Child,
    url: String,
}

/// Starts `fxcast serve` on `data` with ephemeral ports; returns once it
/// logged the address it bound.
async fn serve(data: &Path) -> Served {
    let served = fxcast_testkit::spawn_serve(
        BIN,
        data,
        &["--symbols", "USD_JPY", "--tick-interval", "20ms"],
        &[("FXCAST_API_KEY", API_KEY)],
    )
    .await;
    Served {
        child: served.child,
        url: format!("http://{}", served.grpc),
    }
}

async fn trader_token(url: &str) -> String {
    let scopes = ["orders:place", "rates:subscribe=USD_JPY"];
    let issued = fxcast_testkit::issue_token(url, API_KEY, "trader", &scopes).await;
    issued.token
}

async fn place(
    orders: &mut OrderServiceClient<fxcast_testkit::Authed>,
    request: &PlaceOrderRequest,
) -> Order {
    orders
        .place_order(request.clone())
        .await
        .unwrap()
        .into_inner()
}

/// `fxcast order` on USD_JPY against `url` with `token` and `args`.
async fn order_cli(url: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["order", "--server", url, "--symbol", "USD_JPY"])
        .args(args)
        .env("FXCAST_TOKEN", token)
        .output()
        .await
        .unwrap()
}

/// A buy (even n) or sell (odd n) at the current rate, quoting its rate_id.
async fn at_market(
    rates: &mut RateServiceClient<fxcast_testkit::Authed>,
    id: String,
    n: usize,
) -> PlaceOrderRequest {
    let rate = fxcast_testkit::latest_rate(rates, "USD_JPY").await.unwrap();
    let (side, price) = if n.is_multiple_of(2) {
        (Side::Buy, rate.ask)
    } else {
        (Side::Sell, rate.bid)
    };
    PlaceOrderRequest {
        client_order_id: id,
        symbol: "USD_JPY".into(),
        side: side as i32,
        quantity: "1000".into(),
        price,
        rate_id: rate.rate_id,
        tolerance: String::new(),
    }
}

async fn all_orders(orders: &mut OrderServiceClient<fxcast_testkit::Authed>) -> Vec<Order> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListOrdersRequest {
            page_size: 1000,
            page_token,
            ..Default::default()
        };
        let page = orders.list_orders(request).await.unwrap().into_inner();
        all.extend(page.orders);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_survive_kill_dash_nine_and_retries_never_fill_twice() {
    let data = tempfile::tempdir().unwrap();
    let mut first = serve(data.path()).await;
    let token = trader_token(&first.url).await;
    let authed = fxcast_testkit::channel(&first.url, &token).await;
    let mut rates = RateServiceClient::new(authed.clone());
    let mut orders = OrderServiceClient::new(authed.clone());
    // The server may not have published its first rate yet: wait for one.
    let mut first_tick = fxcast_testkit::stream_symbols(&mut rates, &["USD_JPY"]).await;
    fxcast_testkit::next_message_within(&mut first_tick, Duration::from_secs(30)).await;
    drop(first_tick);

    // Sequential orders, all acknowledged.
    let mut requests: HashMap<String, PlaceOrderRequest> = HashMap::new();
    let mut acked: HashMap<String, Order> = HashMap::new();
    for n in 0..20 {
        let request = at_market(&mut rates, format!("seq-{n}"), n).await;
        let order = place(&mut orders, &request).await;
        assert!(
            matches!(order.status(), OrderStatus::Filled | OrderStatus::Rejected),
            "{order:?}"
        );
        requests.insert(request.client_order_id.clone(), request);
        acked.insert(order.client_order_id.clone(), order);
    }
    assert!(
        acked.values().any(|o| o.status() == OrderStatus::Filled),
        "nothing filled: {acked:?}"
    );

    // A burst in flight when the server is killed.
    let mut burst = Vec::new();
    for n in 0..200 {
        let request = at_market(&mut rates, format!("burst-{n}"), n).await;
        requests.insert(request.client_order_id.clone(), request.clone());
        burst.push(request);
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    for request in burst {
        let mut client = OrderServiceClient::new(authed.clone());
        let done = done_tx.clone();
        tokio::spawn(async move {
            if let Ok(order) = client.place_order(request).await {
                let _ = done.send(order.into_inner());
            }
        });
    }
    drop(done_tx);
    for _ in 0..30 {
        let order = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
            .await
            .unwrap()
            .unwrap();
        acked.insert(order.client_order_id.clone(), order);
    }
    first.child.start_kill().unwrap(); // SIGKILL
    let status = first.child.wait().await.unwrap();
    assert!(
        !status.success(),
        "the server should have died from SIGKILL: {status}"
    );
    while let Some(order) = done_rx.recv().await {
        acked.insert(order.client_order_id.clone(), order);
    }
    assert!(acked.len() >= 50, "{} acknowledged", acked.len());
    let in_flight = requests.len() - acked.len();

    // Restart on the same data directory.
    let second = serve(data.path()).await;
    let token = trader_token(&second.url).await;
    let authed = fxcast_testkit::channel(&second.url, &token).await;
    let mut orders = OrderServiceClient::new(authed.clone());

    for (id, before) in &acked {
        let request = GetOrderRequest {
            order_id: before.order_id.clone(),
            ..Default::default()
        };
        let after = orders.get_order(request).await;
        let after = after.unwrap_or_else(|e| panic!("acknowledged order {id} lost: {e}"));
        let after = after.into_inner();
        assert_eq!(
            &after, before,
            "acknowledged order {id} changed across the restart"
        );
    }

    // Retry every order: the acknowledged ones come back as they were; the
    // others get one final outcome, and none is recorded twice.
    let mut retried: HashMap<String, Order> = HashMap::new();
    for (id, request) in &requests {
        let order = place(&mut orders, request).await;
        assert!(
            matches!(order.status(), OrderStatus::Filled | OrderStatus::Rejected),
            "{order:?}"
        );
        if let Some(before) = acked.get(id) {
            assert_eq!(
                &order, before,
                "a retry of {id} after the restart did not return the original"
            );
        }
        retried.insert(id.clone(), order);
    }
    for (id, request) in &requests {
        let again = place(&mut orders, request).await;
        assert_eq!(&again, &retried[id], "second retry of {id} differs");
    }
    eprintln!(
        "{} orders placed, {in_flight} unacknowledged at SIGKILL",
        requests.len()
    );
    let journal = all_orders(&mut orders).await;
    assert_eq!(
        journal.len(),
        requests.len(),
        "one order per client_order_id"
    );
    let ids: HashSet<_> = journal.iter().map(|o| o.client_order_id.clone()).collect();
    assert_eq!(ids.len(), requests.len());
    let order_ids: HashSet<_> = journal.iter().map(|o| o.order_id.clone()).collect();
    assert_eq!(order_ids.len(), requests.len());
    for order in &journal {
        assert_eq!(order, &retried[&order.client_order_id]);
    }

    // The terminal client retries across the restart too.
    let filled = acked
        .values()
        .find(|o| o.status() == OrderStatus::Filled)
        .unwrap();
    let request = &requests[&filled.client_order_id];
    let side = if request.side == Side::Buy as i32 {
        "buy"
    } else {
        "sell"
    };
    let id = &request.client_order_id;
    let args = [
        "--side",
        side,
        "--quantity",
        "1000",
        "--price",
        &request.price,
    ];
    let args = [
        &args[..],
        &["--rate-id", &request.rate_id, "--client-order-id", id],
    ]
    .concat();
    let output = order_cli(&second.url, &token, &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(&format!(
            "FILLED    {side} 1000 USD_JPY at {}",
            filled.fill_price
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("order {}", filled.order_id)),
        "{stdout}"
    );
    assert_eq!(
        all_orders(&mut orders).await.len(),
        requests.len(),
        "the CLI retry added nothing"
    );

    // A price far from the market: rejected, and the command says so and fails.
    let args = ["--side", "buy", "--quantity", "1000", "--price", "100.000"];
    let args = [&args[..], &["--client-order-id", "cli-far"]].concat();
    let output = order_cli(&second.url, &token, &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("REJECTED  buy 1000 USD_JPY at 100.000: PRICE_MOVED\n  ask 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" from 100.000, tolerance 0.010"),
        "{stdout}"
    );
    assert!(stderr.contains("order rejected: PRICE_MOVED"), "{stderr}");
}
