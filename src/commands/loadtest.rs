//! `fxcast loadtest`: drive a running server and report sustained
//! throughput and latency percentiles. The load generators are
//! `fxcast_benches::load`; this module holds their flags.
//!
//! `loadtest compare` starts its own servers (fxcast and nats-server, fresh
//! for every case) and prints one table; see `compare_load`.
//!
//! `loadtest orders` keeps `--concurrency` PlaceOrder calls in flight (each
//! a new order, alternating buy and sell at the current ask/bid with its
//! `rate_id`), for `--warmup` and then `--duration`, and reports what
//! completed in the measured window. Closed loop by default; with
//! `--rate R` open loop, each order measured from its intended send time
//! (see `fxcast_benches::load::orders`).

use std::time::Duration;

use clap::{Args, Subcommand};
use fxcast_benches::load::{orders, rates::Interface};

use super::{Credentials, compare_load::CompareLoad, rates_load::RatesLoad};

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
    Ws(RatesLoad),
    /// N Server-Sent Events rate subscribers through the gateway
    Sse(RatesLoad),
    /// N gRPC StreamRates subscribers
    Grpc(RatesLoad),
    /// N subscribers of a running nats-server's WebSocket listener (subjects
    /// rates.<SYMBOL>; something else publishes)
    Nats(RatesLoad),
    /// fxcast WebSocket, SSE, gRPC and nats-server WebSocket under the same
    /// load, each against a fresh server this command starts: one table
    Compare(CompareLoad),
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
    /// Server process whose memory and CPU time per order to report (default:
    /// a local `fxcast serve`)
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
        Load::Orders(load) => load.run().await,
        Load::Ws(load) => load.run(Interface::Ws).await,
        Load::Sse(load) => load.run(Interface::Sse).await,
        Load::Grpc(load) => load.run(Interface::Grpc).await,
        Load::Nats(load) => load.run(Interface::Nats).await,
        Load::Compare(load) => load.run().await,
    }
}

impl OrdersLoad {
    async fn run(self) -> anyhow::Result<()> {
        let load = orders::OrdersLoad {
            target: self.target,
            concurrency: self.concurrency,
            connections: self.connections,
            schedule: orders::Schedule {
                warmup: self.warmup,
                duration: self.duration,
                rate: self.rate,
            },
            symbol: self.symbol,
            quantity: self.quantity,
            server_pid: self.server_pid,
        };
        load.check()?;
        let token =
            super::order::order_token(&load.target, &self.credentials, &load.symbol).await?;
        let report = orders::run(&load, &token).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report.json())?);
            Ok(())
        } else {
            report.print()
        }
    }
}
