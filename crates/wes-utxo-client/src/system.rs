//! The UTXO system as the client sees it: the [`UtxoSystem`] trait (the seed's
//! InternalUTXOManager) and two in-process implementations, [`StoreSystem`] over
//! `wes_store::ChainStore` (redb) and [`MemorySystem`] over `wes_utxo::UtxoState`.
//!
//! **Contract of `apply_blocks`.** The blocks are consecutive by height. The system applies
//! them in order and is idempotent by height and hash: a block at or below its tip whose hash
//! is the one it applied at that height is skipped; a different hash there is
//! [`SystemError::Rejected`] (the client then reconciles with a rollback). So a retry after
//! a lost answer, or a batch that overlaps what the sync coordinator already applied, never
//! applies a block twice. A batch may be applied in part before an error; the returned or
//! re-read tip says how far it got.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use wes_store::{ChainStore, StoreError};
use wes_utxo::model::{self, Address, BlockHash};
use wes_utxo::{pb, UtxoState};

use crate::error::SystemError;

/// A chain position: height and hash of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tip {
    /// Block height.
    pub height: u64,
    /// Block hash.
    pub hash: BlockHash,
}

impl Tip {
    /// The position of `block`, if it has a header.
    pub fn of(block: &pb::Block) -> Option<Tip> {
        block.header.as_ref().map(|header| Tip {
            height: header.height,
            hash: model::block_hash(header),
        })
    }
}

/// Number of blocks up to and including `tip` (0 for an empty chain).
pub fn chain_len(tip: Option<Tip>) -> u64 {
    tip.map_or(0, |tip| tip.height + 1)
}

/// The UTXO system (see the module docs for the idempotency contract of `apply_blocks`).
pub trait UtxoSystem: Send + Sync + 'static {
    /// The system's tip (None: no block applied).
    fn tip(&self) -> impl Future<Output = Result<Option<Tip>, SystemError>> + Send;
    /// Applies consecutive blocks (skipping those it already has); returns the new tip.
    fn apply_blocks(
        &self,
        blocks: Arc<[pb::Block]>,
    ) -> impl Future<Output = Result<Option<Tip>, SystemError>> + Send;
    /// Rolls back the tip block; returns the new tip.
    fn rollback_block(&self) -> impl Future<Output = Result<Option<Tip>, SystemError>> + Send;
    /// GetUTXOsByAddress: the live records of `address`.
    fn utxos_by_address(
        &self,
        address: Address,
    ) -> impl Future<Output = Result<Vec<pb::Utxo>, SystemError>> + Send;
    /// ComputeAccountNonce of `address`.
    fn account_nonce(
        &self,
        address: Address,
    ) -> impl Future<Output = Result<u64, SystemError>> + Send;
}

fn header_of(block: &pb::Block) -> Result<Tip, SystemError> {
    Tip::of(block).ok_or_else(|| SystemError::Rejected("block without a header".to_string()))
}

/// What to do with `block` given the system's `len` and its hash at a height below it.
enum Step {
    Skip,
    Apply,
}

fn step(
    block: Tip,
    len: u64,
    hash_at: impl FnOnce(u64) -> Option<BlockHash>,
) -> Result<Step, SystemError> {
    if block.height < len {
        if hash_at(block.height) == Some(block.hash) {
            Ok(Step::Skip)
        } else {
            Err(SystemError::Rejected(format!(
                "block {} at height {} conflicts with the applied chain",
                block.hash, block.height
            )))
        }
    } else if block.height == len {
        Ok(Step::Apply)
    } else {
        Err(SystemError::Rejected(format!(
            "block at height {} leaves a gap after height {len}",
            block.height
        )))
    }
}

/// The in-memory UTXO system: `wes_utxo::UtxoState` plus the hashes of the applied blocks
/// (for the idempotency check) and a count of blocks actually applied (tests use it to prove
/// that nothing was applied twice).
pub struct MemorySystem {
    inner: Mutex<MemoryInner>,
}

struct MemoryInner {
    state: UtxoState,
    hashes: Vec<BlockHash>,
    n_applied: u64,
}

impl MemorySystem {
    /// An empty system over `state` (which must be empty).
    pub fn new(state: UtxoState) -> Self {
        Self {
            inner: Mutex::new(MemoryInner {
                state,
                hashes: Vec::new(),
                n_applied: 0,
            }),
        }
    }

    /// Runs `f` on the state (snapshots, comparisons).
    pub fn with_state<T>(&self, f: impl FnOnce(&UtxoState) -> T) -> T {
        f(&self.inner.lock().state)
    }

    /// Blocks applied so far (a skipped duplicate does not count; a rollback does not
    /// subtract).
    pub fn n_applied(&self) -> u64 {
        self.inner.lock().n_applied
    }

    fn tip_now(inner: &MemoryInner) -> Option<Tip> {
        inner.state.tip().map(|tip| Tip {
            height: tip.height,
            hash: tip.hash,
        })
    }

    fn apply_now(&self, blocks: &[pb::Block]) -> Result<Option<Tip>, SystemError> {
        let mut inner = self.inner.lock();
        for block in blocks {
            let position = header_of(block)?;
            let len = inner.hashes.len() as u64;
            let hashes = &inner.hashes;
            match step(position, len, |height| {
                usize::try_from(height)
                    .ok()
                    .and_then(|h| hashes.get(h).copied())
            })? {
                Step::Skip => {}
                Step::Apply => {
                    let hash = inner
                        .state
                        .apply_block(block)
                        .map_err(|error| SystemError::Rejected(error.to_string()))?;
                    inner.hashes.push(hash);
                    inner.n_applied += 1;
                }
            }
        }
        Ok(Self::tip_now(&inner))
    }
}

impl UtxoSystem for MemorySystem {
    async fn tip(&self) -> Result<Option<Tip>, SystemError> {
        Ok(Self::tip_now(&self.inner.lock()))
    }

    async fn apply_blocks(&self, blocks: Arc<[pb::Block]>) -> Result<Option<Tip>, SystemError> {
        self.apply_now(&blocks)
    }

    async fn rollback_block(&self) -> Result<Option<Tip>, SystemError> {
        let mut inner = self.inner.lock();
        inner
            .state
            .rollback_block()
            .map_err(|error| SystemError::Rejected(error.to_string()))?;
        inner.hashes.pop();
        Ok(Self::tip_now(&inner))
    }

    async fn utxos_by_address(&self, address: Address) -> Result<Vec<pb::Utxo>, SystemError> {
        Ok(self.inner.lock().state.utxos_by_owner(&address))
    }

    async fn account_nonce(&self, address: Address) -> Result<u64, SystemError> {
        Ok(self.inner.lock().state.compute_account_nonce(&address))
    }
}

/// The durable UTXO system: `wes_store::ChainStore` (its own block log, redb store and
/// coins cache). Calls run on tokio's blocking pool: the store does disk IO.
pub struct StoreSystem {
    store: Arc<Mutex<ChainStore>>,
}

/// How the client should treat a store error: a chain-rule answer (`Rejected`) or an
/// outage (`Unavailable`). Shared by every UTXO system hosted on `wes_store`.
pub fn store_error(error: StoreError) -> SystemError {
    match error {
        StoreError::InvalidBlock(_)
        | StoreError::State(_)
        | StoreError::NothingToRollback { .. }
        | StoreError::NotOnTip { .. } => SystemError::Rejected(error.to_string()),
        StoreError::BlockNotFound(_)
        | StoreError::Corrupt(_)
        | StoreError::Io(_)
        | StoreError::OldFormat { .. }
        | StoreError::Database(_) => SystemError::Unavailable(error.to_string()),
    }
}

fn store_tip(store: &ChainStore) -> Option<Tip> {
    store.tip().map(|tip| Tip {
        height: tip.height,
        hash: tip.hash,
    })
}

impl StoreSystem {
    /// Wraps an open store.
    pub fn new(store: ChainStore) -> Self {
        Self {
            store: Arc::new(Mutex::new(store)),
        }
    }

    /// Runs `f` on the store (snapshots, flush, comparisons).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut ChainStore) -> T) -> T {
        f(&mut self.store.lock())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ChainStore) -> Result<T, SystemError> + Send + 'static,
    ) -> Result<T, SystemError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&mut store.lock()))
            .await
            .map_err(|error| SystemError::Unavailable(format!("store task failed: {error}")))?
    }
}

impl UtxoSystem for StoreSystem {
    async fn tip(&self) -> Result<Option<Tip>, SystemError> {
        Ok(store_tip(&self.store.lock()))
    }

    async fn apply_blocks(&self, blocks: Arc<[pb::Block]>) -> Result<Option<Tip>, SystemError> {
        self.blocking(move |store| {
            for block in blocks.iter() {
                let position = header_of(block)?;
                let len = chain_len(store_tip(store));
                let repository = store.repository();
                match step(position, len, |height| {
                    repository.hash_at(height).ok().flatten()
                })? {
                    Step::Skip => {}
                    Step::Apply => {
                        if let Err(error) = store.apply_block_deferred(block) {
                            store.sync_log().map_err(store_error)?;
                            return Err(store_error(error));
                        }
                    }
                }
            }
            // One fsync for the batch. Not needed for safety (the client's repository is the
            // source of truth and a lost tail is replayed), but an acknowledged tip stays.
            store.sync_log().map_err(store_error)?;
            Ok(store_tip(store))
        })
        .await
    }

    async fn rollback_block(&self) -> Result<Option<Tip>, SystemError> {
        self.blocking(|store| {
            store.rollback_block().map_err(store_error)?;
            Ok(store_tip(store))
        })
        .await
    }

    async fn utxos_by_address(&self, address: Address) -> Result<Vec<pb::Utxo>, SystemError> {
        self.blocking(move |store| store.utxos_by_owner(&address).map_err(store_error))
            .await
    }

    async fn account_nonce(&self, address: Address) -> Result<u64, SystemError> {
        self.blocking(move |store| store.compute_account_nonce(&address).map_err(store_error))
            .await
    }
}
