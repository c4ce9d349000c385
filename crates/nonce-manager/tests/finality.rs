//! Finality and the policy loop against real nodes (anvil and hardhat from
//! `tests/evm/node_modules`; skipped when not installed unless TAKHIN_REQUIRE_ALL_CLIENTS=1):
//! N confirmations, reorgs that re-include or drop a transaction, a dropped transaction
//! re-broadcast behind later nonces, fee bumps under a base-fee spike up to the cap, and a
//! transaction mined before its receipt was seen and then resubmitted. Every case runs on
//! SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_network::Ethereum;
use alloy_primitives::{Address, Bytes, U256};
use alloy_provider::{Provider, RootProvider};
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::chain::ChainClient;
use nonce_manager::finality::{Finality, FinalityConfig, FinalityView};
use nonce_manager::policy::{PolicyConfig, PolicyLoop, Resubmitted};
use nonce_manager::submit::SubmitRequest;
use nonce_manager::{ManagedTransaction, RequestId, TxPayload, TxStatus};
use serde_json::{json, Value};

use common::anvil::Anvil;
use common::hardhat::Hardhat;
use common::stack::Stack;
use common::Backend;

on_both_backends!(
    anvil_reorg_reincluded_confirms_again,
    anvil_reorg_dropped_is_resubmitted_and_confirms,
    anvil_dropped_transaction_is_rebroadcast,
    anvil_mined_unseen_then_resubmitted_confirms,
    hardhat_base_fee_spike_bumps_to_the_cap,
    anvil_reorg_while_down_is_found_after_restart,
);

const GWEI: u128 = 1_000_000_000;
const WAIT: Duration = Duration::from_secs(30);

struct Harness {
    stack: Stack,
}

impl std::ops::Deref for Harness {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Harness {
    /// A node on `backend` (another call on the same backend is a restarted node).
    async fn new(url: &str, backend: &Backend) -> Self {
        Self {
            stack: Stack::on(url, backend).await,
        }
    }

    /// Stops this node cleanly: releases the signer's lease for the next one.
    async fn shut_down(self) {
        self.stack.shut_down().await;
    }

    fn finality(&self, confirmations: u64) -> Finality {
        Finality::start(
            self.store.clone(),
            self.chain.clone(),
            self.allocator.clone(),
            FinalityConfig {
                confirmations,
                poll_interval: Duration::from_millis(100),
                receipt_concurrency: 4,
                queue_capacity: 2,
                ..FinalityConfig::default()
            },
        )
    }

    async fn policy(&self, config: PolicyConfig, view: Option<FinalityView>) -> Arc<PolicyLoop> {
        Arc::new(
            PolicyLoop::new(
                self.store.clone(),
                self.chain.clone(),
                self.allocator.clone(),
                self.key.clone(),
                self.clock.clone(),
                config,
                view,
            )
            .await
            .unwrap(),
        )
    }

    async fn submit(&self, id: &str, max_fee: u128, priority_fee: u128) -> ManagedTransaction {
        let record = self
            .submitter
            .submit(SubmitRequest {
                request_id: RequestId::new(id).unwrap(),
                signer: self.key.address(),
                payload: TxPayload {
                    to: Address::repeat_byte(0x70),
                    value: U256::from(1),
                    data: Bytes::new(),
                    gas_limit: 21_000,
                    max_fee_per_gas: max_fee,
                    max_priority_fee_per_gas: priority_fee,
                },
            })
            .await
            .unwrap();
        assert_eq!(record.status, TxStatus::Tracking, "{record:?}");
        record
    }

    async fn record(&self, id: &str) -> ManagedTransaction {
        self.store
            .transaction(&RequestId::new(id).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    async fn rpc(&self, method: &str, params: Value) -> Value {
        let provider = RootProvider::<Ethereum>::new_http(self.url.parse().unwrap());
        provider
            .raw_request::<_, Value>(method.to_owned().into(), params)
            .await
            .unwrap_or_else(|error| panic!("{method}: {error}"))
    }

    /// Waits until `id` has `status`, calling `evm_mine` every `mine_every` when given.
    async fn wait_status(&self, id: &str, status: TxStatus, mine_every: Option<Duration>) {
        let deadline = Instant::now() + WAIT;
        let mut last_mine = Instant::now();
        loop {
            let record = self.record(id).await;
            if record.status == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {status}: {record:?}"
            );
            if let Some(every) = mine_every {
                if last_mine.elapsed() >= every {
                    self.rpc("evm_mine", json!([])).await;
                    last_mine = Instant::now();
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn quick_policy() -> PolicyConfig {
    PolicyConfig {
        interval: Duration::from_millis(100),
        resubmit_after: Duration::from_millis(500),
        bump_percent: 10,
        max_fee_cap: 1_000 * GWEI,
        scan_limit: 100,
    }
}

/// Confirmed at 3; a depth-3 reorg re-includes (`drop == false`) or drops the transaction;
/// it is rolled back to Tracking, its receipt fetched again, and Confirmed again.
async fn reorg_case(test: &str, drop: bool, backend: Backend) {
    let Some(anvil) = test_support::skip_unless_required(test, Anvil::start(None)) else {
        return;
    };
    let started = Instant::now();
    let h = Harness::new(anvil.url(), &backend).await;
    let finality = h.finality(3);
    let policy = h.policy(quick_policy(), Some(finality.view())).await;
    let stats = policy.stats();
    let _policy = policy.spawn();

    let record = h.submit("reorged", 10 * GWEI, GWEI).await;
    let hash = record.attempts[0].hash;
    let first = h.receipt_eventually(hash, "the automined block").await;
    h.rpc("anvil_mine", json!([1])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.record("reorged").await.status,
        TxStatus::Tracking,
        "2 of 3"
    );
    h.rpc("anvil_mine", json!([1])).await;
    h.wait_status("reorged", TxStatus::Confirmed, None).await;
    assert_eq!(
        h.chain.block_number().await.unwrap(),
        first.block_number + 2
    );

    let pairs = if drop {
        json!([])
    } else {
        json!([[format!("{}", record.attempts[0].raw), 1]])
    };
    h.rpc("anvil_reorg", json!([3, pairs])).await;
    let reorged = h.chain.block(first.block_number).await.unwrap().unwrap();
    assert_ne!(
        reorged.hash, first.block_hash,
        "anvil_reorg replaced the block"
    );
    wait_until("the rollback", || {
        finality.stats().reorgs.load(Ordering::SeqCst) >= 1
    })
    .await;
    h.wait_status(
        "reorged",
        TxStatus::Confirmed,
        Some(Duration::from_millis(300)),
    )
    .await;
    let second = h
        .receipt_eventually(hash, "the block that mined it again")
        .await;
    assert_ne!(second.block_hash, first.block_hash);
    if drop {
        assert!(
            stats.rebroadcasts.load(Ordering::SeqCst) >= 1,
            "the dropped transaction was re-broadcast"
        );
    } else {
        assert_eq!(stats.bumps.load(Ordering::SeqCst), 0);
    }
    assert_eq!(h.record("reorged").await.attempts.len(), 1);
    eprintln!(
        "{test}: block {} -> {}, {:?}",
        first.block_number,
        second.block_number,
        started.elapsed()
    );
}

async fn anvil_reorg_reincluded_confirms_again(backend: Backend) {
    reorg_case("anvil_reorg_reincluded_confirms_again", false, backend).await;
}

async fn anvil_reorg_dropped_is_resubmitted_and_confirms(backend: Backend) {
    reorg_case(
        "anvil_reorg_dropped_is_resubmitted_and_confirms",
        true,
        backend,
    )
    .await;
}

/// Automine off, nonces 0..3 pending, nonce 0 dropped from the pool: the policy loop
/// re-broadcasts it and all three confirm.
async fn anvil_dropped_transaction_is_rebroadcast(backend: Backend) {
    let test = "anvil_dropped_transaction_is_rebroadcast";
    let Some(anvil) = test_support::skip_unless_required(test, Anvil::start(None)) else {
        return;
    };
    let started = Instant::now();
    let h = Harness::new(anvil.url(), &backend).await;
    h.rpc("evm_setAutomine", json!([false])).await;
    let finality = h.finality(2);
    let policy = h.policy(quick_policy(), Some(finality.view())).await;
    let stats = policy.stats();
    let _policy = policy.spawn();

    let mut hashes = Vec::new();
    for n in 0..3 {
        let record = h.submit(&format!("queued-{n}"), 10 * GWEI, GWEI).await;
        assert_eq!(record.nonce, n);
        hashes.push(record.attempts[0].hash);
    }
    h.rpc("anvil_dropTransaction", json!([format!("{}", hashes[0])]))
        .await;
    for n in 0..3 {
        h.wait_status(
            &format!("queued-{n}"),
            TxStatus::Confirmed,
            Some(Duration::from_millis(300)),
        )
        .await;
    }
    assert!(stats.rebroadcasts.load(Ordering::SeqCst) >= 1);
    assert_eq!(h.chain.latest_nonce(h.key.address()).await.unwrap(), 3);
    eprintln!(
        "{test}: {} re-broadcasts, {} bumps, {:?}",
        stats.rebroadcasts.load(Ordering::SeqCst),
        stats.bumps.load(Ordering::SeqCst),
        started.elapsed()
    );
}

/// Mined while no receipt was seen yet, then resubmitted: a bump gets "nonce too low", the
/// stored attempts' receipts show it mined, and it ends Confirmed, not Reconciling/Failed.
async fn anvil_mined_unseen_then_resubmitted_confirms(backend: Backend) {
    let test = "anvil_mined_unseen_then_resubmitted_confirms";
    let Some(anvil) = test_support::skip_unless_required(test, Anvil::start(None)) else {
        return;
    };
    let h = Harness::new(anvil.url(), &backend).await;
    h.rpc("evm_setAutomine", json!([false])).await;
    let record = h.submit("raced", 10 * GWEI, GWEI).await;
    h.rpc("evm_mine", json!([])).await;
    // No finality stage yet: the policy does not know the receipt.
    let policy = h.policy(quick_policy(), None).await;
    assert_eq!(policy.bump(&record).await.unwrap(), Resubmitted::Mined);
    let after_bump = h.record("raced").await;
    assert_eq!(after_bump.status, TxStatus::Tracking);
    assert_eq!(
        after_bump.attempts.len(),
        2,
        "the bump was stored before sending"
    );
    let outcome = policy.rebroadcast(&record).await.unwrap();
    assert!(
        matches!(outcome, Resubmitted::Mined | Resubmitted::Sent),
        "{outcome:?}"
    );
    assert_eq!(h.record("raced").await.status, TxStatus::Tracking);
    let _finality = h.finality(1);
    h.wait_status("raced", TxStatus::Confirmed, None).await;
}

/// Hardhat, automine off, every block's base fee spiked to 5 gwei: the 2 gwei transaction
/// stalls; the policy bumps both fees by >= 10% a round up to the 3 gwei cap, raises the
/// alert there; once the spike ends the last replacement is mined and Confirmed.
async fn hardhat_base_fee_spike_bumps_to_the_cap(backend: Backend) {
    let test = "hardhat_base_fee_spike_bumps_to_the_cap";
    let Some(hardhat) = test_support::skip_unless_required(test, Hardhat::start()) else {
        return;
    };
    let started = Instant::now();
    let h = Harness::new(hardhat.url(), &backend).await;
    h.rpc("evm_setAutomine", json!([false])).await;
    let spike = Arc::new(AtomicBool::new(true));
    let miner = {
        let spike = spike.clone();
        let url = h.url.clone();
        tokio::spawn(async move {
            let provider = RootProvider::<Ethereum>::new_http(url.parse().unwrap());
            loop {
                let fee = if spike.load(Ordering::SeqCst) {
                    5 * GWEI
                } else {
                    GWEI / 2
                };
                let _ = provider
                    .raw_request::<_, Value>(
                        "hardhat_setNextBlockBaseFeePerGas".into(),
                        json!([format!("{fee:#x}")]),
                    )
                    .await;
                let _ = provider
                    .raw_request::<_, Value>("evm_mine".into(), json!([]))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finality = h.finality(2);
    let cap = 3 * GWEI;
    let policy = h
        .policy(
            PolicyConfig {
                resubmit_after: Duration::from_millis(300),
                max_fee_cap: cap,
                ..quick_policy()
            },
            Some(finality.view()),
        )
        .await;
    let stats = policy.stats();
    let record = h.submit("stalled", 2 * GWEI, GWEI).await;
    let _policy = policy.spawn();

    wait_until("the fee cap alert", || {
        stats.fee_cap_reached.load(Ordering::SeqCst)
    })
    .await;
    let hash = record.attempts[0].hash;
    assert!(h.chain.receipt(hash).await.unwrap().is_none(), "stalled");
    let stuck = h.record("stalled").await;
    assert_eq!(stuck.status, TxStatus::Tracking);
    let fees: Vec<(u128, u128)> = stuck
        .attempts
        .iter()
        .map(|a| (a.max_fee_per_gas, a.max_priority_fee_per_gas))
        .collect();
    assert_eq!(
        fees.len(),
        5,
        "2 -> 2.2 -> 2.42 -> 2.662 -> 2.9282 gwei: {fees:?}"
    );
    for pair in fees.windows(2) {
        let ((max0, tip0), (max1, tip1)) = (pair[0], pair[1]);
        assert!(max1 * 100 >= max0 * 110, "max fee bump < 10%: {fees:?}");
        assert!(tip1 * 100 >= tip0 * 110, "tip bump < 10%: {fees:?}");
    }
    assert!(fees.iter().all(|(max, _)| *max <= cap));

    spike.store(false, Ordering::SeqCst);
    h.wait_status("stalled", TxStatus::Confirmed, None).await;
    let done = h.record("stalled").await;
    let last = done.attempts.last().unwrap().hash;
    assert!(
        h.chain.receipt(last).await.unwrap().is_some(),
        "the last bump mined"
    );
    wait_until("the alert to clear", || {
        !stats.fee_cap_reached.load(Ordering::SeqCst)
    })
    .await;
    miner.abort();
    eprintln!("{test}: {} attempts, {:?}", fees.len(), started.elapsed());
}

/// Confirmed at 3 with its receipt stored; the node stops; while it is down a depth-3 reorg
/// drops the transaction. A new node on the same database reloads the stored receipt, sees
/// its block left the chain, rolls the record back to Tracking, re-broadcasts the stored
/// bytes, and confirms it again in a new block.
async fn anvil_reorg_while_down_is_found_after_restart(backend: Backend) {
    let test = "anvil_reorg_while_down_is_found_after_restart";
    let Some(anvil) = test_support::skip_unless_required(test, Anvil::start(None)) else {
        return;
    };
    let h = Harness::new(anvil.url(), &backend).await;
    let finality = h.finality(3);
    let record = h.submit("restarted", 10 * GWEI, GWEI).await;
    let first = h
        .receipt_eventually(record.attempts[0].hash, "the automined block")
        .await;
    h.rpc("anvil_mine", json!([2])).await;
    h.wait_status("restarted", TxStatus::Confirmed, None).await;
    let stored = h
        .store
        .stored_receipts(h.key.address(), 0, 10)
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![(
            RequestId::new("restarted").unwrap(),
            TxStatus::Confirmed,
            first
        )]
    );
    drop(finality);
    h.shut_down().await;

    // While no node runs: the block holding it is replaced, the transaction is gone.
    let provider = RootProvider::<Ethereum>::new_http(anvil.url().parse().unwrap());
    provider
        .raw_request::<_, Value>("anvil_reorg".into(), json!([3, []]))
        .await
        .unwrap();
    let chain = AlloyChainClient::new(anvil.url()).unwrap();
    assert!(
        chain.receipt(first.hash).await.unwrap().is_none(),
        "dropped"
    );

    let h = Harness::new(anvil.url(), &backend).await;
    assert_eq!(h.record("restarted").await.status, TxStatus::Confirmed);
    let finality = h.finality(3);
    let policy = h.policy(quick_policy(), Some(finality.view())).await;
    let stats = policy.stats();
    let _policy = policy.spawn();
    wait_until("the rollback after restart", || {
        finality.stats().reorgs.load(Ordering::SeqCst) >= 1
    })
    .await;
    h.wait_status(
        "restarted",
        TxStatus::Confirmed,
        Some(Duration::from_millis(300)),
    )
    .await;
    let second = h
        .receipt_eventually(first.hash, "the block that mined it again")
        .await;
    assert_ne!(second.block_hash, first.block_hash);
    assert!(
        stats.rebroadcasts.load(Ordering::SeqCst) >= 1,
        "re-broadcast"
    );
    let stored = h
        .store
        .stored_receipts(h.key.address(), 0, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].2, second, "the new receipt replaced the old one");
    assert_eq!(h.record("restarted").await.attempts.len(), 1);
    h.shut_down().await;
}
