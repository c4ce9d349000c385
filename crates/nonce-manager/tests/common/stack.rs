//! One node's stack for the dev signer on a SQLite file: store, held lease, allocator and
//! submitter, against a real chain. The tests that drive a chain build their harnesses on it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ledger_lease::{
    HolderId, LeaseGuard, LeaseManager, LeaseManagerConfig, LeaseStore, SystemClock,
};
use nonce_manager::allocator::{Allocator, AllocatorConfig};
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::chain::ChainClient;
use nonce_manager::signer::LocalKey;
use nonce_manager::signer_resource;
use nonce_manager::store::sqlite::SqliteNonceStore;
use nonce_manager::store::NonceStore;
use nonce_manager::submit::Submitter;

use super::anvil::DEV_KEY_0;

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
    /// A node on the database file at `path` (kept by the caller, for restarts).
    pub async fn sqlite(url: &str, path: &Path) -> Self {
        let clock = Arc::new(SystemClock);
        let (store, leases) = SqliteNonceStore::connect(path, clock.clone())
            .await
            .unwrap();
        let store: Arc<dyn NonceStore> = Arc::new(store);
        let leases: Arc<dyn LeaseStore> = Arc::new(leases);
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

    /// Stops this node cleanly: releases the signer's lease for the next one.
    pub async fn shut_down(mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release().await.unwrap();
        }
    }
}
