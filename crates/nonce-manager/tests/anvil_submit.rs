//! End to end against a real anvil (npm @foundry-rs/anvil,
//! `npm install --prefix tests/evm --ignore-scripts`; skipped when not installed unless
//! TAKHIN_REQUIRE_ALL_CLIENTS=1): 200 transactions from dev account 0 with duplicated
//! request ids, submitted concurrently through the lease, the batch allocator and the
//! store (SQLite and PostgreSQL); all mined, nonces gapless on chain.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, Bytes, U256};
use nonce_manager::submit::SubmitRequest;
use nonce_manager::{RequestId, TxPayload, TxStatus};

use common::anvil::Anvil;
use common::stack::Stack;
use common::Backend;

on_both_backends!(submit_200_with_retries_all_mined_gapless);

const TRANSACTIONS: u64 = 200;

async fn submit_200_with_retries_all_mined_gapless(backend: Backend) {
    let Some(anvil) = test_support::skip_unless_required("anvil_submit", Anvil::start(None)) else {
        return;
    };
    let started = Instant::now();
    let stack = Arc::new(Stack::on(anvil.url(), &backend).await);
    let (store, chain) = (stack.store.clone(), stack.chain.clone());
    let signer = stack.key.address();

    let base_fee = chain.base_fee().await.unwrap().unwrap_or(1_000_000_000);
    let payload = |n: u64| TxPayload {
        to: Address::repeat_byte(0x70),
        value: U256::from(n + 1),
        data: Bytes::new(),
        gas_limit: 21_000,
        max_fee_per_gas: base_fee * 4 + 1_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
    };
    // Every id once, every 8th id twice more (concurrent retries).
    let mut calls: Vec<u64> = (0..TRANSACTIONS).collect();
    calls.extend((0..TRANSACTIONS).filter(|n| n % 8 == 0));
    calls.extend((0..TRANSACTIONS).filter(|n| n % 8 == 0));
    let mut tasks = Vec::new();
    for n in calls {
        let stack = stack.clone();
        let request = SubmitRequest {
            request_id: RequestId::new(format!("transfer-{n}")).unwrap(),
            signer,
            payload: payload(n),
        };
        tasks.push(tokio::spawn(async move {
            (n, stack.submitter.submit(request).await.unwrap())
        }));
    }
    let mut by_id: BTreeMap<u64, (u64, alloy_primitives::B256)> = BTreeMap::new();
    for task in tasks {
        let (n, record) = task.await.unwrap();
        assert_eq!(
            record.status,
            TxStatus::Tracking,
            "transfer-{n}: {record:?}"
        );
        assert_eq!(record.attempts.len(), 1, "transfer-{n}");
        let seen = (record.nonce, record.attempts[0].hash);
        if let Some(first) = by_id.insert(n, seen) {
            assert_eq!(
                first, seen,
                "a retry of transfer-{n} got another nonce or hash"
            );
        }
    }
    let nonces: BTreeSet<u64> = by_id.values().map(|(nonce, _)| *nonce).collect();
    assert_eq!(nonces, (0..TRANSACTIONS).collect::<BTreeSet<u64>>());

    let deadline = Instant::now() + Duration::from_secs(60);
    while chain.latest_nonce(signer).await.unwrap() < TRANSACTIONS {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the latest nonce to reach {TRANSACTIONS}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(chain.latest_nonce(signer).await.unwrap(), TRANSACTIONS);
    for (n, (_, hash)) in &by_id {
        let receipt = stack
            .receipt_eventually(*hash, &format!("transfer-{n} mined"))
            .await;
        assert!(receipt.success, "transfer-{n} reverted");
    }
    // A retry after mining returns the stored record without a new nonce or send.
    let again = stack
        .submitter
        .submit(SubmitRequest {
            request_id: RequestId::new("transfer-3").unwrap(),
            signer,
            payload: payload(3),
        })
        .await
        .unwrap();
    assert_eq!((again.nonce, again.attempts[0].hash), by_id[&3]);
    assert_eq!(store.next_nonce(signer).await.unwrap(), Some(TRANSACTIONS));
    eprintln!(
        "anvil: {TRANSACTIONS} transactions mined in {:?}",
        started.elapsed()
    );
    Arc::into_inner(stack)
        .expect("every task ended")
        .shut_down()
        .await;
}
