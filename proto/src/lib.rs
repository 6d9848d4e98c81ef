//! fxcast's wire contract: the protobuf messages and tonic services of
//! package `fxcast.v1`, generated at build time from `proto/fxcast/v1/*.proto`.
//!
//! Prices travel as decimal strings (`"151.234"`) so no binary floating point
//! ever touches money; times are `google.protobuf.Timestamp`.
//!
//! # Layout
//! - [`v1`]: the generated messages, clients and servers.
//! - `bearer`: [`Bearer`], the interceptor every client authenticates with.
//! - [`codec`]: the servers' codec: undecodable requests are `INVALID_ARGUMENT`.
//! - [`frame`]: [`frame::StreamRatesFrame`], the servers' `StreamRatesResponse`,
//!   encoded once per tick for every stream.

#![forbid(unsafe_code)]

mod bearer;
pub mod codec;
pub mod frame;

pub use bearer::{Authed, Bearer, authed};

/// Package `fxcast.v1`.
#[allow(missing_docs, unreachable_pub)] // generated code
pub mod v1 {
    tonic::include_proto!("fxcast.v1");
    // The servers, generated apart with [`RequestCodec`](crate::codec::RequestCodec).
    include!(concat!(env!("OUT_DIR"), "/servers/fxcast.v1.rs"));
}

/// Encoded `FileDescriptorSet` of every fxcast proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fxcast_descriptor");

pub use prost_types::{Duration, Timestamp};
