//! The Redis cache in front of the nonce store, on a real `redis-server` (test-support;
//! skipped when not installed unless TAKHIN_REQUIRE_ALL_CLIENTS=1) and both store backends:
//! retries are answered from it, wrong or stale entries never change an answer, and Redis
//! dying mid-run leaves allocation working, gapless and duplicate-free.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256};
use ledger_lease::{HolderId, LeaseManager, LeaseManagerConfig, LeaseState, SystemClock};
use nonce_manager::allocator::{Allocator, AllocatorConfig};
use nonce_manager::cache::{payload_digest, CachedAllocation, NonceCache, RedisCache};
use nonce_manager::store::NonceStore;
use nonce_manager::{signer_resource, RequestId};
use test_support::redis::RedisServer;
use tokio::sync::watch;

use common::{payload, Backend, FixedChain};

backend_cases!(cases;
    retries_hit_the_cache_and_bad_entries_fall_through,
    redis_dying_mid_run_changes_nothing,
);

/// How long a test waits for a background cache write or a commit before it gives up.
const WAIT: Duration = Duration::from_secs(30);

fn signer() -> Address {
    Address::repeat_byte(0x77)
}

fn id(n: u64) -> RequestId {
    RequestId::new(format!("cached-{n}")).unwrap()
}

struct Setup {
    store: Arc<dyn NonceStore>,
    allocator: Arc<Allocator>,
    cache: Arc<RedisCache>,
    _lease: watch::Receiver<LeaseState>,
    _guard: ledger_lease::LeaseGuard,
}

async fn setup(backend: &Backend, redis: &RedisServer) -> Setup {
    let node = backend.node(Arc::new(SystemClock)).await;
    let guard = LeaseManager::acquire(
        node.leases.clone(),
        &signer_resource(signer()),
        &HolderId::new("node-a").unwrap(),
        LeaseManagerConfig::new(Duration::from_secs(30)),
    )
    .await
    .unwrap()
    .unwrap();
    let cache = Arc::new(RedisCache::connect(redis.url(), "test").await.unwrap());
    let lease = guard.subscribe();
    let allocator = Allocator::start_with_cache(
        node.store.clone(),
        Arc::new(FixedChain::new(0)),
        signer(),
        lease.clone(),
        AllocatorConfig::default(),
        Some(cache.clone() as Arc<dyn NonceCache>),
    )
    .unwrap();
    Setup {
        store: node.store,
        allocator: Arc::new(allocator),
        cache,
        _lease: lease,
        _guard: guard,
    }
}

/// Waits until the cache holds `request_id` (writes are in the background).
async fn cached(cache: &RedisCache, request_id: &RequestId) -> CachedAllocation {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(entry) = cache.allocation(request_id).await {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {request_id} to be cached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every stored nonce of the signer, checked to be exactly `0..n`.
async fn assert_gapless(store: &dyn NonceStore) -> HashMap<RequestId, u64> {
    let nonces = store.nonces(signer()).await.unwrap();
    for (index, (_, nonce)) in nonces.iter().enumerate() {
        assert_eq!(
            *nonce, index as u64,
            "gap or duplicate at {index}: {nonces:?}"
        );
    }
    nonces.into_iter().collect()
}

mod cases {
    use super::*;

    pub async fn retries_hit_the_cache_and_bad_entries_fall_through(backend: Backend) {
        let Some(redis) = test_support::skip_unless_required(
            "retries_hit_the_cache_and_bad_entries_fall_through",
            RedisServer::start(),
        ) else {
            return;
        };
        let s = setup(&backend, &redis).await;
        let first = s.allocator.allocate(id(0), payload(0)).await.unwrap();
        assert_eq!((first.nonce, first.existing), (0, false));
        let entry = cached(&s.cache, &id(0)).await;
        assert_eq!(
            entry,
            CachedAllocation {
                signer: signer(),
                nonce: 0,
                payload_digest: payload_digest(&payload(0)),
            }
        );
        assert_eq!(s.cache.next_nonce(signer()).await, Some(1));
        let retry = s.allocator.allocate(id(0), payload(0)).await.unwrap();
        assert_eq!((retry.nonce, retry.existing), (0, true));
        // Same id, other payload: the cache entry does not match, the store refuses.
        let conflict = s.allocator.allocate(id(0), payload(9)).await;
        assert!(
            matches!(
                conflict,
                Err(nonce_manager::AllocateError::RequestConflict(_))
            ),
            "{conflict:?}"
        );

        // Wrong entries: another signer's, another payload's, a nonce the store never gave,
        // and a wildly wrong next nonce. None changes what allocation answers.
        let poisoned = [
            (
                id(1),
                CachedAllocation {
                    signer: Address::repeat_byte(1),
                    nonce: 500,
                    payload_digest: payload_digest(&payload(1)),
                },
            ),
            (
                id(2),
                CachedAllocation {
                    signer: signer(),
                    nonce: 600,
                    payload_digest: B256::repeat_byte(9),
                },
            ),
        ];
        s.cache.put_committed(signer(), &poisoned, 1_000_000).await;
        assert_eq!(s.cache.next_nonce(signer()).await, Some(1_000_000));
        let one = s.allocator.allocate(id(1), payload(1)).await.unwrap();
        let two = s.allocator.allocate(id(2), payload(2)).await.unwrap();
        assert_eq!((one.nonce, one.existing), (1, false));
        assert_eq!((two.nonce, two.existing), (2, false));
        let three = s.allocator.allocate(id(3), payload(3)).await.unwrap();
        assert_eq!(
            three.nonce, 3,
            "the cached next nonce is not an allocation input"
        );
        let stored = assert_gapless(s.store.as_ref()).await;
        assert_eq!(stored.len(), 4);
        // The writer overwrote the poisoned entries with the committed ones.
        let deadline = Instant::now() + WAIT;
        while s.cache.allocation(&id(2)).await.map(|entry| entry.nonce) != Some(2) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the writer to overwrite the poisoned entry of {}",
                id(2)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn redis_dying_mid_run_changes_nothing(backend: Backend) {
        const CALLERS: u64 = 8;
        const PER_CALLER: u64 = 60;
        let Some(mut redis) = test_support::skip_unless_required(
            "redis_dying_mid_run_changes_nothing",
            RedisServer::start(),
        ) else {
            return;
        };
        let s = setup(&backend, &redis).await;
        let (killed_tx, killed) = watch::channel(false);
        let mut callers = Vec::new();
        for caller in 0..CALLERS {
            let allocator = s.allocator.clone();
            let mut killed = killed.clone();
            callers.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for k in 0..PER_CALLER {
                    if k == PER_CALLER / 2 {
                        // Half before Redis dies, half after.
                        killed.wait_for(|killed| *killed).await.unwrap();
                    }
                    let n = caller * PER_CALLER + k;
                    let allocation = allocator.allocate(id(n), payload(n)).await.unwrap();
                    assert!(!allocation.existing);
                    answers.push((id(n), allocation.nonce));
                }
                answers
            }));
        }
        // Let the first halves land and reach the cache, then kill Redis.
        let deadline = Instant::now() + WAIT;
        while s.store.nonces(signer()).await.unwrap().len() < (CALLERS * PER_CALLER / 2) as usize {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the first half to be committed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cached(&s.cache, &id(0)).await;
        redis.stop();
        killed_tx.send(true).unwrap();
        let mut answers = HashMap::new();
        for caller in callers {
            for (request_id, nonce) in caller.await.unwrap() {
                answers.insert(request_id, nonce);
            }
        }
        let stored = assert_gapless(s.store.as_ref()).await;
        assert_eq!(stored.len(), (CALLERS * PER_CALLER) as usize);
        assert_eq!(stored, answers, "every caller got the stored nonce");
        // Retries with Redis gone come from the store, unchanged.
        for n in [0, PER_CALLER - 1, CALLERS * PER_CALLER - 1] {
            let retry = s.allocator.allocate(id(n), payload(n)).await.unwrap();
            assert_eq!((retry.nonce, retry.existing), (answers[&id(n)], true));
        }
        assert_eq!(s.cache.allocation(&id(0)).await, None, "redis is gone");
    }
}
