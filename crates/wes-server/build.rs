//! Generates the `wes.v1.UtxoService` server and client from `proto/wes/service.proto` with
//! tonic-prost-build, compiling the schema with protox (pure Rust, no `protoc`). The model
//! types of the other `proto/wes` files are wes-utxo's (`wes_utxo::pb`): every one of them is
//! mapped there with `extern_path`, so they are generated once, in wes-utxo.

use std::path::PathBuf;

const SERVICE: &str = "wes/service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    for file in [
        SERVICE,
        "wes/locking.proto",
        "wes/transaction.proto",
        "wes/block.proto",
        "wes/utxo.proto",
    ] {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let file_descriptor_set = protox::compile([SERVICE], [&proto_root])?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true);
    for file in &file_descriptor_set.file {
        if file.name() == SERVICE {
            continue;
        }
        let package = file.package();
        for name in file
            .message_type
            .iter()
            .map(|message| message.name())
            .chain(file.enum_type.iter().map(|enumeration| enumeration.name()))
        {
            builder = builder.extern_path(
                format!(".{package}.{name}"),
                format!("::wes_utxo::pb::{}", rust_type_name(name)),
            );
        }
    }
    builder.compile_fds(file_descriptor_set)?;
    Ok(())
}

/// prost's Rust name of a top-level message or enum: upper camel case, where a run of
/// capitals is a word (`UTXOCategory` -> `UtxoCategory`, `UTXO` -> `Utxo`).
fn rust_type_name(proto_name: &str) -> String {
    let chars: Vec<char> = proto_name.chars().collect();
    let mut out = String::with_capacity(chars.len());
    for (index, &c) in chars.iter().enumerate() {
        let previous_upper = index > 0 && chars[index - 1].is_ascii_uppercase();
        let next_lower = chars.get(index + 1).is_some_and(|n| n.is_ascii_lowercase());
        if c.is_ascii_uppercase() && previous_upper && !next_lower {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
