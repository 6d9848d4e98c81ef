//! `fxcast loadtest`: drive a running server and report sustained
//! throughput and latency percentiles.
//!
//! `loadtest orders` keeps `--concurrency` PlaceOrder calls in flight (each
//! a new order, alternating buy and sell at the current ask/bid with its
//! `rate_id`), for `--warmup` and then `--duration`, and reports what
//! completed in the measured window. Every order goes through the server's
//! whole pipeline, including the durable journal.
//!
//! Closed loop by default: each worker sends its next order when the last
//! one is answered, which measures throughput at that concurrency. With
//! `--rate R` it is open loop: order i is due at `start + i/R` and its
//! latency counts from that intended time, so a server that falls behind
//! shows the queueing delay instead of hiding it (no coordinated omission);
//! `--concurrency` then caps the orders in flight.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fxcast_proto::v1::{
    GetLatestRateRequest, OrderStatus, PlaceOrderRequest, Rate, Side, StreamRatesRequest,
    order_service_client::OrderServiceClient, rate_service_client::RateServiceClient,
    stream_rates_response,
};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{AuthedChannel, Credentials, client_token, connect, status_error};

/// How often the load generator refreshes the price it deals at.
const PRICE_REFRESH: Duration = Duration::from_millis(20);

#[derive(Debug, Args)]
pub(crate) struct LoadtestArgs {
    #[command(subcommand)]
    what: Load,
}

#[derive(Debug, Subcommand)]
enum Load {
    /// PlaceOrder throughput and latency, journal included
    Orders(OrdersLoad),
    /// N WebSocket rate subscribers through the gateway
    Ws(super::rates_load::RatesLoad),
    /// N Server-Sent Events rate subscribers through the gateway
    Sse(super::rates_load::RatesLoad),
    /// N gRPC StreamRates subscribers
    Grpc(super::rates_load::RatesLoad),
}

#[derive(Debug, Args)]
struct OrdersLoad {
    /// gRPC address of the server under test
    #[arg(long, env = "FXCAST_SERVER", default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Orders in flight at once
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the orders are spread over
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to measure, e.g. 10s
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load applied before measuring (not counted)
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Symbol to trade
    #[arg(long, default_value = "USD_JPY")]
    symbol: String,
    /// Quantity of every order
    #[arg(long, default_value = "1000")]
    quantity: String,
    /// Open loop: send this many orders per second on a fixed schedule and
    /// measure each from its intended send time (default: closed loop)
    #[arg(long)]
    rate: Option<u32>,
    /// Server process whose memory to report (default: a local `fxcast serve`)
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    credentials: Credentials,
}

pub(crate) async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    match args.what {
        Load::Orders(load) => orders(load).await,
        Load::Ws(load) => super::rates_load::run(super::rates_load::Interface::Ws, load).await,
        Load::Sse(load) => super::rates_load::run(super::rates_load::Interface::Sse, load).await,
        Load::Grpc(load) => super::rates_load::run(super::rates_load::Interface::Grpc, load).await,
    }
}

/// What one worker saw in the measured window.
struct Tally {
    latencies_us: Histogram<u64>,
    outcomes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            // 1 µs to 60 s at 3 significant digits.
            latencies_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds"),
            outcomes: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }
}

/// `12.345ms` from microseconds, without floating point.
fn ms(us: u64) -> String {
    format!("{}.{:03}ms", us / 1000, us % 1000)
}

async fn latest(channel: &AuthedChannel, symbol: &str) -> anyhow::Result<Rate> {
    Ok(RateServiceClient::new(channel.clone())
        .get_latest_rate(GetLatestRateRequest {
            symbol: symbol.to_owned(),
        })
        .await
        .map_err(|s| status_error(&s).context("cannot read the current rate"))?
        .into_inner())
}

/// The current rate of `symbol`, or the first one published when the
/// server has none yet (a server that has just started).
async fn first_rate(channel: &AuthedChannel, symbol: &str) -> anyhow::Result<Rate> {
    let mut stream = RateServiceClient::new(channel.clone())
        .stream_rates(StreamRatesRequest {
            symbols: vec![symbol.to_owned()],
            ..Default::default()
        })
        .await
        .map_err(|s| status_error(&s).context("cannot stream the current rate"))?
        .into_inner();
    let wait = Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout(wait, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("no rate of {symbol} was published within {wait:?}"))?
            .map_err(|s| status_error(&s).context("the rate stream failed"))?
            .ok_or_else(|| anyhow::anyhow!("the server ended the rate stream"))?;
        if let Some(stream_rates_response::Event::Rate(rate)) = message.event {
            return Ok(rate);
        }
    }
}

async fn orders(args: OrdersLoad) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 || args.duration.is_zero() {
        bail!("--concurrency, --connections and --duration must be positive");
    }
    let subscribe = format!("rates:subscribe={}", args.symbol);
    let token = client_token(
        &args.target,
        &args.credentials,
        &["orders:place", &subscribe],
    )
    .await?;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(connect(&args.target, &token).await?);
    }
    let rate = Arc::new(RwLock::new(first_rate(&channels[0], &args.symbol).await?));
    let refresher = {
        let (rate, channel, symbol) = (Arc::clone(&rate), channels[0].clone(), args.symbol.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PRICE_REFRESH).await;
                if let Ok(fresh) = latest(&channel, &symbol).await {
                    *rate.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                }
            }
        })
    };

    eprintln!(
        "fxcast loadtest orders: {} {} x {}, {} in flight over {} connections, {:?} after {:?} warm-up",
        args.target,
        args.symbol,
        args.quantity,
        args.concurrency,
        args.connections,
        args.duration,
        args.warmup
    );
    // Unique per run, so every order of every run is new.
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let server_pid = args.server_pid.or_else(super::rates_load::find_server);
    let rss_before = server_pid.and_then(super::rates_load::rss_kib);
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    // Open loop: the next order's number, shared by the workers; order i is
    // due at start + i × interval.
    let schedule = args.rate.map(|rate| {
        (
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
            Duration::from_secs(1) / rate.max(1),
        )
    });
    let mut workers = JoinSet::new();
    for worker in 0..args.concurrency {
        let mut client = OrderServiceClient::new(channels[worker % channels.len()].clone());
        let rate = Arc::clone(&rate);
        let (symbol, quantity) = (args.symbol.clone(), args.quantity.clone());
        let schedule = schedule.clone();
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut n = 0u64;
            // Closed loop: until the window ends. Open loop: until every
            // order scheduled before the end has been sent, however late.
            while schedule.is_some() || Instant::now() < end {
                n += 1;
                // When this order should leave: now (closed loop), or its
                // slot in the schedule (open loop), waiting for it if early.
                let intended = match &schedule {
                    None => Instant::now(),
                    Some((next, interval)) => {
                        let slot = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let due = start + *interval * u32::try_from(slot).unwrap_or(u32::MAX);
                        if due >= end {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                };
                let side = if (n + worker as u64).is_multiple_of(2) {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let (price, rate_id) = {
                    let rate = rate.read().unwrap_or_else(|e| e.into_inner());
                    let price = if side == Side::Buy {
                        rate.ask.clone()
                    } else {
                        rate.bid.clone()
                    };
                    (price, rate.rate_id.clone())
                };
                let request = PlaceOrderRequest {
                    client_order_id: format!("lt-{run:x}-{worker}-{n}"),
                    symbol: symbol.clone(),
                    side: side as i32,
                    quantity: quantity.clone(),
                    price,
                    rate_id,
                    tolerance: String::new(),
                };
                let result = client.place_order(request).await;
                let done = Instant::now();
                // Closed loop: what completed in the window. Open loop: what
                // was due in the window, however long it took (dropping the
                // slow ones would hide exactly what the open loop measures).
                let counted = if schedule.is_some() {
                    intended >= measure_from && intended < end
                } else {
                    done >= measure_from && done <= end
                };
                if !counted {
                    continue;
                }
                let micros =
                    u64::try_from(done.duration_since(intended).as_micros()).unwrap_or(u64::MAX);
                tally.latencies_us.saturating_record(micros.max(1));
                match result {
                    Ok(order) => {
                        let order = order.into_inner();
                        let outcome = match order.status() {
                            OrderStatus::Rejected => order
                                .reject_reason()
                                .as_str_name()
                                .trim_start_matches("REJECT_REASON_")
                                .to_owned(),
                            status => status
                                .as_str_name()
                                .trim_start_matches("ORDER_STATUS_")
                                .to_owned(),
                        };
                        *tally.outcomes.entry(outcome).or_default() += 1;
                    }
                    Err(status) => {
                        *tally
                            .errors
                            .entry(format!("{:?}: {}", status.code(), status.message()))
                            .or_default() += 1;
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(tally) = workers.join_next().await {
        let tally = tally.context("a load worker failed")?;
        total
            .latencies_us
            .add(&tally.latencies_us)
            .context("merging latency histograms")?;
        for (k, v) in tally.outcomes {
            *total.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in tally.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    refresher.abort();

    let rss_after = server_pid.and_then(super::rates_load::rss_kib);
    let latencies = total.latencies_us;
    if latencies.is_empty() {
        bail!("no order completed within the measured window");
    }
    let count = latencies.len();
    let window_us = u64::try_from(args.duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    let per_second = count * 1_000_000 / window_us;
    let q = |quantile: f64| latencies.value_at_quantile(quantile);
    if args.json {
        let report = serde_json::json!({
            "interface": "orders",
            "concurrency": args.concurrency,
            "connections": args.connections,
            "duration_s": args.duration.as_secs_f64(),
            "mode": if args.rate.is_some() { "open_loop" } else { "closed_loop" },
            "target_rate_per_s": args.rate,
            "orders": count,
            "orders_per_s": per_second,
            "outcomes": total.outcomes,
            "errors": total.errors,
            "latency_us": {
                "p50": q(0.5),
                "p90": q(0.9),
                "p99": q(0.99),
                "p999": q(0.999),
                "max": latencies.max(),
            },
            "server_rss_before_kib": rss_before,
            "server_rss_after_kib": rss_after,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "orders      {count} in {:?} = {per_second} orders/s",
        args.duration
    );
    let outcomes: Vec<String> = total
        .outcomes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("outcomes    {}", outcomes.join("  "));
    println!(
        "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}{}",
        ms(q(0.5)),
        ms(q(0.9)),
        ms(q(0.99)),
        ms(q(0.999)),
        ms(latencies.max()),
        if args.rate.is_some() {
            " (from each order's intended send time)"
        } else {
            ""
        },
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!("server RSS  {before} KiB before, {after} KiB after");
    }
    if !total.errors.is_empty() {
        for (error, n) in &total.errors {
            println!("error       {n} x {error}");
        }
        bail!("{} orders failed", total.errors.values().sum::<u64>());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_printed_exactly() {
        assert_eq!(ms(12_345), "12.345ms");
        assert_eq!(ms(7), "0.007ms");
    }

    #[test]
    fn tallies_merge_into_one_distribution() {
        let mut total = Tally::default();
        for worker in 0..4u64 {
            let mut tally = Tally::default();
            for n in 1..=250 {
                tally.latencies_us.record(worker * 250 + n).unwrap();
            }
            total.latencies_us.add(&tally.latencies_us).unwrap();
        }
        assert_eq!(total.latencies_us.len(), 1000);
        assert_eq!(total.latencies_us.value_at_quantile(0.5), 500);
        assert_eq!(total.latencies_us.max(), 1000);
    }
}
