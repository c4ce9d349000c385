//! The client against UTXO systems that fail, stall and recover: the breaker opens,
//! half-opens and closes; notifications are retried; gaps left by dropped notifications or a
//! restart are filled by the coordinator; reorgs roll back; and in every case the final UTXO
//! state equals a fresh in-memory replay of the repository (snapshot hash and nonces), with
//! every block applied exactly once.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wes_store::{BlockRepository, ChainStore, StoreConfig};
use wes_utxo::gen::ChainGenerator;
use wes_utxo::{pb, ChainParams, UtxoState};
use wes_utxo_client::{
    Breaker, BreakerConfig, BreakerState, CallError, ClientConfig, FaultySystem, Health,
    MemorySystem, NotifyOutcome, RetryConfig, Stats, StoreSystem, SystemError, UtxoClient,
    UtxoClientService,
};

/// How long a test waits for the client's background tasks before it gives up.
const WAIT: Duration = Duration::from_secs(30);

fn params() -> ChainParams {
    ChainParams::default()
}

struct Chain {
    generator: ChainGenerator,
    reference: UtxoState,
    blocks: Vec<pb::Block>,
}

impl Chain {
    fn new(n_blocks: usize) -> Self {
        let mut chain = Chain {
            generator: ChainGenerator::new(11, 8),
            reference: UtxoState::new(params()),
            blocks: Vec::new(),
        };
        chain.extend(n_blocks);
        chain
    }

    fn extend(&mut self, n_blocks: usize) -> Vec<pb::Block> {
        let mut new = Vec::new();
        for _ in 0..n_blocks {
            let block = self.generator.next_block(&self.reference, 2);
            self.reference.apply_block(&block).unwrap();
            self.blocks.push(block.clone());
            new.push(block);
        }
        new
    }
}

fn repository(dir: &Path) -> Arc<BlockRepository> {
    Arc::new(BlockRepository::open(&dir.join("blocks.log"), false).unwrap())
}

fn config() -> ClientConfig {
    ClientConfig {
        queue_capacity: 64,
        notify_timeout: Duration::from_millis(5),
        max_batch_blocks: 16,
        max_batch_delay: Duration::from_millis(1),
        call_timeout: Duration::from_millis(100),
        retry: RetryConfig {
            min_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(20),
            max_retries: 4,
            jitter: true,
        },
        breaker: BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(100),
            max_cooldown: Duration::from_millis(400),
        },
        sync_interval: Duration::from_millis(50),
        degraded_lag: 4,
        unhealthy_lag: 1_000,
        rollback_on_divergence: true,
    }
}

fn memory() -> Arc<FaultySystem<MemorySystem>> {
    Arc::new(FaultySystem::new(
        MemorySystem::new(UtxoState::new(params())),
        42,
    ))
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn utxo_len(system: &MemorySystem) -> u64 {
    system.with_state(|state| state.tip().map_or(0, |tip| tip.height + 1))
}

/// Same snapshot (hash included) and nonces as the reference; each block applied once.
fn assert_same(chain: &Chain, system: &MemorySystem) {
    let expected = chain.reference.utxo_set();
    system.with_state(|state| {
        let actual = state.utxo_set();
        assert_eq!(
            actual.utxo_set_hash, expected.utxo_set_hash,
            "snapshot hash"
        );
        assert_eq!(actual, expected, "utxo set");
        for owner in chain.generator.owners() {
            assert_eq!(
                state.compute_account_nonce(&owner.address),
                chain.reference.compute_account_nonce(&owner.address),
                "nonce of {}",
                owner.address
            );
        }
    });
    assert_eq!(
        system.n_applied(),
        chain.blocks.len() as u64,
        "every block applied exactly once"
    );
}

#[tokio::test]
async fn breaker_opens_half_opens_and_closes() {
    let stats = Arc::new(Stats::default());
    let breaker = Breaker::new(
        &BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(100),
            max_cooldown: Duration::from_millis(400),
        },
        stats.clone(),
    );
    let timeout = Duration::from_secs(1);
    let fail = || async { Err::<(), _>(SystemError::Unavailable("down".into())) };
    // A rejection is an answer, not an outage: it never trips the breaker.
    for _ in 0..5 {
        let rejected = breaker
            .call(timeout, async {
                Err::<(), _>(SystemError::Rejected("bad block".into()))
            })
            .await;
        assert!(matches!(rejected, Err(CallError::System(_))));
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    for n in 1..=3 {
        assert!(breaker.call(timeout, fail()).await.is_err());
        let expected = if n < 3 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(breaker.state(), expected, "after {n} failures");
    }
    // Open: refused without calling.
    let called = AtomicBool::new(false);
    let refused = breaker
        .call(timeout, async {
            called.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await;
    assert_eq!(refused, Err(CallError::Open));
    assert!(!called.load(Ordering::SeqCst));
    // A timeout counts as a failure too (checked below through the reopen).
    tokio::time::sleep(Duration::from_millis(130)).await;
    // After the cooldown the next call is a half-open probe; its success closes.
    let seen = breaker.call(timeout, async { Ok(breaker.state()) }).await;
    assert_eq!(seen, Ok(BreakerState::HalfOpen));
    assert_eq!(breaker.state(), BreakerState::Closed);
    // Open again; a failed probe (a timeout) reopens with a doubled cooldown (200 ms).
    for _ in 0..3 {
        assert!(breaker.call(timeout, fail()).await.is_err());
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(130)).await;
    let before_probe = Instant::now();
    let stalled = breaker
        .call(Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
    assert_eq!(
        stalled,
        Err(CallError::System(SystemError::Timeout(
            Duration::from_millis(10)
        )))
    );
    assert_eq!(breaker.state(), BreakerState::Open);
    // Calls are refused until the doubled cooldown has passed since the reopen (which came
    // after `before_probe`); the first one let through closes the breaker. A slow machine
    // only makes that call later, never earlier.
    let mut refused = 0;
    loop {
        match breaker.call(timeout, async { Ok(()) }).await {
            Err(CallError::Open) => refused += 1,
            Ok(()) => break,
            other => panic!("probe after the doubled cooldown: {other:?}"),
        }
        assert!(
            before_probe.elapsed() < WAIT,
            "timed out waiting for the doubled cooldown to pass"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = before_probe.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "the breaker let a call through {waited:?} after reopening, before the doubled cooldown"
    );
    assert_eq!(breaker.state(), BreakerState::Closed);
    let stats = stats.snapshot();
    assert_eq!(
        (
            stats.breaker_opened,
            stats.breaker_half_opened,
            stats.breaker_closed
        ),
        (3, 3, 2)
    );
    assert_eq!(stats.calls_rejected, 1 + refused);
}

#[tokio::test]
async fn notifier_retries_through_transient_failures() {
    let dir = tempfile::tempdir().unwrap();
    let repository = repository(dir.path());
    let system = memory();
    let config = ClientConfig {
        sync_interval: Duration::from_secs(3600), // only the start-up run: the notifier works
        ..config()
    };
    let client = UtxoClient::start(config, repository, system.clone()).unwrap();
    wait_until("the start-up sync", WAIT, || {
        client.stats().coordinator_runs == 1
    })
    .await;
    let chain = Chain::new(40);
    // Failures below the breaker threshold and lost answers: retried, nothing doubled.
    system.fail_next(2);
    system.fail_after_apply(2);
    for block in &chain.blocks {
        let (_, outcome) = client.append_block(block).await.unwrap();
        assert_eq!(outcome, NotifyOutcome::Queued);
    }
    wait_until("the utxo tip", WAIT, || utxo_len(system.inner()) == 40).await;
    let stats = client.stats();
    assert!(stats.retries >= 4, "retries: {stats:?}");
    assert_eq!(stats.blocks_coordinator, 0, "{stats:?}");
    assert_eq!(stats.notifications, 40);
    assert!(
        stats.batches_notifier < 40,
        "consecutive blocks coalesce: {stats:?}"
    );
    assert_eq!(client.breaker_state(), BreakerState::Closed);
    assert_same(&chain, system.inner());
    let status = client.get_sync_status().await.unwrap();
    assert_eq!((status.health, status.lag), (Health::Healthy, 0));
    let owner = chain.generator.owners()[0].address;
    assert_eq!(
        client.compute_account_nonce(&owner).await.unwrap(),
        chain.reference.compute_account_nonce(&owner)
    );
    assert_eq!(
        client.get_utxos_by_address(&owner).await.unwrap(),
        chain.reference.utxos_by_owner(&owner)
    );
    client.shutdown().await;
}

#[tokio::test]
async fn stall_then_recover_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repository = repository(dir.path());
    let system = memory();
    let client = UtxoClient::start(config(), repository, system.clone()).unwrap();
    let mut chain = Chain::new(20);
    for block in &chain.blocks {
        client.append_block(block).await.unwrap();
    }
    wait_until("the first blocks", WAIT, || utxo_len(system.inner()) == 20).await;
    // The system stalls past the call timeout: calls time out, the breaker opens.
    system.stall(Some(Duration::from_millis(300)));
    for block in chain.extend(30) {
        client.append_block(&block).await.unwrap();
    }
    wait_until("the breaker to open", WAIT, || {
        client.breaker_state() == BreakerState::Open
    })
    .await;
    let status = client.status().unwrap();
    assert_eq!(status.health, Health::Unhealthy);
    assert!(status.lag > 0 && status.last_error.is_some(), "{status:?}");
    // Errors and lost answers while it recovers, then a full recovery.
    system.stall(None);
    system.fail_with_probability(0.3);
    system.fail_after_apply(3);
    for block in chain.extend(30) {
        client.append_block(&block).await.unwrap();
    }
    wait_until("a fault injected while recovering", WAIT, || {
        system.n_injected() > 0
    })
    .await;
    system.recover();
    wait_until("the utxo tip", WAIT, || utxo_len(system.inner()) == 80).await;
    wait_until("the breaker to close", WAIT, || {
        client.breaker_state() == BreakerState::Closed
    })
    .await;
    assert_same(&chain, system.inner());
    let status = client.get_sync_status().await.unwrap();
    assert_eq!(
        (status.health, status.lag, status.last_error.as_deref()),
        (Health::Healthy, 0, None),
        "{status:?}"
    );
    let stats = status.stats;
    assert!(
        stats.breaker_opened >= 1 && stats.breaker_closed >= 1,
        "{stats:?}"
    );
    assert!(system.n_injected() > 0);
    client.shutdown().await;
}

#[tokio::test]
async fn coordinator_fills_the_gap_of_dropped_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let repository = repository(dir.path());
    let system = memory();
    let config = ClientConfig {
        queue_capacity: 4,
        notify_timeout: Duration::from_millis(1),
        // Calls stall well inside the timeout, so the batch processor is stuck on one call
        // (no failures, no breaker) while the appends below fill the queue, even slow ones.
        call_timeout: Duration::from_secs(30),
        ..config()
    };
    let client = UtxoClient::start(config, repository, system.clone()).unwrap();
    // The system hangs: the batch processor is stuck in a call, the queue fills.
    system.stall(Some(Duration::from_secs(2)));
    let chain = Chain::new(60);
    let mut deferred = 0;
    for block in &chain.blocks {
        if client.append_block(block).await.unwrap().1 == NotifyOutcome::Deferred {
            deferred += 1;
        }
    }
    assert!(deferred > 0, "the queue must have overflowed");
    system.recover();
    wait_until("the utxo tip", WAIT, || utxo_len(system.inner()) == 60).await;
    let stats = client.stats();
    assert_eq!(stats.deferred, deferred);
    assert!(stats.blocks_coordinator > 0 || stats.blocks_notifier > 0);
    assert_same(&chain, system.inner());
    client.shutdown().await;
}

#[tokio::test]
async fn restart_replays_blocks_never_notified_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let repository_dir = dir.path().join("repository");
    let store_dir = dir.path().join("utxo");
    std::fs::create_dir_all(&repository_dir).unwrap();
    let store_config = StoreConfig {
        flush_every_blocks: 7,
        sync_repository: false,
        ..StoreConfig::default()
    };
    let mut chain = Chain::new(25);
    {
        let repository = repository(&repository_dir);
        let store = ChainStore::open(&store_dir, params(), store_config.clone()).unwrap();
        let system = Arc::new(StoreSystem::new(store));
        let client = UtxoClient::start(config(), repository.clone(), system.clone()).unwrap();
        for block in &chain.blocks {
            client.append_block(block).await.unwrap();
        }
        let report = client.sync_now().await.unwrap();
        assert_eq!(report.utxo_tip.map(|tip| tip.height), Some(24));
        client.shutdown().await;
        // The process appends more blocks and dies before notifying anyone.
        for block in chain.extend(35) {
            repository.append(&block).unwrap();
        }
        system.with_store(|store| store.flush().unwrap());
    }
    let repository = repository(&repository_dir);
    let store = ChainStore::open(&store_dir, params(), store_config).unwrap();
    let system = Arc::new(StoreSystem::new(store));
    let client = UtxoClient::start(config(), repository, system.clone()).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = client.get_sync_status().await.unwrap();
        if status.lag == 0 && status.stats.blocks_coordinator == 35 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the coordinator to fill the gap: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.stats().blocks_notifier, 0);
    system.with_store(|store| {
        assert_eq!(store.utxo_set().unwrap(), chain.reference.utxo_set());
        for owner in chain.generator.owners() {
            assert_eq!(
                store.compute_account_nonce(&owner.address).unwrap(),
                chain.reference.compute_account_nonce(&owner.address)
            );
        }
    });
    client.shutdown().await;
}

#[tokio::test]
async fn reorg_in_the_repository_rolls_the_utxo_system_back() {
    let dir = tempfile::tempdir().unwrap();
    let repository = repository(dir.path());
    let system = memory();
    let client = UtxoClient::start(config(), repository.clone(), system.clone()).unwrap();
    let mut chain = Chain::new(30);
    for block in &chain.blocks {
        client.append_block(block).await.unwrap();
    }
    wait_until("the utxo tip", WAIT, || utxo_len(system.inner()) == 30).await;
    // Replace the last 5 blocks with another branch of 8.
    repository.truncate_from(25).unwrap();
    for _ in 0..5 {
        chain.reference.rollback_block().unwrap();
        chain.blocks.pop();
    }
    for block in chain.extend(8) {
        client.append_block(&block).await.unwrap();
    }
    wait_until("the new branch", WAIT, || {
        system
            .inner()
            .with_state(|state| state.tip().map(|tip| tip.hash))
            == chain.reference.tip().map(|tip| tip.hash)
    })
    .await;
    assert_eq!(client.stats().rollbacks, 5);
    system.inner().with_state(|state| {
        assert_eq!(state.utxo_set(), chain.reference.utxo_set());
    });
    assert_eq!(system.inner().n_applied(), 30 + 8);
    client.shutdown().await;
}
