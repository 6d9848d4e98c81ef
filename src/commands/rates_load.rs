//! `fxcast loadtest ws|sse|grpc`: the flags of the rate subscriber load
//! (`fxcast_benches::load::rates`): N subscribers against a running server,
//! reporting delivery latency, messages per second and the server's memory
//! per connection.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use fxcast_benches::load::rates::{self, Interface};

#[derive(Debug, Args)]
pub(crate) struct RatesLoad {
    /// Gateway base URL (ws, sse) or gRPC address (grpc)
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    target: String,
    /// Subscribers to open
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Comma-separated symbols each subscriber streams
    #[arg(long, default_value = "USD_JPY,EUR_USD")]
    symbols: String,
    /// How long to measure once every subscriber is connected
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Connections opened at once while ramping up
    #[arg(long, default_value_t = 200)]
    ramp: usize,
    /// Server process id, for RSS and CPU time (found by name when omitted)
    #[arg(long)]
    server_pid: Option<u32>,
    /// Subscribers per loopback source address (WebSocket, SSE): a loopback
    /// target is reached from 127.0.0.1, 127.0.0.2, ... to get past the
    /// ~28,000 ephemeral ports of one address
    #[arg(long, default_value_t = 20_000)]
    per_source_address: usize,
    /// Last octet of the first loopback source address (1: 127.0.0.1)
    #[arg(long, default_value_t = 1)]
    first_source_address: u8,
    /// Once every subscriber has opened, wait for a line on stdin before
    /// measuring (`loadtest compare` starts several of these at once)
    #[arg(long, hide = true)]
    wait_for_go: bool,
    /// Include the latency histogram in the JSON, for merging
    #[arg(long, hide = true)]
    histogram: bool,
    /// Bearer token; by default an anonymous browser token (ws, sse) or one
    /// issued with the API key from --data-dir (grpc)
    #[arg(long, env = "FXCAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local server (API key for grpc)
    #[arg(long, env = "FXCAST_DATA_DIR", default_value = "./fxcast-data")]
    data_dir: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

impl RatesLoad {
    /// Runs the load over `interface` and prints its report.
    pub(crate) async fn run(self, interface: Interface) -> anyhow::Result<()> {
        let load = rates::RatesLoad {
            target: self.target,
            connections: self.connections,
            symbols: super::split_list(&self.symbols),
            duration: self.duration,
            ramp: self.ramp,
            server_pid: self.server_pid,
            sources: rates::Sources {
                first: self.first_source_address,
                per_address: self.per_source_address,
            },
            wait_for_go: self.wait_for_go,
        };
        load.check()?;
        let token = match (self.token, interface) {
            (Some(token), _) => token,
            (None, Interface::Ws | Interface::Sse) => rates::browser_token(&load.target).await?,
            (None, Interface::Nats) => String::new(),
            (None, Interface::Grpc) => {
                let credentials = super::Credentials {
                    token: None,
                    data_dir: self.data_dir,
                };
                super::client_token(&load.target, &credentials, &["rates:subscribe=*"]).await?
            }
        };
        let mut report = rates::run(interface, &load, &token).await?;
        if !self.histogram {
            report.latency_histogram = None;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            report.print();
        }
        Ok(())
    }
}
