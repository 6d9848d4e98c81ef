//! Helpers shared by the NATS tests: a real nats-server, and a TCP proxy
//! that cuts one process off it.
//!
//! Each test target uses part of them only.
#![allow(dead_code)]

// The one nats-server helper lives in the testkit; this crate cannot depend
// on the testkit (which depends on it), so it compiles the same file.
#[path = "../../../testkit/src/nats.rs"]
#[allow(unreachable_pub)]
pub(crate) mod nats_server;
pub(crate) mod proxy;
