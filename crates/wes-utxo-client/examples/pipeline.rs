//! Notification pipeline benchmark: small (coinbase-only) blocks, generated and appended to
//! the repository up front, then notified one by one; timed until the in-memory UTXO system
//! has applied the last one (queue -> batch processor -> repository read -> breaker + retry
//! -> `UtxoState::apply_block`), then the same into the durable `StoreSystem` (wes-store:
//! its own block log, one fsync per batch, coins cache, redb flushes). Also the queue alone
//! (notify -> receive, no apply).
//!
//! Run: `cargo run --release -p wes-utxo-client --example pipeline [n_blocks]`
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wes_store::{BlockRepository, ChainStore, StoreConfig};
use wes_utxo::gen::{self, ChainGenerator};
use wes_utxo::locking::build;
use wes_utxo::model::Address;
use wes_utxo::validate::ChainTip;
use wes_utxo::{model, pb, ChainParams, UtxoState};
use wes_utxo_client::{
    ClientConfig, MemorySystem, Notifier, Stats, StoreSystem, SystemError, Tip, UtxoClient,
    UtxoClientService, UtxoSystem,
};

/// The allocator `takhin` links (crates/takhin/src/main.rs), so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn blocks(n: usize) -> Vec<pb::Block> {
    let mut generator = ChainGenerator::new(1, 4);
    let genesis = generator.genesis();
    let owner = generator.owners()[1].clone();
    let lock = build::single_key_lock(&owner.public_key);
    let reward = ChainParams::default().block_reward;
    let mut parent = {
        let header = genesis.header.clone().unwrap();
        ChainTip {
            height: 0,
            hash: model::block_hash(&header),
            timestamp: header.timestamp,
        }
    };
    let mut blocks = vec![genesis];
    for height in 1..n as u64 {
        let coinbase = gen::coinbase(
            height,
            vec![gen::native_output(&owner.address, reward, lock.clone())],
        );
        let timestamp = parent.timestamp + gen::BLOCK_INTERVAL_SECONDS;
        let block = gen::make_block(Some(&parent), timestamp, vec![coinbase]);
        let header = block.header.as_ref().unwrap();
        parent = ChainTip {
            height,
            hash: model::block_hash(header),
            timestamp,
        };
        blocks.push(block);
    }
    blocks
}

/// A UTXO system that only checks the heights and keeps the tip: the client's own cost.
#[derive(Default)]
struct NullSystem {
    tip: parking_lot::Mutex<Option<Tip>>,
}

impl NullSystem {
    fn len(&self) -> u64 {
        self.tip.lock().map_or(0, |tip| tip.height + 1)
    }
}

impl UtxoSystem for NullSystem {
    async fn tip(&self) -> Result<Option<Tip>, SystemError> {
        Ok(*self.tip.lock())
    }

    async fn apply_blocks(&self, blocks: Arc<[pb::Block]>) -> Result<Option<Tip>, SystemError> {
        let mut tip = self.tip.lock();
        for block in blocks.iter() {
            let next = Tip::of(block).ok_or_else(|| SystemError::Rejected("no header".into()))?;
            if next.height == tip.map_or(0, |tip| tip.height + 1) {
                *tip = Some(next);
            }
        }
        Ok(*tip)
    }

    async fn rollback_block(&self) -> Result<Option<Tip>, SystemError> {
        Err(SystemError::Rejected("no rollback".into()))
    }

    async fn utxos_by_address(&self, _: Address) -> Result<Vec<pb::Utxo>, SystemError> {
        Ok(Vec::new())
    }

    async fn account_nonce(&self, _: Address) -> Result<u64, SystemError> {
        Ok(0)
    }
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

async fn queue_only(n: usize) {
    let stats = Arc::new(Stats::default());
    let (notifier, mut receiver) = Notifier::new(
        10_000,
        Duration::from_secs(1),
        stats.clone(),
        Arc::new(Notify::new()),
    );
    let tip = Tip {
        height: 0,
        hash: model::BlockHash([0; 32]),
    };
    let consumer = tokio::spawn(async move {
        let mut received = 0usize;
        while receiver.recv().await.is_some() {
            received += 1;
        }
        received
    });
    let started = Instant::now();
    for height in 0..n as u64 {
        notifier.notify(Tip { height, ..tip }).await.unwrap();
    }
    drop(notifier);
    let received = consumer.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(received, n);
    println!(
        "queue only: {n} events in {:.3} s = {:.0} msg/s (backpressure waits {})",
        elapsed.as_secs_f64(),
        rate(n, elapsed),
        stats.snapshot().backpressure
    );
}

async fn pipeline(n: usize, null: bool) {
    let started = Instant::now();
    let blocks = blocks(n);
    println!(
        "generated {n} coinbase-only blocks in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    if null {
        return run(n, blocks, Arc::new(NullSystem::default()), |system| {
            system.len()
        })
        .await;
    }
    let started = Instant::now();
    let mut baseline = UtxoState::new(ChainParams::default());
    for block in &blocks {
        baseline.apply_block(block).unwrap();
    }
    println!(
        "baseline UtxoState::apply_block alone (no client): {:.0} blocks/s",
        rate(n, started.elapsed())
    );
    drop(baseline);
    let system = Arc::new(MemorySystem::new(UtxoState::new(ChainParams::default())));
    run(n, blocks.clone(), system, |system| {
        system.with_state(|state| state.tip().map_or(0, |tip| tip.height + 1))
    })
    .await;
    // The durable system: its own block log (one fsync per batch) and the redb store.
    let store_dir = tempfile::tempdir().unwrap();
    let store = ChainStore::open(
        store_dir.path(),
        ChainParams::default(),
        StoreConfig::default(),
    )
    .unwrap();
    let system = Arc::new(StoreSystem::new(store));
    run(n, blocks, system, |system| {
        system.with_store(|store| store.tip().map_or(0, |tip| tip.height + 1))
    })
    .await;
}

async fn run<S: UtxoSystem>(
    n: usize,
    blocks: Vec<pb::Block>,
    system: Arc<S>,
    len: impl Fn(&S) -> u64,
) {
    let name = std::any::type_name::<S>()
        .rsplit("::")
        .next()
        .unwrap_or("?");
    let dir = tempfile::tempdir().unwrap();
    let repository =
        Arc::new(BlockRepository::open(&dir.path().join("blocks.log"), false).unwrap());
    let config = ClientConfig {
        notify_timeout: Duration::from_secs(1), // measure the queue: wait, do not defer
        sync_interval: Duration::from_secs(3600),
        ..ClientConfig::default()
    };
    let client = UtxoClient::start(config.clone(), repository.clone(), system.clone()).unwrap();
    while client.stats().coordinator_runs == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let tips: Vec<Tip> = blocks
        .iter()
        .map(|block| {
            let hash = repository.append(block).unwrap();
            Tip {
                height: block.header.as_ref().unwrap().height,
                hash,
            }
        })
        .collect();
    let append = started.elapsed();
    drop(blocks);
    let started = Instant::now();
    for tip in &tips {
        repository.block_at(tip.height).unwrap();
    }
    println!(
        "repository read alone: {:.0} blocks/s",
        rate(n, started.elapsed())
    );
    println!(
        "repository append (no fsync): {:.0} blocks/s",
        rate(n, append)
    );
    let started = Instant::now();
    for tip in &tips {
        client.notify(*tip).await.unwrap();
    }
    let notified = started.elapsed();
    while len(&system) < (n as u64) {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    let status = client.get_sync_status().await.unwrap();
    let stats = status.stats;
    assert_eq!(status.lag, 0);
    println!(
        "pipeline into {name} (queue {} / batch <= {} / apply): {n} blocks in {:.3} s = {:.0} blocks/s; \
         notify side {:.0} notifications/s; {} batches (avg {:.1} blocks), backpressure waits {}, \
         deferred {}",
        config.queue_capacity,
        config.max_batch_blocks,
        elapsed.as_secs_f64(),
        rate(n, elapsed),
        rate(n, notified),
        stats.batches_notifier,
        stats.blocks_notifier as f64 / stats.batches_notifier.max(1) as f64,
        stats.backpressure,
        stats.deferred,
    );
    client.shutdown().await;
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        queue_only(1_000_000).await;
        pipeline(n, true).await;
        pipeline(n, false).await;
    });
}
