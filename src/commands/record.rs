//! `fxcast record`: bitFlyer's live notifications to a JSON Lines file, for
//! `fxcast serve --feed replay:FILE`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::Args;
use fxcast_services::feed::{BITFLYER_ENDPOINT, BitflyerConfig, record_bitflyer};

use super::split_list;

#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// Feed to record (only bitflyer records raw notifications)
    #[arg(long, env = "FXCAST_FEED", default_value = "bitflyer")]
    feed: String,
    /// File to write (JSON Lines; replaced if it exists)
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated bitFlyer product codes
    #[arg(
        long,
        env = "FXCAST_SYMBOLS",
        default_value = "BTC_JPY,ETH_JPY,FX_BTC_JPY"
    )]
    symbols: String,
    /// bitFlyer realtime WebSocket endpoint
    #[arg(long, env = "FXCAST_BITFLYER_ENDPOINT", default_value = BITFLYER_ENDPOINT)]
    bitflyer_endpoint: String,
    /// Stop after this long, e.g. 60s or 1h [default: until Ctrl-C]
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many notifications [default: no limit]
    #[arg(long)]
    max_messages: Option<u64>,
}

pub(crate) async fn run(args: RecordArgs) -> anyhow::Result<()> {
    if args.feed != "bitflyer" {
        bail!(
            "fxcast record records --feed bitflyer only (got {:?}); the simulated feed needs no recording: its --seed replays it",
            args.feed
        );
    }
    let products = split_list(&args.symbols);
    let file = tokio::fs::File::create(&args.out)
        .await
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let config = BitflyerConfig {
        endpoint: args.bitflyer_endpoint,
        ..BitflyerConfig::default()
    };
    tracing::info!(
        out = %args.out.display(),
        endpoint = %config.endpoint,
        products = %products.join(","),
        "recording bitFlyer tickers"
    );
    let stop = async {
        match args.duration {
            Some(duration) => tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = super::serve::shutdown_signal() => {}
            },
            None => super::serve::shutdown_signal().await,
        }
    };
    let summary = record_bitflyer(
        config,
        products.iter().map(String::as_str),
        file,
        args.max_messages,
        stop,
    )
    .await?;
    tracing::info!(
        notifications = summary.notifications,
        out = %args.out.display(),
        "recording finished"
    );
    Ok(())
}
