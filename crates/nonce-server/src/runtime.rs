//! The ownership loop and the per-signer runtimes.
//!
//! Every [`NodeConfig::tick`] a node writes its heartbeat, reads the live nodes into the
//! ring, and for each signer it has a key for:
//!
//! - the ring gives it to this node and this node does not hold it: take the lease
//!   (`LeaseManager::acquire`; refused while another holder's lease is live, e.g. the
//!   dead owner's, until it expires) and start the signer's runtime;
//! - this node holds it but the ring gives it to another node: release the lease, so the
//!   new owner takes it at its next tick;
//! - the runtime's allocator stopped (lease lost, fenced): drop the runtime.
//!
//! A runtime is nonce-manager's allocator, submitter, finality, policy loop and reconciler
//! for one signer, all fenced by the one lease.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use alloy_primitives::Address;
use ledger_lease::{Clock, HolderId, LeaseGuard, LeaseManager, LeaseManagerConfig, LeaseStore};
use nonce_manager::allocator::{Allocator, AllocatorConfig};
use nonce_manager::cache::NonceCache;
use nonce_manager::chain::ChainClient;
use nonce_manager::finality::{Finality, FinalityConfig};
use nonce_manager::policy::{PolicyConfig, PolicyLoop};
use nonce_manager::reconcile::{ReconcileConfig, Reconciler};
use nonce_manager::signer::LocalKey;
use nonce_manager::store::NonceStore;
use nonce_manager::submit::Submitter;
use nonce_manager::{signer_resource, SubmitError};
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::db::{Db, MemberRow};
use crate::membership::{Member, Ring};

/// One signer held by this node.
#[derive(Debug)]
pub struct SignerRuntime {
    guard: tokio::sync::Mutex<Option<LeaseGuard>>,
    pub(crate) allocator: Arc<Allocator>,
    pub(crate) submitter: Submitter,
    pub(crate) reconciler: Arc<Reconciler>,
    _finality: Finality,
    tasks: Vec<JoinHandle<()>>,
}

impl SignerRuntime {
    /// False once the lease is lost or a write was fenced.
    pub fn is_active(&self) -> bool {
        !self.allocator.is_stopped() && self.allocator.token().is_some()
    }

    /// Stops the background loops and hands the lease back at once. In-flight requests
    /// holding this runtime see "lease lost" and are re-routed.
    async fn release(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(guard) = self.guard.lock().await.take() {
            if let Err(error) = guard.release().await {
                tracing::warn!(signer = %self.allocator.signer(), %error, "lease release failed; it lapses after its ttl");
            }
        }
    }
}

impl Drop for SignerRuntime {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What every part of a node shares.
#[derive(Debug)]
pub struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) me: Member,
    pub(crate) store: Arc<dyn NonceStore>,
    pub(crate) leases: Arc<dyn LeaseStore>,
    pub(crate) db: Db,
    pub(crate) chain: Arc<dyn ChainClient>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) keys: HashMap<Address, LocalKey>,
    pub(crate) cache: Option<Arc<dyn NonceCache>>,
    pub(crate) held: RwLock<HashMap<Address, Arc<SignerRuntime>>>,
    pub(crate) ring: RwLock<Arc<Ring>>,
}

impl Shared {
    /// The runtime of `signer` while this node holds it.
    pub fn held(&self, signer: Address) -> Option<Arc<SignerRuntime>> {
        let held = self
            .held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.get(&signer)
            .filter(|runtime| runtime.is_active())
            .cloned()
    }

    /// The ring as of the last tick.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn member_row(&self) -> MemberRow {
        MemberRow {
            node_id: self.me.node_id.clone(),
            instance: self.me.instance.clone(),
            address: self.me.address.clone(),
        }
    }

    /// One tick: heartbeat, ring, leases.
    pub(crate) async fn tick(&self) {
        let now = self.clock.now();
        if let Err(error) = self.db.beat(&self.member_row(), now).await {
            tracing::warn!(%error, "heartbeat failed");
        }
        let since = now.saturating_sub(self.config.lease_ttl);
        match self.db.live_members(since).await {
            Ok(rows) => {
                let ring = Ring::new(rows.into_iter().map(|row| Member {
                    node_id: row.node_id,
                    instance: row.instance,
                    address: row.address,
                }));
                metrics::gauge!("nonce_server_live_nodes").set(ring.len() as f64);
                *self
                    .ring
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring);
            }
            Err(error) => tracing::warn!(%error, "reading live nodes failed"),
        }
        let ring = self.ring();
        let mut signers: Vec<Address> = self.keys.keys().copied().collect();
        signers.sort();
        for signer in signers {
            let owned = ring
                .owner(signer)
                .is_some_and(|owner| owner.node_id == self.me.node_id);
            let current = self
                .held
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&signer)
                .cloned();
            match current {
                Some(runtime) if !runtime.is_active() => {
                    tracing::warn!(%signer, "signer lost; dropping its runtime");
                    self.remove(signer);
                }
                Some(_) if !owned => {
                    tracing::info!(%signer, "the ring moved the signer away; releasing it");
                    if let Some(runtime) = self.remove(signer) {
                        runtime.release().await;
                    }
                }
                Some(_) => {}
                None if owned => {
                    if let Err(error) = self.take(signer).await {
                        tracing::warn!(%signer, %error, "taking the signer failed");
                    }
                }
                None => {}
            }
        }
        let count = self
            .held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        metrics::gauge!("nonce_server_signers_held").set(count as f64);
    }

    fn remove(&self, signer: Address) -> Option<Arc<SignerRuntime>> {
        self.held
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&signer)
    }

    /// Acquires the signer's lease if it is free and starts its runtime.
    async fn take(&self, signer: Address) -> Result<(), SubmitError> {
        let Some(key) = self.keys.get(&signer).cloned() else {
            return Ok(());
        };
        let holder =
            HolderId::new(self.me.instance.clone()).map_err(nonce_manager::StoreError::from)?;
        let guard = LeaseManager::acquire(
            self.leases.clone(),
            &signer_resource(signer),
            &holder,
            LeaseManagerConfig::new(self.config.lease_ttl),
        )
        .await
        .map_err(nonce_manager::StoreError::from)?;
        let Some(guard) = guard else {
            tracing::debug!(%signer, "lease held elsewhere; waiting for it to lapse");
            return Ok(());
        };
        let token = guard.lease().map(|lease| lease.token);
        match self.start_runtime(key, guard).await {
            Ok(runtime) => {
                tracing::info!(%signer, ?token, "took the signer");
                metrics::counter!("nonce_server_takeovers_total").increment(1);
                self.held
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(signer, Arc::new(runtime));
                Ok(())
            }
            Err((error, guard)) => {
                if let Err(release) = guard.release().await {
                    tracing::warn!(%signer, error = %release, "lease release failed");
                }
                Err(error)
            }
        }
    }

    async fn start_runtime(
        &self,
        key: LocalKey,
        guard: LeaseGuard,
    ) -> Result<SignerRuntime, (SubmitError, LeaseGuard)> {
        let signer = key.address();
        let allocator = match Allocator::start_with_cache(
            self.store.clone(),
            self.chain.clone(),
            signer,
            guard.subscribe(),
            AllocatorConfig::default(),
            self.cache.clone(),
        ) {
            Ok(allocator) => Arc::new(allocator),
            Err(error) => return Err((error.into(), guard)),
        };
        let built = async {
            let submitter = Submitter::new(
                self.store.clone(),
                allocator.clone(),
                self.chain.clone(),
                key.clone(),
                self.clock.clone(),
            )
            .await?;
            let finality = Finality::start(
                self.store.clone(),
                self.chain.clone(),
                allocator.clone(),
                FinalityConfig {
                    confirmations: self.config.confirmations,
                    poll_interval: self.config.finality_poll,
                    ..FinalityConfig::default()
                },
            );
            let policy = Arc::new(
                PolicyLoop::new(
                    self.store.clone(),
                    self.chain.clone(),
                    allocator.clone(),
                    key.clone(),
                    self.clock.clone(),
                    PolicyConfig {
                        resubmit_after: self.config.resubmit_after,
                        ..PolicyConfig::default()
                    },
                    Some(finality.view()),
                )
                .await?,
            );
            let reconciler = Arc::new(
                Reconciler::new(
                    self.store.clone(),
                    self.chain.clone(),
                    allocator.clone(),
                    key,
                    self.clock.clone(),
                    ReconcileConfig::default(),
                )
                .await?,
            );
            Ok::<_, SubmitError>((submitter, finality, policy, reconciler))
        };
        match built.await {
            Ok((submitter, finality, policy, reconciler)) => {
                let tasks = vec![policy.spawn(), reconciler.clone().spawn()];
                Ok(SignerRuntime {
                    guard: tokio::sync::Mutex::new(Some(guard)),
                    allocator,
                    submitter,
                    reconciler,
                    _finality: finality,
                    tasks,
                })
            }
            Err(error) => Err((error, guard)),
        }
    }

    /// Stops every runtime and releases its lease, then leaves the ring.
    pub(crate) async fn stop(&self) {
        let runtimes: Vec<Arc<SignerRuntime>> = self
            .held
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, runtime)| runtime)
            .collect();
        for runtime in runtimes {
            runtime.release().await;
        }
        if let Err(error) = self.db.leave(&self.member_row()).await {
            tracing::warn!(%error, "leaving the ring failed; the heartbeat lapses instead");
        }
    }
}

/// Runs [`Shared::tick`] every tick until `stop` fires.
pub(crate) fn spawn_loop(
    shared: Arc<Shared>,
    tick: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => shared.tick().await,
                _ = stop.changed() => return,
            }
        }
    })
}
