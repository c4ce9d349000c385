//! One node's stack for the dev signer on either store backend: store, held lease, allocator
//! and submitter, against a real chain. The tests that drive a chain build their harnesses
//! on it and run on SQLite and on PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::B256;

use ledger_lease::{
    HolderId, LeaseGuard, LeaseManager, LeaseManagerConfig, LeaseStore, SystemClock,
};
use nonce_manager::allocator::{Allocator, AllocatorConfig};
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::chain::{ChainClient, ReceiptSummary};
use nonce_manager::signer::LocalKey;
use nonce_manager::signer_resource;
use nonce_manager::store::NonceStore;
use nonce_manager::submit::Submitter;

use super::anvil::DEV_KEY_0;
use super::Backend;

/// How long a stack helper waits for the chain before it gives up.
const WAIT: Duration = Duration::from_secs(30);

pub struct Stack {
    pub url: String,
    pub store: Arc<dyn NonceStore>,
    pub leases: Arc<dyn LeaseStore>,
    pub chain: Arc<dyn ChainClient>,
    pub allocator: Arc<Allocator>,
    pub submitter: Submitter,
    pub key: LocalKey,
    pub clock: Arc<SystemClock>,
    /// The signer's lease as node-a (taken by [`Stack::shut_down`]).
    pub guard: Option<LeaseGuard>,
}

impl Stack {
    /// A node on `backend`'s database (another call opens another node on the same one, as
    /// a restarted process would).
    pub async fn on(url: &str, backend: &Backend) -> Self {
        let clock = Arc::new(SystemClock);
        let node = backend.node(clock.clone()).await;
        Self::with(url, node.store, node.leases, clock).await
    }

    async fn with(
        url: &str,
        store: Arc<dyn NonceStore>,
        leases: Arc<dyn LeaseStore>,
        clock: Arc<SystemClock>,
    ) -> Self {
        let chain: Arc<dyn ChainClient> = Arc::new(AlloyChainClient::new(url).unwrap());
        let key = LocalKey::from_hex(DEV_KEY_0).unwrap();
        let guard = LeaseManager::acquire(
            leases.clone(),
            &signer_resource(key.address()),
            &HolderId::new("node-a").unwrap(),
            LeaseManagerConfig::new(Duration::from_secs(30)),
        )
        .await
        .unwrap()
        .expect("the lease is free");
        let allocator = Arc::new(
            Allocator::start(
                store.clone(),
                chain.clone(),
                key.address(),
                guard.subscribe(),
                AllocatorConfig::default(),
            )
            .unwrap(),
        );
        let submitter = Submitter::new(
            store.clone(),
            allocator.clone(),
            chain.clone(),
            key.clone(),
            clock.clone(),
        )
        .await
        .unwrap();
        Self {
            url: url.to_owned(),
            store,
            leases,
            chain,
            allocator,
            submitter,
            key,
            clock,
            guard: Some(guard),
        }
    }

    /// Polls until the node returns a receipt for `hash`: an automining node answers the
    /// send before the block is written, and nothing orders its nonce count before its
    /// receipts, so one read right after either can still miss it.
    pub async fn receipt_eventually(&self, hash: B256, what: &str) -> ReceiptSummary {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(receipt) = self.chain.receipt(hash).await.unwrap() {
                return receipt;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: receipt of {hash}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops this node cleanly: releases the signer's lease for the next one.
    pub async fn shut_down(mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release().await.unwrap();
        }
    }
}
