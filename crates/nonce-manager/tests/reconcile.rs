//! Reconciliation against a real anvil (npm @foundry-rs/anvil; skipped when not installed
//! unless TAKHIN_REQUIRE_ALL_CLIENTS=1): another wallet spends from the same key, bypassing
//! the manager -> drift detected, alert raised, our record failed, the next allocation
//! skips ahead; an abandoned nonce blocks a later one -> the gap is filled with a
//! zero-value self-transfer and the later nonce mines. Every case runs on SQLite and on
//! PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use alloy_network::Ethereum;
use alloy_primitives::{Address, Bytes, U256};
use alloy_provider::{Provider, RootProvider};
use nonce_manager::reconcile::{ReconcileConfig, Reconciler};
use nonce_manager::signer::LocalKey;
use nonce_manager::submit::SubmitRequest;
use nonce_manager::view::{signer_view, DriftSource};
use nonce_manager::{RequestId, TxPayload, TxStatus};

use common::anvil::Anvil;
use common::stack::Stack;
use common::Backend;

on_both_backends!(
    foreign_wallet_drift_is_detected_and_allocation_skips_ahead,
    abandoned_nonce_gap_is_filled_so_later_nonces_mine,
    externally_signed_transactions_are_reported_tracked_and_not_drift,
);

/// How long a test waits for the node before it gives up.
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
    async fn new(url: &str, backend: &Backend) -> Self {
        Self {
            stack: Stack::on(url, backend).await,
        }
    }

    async fn reconciler(&self, config: ReconcileConfig) -> Reconciler {
        Reconciler::new(
            self.store.clone(),
            self.chain.clone(),
            self.allocator.clone(),
            self.key.clone(),
            self.clock.clone(),
            config,
        )
        .await
        .unwrap()
    }

    fn payload(n: u64) -> TxPayload {
        TxPayload {
            to: Address::repeat_byte(0x42),
            value: U256::from(n + 1),
            data: Bytes::new(),
            gas_limit: 21_000,
            max_fee_per_gas: 20_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
        }
    }

    async fn submit(&self, id: &str, n: u64) -> nonce_manager::ManagedTransaction {
        self.submitter
            .submit(SubmitRequest {
                request_id: RequestId::new(id).unwrap(),
                signer: self.key.address(),
                payload: Self::payload(n),
            })
            .await
            .unwrap()
    }

    /// Another wallet with the same key: signs and sends through alloy, no manager.
    async fn foreign_send(&self, nonce: u64) {
        let signed = self
            .key
            .sign(31337, nonce, &Self::payload(1000 + nonce))
            .unwrap();
        let provider = RootProvider::<Ethereum>::new_http(self.url.parse().unwrap());
        let _pending = provider.send_raw_transaction(&signed.raw).await.unwrap();
    }

    async fn wait_latest(&self, at_least: u64) {
        let deadline = Instant::now() + WAIT;
        while self.chain.latest_nonce(self.key.address()).await.unwrap() < at_least {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the signer's latest nonce to reach {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn foreign_wallet_drift_is_detected_and_allocation_skips_ahead(backend: Backend) {
    let Some(anvil) = test_support::skip_unless_required("reconcile_drift", Anvil::start(None))
    else {
        return;
    };
    let started = Instant::now();
    let h = Harness::new(anvil.url(), &backend).await;
    let signer = h.key.address();
    let reconciler = h.reconciler(ReconcileConfig::default()).await;

    for n in 0..2 {
        let record = h.submit(&format!("ours-{n}"), n).await;
        assert_eq!((record.nonce, record.status), (n, TxStatus::Tracking));
    }
    h.wait_latest(2).await;
    let clean = reconciler.run_once().await.unwrap();
    assert!(!clean.drift, "{clean:?}");
    assert!(!reconciler.drift_alert());

    // Our allocation at nonce 2 (not yet signed) and, meanwhile, another wallet spends
    // nonces 2 and 3 from the same key.
    let taken = h
        .allocator
        .allocate(RequestId::new("taken").unwrap(), Harness::payload(2))
        .await
        .unwrap();
    assert_eq!(taken.nonce, 2);
    h.foreign_send(2).await;
    h.foreign_send(3).await;
    h.wait_latest(4).await;

    let report = reconciler.run_once().await.unwrap();
    assert!(report.drift, "{report:?}");
    assert_eq!(report.latest_nonce, 4);
    assert_eq!(report.store_next, Some(3));
    assert_eq!(report.foreign, vec![(RequestId::new("taken").unwrap(), 2)]);
    assert_eq!(report.floor_raised_to, Some(4));
    assert!(report.gaps_filled.is_empty());
    assert!(reconciler.drift_alert());
    assert_eq!(
        reconciler
            .stats()
            .foreign
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let failed = h
        .store
        .transaction(&RequestId::new("taken").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, TxStatus::Failed);

    let stats = reconciler.stats();
    let view = signer_view(
        h.store.as_ref(),
        h.leases.as_ref(),
        Some(h.chain.as_ref()),
        Some(DriftSource {
            stats: &stats,
            hold: ReconcileConfig::default().alert_hold,
        }),
        signer,
    )
    .await
    .unwrap();
    assert_eq!(view.next_nonce, 4);
    assert!(view.drift_alert);
    assert_eq!(view.lease_holder.as_deref(), Some("node-a"));
    assert!(view.fencing_token.is_some());
    assert_eq!(view.in_flight, 2, "{view:?}"); // ours-0/1 stay Tracking without finality

    // The very next allocation skips past the foreign nonces (without reconciliation the
    // allocator's cache said 3 and its chain read was under a second old: it would have
    // handed out 3, which the chain already has).
    let after = h.submit("after-drift", 4).await;
    assert_eq!(after.nonce, 4);
    assert_eq!(after.status, TxStatus::Tracking);
    h.wait_latest(5).await;
    let receipt = h
        .receipt_eventually(after.attempts[0].hash, "after-drift mined")
        .await;
    assert!(receipt.success);
    eprintln!("drift: {:?}", started.elapsed());
}

async fn abandoned_nonce_gap_is_filled_so_later_nonces_mine(backend: Backend) {
    let Some(anvil) = test_support::skip_unless_required("reconcile_gap", Anvil::start(None))
    else {
        return;
    };
    let started = Instant::now();
    let h = Harness::new(anvil.url(), &backend).await;
    let signer = h.key.address();
    let reconciler = h
        .reconciler(ReconcileConfig {
            abandon_after: Duration::ZERO,
            ..ReconcileConfig::default()
        })
        .await;

    // Nonce 0 allocated and never signed (the caller went away); nonce 1 sent, stuck
    // behind the gap.
    let abandoned = h
        .allocator
        .allocate(RequestId::new("abandoned").unwrap(), Harness::payload(0))
        .await
        .unwrap();
    assert_eq!(abandoned.nonce, 0);
    let later = h.submit("later", 1).await;
    assert_eq!((later.nonce, later.status), (1, TxStatus::Tracking));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.chain.latest_nonce(signer).await.unwrap(), 0);

    let report = reconciler.run_once().await.unwrap();
    assert!(!report.drift, "{report:?}");
    assert_eq!(
        report.abandoned,
        vec![(RequestId::new("abandoned").unwrap(), 0)]
    );
    assert_eq!(report.gaps_filled.len(), 1, "{report:?}");
    let (gap, filler) = report.gaps_filled[0];
    assert_eq!(gap, 0);
    h.wait_latest(2).await;
    let filler_receipt = h.receipt_eventually(filler, "the gap filler mined").await;
    assert!(filler_receipt.success);
    let later_receipt = h
        .receipt_eventually(later.attempts[0].hash, "the later nonce mined")
        .await;
    assert!(later_receipt.success);
    // The filler was stored on the abandoned record before it was sent.
    let record = h
        .store
        .transaction(&RequestId::new("abandoned").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, TxStatus::Failed);
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(record.attempts[0].hash, filler);
    // Nothing left to do.
    let again = reconciler.run_once().await.unwrap();
    assert!(
        again.gaps_filled.is_empty() && again.abandoned.is_empty(),
        "{again:?}"
    );
    eprintln!("gap: {:?}", started.elapsed());
}

/// Anvil's dev account 1 (a published test key): somebody who is not the signer.
const OTHER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

async fn externally_signed_transactions_are_reported_tracked_and_not_drift(backend: Backend) {
    let Some(anvil) = test_support::skip_unless_required("reconcile_external", Anvil::start(None))
    else {
        return;
    };
    let h = Harness::new(anvil.url(), &backend).await;
    let reconciler = h.reconciler(ReconcileConfig::default()).await;
    let id = |s: &str| RequestId::new(s).unwrap();
    let external = |s: &'static str| {
        let allocator = h.allocator.clone();
        async move {
            allocator
                .allocate(RequestId::new(s).unwrap(), TxPayload::external())
                .await
                .unwrap()
                .nonce
        }
    };
    let stored = |s: &'static str| {
        let store = h.store.clone();
        async move {
            store
                .transaction(&RequestId::new(s).unwrap())
                .await
                .unwrap()
                .unwrap()
        }
    };

    // Reported with broadcast: the manager sends the caller's bytes and tracks them.
    assert_eq!(external("ext-0").await, 0);
    let signed = h.key.sign(31337, 0, &Harness::payload(0)).unwrap();
    let record = h
        .submitter
        .report_signed(&id("ext-0"), &signed.raw, true)
        .await
        .unwrap();
    assert_eq!(record.status, TxStatus::Tracking);
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(record.attempts[0].hash, signed.hash);
    h.wait_latest(1).await;
    h.receipt_eventually(signed.hash, "the reported ext-0 mined")
        .await;

    // Bad reports: refused with a clear error, the record untouched.
    let wrong_nonce = h.key.sign(31337, 7, &Harness::payload(0)).unwrap();
    let other = LocalKey::from_hex(OTHER_KEY).unwrap();
    let wrong_signer = other.sign(31337, 0, &Harness::payload(0)).unwrap();
    let wrong_chain = h.key.sign(1, 0, &Harness::payload(0)).unwrap();
    for (raw, expected) in [
        (wrong_nonce.raw.clone(), "nonce 7"),
        (wrong_signer.raw.clone(), "signed by"),
        (wrong_chain.raw.clone(), "chain 1"),
        (vec![0x02, 0x01, 0x02], "not an EIP-2718"),
        (Vec::new(), "empty"),
    ] {
        let error = h
            .submitter
            .report_signed(&id("ext-0"), &raw, true)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{expected}: {error}");
    }
    assert_eq!(stored("ext-0").await.attempts.len(), 1);
    let ours = h.submit("ours-1", 1).await;
    assert_eq!(ours.nonce, 1);
    let error = h
        .submitter
        .report_signed(&id("ours-1"), &signed.raw, false)
        .await
        .unwrap_err();
    assert!(
        matches!(error, nonce_manager::SubmitError::Precondition(_)),
        "{error:?}"
    );
    assert!(h
        .submitter
        .report_signed(&id("missing"), &signed.raw, false)
        .await
        .is_err());
    h.wait_latest(2).await;

    // Sent by the caller, not reported yet: its use of the nonce is not drift, and the
    // record waits (Pending) for the report; a late report (without broadcast) is taken,
    // and taken again idempotently.
    assert_eq!(external("ext-2").await, 2);
    let own_send = h.key.sign(31337, 2, &Harness::payload(2)).unwrap();
    let provider = RootProvider::<Ethereum>::new_http(h.url.parse().unwrap());
    let _pending = provider.send_raw_transaction(&own_send.raw).await.unwrap();
    h.wait_latest(3).await;
    let report = reconciler.run_once().await.unwrap();
    assert!(!report.drift, "{report:?}");
    assert!(
        report.foreign.is_empty() && report.unreported.is_empty(),
        "{report:?}"
    );
    assert!(!reconciler.drift_alert());
    assert_eq!(stored("ext-2").await.status, TxStatus::Pending);
    let late = h
        .submitter
        .report_signed(&id("ext-2"), &own_send.raw, false)
        .await
        .unwrap();
    assert_eq!(late.status, TxStatus::Tracking);
    let again = h
        .submitter
        .report_signed(&id("ext-2"), &own_send.raw, true)
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.attempts.len()),
        (TxStatus::Tracking, 1)
    );

    // The policy loop never re-signs an external allocation.
    let policy = nonce_manager::policy::PolicyLoop::new(
        h.store.clone(),
        h.chain.clone(),
        h.allocator.clone(),
        h.key.clone(),
        h.clock.clone(),
        nonce_manager::policy::PolicyConfig::default(),
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        policy.bump(&again).await,
        Err(nonce_manager::SubmitError::Precondition(_))
    ));

    // Never reported within the window: closed as Failed, still not drift.
    assert_eq!(external("ext-3").await, 3);
    let unreported = h.key.sign(31337, 3, &Harness::payload(3)).unwrap();
    let _pending = provider
        .send_raw_transaction(&unreported.raw)
        .await
        .unwrap();
    h.wait_latest(4).await;
    let closing = h
        .reconciler(ReconcileConfig {
            abandon_after: Duration::ZERO,
            ..ReconcileConfig::default()
        })
        .await;
    let report = closing.run_once().await.unwrap();
    assert!(!report.drift, "{report:?}");
    assert_eq!(report.unreported, vec![(id("ext-3"), 3)]);
    assert!(report.gaps_filled.is_empty(), "{report:?}");
    assert_eq!(stored("ext-3").await.status, TxStatus::Failed);
    let error = h
        .submitter
        .report_signed(&id("ext-3"), &unreported.raw, false)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is failed"), "{error}");
}
