//! `fxcast loadtest compare`: the flags of the side-by-side comparison
//! (`fxcast_benches::load::compare`): fxcast's WebSocket, SSE and gRPC
//! streams and nats-server's WebSocket listener under the same load, each
//! against a fresh server this command starts and stops.

use std::time::Duration;

use clap::Args;
use fxcast_benches::load::compare::{self, Peer};

#[derive(Debug, Args)]
pub(crate) struct CompareLoad {
    /// Comma-separated servers: fxcast-ws, fxcast-sse, fxcast-grpc, nats-ws
    #[arg(long, default_value = "fxcast-ws,fxcast-sse,fxcast-grpc,nats-ws")]
    servers: String,
    /// Comma-separated subscriber counts every server runs at
    #[arg(long, default_value = "1000,10000")]
    connections: String,
    /// Comma-separated further counts for fxcast's WebSocket alone ("" for none)
    #[arg(long, default_value = "50000")]
    ws_connections: String,
    /// Comma-separated symbols each subscriber streams
    #[arg(long, default_value = "USD_JPY,EUR_USD")]
    symbols: String,
    /// Every symbol ticks once per interval, on fxcast and nats-server alike
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    tick_interval: Duration,
    /// How long to measure each case once every subscriber is connected
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Connections opened at once while ramping up
    #[arg(long, default_value_t = 500)]
    ramp: usize,
    /// Subscribers per loopback source address (127.0.0.1, 127.0.0.2, ...)
    #[arg(long, default_value_t = 20_000)]
    per_source_address: usize,
    /// Do not pin the servers to core 0 and the load generator to the
    /// others (pinned by default on 2 or more cores)
    #[arg(long)]
    no_pin: bool,
    /// Subscribers one process may hold (default: as many as its open-files
    /// limit allows). An fxcast case above it runs spread: several serving
    /// `fxcast serve` processes fed through a nats-server, and as many
    /// load-generator processes, merged into one row
    #[arg(long)]
    max_per_process: Option<usize>,
    /// Print the table as JSON
    #[arg(long)]
    json: bool,
}

impl CompareLoad {
    /// Runs every case and prints the table.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let counts = |list: &str| -> anyhow::Result<Vec<usize>> {
            super::split_list(list)
                .iter()
                .map(|n| {
                    n.replace('_', "")
                        .parse()
                        .map_err(|_| anyhow::anyhow!("not a connection count: {n:?}"))
                })
                .collect()
        };
        let peers = super::split_list(&self.servers)
            .iter()
            .map(|label| Peer::parse(label))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let compare = compare::Compare {
            fxcast: std::env::current_exe()?,
            peers,
            connections: counts(&self.connections)?,
            ws_connections: counts(&self.ws_connections)?,
            symbols: super::split_list(&self.symbols),
            tick_interval: self.tick_interval,
            duration: self.duration,
            ramp: self.ramp,
            per_source_address: self.per_source_address,
            pin: !self.no_pin,
            max_per_process: self.max_per_process,
        };
        let table = compare::run(&compare).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&table)?);
        } else {
            print!("{}", table.markdown());
        }
        Ok(())
    }
}
