//! RateService through the real tonic client against a real server on an
//! ephemeral port: what a gRPC user sees.

use std::{collections::HashMap, time::Duration};

use fxcast_proto::v1::{
    GapReason, GetLatestRateRequest, ListSymbolsRequest, PublishRateRequest, StreamRatesRequest,
    stream_rates_response::Event,
};
use fxcast_services::{Config, FeedKind, HubConfig, StreamLimits, feed::SimulatorConfig};
use fxcast_testkit::{Stack, end_status, next_event, next_rate, stream_rates};
use tonic::Code;

fn symbols(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn stream_request(list: &[&str]) -> StreamRatesRequest {
    StreamRatesRequest {
        symbols: symbols(list),
        ..Default::default()
    }
}

/// No feed: the test publishes every rate.
fn quiet(list: &[&str]) -> Config {
    Config {
        feed: FeedKind::None,
        symbols: symbols(list),
        ..Default::default()
    }
}

/// USD_JPY without a feed, the hub and lag limits as given.
fn lagging(stream_buffer: usize, max_lags: usize) -> Config {
    Config {
        hub: HubConfig {
            history: 16,
            stream_buffer,
        },
        stream_limits: StreamLimits {
            max_lags,
            lag_window: Duration::from_secs(60),
        },
        ..quiet(&["USD_JPY"])
    }
}

fn latest(symbol: &str) -> GetLatestRateRequest {
    GetLatestRateRequest {
        symbol: symbol.into(),
    }
}

/// A stream of `list` resuming after `sequence`, and `symbol` after its own.
fn resuming(list: &[&str], sequence: u64, (symbol, after): (&str, u64)) -> StreamRatesRequest {
    StreamRatesRequest {
        symbols: symbols(list),
        resume_after_sequence: Some(sequence),
        resume_after: [(symbol.to_owned(), after)].into_iter().collect(),
    }
}

fn fast_simulated(list: &[&str]) -> Config {
    Config {
        symbols: symbols(list),
        simulator: SimulatorConfig {
            tick_interval: Duration::from_millis(5),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn live_stream_of_simulated_ticks_is_gap_free_per_symbol() {
    let server = Stack::start(fast_simulated(&["USD_JPY", "EUR_USD", "BTC_JPY"])).await;
    let mut client = server.client().await;
    let mut stream = stream_rates(&mut client, stream_request(&["USD_JPY", "EUR_USD"])).await;
    let mut last: HashMap<String, u64> = HashMap::new();
    for _ in 0..60 {
        let rate = next_rate(&mut stream).await;
        assert!(
            rate.symbol == "USD_JPY" || rate.symbol == "EUR_USD",
            "filter leaked {}",
            rate.symbol
        );
        if let Some(prev) = last.get(&rate.symbol) {
            assert_eq!(
                rate.sequence,
                prev + 1,
                "{} jumped from {prev} to {}",
                rate.symbol,
                rate.sequence
            );
        }
        last.insert(rate.symbol.clone(), rate.sequence);
        let scale = if rate.symbol == "USD_JPY" { 3 } else { 5 };
        for price in [&rate.bid, &rate.ask] {
            let decimals = price.split('.').nth(1).map_or(0, str::len);
            assert_eq!(
                decimals, scale,
                "{} price {price} not quoted with {scale} decimals",
                rate.symbol
            );
        }
        let (bid, ask): (f64, f64) = (rate.bid.parse().unwrap(), rate.ask.parse().unwrap());
        assert!(bid < ask, "crossed rate {rate:?}");
        assert!(rate.publish_time.is_some() && rate.source_time.is_some());
        assert_eq!(
            rate.rate_id,
            format!(
                "{}-{}-{}",
                rate.symbol,
                server.core.publisher().run_id(),
                rate.sequence
            )
        );
        assert_eq!(rate.source, "simulated");
    }
    assert_eq!(last.len(), 2, "both symbols should tick");
}

#[tokio::test]
async fn a_new_stream_starts_with_the_latest_rate_then_goes_live() {
    let server = Stack::quiet(&["USD_JPY"]).await;
    server.publish("USD_JPY", "151.100", "151.110").await;
    let latest = server.publish("USD_JPY", "151.200", "151.210").await;
    let mut client = server.client().await;
    let mut stream = stream_rates(&mut client, stream_request(&[])).await;
    assert_eq!(next_rate(&mut stream).await, latest);
    let live = server.publish("USD_JPY", "151.300", "151.310").await;
    assert_eq!(next_rate(&mut stream).await, live);
}

#[tokio::test]
async fn resume_replays_what_the_server_holds_then_goes_live() {
    let server = Stack::quiet(&["USD_JPY", "EUR_USD"]).await;
    for i in 0..10 {
        server
            .publish(
                "USD_JPY",
                &format!("151.{:03}", 100 + i),
                &format!("151.{:03}", 110 + i),
            )
            .await;
    }
    server.publish("EUR_USD", "1.08500", "1.08510").await;
    let mut client = server.client().await;
    let request = resuming(&["USD_JPY", "EUR_USD"], 4, ("EUR_USD", 0));
    let mut stream = stream_rates(&mut client, request).await;
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..7 {
        let rate = next_rate(&mut stream).await;
        seen.entry(rate.symbol).or_default().push(rate.sequence);
    }
    assert_eq!(seen["USD_JPY"], [5, 6, 7, 8, 9, 10]);
    assert_eq!(seen["EUR_USD"], [1]);
    let live = server.publish("USD_JPY", "151.500", "151.510").await;
    assert_eq!(next_rate(&mut stream).await.sequence, live.sequence);
    assert_eq!(live.sequence, 11);
}

#[tokio::test]
async fn resume_older_than_the_history_announces_the_gap() {
    let server = Stack::start(Config {
        hub: HubConfig {
            history: 5,
            ..Default::default()
        },
        ..quiet(&["USD_JPY"])
    })
    .await;
    for _ in 0..20 {
        server.publish("USD_JPY", "151.100", "151.110").await;
    }
    let mut client = server.client().await;
    let request = StreamRatesRequest {
        resume_after_sequence: Some(2),
        ..stream_request(&["USD_JPY"])
    };
    let mut stream = stream_rates(&mut client, request).await;
    match next_event(&mut stream).await {
        Event::Gap(gap) => {
            assert_eq!(
                (gap.symbol.as_str(), gap.first_missing, gap.last_missing),
                ("USD_JPY", 3, 15)
            );
            assert_eq!(gap.reason(), GapReason::ReplayUnavailable);
            assert!(gap.message.contains("3..=15"), "{}", gap.message);
        }
        other => panic!("expected a gap first, got {other:?}"),
    }
    for seq in 16..=20 {
        assert_eq!(next_rate(&mut stream).await.sequence, seq);
    }
}

#[tokio::test]
async fn latest_rate_and_symbols_answer_at_once() {
    let server = Stack::start(Config {
        markup: "0.002".parse().unwrap(),
        ..quiet(&["USD_JPY", "EUR_USD"])
    })
    .await;
    let mut client = server.client().await;

    let err = client.get_latest_rate(latest("USD_JPY")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "no rate has been published for USD_JPY yet");

    server.publish("USD_JPY", "151.230", "151.238").await;
    let rate = client.get_latest_rate(latest("USD_JPY")).await;
    let rate = rate.unwrap().into_inner();
    assert_eq!(
        (rate.bid.as_str(), rate.ask.as_str(), rate.sequence),
        ("151.228", "151.240", 1)
    );

    let list = client
        .list_symbols(ListSymbolsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.symbols.iter().map(|s| s.symbol.as_str()).collect();
    assert_eq!(names, ["EUR_USD", "USD_JPY"]);
    let usd_jpy = &list.symbols[1];
    assert_eq!(
        (
            usd_jpy.tick_size.as_str(),
            usd_jpy.price_scale,
            usd_jpy.markup.as_str()
        ),
        ("0.001", 3, "0.002")
    );
    assert_eq!(usd_jpy.latest_sequence, 1);
}

#[tokio::test]
async fn invalid_requests_name_what_is_wrong() {
    let server = Stack::quiet(&["USD_JPY"]).await;
    let mut client = server.client().await;

    let err = client.get_latest_rate(latest("XXX_YYY")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "unknown symbol \"XXX_YYY\" (known: USD_JPY)");

    let err = client.get_latest_rate(latest("")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "symbol is required")
    );

    let err = client
        .stream_rates(stream_request(&["USD_JPY", "NOPE"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"NOPE\""), "{}", err.message());

    let request = StreamRatesRequest {
        resume_after: [("EUR_USD".to_owned(), 3)].into_iter().collect(),
        ..stream_request(&["USD_JPY"])
    };
    let err = client.stream_rates(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not among the streamed symbols"),
        "{}",
        err.message()
    );

    let cases = [
        ("USD_JPY", "151.3", "151.2", "bid 151.3 is above ask 151.2"),
        ("USD_JPY", "-1", "151.2", "bid must be positive, got \"-1\""),
        ("USD_JPY", "0", "151.2", "bid must be positive, got \"0\""),
        (
            "USD_JPY",
            "151.2",
            "1e3",
            "ask \"1e3\" is not a decimal number",
        ),
        ("USD_JPY", "", "151.2", "bid is required"),
        (
            "GBP_CHF",
            "1",
            "2",
            "unknown symbol \"GBP_CHF\" (known: USD_JPY)",
        ),
    ];
    for (symbol, bid, ask, expected) in cases {
        let request = PublishRateRequest {
            symbol: symbol.into(),
            bid: bid.into(),
            ask: ask.into(),
            source_time: None,
        };
        let err = client.publish_rate(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{symbol} {bid} {ask}");
        assert!(
            err.message().contains(expected),
            "{:?} should contain {expected:?}",
            err.message()
        );
    }
    // Nothing invalid was published.
    assert!(server.core.latest().get("USD_JPY").is_none());
}

#[tokio::test]
async fn publish_rate_applies_markup_and_reaches_streams() {
    let server = Stack::start(Config {
        markup: "1bp".parse().unwrap(),
        ..quiet(&["USD_JPY"])
    })
    .await;
    let mut client = server.client().await;
    let mut stream = stream_rates(&mut client, stream_request(&["USD_JPY"])).await;
    let request = PublishRateRequest {
        symbol: "USD_JPY".into(),
        bid: "151.230".into(),
        ask: "151.238".into(),
        source_time: None,
    };
    let published = client.publish_rate(request).await.unwrap().into_inner();
    assert_eq!(
        (published.bid.as_str(), published.ask.as_str()),
        ("151.214", "151.254")
    );
    assert_eq!(published.source, "external:tester");
    assert_eq!(next_rate(&mut stream).await, published);
}

#[tokio::test]
async fn a_slow_reader_is_conflated_while_a_fast_one_misses_nothing() {
    let server = Stack::start(lagging(64, 1000)).await;
    let mut client = server.client().await;
    let mut slow = stream_rates(&mut client, stream_request(&["USD_JPY"])).await;
    let mut fast = stream_rates(&mut client, stream_request(&["USD_JPY"])).await;

    let total = 30_000u64;
    let mut fast_next = 1;
    for batch in 0..total / 50 {
        for i in 0..50 {
            let cents = 100 + (batch * 50 + i) % 800;
            server
                .publish(
                    "USD_JPY",
                    &format!("151.{cents:03}"),
                    &format!("152.{cents:03}"),
                )
                .await;
        }
        // The fast reader keeps up, and sees every sequence.
        while fast_next <= (batch + 1) * 50 {
            assert_eq!(next_rate(&mut fast).await.sequence, fast_next);
            fast_next += 1;
        }
    }

    // The slow reader now catches up: it must be told it skipped, must never
    // go backwards, and must end on the newest rate.
    let mut gaps = 0;
    let mut last = 0;
    let mut delivered = 0u64;
    while last < total {
        match next_event(&mut slow).await {
            Event::Gap(gap) => {
                assert_eq!(gap.reason(), GapReason::SlowConsumer, "{gap:?}");
                assert_eq!(gap.first_missing, last + 1);
                gaps += 1;
            }
            Event::Rate(rate) => {
                assert!(
                    rate.sequence > last,
                    "went backwards: {} after {last}",
                    rate.sequence
                );
                last = rate.sequence;
                delivered += 1;
            }
        }
    }
    assert!(
        gaps > 0,
        "a reader that stalled through {total} ticks must be conflated"
    );
    assert!(delivered < total, "conflation should have skipped ticks");
}

#[tokio::test]
async fn a_reader_that_keeps_falling_behind_is_disconnected_with_a_reason() {
    let server = Stack::start(lagging(16, 2)).await;
    let mut client = server.client().await;
    let mut slow = stream_rates(&mut client, stream_request(&["USD_JPY"])).await;
    let status = loop {
        for _ in 0..20_000 {
            server.publish("USD_JPY", "151.100", "151.200").await;
        }
        // Read a little, then stall again.
        let mut outcome = None;
        for _ in 0..200 {
            match tokio::time::timeout(Duration::from_secs(10), slow.message())
                .await
                .expect("stream stalled")
            {
                Ok(Some(_)) => {}
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => {
                    outcome = Some(status);
                    break;
                }
            }
        }
        if let Some(status) = outcome {
            break status;
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .starts_with("slow consumer: fell behind 2 times"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn shutdown_ends_streams_and_stops_the_server() {
    let server = Stack::start(fast_simulated(&["USD_JPY"])).await;
    let mut client = server.client().await;
    let mut stream = stream_rates(&mut client, stream_request(&["USD_JPY"])).await;
    next_rate(&mut stream).await;
    server.stop.cancel();
    let status = end_status(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    tokio::time::timeout(Duration::from_secs(10), server.handle)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

async fn restartable(data_dir: &std::path::Path) -> Stack {
    Stack::start(Config {
        data_dir: data_dir.to_owned(),
        ..quiet(&["USD_JPY"])
    })
    .await
}

async fn stop(server: Stack) {
    server.stop.cancel();
    server.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn sequences_continue_across_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = restartable(dir.path()).await;
    for n in 1..=3u64 {
        assert_eq!(
            server
                .publish("USD_JPY", "151.100", "151.110")
                .await
                .sequence,
            n
        );
    }
    // What `fxcast serve` does when it stops.
    server.core.publisher().checkpoint().await.unwrap();
    stop(server).await;

    let server = restartable(dir.path()).await;
    assert_eq!(
        server
            .publish("USD_JPY", "151.120", "151.130")
            .await
            .sequence,
        4,
        "a clean restart continues without a gap"
    );
}

#[tokio::test]
async fn after_a_crash_sequences_skip_ahead_and_resuming_clients_see_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = restartable(dir.path()).await;
    server.publish("USD_JPY", "151.100", "151.110").await;
    server.publish("USD_JPY", "151.100", "151.110").await;
    // No checkpoint: as if the process had been killed.
    stop(server).await;

    let server = restartable(dir.path()).await;
    let mut client = server.client().await;
    let request = StreamRatesRequest {
        resume_after_sequence: Some(2),
        ..stream_request(&["USD_JPY"])
    };
    let mut stream = stream_rates(&mut client, request).await;
    let published = server.publish("USD_JPY", "151.120", "151.130").await;
    let first = fxcast_services::SEQUENCE_BLOCK + 1;
    assert_eq!(
        published.sequence, first,
        "the run continues after the reserved block"
    );
    match next_event(&mut stream).await {
        Event::Gap(gap) => assert_eq!(
            (gap.first_missing, gap.last_missing),
            (3, first - 1),
            "{gap:?}"
        ),
        other => panic!("expected a gap before the new run's first rate, got {other:?}"),
    }
    assert_eq!(next_rate(&mut stream).await.sequence, first);
}

#[tokio::test]
async fn a_resume_point_ahead_of_the_stream_is_answered_at_once_with_a_gap_and_the_latest_rate() {
    let server = Stack::quiet(&["USD_JPY", "EUR_USD"]).await;
    for _ in 0..3 {
        server.publish("USD_JPY", "151.100", "151.110").await;
    }
    server.publish("EUR_USD", "1.08500", "1.08510").await;
    let mut client = server.client().await;
    // EUR_USD's resume point the stream has reached is not ahead: nothing new.
    let request = resuming(&["USD_JPY", "EUR_USD"], 1_000_000_000, ("EUR_USD", 1));
    let mut stream = stream_rates(&mut client, request).await;
    // At once: not when the sequence reaches a billion.
    let (gap, rate) = tokio::time::timeout(Duration::from_secs(3), async {
        (next_event(&mut stream).await, next_rate(&mut stream).await)
    })
    .await
    .expect("the resume point ahead was not answered at once");
    let Event::Gap(gap) = gap else {
        panic!("expected a gap first, got {gap:?}");
    };
    assert_eq!(
        (
            gap.symbol.as_str(),
            gap.first_missing,
            gap.last_missing,
            gap.reason()
        ),
        ("USD_JPY", 4, 1_000_000_000, GapReason::ResumeAhead)
    );
    assert_eq!(
        gap.message,
        "USD_JPY: resume point 1000000000 is ahead of the stream (latest sequence 3); restarting from the latest rate"
    );
    assert_eq!((rate.symbol.as_str(), rate.sequence), ("USD_JPY", 3));
    // Then live, for both symbols, without further gaps.
    server.publish("EUR_USD", "1.08600", "1.08610").await;
    server.publish("USD_JPY", "151.200", "151.210").await;
    let eur = next_rate(&mut stream).await;
    let usd = next_rate(&mut stream).await;
    assert_eq!(
        [
            (eur.symbol.as_str(), eur.sequence),
            (usd.symbol.as_str(), usd.sequence)
        ],
        [("EUR_USD", 2), ("USD_JPY", 4)]
    );
}
