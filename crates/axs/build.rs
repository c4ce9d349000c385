//! Generates the AXS gRPC types, server and client from `proto/axs/v1/axs.proto` with protox
//! (pure Rust, no `protoc`), and writes the encoded descriptor set that gRPC reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let file = "axs/v1/axs.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    let file_descriptor_set = protox::compile([file], [&proto_root])?;
    std::fs::write(
        out_dir.join("axs_descriptor.bin"),
        file_descriptor_set.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(file_descriptor_set)?;
    Ok(())
}
