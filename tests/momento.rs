//! `fxcast serve --transport momento` as users run it: the real binary
//! against momento-local (in-process, or the `fxcast momento-local` binary
//! where it must be killed), checked with fxcast's gRPC and HTTP APIs and
//! with Momento's own SDKs (Rust here, Python through
//! tests/python/momento_rates_subscriber.py).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use fxcast_momento_local::{MomentoLocalConfig, serve as serve_momento_local};
use fxcast_proto::v1::{
    GapReason, IssueTokenResponse, OrderStatus, Rate, RevokeTokenRequest, StreamRatesResponse,
    order_service_client::OrderServiceClient, rate_service_client::RateServiceClient,
    stream_rates_response::Event, token_service_client::TokenServiceClient,
};
use fxcast_testkit::{http_request, latest_rate, log_field, next_within};
use momento::{
    CacheClient, CredentialProvider, MomentoError, MomentoErrorCode, TopicClient,
    topics::{Subscription, ValueKind},
};
use prost::Message;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines},
    net::TcpListener,
    process::{Child, ChildStdout, Command},
};
use tonic::{Streaming, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");
const API_KEY: &str = "momento-e2e-test-api-key-0123456789";
const MOMENTO_KEY: &str = "momento-e2e-key";
const CACHE: &str = "fxcast";
/// How long any single expected event may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// momento-local in this test's runtime, on an ephemeral port.
async fn momento_local() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = MomentoLocalConfig {
        caches: vec![CACHE.to_owned()],
        ..MomentoLocalConfig::default()
    };
    tokio::spawn(serve_momento_local(
        listener,
        config,
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// `fxcast momento-local` as a process (so it can be killed) on `listen`.
async fn momento_local_process(listen: &str) -> (Child, SocketAddr) {
    let mut command = Command::new(BIN);
    command.args(["momento-local", "--listen", listen, "--cache", CACHE]);
    let (child, line) = fxcast_testkit::spawn_until(command, "momento-local listening").await;
    (child, log_field(&line, "addr").parse().unwrap())
}

struct Served {
    _child: Child,
    grpc: String,
    http: String,
    _data: tempfile::TempDir,
}

/// `serve` arguments for a process without a feed on Momento at `endpoint`,
/// then `extra`. Every rate is sent unpaced, so every process sees every
/// sequence.
fn on_momento<'a>(endpoint: &'a str, symbols: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--transport",
        "momento",
        "--momento-endpoint",
        endpoint,
        "--symbols",
        symbols,
        "--feed",
        "none",
        "--momento-publish-rate",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

/// `fxcast serve` on ephemeral ports with `args`, once it logged them.
async fn serve(args: &[&str]) -> Served {
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("FXCAST_API_KEY", API_KEY),
        ("MOMENTO_API_KEY", MOMENTO_KEY),
    ];
    let served = fxcast_testkit::spawn_serve(BIN, data.path(), args, &env).await;
    Served {
        grpc: format!("http://{}", served.grpc),
        http: served.http,
        _child: served.child,
        _data: data,
    }
}

async fn issue(served: &Served, scopes: &[&str]) -> IssueTokenResponse {
    fxcast_testkit::issue_token(&served.grpc, API_KEY, "trader", scopes).await
}

async fn rates_client(served: &Served, token: &str) -> RateServiceClient<fxcast_testkit::Authed> {
    RateServiceClient::new(fxcast_testkit::channel(&served.grpc, token).await)
}

async fn publish(
    rates: &mut RateServiceClient<fxcast_testkit::Authed>,
    symbol: &str,
    bid: &str,
    ask: &str,
) -> Rate {
    fxcast_testkit::publish_rate(rates, symbol, bid, ask)
        .await
        .unwrap()
}

async fn stream(
    rates: &mut RateServiceClient<fxcast_testkit::Authed>,
    symbol: &str,
) -> Streaming<StreamRatesResponse> {
    fxcast_testkit::stream_symbols(rates, &[symbol]).await
}

/// A signing-keys file for servers that share their keys, in a fresh
/// directory (kept while the guard lives).
fn shared_keys() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("signing-keys.json");
    let keys = keys.to_str().unwrap().to_owned();
    (dir, keys)
}

/// Revokes `token_id` through `served`'s TokenService.
async fn revoke(served: &Served, token_id: &str) {
    let mut tokens = TokenServiceClient::new(fxcast_testkit::channel(&served.grpc, API_KEY).await);
    let revoke = RevokeTokenRequest {
        token_id: token_id.to_owned(),
    };
    tokens.revoke_token(revoke).await.unwrap();
}

/// `served` refuses `token` a Momento token: FAILED_PRECONDITION.
async fn momento_access_refused(served: &Served, token: &str) {
    let mut tokens = TokenServiceClient::new(fxcast_testkit::channel(&served.grpc, token).await);
    let refused = tokens
        .issue_momento_access(fxcast_proto::v1::IssueMomentoAccessRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
}

async fn next_event(stream: &mut Streaming<StreamRatesResponse>) -> Event {
    let message = fxcast_testkit::next_message_within(stream, DEADLINE).await;
    message.event.expect("empty event")
}

async fn next_rate(stream: &mut Streaming<StreamRatesResponse>) -> Rate {
    match next_event(stream).await {
        Event::Rate(rate) => rate,
        other => panic!("expected a rate, got {other:?}"),
    }
}

/// Momento's Rust SDK pointed at momento-local with `token` (a v1 key or a
/// disposable token as IssueToken returns it).
fn sdk_credentials(url: &str, token: &str) -> CredentialProvider {
    CredentialProvider::from_disposable_token(token)
        .unwrap()
        .insecure_endpoint_override(url)
}

fn v1_key(api_key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE.encode(format!(
        r#"{{"endpoint":"127.0.0.1","api_key":"{api_key}"}}"#
    ))
}

fn sdk_topics(credentials: CredentialProvider) -> TopicClient {
    TopicClient::builder()
        .configuration(momento::topics::configurations::Laptop::latest())
        .credential_provider(credentials)
        .build()
        .unwrap()
}

async fn sdk_next_rate(subscription: &mut Subscription) -> Rate {
    let value = next_within(subscription, DEADLINE, "no topic value within the deadline").await;
    match value.kind {
        ValueKind::Binary(bytes) => Rate::decode(bytes.as_slice()).expect("a protobuf Rate"),
        ValueKind::Text(text) => panic!("expected a binary Rate, got text {text:?}"),
    }
}

/// Runs the Python SDK subscriber; returns once it is subscribed.
async fn python_subscriber(
    momento_url: &str,
    token: &str,
    topic: &str,
    count: usize,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/momento_rates_subscriber.py"
    );
    let port = momento_url.rsplit(':').next().unwrap();
    let mut child = Command::new("python3")
        .arg(script)
        .env("MOMENTO_PORT", port)
        .env("MOMENTO_TOKEN", token)
        .env("MOMENTO_CACHE", CACHE)
        .env("TOPIC", topic)
        .env("COUNT", count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is required: scripts/test installs what the tests need");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the Python subscriber did not subscribe in time")
        .unwrap();
    if first.as_deref() != Some("subscribed") {
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        panic!("the Python subscriber failed (scripts/test installs its SDK): {first:?}\n{stderr}");
    }
    (child, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_go_through_momento_to_another_process_and_to_momento_sdks() {
    let momento = momento_local().await;
    let momento_args = on_momento(&momento, "USD_JPY,EUR_USD", &[]);
    let first = serve(&momento_args).await;
    let issued = issue(&first, &["rates:subscribe=*", "rates:publish"]).await;
    let mut first_rates = rates_client(&first, &issued.token).await;
    let opening = publish(&mut first_rates, "USD_JPY", "151.230", "151.238").await;
    publish(&mut first_rates, "EUR_USD", "1.08410", "1.08420").await;

    // A second process without a feed, started afterwards: the latest rates
    // come from the Momento cache at once, and it prices orders on them.
    let second = serve(&[&momento_args[..], &["--max-price-age", "60s"]].concat()).await;
    let trader = issue(&second, &["rates:subscribe=*", "orders:place"]).await;
    let mut second_rates = rates_client(&second, &trader.token).await;
    let latest = latest_rate(&mut second_rates, "USD_JPY").await.unwrap();
    assert_eq!(latest, opening);
    let mut orders =
        OrderServiceClient::new(fxcast_testkit::channel(&second.grpc, &trader.token).await);
    let order = orders
        .place_order(common::buy_usd_jpy(
            "momento-1",
            "151.238",
            &opening.rate_id,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.status(), OrderStatus::Filled, "{order:?}");
    assert_eq!(order.fill_price, "151.238");
    assert_eq!(order.market_rate_id, opening.rate_id);

    // Streams on both processes start with the opening rate, ...
    let mut first_stream = stream(&mut first_rates, "USD_JPY").await;
    let mut second_stream = stream(&mut second_rates, "USD_JPY").await;
    assert_eq!(next_rate(&mut first_stream).await, opening);
    assert_eq!(next_rate(&mut second_stream).await, opening);

    // ... Momento's SDKs subscribe to rates.USD_JPY: Rust with an API key,
    // Python with the disposable token IssueToken handed out, ...
    let rust_topics = sdk_topics(sdk_credentials(&momento, &v1_key("rust-sdk")));
    let mut rust_subscription = rust_topics.subscribe(CACHE, "rates.USD_JPY").await.unwrap();
    let access = issued
        .momento
        .clone()
        .expect("a Momento token with the fxcast token");
    let (mut python, mut python_lines) =
        python_subscriber(&momento, &access.token, "rates.USD_JPY", 3).await;

    // ... and every one of them receives the next rates, unchanged.
    let mut published = Vec::new();
    for (bid, ask) in [
        ("151.231", "151.239"),
        ("151.232", "151.240"),
        ("151.229", "151.237"),
    ] {
        published.push(publish(&mut first_rates, "USD_JPY", bid, ask).await);
    }
    for rate in &published {
        assert_eq!(&next_rate(&mut first_stream).await, rate);
        assert_eq!(&next_rate(&mut second_stream).await, rate);
        assert_eq!(&sdk_next_rate(&mut rust_subscription).await, rate);
        let line = tokio::time::timeout(DEADLINE, python_lines.next_line())
            .await
            .expect("the Python subscriber printed nothing")
            .unwrap()
            .expect("the Python subscriber ended early");
        let seen: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(seen["symbol"], "USD_JPY", "{line}");
        assert_eq!(seen["sequence"], rate.sequence, "{line}");
        assert_eq!(seen["rate_id"], rate.rate_id.as_str(), "{line}");
        assert_eq!(seen["bid"], rate.bid.as_str(), "{line}");
        assert_eq!(seen["ask"], rate.ask.as_str(), "{line}");
    }
    let last = tokio::time::timeout(DEADLINE, python_lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.as_deref(), Some("publish refused"));
    let status = tokio::time::timeout(DEADLINE, python.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the Python subscriber failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_carry_a_subscribe_only_momento_token() {
    let momento = momento_local().await;
    let endpoint = format!("--momento-endpoint={momento}");
    let symbols = "--symbols=USD_JPY,EUR_USD";
    let served = serve(&[
        "--transport=momento",
        &endpoint,
        symbols,
        "--tick-interval=50ms",
    ])
    .await;

    let issued = issue(&served, &["rates:subscribe=USD_JPY", "orders:place"]).await;
    let access = issued.momento.expect("a Momento token");
    assert_eq!(access.topics, ["rates.USD_JPY"]);
    assert_eq!(access.cache_name, CACHE);
    assert_eq!(access.endpoint, momento);
    let expires = std::time::SystemTime::try_from(access.expires_at.unwrap()).unwrap();
    let fxcast_expires = std::time::SystemTime::try_from(issued.expires_at.unwrap()).unwrap();
    assert!(
        expires <= fxcast_expires,
        "it must not outlive the fxcast token"
    );
    assert!(
        fxcast_expires.duration_since(expires).unwrap() < Duration::from_secs(5),
        "{expires:?} vs {fxcast_expires:?}"
    );

    // It subscribes to the topic the fxcast token may see, ...
    let credentials = sdk_credentials(&momento, &access.token);
    let topics = sdk_topics(credentials.clone());
    let mut subscription = topics.subscribe(CACHE, "rates.USD_JPY").await.unwrap();
    let rate = sdk_next_rate(&mut subscription).await;
    assert_eq!(rate.symbol, "USD_JPY");
    assert!(rate.rate_id.starts_with("USD_JPY-"), "{rate:?}");
    // ... and can do nothing else: publish, another symbol's topic, the cache.
    let refused = |err: MomentoError| {
        assert_eq!(err.error_code, MomentoErrorCode::PermissionError, "{err}");
    };
    let forged = topics.publish(CACHE, "rates.USD_JPY", "forged").await;
    refused(forged.unwrap_err());
    let other = topics.subscribe(CACHE, "rates.EUR_USD").await;
    refused(other.err().expect("another symbol's topic is refused"));
    let laptop = momento::cache::configurations::Laptop::latest();
    let cache = CacheClient::builder().default_ttl(Duration::from_secs(60));
    let cache = cache.configuration(laptop).credential_provider(credentials);
    let read = cache
        .build()
        .unwrap()
        .get(CACHE, "latest:rates.USD_JPY")
        .await;
    refused(read.unwrap_err());

    // A token that may not see rates gets no Momento token.
    let orders_only = issue(&served, &["orders:place"]).await;
    assert!(orders_only.momento.is_none());

    // Browsers get it from POST /v1/tokens, for every symbol.
    let (status, body) = http_request(&served.http, "POST", "/v1/tokens").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["momento"]["topics"],
        serde_json::json!(["rates.EUR_USD", "rates.USD_JPY"])
    );
    assert_eq!(json["momento"]["cache_name"], CACHE);
    assert!(
        json["momento"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_transport_offers_no_momento_token_and_the_bridge_does() {
    let memory = serve(&["--symbols", "USD_JPY"]).await;
    assert!(
        issue(&memory, &["rates:subscribe=*"])
            .await
            .momento
            .is_none()
    );
    let (_, body) = http_request(&memory.http, "POST", "/v1/tokens").await;
    assert!(!body.contains("momento"), "{body}");

    // The bridge: in-process transport, every rate mirrored to Momento.
    let momento = momento_local().await;
    let endpoint = format!("--momento-endpoint={momento}");
    let bridge = [
        "--momento-bridge",
        &endpoint,
        "--symbols=USD_JPY",
        "--feed=none",
    ];
    let bridged = serve(&[&bridge[..], &["--momento-publish-rate=0"]].concat()).await;
    let issued = issue(&bridged, &["rates:subscribe=*", "rates:publish"]).await;
    let access = issued.momento.expect("the bridge offers Momento tokens");
    assert_eq!(
        access.max_messages_per_second, 0,
        "unpaced: every rate is on its topic"
    );
    let topics = sdk_topics(sdk_credentials(&momento, &access.token));
    let mut subscription = topics.subscribe(CACHE, "rates.USD_JPY").await.unwrap();
    let mut rates = rates_client(&bridged, &issued.token).await;
    let mut local = stream(&mut rates, "USD_JPY").await;
    for (bid, ask) in [("151.230", "151.238"), ("151.231", "151.239")] {
        let rate = publish(&mut rates, "USD_JPY", bid, ask).await;
        assert_eq!(next_rate(&mut local).await, rate);
        assert_eq!(sdk_next_rate(&mut subscription).await, rate);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_momento_local_mid_stream_reconnects_with_a_gap_and_no_duplicates() {
    let (momento, addr) = momento_local_process("127.0.0.1:0").await;
    let url = format!("http://{addr}");
    let endpoint = format!("--momento-endpoint={url}");
    // Ticks slower than the publish pacing (10/s): nothing is conflated
    // while Momento is up.
    let ticks = "--tick-interval=200ms";
    let served = serve(&["--transport=momento", &endpoint, "--symbols=USD_JPY", ticks]).await;
    let issued = issue(&served, &["rates:subscribe=*"]).await;
    let mut rates = rates_client(&served, &issued.token).await;
    let channel = Channel::from_shared(served.grpc.clone()).unwrap();
    let mut health = HealthClient::new(channel.connect().await.unwrap());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "fxcast.v1.RateService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Waits until RateService's health is `expected` (repeats are skipped).
    let mut wait_status = async move |expected: ServingStatus| {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let status = watch.message().await.unwrap().unwrap().status();
                if status == expected {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("RateService did not become {expected:?}"))
    };
    wait_status(ServingStatus::Serving).await;

    // Ticks through Momento, contiguous.
    let mut ticks = stream(&mut rates, "USD_JPY").await;
    let mut last = next_rate(&mut ticks).await.sequence;
    for _ in 0..3 {
        let rate = next_rate(&mut ticks).await;
        assert_eq!(rate.sequence, last + 1, "{rate:?}");
        last = rate.sequence;
    }

    // kill -9: subscriptions break, publishes fail.
    let mut momento = momento;
    momento.start_kill().unwrap();
    momento.wait().await.unwrap();
    wait_status(ServingStatus::NotServing).await;
    let (status, body) = http_request(&served.http, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("reconnecting"), "{body}");
    // Rates go on being published locally meanwhile; wait until two are
    // lost for good.
    tokio::time::timeout(DEADLINE, async {
        loop {
            let latest = latest_rate(&mut rates, "USD_JPY").await.unwrap();
            if latest.sequence >= last + 3 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the feed stopped while Momento was down");

    // Back on the same port, with nothing it held before.
    let (_momento, _) = momento_local_process(&addr.to_string()).await;
    wait_status(ServingStatus::Serving).await;

    // The stream continues: what was lost is announced as a gap, nothing
    // is delivered twice, and ticks flow contiguously again.
    let mut gaps = Vec::new();
    let mut after_gap = 0;
    while after_gap < 3 {
        match next_event(&mut ticks).await {
            Event::Rate(rate) => {
                assert!(
                    rate.sequence > last,
                    "sequence {} delivered after {last}",
                    rate.sequence
                );
                if rate.sequence != last + 1 {
                    panic!(
                        "sequences {}..{} skipped without a gap",
                        last + 1,
                        rate.sequence
                    );
                }
                last = rate.sequence;
                if !gaps.is_empty() {
                    after_gap += 1;
                }
            }
            Event::Gap(gap) => {
                assert_eq!(gap.symbol, "USD_JPY");
                assert_eq!(gap.reason(), GapReason::Transport, "{gap:?}");
                assert_eq!(gap.first_missing, last + 1, "{gap:?}");
                assert!(gap.last_missing >= gap.first_missing, "{gap:?}");
                last = gap.last_missing;
                gaps.push(gap);
            }
        }
    }
    assert!(!gaps.is_empty());
    let (status, body) = http_request(&served.http, "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_restarted_elsewhere_continues_the_sequence_and_peers_keep_following() {
    let momento = momento_local().await;
    let args = on_momento(&momento, "USD_JPY", &["--max-price-age", "60s"]);
    let publisher = serve(&args).await;
    let issued = issue(&publisher, &["rates:subscribe=*", "rates:publish"]).await;
    let mut rates = rates_client(&publisher, &issued.token).await;
    publish(&mut rates, "USD_JPY", "151.230", "151.238").await;
    let before = publish(&mut rates, "USD_JPY", "151.231", "151.239").await;

    let peer = serve(&args).await;
    let watcher = issue(&peer, &["rates:subscribe=*"]).await;
    let mut peer_rates = rates_client(&peer, &watcher.token).await;
    let mut peer_stream = stream(&mut peer_rates, "USD_JPY").await;
    assert_eq!(next_rate(&mut peer_stream).await, before);

    // The publisher dies (no clean stop) and starts again on another machine:
    // a fresh data directory, so only the Momento cache knows where it was.
    drop(rates);
    drop(publisher);
    let publisher = serve(&args).await;
    let issued = issue(&publisher, &["rates:subscribe=*", "rates:publish"]).await;
    let mut rates = rates_client(&publisher, &issued.token).await;
    let after = publish(&mut rates, "USD_JPY", "151.240", "151.248").await;
    assert_eq!(
        after.sequence,
        before.sequence + 1,
        "the new run continues after the rate in the cache"
    );
    assert_ne!(after.rate_id, before.rate_id);

    // The peer follows the new run at once: nothing is ignored as old.
    assert_eq!(next_rate(&mut peer_stream).await, after);
    let latest = latest_rate(&mut peer_rates, "USD_JPY").await.unwrap();
    assert_eq!(latest, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_server_is_refused_by_its_peers_at_once() {
    let momento = momento_local().await;
    let (_shared, keys) = shared_keys();
    let args = on_momento(&momento, "USD_JPY", &["--signing-keys", &keys]);
    let first = serve(&args).await;
    let second = serve(&args).await;
    let publisher = issue(&first, &["rates:publish"]).await;
    let mut first_rates = rates_client(&first, &publisher.token).await;
    publish(&mut first_rates, "USD_JPY", "151.230", "151.238").await;

    // A token issued by the first server, streaming from the second.
    let issued = issue(&first, &["rates:subscribe=*"]).await;
    let mut second_rates = rates_client(&second, &issued.token).await;
    let mut stream = stream(&mut second_rates, "USD_JPY").await;
    next_rate(&mut stream).await;

    revoke(&first, &issued.token_id).await;

    // The second server learns it through Momento and ends the stream.
    let status = fxcast_testkit::end_status(&mut stream, DEADLINE).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().starts_with("token revoked"), "{status:?}");
    let refused = latest_rate(&mut second_rates, "USD_JPY").await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::Unauthenticated, "token revoked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_after_a_revocation_refuses_the_token_from_its_first_request() {
    let momento = momento_local().await;
    let (_shared, keys) = shared_keys();
    let args = on_momento(&momento, "USD_JPY", &["--signing-keys", &keys]);
    let first = serve(&args).await;
    let revoked = issue(&first, &["rates:subscribe=*"]).await;
    let kept = issue(&first, &["rates:subscribe=*"]).await;
    revoke(&first, &revoked.token_id).await;
    drop(first);

    // Nobody is left to announce it: the later server reads the set the
    // first one retained before it reports itself started.
    let later = serve(&args).await;
    let mut refused_client = rates_client(&later, &revoked.token).await;
    let refused = latest_rate(&mut refused_client, "USD_JPY")
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::Unauthenticated, "token revoked")
    );
    // Another token of the same keys is not caught by it.
    let mut kept_client = rates_client(&later, &kept.token).await;
    let answer = latest_rate(&mut kept_client, "USD_JPY").await;
    assert_ne!(
        answer.as_ref().err().map(tonic::Status::code),
        Some(tonic::Code::Unauthenticated),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fxcast_token_gets_fresh_momento_tokens_over_grpc_and_rest() {
    let momento = momento_local().await;
    let served = serve(&on_momento(&momento, "USD_JPY,EUR_USD", &[])).await;
    let issued = issue(&served, &["rates:subscribe=USD_JPY", "rates:publish"]).await;
    let first = issued.momento.clone().expect("a Momento token");

    // gRPC, with the fxcast token itself.
    let mut tokens =
        TokenServiceClient::new(fxcast_testkit::channel(&served.grpc, &issued.token).await);
    let fresh = tokens
        .issue_momento_access(fxcast_proto::v1::IssueMomentoAccessRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fresh.token, first.token);
    assert_eq!(fresh.topics, ["rates.USD_JPY"]);
    assert!(fresh.expires_at.unwrap().seconds <= issued.expires_at.unwrap().seconds);
    // The fresh token works with Momento's SDK.
    let topics = sdk_topics(sdk_credentials(&momento, &fresh.token));
    let mut subscription = topics.subscribe(CACHE, "rates.USD_JPY").await.unwrap();
    let mut rates = rates_client(&served, &issued.token).await;
    let rate = publish(&mut rates, "USD_JPY", "151.230", "151.238").await;
    assert_eq!(sdk_next_rate(&mut subscription).await, rate);

    // REST, the same.
    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{}/v1/tokens/momento", served.http))
        .bearer_auth(&issued.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["topics"], serde_json::json!(["rates.USD_JPY"]));
    assert_eq!(body["cache_name"], CACHE);
    let anonymous = http
        .post(format!("http://{}/v1/tokens/momento", served.http))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // A server without Momento says so.
    let memory = serve(&["--symbols", "USD_JPY"]).await;
    let token = issue(&memory, &["rates:subscribe=*"]).await.token;
    momento_access_refused(&memory, &token).await;
    let response = http
        .post(format!("http://{}/v1/tokens/momento", memory.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn the_operations_the_settings_spend_are_exported() {
    let momento = momento_local().await;
    // 3 symbols ticking 10 times a second, paced to 5 publishes per second.
    let served = serve(&[
        "--transport",
        "momento",
        "--momento-endpoint",
        &momento,
        "--symbols",
        "USD_JPY,EUR_USD,GBP_USD",
        "--tick-interval",
        "100ms",
        "--momento-publish-rate",
        "5",
        "--momento-max-ops-per-second",
        "500",
    ])
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", served.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in ["publishes", "cache_writes", "deliveries_per_subscriber"] {
        let line = format!("fxcast_gateway_momento_planned_ops_per_second{{kind=\"{kind}\"}} 15.0");
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
}

/// The records of a `board.rates` message: each a topic and a `Rate`.
fn board_records(bytes: &[u8]) -> Vec<(String, Rate)> {
    assert_eq!(bytes[0], 2, "a board message starts with its version");
    let mut records = Vec::new();
    let mut at = 1;
    let take = |at: &mut usize| {
        let len = usize::from(u16::from_be_bytes([bytes[*at], bytes[*at + 1]]));
        let part = &bytes[*at + 2..*at + 2 + len];
        *at += 2 + len;
        part
    };
    while at < bytes.len() {
        let topic = String::from_utf8(take(&mut at).to_vec()).unwrap();
        let rate = Rate::decode(take(&mut at)).expect("a protobuf Rate");
        records.push((topic, rate));
    }
    records
}

#[tokio::test]
async fn the_board_publishes_every_symbol_on_one_topic_to_tokens_that_see_them_all() {
    let momento = momento_local().await;
    let mut args = on_momento(&momento, "USD_JPY,EUR_USD", &["--momento-board"]);
    let rate = args
        .iter()
        .position(|a| *a == "--momento-publish-rate")
        .unwrap();
    args[rate + 1] = "5";
    let served = serve(&args).await;
    let all = issue(&served, &["rates:subscribe=*", "rates:publish"]).await;
    let access = all
        .momento
        .clone()
        .expect("a Momento token for every symbol");
    assert_eq!(access.topics, ["board.rates"]);
    assert_eq!(
        access.max_messages_per_second, 5,
        "the grant says the board conflates"
    );
    let topics = sdk_topics(sdk_credentials(&momento, &access.token));
    let mut board = topics.subscribe(CACHE, "board.rates").await.unwrap();
    let mut rates = rates_client(&served, &all.token).await;
    let jpy = publish(&mut rates, "USD_JPY", "151.230", "151.238").await;
    let eur = publish(&mut rates, "EUR_USD", "1.0841", "1.0843").await;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 2 {
        let value = next_within(&mut board, DEADLINE, "no board within the deadline").await;
        let ValueKind::Binary(bytes) = value.kind else {
            panic!("a text board");
        };
        seen.extend(board_records(&bytes));
    }
    assert_eq!(seen["rates.USD_JPY"], jpy);
    assert_eq!(seen["rates.EUR_USD"], eur);
    // The per-symbol topics stay silent: the board replaces them.
    let some = issue(&served, &["rates:subscribe=USD_JPY"]).await;
    assert!(some.momento.is_none(), "{:?}", some.momento);
    momento_access_refused(&served, &some.token).await;
    // The server's own streams read the board too.
    let mut stream = rates
        .stream_rates(fxcast_proto::v1::StreamRatesRequest {
            symbols: vec!["USD_JPY".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let next = publish(&mut rates, "USD_JPY", "151.240", "151.248").await;
    loop {
        let event = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .unwrap()
            .unwrap()
            .expect("stream ended");
        if let Some(fxcast_proto::v1::stream_rates_response::Event::Rate(rate)) = event.event
            && rate.sequence == next.sequence
        {
            assert_eq!(rate, next);
            break;
        }
    }
}
