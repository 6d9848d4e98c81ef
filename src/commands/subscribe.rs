//! `fxcast subscribe`: a terminal view of live rates.
//!
//! Reconnects by itself when the server goes away and resumes after the last
//! sequence it printed, so nothing is silently missed across a restart of the
//! connection; gaps the server announces are printed as such.

use std::{collections::HashMap, time::Duration};

use clap::Args;
use fxcast_proto::v1::{
    GapReason, Rate, StreamRatesRequest, rate_service_client::RateServiceClient,
    stream_rates_response::Event,
};
use fxcast_transport::{Backoff, BackoffPolicy};
use rust_decimal::Decimal;
use tonic::Code;

use super::{Credentials, client_token, connect, split_list, status_error};

#[derive(Debug, Args)]
pub(crate) struct SubscribeArgs {
    /// gRPC address of the fxcast server
    #[arg(long, env = "FXCAST_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Comma-separated symbols; all when omitted
    #[arg(long, default_value = "")]
    symbols: String,
    /// Replay rates after this sequence before going live
    #[arg(long)]
    resume_after: Option<u64>,
    /// Exit after printing this many rates
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    credentials: Credentials,
}

fn time_of(rate: &Rate) -> String {
    rate.publish_time
        .map(|ts| {
            let secs = ts.seconds.rem_euclid(86_400);
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                ts.nanos / 1_000_000
            )
        })
        .unwrap_or_else(|| "--:--:--.---".into())
}

fn print_rate(rate: &Rate, previous: Option<&Rate>) {
    let bid: Option<Decimal> = rate.bid.parse().ok();
    let ask: Option<Decimal> = rate.ask.parse().ok();
    let spread = match (bid, ask) {
        (Some(b), Some(a)) => (a - b).normalize().to_string(),
        _ => "?".into(),
    };
    let arrow = match (previous.and_then(|p| p.bid.parse::<Decimal>().ok()), bid) {
        (Some(p), Some(b)) if b > p => "▲",
        (Some(p), Some(b)) if b < p => "▼",
        _ => " ",
    };
    let stale = if rate.stale { "  STALE" } else { "" };
    println!(
        "{} {:<10} {arrow} bid {:>14}  ask {:>14}  spread {:>10}  seq {:>8}{stale}",
        time_of(rate),
        rate.symbol,
        rate.bid,
        rate.ask,
        spread,
        rate.sequence
    );
}

/// One stream from the server: prints what it sends until it ends
/// (`false`) or `--count` rates are printed (`true`). `last` holds each
/// symbol's last printed rate, where the next stream resumes.
async fn stream_once(
    args: &SubscribeArgs,
    token: &mut Option<String>,
    last: &mut HashMap<String, Rate>,
    printed: &mut u64,
) -> anyhow::Result<bool> {
    if token.is_none() {
        *token = Some(client_token(&args.server, &args.credentials, &["rates:subscribe=*"]).await?);
    }
    let credential = token.as_deref().unwrap_or_default();
    let mut client = RateServiceClient::new(connect(&args.server, credential).await?);
    let resume_after = last.iter().map(|(s, r)| (s.clone(), r.sequence)).collect();
    let request = StreamRatesRequest {
        symbols: split_list(&args.symbols),
        resume_after_sequence: if last.is_empty() {
            args.resume_after
        } else {
            None
        },
        resume_after,
    };
    let mut stream = client.stream_rates(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(Event::Rate(rate)) => {
                print_rate(&rate, last.get(&rate.symbol));
                last.insert(rate.symbol.clone(), rate);
                *printed += 1;
                if args.count.is_some_and(|n| *printed >= n) {
                    return Ok(true);
                }
            }
            Some(Event::Gap(gap)) => {
                let reason = GapReason::try_from(gap.reason).unwrap_or(GapReason::Unspecified);
                println!("GAP {:<10} {:?}: {}", gap.symbol, reason, gap.message);
            }
            None => {}
        }
    }
    Ok(false)
}

pub(crate) async fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let mut last: HashMap<String, Rate> = HashMap::new();
    let mut printed = 0u64;
    let mut backoff = Backoff::new(BackoffPolicy::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
    ));
    let mut token: Option<String> = None;
    loop {
        let outcome = stream_once(&args, &mut token, &mut last, &mut printed).await;
        let delay = match outcome {
            Ok(true) => return Ok(()),
            Err(err)
                if args.credentials.token.is_none()
                    && err
                        .downcast_ref::<tonic::Status>()
                        .is_some_and(|s| s.code() == Code::Unauthenticated) =>
            {
                // Our own short-lived token expired: get a fresh one and resume.
                eprintln!("token expired; getting a fresh one");
                token = None;
                continue;
            }
            Ok(false) => {
                eprintln!("stream ended by the server; reconnecting");
                backoff.next_delay()
            }
            Err(err) => {
                // Bad requests will not get better by retrying.
                if let Some(status) = err.downcast_ref::<tonic::Status>()
                    && matches!(
                        status.code(),
                        Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied
                    )
                {
                    return Err(status_error(status));
                }
                let delay = backoff.next_delay();
                eprintln!("{err:#}; reconnecting in {delay:?}");
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}
