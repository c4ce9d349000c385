//! `takhin utxo serve` killed with SIGKILL while a submitted block is still in flight (in
//! the block repository, not yet applied to the UTXO store), then restarted: the store must
//! end up equal to a replay from genesis of the repository's blocks, with every block
//! applied exactly once (both logs hold exactly the submitted chain, and the tip, the UTXO
//! set hash, balances and nonces match the replay). Before that, a first run is killed
//! with its applied blocks not yet flushed.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wes_server::{pb, Client};
use wes_store::{BlockRepository, ChainStore, StoreConfig};
use wes_utxo::gen::ChainGenerator;
use wes_utxo::model::{self, AssetId};
use wes_utxo::{pb as model_pb, ChainParams, UtxoState};

/// How long a test waits for the server before it gives up.
const WAIT: Duration = Duration::from_secs(30);
/// An apply delay no test run outlasts: a block submitted to a server started with it stays
/// in flight until the kill, however slow the machine.
const STUCK_APPLY_MS: u64 = 600_000;

/// Starts the server; returns the child and its gRPC address (from its first stdout line).
fn start(data: &Path, apply_delay_ms: u64) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_takhin"))
        .args([
            "utxo",
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--no-metrics",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(["--exit-on-stdin-eof", "--apply-delay-ms"])
        .arg(apply_delay_ms.to_string())
        .env("TAKHIN_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting takhin utxo serve");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("takhin utxo serve printed no banner");
    let addr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no grpc= in {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// Closes stdin (the server exits cleanly) and waits, bounded.
fn stop(mut child: Child) {
    drop(child.stdin.take());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("takhin utxo serve did not exit on stdin EOF");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn status(client: &mut Client) -> pb::GetSyncStatusResponse {
    client
        .get_sync_status(pb::GetSyncStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn submit(client: &mut Client, block: &model_pb::Block, wait_applied: bool) {
    let response = client
        .submit_block(pb::SubmitBlockRequest {
            block: Some(block.clone()),
            wait_applied,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!response.already_present);
}

/// Polls until the server's UTXO tip is at `height` with nothing left to apply; returns
/// that status.
async fn caught_up(client: &mut Client, height: u64, what: &str) -> pb::GetSyncStatusResponse {
    let started = Instant::now();
    loop {
        let now = status(client).await;
        if now.utxo_tip.as_ref().map(|tip| tip.height) == Some(height) && now.lag_blocks == 0 {
            return now;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what} (utxo tip at {height}): {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hashes(repository: &BlockRepository) -> Vec<Vec<u8>> {
    (0..repository.len().unwrap())
        .map(|height| repository.hash_at(height).unwrap().unwrap().0.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_blocks_in_flight_recovers_to_the_replay() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("utxo");
    let mut generator = ChainGenerator::new(21, 8);
    let mut reference = UtxoState::new(ChainParams::default());
    let mut submitted: Vec<model_pb::Block> = Vec::new();

    // A first run applies 7 blocks (not flushed: the store flushes every 50,000) and is
    // killed (SIGKILL).
    let (mut child, addr) = start(&data, 0);
    let mut client = wes_server::connect(addr).await.unwrap();
    for _ in 0..7 {
        let block = generator.next_block(&reference, 3);
        reference.apply_block(&block).unwrap();
        submit(&mut client, &block, true).await;
        submitted.push(block);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(client);

    // A second run never finishes an apply, so the block submitted now is in flight (in the
    // repository, not applied) when it is killed. (SubmitBlock first waits for the parent
    // to be applied, so the first run's blocks must be back without an apply.)
    let (mut child, addr) = start(&data, STUCK_APPLY_MS);
    let mut client = wes_server::connect(addr).await.unwrap();
    caught_up(
        &mut client,
        6,
        "the store to reopen with the first run's blocks",
    )
    .await;
    let block = generator.next_block(&reference, 3);
    reference.apply_block(&block).unwrap();
    submit(&mut client, &block, false).await;
    submitted.push(block);
    let before_kill = status(&mut client).await;
    let n_blocks = submitted.len() as u64;
    assert_eq!(
        before_kill.repository_tip.as_ref().unwrap().height,
        n_blocks - 1
    );
    assert!(
        before_kill.lag_blocks >= 1,
        "nothing in flight at the kill: {before_kill:?}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    drop(client);

    let (child, addr) = start(&data, 0);
    let mut client = wes_server::connect(addr).await.unwrap();
    let tip = reference.tip().unwrap();
    let now = caught_up(&mut client, tip.height, "the catch-up after restart").await;
    assert_eq!(now.utxo_tip.unwrap().hash, tip.hash.0.to_vec());
    for owner in generator.owners() {
        let utxos = client
            .get_utxos_by_address(pb::GetUtxosByAddressRequest {
                address: owner.address.0.to_vec(),
                category: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .utxos;
        assert_eq!(utxos, reference.utxos_by_owner(&owner.address));
        let balance = client
            .get_balance(pb::GetBalanceRequest {
                address: owner.address.0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            balance.native_coin_balance,
            reference
                .balance(&owner.address, &AssetId::Native)
                .to_string()
        );
    }
    drop(client);
    stop(child);

    // Both logs hold exactly the submitted chain: nothing lost, nothing twice.
    let expected: Vec<Vec<u8>> = submitted
        .iter()
        .map(|block| model::block_hash(block.header.as_ref().unwrap()).0.to_vec())
        .collect();
    let repository = BlockRepository::open(&data.join("repository/blocks.log"), false).unwrap();
    assert_eq!(hashes(&repository), expected, "block repository");
    drop(repository);
    let store = ChainStore::open(&data, ChainParams::default(), StoreConfig::default()).unwrap();
    assert_eq!(hashes(store.repository()), expected, "chain store log");
    assert_eq!(store.tip().unwrap().hash, tip.hash);
    let (actual, replayed) = (store.utxo_set().unwrap(), reference.utxo_set());
    assert_eq!(
        actual.utxo_set_hash, replayed.utxo_set_hash,
        "utxo set hash"
    );
    assert_eq!(actual, replayed);
    for owner in generator.owners() {
        assert_eq!(
            store.compute_account_nonce(&owner.address).unwrap(),
            reference.compute_account_nonce(&owner.address),
            "nonce of {}",
            owner.address
        );
        assert_eq!(
            store.balances(&owner.address).unwrap(),
            reference.balances(&owner.address)
        );
    }
}
