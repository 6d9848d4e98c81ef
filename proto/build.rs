//! Compiles the protos with `protox` (pure Rust, no system `protoc`) and
//! writes the encoded descriptor set that server reflection serves. The
//! servers are generated apart from the messages and clients, to give them
//! their own codec and `StreamRates` its pre-encoded responses.

use std::{env, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "fxcast/v1/rates.proto",
    "fxcast/v1/tokens.proto",
    "fxcast/v1/orders.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("fxcast_descriptor.bin"), fds.encode_to_vec())?;
    // Messages and clients, with prost's codec.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds.clone())?;
    // The servers alone, over those messages, with the codec that answers
    // undecodable requests INVALID_ARGUMENT (src/codec.rs).
    let servers = out.join("servers");
    std::fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".fxcast.v1", "crate::v1")
        // StreamRates sends responses encoded once per tick (src/frame.rs).
        .extern_path(
            ".fxcast.v1.StreamRatesResponse",
            "crate::frame::StreamRatesFrame",
        )
        .codec_path("crate::codec::RequestCodec")
        .out_dir(&servers)
        .compile_fds(fds)?;
    Ok(())
}
