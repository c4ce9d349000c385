//! The `NonceStore` conformance suite, run against SQLite (a temp file) and PostgreSQL
//! (started by test-support; skipped when not installed unless TAKHIN_REQUIRE_ALL_CLIENTS=1).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, Bytes, B256};
use ledger_lease::{FencingToken, HolderId, ManualClock, UnixMillis};
use nonce_manager::chain::ReceiptSummary;
use nonce_manager::store::NewAllocation;
use nonce_manager::{signer_resource, RequestId, StoreError, TxAttempt, TxStatus};

use common::{payload, Backend};

backend_cases!(cases;
    batch_is_gapless_and_dedups,
    floor_above_stored_jumps,
    stale_token_writes_are_refused,
    attempts_and_status,
    lists_by_status,
    receipts_are_stored_and_cleared,
    request_id_of_another_signer_comes_back_existing,
    racing_signers_with_shared_request_ids_stay_gapless,
    old_schema_is_migrated,
);

mod cases {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn signer() -> Address {
        Address::repeat_byte(0x42)
    }

    fn request(id: &str, seed: u64) -> NewAllocation {
        NewAllocation {
            request_id: RequestId::new(id).unwrap(),
            payload: payload(seed),
        }
    }

    fn nonces(batch: &nonce_manager::store::AllocationBatch) -> Vec<(u64, bool)> {
        batch
            .allocations
            .iter()
            .map(|allocation| (allocation.nonce, allocation.existing))
            .collect()
    }

    /// Takes each signer's lease as node-a; returns their fencing tokens in order.
    async fn hold_leases(node: &common::Node, signers: &[Address]) -> Vec<FencingToken> {
        let holder = HolderId::new("node-a").unwrap();
        let mut tokens = Vec::new();
        for signer in signers {
            let lease = node
                .leases
                .try_acquire(&signer_resource(*signer), &holder, TTL)
                .await
                .unwrap()
                .unwrap();
            tokens.push(lease.token);
        }
        tokens
    }

    pub async fn batch_is_gapless_and_dedups(backend: Backend) {
        let clock = Arc::new(ManualClock::default());
        let node = backend.node(clock).await;
        let holder = HolderId::new("node-a").unwrap();
        let lease = node
            .leases
            .try_acquire(&signer_resource(signer()), &holder, TTL)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(node.store.next_nonce(signer()).await.unwrap(), None);
        let first = node
            .store
            .commit_allocations(
                signer(),
                lease.token,
                5,
                &[request("a", 1), request("b", 2), request("a", 1)],
            )
            .await
            .unwrap();
        assert_eq!(nonces(&first), [(5, false), (6, false), (5, true)]);
        assert_eq!(first.next_nonce, 7);
        let second = node
            .store
            .commit_allocations(
                signer(),
                lease.token,
                0,
                &[request("b", 2), request("c", 3)],
            )
            .await
            .unwrap();
        assert_eq!(nonces(&second), [(6, true), (7, false)]);
        assert_eq!(node.store.next_nonce(signer()).await.unwrap(), Some(8));
        let stored = node
            .store
            .transaction(&RequestId::new("c").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.nonce, 7);
        assert_eq!(stored.status, TxStatus::Pending);
        assert_eq!(stored.payload, payload(3));
        assert_eq!(stored.fencing_token, lease.token);
        let all: Vec<u64> = node
            .store
            .nonces(signer())
            .await
            .unwrap()
            .into_iter()
            .map(|(_, nonce)| nonce)
            .collect();
        assert_eq!(all, [5, 6, 7]);
    }

    pub async fn lists_by_status(backend: Backend) {
        let node = backend.node(Arc::new(ManualClock::default())).await;
        let holder = HolderId::new("node-a").unwrap();
        let lease = node
            .leases
            .try_acquire(&signer_resource(signer()), &holder, TTL)
            .await
            .unwrap()
            .unwrap();
        let requests: Vec<_> = (0..4).map(|n| request(&format!("r{n}"), n)).collect();
        node.store
            .commit_allocations(signer(), lease.token, 0, &requests)
            .await
            .unwrap();
        for n in [2, 0, 3] {
            let id = RequestId::new(format!("r{n}")).unwrap();
            node.store
                .set_status(signer(), lease.token, &id, TxStatus::Tracking)
                .await
                .unwrap();
        }
        let tracking = node
            .store
            .transactions_with_status(signer(), TxStatus::Tracking, 10)
            .await
            .unwrap();
        let ids: Vec<(&str, u64)> = tracking
            .iter()
            .map(|r| (r.request_id.as_str(), r.nonce))
            .collect();
        assert_eq!(ids, [("r0", 0), ("r2", 2), ("r3", 3)], "by nonce");
        let limited = node
            .store
            .transactions_with_status(signer(), TxStatus::Tracking, 2)
            .await
            .unwrap();
        assert_eq!(limited.len(), 2);
        let pending = node
            .store
            .transactions_with_status(signer(), TxStatus::Pending, 10)
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].request_id.as_str(), "r1");
        let other = node
            .store
            .transactions_with_status(Address::repeat_byte(0x99), TxStatus::Tracking, 10)
            .await
            .unwrap();
        assert!(other.is_empty());
    }

    pub async fn floor_above_stored_jumps(backend: Backend) {
        let node = backend.node(Arc::new(ManualClock::default())).await;
        let holder = HolderId::new("node-a").unwrap();
        let lease = node
            .leases
            .try_acquire(&signer_resource(signer()), &holder, TTL)
            .await
            .unwrap()
            .unwrap();
        let batch = node
            .store
            .commit_allocations(signer(), lease.token, 0, &[request("a", 1)])
            .await
            .unwrap();
        assert_eq!(nonces(&batch), [(0, false)]);
        // The chain moved ahead (the key was used elsewhere): allocation follows it.
        let batch = node
            .store
            .commit_allocations(signer(), lease.token, 20, &[request("b", 2)])
            .await
            .unwrap();
        assert_eq!(nonces(&batch), [(20, false)]);
        assert_eq!(batch.next_nonce, 21);
    }

    pub async fn stale_token_writes_are_refused(backend: Backend) {
        let clock = Arc::new(ManualClock::default());
        let node_a = backend.node(clock.clone()).await;
        let node_b = backend.node(clock.clone()).await;
        let resource = signer_resource(signer());
        let old = node_a
            .leases
            .try_acquire(&resource, &HolderId::new("node-a").unwrap(), TTL)
            .await
            .unwrap()
            .unwrap();
        node_a
            .store
            .commit_allocations(signer(), old.token, 0, &[request("a", 1)])
            .await
            .unwrap();
        clock.advance(TTL + Duration::from_millis(1));
        let new = node_b
            .leases
            .try_acquire(&resource, &HolderId::new("node-b").unwrap(), TTL)
            .await
            .unwrap()
            .unwrap();
        assert!(new.token > old.token);

        let refused = node_a
            .store
            .commit_allocations(signer(), old.token, 0, &[request("x", 9)])
            .await;
        assert!(
            matches!(refused, Err(StoreError::Fenced { .. })),
            "{refused:?}"
        );
        let id = RequestId::new("a").unwrap();
        let refused = node_a
            .store
            .set_status(signer(), old.token, &id, TxStatus::Tracking)
            .await;
        assert!(
            matches!(refused, Err(StoreError::Fenced { .. })),
            "{refused:?}"
        );
        let refused = node_a
            .store
            .record_attempt(signer(), old.token, &id, &attempt(1))
            .await;
        assert!(
            matches!(refused, Err(StoreError::Fenced { .. })),
            "{refused:?}"
        );

        // Nothing of the refused writes landed; the new holder carries on gaplessly.
        assert!(node_b
            .store
            .transaction(&RequestId::new("x").unwrap())
            .await
            .unwrap()
            .is_none());
        let stored = node_b.store.transaction(&id).await.unwrap().unwrap();
        assert_eq!(stored.status, TxStatus::Pending);
        assert!(stored.attempts.is_empty());
        let batch = node_b
            .store
            .commit_allocations(signer(), new.token, 0, &[request("b", 2)])
            .await
            .unwrap();
        assert_eq!(nonces(&batch), [(1, false)]);
        node_b
            .store
            .set_status(signer(), new.token, &id, TxStatus::Tracking)
            .await
            .unwrap();
        let stored = node_b.store.transaction(&id).await.unwrap().unwrap();
        assert_eq!(stored.fencing_token, new.token);
    }

    fn attempt(seed: u8) -> TxAttempt {
        TxAttempt {
            hash: B256::repeat_byte(seed),
            max_fee_per_gas: u128::MAX - u128::from(seed),
            max_priority_fee_per_gas: u128::from(seed),
            raw: Bytes::from(vec![seed; 3]),
            sent_at: UnixMillis(1_000 + i64::from(seed)),
        }
    }

    pub async fn attempts_and_status(backend: Backend) {
        let node = backend.node(Arc::new(ManualClock::default())).await;
        let lease = node
            .leases
            .try_acquire(
                &signer_resource(signer()),
                &HolderId::new("node-a").unwrap(),
                TTL,
            )
            .await
            .unwrap()
            .unwrap();
        let id = RequestId::new("a").unwrap();
        node.store
            .commit_allocations(signer(), lease.token, 0, &[request("a", 1)])
            .await
            .unwrap();
        for seed in [1, 2, 1] {
            node.store
                .record_attempt(signer(), lease.token, &id, &attempt(seed))
                .await
                .unwrap();
        }
        let stored = node.store.transaction(&id).await.unwrap().unwrap();
        assert_eq!(stored.attempts, [attempt(1), attempt(2)]);

        let missing = RequestId::new("missing").unwrap();
        let refused = node
            .store
            .record_attempt(signer(), lease.token, &missing, &attempt(3))
            .await;
        assert!(
            matches!(refused, Err(StoreError::NotFound(_))),
            "{refused:?}"
        );

        let set = |status| node.store.set_status(signer(), lease.token, &id, status);
        assert_eq!(set(TxStatus::Tracking).await.unwrap(), TxStatus::Pending);
        assert_eq!(set(TxStatus::Tracking).await.unwrap(), TxStatus::Tracking);
        let refused = set(TxStatus::Pending).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidTransition { .. })),
            "{refused:?}"
        );
        assert_eq!(set(TxStatus::Confirmed).await.unwrap(), TxStatus::Tracking);
        let stored = node.store.transaction(&id).await.unwrap().unwrap();
        assert_eq!(stored.status, TxStatus::Confirmed);
    }

    fn receipt(block: u64, seed: u8) -> ReceiptSummary {
        ReceiptSummary {
            hash: B256::repeat_byte(seed),
            block_number: block,
            block_hash: B256::repeat_byte(seed.wrapping_add(1)),
            success: seed.is_multiple_of(2),
        }
    }

    pub async fn receipts_are_stored_and_cleared(backend: Backend) {
        let clock = Arc::new(ManualClock::default());
        let node = backend.node(clock).await;
        let holder = HolderId::new("node-a").unwrap();
        let lease = node
            .leases
            .try_acquire(&signer_resource(signer()), &holder, TTL)
            .await
            .unwrap()
            .unwrap();
        let ids = ["r0", "r1", "r2"];
        let requests: Vec<_> = ids.iter().map(|id| request(id, 1)).collect();
        node.store
            .commit_allocations(signer(), lease.token, 0, &requests)
            .await
            .unwrap();
        for id in ids {
            let id = RequestId::new(id).unwrap();
            node.store
                .set_status(signer(), lease.token, &id, TxStatus::Tracking)
                .await
                .unwrap();
        }
        let (r0, r1) = (RequestId::new("r0").unwrap(), RequestId::new("r1").unwrap());
        node.store
            .set_status_with_receipt(
                signer(),
                lease.token,
                &r0,
                TxStatus::Confirmed,
                Some(&receipt(10, 2)),
            )
            .await
            .unwrap();
        node.store
            .set_status_with_receipt(
                signer(),
                lease.token,
                &r1,
                TxStatus::Failed,
                Some(&receipt(12, 5)),
            )
            .await
            .unwrap();
        let all = node.store.stored_receipts(signer(), 0, 10).await.unwrap();
        assert_eq!(
            all,
            vec![
                (r0.clone(), TxStatus::Confirmed, receipt(10, 2)),
                (r1.clone(), TxStatus::Failed, receipt(12, 5)),
            ]
        );
        let recent = node.store.stored_receipts(signer(), 11, 10).await.unwrap();
        assert_eq!(recent, vec![(r1.clone(), TxStatus::Failed, receipt(12, 5))]);
        assert!(node
            .store
            .stored_receipts(Address::repeat_byte(1), 0, 10)
            .await
            .unwrap()
            .is_empty());
        // A plain status write keeps the receipt; a rollback with None clears it.
        node.store
            .set_status(signer(), lease.token, &r0, TxStatus::Confirmed)
            .await
            .unwrap();
        assert_eq!(
            node.store
                .stored_receipts(signer(), 0, 10)
                .await
                .unwrap()
                .len(),
            2
        );
        node.store
            .set_status_with_receipt(signer(), lease.token, &r0, TxStatus::Tracking, None)
            .await
            .unwrap();
        let left = node.store.stored_receipts(signer(), 0, 10).await.unwrap();
        assert_eq!(left, vec![(r1, TxStatus::Failed, receipt(12, 5))]);
        // Fenced like every write: a stale token stores nothing.
        let stale = ledger_lease::FencingToken::new(lease.token.get() - 1);
        let refused = node
            .store
            .set_status_with_receipt(
                signer(),
                stale,
                &r0,
                TxStatus::Confirmed,
                Some(&receipt(20, 8)),
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::Fenced { .. })),
            "{refused:?}"
        );
        assert_eq!(
            node.store
                .stored_receipts(signer(), 0, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    pub async fn request_id_of_another_signer_comes_back_existing(backend: Backend) {
        let clock = Arc::new(ManualClock::default());
        let node = backend.node(clock).await;
        let other = Address::repeat_byte(0x43);
        let tokens = hold_leases(&node, &[signer(), other]).await;
        node.store
            .commit_allocations(signer(), tokens[0], 0, &[request("shared", 1)])
            .await
            .unwrap();
        let batch = node
            .store
            .commit_allocations(
                other,
                tokens[1],
                0,
                &[
                    request("mine", 2),
                    request("shared", 1),
                    request("mine-2", 3),
                ],
            )
            .await
            .unwrap();
        let answers: Vec<_> = batch
            .allocations
            .iter()
            .map(|a| (a.signer, a.nonce, a.existing))
            .collect();
        assert_eq!(
            answers,
            [(other, 0, false), (signer(), 0, true), (other, 1, false)]
        );
        assert_eq!(batch.next_nonce, 2);
        assert_eq!(node.store.nonces(other).await.unwrap().len(), 2);
    }

    /// Two signers' writers commit at the same time, every batch holding request ids the
    /// other also sends: each id is stored once (under whichever signer won it), the loser's
    /// batch is planned again and answers it as `existing`, and both signers' nonces stay
    /// gapless. On PostgreSQL the loser's insert waits for the winner's commit and fails
    /// with a unique violation, the path `try_commit_allocations` retries on.
    pub async fn racing_signers_with_shared_request_ids_stay_gapless(backend: Backend) {
        const ROUNDS: usize = 40;
        let clock = Arc::new(ManualClock::default());
        let node = backend.node(clock).await;
        let other = Address::repeat_byte(0x44);
        let tokens = hold_leases(&node, &[signer(), other]).await;
        let store = &node.store;
        let batch_for = |who: &str, round: usize| {
            vec![
                request(&format!("{who}-{round}-a"), 1),
                request(&format!("shared-{round}"), 9),
                request(&format!("{who}-{round}-b"), 2),
            ]
        };
        for round in 0..ROUNDS {
            let mine = batch_for("mine", round);
            let theirs = batch_for("theirs", round);
            let (a, b) = tokio::join!(
                store.commit_allocations(signer(), tokens[0], 0, &mine),
                store.commit_allocations(other, tokens[1], 0, &theirs),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let shared = [&a.allocations[1], &b.allocations[1]];
            assert_eq!(
                shared
                    .iter()
                    .filter(|allocation| !allocation.existing)
                    .count(),
                1,
                "round {round}: exactly one signer allocates the shared id: {shared:?}"
            );
            assert_eq!(shared[0].signer, shared[1].signer);
            assert_eq!(shared[0].nonce, shared[1].nonce);
        }
        let mut total = 0;
        for who in [signer(), other] {
            let stored: Vec<u64> = store
                .nonces(who)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, nonce)| nonce)
                .collect();
            let expected: Vec<u64> = (0..stored.len() as u64).collect();
            assert_eq!(stored, expected, "{who:#x}: gapless and duplicate-free");
            total += stored.len();
        }
        assert_eq!(
            total,
            ROUNDS * 5,
            "two own ids per signer and one shared per round"
        );
    }

    /// A database created before the receipt columns existed: connecting adds them and
    /// keeps every row.
    pub async fn old_schema_is_migrated(backend: Backend) {
        const OLD_MANAGED_TX: &str = "CREATE TABLE managed_tx (
            request_id TEXT PRIMARY KEY NOT NULL,
            signer TEXT NOT NULL,
            nonce BIGINT NOT NULL CHECK (nonce >= 0),
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            fencing_token BIGINT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            updated_at_ms BIGINT NOT NULL,
            UNIQUE (signer, nonce)
        )";
        let payload_json = serde_json::to_string(&payload(7)).unwrap();
        let insert = format!(
            "INSERT INTO managed_tx VALUES ('old', '{:#x}', 3, '{payload_json}', 'tracking', 1, 0, 0)",
            signer()
        );
        match &backend {
            Backend::Sqlite { path, .. } => {
                let pool =
                    sqlx::SqlitePool::connect_with(ledger_lease::sqlite::connect_options(path))
                        .await
                        .unwrap();
                sqlx::query(OLD_MANAGED_TX).execute(&pool).await.unwrap();
                sqlx::query(&insert).execute(&pool).await.unwrap();
                pool.close().await;
            }
            Backend::Postgres { server } => {
                let pool = sqlx::PgPool::connect(server.url()).await.unwrap();
                sqlx::query(OLD_MANAGED_TX).execute(&pool).await.unwrap();
                sqlx::query(&insert).execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
        let clock = Arc::new(ManualClock::default());
        let node = backend.node(clock.clone()).await;
        // Connecting again is a no-op migration.
        let _again = backend.node(clock).await;
        let old = RequestId::new("old").unwrap();
        let record = node.store.transaction(&old).await.unwrap().unwrap();
        assert_eq!((record.nonce, record.status), (3, TxStatus::Tracking));
        assert_eq!(record.payload, payload(7));
        let lease = node
            .leases
            .try_acquire(
                &signer_resource(signer()),
                &HolderId::new("node-a").unwrap(),
                TTL,
            )
            .await
            .unwrap()
            .unwrap();
        node.store
            .set_status_with_receipt(
                signer(),
                lease.token,
                &old,
                TxStatus::Confirmed,
                Some(&receipt(40, 4)),
            )
            .await
            .unwrap();
        assert_eq!(
            node.store.stored_receipts(signer(), 0, 10).await.unwrap(),
            vec![(old, TxStatus::Confirmed, receipt(40, 4))]
        );
    }
}
