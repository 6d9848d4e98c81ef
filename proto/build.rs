//! Compiles the protos with `protox` (pure Rust, no system `protoc`) and
//! writes the encoded descriptor set that server reflection serves.

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
