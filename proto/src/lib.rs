//! fxcast's wire contract: the protobuf messages and tonic services of
//! package `fxcast.v1`, generated at build time from `proto/fxcast/v1/*.proto`.
//!
//! Prices travel as decimal strings (`"151.234"`) so no binary floating point
//! ever touches money; times are `google.protobuf.Timestamp`.

#![forbid(unsafe_code)]
#![allow(missing_docs, unreachable_pub)] // generated code

/// Package `fxcast.v1`.
pub mod v1 {
    tonic::include_proto!("fxcast.v1");
}

/// Encoded `FileDescriptorSet` of every fxcast proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fxcast_descriptor");

pub use prost_types::{Duration, Timestamp};
