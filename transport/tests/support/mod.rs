//! Helpers shared by the Momento, NATS and Redis tests: a real
//! nats-server, a real redis-server, one trait over both (`servers`:
//! connecting each backend to its server), the NATS and Redis configs with
//! fast retries, a TCP proxy that cuts one process off its server, numbered
//! messages with the waits and checks the backends' tests use, the outage
//! scenarios (and the tests) NATS and Redis both run, a log capture, and
//! the next item of any stream within a deadline.
//!
//! Each test target uses part of them only.
#![allow(dead_code)]

// The one nats-server (and redis-server) helper lives in the testkit; this crate cannot depend
// on the testkit (which depends on it), so it compiles the same file.
pub(crate) mod configs;
#[path = "../../../testkit/src/nats.rs"]
#[allow(unreachable_pub)]
pub(crate) mod nats_server;
// The testkit's log capture, compiled here for the same reason.
#[path = "../../../testkit/src/logs.rs"]
#[allow(unreachable_pub)]
pub(crate) mod logs;
pub(crate) mod numbers;
pub(crate) mod outages;
pub(crate) mod proxy;
#[path = "../../../testkit/src/redis.rs"]
#[allow(unreachable_pub)]
pub(crate) mod redis_server;
#[path = "../../../testkit/src/server_process.rs"]
pub(crate) mod server_process;
pub(crate) mod servers;
#[path = "../../../testkit/src/within.rs"]
#[allow(unreachable_pub)]
pub(crate) mod within;
