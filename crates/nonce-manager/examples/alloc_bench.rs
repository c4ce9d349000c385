//! Durable allocation throughput and latency for ONE signer with many concurrent callers.
//!
//! Each caller loops `Allocator::allocate` with a fresh request id; an allocation counts
//! when `allocate` returned, i.e. after the batch transaction that records it committed
//! (SQLite: WAL with `synchronous=FULL`, an fsync per commit; PostgreSQL: `fsync=on`,
//! `synchronous_commit=on`, a WAL flush per commit). Prints allocations/s and p50/p99/max
//! latency over the measured window (after a warm-up), then checks the stored nonces are
//! exactly `0..n` (no gap, no duplicate).
//!
//! ```sh
//! cargo run --release -p nonce-manager --example alloc_bench -- --backend sqlite
//! cargo run --release -p nonce-manager --example alloc_bench -- --backend postgres
//! # options: --callers 256 --seconds 10 --warmup 2 --rpc-url http://127.0.0.1:8545
//! #          --redis-url redis://127.0.0.1:6379/ (allocate through the Redis cache)
//! ```
//!
//! PostgreSQL is a fresh server from `test-support` (Debian's package, data in a temp dir
//! on the same disk); SQLite is a file in a temp dir. The chain's pending nonce comes from
//! `--rpc-url` (e.g. anvil) or, by default, a fake that answers 0 at once; the allocator
//! reads it once per `chain_refresh` (1 s), so it is off the hot path either way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, Bytes, B256, U256};
use async_trait::async_trait;
use hdrhistogram::Histogram;
use ledger_lease::{HolderId, LeaseManager, LeaseManagerConfig, LeaseStore, SystemClock};
use nonce_manager::allocator::{Allocator, AllocatorConfig};
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::cache::{NonceCache, RedisCache};
use nonce_manager::chain::{BlockRef, ChainClient, ChainError, ReceiptSummary, TxLookup};
use nonce_manager::store::postgres::PostgresNonceStore;
use nonce_manager::store::sqlite::SqliteNonceStore;
use nonce_manager::store::NonceStore;
use nonce_manager::{signer_resource, RequestId, TxPayload};

struct Args {
    backend: String,
    callers: usize,
    seconds: u64,
    warmup: u64,
    rpc_url: Option<String>,
    redis_url: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        backend: "sqlite".to_owned(),
        callers: 256,
        seconds: 10,
        warmup: 2,
        rpc_url: None,
        redis_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => args.backend = value(),
            "--callers" => args.callers = value().parse().expect("--callers N"),
            "--seconds" => args.seconds = value().parse().expect("--seconds N"),
            "--warmup" => args.warmup = value().parse().expect("--warmup N"),
            "--rpc-url" => args.rpc_url = Some(value()),
            "--redis-url" => args.redis_url = Some(value()),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// A chain whose pending nonce is 0, answered at once.
#[derive(Debug)]
struct FakeChain;

#[async_trait]
impl ChainClient for FakeChain {
    async fn chain_id(&self) -> Result<u64, ChainError> {
        Ok(31337)
    }
    async fn pending_nonce(&self, _address: Address) -> Result<u64, ChainError> {
        Ok(0)
    }
    async fn latest_nonce(&self, _address: Address) -> Result<u64, ChainError> {
        Ok(0)
    }
    async fn base_fee(&self) -> Result<Option<u128>, ChainError> {
        Ok(Some(1))
    }
    async fn send_raw_transaction(&self, _raw: &[u8]) -> Result<B256, ChainError> {
        Err(ChainError::Transport("fake chain".into()))
    }
    async fn block_number(&self) -> Result<u64, ChainError> {
        Ok(0)
    }
    async fn transaction_lookup(&self, _hash: B256) -> Result<TxLookup, ChainError> {
        Ok(TxLookup::Unknown)
    }
    async fn receipt(&self, _hash: B256) -> Result<Option<ReceiptSummary>, ChainError> {
        Ok(None)
    }
    async fn block(&self, _number: u64) -> Result<Option<BlockRef>, ChainError> {
        Ok(None)
    }
}

fn payload(seed: u64) -> TxPayload {
    TxPayload {
        to: Address::repeat_byte(0x11),
        value: U256::from(seed),
        data: Bytes::new(),
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000,
    }
}

fn main() {
    let args = parse_args();
    // PostgreSQL must be started from this thread (see test_support::postgres).
    let postgres = (args.backend == "postgres")
        .then(|| test_support::postgres::PostgresServer::start_durable().expect("start postgres"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args, postgres.as_ref().map(|server| server.url())));
}

async fn run(args: Args, postgres_url: Option<&str>) {
    let clock = Arc::new(SystemClock);
    let dir = tempfile::Builder::new()
        .prefix("takhin-alloc-bench-")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir");
    let (store, leases): (Arc<dyn NonceStore>, Arc<dyn LeaseStore>) = match postgres_url {
        Some(url) => {
            let (store, leases) = PostgresNonceStore::connect(url, clock.clone())
                .await
                .expect("connect postgres");
            (Arc::new(store), Arc::new(leases))
        }
        None => {
            let (store, leases) =
                SqliteNonceStore::connect(&dir.path().join("nonce.sqlite"), clock.clone())
                    .await
                    .expect("open sqlite");
            (Arc::new(store), Arc::new(leases))
        }
    };
    let chain: Arc<dyn ChainClient> = match &args.rpc_url {
        Some(url) => Arc::new(AlloyChainClient::new(url).expect("rpc url")),
        None => Arc::new(FakeChain),
    };
    let signer = Address::repeat_byte(0x5a);
    let guard = LeaseManager::acquire(
        leases,
        &signer_resource(signer),
        &HolderId::new("bench").expect("holder"),
        LeaseManagerConfig::new(Duration::from_secs(30)),
    )
    .await
    .expect("acquire")
    .expect("lease free");
    let cache: Option<Arc<dyn NonceCache>> = match &args.redis_url {
        Some(url) => Some(Arc::new(
            RedisCache::connect(url, "bench").await.expect("redis"),
        )),
        None => None,
    };
    let cache_used = cache.is_some();
    let allocator = Allocator::start_with_cache(
        store.clone(),
        chain,
        signer,
        guard.subscribe(),
        AllocatorConfig::default(),
        cache,
    )
    .expect("allocator");
    let allocator = Arc::new(allocator);

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::with_capacity(args.callers);
    for _ in 0..args.callers {
        let allocator = allocator.clone();
        let measuring = measuring.clone();
        let stop = stop.clone();
        let next_id = next_id.clone();
        callers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let seq = next_id.fetch_add(1, Ordering::Relaxed);
                let id = RequestId::new(format!("bench-{seq}")).unwrap();
                let started = Instant::now();
                let result = allocator.allocate(id, payload(seq)).await;
                let micros = started.elapsed().as_micros() as u64;
                match result {
                    Ok(_) if measuring.load(Ordering::Relaxed) => {
                        histogram.saturating_record(micros.max(1));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        errors += 1;
                        if errors < 5 {
                            eprintln!("allocate: {error}");
                        }
                    }
                }
            }
            (histogram, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let window_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let window = window_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for caller in callers {
        let (caller_histogram, caller_errors) = caller.await.expect("caller");
        histogram.add(caller_histogram).unwrap();
        errors += caller_errors;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    println!(
        "backend={} callers={} cache={} window={:.1}s allocations={} errors={}",
        store.name(),
        args.callers,
        if cache_used { "redis" } else { "none" },
        window.as_secs_f64(),
        histogram.len(),
        errors
    );
    println!(
        "allocations/s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        histogram.len() as f64 / window.as_secs_f64(),
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
    );
    let nonces = store.nonces(signer).await.expect("read nonces");
    let gapless = nonces
        .iter()
        .enumerate()
        .all(|(index, (_, nonce))| *nonce == index as u64);
    println!(
        "stored={} issued_ids={} gapless_and_unique={gapless}",
        nonces.len(),
        next_id.load(Ordering::Relaxed)
    );
    assert!(gapless, "stored nonces are not 0..n");
    drop(guard);
}
