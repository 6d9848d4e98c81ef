//! The load generators `fxcast loadtest` runs against a running server.
//!
//! - [`orders`]: PlaceOrder throughput and latency, closed or open loop.
//! - [`rates`]: N rate subscribers over WebSocket, SSE, gRPC or nats-server's
//!   WebSocket; `subscribers` holds one subscriber per interface, `recorder`
//!   the sharded histograms they record into.
//! - [`nats`]: the peer of the comparison: a nats-server started for a run,
//!   its publisher, and the NATS-over-WebSocket subscriber.
//! - [`compare`]: fxcast's WebSocket, SSE and gRPC and nats-server under the
//!   same load, each against a fresh server, in one table.
//! - [`spread`]: a case of the comparison past what one process can hold,
//!   run over several serving fxcast processes (a cluster on nats-server)
//!   and as many load-generator processes, merged into one row.
//! - [`histogram`]: the HDR histograms every generator records latencies in,
//!   and their percentiles.
//! - [`proc`]: the server's resident memory and CPU time, from /proc.
//! - `spawn`: starting a server process, pinned with `taskset`.
//!
//! Each generator takes a plain configuration (the CLI maps its flags onto
//! it) and a bearer token, runs, and returns a report that prints itself as
//! text or JSON.

use anyhow::Context;
use fxcast_proto::{Authed, Bearer, authed};
use tonic::transport::Endpoint;

pub mod compare;
pub mod histogram;
pub mod nats;
pub mod orders;
pub mod proc;
pub mod rates;
mod recorder;
mod spawn;
pub mod spread;
mod subscribers;

/// A gRPC status as a one-line error: `PermissionDenied: <message>`.
fn status_error(status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// Opens connections to one gRPC server, each carrying one bearer token.
#[derive(Debug, Clone)]
struct Dialer {
    target: String,
    endpoint: Endpoint,
    bearer: Bearer,
}

impl Dialer {
    fn new(target: &str, token: &str) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(target.to_owned())
            .with_context(|| format!("invalid server address {target:?}"))?;
        // An https:// target as the terminal clients reach one.
        let ca = std::env::var_os("FXCAST_CA_CERT").map(std::path::PathBuf::from);
        let endpoint = fxcast_listener::tls::client_endpoint(endpoint, ca.as_deref())
            .context("FXCAST_CA_CERT")?;
        let bearer = Bearer::token(token).map_err(|_| {
            anyhow::anyhow!("the token contains characters not allowed in a header")
        })?;
        Ok(Self {
            target: target.to_owned(),
            endpoint,
            bearer,
        })
    }

    /// A new HTTP/2 connection.
    async fn connect(&self) -> anyhow::Result<Authed> {
        let channel = self
            .endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", self.target))?;
        Ok(authed(channel, self.bearer.clone()))
    }
}
