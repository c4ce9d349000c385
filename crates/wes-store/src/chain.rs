//! [`ChainStore`]: the block repository (the log) plus the coins cache over the redb store,
//! and the protocol that keeps them consistent across crashes.
//!
//! **Apply.** Validate against the cache -> append to the repository (synced) -> apply to
//! the cache -> flush if `flush_every_blocks` blocks or `flush_max_dirty` entries are
//! pending. A block is therefore always in the log before any state that includes it is
//! flushed, and the flushed state (UTXOs, indexes, balances, nonces, undo, admissions and
//! the tip) is always exactly the state after some block. The threshold flush runs on its
//! own thread ([`CoinsCache::flush_in_background`]) while the next blocks apply; a crash
//! before its commit leaves the previous flushed state, and the log replays the rest.
//!
//! **Rollback (reorg).** Undo the tip block in the cache (undo data from memory or the
//! store), then truncate the repository at that height (synced).
//!
//! **Open (recovery).** Load the flushed tip; while it is not the repository's block at
//! that height (a crash after a truncation), roll it back with the flushed undo data; then
//! replay the repository's blocks above it, in height order. Replaying is idempotent: only
//! blocks above the flushed height are applied, and each must extend the tip by hash, so
//! no block is applied twice. Recovery ends with a flush.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use wes_utxo::model::{Address, AssetId, BlockHash, OutPointKey, TxId};
use wes_utxo::pb;
use wes_utxo::validate::{BlockEffects, ChainTip};
use wes_utxo::ChainParams;

use crate::cache::{CoinsCache, ResourceInfo, UtxoPage, UtxoPosition};
use crate::error::{Result, StoreError};
use crate::limits::StoreConfig;
use crate::repository::BlockRepository;
use crate::store::UtxoStore;

/// What [`ChainStore::open`] did to catch up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Flushed blocks rolled back because the repository no longer holds them.
    pub n_rolled_back: u64,
    /// Blocks replayed from the repository.
    pub n_replayed: u64,
}

/// The durable chain state (see the module docs).
pub struct ChainStore {
    repository: Arc<BlockRepository>,
    cache: CoinsCache,
    recovery: Recovery,
}

impl ChainStore {
    /// Opens (or creates) the chain state in `dir` and recovers it from the log.
    pub fn open(dir: &Path, params: ChainParams, config: StoreConfig) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let repository = Arc::new(BlockRepository::open(
            &dir.join("blocks.log"),
            config.sync_repository,
        )?);
        let store = UtxoStore::open(&dir.join("utxo.redb"))?;
        let cache = CoinsCache::load(store, repository.clone(), params, config)?;
        let mut chain = Self {
            repository,
            cache,
            recovery: Recovery::default(),
        };
        chain.recover()?;
        Ok(chain)
    }

    fn recover(&mut self) -> Result<()> {
        while let Some(tip) = self.cache.tip() {
            if self.repository.hash_at(tip.height)? == Some(tip.hash) {
                break;
            }
            self.cache.rollback().map_err(|error| {
                StoreError::Corrupt(format!(
                    "flushed tip {} is not in the repository and cannot be rolled back: {error}",
                    tip.height
                ))
            })?;
            self.recovery.n_rolled_back += 1;
        }
        let next = self.cache.tip().map_or(0, |tip| tip.height + 1);
        for height in next..self.repository.len()? {
            let block = self.repository.block_at(height)?;
            let effects = self.cache.validate(&block).map_err(|error| {
                StoreError::Corrupt(format!("logged block {height} does not replay: {error}"))
            })?;
            self.cache.apply(&block, effects)?;
            self.recovery.n_replayed += 1;
            if self.cache.should_flush() {
                self.cache.flush_in_background()?;
            }
        }
        self.cache.flush()
    }

    /// What the last open did to catch up.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The block repository.
    pub fn repository(&self) -> &BlockRepository {
        &self.repository
    }

    /// The coins cache (queries, admissions).
    pub fn cache(&self) -> &CoinsCache {
        &self.cache
    }

    /// Bounds the coins cache's clean balance and nonce maps (see
    /// [`crate::limits::CLEAN_ENTRIES_MAX`], the default; 0 disables them).
    pub fn set_clean_limit(&mut self, limit: usize) {
        self.cache.set_clean_limit(limit);
    }

    /// The chain parameters.
    pub fn params(&self) -> &ChainParams {
        self.cache.params()
    }

    /// The current tip.
    pub fn tip(&self) -> Option<ChainTip> {
        self.cache.tip()
    }

    /// Validates `block`, logs it, applies it; flushes when a threshold is reached.
    pub fn apply_block(&mut self, block: &pb::Block) -> Result<BlockHash> {
        let effects = self.cache.validate(block)?;
        self.apply_validated(block, effects)
    }

    /// Validates `block` on the tip without changing anything (step 1 of
    /// [`ChainStore::apply_block`]; benchmarks time the steps apart).
    pub fn validate_block(&self, block: &pb::Block) -> Result<BlockEffects> {
        self.cache.validate(block)
    }

    /// [`ChainStore::apply_block`] with the log append left unsynced: call
    /// [`ChainStore::sync_log`] before acknowledging the batch. A flush syncs the log first,
    /// so the flushed state never runs ahead of the durable log. For a batch of blocks whose
    /// source of truth is elsewhere (the UTXO client's repository), one fsync per batch.
    pub fn apply_block_deferred(&mut self, block: &pb::Block) -> Result<BlockHash> {
        let effects = self.cache.validate(block)?;
        self.check_on_tip(&effects)?;
        self.repository.append_deferred(block)?;
        let hash = self.cache.apply(block, effects)?;
        if self.cache.should_flush() {
            self.repository.sync()?;
            self.cache.flush_in_background()?;
        }
        Ok(hash)
    }

    /// Makes the deferred log appends durable.
    pub fn sync_log(&self) -> Result<()> {
        self.repository.sync()
    }

    fn check_on_tip(&self, effects: &BlockEffects) -> Result<()> {
        let tip_hash = self.tip().map_or([0u8; 32], |tip| tip.hash.0);
        if effects.header.parent_hash[..] != tip_hash[..] {
            return Err(StoreError::NotOnTip {
                height: effects.header.height,
                expected: "effects validated on the current tip".to_string(),
            });
        }
        Ok(())
    }

    /// Logs and applies a block validated on the current tip by
    /// [`ChainStore::validate_block`] (the tip must not have moved since).
    pub fn apply_validated(
        &mut self,
        block: &pb::Block,
        effects: BlockEffects,
    ) -> Result<BlockHash> {
        self.check_on_tip(&effects)?;
        self.repository.append(block)?;
        let hash = self.cache.apply(block, effects)?;
        if self.cache.should_flush() {
            self.cache.flush_in_background()?;
        }
        Ok(hash)
    }

    /// True when [`ChainStore::rollback_block`] can be repeated until `height` is the tip.
    pub fn can_roll_back_to(&self, height: u64) -> bool {
        self.cache.can_roll_back_to(height)
    }

    /// Rolls back the tip block (up to `max_undo_depth` blocks deep); returns its hash.
    pub fn rollback_block(&mut self) -> Result<BlockHash> {
        let (height, hash) = self.cache.rollback()?;
        self.repository.truncate_from(height)?;
        if self.cache.should_flush() {
            self.cache.flush()?;
        }
        Ok(hash)
    }

    /// Flushes the cache now and waits until it is durable.
    pub fn flush(&mut self) -> Result<()> {
        self.cache.flush()
    }

    /// Admits a referencing transaction (see `wes_utxo::references`).
    pub fn admit(&mut self, transaction: &pb::Transaction) -> Result<TxId> {
        self.cache.admit(transaction)
    }

    /// Drops an admission; returns whether it was held.
    pub fn drop_admission(&mut self, tx_id: &TxId) -> bool {
        self.cache.drop_admission(tx_id)
    }

    /// The live record at `outpoint`.
    pub fn utxo(&self, outpoint: &OutPointKey) -> Result<Option<pb::Utxo>> {
        self.cache.utxo(outpoint)
    }

    /// GetUTXOsByAddress: live records of `owner`, by category then outpoint.
    pub fn utxos_by_owner(&self, owner: &Address) -> Result<Vec<pb::Utxo>> {
        self.cache.utxos_by_owner(owner)
    }

    /// Live records of `owner` in `category`.
    pub fn utxos_by_owner_and_category(
        &self,
        owner: &Address,
        category: pb::UtxoCategory,
    ) -> Result<Vec<pb::Utxo>> {
        self.cache.utxos_by_owner_and_category(owner, category)
    }

    /// One page of the live records of `owner` (see [`CoinsCache::utxos_by_owner_page`]).
    pub fn utxos_by_owner_page(
        &self,
        owner: &Address,
        category: Option<pb::UtxoCategory>,
        after: Option<UtxoPosition>,
        limit: usize,
    ) -> Result<UtxoPage> {
        self.cache
            .utxos_by_owner_page(owner, category, after, limit)
    }

    /// RESOURCE records of `owner` with reference information.
    pub fn resources_by_owner(&self, owner: &Address) -> Result<Vec<ResourceInfo>> {
        self.cache.resources_by_owner(owner)
    }

    /// Balance of `owner` in `asset`.
    pub fn balance(&self, owner: &Address, asset: &AssetId) -> Result<u128> {
        self.cache.balance(owner, asset)
    }

    /// All nonzero balances of `owner`.
    pub fn balances(&self, owner: &Address) -> Result<BTreeMap<AssetId, u128>> {
        self.cache.balances(owner)
    }

    /// ComputeAccountNonce.
    pub fn compute_account_nonce(&self, owner: &Address) -> Result<u64> {
        self.cache.compute_account_nonce(owner)
    }

    /// The live set snapshot with its hash (comparable with `UtxoState::utxo_set`).
    pub fn utxo_set(&self) -> Result<pb::UtxoSet> {
        self.cache.utxo_set()
    }
}
