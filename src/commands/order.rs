//! `fxcast order`: place one order from the terminal.
//!
//! Without `--price` it deals at the current rate: it reads the latest rate
//! (ask for a buy, bid for a sell) and quotes its `rate_id`, so the server
//! checks against exactly what was shown. Prices and quantities travel as
//! the decimal strings typed: no floating point touches them.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use fxcast_proto::v1::{
    GetLatestRateRequest, Order, OrderStatus, PlaceOrderRequest, RejectReason, Side,
    order_service_client::OrderServiceClient, rate_service_client::RateServiceClient,
};

use super::{Credentials, client_token, connect, status_error};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SideArg {
    Buy,
    Sell,
}

#[derive(Debug, Args)]
pub(crate) struct OrderArgs {
    /// Symbol, e.g. USD_JPY
    #[arg(long)]
    symbol: String,
    /// buy (dealt at the ask) or sell (dealt at the bid)
    #[arg(long, value_enum)]
    side: SideArg,
    /// Quantity of the base currency, e.g. 1000
    #[arg(long)]
    quantity: String,
    /// The price you saw; without it, the current ask (buy) or bid (sell)
    #[arg(long)]
    price: Option<String>,
    /// The rate_id of the rate your --price came from (it must be recent)
    #[arg(long, requires = "price")]
    rate_id: Option<String>,
    /// A tighter tolerance than the server's: a price (0.005) or basis points (0.5bp)
    #[arg(long)]
    tolerance: Option<String>,
    /// Your id of the order; retrying with the same id never deals twice [default: generated]
    #[arg(long)]
    client_order_id: Option<String>,
    /// gRPC address of the fxcast server
    #[arg(long, env = "FXCAST_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    #[command(flatten)]
    credentials: Credentials,
}

/// A fresh client order id: time and process id make it unique per machine.
fn generated_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("cli-{nanos:x}-{:x}", std::process::id())
}

fn print_order(order: &Order) {
    let side = match order.side() {
        Side::Buy => "buy",
        Side::Sell => "sell",
        Side::Unspecified => "?",
    };
    match order.status() {
        OrderStatus::Filled => println!(
            "FILLED    {side} {} {} at {}",
            order.quantity, order.symbol, order.fill_price
        ),
        OrderStatus::Rejected => println!(
            "REJECTED  {side} {} {} at {}: {}",
            order.quantity,
            order.symbol,
            order.price,
            order
                .reject_reason()
                .as_str_name()
                .trim_start_matches("REJECT_REASON_")
        ),
        other => println!(
            "{}  {side} {} {} at {}",
            other.as_str_name().trim_start_matches("ORDER_STATUS_"),
            order.quantity,
            order.symbol,
            order.price
        ),
    }
    println!("  {}", order.message);
    let mut ids = vec![format!("client_order_id {}", order.client_order_id)];
    if !order.order_id.is_empty() {
        ids.insert(0, format!("order {}", order.order_id));
    }
    if !order.lp_execution_id.is_empty() {
        ids.push(format!(
            "lp {} {}",
            order.liquidity_provider, order.lp_execution_id
        ));
    }
    println!("  {}", ids.join("  "));
}

/// A token to place orders on `symbol` at its current rate: `--token`, or
/// one issued for `orders:place` and `rates:subscribe=<symbol>`.
pub(crate) async fn order_token(
    server: &str,
    credentials: &Credentials,
    symbol: &str,
) -> anyhow::Result<String> {
    let subscribe = format!("rates:subscribe={symbol}");
    client_token(server, credentials, &["orders:place", &subscribe]).await
}

pub(crate) async fn run(args: OrderArgs) -> anyhow::Result<()> {
    let token = order_token(&args.server, &args.credentials, &args.symbol).await?;
    let channel = connect(&args.server, &token).await?;
    let side = match args.side {
        SideArg::Buy => Side::Buy,
        SideArg::Sell => Side::Sell,
    };
    let (price, rate_id) = match args.price {
        Some(price) => (price, args.rate_id.unwrap_or_default()),
        None => {
            let rate = RateServiceClient::new(channel.clone())
                .get_latest_rate(GetLatestRateRequest {
                    symbol: args.symbol.clone(),
                })
                .await
                .map_err(|s| status_error(&s).context("cannot read the current rate"))?
                .into_inner();
            let price = match side {
                Side::Sell => rate.bid,
                _ => rate.ask,
            };
            (price, rate.rate_id)
        }
    };
    let request = PlaceOrderRequest {
        client_order_id: args.client_order_id.unwrap_or_else(generated_id),
        symbol: args.symbol,
        side: side as i32,
        quantity: args.quantity,
        price,
        rate_id,
        tolerance: args.tolerance.unwrap_or_default(),
    };
    let order = OrderServiceClient::new(channel)
        .place_order(request)
        .await
        .map_err(|s| status_error(&s))
        .context("order not placed")?
        .into_inner();
    print_order(&order);
    match order.status() {
        OrderStatus::Filled => Ok(()),
        OrderStatus::Rejected => {
            let reason = order.reject_reason();
            let reason = if reason == RejectReason::Unspecified {
                "no reason given"
            } else {
                reason.as_str_name().trim_start_matches("REJECT_REASON_")
            };
            bail!("order rejected: {reason}")
        }
        other => bail!("order not final: {}", other.as_str_name()),
    }
}
