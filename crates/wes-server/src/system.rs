//! [`ServedStore`]: the UTXO system the server hosts, `wes_store::ChainStore` behind a
//! read-write lock, as a [`UtxoSystem`] for the wes-utxo-client pipeline.
//!
//! Why not `wes_utxo_client::StoreSystem`: that one serializes every call on one mutex, so
//! queries would queue behind each other and behind a whole batch of applies. Here queries
//! share a read lock, and the applier takes the write lock once per block, so a query waits
//! for at most one block's apply (or flush). Queries try the read lock without blocking first
//! and only move to tokio's blocking pool when a writer holds it.
//!
//! The tip is published in a [`watch`] channel after every applied or rolled-back block:
//! SubmitBlock waits on it until the UTXO system has caught up with the repository tip.
//!
//! Idempotency is the client's contract (`wes_utxo_client::system`): a block at or below
//! the tip with the hash the store holds at that height is skipped; another hash there, or a
//! gap, is rejected.
//!
//! [`FaultInjection`] lets tests (and `takhin utxo serve --apply-delay-ms`) slow down applies
//! or take the system down, to exercise the breaker and crash recovery with blocks in flight.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;
use wes_store::{ChainStore, StoreError};
use wes_utxo::model::Address;
use wes_utxo::pb;
use wes_utxo_client::{SystemError, Tip, UtxoSystem};

/// Switches for injected faults (see the module docs). All off by default.
#[derive(Debug, Default)]
pub struct FaultInjection {
    down: AtomicBool,
    apply_delay_ms: AtomicU64,
}

impl FaultInjection {
    /// While `down`, every call of the client into the system fails as unavailable.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Every `apply_blocks` call first sleeps `delay` (zero: no delay).
    pub fn set_apply_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.apply_delay_ms.store(millis, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), SystemError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SystemError::Unavailable(
                "injected fault: utxo system down".to_string(),
            ));
        }
        Ok(())
    }

    fn apply_delay(&self) -> Option<Duration> {
        match self.apply_delay_ms.load(Ordering::SeqCst) {
            0 => None,
            millis => Some(Duration::from_millis(millis)),
        }
    }
}

/// The hosted chain store (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct ServedStore {
    store: Arc<RwLock<ChainStore>>,
    tip: Arc<watch::Sender<Option<Tip>>>,
    faults: Arc<FaultInjection>,
    n_applied: Arc<AtomicU64>,
}

fn store_tip(store: &ChainStore) -> Option<Tip> {
    store.tip().map(|tip| Tip {
        height: tip.height,
        hash: tip.hash,
    })
}

/// How the client should treat a store error (the client crate's mapping).
pub(crate) use wes_utxo_client::system::store_error as system_error;

impl ServedStore {
    /// Wraps an open store.
    pub fn new(store: ChainStore) -> Self {
        let tip = store_tip(&store);
        Self {
            store: Arc::new(RwLock::new(store)),
            tip: Arc::new(watch::Sender::new(tip)),
            faults: Arc::new(FaultInjection::default()),
            n_applied: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The fault switches.
    pub fn faults(&self) -> &Arc<FaultInjection> {
        &self.faults
    }

    /// The UTXO tip as last published.
    pub fn tip_now(&self) -> Option<Tip> {
        *self.tip.borrow()
    }

    /// A receiver of the published tip.
    pub fn subscribe_tip(&self) -> watch::Receiver<Option<Tip>> {
        self.tip.subscribe()
    }

    /// Blocks this process applied (skipped duplicates do not count).
    pub fn n_applied(&self) -> u64 {
        self.n_applied.load(Ordering::SeqCst)
    }

    /// Runs `f` on the store under the read lock: inline when the lock is free (queries are
    /// short), else on the blocking pool, so a writer never blocks a runtime thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ChainStore) -> Result<T, StoreError> + Send + 'static,
    {
        if let Some(store) = self.store.try_read() {
            return f(&store);
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store.read()))
            .await
            .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))?
    }

    /// Runs `f` on the store under the write lock (flush on shutdown).
    pub fn with_store_mut<T>(&self, f: impl FnOnce(&mut ChainStore) -> T) -> T {
        f(&mut self.store.write())
    }

    /// Applies a batch, one write lock per block. The store's own log is synced once per
    /// batch (also when a block fails): the client's repository, fsynced before the
    /// notification, is the source of truth, and a lost unsynced tail of the store's log
    /// only lowers the tip the coordinator replays from after a crash.
    fn apply_now(&self, blocks: &[pb::Block]) -> Result<Option<Tip>, SystemError> {
        let applied = self.apply_each(blocks);
        let synced = self.store.read().sync_log().map_err(system_error);
        let tip = applied?;
        synced?;
        Ok(tip)
    }

    fn apply_each(&self, blocks: &[pb::Block]) -> Result<Option<Tip>, SystemError> {
        for block in blocks {
            let position = Tip::of(block)
                .ok_or_else(|| SystemError::Rejected("block without a header".to_string()))?;
            let mut store = self.store.write();
            let len = store_tip(&store).map_or(0, |tip| tip.height + 1);
            if position.height < len {
                let held = store
                    .repository()
                    .hash_at(position.height)
                    .map_err(system_error)?;
                if held != Some(position.hash) {
                    return Err(SystemError::Rejected(format!(
                        "block {} at height {} conflicts with the applied chain",
                        position.hash, position.height
                    )));
                }
                continue;
            }
            if position.height > len {
                return Err(SystemError::Rejected(format!(
                    "block at height {} leaves a gap after height {len}",
                    position.height
                )));
            }
            store.apply_block_deferred(block).map_err(system_error)?;
            self.n_applied.fetch_add(1, Ordering::SeqCst);
            let tip = store_tip(&store);
            drop(store);
            self.tip.send_replace(tip);
        }
        Ok(self.tip_now())
    }
}

impl UtxoSystem for ServedStore {
    async fn tip(&self) -> Result<Option<Tip>, SystemError> {
        self.faults.check()?;
        Ok(self.tip_now())
    }

    async fn apply_blocks(&self, blocks: Arc<[pb::Block]>) -> Result<Option<Tip>, SystemError> {
        self.faults.check()?;
        if let Some(delay) = self.faults.apply_delay() {
            tokio::time::sleep(delay).await;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.apply_now(&blocks))
            .await
            .map_err(|error| SystemError::Unavailable(format!("apply task failed: {error}")))?
    }

    async fn rollback_block(&self) -> Result<Option<Tip>, SystemError> {
        self.faults.check()?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = this.store.write();
            store.rollback_block().map_err(system_error)?;
            let tip = store_tip(&store);
            drop(store);
            this.tip.send_replace(tip);
            Ok(tip)
        })
        .await
        .map_err(|error| SystemError::Unavailable(format!("rollback task failed: {error}")))?
    }

    async fn utxos_by_address(&self, address: Address) -> Result<Vec<pb::Utxo>, SystemError> {
        self.faults.check()?;
        self.read(move |store| store.utxos_by_owner(&address))
            .await
            .map_err(system_error)
    }

    async fn account_nonce(&self, address: Address) -> Result<u64, SystemError> {
        self.faults.check()?;
        self.read(move |store| store.compute_account_nonce(&address))
            .await
            .map_err(system_error)
    }
}
