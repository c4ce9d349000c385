//! The client: [`UtxoClientService`] (the seed's four operations) and [`UtxoClient`], which
//! wires the notifier, the batch processor, the sync coordinator, the breaker, the retry
//! policy and the health monitor together and runs the two background tasks.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use wes_store::BlockRepository;
use wes_utxo::model::Address;
use wes_utxo::pb;

use crate::batch::BatchProcessor;
use crate::breaker::BreakerState;
use crate::config::ClientConfig;
use crate::coordinator::{Applier, Source, SyncCoordinator, SyncReport};
use crate::error::{ClientError, Result};
use crate::health::{HealthMonitor, SyncStatus};
use crate::metrics::{Stats, StatsSnapshot};
use crate::notifier::{Notifier, NotifyOutcome};
use crate::repository::BlockSource;
use crate::system::{Tip, UtxoSystem};

/// The UTXO client service of seed 000.
pub trait UtxoClientService: Send + Sync {
    /// NotifyBlockAdded: `block` is in the repository; tell the UTXO system, asynchronously.
    fn notify_block_added(
        &self,
        block: &pb::Block,
    ) -> impl Future<Output = Result<NotifyOutcome>> + Send;
    /// ComputeAccountNonce of `address`, from the UTXO system.
    fn compute_account_nonce(&self, address: &Address) -> impl Future<Output = Result<u64>> + Send;
    /// GetUTXOsByAddress: the live records of `address`, from the UTXO system.
    fn get_utxos_by_address(
        &self,
        address: &Address,
    ) -> impl Future<Output = Result<Vec<pb::Utxo>>> + Send;
    /// GetSyncStatus: tips, lag, queue, breaker, health.
    fn get_sync_status(&self) -> impl Future<Output = Result<SyncStatus>> + Send;
}

/// The client (see the module docs). Start it inside a tokio runtime.
pub struct UtxoClient<S> {
    applier: Arc<Applier<S>>,
    notifier: Notifier,
    wake: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<S: UtxoSystem> UtxoClient<S> {
    /// Starts the client over `repository` and `system`: the batch processor and the sync
    /// coordinator, whose first run replays whatever the repository holds beyond the UTXO
    /// tip (notifications a previous process did not deliver).
    pub fn start(
        config: ClientConfig,
        repository: Arc<BlockRepository>,
        system: Arc<S>,
    ) -> Result<Self> {
        config.validate()?;
        let stats = Arc::new(Stats::default());
        let health = Arc::new(HealthMonitor::new(
            config.degraded_lag,
            config.unhealthy_lag,
        ));
        let wake = Arc::new(Notify::new());
        let (notifier, receiver) = Notifier::new(
            config.queue_capacity,
            config.notify_timeout,
            stats.clone(),
            wake.clone(),
        );
        let applier = Arc::new(Applier::new(
            system,
            BlockSource::new(repository),
            config,
            stats,
            health,
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let processor = BatchProcessor {
            applier: applier.clone(),
            receiver,
            shutdown: shutdown_rx.clone(),
        };
        let coordinator = SyncCoordinator {
            applier: applier.clone(),
            wake: wake.clone(),
            shutdown: shutdown_rx,
        };
        let tasks = vec![
            tokio::spawn(processor.run()),
            tokio::spawn(coordinator.run()),
        ];
        Ok(Self {
            applier,
            notifier,
            wake,
            shutdown,
            tasks: Mutex::new(tasks),
        })
    }

    /// Appends `block` to the repository (the commit: block and pending notification in one
    /// append) and notifies. Blocks the calling thread for the append (and its fdatasync if
    /// the repository syncs).
    pub async fn append_block(&self, block: &pb::Block) -> Result<(Tip, NotifyOutcome)> {
        let tip = self.applier.source.append(block)?;
        Ok((tip, self.notifier.notify(tip).await?))
    }

    /// Notifies that the block at `tip` is in the repository.
    pub async fn notify(&self, tip: Tip) -> Result<NotifyOutcome> {
        self.notifier.notify(tip).await
    }

    /// Runs the gap check now (as the coordinator does) and waits for it.
    pub async fn sync_now(&self) -> Result<SyncReport> {
        self.applier.sync_to(u64::MAX, Source::Coordinator).await
    }

    /// Wakes the coordinator without waiting.
    pub fn wake_coordinator(&self) {
        self.wake.notify_one();
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.applier.breaker.state()
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.applier.stats.snapshot()
    }

    /// The status from what the client last saw, without calling the UTXO system.
    pub fn status(&self) -> Result<SyncStatus> {
        let repository_tip = self.applier.source.tip()?;
        Ok(self.applier.health.status(
            repository_tip,
            self.applier.breaker.state(),
            self.notifier.depth(),
            self.notifier.capacity(),
            self.applier.stats.snapshot(),
        ))
    }

    /// Stops the background tasks and waits for them. Queued events are dropped, which
    /// loses nothing: the next client's coordinator replays them from the repository.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl<S> Drop for UtxoClient<S> {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.lock().iter() {
            task.abort();
        }
    }
}

impl<S: UtxoSystem> UtxoClientService for UtxoClient<S> {
    async fn notify_block_added(&self, block: &pb::Block) -> Result<NotifyOutcome> {
        let tip =
            Tip::of(block).ok_or_else(|| ClientError::Block("block without a header".into()))?;
        self.notifier.notify(tip).await
    }

    async fn compute_account_nonce(&self, address: &Address) -> Result<u64> {
        let system = &self.applier.system;
        self.applier.call_once(system.account_nonce(*address)).await
    }

    async fn get_utxos_by_address(&self, address: &Address) -> Result<Vec<pb::Utxo>> {
        let system = &self.applier.system;
        self.applier
            .call_once(system.utxos_by_address(*address))
            .await
    }

    /// Reads the UTXO tip live (one guarded call, no retry); if that fails, reports the last
    /// known tip with the failure.
    async fn get_sync_status(&self) -> Result<SyncStatus> {
        let system = &self.applier.system;
        match self.applier.call_once(system.tip()).await {
            Ok(tip) => self.applier.health.record_utxo_tip(tip),
            Err(error) => tracing::debug!(%error, "sync status: utxo tip not readable"),
        }
        self.status()
    }
}
