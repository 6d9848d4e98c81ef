//! Several fxcast servers on one engine, `--transport nats` and
//! `--transport redis`: the same scenario for each, servers built from
//! `fxcast serve` flags through the composition root, in-process, sharing
//! a real nats-server (JetStream on, its own store) or redis-server on a
//! free port. One has the simulator feed, the other `--feed none`: a gRPC
//! client of the second sees the first's ticks gap-free and the second
//! prices orders on them. The same with the real binary over Redis, a
//! Redis start that fails (no server, a wrong password) and a NATS `tls://`
//! URL verified against the CA file of `FXCAST_CA_CERT`.

use std::{collections::HashMap, time::Duration};

use clap::Parser;
use fxcast_app::{App, Config, Settings};
use fxcast_proto::v1::rate_service_client::RateServiceClient;
use fxcast_proto::v1::{
    OrderStatus, Rate, StreamRatesResponse, order_service_client::OrderServiceClient,
    stream_rates_response::Event,
};
use fxcast_testkit::{
    ALL_SCOPES, Ca, NatsServer, RedisServer, Stack, latest_rate, next_message_within,
};
use tonic::Streaming;

mod common;

/// How long any single expected event may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    settings: Settings,
}

/// The configuration `fxcast serve ARGV` runs on ephemeral ports, with
/// secrets from `env`.
fn config(argv: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Config {
    let argv = ["serve"]
        .iter()
        .chain(&fxcast_testkit::EPHEMERAL_LISTENERS)
        .chain(argv);
    let settings = Serve::try_parse_from(argv).unwrap().settings;
    Config::from_settings(settings.with_file().unwrap(), env).unwrap()
}

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");

/// A real engine server for one test.
enum Engine {
    Nats(NatsServer),
    Redis(RedisServer),
}

impl Engine {
    /// The flags that put `fxcast serve` on this engine.
    fn flags(&self) -> Vec<String> {
        let (transport, flag, url) = match self {
            Self::Nats(server) => ("nats", "--nats-url", server.url()),
            Self::Redis(server) => ("redis", "--redis-url", server.url()),
        };
        ["--transport", transport, flag, &url]
            .map(str::to_owned)
            .to_vec()
    }
}

/// `fxcast serve --transport ENGINE --<engine>-url URL --symbols USD_JPY
/// EXTRA` in-process on `127.0.0.1:0`, with a fresh data directory.
async fn serve_on(engine: &Engine, extra: &[&str]) -> Stack {
    let flags = engine.flags();
    let argv: Vec<&str> = flags
        .iter()
        .map(String::as_str)
        .chain(["--symbols", "USD_JPY"])
        .chain(extra.iter().copied())
        .collect();
    let config = config(&argv, &|_| None);
    Stack::start_on(config.core, config.gateway, config.transport).await
}

async fn next_rate(stream: &mut Streaming<StreamRatesResponse>) -> Rate {
    match next_message_within(stream, DEADLINE).await.event {
        Some(Event::Rate(rate)) => rate,
        other => panic!("expected a rate, got {other:?}"),
    }
}

/// A rate stream and every rate read from it, by id.
struct Seen {
    stream: Streaming<StreamRatesResponse>,
    rates: HashMap<String, Rate>,
}

impl Seen {
    async fn next(&mut self) -> Rate {
        let rate = next_rate(&mut self.stream).await;
        self.rates.insert(rate.rate_id.clone(), rate.clone());
        rate
    }

    /// Reads up to the rate `sequence` (inclusive) and returns it.
    async fn at(&mut self, sequence: u64) -> Rate {
        loop {
            let rate = self.next().await;
            assert!(
                rate.sequence <= sequence,
                "passed {sequence} without it: {rate:?}"
            );
            if rate.sequence == sequence {
                return rate;
            }
        }
    }

    /// The rate `rate_id`, read already or within the next `within` rates.
    async fn find(&mut self, rate_id: &str, within: usize) -> Rate {
        for _ in 0..within {
            if let Some(rate) = self.rates.get(rate_id) {
                return rate.clone();
            }
            self.next().await;
        }
        panic!("no rate {rate_id} within {within} rates");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_feed_streams_and_prices_the_ticks_another_publishes_over_nats() {
    follower_streams_and_prices_the_publishers_ticks(Engine::Nats(NatsServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_feed_streams_and_prices_the_ticks_another_publishes_over_redis() {
    follower_streams_and_prices_the_publishers_ticks(Engine::Redis(RedisServer::start())).await;
}

async fn follower_streams_and_prices_the_publishers_ticks(engine: Engine) {
    let publisher = serve_on(&engine, &["--tick-interval", "50ms"]).await;
    // Orders on the follower accept a price 0.5 off: the simulator may tick
    // between the quote and the order.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("follower.toml");
    std::fs::write(&file, "[symbol.USD_JPY]\ntolerance = \"0.5\"\n").unwrap();
    let follower = serve_on(
        &engine,
        &["--feed", "none", "--config", file.to_str().unwrap()],
    )
    .await;

    // The publisher's own stream, opened first, and the follower's.
    let mut at_publisher = publisher.client().await;
    let mut published = Seen {
        stream: fxcast_testkit::stream_symbols(&mut at_publisher, &["USD_JPY"]).await,
        rates: HashMap::new(),
    };
    let mut at_follower = follower.client().await;
    let mut followed = fxcast_testkit::stream_symbols(&mut at_follower, &["USD_JPY"]).await;

    // The follower has no feed: every rate it streams is one the publisher
    // ticked, unchanged, and the sequence has no hole.
    let mut previous = next_rate(&mut followed).await;
    for _ in 0..10 {
        let rate = next_rate(&mut followed).await;
        assert_eq!(rate.symbol, "USD_JPY");
        assert_eq!(
            rate.sequence,
            previous.sequence + 1,
            "a gap after {previous:?}"
        );
        assert_eq!(published.at(rate.sequence).await, rate);
        previous = rate;
    }

    // An order on the follower is priced on the shared latest rate.
    let latest = latest_rate(&mut at_follower, "USD_JPY").await.unwrap();
    let token = follower.token("trader", ALL_SCOPES);
    let mut orders = OrderServiceClient::new(follower.authed_channel(&token).await);
    let order = orders
        .place_order(common::buy_usd_jpy(
            "cluster-1",
            &latest.ask,
            &latest.rate_id,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.status(), OrderStatus::Filled, "{order:?}");
    // The live rate it was filled on is one the publisher ticked.
    let market = published.find(&order.market_rate_id, 100).await;
    assert_eq!(order.fill_price, market.ask, "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_nats_server_is_verified_against_fxcast_ca_cert() {
    let (_ca, files) = Ca::for_localhost("fxcast nats test CA");
    let (cert, key) = (files.cert(), files.key());
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        cert.to_str().unwrap(),
        "--tlskey",
        key.to_str().unwrap(),
    ]);
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let data = tempfile::tempdir().unwrap();
    let argv = [
        "--transport",
        "nats",
        "--nats-url",
        &url,
        "--data-dir",
        data.path().to_str().unwrap(),
        "--symbols",
        "USD_JPY",
        "--feed",
        "none",
    ];

    // Without the test CA the server's certificate is refused.
    let err = App::build(config(&argv, &|_| None)).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("cannot use NATS"), "{message}");
    assert!(message.contains("certificate is not trusted"), "{message}");

    // With FXCAST_CA_CERT naming it, rates go over TLS.
    let ca = files.ca().to_str().unwrap().to_owned();
    let env = move |name: &str| (name == "FXCAST_CA_CERT").then(|| ca.clone());
    let config = config(&argv, &env);
    let stack = Stack::start_on(config.core, config.gateway, config.transport).await;
    let rate = stack.publish("USD_JPY", "151.100", "151.110").await;
    let mut client = stack.client().await;
    let mut stream = fxcast_testkit::stream_symbols(&mut client, &["USD_JPY"]).await;
    assert_eq!(next_rate(&mut stream).await, rate);
}

const API_KEY: &str = "cluster-engines-test-api-key-0123456789";

/// `fxcast serve ARGS` from the binary on ephemeral ports with a fresh data
/// directory, the Redis password and API key in its environment.
async fn serve_binary(
    args: &[&str],
    data: &std::path::Path,
    password: &str,
) -> fxcast_testkit::ServeProcess {
    let env = [
        ("FXCAST_REDIS_PASSWORD", password),
        ("FXCAST_API_KEY", API_KEY),
    ];
    fxcast_testkit::spawn_serve(BIN, data, args, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_a_follower_without_a_feed_over_redis() {
    let redis = RedisServer::start_with(&["--requirepass", "redis-pass"]);
    let url = redis.url();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let engine = [
        "--transport",
        "redis",
        "--redis-url",
        &url,
        "--symbols",
        "USD_JPY",
    ];
    let publishing = [&engine[..], &["--tick-interval", "50ms"]].concat();
    let _publisher = serve_binary(&publishing, a.path(), "redis-pass").await;
    let following = [&engine[..], &["--feed", "none"]].concat();
    let follower = serve_binary(&following, b.path(), "redis-pass").await;

    let grpc = format!("http://{}", follower.grpc);
    let issued =
        fxcast_testkit::issue_token(&grpc, API_KEY, "viewer", &["rates:subscribe=USD_JPY"]).await;
    let mut rates = RateServiceClient::new(fxcast_testkit::channel(&grpc, &issued.token).await);
    let mut stream = fxcast_testkit::stream_symbols(&mut rates, &["USD_JPY"]).await;
    let mut previous = next_rate(&mut stream).await;
    for _ in 0..10 {
        let rate = next_rate(&mut stream).await;
        assert_eq!(
            rate.sequence,
            previous.sequence + 1,
            "a gap after {previous:?}"
        );
        previous = rate;
    }
}

/// The output of `fxcast serve ARGS` that must fail at start.
async fn failed_start(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut argv = vec!["serve", "--data-dir", data.path().to_str().unwrap()];
    argv.extend_from_slice(&fxcast_testkit::EPHEMERAL_LISTENERS);
    argv.extend_from_slice(args);
    let output = fxcast_testkit::run(BIN, &argv).await;
    assert!(!output.status.success(), "fxcast serve {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_start_that_fails_says_why_without_the_password() {
    let redis = RedisServer::start_with(&["--requirepass", "right-pass"]);
    let wrong = format!("redis://:wrong-pass@127.0.0.1:{}", redis.port());
    let stderr = failed_start(&["--transport", "redis", "--redis-url", &wrong]).await;
    assert!(stderr.contains("cannot use Redis:"), "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(!stderr.contains("wrong-pass"), "{stderr}");

    let gone = redis.url();
    drop(redis);
    let stderr = failed_start(&["--transport", "redis", "--redis-url", &gone]).await;
    assert!(stderr.contains("cannot use Redis:"), "{stderr}");
    assert!(stderr.contains("is redis-server running"), "{stderr}");
}
