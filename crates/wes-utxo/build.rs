//! Generates the WES protobuf types from `proto/wes/*.proto` with prost, compiling the
//! schema with protox (pure Rust), so no `protoc` binary is needed on any machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let files = [
        "wes/locking.proto",
        "wes/transaction.proto",
        "wes/block.proto",
        "wes/utxo.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let file_descriptor_set = protox::compile(files, [&proto_root])?;
    prost_build::Config::new().compile_fds(file_descriptor_set)?;
    Ok(())
}
