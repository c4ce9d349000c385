//! What `takhin utxo bench-query` runs: a loader that fills a chain store with many UTXOs
//! over many owners through the real validate-and-apply path, and a gRPC query load
//! generator with concurrent clients that reports queries/s and latency percentiles.
//!
//! **Loader.** The generator's genesis, then fan-out blocks whose transactions each consume
//! one native coin and pay 256 owners (round robin), as `wes-store`'s store benchmark does:
//! the generator's `next_block` scans every owner per block and needs an in-memory state, too
//! slow for a million outputs. Every block is validated (signatures included), logged and
//! applied; the store flushes at the end.
//!
//! **Load.** `n_clients` tasks send one request at a time each (closed loop) for `duration`,
//! to owners taken round robin from a per-client offset; each latency is measured from send
//! to decoded answer. A non-OK answer counts as an error. The tasks share `n_connections`
//! HTTP/2 connections round robin (a tonic client is a cheap clone of its channel, and
//! concurrent calls on one connection are multiplexed, which is how an application
//! usually holds one); `n_connections == n_clients` gives each task its own.

use std::path::Path;
use std::time::{Duration, Instant};

use wes_store::{ChainStore, StoreConfig, StoreError};
use wes_utxo::gen::{self, ChainGenerator};
use wes_utxo::locking::build;
use wes_utxo::model::{self, Address, AssetId, OutPointKey};
use wes_utxo::{pb as model_pb, ChainParams};

use crate::pb;

/// Outputs each fan-out transaction creates.
pub const FAN_OUT: usize = 256;
/// Fan-out transactions per block.
const FAN_TXS_PER_BLOCK: usize = 500;

/// What [`load_fan_out`] built.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Live UTXOs in the store.
    pub n_utxos: usize,
    /// Tip height.
    pub height: u64,
    /// Wall time of the load (key derivation excluded).
    pub elapsed: Duration,
}

fn native_amount(utxo: &model_pb::Utxo) -> u64 {
    match utxo.output().map(model::asset_amount) {
        Some(Ok(Some((AssetId::Native, amount)))) => amount,
        _ => 0,
    }
}

fn outpoint(utxo: &model_pb::Utxo) -> Result<OutPointKey, StoreError> {
    let outpoint = utxo
        .outpoint
        .as_ref()
        .ok_or_else(|| StoreError::Corrupt("record without outpoint".to_string()))?;
    Ok(OutPointKey::from_proto(outpoint)?)
}

/// One transaction: consume `coin`, pay `n_outputs` owners from `first` on, in equal parts.
fn pay(
    generator: &ChainGenerator,
    coin: &model_pb::Utxo,
    first: usize,
    height: u64,
    timestamp: u64,
) -> Result<model_pb::Transaction, StoreError> {
    let owners = generator.owners();
    let total = native_amount(coin);
    let part = total / FAN_OUT as u64;
    let outputs = (0..FAN_OUT)
        .map(|index| {
            let owner = &owners[(first + index) % owners.len()];
            let amount = if index == 0 {
                total - part * (FAN_OUT as u64 - 1)
            } else {
                part
            };
            gen::native_output(
                &owner.address,
                amount,
                build::single_key_lock(&owner.public_key),
            )
        })
        .collect();
    let mut transaction = model_pb::Transaction {
        version: 1,
        inputs: vec![gen::input(&outpoint(coin)?, false)],
        outputs,
        coinbase: None,
    };
    generator
        .sign(
            &mut transaction,
            std::slice::from_ref(coin),
            height,
            timestamp,
        )
        .ok_or_else(|| StoreError::Corrupt("loader coin cannot be signed".to_string()))?;
    Ok(transaction)
}

fn block_of(
    store: &ChainStore,
    transactions: Vec<model_pb::Transaction>,
) -> Result<model_pb::Block, StoreError> {
    let tip = store
        .tip()
        .ok_or_else(|| StoreError::Corrupt("loader needs a genesis".to_string()))?;
    let mut all = vec![gen::coinbase(tip.height + 1, vec![])];
    all.extend(transactions);
    Ok(gen::make_block(
        Some(&tip),
        tip.timestamp + gen::BLOCK_INTERVAL_SECONDS,
        all,
    ))
}

/// Fills the (empty) store in `dir` with about `n_utxos` UTXOs over `generator`'s owners
/// (see the module docs); `progress` is told each block's height.
pub fn load_fan_out(
    dir: &Path,
    generator: &mut ChainGenerator,
    n_utxos: usize,
    mut progress: impl FnMut(u64),
) -> Result<LoadReport, StoreError> {
    let started = Instant::now();
    let config = StoreConfig {
        flush_max_dirty: 200_000,
        ..StoreConfig::default()
    };
    let mut store = ChainStore::open(dir, ChainParams::default(), config)?;
    if store.tip().is_some() {
        return Err(StoreError::NotOnTip {
            height: 0,
            expected: "an empty store to load".to_string(),
        });
    }
    store.apply_block(&generator.genesis())?;
    let n_owners = generator.owners().len();
    // Level 1: the genesis coins pay 256 owners each.
    let mut sources = Vec::new();
    for owner in generator.owners() {
        for utxo in
            store.utxos_by_owner_and_category(&owner.address, model_pb::UtxoCategory::Asset)?
        {
            if native_amount(&utxo) >= FAN_OUT as u64 * FAN_OUT as u64 {
                sources.push(utxo);
            }
        }
    }
    let tip = store
        .tip()
        .map(|tip| (tip.height + 1, tip.timestamp + gen::BLOCK_INTERVAL_SECONDS));
    let (height, timestamp) = tip.unwrap_or_default();
    let transactions = sources
        .iter()
        .enumerate()
        .map(|(index, coin)| pay(generator, coin, index * FAN_OUT, height, timestamp))
        .collect::<Result<Vec<_>, _>>()?;
    store.apply_block(&block_of(&store, transactions)?)?;
    progress(height);
    // Level 2: each level-1 output pays 256 more, until n_utxos.
    let mut level1 = Vec::new();
    for owner in generator.owners().iter().take(sources.len() * FAN_OUT) {
        for utxo in store.utxos_by_owner(&owner.address)? {
            if native_amount(&utxo) >= FAN_OUT as u64 {
                level1.push(utxo);
            }
        }
    }
    let n_transactions = n_utxos.div_ceil(FAN_OUT).min(level1.len());
    let mut next_owner = 0usize;
    for chunk in level1[..n_transactions].chunks(FAN_TXS_PER_BLOCK) {
        let tip = store
            .tip()
            .ok_or_else(|| StoreError::Corrupt("tip vanished".to_string()))?;
        let (height, timestamp) = (tip.height + 1, tip.timestamp + gen::BLOCK_INTERVAL_SECONDS);
        let transactions = chunk
            .iter()
            .map(|coin| {
                let first = next_owner;
                next_owner = (next_owner + FAN_OUT) % n_owners;
                pay(generator, coin, first, height, timestamp)
            })
            .collect::<Result<Vec<_>, _>>()?;
        store.apply_block(&block_of(&store, transactions)?)?;
        progress(height);
    }
    store.flush()?;
    Ok(LoadReport {
        n_utxos: store.utxo_set()?.utxos.len(),
        height: store.tip().map_or(0, |tip| tip.height),
        elapsed: started.elapsed(),
    })
}

/// Which query the load sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryKind {
    /// GetUtxosByAddress (all categories).
    UtxosByAddress,
    /// GetBalance.
    Balance,
}

impl QueryKind {
    /// The RPC's name.
    pub fn name(self) -> &'static str {
        match self {
            QueryKind::UtxosByAddress => "GetUtxosByAddress",
            QueryKind::Balance => "GetBalance",
        }
    }
}

/// What one load run measured.
#[derive(Clone, Debug)]
pub struct QueryReport {
    /// The query.
    pub kind: QueryKind,
    /// Concurrent clients.
    pub n_clients: usize,
    /// HTTP/2 connections they share.
    pub n_connections: usize,
    /// Answered OK.
    pub n_ok: u64,
    /// Answered with an error status or not at all.
    pub n_errors: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// OK answers per second.
    pub queries_per_second: f64,
    /// Latency percentiles of OK answers.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest.
    pub max: Duration,
    /// Mean UTXOs (or balances) per answer.
    pub mean_results: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs the load against the server at `addr` (see the module docs).
pub async fn query_load(
    addr: std::net::SocketAddr,
    kind: QueryKind,
    owners: &[Address],
    n_clients: usize,
    n_connections: usize,
    duration: Duration,
) -> Result<QueryReport, tonic::transport::Error> {
    let n_clients = n_clients.max(1);
    let n_connections = n_connections.clamp(1, n_clients);
    let mut connections = Vec::with_capacity(n_connections);
    for _ in 0..n_connections {
        connections.push(crate::connect(addr).await?);
    }
    let clients: Vec<_> = (0..n_clients)
        .map(|index| connections[index % n_connections].clone())
        .collect();
    let owners: std::sync::Arc<[Address]> = owners.into();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(n_clients);
    for (client_index, mut client) in clients.into_iter().enumerate() {
        let owners = owners.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let (mut n_errors, mut n_results) = (0u64, 0u64);
            let mut index = client_index * owners.len().max(1) / n_clients;
            while Instant::now() < deadline {
                let address = owners[index % owners.len()].0.to_vec();
                index += 1;
                let sent = Instant::now();
                let results = match kind {
                    QueryKind::UtxosByAddress => client
                        .get_utxos_by_address(pb::GetUtxosByAddressRequest {
                            address,
                            category: 0,
                            ..Default::default()
                        })
                        .await
                        .map(|answer| answer.into_inner().utxos.len()),
                    QueryKind::Balance => client
                        .get_balance(pb::GetBalanceRequest { address })
                        .await
                        .map(|answer| 1 + answer.into_inner().token_balances.len()),
                };
                match results {
                    Ok(n) => {
                        latencies.push(sent.elapsed());
                        n_results += n as u64;
                    }
                    Err(_) => n_errors += 1,
                }
            }
            (latencies, n_errors, n_results)
        }));
    }
    let mut latencies = Vec::new();
    let (mut n_errors, mut n_results) = (0u64, 0u64);
    for task in tasks {
        match task.await {
            Ok((mut l, e, r)) => {
                latencies.append(&mut l);
                n_errors += e;
                n_results += r;
            }
            Err(_) => n_errors += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let n_ok = latencies.len() as u64;
    Ok(QueryReport {
        kind,
        n_clients,
        n_connections,
        n_ok,
        n_errors,
        elapsed,
        queries_per_second: n_ok as f64 / elapsed.as_secs_f64().max(1e-9),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        max: latencies.last().copied().unwrap_or_default(),
        mean_results: n_results as f64 / n_ok.max(1) as f64,
    })
}
