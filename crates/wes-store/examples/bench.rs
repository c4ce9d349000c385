//! Store benchmark: loads 1,000,000 UTXOs over 100,000 owners through the real apply path,
//! then measures block application (UTXO operations = inputs consumed + outputs created)
//! and GetUTXOsByAddress / balance query latency and throughput.
//!
//! Loader: the generator's genesis, then fan-out blocks whose transactions each consume one
//! native output and create 256 (the generator's `next_block` scans every owner per block
//! and needs an in-memory `UtxoState`, too slow for a million outputs). Transfers: blocks of
//! 2,000 transactions, each consuming 2 outputs of one owner and creating 2 for another;
//! then chained transfers, each block spending the outputs the block before it created.
//! Every block is validated (signatures included), appended to the repository with an
//! fsync, and applied to the coins cache; the cache flushes every 200,000 dirty entries
//! (`WES_BENCH_FLUSH_DIRTY` overrides) on its flush thread while blocks keep applying. Each
//! phase reports the sustained rate (log append + apply, every wait for a flush and the
//! closing flush), the flush thread's write time and records/s, and the rate end to end
//! (validation included).
//!
//! Run: `cargo run --release -p wes-store --example bench`
//! (phases of 40 blocks by default; `WES_BENCH_TRANSFER_BLOCKS` and `WES_BENCH_CHAINED_BLOCKS`
//! change that, and `WES_BENCH_CHAINED_BLOCKS=60 WES_BENCH_FLUSH_BLOCKS=10` gives a chained phase
//! with a flush every 10 blocks.)
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use wes_store::{ChainStore, StoreConfig};
use wes_utxo::gen::{self, ChainGenerator};
use wes_utxo::locking::build;
use wes_utxo::model::{self, AssetId, OutPointKey};
use wes_utxo::{pb, ChainParams};

/// The allocator `takhin` links (crates/takhin/src/main.rs), so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N_OWNERS: usize = 100_000;
const N_UTXOS: usize = 1_000_000;
const FAN_OUT: usize = 256;
const TXS_PER_BLOCK: usize = 2_000;
/// Transfer and chained phases: long enough that the closing flush, waited for in full, is not
/// most of the phase (at 10 blocks it was half or more).
const N_TRANSFER_BLOCKS: usize = 40;
const N_QUERIES: usize = 200_000;

/// Time split of a phase: validation; log append + apply into the cache including every
/// wait for a background flush and the closing flush (`apply`: the sustained rate); and the
/// flush thread's own write time (`flush`, overlapping `apply`, with the records written).
#[derive(Default)]
struct Timer {
    validate: Duration,
    apply: Duration,
    flush: Duration,
    /// The closing flush's share of `apply` (waited for in full, whatever the phase length).
    closing: Duration,
    flushed_records: u64,
    n_ops: usize,
}

impl Timer {
    fn apply(&mut self, store: &mut ChainStore, block: &pb::Block) {
        let started = Instant::now();
        let effects = store.validate_block(block).unwrap();
        let validated = Instant::now();
        self.n_ops += effects
            .transactions
            .iter()
            .map(|tx| tx.consumed.len() + tx.created.len())
            .sum::<usize>();
        let before = store.cache().flush_totals();
        store.apply_validated(block, effects).unwrap();
        let flushed = store.cache().flush_totals();
        self.validate += validated - started;
        self.apply += validated.elapsed();
        self.flush += flushed.time - before.time;
        self.flushed_records += flushed.records - before.records;
    }

    /// The closing flush of a phase belongs to it (waited for: part of `apply`).
    fn flush(&mut self, store: &mut ChainStore) {
        let before = store.cache().flush_totals();
        let started = Instant::now();
        store.flush().unwrap();
        self.closing = started.elapsed();
        self.apply += self.closing;
        let after = store.cache().flush_totals();
        self.flush += after.time - before.time;
        self.flushed_records += after.records - before.records;
    }

    fn print(&self, what: &str) {
        let rate = |d: Duration| self.n_ops as f64 / d.as_secs_f64();
        println!(
            "{what}: {} ops; validate {:?}, log+apply+flush {:?} of which the closing flush {:?} (flush thread busy {:?}: {} records, {:.0} records/s)\n  \
             {what}: sustained with flushes (log+apply+flush) {:.0} ops/s; \
             end to end (validate+log+apply+flush) {:.0} ops/s",
            self.n_ops,
            self.validate,
            self.apply,
            self.closing,
            self.flush,
            self.flushed_records,
            self.flushed_records as f64 / self.flush.as_secs_f64(),
            rate(self.apply),
            rate(self.validate + self.apply),
        );
    }
}

fn native_amount(utxo: &pb::Utxo) -> u64 {
    match model::asset_amount(utxo.output().unwrap()).unwrap() {
        Some((AssetId::Native, amount)) => amount,
        _ => 0,
    }
}

fn outpoint(utxo: &pb::Utxo) -> OutPointKey {
    OutPointKey::from_proto(utxo.outpoint.as_ref().unwrap()).unwrap()
}

/// One transaction: consume `spent` (all of one owner), pay `recipients` equal parts.
fn pay(
    generator: &ChainGenerator,
    spent: &[pb::Utxo],
    recipients: impl Iterator<Item = usize>,
    n_outputs: usize,
    height: u64,
    timestamp: u64,
) -> pb::Transaction {
    let total: u64 = spent.iter().map(native_amount).sum();
    let part = total / n_outputs as u64;
    let outputs = recipients
        .take(n_outputs)
        .enumerate()
        .map(|(index, owner_index)| {
            let owner = &generator.owners()[owner_index];
            let amount = if index == 0 {
                total - part * (n_outputs as u64 - 1)
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
    let mut transaction = pb::Transaction {
        version: 1,
        inputs: spent
            .iter()
            .map(|u| gen::input(&outpoint(u), false))
            .collect(),
        outputs,
        coinbase: None,
    };
    generator
        .sign(&mut transaction, spent, height, timestamp)
        .unwrap();
    transaction
}

fn next_block(store: &ChainStore, transactions: Vec<pb::Transaction>) -> pb::Block {
    let tip = store.tip().unwrap();
    let height = tip.height + 1;
    let mut all = vec![gen::coinbase(height, vec![])];
    all.extend(transactions);
    gen::make_block(Some(&tip), tip.timestamp + gen::BLOCK_INTERVAL_SECONDS, all)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn measure(name: &str, n: usize, mut query: impl FnMut(usize) -> usize) {
    let mut latencies = Vec::with_capacity(n);
    let mut n_results = 0;
    let started = Instant::now();
    for index in 0..n {
        let one = Instant::now();
        n_results += query(index);
        latencies.push(one.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "{name:24} {n} queries: {:.0} q/s, p50 {:?}, p99 {:?}, max {:?}, {:.1} results/query",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[n - 1],
        n_results as f64 / n as f64
    );
}

/// `query` on `n_threads` threads at once (the store is shared read-only).
fn measure_parallel(name: &str, n: usize, n_threads: usize, query: impl Fn(usize) -> usize + Sync) {
    let started = Instant::now();
    let (mut latencies, n_results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_threads)
            .map(|thread| {
                let query = &query;
                scope.spawn(move || {
                    let mut latencies = Vec::with_capacity(n / n_threads + 1);
                    let mut n_results = 0;
                    for index in (thread..n).step_by(n_threads) {
                        let one = Instant::now();
                        n_results += query(index);
                        latencies.push(one.elapsed());
                    }
                    (latencies, n_results)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        let mut n_results = 0;
        for handle in handles {
            let (latencies, results) = handle.join().unwrap();
            all.extend(latencies);
            n_results += results;
        }
        (all, n_results)
    });
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "{name:24} {n} queries: {:.0} q/s, p50 {:?}, p99 {:?}, max {:?}, {:.1} results/query",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[n - 1],
        n_results as f64 / n as f64
    );
}

/// A numeric environment override, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let n_transfer_blocks: usize = env_or("WES_BENCH_TRANSFER_BLOCKS", N_TRANSFER_BLOCKS);
    let n_chained_blocks: usize = env_or("WES_BENCH_CHAINED_BLOCKS", N_TRANSFER_BLOCKS);
    let config = StoreConfig {
        // WES_BENCH_FLUSH_BLOCKS / WES_BENCH_FLUSH_DIRTY override (the library defaults are
        // 50,000 blocks and 500,000 entries).
        flush_every_blocks: env_or("WES_BENCH_FLUSH_BLOCKS", 1_000),
        flush_max_dirty: env_or("WES_BENCH_FLUSH_DIRTY", 200_000),
        sync_repository: true,
        hot_output_max_bytes: 1_024,
    };
    let started = Instant::now();
    let mut generator = ChainGenerator::new(7, N_OWNERS);
    println!("derived {N_OWNERS} owner keys in {:?}", started.elapsed());
    let mut store = ChainStore::open(dir.path(), ChainParams::default(), config.clone()).unwrap();
    let mut timer = Timer::default();
    timer.apply(&mut store, &generator.genesis());

    // Fan-out 1: every genesis native output -> 256 outputs to the first owners.
    let mut sources: Vec<pb::Utxo> = Vec::new();
    for owner in generator.owners().iter().take(60) {
        sources.extend(
            store
                .utxos_by_owner_and_category(&owner.address, pb::UtxoCategory::Asset)
                .unwrap()
                .into_iter()
                .filter(|u| native_amount(u) > 0),
        );
    }
    let tip = store.tip().unwrap();
    let (height, timestamp) = (tip.height + 1, tip.timestamp + gen::BLOCK_INTERVAL_SECONDS);
    let transactions = sources
        .iter()
        .enumerate()
        .map(|(index, utxo)| {
            let first = (index * FAN_OUT) % N_OWNERS;
            pay(
                &generator,
                std::slice::from_ref(utxo),
                first..,
                FAN_OUT,
                height,
                timestamp,
            )
        })
        .collect();
    let block = next_block(&store, transactions);
    timer.apply(&mut store, &block);

    // Fan-out 2: level-1 outputs -> 256 each, owners round robin, until 1M UTXOs.
    let mut level1: Vec<pb::Utxo> = Vec::new();
    for owner in generator.owners().iter().take(sources.len() * FAN_OUT) {
        level1.extend(store.utxos_by_owner(&owner.address).unwrap());
    }
    level1.retain(|u| native_amount(u) >= FAN_OUT as u64);
    let n_fan_txs = N_UTXOS.div_ceil(FAN_OUT);
    let mut next_owner = 0usize;
    let load_started = Instant::now();
    for chunk in level1[..n_fan_txs.min(level1.len())].chunks(TXS_PER_BLOCK / 4) {
        let tip = store.tip().unwrap();
        let (height, timestamp) = (tip.height + 1, tip.timestamp + gen::BLOCK_INTERVAL_SECONDS);
        let transactions = chunk
            .iter()
            .map(|utxo| {
                let first = next_owner;
                next_owner += FAN_OUT;
                pay(
                    &generator,
                    std::slice::from_ref(utxo),
                    (first..).map(|i| i % N_OWNERS),
                    FAN_OUT,
                    height,
                    timestamp,
                )
            })
            .collect();
        let block = next_block(&store, transactions);
        timer.apply(&mut store, &block);
    }
    timer.flush(&mut store);
    let load_elapsed = load_started.elapsed();
    let n_live = store.utxo_set().unwrap().utxos.len();
    println!(
        "loaded: {n_live} live UTXOs over {N_OWNERS} owners, height {}, in {load_elapsed:?}",
        store.tip().unwrap().height,
    );
    timer.print("fan-out");

    // Transfers: 2 inputs of one owner -> 2 outputs to the next owner.
    let mut timer = Timer::default();
    let mut owner_index = 0usize;
    let mut sign_time = Duration::ZERO;
    let mut last_block = None;
    for _ in 0..n_transfer_blocks {
        let tip = store.tip().unwrap();
        let (height, timestamp) = (tip.height + 1, tip.timestamp + gen::BLOCK_INTERVAL_SECONDS);
        let sign_started = Instant::now();
        let mut transactions = Vec::with_capacity(TXS_PER_BLOCK);
        while transactions.len() < TXS_PER_BLOCK {
            let owner = &generator.owners()[owner_index % N_OWNERS];
            owner_index += 1;
            let spent: Vec<pb::Utxo> = store
                .utxos_by_owner(&owner.address)
                .unwrap()
                .into_iter()
                .filter(|u| native_amount(u) >= 2)
                .take(2)
                .collect();
            if spent.len() < 2 {
                continue;
            }
            let recipient = (owner_index + 7) % N_OWNERS;
            transactions.push(pay(
                &generator,
                &spent,
                std::iter::repeat(recipient),
                2,
                height,
                timestamp,
            ));
        }
        sign_time += sign_started.elapsed();
        let block = next_block(&store, transactions);
        timer.apply(&mut store, &block);
        last_block = Some(block);
    }
    timer.flush(&mut store);
    println!(
        "transfers: {n_transfer_blocks} blocks x {TXS_PER_BLOCK} txs (built+signed in {sign_time:?})"
    );
    timer.print("transfers");

    // Chained transfers: each block spends the two outputs of every transaction of the
    // block before it (young coins, the common case on a real chain). A coin created and
    // spent between two flushes never reaches redb (the cache's FRESH entries).
    let mut timer = Timer::default();
    let mut previous: Vec<pb::Transaction> = last_block
        .map(|block| block.transactions[1..].to_vec())
        .unwrap_or_default();
    for round in 0..n_chained_blocks {
        let tip = store.tip().unwrap();
        let (height, timestamp) = (tip.height + 1, tip.timestamp + gen::BLOCK_INTERVAL_SECONDS);
        let transactions: Vec<pb::Transaction> = previous
            .iter()
            .enumerate()
            .map(|(index, transaction)| {
                let id = model::tx_id(transaction);
                let spent: Vec<pb::Utxo> = (0..transaction.outputs.len() as u32)
                    .map(|output| store.utxo(&OutPointKey::new(id, output)).unwrap().unwrap())
                    .collect();
                let recipient = (index * 31 + round * 7 + 1) % N_OWNERS;
                pay(
                    &generator,
                    &spent,
                    std::iter::repeat(recipient),
                    2,
                    height,
                    timestamp,
                )
            })
            .collect();
        let block = next_block(&store, transactions);
        timer.apply(&mut store, &block);
        previous = block.transactions[1..].to_vec();
    }
    timer.flush(&mut store);
    println!(
        "chained transfers: {n_chained_blocks} blocks, each spending the previous block's outputs"
    );
    timer.print("chained");

    // Queries on the flushed store, random owners.
    let owners: Vec<_> = (0..N_QUERIES)
        .map(|i| generator.owners()[(i * 7_919 + 13) % N_OWNERS].address)
        .collect();
    measure("utxos_by_owner", N_QUERIES, |i| {
        store.utxos_by_owner(&owners[i]).unwrap().len()
    });
    measure("balances(owner)", N_QUERIES, |i| {
        store.balances(&owners[i]).unwrap().len()
    });
    measure("balance(owner, native)", N_QUERIES, |i| {
        (store.balance(&owners[i], &AssetId::Native).unwrap() > 0) as usize
    });
    measure("compute_account_nonce", N_QUERIES, |i| {
        store.compute_account_nonce(&owners[i]).unwrap() as usize
    });
    let store = &store;
    measure_parallel("utxos_by_owner x2 thr", N_QUERIES, 2, |i| {
        store.utxos_by_owner(&owners[i]).unwrap().len()
    });
    measure_parallel("balances(owner) x2 thr", N_QUERIES, 2, |i| {
        store.balances(&owners[i]).unwrap().len()
    });
    let _ = &mut generator;
}
