//! End to end through the built binary: `takhin utxo gen`, `import` (twice), the queries,
//! and the errors a user sees for a bad address and a truncated chain file.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn takhin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_takhin"))
        .args(args)
        .env("TAKHIN_LOG", "warn")
        .output()
        .expect("running takhin")
}

fn ok_json(args: &[&str]) -> Value {
    let output = takhin(args);
    assert!(
        output.status.success(),
        "takhin {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "takhin {args:?} printed no JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn gen_import_query_and_errors() {
    let temp = tempfile::tempdir().expect("temp dir");
    let chain_file = temp.path().join("chain.bin");
    let data = temp.path().join("data");
    let (chain_file, data) = (path(&chain_file), path(&data));

    let generated = ok_json(&[
        "utxo",
        "gen",
        "--blocks",
        "20",
        "--owners",
        "10",
        "--txs-per-block",
        "5",
        "--seed",
        "7",
        "--out",
        chain_file,
    ]);
    assert_eq!(generated["blocks"], 20);
    assert_eq!(generated["tip_height"], 19);
    let owners = generated["owners"].as_array().expect("owners");
    assert_eq!(owners.len(), 10);
    let owner = owners[0].as_str().expect("owner address").to_owned();
    assert_eq!(owner.len(), 40);

    let imported = ok_json(&["utxo", "import", "--file", chain_file, "--data-dir", data]);
    assert_eq!(imported["applied_blocks"], 20);
    assert_eq!(imported["tip_height"], 19);
    assert_eq!(imported["tip_hash"], generated["tip_hash"]);

    let again = ok_json(&["utxo", "import", "--file", chain_file, "--data-dir", data]);
    assert_eq!(again["applied_blocks"], 0);
    assert_eq!(again["skipped_blocks"], 20);
    assert_eq!(again["tip_hash"], imported["tip_hash"]);

    let status = ok_json(&["utxo", "status", "--data-dir", data]);
    assert_eq!(status["tip_height"], 19);
    assert_eq!(status["tip_hash"], generated["tip_hash"]);

    let balance = ok_json(&["utxo", "balance", &owner, "--data-dir", data]);
    let native: u64 = balance["balances"]
        .as_array()
        .expect("balances")
        .iter()
        .find(|entry| entry["asset"] == "native")
        .map_or(0, |entry| entry["amount"].as_u64().expect("u64 amount"));
    assert!(native > 0, "genesis funds every owner: {balance}");

    let assets = ok_json(&[
        "utxo",
        "utxos",
        &owner,
        "--category",
        "asset",
        "--data-dir",
        data,
    ]);
    let utxo_native: u64 = assets["utxos"]
        .as_array()
        .expect("utxos")
        .iter()
        .inspect(|utxo| {
            assert_eq!(utxo["category"], "UTXO_CATEGORY_ASSET");
            assert!(utxo["outpoint"].as_str().is_some_and(|o| o.contains(':')));
        })
        .filter(|utxo| utxo["asset"] == "native")
        .map(|utxo| utxo["amount"].as_u64().expect("u64 amount"))
        .sum();
    assert_eq!(utxo_native, native, "native balance = sum of native UTXOs");

    let all = ok_json(&["utxo", "utxos", &owner, "--data-dir", data]);
    assert!(
        all["utxos"].as_array().expect("utxos").len()
            >= assets["utxos"].as_array().expect("utxos").len()
    );
    let nonce = ok_json(&["utxo", "nonce", &owner, "--data-dir", data]);
    assert!(nonce["nonce"].as_u64().is_some(), "{nonce}");
    let resources = ok_json(&["utxo", "resources", &owner, "--data-dir", data]);
    assert!(resources["resources"].is_array());

    let bad = takhin(&["utxo", "balance", "xyz", "--data-dir", data]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("invalid address"), "{stderr}");

    // Cut the file in the middle of its last record: the error names record 19 and the
    // earlier records are applied to a fresh store.
    let bytes = std::fs::read(chain_file).expect("chain file");
    let truncated = temp.path().join("truncated.bin");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).expect("write");
    let fresh = temp.path().join("fresh");
    let cut = takhin(&[
        "utxo",
        "import",
        "--file",
        path(&truncated),
        "--data-dir",
        path(&fresh),
    ]);
    assert!(!cut.status.success());
    let stderr = String::from_utf8_lossy(&cut.stderr);
    assert!(stderr.contains("record 19"), "{stderr}");
    let status = ok_json(&["utxo", "status", "--data-dir", path(&fresh)]);
    assert_eq!(status["tip_height"], 18);
}
