//! A three-process fxcast cluster through the real binary, on one engine
//! (a real nats-server, then a real redis-server: each engine runs the same
//! scenario):
//! - A publishes (simulator feed) and forwards its orders;
//! - B executes orders (the journal and the LP) with `--feed none`;
//! - C serves with `--feed none` and forwards its orders to B.
//!
//! A gRPC client on C and a WebSocket client on B see A's ticks gap-free;
//! an order on B is priced from the shared latest rate; one
//! `client_order_id` sent to B and C at once fills once; a token revoked on
//! B is refused on C and ends C's open stream; A killed with SIGKILL leaves
//! B's and C's rates stale within `--stale-after`; A restarted on its data
//! directory continues the sequences.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use fxcast_proto::v1::{
    ListOrdersRequest, Order, OrderStatus, PlaceOrderRequest, Rate, RejectReason,
    RevokeTokenRequest, Side, order_service_client::OrderServiceClient,
    rate_service_client::RateServiceClient, stream_rates_response::Event,
    token_service_client::TokenServiceClient,
};
use fxcast_testkit::{
    Authed, NatsServer, RedisServer, ServeProcess, end_status, latest_rate, next_event, next_json,
    next_rate, spawn_serve, stream_symbols, subscribe,
};

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");
const API_KEY: &str = "cluster-test-api-key-0123456789abcdef";
/// `--stale-after` of every node.
const STALE_AFTER: Duration = Duration::from_secs(1);
const SCOPES: &[&str] = &["rates:subscribe=USD_JPY", "orders:place"];

/// One node's process and its clients' address.
struct Node {
    process: ServeProcess,
}

impl Node {
    /// `fxcast serve` on `engine` with `data`, the cluster's shared signing
    /// keys and API key, and `args`.
    async fn start(engine: &[String], data: &Path, keys: &Path, args: &[&str]) -> Self {
        let mut argv: Vec<&str> = engine.iter().map(String::as_str).collect();
        argv.extend_from_slice(&[
            "--symbols",
            "USD_JPY",
            "--stale-after",
            "1s",
            "--signing-keys",
            keys.to_str().unwrap(),
        ]);
        argv.extend_from_slice(args);
        let process = spawn_serve(BIN, data, &argv, &[("FXCAST_API_KEY", API_KEY)]).await;
        Self { process }
    }

    fn url(&self) -> String {
        format!("http://{}", self.process.grpc)
    }

    async fn as_(&self, token: &str) -> Authed {
        fxcast_testkit::channel(&self.url(), token).await
    }

    async fn rates(&self, token: &str) -> RateServiceClient<Authed> {
        RateServiceClient::new(self.as_(token).await)
    }

    async fn orders(&self, token: &str) -> OrderServiceClient<Authed> {
        OrderServiceClient::new(self.as_(token).await)
    }

    /// A token issued by this node for `subject`.
    async fn token(&self, subject: &str) -> (String, String) {
        let issued = fxcast_testkit::issue_token(&self.url(), API_KEY, subject, SCOPES).await;
        (issued.token, issued.token_id)
    }
}

/// Reads the latest USD_JPY rate until `done` says yes, for at
/// most `within`; the rate that satisfied it.
async fn latest_until(
    rates: &mut RateServiceClient<Authed>,
    within: Duration,
    done: impl Fn(&Rate) -> bool,
) -> Rate {
    let deadline = Instant::now() + within;
    loop {
        // UNAVAILABLE until the first rate is published.
        let rate = latest_rate(rates, "USD_JPY").await;
        match &rate {
            Ok(rate) if done(rate) => return rate.clone(),
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {rate:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn order(client_order_id: &str, rate: &Rate) -> PlaceOrderRequest {
    PlaceOrderRequest {
        client_order_id: client_order_id.into(),
        symbol: "USD_JPY".into(),
        side: Side::Buy as i32,
        quantity: "1000".into(),
        price: rate.ask.clone(),
        ..Default::default()
    }
}

/// [`order`] placed through `orders`, which must answer.
async fn place(
    orders: &mut OrderServiceClient<Authed>,
    client_order_id: &str,
    rate: &Rate,
) -> Order {
    orders
        .place_order(order(client_order_id, rate))
        .await
        .unwrap()
        .into_inner()
}

/// The scenario of this file on the engine `engine` names (its
/// `--transport ...` flags).
async fn cluster_on(engine: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("signing-keys.json");
    let data = |name: &str| dir.path().join(name);
    // The executor accepts a price 0.5 off: the simulator may tick
    // between the quote and the order.
    let conventions = dir.path().join("executor.toml");
    std::fs::write(&conventions, "[symbol.USD_JPY]\ntolerance = \"0.5\"\n").unwrap();

    let b = Node::start(
        engine,
        &data("b"),
        &keys,
        &["--feed", "none", "--config", conventions.to_str().unwrap()],
    )
    .await;
    let b_url = b.url();
    let feed = ["--tick-interval", "50ms", "--orders-upstream", &b_url];
    let mut a = Node::start(engine, &data("a"), &keys, &feed).await;
    let c = Node::start(
        engine,
        &data("c"),
        &keys,
        &["--feed", "none", "--orders-upstream", &b_url],
    )
    .await;
    let (token, _) = b.token("trader").await;

    // A gRPC client on C and a WebSocket client on B: A's ticks, gap-free.
    let mut at_c = c.rates(&token).await;
    let mut on_c = stream_symbols(&mut at_c, &["USD_JPY"]).await;
    let url = format!("ws://{}/v1/stream?token={token}", b.process.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    subscribe(&mut ws, &["USD_JPY"]).await;
    let mut grpc_last = next_rate(&mut on_c).await.sequence;
    let mut ws_last = None;
    for _ in 0..10 {
        let rate = next_rate(&mut on_c).await;
        assert_eq!(rate.sequence, grpc_last + 1, "a gap on C after {grpc_last}");
        grpc_last = rate.sequence;
        let message = next_json(&mut ws).await;
        assert_eq!(message["type"], "rate", "{message}");
        let sequence = message["sequence"].as_u64().unwrap();
        if let Some(last) = ws_last {
            assert_eq!(sequence, last + 1, "a gap on B's WebSocket after {last}");
        }
        ws_last = Some(sequence);
    }

    // B has no feed: its order is priced on the rate A published.
    let mut at_b = b.rates(&token).await;
    let quoted = latest_rate(&mut at_b, "USD_JPY").await.unwrap();
    let mut orders_b = b.orders(&token).await;
    let filled = place(&mut orders_b, "cluster-1", &quoted).await;
    assert_eq!(filled.status(), OrderStatus::Filled, "{filled:?}");

    // One client_order_id at B and at C at once: one order, one fill.
    let mut orders_c = c.orders(&token).await;
    let quoted = latest_rate(&mut at_c, "USD_JPY").await.unwrap();
    let twice = order("cluster-2", &quoted);
    let (at_b_result, at_c_result) = tokio::join!(
        orders_b.place_order(twice.clone()),
        orders_c.place_order(twice.clone())
    );
    let (from_b, from_c) = (
        at_b_result.unwrap().into_inner(),
        at_c_result.unwrap().into_inner(),
    );
    assert_eq!(
        from_b.order_id, from_c.order_id,
        "two orders: {from_b:?} {from_c:?}"
    );
    assert_eq!(from_b, from_c);
    assert_eq!(from_b.status(), OrderStatus::Filled, "{from_b:?}");
    let listed = orders_c
        .list_orders(ListOrdersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .orders;
    let ids: Vec<_> = listed.iter().map(|o| o.client_order_id.as_str()).collect();
    assert_eq!(ids, ["cluster-2", "cluster-1"], "{listed:?}");

    // A token revoked on B: C's open stream ends and C refuses it.
    let (doomed, doomed_id) = b.token("doomed").await;
    let mut doomed_at_c = c.rates(&doomed).await;
    let mut doomed_stream = stream_symbols(&mut doomed_at_c, &["USD_JPY"]).await;
    next_rate(&mut doomed_stream).await;
    TokenServiceClient::new(b.as_(API_KEY).await)
        .revoke_token(RevokeTokenRequest {
            token_id: doomed_id,
        })
        .await
        .unwrap();
    let ended = end_status(&mut doomed_stream, Duration::from_secs(10)).await;
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    let refused = latest_rate(&mut doomed_at_c, "USD_JPY").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A dies: within --stale-after (plus the time to look), B and C say
    // stale, and B refuses orders on the stale rate.
    let before = latest_rate(&mut at_c, "USD_JPY").await.unwrap();
    a.process.child.start_kill().unwrap();
    a.process.child.wait().await.unwrap();
    let killed = Instant::now();
    let slack = STALE_AFTER + Duration::from_secs(1);
    let stale_c = latest_until(&mut at_c, slack, |r| r.stale).await;
    let stale_b = latest_until(&mut at_b, slack, |r| r.stale).await;
    assert!(
        killed.elapsed() <= slack,
        "stale after {:?}",
        killed.elapsed()
    );
    assert!(
        stale_c.sequence >= before.sequence,
        "{stale_c:?} {before:?}"
    );
    assert_eq!(stale_b.sequence, stale_c.sequence);
    let refused = place(&mut orders_b, "cluster-3", &stale_b).await;
    assert_eq!(refused.status(), OrderStatus::Rejected, "{refused:?}");
    assert_eq!(
        refused.reject_reason(),
        RejectReason::StalePrice,
        "{refused:?}"
    );

    // A again, on its data directory: the sequences continue and the rates
    // are live again on B and C.
    a = Node::start(engine, &data("a"), &keys, &feed).await;
    let resumed = latest_until(&mut at_c, Duration::from_secs(10), |r| {
        !r.stale && r.sequence > stale_c.sequence
    })
    .await;
    latest_until(&mut at_b, Duration::from_secs(10), |r| !r.stale).await;
    // C's stream goes on: the sequences A reserved before it was killed
    // are announced as a gap, then A's new ticks follow.
    loop {
        match next_event(&mut on_c).await {
            Event::Gap(gap) => assert!(gap.first_missing > grpc_last, "{gap:?}"),
            Event::Rate(rate) if rate.sequence > stale_c.sequence => break,
            Event::Rate(rate) => assert!(rate.sequence > grpc_last, "{rate:?}"),
        }
    }
    assert!(resumed.sequence > stale_c.sequence);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_nats_share_ticks_orders_revocations_and_staleness() {
    let nats = NatsServer::start();
    cluster_on(&[
        "--transport".into(),
        "nats".into(),
        "--nats-url".into(),
        nats.url(),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_redis_share_ticks_orders_revocations_and_staleness() {
    let redis = RedisServer::start();
    cluster_on(&[
        "--transport".into(),
        "redis".into(),
        "--redis-url".into(),
        redis.url(),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_to_an_executor_that_is_down_are_refused_as_unavailable_and_say_a_retry_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let executor = format!("http://{closed}");
    let node = Node::start(
        &[],
        &dir.path().join("node"),
        &dir.path().join("keys.json"),
        &["--tick-interval", "50ms", "--orders-upstream", &executor],
    )
    .await;
    let (token, _) = node.token("trader").await;
    let rate = latest_until(
        &mut node.rates(&token).await,
        Duration::from_secs(10),
        |_| true,
    )
    .await;

    let refused = node
        .orders(&token)
        .await
        .place_order(order("down-1", &rate))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let message = refused.message();
    assert!(
        message.contains(&format!("the order executor at {executor} is unreachable"))
            && message.contains("retry with the same client_order_id"),
        "{message}"
    );

    // REST through the node's gateway says the same as JSON.
    let body = serde_json::json!({
        "client_order_id": "down-2", "symbol": "USD_JPY", "side": "buy",
        "quantity": "1000", "price": rate.ask,
    });
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/orders", node.process.http))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("order executor"),
        "{error}"
    );
}
