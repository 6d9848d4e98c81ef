//! The `fxcast` command line: parses arguments and calls the libraries.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod commands;

/// Every allocation of the binary, servers and load generators alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Live FX/crypto rates and orders against them.
#[derive(Debug, Parser)]
#[command(name = "fxcast", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything: feed, publisher, gRPC services and the HTTP gateway.
    Serve(Box<fxcast_app::Settings>),
    /// Run the HTTP gateway alone, in front of a (remote) fxcast gRPC server.
    Gateway(commands::gateway::GatewayArgs),
    /// Stream live rates to the terminal.
    Subscribe(commands::subscribe::SubscribeArgs),
    /// Issue or revoke tokens, mint signed stream URLs, rotate the signing key.
    Token(commands::token::TokenArgs),
    /// Place an order: filled only if the live price is within tolerance of yours.
    Order(commands::order::OrderArgs),
    /// Load-test a running server and report throughput and latency.
    Loadtest(commands::loadtest::LoadtestArgs),
    /// Record bitFlyer's live ticker notifications to a file for `serve --feed replay:FILE`.
    Record(commands::record::RecordArgs),
    /// Run a Momento-wire-compatible server (gRPC and gRPC-web) for the Momento SDKs.
    MomentoLocal(commands::momento_local::MomentoLocalArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    commands::init_logging();
    // Servers and load generators hold a socket per client.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %err, "cannot raise the open-files limit");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve::run(*args).await,
            Command::Subscribe(args) => commands::subscribe::run(args).await,
            Command::Gateway(args) => commands::gateway::run(args).await,
            Command::Token(args) => commands::token::run(args).await,
            Command::Order(args) => commands::order::run(args).await,
            Command::Loadtest(args) => commands::loadtest::run(args).await,
            Command::Record(args) => commands::record::run(args).await,
            Command::MomentoLocal(args) => commands::momento_local::run(args).await,
        }
    })
}
