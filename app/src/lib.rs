//! fxcast's composition root.
//!
//! One typed [`Config`] for everything `fxcast serve` runs, read from flags,
//! environment and a TOML file by one precedence rule ([`Settings`]), and
//! [`App`], which builds the running process from it: `App::build(config)`
//! -> running handles -> [`App::shutdown`]. `fxcast serve`, the integration
//! tests (through `fxcast-testkit`) and the benches all start fxcast here,
//! so they run the same assembly.
//!
//! # Layout
//! - `settings`: [`Settings`], every setting declared once (clap flag, env
//!   var and TOML key), and the typed values settings parse into.
//! - `config`: [`Config`], the crates' own configurations built from
//!   settings with their defaults and cross-setting checks.
//! - `app`: [`App`], the process: listeners, transport, rate core, gRPC
//!   server and gateway.

#![forbid(unsafe_code)]

mod app;
mod config;
mod settings;

use std::{net::SocketAddr, path::PathBuf};

pub use app::App;
pub use config::{Config, Lookup, TransportConfig, environment};
pub use settings::{
    FeedName, FixSettings, Fraction, List, LpName, NatsSettings, RedisSettings, Secret, Settings,
    TransportKind,
};

/// Why fxcast could not be configured or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    /// The `--config` file cannot be read or parsed.
    #[error("invalid config file {}: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The data directory cannot be created.
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener cannot be bound.
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        /// `gRPC` or `HTTP`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Momento cannot be used.
    #[error("cannot use Momento (cache {cache:?}): {source}")]
    Momento {
        /// The configured cache.
        cache: String,
        /// The transport's error.
        #[source]
        source: fxcast_transport::Error,
    },
    /// NATS cannot be used; the message names the server (without its
    /// credentials) and what to check.
    #[error("cannot use NATS: {source}")]
    Nats {
        /// The transport's error.
        #[source]
        source: fxcast_transport::Error,
    },
    /// Redis cannot be used; the message names the server (without its
    /// password) and what to check.
    #[error("cannot use Redis: {source}")]
    Redis {
        /// The transport's error.
        #[source]
        source: fxcast_transport::Error,
    },
    /// The rate core or its gRPC server failed.
    #[error(transparent)]
    Services(#[from] fxcast_services::Error),
    /// The gateway failed.
    #[error(transparent)]
    Gateway(#[from] fxcast_gateway::Error),
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
}
