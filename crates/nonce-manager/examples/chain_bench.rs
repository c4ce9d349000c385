//! Two measurements against a real anvil (from `tests/evm/node_modules`, or
//! `TAKHIN_ANVIL_BIN`), with the nonce manager on a SQLite file (`synchronous=FULL`):
//!
//! - `finality`: anvil mines a block every second; transactions are submitted through
//!   `Submitter` and finality runs with 20 confirmations. A watcher polls `eth_blockNumber`
//!   every 5 ms and notes when each height first appears; another polls the store every
//!   5 ms. Per transaction it prints the time from the block that makes it 20 deep (its
//!   block + 19) appearing to its status turning `Confirmed`: p50/p99/max.
//! - `submit`: anvil with a 300M block gas limit and 1 s blocks. N transactions go through
//!   `Submitter::submit` from C concurrent callers (allocate, sign, store, send, mark
//!   Tracking); then, in the same run, N transactions pre-signed for another account go
//!   straight to `eth_sendRawTransaction` from C callers. For both: accepted/s (all sends
//!   answered) and mined/s (until the account's mined nonce reaches N).
//!
//! ```sh
//! cargo run --release -p nonce-manager --example chain_bench -- finality --txs 30
//! cargo run --release -p nonce-manager --example chain_bench -- submit --txs 4000 --callers 64
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, Bytes, U256};
use ledger_lease::{HolderId, LeaseManager, LeaseManagerConfig, LeaseStore, SystemClock};
use nonce_manager::allocator::{Allocator, AllocatorConfig};
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::chain::ChainClient;
use nonce_manager::finality::{Finality, FinalityConfig};
use nonce_manager::signer::LocalKey;
use nonce_manager::store::sqlite::SqliteNonceStore;
use nonce_manager::store::NonceStore;
use nonce_manager::submit::{SubmitRequest, Submitter};
use nonce_manager::{signer_resource, RequestId, TxPayload, TxStatus};

/// Anvil's dev accounts 0 and 1: published test keys.
const DEV_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const DEV_KEY_1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const GWEI: u128 = 1_000_000_000;

struct Anvil {
    child: Child,
    url: String,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn anvil_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TAKHIN_ANVIL_BIN") {
        return PathBuf::from(path);
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../tests/evm/node_modules/@foundry-rs/anvil-{}-{arch}/bin/anvil",
        std::env::consts::OS
    ))
}

fn start_anvil(extra: &[&str]) -> Anvil {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(anvil_binary())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--chain-id", "31337", "--silent"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("anvil (npm install --prefix tests/evm --ignore-scripts)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "anvil did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Anvil {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

struct Node {
    store: Arc<dyn NonceStore>,
    chain: Arc<dyn ChainClient>,
    allocator: Arc<Allocator>,
    submitter: Arc<Submitter>,
    key: LocalKey,
    _guard: ledger_lease::LeaseGuard,
    _dir: tempfile::TempDir,
}

async fn node(url: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(SystemClock);
    let (store, leases) =
        SqliteNonceStore::connect(&dir.path().join("nonce.sqlite"), clock.clone())
            .await
            .unwrap();
    let store: Arc<dyn NonceStore> = Arc::new(store);
    let leases: Arc<dyn LeaseStore> = Arc::new(leases);
    let chain: Arc<dyn ChainClient> = Arc::new(AlloyChainClient::new(url).unwrap());
    let key = LocalKey::from_hex(DEV_KEY_0).unwrap();
    let guard = LeaseManager::acquire(
        leases,
        &signer_resource(key.address()),
        &HolderId::new("bench").unwrap(),
        LeaseManagerConfig::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    .unwrap();
    let allocator = Arc::new(
        Allocator::start(
            store.clone(),
            chain.clone(),
            key.address(),
            guard.subscribe(),
            AllocatorConfig::default(),
        )
        .unwrap(),
    );
    let submitter = Arc::new(
        Submitter::new(
            store.clone(),
            allocator.clone(),
            chain.clone(),
            key.clone(),
            clock,
        )
        .await
        .unwrap(),
    );
    Node {
        store,
        chain,
        allocator,
        submitter,
        key,
        _guard: guard,
        _dir: dir,
    }
}

fn payload(n: u64) -> TxPayload {
    TxPayload {
        to: Address::repeat_byte(0x70),
        value: U256::from(n + 1),
        data: Bytes::new(),
        gas_limit: 21_000,
        max_fee_per_gas: 100 * GWEI,
        max_priority_fee_per_gas: GWEI,
    }
}

fn quantiles(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        values.len(),
        at(0.5),
        at(0.99),
        values[values.len() - 1]
    )
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|at| args.get(at + 1))
        .map_or(default, |value| value.parse().expect("a number"))
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "finality".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match mode.as_str() {
        "finality" => runtime.block_on(finality(arg("--txs", 30))),
        "submit" => runtime.block_on(submit(arg("--txs", 4000), arg("--callers", 64) as usize)),
        other => panic!("mode is finality or submit, not {other}"),
    }
}

async fn finality(n_txs: u64) {
    let anvil = start_anvil(&["--block-time", "1"]);
    let node = node(&anvil.url).await;
    let _finality = Finality::start(
        node.store.clone(),
        node.chain.clone(),
        node.allocator.clone(),
        FinalityConfig {
            confirmations: 20,
            ..FinalityConfig::default()
        },
    );
    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        let chain = node.chain.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(head) = chain.block_number().await {
                    seen.lock()
                        .unwrap()
                        .entry(head)
                        .or_insert_with(Instant::now);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut ids = Vec::new();
    for n in 0..n_txs {
        let id = RequestId::new(format!("final-{n}")).unwrap();
        let record = node
            .submitter
            .submit(SubmitRequest {
                request_id: id.clone(),
                signer: node.key.address(),
                payload: payload(n),
            })
            .await
            .unwrap();
        assert_eq!(record.status, TxStatus::Tracking);
        ids.push((id, record.attempts[0].hash));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut confirmed_at: HashMap<RequestId, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while confirmed_at.len() < ids.len() {
        assert!(Instant::now() < deadline, "not all confirmed in time");
        for (id, _) in &ids {
            if confirmed_at.contains_key(id) {
                continue;
            }
            let record = node.store.transaction(id).await.unwrap().unwrap();
            if record.status == TxStatus::Confirmed {
                confirmed_at.insert(id.clone(), Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    let mut latencies = Vec::new();
    for (id, hash) in &ids {
        let receipt = node.chain.receipt(*hash).await.unwrap().expect("mined");
        let twentieth = receipt.block_number + 19;
        let appeared = seen[&twentieth];
        let latency = confirmed_at[id].saturating_duration_since(appeared);
        latencies.push(latency.as_secs_f64() * 1000.0);
    }
    println!(
        "finality: 20 confirmations, 1 s blocks, block 20 deep seen -> Confirmed: {}",
        quantiles(latencies)
    );
}

async fn submit(n_txs: u64, callers: usize) {
    let anvil = start_anvil(&["--block-time", "1", "--gas-limit", "300000000"]);
    let node = node(&anvil.url).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_caller = n_txs.div_ceil(callers as u64);
    for caller in 0..callers as u64 {
        let submitter = node.submitter.clone();
        let signer = node.key.address();
        tasks.push(tokio::spawn(async move {
            let first = caller * per_caller;
            for n in first..(first + per_caller).min(n_txs) {
                let record = submitter
                    .submit(SubmitRequest {
                        request_id: RequestId::new(format!("submit-{n}")).unwrap(),
                        signer,
                        payload: payload(n),
                    })
                    .await
                    .unwrap();
                assert_eq!(record.status, TxStatus::Tracking);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let accepted = started.elapsed();
    wait_mined(node.chain.as_ref(), node.key.address(), n_txs).await;
    let mined = started.elapsed();
    println!(
        "submit (SubmitTransaction, {callers} callers, {n_txs} txs): accepted/s={:.0} ({:.2}s) mined/s={:.0} ({:.2}s)",
        n_txs as f64 / accepted.as_secs_f64(),
        accepted.as_secs_f64(),
        n_txs as f64 / mined.as_secs_f64(),
        mined.as_secs_f64()
    );

    let key = LocalKey::from_hex(DEV_KEY_1).unwrap();
    let raws: Vec<Vec<u8>> = (0..n_txs)
        .map(|n| key.sign(31337, n, &payload(n)).unwrap().raw)
        .collect();
    let raws = Arc::new(raws);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers as u64 {
        let chain = node.chain.clone();
        let raws = raws.clone();
        tasks.push(tokio::spawn(async move {
            let first = caller * per_caller;
            for n in first..(first + per_caller).min(n_txs) {
                chain.send_raw_transaction(&raws[n as usize]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let accepted = started.elapsed();
    wait_mined(node.chain.as_ref(), key.address(), n_txs).await;
    let mined = started.elapsed();
    println!(
        "raw eth_sendRawTransaction of pre-signed txs ({callers} callers, {n_txs} txs): accepted/s={:.0} ({:.2}s) mined/s={:.0} ({:.2}s)",
        n_txs as f64 / accepted.as_secs_f64(),
        accepted.as_secs_f64(),
        n_txs as f64 / mined.as_secs_f64(),
        mined.as_secs_f64()
    );
}

async fn wait_mined(chain: &dyn ChainClient, address: Address, n_txs: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while chain.latest_nonce(address).await.unwrap() < n_txs {
        assert!(Instant::now() < deadline, "not all mined in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
