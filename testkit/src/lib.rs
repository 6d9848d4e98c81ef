//! Dev-only: the one in-process fxcast stack every test and bench runs, and
//! the client helpers they share.
//!
//! [`Stack`] is `fxcast serve` in-process, built by the same composition
//! root (`fxcast_app::App`): rate core, gRPC and gateway, each on
//! `127.0.0.1:0`, with a fresh data directory unless the test names one.
//!
//! # Layout
//! - [`Stack`]: start, tokens, clients, publishing, readiness, metrics.
//! - [`channel`]: a gRPC channel carrying a credential.
//! - `streams`: the next event of a gRPC rate stream ([`next_event`], [`next_rate`]).
//! - `ws`: WebSocket helpers ([`Ws`], [`send_json`], [`next_json`], [`subscribe`]).
//! - `process`: driving the real binary ([`spawn_serve`], [`wait_for_line`], [`log_field`]).
//! - `tls`: a test CA, the certificate files a server reads, clients trusting only that CA ([`Ca`], [`TlsDir`]).

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::missing_panics_doc)] // test helpers panic by design

mod process;
mod stack;
mod streams;
mod tls;
mod ws;

pub use fxcast_proto::{Authed, Bearer, authed};
pub use process::{STARTUP, ServeProcess, log_field, spawn_serve, wait_for_line};
pub use stack::{ALL_SCOPES, Stack};
pub use streams::{next_event, next_rate};
pub use tls::{Ca, Leaf, TlsDir};
pub use ws::{Ws, next_json, send_json, subscribe};

/// Connects to `url` sending `credential` (a token or the API key) on every call.
pub async fn channel(url: &str, credential: &str) -> Authed {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    fxcast_proto::authed(channel, Bearer::token(credential).unwrap())
}
