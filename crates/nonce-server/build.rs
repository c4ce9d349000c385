//! Generates the nonce-manager gRPC types and the tonic server and client from
//! `proto/nonce/v1/nonce.proto`, compiling the schema with protox (pure Rust), so no
//! `protoc` binary is needed on any machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let file = "nonce/v1/nonce.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    let file_descriptor_set = protox::compile([file], [&proto_root])?;
    tonic_prost_build::configure().compile_fds(file_descriptor_set)?;
    Ok(())
}
