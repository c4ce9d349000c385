//! Helpers for the server's tests: a server on 127.0.0.1:0 over a temp dir with fast
//! pipeline timings, a generated chain with its in-memory replay, hand-made transactions.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use wes_server::{pb, Client, Running, ServerConfig};
use wes_store::StoreConfig;
use wes_utxo::gen::{self, ChainGenerator};
use wes_utxo::locking::build;
use wes_utxo::model::{self, AssetId, OutPointKey};
use wes_utxo::pb as model_pb;
use wes_utxo::{ChainParams, UtxoState};
use wes_utxo_client::{BreakerConfig, ClientConfig, RetryConfig};

/// How long a test waits for the server's background work before it gives up.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn config(dir: &Path, metrics: bool) -> ServerConfig {
    let mut config = ServerConfig::new(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    if metrics {
        config.metrics_addr = Some("127.0.0.1:0".parse::<SocketAddr>().unwrap());
    }
    config.store = StoreConfig {
        flush_every_blocks: 8,
        ..StoreConfig::default()
    };
    config.client = ClientConfig {
        queue_capacity: 64,
        notify_timeout: Duration::from_millis(5),
        max_batch_blocks: 16,
        max_batch_delay: Duration::from_millis(1),
        call_timeout: Duration::from_secs(2),
        retry: RetryConfig {
            min_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(20),
            max_retries: 2,
            jitter: true,
        },
        breaker: BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(200),
            max_cooldown: Duration::from_millis(400),
        },
        sync_interval: Duration::from_millis(50),
        degraded_lag: 4,
        unhealthy_lag: 1_000,
        rollback_on_divergence: true,
    };
    // SubmitBlock waits this long for the applier (generous: CI machines are busy).
    config.submit_timeout = WAIT;
    config
}

pub async fn start(dir: &Path, metrics: bool) -> (Running, Client) {
    let running = wes_server::serve(config(dir, metrics)).await.unwrap();
    let client = wes_server::connect(running.grpc_addr).await.unwrap();
    (running, client)
}

/// A generated chain and its in-memory replay.
pub struct Chain {
    pub generator: ChainGenerator,
    pub reference: UtxoState,
    pub blocks: Vec<model_pb::Block>,
}

impl Chain {
    pub fn new(seed: u64, n_owners: usize) -> Self {
        Self {
            generator: ChainGenerator::new(seed, n_owners),
            reference: UtxoState::new(ChainParams::default()),
            blocks: Vec::new(),
        }
    }

    /// The next generated block, applied to the replay.
    pub fn next(&mut self, n_transactions: usize) -> model_pb::Block {
        let block = self.generator.next_block(&self.reference, n_transactions);
        self.reference.apply_block(&block).unwrap();
        self.blocks.push(block.clone());
        block
    }
}

pub async fn submit(
    client: &mut Client,
    block: &model_pb::Block,
    wait_applied: bool,
) -> pb::SubmitBlockResponse {
    client
        .submit_block(pb::SubmitBlockRequest {
            block: Some(block.clone()),
            wait_applied,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the server's UTXO tip is the repository tip at `height`.
pub async fn wait_synced(client: &mut Client, height: u64) -> pb::GetSyncStatusResponse {
    let started = Instant::now();
    loop {
        let status = client
            .get_sync_status(pb::GetSyncStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let at = |tip: &Option<pb::ChainPosition>| tip.as_ref().map(|tip| tip.height);
        if at(&status.utxo_tip) == Some(height) && at(&status.repository_tip) == Some(height) {
            return status;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for the server to sync to {height}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn outpoint(utxo: &model_pb::Utxo) -> OutPointKey {
    OutPointKey::from_proto(utxo.outpoint.as_ref().unwrap()).unwrap()
}

pub fn native_amount(utxo: &model_pb::Utxo) -> Option<u64> {
    match model::asset_amount(utxo.output()?).ok()? {
        Some((AssetId::Native, amount)) => Some(amount),
        _ => None,
    }
}

/// A single-key-locked native coin of some owner: (owner index, record).
pub fn spendable_coin(chain: &Chain, skip: usize) -> (usize, model_pb::Utxo) {
    chain
        .generator
        .owners()
        .iter()
        .enumerate()
        .flat_map(|(index, owner)| {
            let lock = build::single_key_lock(&owner.public_key);
            chain
                .reference
                .utxos_by_owner_and_category(&owner.address, model_pb::UtxoCategory::Asset)
                .into_iter()
                .filter(move |utxo| {
                    native_amount(utxo).is_some_and(|amount| amount > 10)
                        && utxo.output().unwrap().locking_conditions == vec![lock.clone()]
                })
                .map(move |utxo| (index, utxo))
        })
        .nth(skip)
        .expect("a single-key native coin")
}

/// A signed transaction spending `coin` into one native output of `amount` to `to`.
pub fn pay(chain: &Chain, coin: &model_pb::Utxo, to: usize, amount: u64) -> model_pb::Transaction {
    let recipient = &chain.generator.owners()[to];
    let mut transaction = model_pb::Transaction {
        version: 1,
        inputs: vec![gen::input(&outpoint(coin), false)],
        outputs: vec![gen::native_output(
            &recipient.address,
            amount,
            build::single_key_lock(&recipient.public_key),
        )],
        coinbase: None,
    };
    let tip = chain.reference.tip().unwrap();
    chain
        .generator
        .sign(
            &mut transaction,
            std::slice::from_ref(coin),
            tip.height + 1,
            tip.timestamp + gen::BLOCK_INTERVAL_SECONDS,
        )
        .unwrap();
    transaction
}

/// A block on the replay's tip: an empty coinbase, then `transactions`.
pub fn block_with(chain: &Chain, transactions: Vec<model_pb::Transaction>) -> model_pb::Block {
    let tip = chain.reference.tip().unwrap();
    let mut all = vec![gen::coinbase(tip.height + 1, vec![])];
    all.extend(transactions);
    gen::make_block(Some(&tip), tip.timestamp + gen::BLOCK_INTERVAL_SECONDS, all)
}

/// GET `path` from `addr` over HTTP/1.1; the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
