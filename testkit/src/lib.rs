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
//! - `streams`: RateService calls ([`latest_rate`], [`publish_rate`]) and
//!   gRPC streams: opening a rate stream ([`stream_rates`],
//!   [`stream_symbols`]), the next message ([`next_message`],
//!   [`next_message_within`], [`next_event`], [`next_rate`]), the status
//!   that ends one ([`end_status`]).
//! - `sse`: Server-Sent Events ([`sse_events`]).
//! - `ws`: WebSocket helpers ([`Ws`], [`send_json`], [`next_json`],
//!   [`send_subscribe`], [`subscribe`]).
//! - `http`: REST calls ([`Stack::get_as`], [`Stack::get_json`],
//!   [`Stack::post_as`]), their answers ([`json_of`], [`error_of`]), and
//!   readiness of any gateway ([`wait_ready_at`]).
//! - `logs`: reading back what the servers log ([`capture_logs`]), also
//!   compiled by the transport crate's tests.
//! - `process`: driving the real binary ([`spawn_serve`], [`spawn_until`], [`wait_for_line`],
//!   [`log_field`], [`run`], [`stdout_of`], [`run_python`]) and talking to it from outside
//!   ([`http_exchange`], [`http_request`], [`issue_token`]).
//! - `tls`: a test CA, the certificate files a server reads, clients
//!   trusting only that CA ([`Ca`], [`TlsDir`]).
//! - `fix_lp`: the QuickFIX liquidity provider of the FIX tests
//!   ([`FixLp`]), compiled from tests/fix-lp/lp.cpp on first use.
//! - `nats`: a real nats-server with JetStream on a free port
//!   ([`NatsServer`]), also compiled by the transport crate's NATS tests.
//! - `redis`: a real redis-server on a free port ([`RedisServer`]), also
//!   compiled by the transport crate's Redis tests.
//! - `within`: the next item of any stream within a deadline
//!   ([`next_within`]), also compiled by the transport crate's tests.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::missing_panics_doc)] // test helpers panic by design

mod fix_lp;
mod http;
mod logs;
mod nats;
mod process;
mod redis;
mod server_process;
mod sse;
mod stack;
mod streams;
mod tls;
mod within;
mod ws;

pub use fix_lp::{FIX_PASSWORD, FIX_SENDER, FIX_TARGET, FIX_USERNAME, FixLp, fix_lp_binary};
pub use fxcast_proto::{Authed, Bearer, authed};
pub use http::{error_of, json_of, wait_ready_at};
pub use logs::{Captured, capture_logs};
pub use nats::NatsServer;
pub use process::{
    EPHEMERAL_LISTENERS, STARTUP, ServeProcess, http_exchange, http_request, issue_token,
    log_field, run, run_python, spawn_serve, spawn_until, stdout_of, wait_for_line,
};
pub use redis::RedisServer;
pub use sse::{SseEvent, sse_events};
pub use stack::{ALL_SCOPES, Stack};
pub use streams::{
    end_status, latest_rate, next_event, next_message, next_message_within, next_rate,
    publish_rate, stream_rates, stream_symbols,
};
pub use tls::{Ca, Leaf, TlsDir};
pub use within::next_within;
pub use ws::{Ws, next_json, send_json, send_subscribe, subscribe};

/// Connects to `url` sending `credential` (a token or the API key) on every call.
pub async fn channel(url: &str, credential: &str) -> Authed {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    fxcast_proto::authed(channel, Bearer::token(credential).unwrap())
}
