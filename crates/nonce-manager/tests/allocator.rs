//! The allocator across nodes: three allocators (three "nodes", each with its own pool)
//! take turns on one signer through its lease and answer 2,000 requests with retries; the
//! nonces must be gapless from the chain's start nonce, duplicate-free, and a retry must get
//! its first nonce. And a stale allocator's write is refused after a takeover.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::Address;
use ledger_lease::{HolderId, LeaseState, LossReason, ManualClock, SystemClock};
use nonce_manager::allocator::{Allocator, AllocatorConfig};
use nonce_manager::{signer_resource, AllocateError, RequestId};
use tokio::sync::watch;

use common::{payload, Backend, FixedChain};

backend_cases!(cases;
    three_nodes_share_a_signer,
    stale_allocator_is_refused_after_takeover,
    refresh_chain_skips_ahead_at_once,
);

mod cases {
    use super::*;

    const START_NONCE: u64 = 7;
    const REQUESTS: u64 = 2_000;
    const ROUNDS: u64 = 6;

    fn signer() -> Address {
        Address::repeat_byte(0x42)
    }

    fn id(n: u64) -> RequestId {
        RequestId::new(format!("req-{n}")).unwrap()
    }

    /// After `refresh_chain` the next batch re-reads the chain even though the last read
    /// is fresh; the store's per-signer summary and nonce lookup agree.
    pub async fn refresh_chain_skips_ahead_at_once(backend: Backend) {
        use std::sync::atomic::Ordering;
        let clock = Arc::new(SystemClock);
        let node = backend.node(clock).await;
        let chain = Arc::new(FixedChain::new(START_NONCE));
        let lease = node
            .leases
            .try_acquire(
                &signer_resource(signer()),
                &HolderId::new("node-0").unwrap(),
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
        let (_state, lease_rx) = watch::channel(LeaseState::Held(lease));
        let config = AllocatorConfig {
            chain_refresh: Duration::from_secs(3600),
            ..AllocatorConfig::default()
        };
        let allocator = Allocator::start(
            node.store.clone(),
            chain.clone(),
            signer(),
            lease_rx,
            config,
        )
        .unwrap();
        let first = allocator.allocate(id(1), payload(1)).await.unwrap();
        assert_eq!(first.nonce, START_NONCE);
        // Another wallet spent up to 20: the cached read does not know yet.
        chain.pending.store(20, Ordering::SeqCst);
        let second = allocator.allocate(id(2), payload(2)).await.unwrap();
        assert_eq!(second.nonce, START_NONCE + 1);
        allocator.refresh_chain();
        let third = allocator.allocate(id(3), payload(3)).await.unwrap();
        assert_eq!(third.nonce, 20);
        let summary = node.store.signer_summary(signer()).await.unwrap();
        assert_eq!(summary.in_flight, 3);
        assert!(summary.oldest_in_flight.is_some());
        assert_eq!(summary.last_confirmed_nonce, None);
        let at = node.store.record_at_nonce(signer(), 20).await.unwrap();
        assert_eq!(at, Some((id(3), nonce_manager::TxStatus::Pending)));
        assert_eq!(
            node.store.record_at_nonce(signer(), 19).await.unwrap(),
            None
        );
    }

    pub async fn three_nodes_share_a_signer(backend: Backend) {
        let started = Instant::now();
        let clock = Arc::new(SystemClock);
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(backend.node(clock.clone()).await);
        }
        let chain = Arc::new(FixedChain::new(START_NONCE));
        let resource = signer_resource(signer());
        let mut first_nonce: BTreeMap<u64, u64> = BTreeMap::new();
        let per_round = REQUESTS.div_ceil(ROUNDS);
        let mut n_calls = 0;
        for round in 0..ROUNDS {
            let node = &nodes[usize::try_from(round % 3).unwrap()];
            let holder = HolderId::new(format!("node-{}", round % 3)).unwrap();
            let lease = node
                .leases
                .try_acquire(&resource, &holder, Duration::from_secs(60))
                .await
                .unwrap()
                .expect("the previous holder released");
            let (state, lease_rx) = watch::channel(LeaseState::Held(lease.clone()));
            let allocator = Arc::new(
                Allocator::start(
                    node.store.clone(),
                    chain.clone(),
                    signer(),
                    lease_rx,
                    AllocatorConfig::default(),
                )
                .unwrap(),
            );
            // This round's fresh ids, each 25th twice at once, and each 10th id of the
            // previous round again (a client retrying against another node).
            let fresh = round * per_round..((round + 1) * per_round).min(REQUESTS);
            let mut calls: Vec<u64> = fresh.clone().collect();
            calls.extend(fresh.clone().filter(|n| n % 25 == 0));
            if round > 0 {
                calls.extend(((round - 1) * per_round..round * per_round).filter(|n| n % 10 == 0));
            }
            n_calls += calls.len();
            let mut tasks = Vec::new();
            for n in calls {
                let allocator = allocator.clone();
                tasks.push(tokio::spawn(async move {
                    (n, allocator.allocate(id(n), payload(n)).await.unwrap())
                }));
            }
            for task in tasks {
                let (n, allocation) = task.await.unwrap();
                assert_eq!(allocation.request_id, id(n));
                match first_nonce.get(&n) {
                    Some(&nonce) => assert_eq!(nonce, allocation.nonce, "retry of req-{n}"),
                    None => {
                        first_nonce.insert(n, allocation.nonce);
                    }
                }
            }
            state.send_replace(LeaseState::Lost(LossReason::Released));
            assert!(node.leases.release(&lease).await.unwrap());
        }
        assert_eq!(first_nonce.len(), usize::try_from(REQUESTS).unwrap());
        let distinct: BTreeSet<u64> = first_nonce.values().copied().collect();
        let expected: BTreeSet<u64> = (START_NONCE..START_NONCE + REQUESTS).collect();
        assert_eq!(distinct, expected, "gapless and duplicate-free");
        let stored: BTreeMap<RequestId, u64> = nodes[0]
            .store
            .nonces(signer())
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(stored.len(), first_nonce.len());
        for (n, nonce) in &first_nonce {
            assert_eq!(stored.get(&id(*n)), Some(nonce));
        }
        assert_eq!(
            nodes[1].store.next_nonce(signer()).await.unwrap(),
            Some(START_NONCE + REQUESTS)
        );
        eprintln!(
            "{}: {n_calls} allocate calls for {REQUESTS} ids in {:?}",
            backend.name(),
            started.elapsed()
        );
    }

    pub async fn stale_allocator_is_refused_after_takeover(backend: Backend) {
        let clock = Arc::new(ManualClock::default());
        let node_a = backend.node(clock.clone()).await;
        let node_b = backend.node(clock.clone()).await;
        let chain = Arc::new(FixedChain::new(START_NONCE));
        let resource = signer_resource(signer());
        let ttl = Duration::from_secs(10);
        let old = node_a
            .leases
            .try_acquire(&resource, &HolderId::new("node-a").unwrap(), ttl)
            .await
            .unwrap()
            .unwrap();
        // Node A is never told it lost the lease: it is paused, or partitioned.
        let (_state_a, lease_a) = watch::channel(LeaseState::Held(old.clone()));
        let stale = Allocator::start(
            node_a.store.clone(),
            chain.clone(),
            signer(),
            lease_a,
            AllocatorConfig::default(),
        )
        .unwrap();
        let first = stale.allocate(id(1), payload(1)).await.unwrap();
        assert_eq!((first.nonce, first.existing), (START_NONCE, false));

        clock.advance(ttl + Duration::from_millis(1));
        let new = node_b
            .leases
            .try_acquire(&resource, &HolderId::new("node-b").unwrap(), ttl)
            .await
            .unwrap()
            .unwrap();
        let (state_b, lease_b) = watch::channel(LeaseState::Held(new));
        let fresh = Allocator::start(
            node_b.store.clone(),
            chain.clone(),
            signer(),
            lease_b,
            AllocatorConfig::default(),
        )
        .unwrap();

        let refused = stale.allocate(id(2), payload(2)).await;
        assert!(
            matches!(refused, Err(AllocateError::LeaseLost(_))),
            "{refused:?}"
        );
        assert!(stale.is_stopped());
        assert_eq!(stale.token(), None);
        let refused = stale.allocate(id(3), payload(3)).await;
        assert!(
            matches!(refused, Err(AllocateError::LeaseLost(_))),
            "{refused:?}"
        );
        // A retry of a stored request is answered from the store, even by a stale node.
        let retry = stale.allocate(id(1), payload(1)).await.unwrap();
        assert_eq!((retry.nonce, retry.existing), (START_NONCE, true));
        // A request id reused for another payload is refused.
        let conflict = fresh.allocate(id(1), payload(99)).await;
        assert!(
            matches!(conflict, Err(AllocateError::RequestConflict(_))),
            "{conflict:?}"
        );

        let next = fresh.allocate(id(4), payload(4)).await.unwrap();
        assert_eq!((next.nonce, next.existing), (START_NONCE + 1, false));
        assert!(node_b.store.transaction(&id(2)).await.unwrap().is_none());

        // A lease reported lost stops the allocator too.
        state_b.send_replace(LeaseState::Lost(LossReason::TakenOver));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = fresh.allocate(id(5), payload(5)).await;
        assert!(
            matches!(refused, Err(AllocateError::LeaseLost(_))),
            "{refused:?}"
        );
        assert!(fresh.is_stopped());
    }
}
