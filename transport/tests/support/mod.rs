//! Helpers shared by the NATS tests: a real nats-server, and a TCP proxy
//! that cuts one process off it.
//!
//! Each test target uses part of them only.
#![allow(dead_code)]

pub(crate) mod nats_server;
pub(crate) mod proxy;
