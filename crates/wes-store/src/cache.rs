//! The coins cache: an in-memory dirty map over the flushed [`UtxoStore`], in the manner of
//! Bitcoin Core's `CCoinsViewCache`. Blocks are validated against it (it implements
//! [`UtxoView`]) and applied to it; [`CoinsCache::flush`] writes every dirty entry, the undo
//! records of the blocks since the last flush, the reference table and the new tip in ONE
//! redb transaction, so the flushed state always sits exactly at a block boundary.
//!
//! **Background flush.** [`CoinsCache::flush_in_background`] freezes the dirty maps into an
//! immutable layer, hands it to a thread that writes it, and lets the next blocks apply to
//! new, empty maps. Reads look in the live maps, then the frozen layer, then the store;
//! the layer is dropped once the cache has seen the commit (its snapshot is renewed then).
//! A record of the frozen layer counts as on disk for the FRESH rule (spending it leaves a
//! tombstone). One flush is in flight at most; a rollback waits for it.
//!
//! The apply and rollback rules mirror `wes_utxo::UtxoState` step by step (expiry, released
//! admissions, transactions in order; undo in reverse); the model-based tests apply the same
//! chains to both and compare every query and the `utxo_set()` hash.
//!
//! **Content policy (hot/cold).** ASSET records are always hot: every transfer and balance
//! reads them. RESOURCE and STATE records whose encoded output is at most
//! `StoreConfig::hot_output_max_bytes` are hot too; larger ones are cold: the record keeps
//! `content_strategy = reference_only` plus the (height, transaction index) of the creating
//! block, and the output is read back from the block repository when a record is handed out
//! or validated. Large payloads (STATE up to 64 KiB) so stay out of the record table, whose
//! pages the owner scans read, and are not stored twice.
//!
//! **Clean balances and nonces.** Besides the dirty maps, the cache keeps the balances and
//! nonces a flush wrote (equal to the flushed store by construction, bounded by
//! [`crate::limits::CLEAN_ENTRIES_MAX`], cleared whole when full, empty after a reopen), so
//! applying a block and balance queries read redb only for owners not touched lately.
//! Validation runs `wes_utxo::validate::validate_block_parallel` (signatures on every core
//! first, then the same sequential rules).
//!
//! Differences from `UtxoState`, by design: the "consumed at height H" detail of a
//! validation error is not kept (an unknown input reports `Unknown`); admissions taken
//! after the last flush are lost by a crash (like a mempool).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use prost::Message;
use wes_utxo::error::AdmissionError;
use wes_utxo::model::{self, asset_amount, Address, AssetId, BlockHash, OutPointKey, TxId};
use wes_utxo::pb;
use wes_utxo::references::{Admission, ReferenceTable};
use wes_utxo::validate::{self, BlockContext, BlockEffects, ChainTip, UtxoView};
use wes_utxo::ChainParams;

use crate::codec::{
    self, category_byte, AdmissionRecord, ConsumedRecord, MetaRecord, ReferencesRecord,
    StoredRecord, TipRecord, TotalRecord, UndoRecord,
};
use crate::error::{Result, StoreError};
use crate::limits::StoreConfig;
use crate::repository::BlockRepository;
use crate::store::{restore_record, strip_record, FlushBatch, StoreWriter, UtxoStore, UtxoWrite};

struct Dirty {
    owner: Address,
    category: u8,
    /// Created since the last flush while the store holds nothing at this outpoint (Bitcoin
    /// Core's FRESH coins): spending it drops the entry instead of leaving a tombstone, so
    /// an output created and spent between two flushes never reaches the store.
    fresh: bool,
    /// Boxed: a record is a few hundred bytes, and the map moves its entries when it grows.
    /// Stripped as the store writes it (`store::strip_record`; [`Dirty::restored`] undoes it),
    /// so a flush encodes it without a copy, and it takes less memory meanwhile.
    record: Option<Box<StoredRecord>>,
}

impl Dirty {
    /// A copy of the record in full form.
    fn restored(&self, outpoint: &OutPointKey) -> Option<StoredRecord> {
        self.record.as_deref().map(|record| {
            let mut record = record.clone();
            restore_record(&mut record, &self.owner, outpoint);
            record
        })
    }
}

/// The dirty state as it was when a background flush began: read between the live dirty
/// maps and the store until the cache has seen that flush commit (then the store's snapshot
/// holds all of it and the layer is dropped). Immutable; the flush thread reads it too.
struct Frozen {
    utxos: HashMap<OutPointKey, Dirty>,
    live_by_owner: HashMap<Address, BTreeSet<(u8, OutPointKey)>>,
    expiry: BTreeMap<(u64, OutPointKey), bool>,
    balances: BTreeMap<(Address, AssetId), u128>,
    nonces: HashMap<Address, u64>,
}

impl Frozen {
    /// The flush's UTXO, expiry, balance and nonce writes (records are encoded from the
    /// layer, which stays readable while they are written).
    fn fill(&self, batch: &mut FlushBatch) {
        batch.utxos.reserve(self.utxos.len());
        for (outpoint, dirty) in &self.utxos {
            let record = dirty.record.as_deref().map(|record| {
                let start = batch.records.len();
                // Encoding into a Vec cannot fail (it grows as needed).
                let _ = record.encode(&mut batch.records);
                start..batch.records.len()
            });
            batch.utxos.push(UtxoWrite {
                outpoint: *outpoint,
                owner: dirty.owner,
                category: dirty.category,
                record,
            });
        }
        batch.expiry = self
            .expiry
            .iter()
            .map(|(key, present)| (*key, *present))
            .collect();
        batch.balances = self
            .balances
            .iter()
            .map(|(key, amount)| (*key, *amount))
            .collect();
        batch.nonces = self
            .nonces
            .iter()
            .map(|(owner, nonce)| (*owner, *nonce))
            .collect();
    }
}

/// A flush running on its own thread.
struct InFlight {
    frozen: Arc<Frozen>,
    /// The thread's answer: how long the write took.
    handle: std::thread::JoinHandle<Result<std::time::Duration>>,
}

/// Where a page of an owner's records ends: its last record's category and outpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtxoPosition {
    /// Category byte (1..=3).
    pub category: u8,
    /// Outpoint.
    pub outpoint: OutPointKey,
}

/// One page of [`CoinsCache::utxos_by_owner_page`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UtxoPage {
    /// The records, in (category, outpoint) order.
    pub utxos: Vec<pb::Utxo>,
    /// Set when more records follow: pass it as `after` for the next page.
    pub next: Option<UtxoPosition>,
}

fn category_prefix(
    owner: &Address,
    category: pb::UtxoCategory,
) -> Result<[u8; model::ADDRESS_LEN + 1]> {
    let mut prefix = [0u8; model::ADDRESS_LEN + 1];
    prefix[..model::ADDRESS_LEN].copy_from_slice(&owner.0);
    prefix[model::ADDRESS_LEN] = category_byte(category as i32)?;
    Ok(prefix)
}

/// A RESOURCE record with its reference information.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceInfo {
    /// The record (reference count and status filled in).
    pub utxo: pb::Utxo,
    /// Admissions holding references on it now.
    pub reference_count: u64,
    /// Its concurrency limit (0: unlimited).
    pub max_concurrent_references: u64,
    /// References ever admitted on it while live.
    pub total_reference_count: u64,
    /// Whether it may be consumed now (no reference held).
    pub consumable: bool,
}

/// What the flushes of this cache wrote and how long they took (for benchmarks and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushTotals {
    /// Flushes completed.
    pub flushes: u64,
    /// UTXO records written or deleted by them.
    pub records: u64,
    /// Time the writes took (on the flush thread, overlapping block application).
    pub time: std::time::Duration,
}

/// The dirty map over the store (see the module docs).
pub struct CoinsCache {
    store: UtxoStore,
    repository: Arc<BlockRepository>,
    params: ChainParams,
    config: StoreConfig,
    tip: Option<ChainTip>,
    undo_floor: u64,
    references: ReferenceTable,
    references_dirty: bool,
    utxos: HashMap<OutPointKey, Dirty>,
    /// Live dirty records per owner, as (category, outpoint): what an owner scan merges over
    /// the store's range. Per owner rather than one set of owner keys: an insert is a hash
    /// lookup plus a small set, not a walk of a million 57-byte keys.
    live_by_owner: HashMap<Address, BTreeSet<(u8, OutPointKey)>>,
    expiry: BTreeMap<(u64, OutPointKey), bool>,
    balances: BTreeMap<(Address, AssetId), u128>,
    nonces: HashMap<Address, u64>,
    /// Balances and nonces known to equal the flushed store (filled by flushes, bounded by
    /// `clean_limit`; cleared whole when over it). Apply and queries read them before redb.
    clean_balances: HashMap<(Address, AssetId), u128>,
    clean_nonces: HashMap<Address, u64>,
    clean_limit: usize,
    pending_undo: VecDeque<UndoRecord>,
    undo_delete: Vec<u64>,
    blocks_since_flush: u64,
    flush_totals: FlushTotals,
    /// The background flush, if one was started and its commit not yet seen.
    in_flight: Option<InFlight>,
    failed: bool,
    read_error: Mutex<Option<StoreError>>,
}

fn owner_of(utxo: &pb::Utxo) -> Result<Address> {
    Ok(Address::from_slice(&utxo.owner_address)?)
}

fn asset_of(utxo: &pb::Utxo) -> Result<Option<(AssetId, u64)>> {
    match utxo.output() {
        Some(output) => Ok(asset_amount(output)?),
        None if utxo.category == pb::UtxoCategory::Asset as i32 => Err(StoreError::Corrupt(
            "ASSET record stored without its output".to_string(),
        )),
        None => Ok(None),
    }
}

fn stored_utxo(record: &StoredRecord) -> Result<&pb::Utxo> {
    record
        .utxo
        .as_ref()
        .ok_or_else(|| StoreError::Corrupt("stored record without utxo".to_string()))
}

impl CoinsCache {
    /// The cache over `store` at its flushed tip (nothing dirty).
    pub fn load(
        store: UtxoStore,
        repository: Arc<BlockRepository>,
        params: ChainParams,
        config: StoreConfig,
    ) -> Result<Self> {
        let meta = store.meta()?;
        let tip = meta.tip.as_ref().map(TipRecord::to_tip).transpose()?;
        let mut references = ReferenceTable::default();
        let flushed = store.references()?;
        for admission in &flushed.admissions {
            references.restore(admission.to_admission()?);
        }
        for total in &flushed.totals {
            references.set_total(codec::outpoint_from(&total.outpoint)?, total.total);
        }
        Ok(Self {
            store,
            repository,
            params,
            config,
            tip,
            undo_floor: meta.undo_floor,
            references,
            references_dirty: false,
            utxos: HashMap::new(),
            live_by_owner: HashMap::new(),
            expiry: BTreeMap::new(),
            balances: BTreeMap::new(),
            nonces: HashMap::new(),
            clean_balances: HashMap::new(),
            clean_nonces: HashMap::new(),
            clean_limit: crate::limits::CLEAN_ENTRIES_MAX,
            pending_undo: VecDeque::new(),
            undo_delete: Vec::new(),
            blocks_since_flush: 0,
            flush_totals: FlushTotals::default(),
            in_flight: None,
            failed: false,
            read_error: Mutex::new(None),
        })
    }

    /// The chain parameters.
    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    /// The tip of the cached state.
    pub fn tip(&self) -> Option<ChainTip> {
        self.tip
    }

    /// The reference table.
    pub fn references(&self) -> &ReferenceTable {
        &self.references
    }

    /// Dirty UTXO entries (flush when this reaches `flush_max_dirty`).
    pub fn n_dirty(&self) -> usize {
        self.utxos.len()
    }

    /// Entries in the clean balance and nonce caches (for tests and tuning).
    pub fn n_clean(&self) -> (usize, usize) {
        (self.clean_balances.len(), self.clean_nonces.len())
    }

    /// Sets the bound of the clean balance and nonce caches (0 disables them).
    pub fn set_clean_limit(&mut self, limit: usize) {
        self.clean_limit = limit;
        if self.clean_balances.len() > limit {
            self.clean_balances.clear();
        }
        if self.clean_nonces.len() > limit {
            self.clean_nonces.clear();
        }
    }

    /// Totals over the flushes since this cache was loaded.
    pub fn flush_totals(&self) -> FlushTotals {
        self.flush_totals
    }

    /// True when the tip can be rolled back block by block until `height` is the tip:
    /// every block above `height` still has undo data (`max_undo_depth`).
    pub fn can_roll_back_to(&self, height: u64) -> bool {
        self.params.max_undo_depth > 0
            && self.tip.is_some_and(|tip| height < tip.height)
            && height + 1 >= self.undo_floor
    }

    /// Whether the flush thresholds are reached.
    pub fn should_flush(&self) -> bool {
        self.blocks_since_flush >= self.config.flush_every_blocks
            || self.utxos.len() >= self.config.flush_max_dirty
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(StoreError::Corrupt(
                "a flush failed; reopen the store to recover from the log".to_string(),
            ));
        }
        Ok(())
    }

    // ---- reads ----

    /// The layer a background flush is writing, until its commit is seen.
    fn frozen(&self) -> Option<&Frozen> {
        self.in_flight.as_ref().map(|in_flight| &*in_flight.frozen)
    }

    /// The dirty entry at `outpoint`: the live maps first, then the frozen layer.
    fn dirty(&self, outpoint: &OutPointKey) -> Option<&Dirty> {
        self.utxos
            .get(outpoint)
            .or_else(|| self.frozen().and_then(|frozen| frozen.utxos.get(outpoint)))
    }

    /// Whether a dirty entry (record or tombstone) hides what the store holds at `outpoint`.
    fn shadowed(&self, outpoint: &OutPointKey) -> bool {
        self.dirty(outpoint).is_some()
    }

    fn raw(&self, outpoint: &OutPointKey) -> Result<Option<(Address, u8, StoredRecord)>> {
        if let Some(dirty) = self.dirty(outpoint) {
            return Ok(dirty
                .restored(outpoint)
                .map(|record| (dirty.owner, dirty.category, record)));
        }
        self.store.get(outpoint)
    }

    /// The full record: a cold record gets its output back from the block repository.
    fn full(&self, record: StoredRecord) -> Result<pb::Utxo> {
        let (height, tx_index) = (record.cold_height, record.cold_tx_index);
        let mut utxo = record
            .utxo
            .ok_or_else(|| StoreError::Corrupt("stored record without utxo".to_string()))?;
        let Some(height) = height else {
            return Ok(utxo);
        };
        let outpoint = codec::record_outpoint(&utxo)?;
        let block = self.repository.block_at(height)?;
        let transaction = block
            .transactions
            .get(tx_index as usize)
            .filter(|transaction| model::tx_id(transaction) == outpoint.tx_id)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "cold record {outpoint} not found at height {height}"
                ))
            })?;
        let output = transaction
            .outputs
            .get(outpoint.output_index as usize)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("cold record {outpoint} has no output")))?;
        utxo.content_strategy = Some(pb::utxo::ContentStrategy::CachedOutput(output));
        Ok(utxo)
    }

    /// Fills in reference count, total and REFERENCED status, as `UtxoState` does.
    fn materialize(&self, mut utxo: pb::Utxo) -> Result<pb::Utxo> {
        if utxo.resource_constraints().is_none() {
            return Ok(utxo);
        }
        let outpoint = codec::record_outpoint(&utxo)?;
        let count = self.references.count(&outpoint);
        let total = self.references.total(&outpoint);
        if let Some(pb::utxo::TypeConstraints::ResourceConstraints(constraints)) =
            &mut utxo.type_constraints
        {
            if count == constraints.reference_count && total == constraints.total_reference_count {
                return Ok(utxo);
            }
            constraints.reference_count = count;
            constraints.total_reference_count = total;
        }
        if count > 0 {
            utxo.status = pb::UtxoLifecycleStatus::Referenced as i32;
        }
        Ok(utxo)
    }

    /// The record as queries see it (consumes the stored form: no clone).
    fn hand_out(&self, record: StoredRecord) -> Result<pb::Utxo> {
        self.materialize(self.full(record)?)
    }

    /// The live record at `outpoint`, as queries see it.
    pub fn utxo(&self, outpoint: &OutPointKey) -> Result<Option<pb::Utxo>> {
        match self.raw(outpoint)? {
            Some((_, _, record)) => Ok(Some(self.hand_out(record)?)),
            None => Ok(None),
        }
    }

    /// Live records under `prefix` (owner, or owner and category) in (category, outpoint)
    /// order, starting after `after`, at most `limit`.
    fn scan(&self, prefix: &[u8], after: Option<UtxoPosition>, limit: usize) -> Result<UtxoPage> {
        let limit = limit.max(1);
        let owner = Address::from_slice(&prefix[..prefix.len().min(model::ADDRESS_LEN)])?;
        let category = prefix.get(model::ADDRESS_LEN).copied();
        let wanted = |entry: &&(u8, OutPointKey)| {
            category.is_none_or(|wanted| entry.0 == wanted)
                && after.is_none_or(|after| **entry > (after.category, after.outpoint))
        };
        let mut dirty_live: Vec<(u8, OutPointKey)> = self
            .live_by_owner
            .get(&owner)
            .map(|live| live.iter().filter(wanted).copied().collect())
            .unwrap_or_default();
        let frozen = self.frozen();
        if let Some(live) = frozen.and_then(|frozen| frozen.live_by_owner.get(&owner)) {
            // Frozen records not changed since the flush began.
            dirty_live.extend(
                live.iter()
                    .filter(wanted)
                    .filter(|(_, outpoint)| !self.utxos.contains_key(outpoint)),
            );
        }
        let nothing_dirty =
            self.utxos.is_empty() && frozen.is_none_or(|frozen| frozen.utxos.is_empty());
        let after_key =
            after.map(|after| codec::owner_key(&owner, after.category, &after.outpoint));
        let mut page = UtxoPage::default();
        if nothing_dirty || dirty_live.is_empty() {
            // Fast path (a flushed cache, or an owner untouched since the flush): the
            // snapshot's records are the answer, decoded once and handed out without a copy.
            // Owners hold a handful of records; start with room for them.
            page.utxos.reserve(limit.min(8));
            let mut last = None;
            self.store.scan_owner_each(
                prefix,
                after_key.as_ref().map(|key| &key[..]),
                |outpoint, category, record| {
                    if nothing_dirty || !self.shadowed(&outpoint) {
                        if page.utxos.len() == limit {
                            page.next = last;
                            return Ok(false);
                        }
                        page.utxos.push(self.hand_out(record)?);
                        last = Some(UtxoPosition { category, outpoint });
                    }
                    Ok(true)
                },
            )?;
            return Ok(page);
        }
        let mut found: Vec<(u8, OutPointKey, StoredRecord)> = Vec::new();
        self.store.scan_owner_each(
            prefix,
            after_key.as_ref().map(|key| &key[..]),
            |outpoint, category, record| {
                if !self.shadowed(&outpoint) {
                    found.push((category, outpoint, record));
                }
                Ok(true)
            },
        )?;
        for (category, outpoint) in dirty_live {
            if let Some(record) = self.dirty(&outpoint).and_then(|d| d.restored(&outpoint)) {
                found.push((category, outpoint, record));
            }
        }
        found.sort_by_key(|entry| (entry.0, entry.1));
        if found.len() > limit {
            found.truncate(limit);
            page.next = found.last().map(|(category, outpoint, _)| UtxoPosition {
                category: *category,
                outpoint: *outpoint,
            });
        }
        page.utxos = found
            .into_iter()
            .map(|(_, _, record)| self.hand_out(record))
            .collect::<Result<_>>()?;
        Ok(page)
    }

    /// Live records of `owner`, ordered by category then outpoint.
    pub fn utxos_by_owner(&self, owner: &Address) -> Result<Vec<pb::Utxo>> {
        Ok(self.scan(&owner.0, None, usize::MAX)?.utxos)
    }

    /// Live records of `owner` in `category`, ordered by outpoint.
    pub fn utxos_by_owner_and_category(
        &self,
        owner: &Address,
        category: pb::UtxoCategory,
    ) -> Result<Vec<pb::Utxo>> {
        Ok(self
            .scan(&category_prefix(owner, category)?, None, usize::MAX)?
            .utxos)
    }

    /// One page of the live records of `owner` (in `category`, or all when `None`) in
    /// (category, outpoint) order: at most `limit` after `after`; `next` is where the
    /// next page starts, `None` on the last page.
    pub fn utxos_by_owner_page(
        &self,
        owner: &Address,
        category: Option<pb::UtxoCategory>,
        after: Option<UtxoPosition>,
        limit: usize,
    ) -> Result<UtxoPage> {
        match category {
            Some(category) => self.scan(&category_prefix(owner, category)?, after, limit),
            None => self.scan(&owner.0, after, limit),
        }
    }

    /// RESOURCE records of `owner` with their reference information.
    pub fn resources_by_owner(&self, owner: &Address) -> Result<Vec<ResourceInfo>> {
        Ok(self
            .utxos_by_owner_and_category(owner, pb::UtxoCategory::Resource)?
            .into_iter()
            .map(|utxo| {
                let constraints = utxo.resource_constraints().cloned().unwrap_or_default();
                ResourceInfo {
                    reference_count: constraints.reference_count,
                    max_concurrent_references: constraints.max_concurrent_references,
                    total_reference_count: constraints.total_reference_count,
                    consumable: constraints.reference_count == 0,
                    utxo,
                }
            })
            .collect())
    }

    /// Balance of `owner` in `asset`.
    pub fn balance(&self, owner: &Address, asset: &AssetId) -> Result<u128> {
        let key = (*owner, *asset);
        match self
            .balances
            .get(&key)
            .or_else(|| self.frozen().and_then(|frozen| frozen.balances.get(&key)))
            .or_else(|| self.clean_balances.get(&key))
        {
            Some(amount) => Ok(*amount),
            None => self.store.balance(owner, asset),
        }
    }

    /// All nonzero balances of `owner`.
    pub fn balances(&self, owner: &Address) -> Result<BTreeMap<AssetId, u128>> {
        let mut balances: BTreeMap<AssetId, u128> =
            self.store.balances(owner)?.into_iter().collect();
        let layers = self.frozen().map(|frozen| &frozen.balances).into_iter();
        for layer in layers.chain([&self.balances]) {
            for ((_, asset), amount) in layer
                .range((*owner, AssetId::Native)..)
                .take_while(|((address, _), _)| address == owner)
            {
                balances.insert(*asset, *amount);
            }
        }
        balances.retain(|_, amount| *amount > 0);
        Ok(balances)
    }

    /// ComputeAccountNonce (see `wes_utxo::state`).
    pub fn compute_account_nonce(&self, owner: &Address) -> Result<u64> {
        match self
            .nonces
            .get(owner)
            .or_else(|| self.frozen().and_then(|frozen| frozen.nonces.get(owner)))
            .or_else(|| self.clean_nonces.get(owner))
        {
            Some(nonce) => Ok(*nonce),
            None => self.store.nonce(owner),
        }
    }

    /// A snapshot of the live set with the same hash `UtxoState::utxo_set` computes.
    pub fn utxo_set(&self) -> Result<pb::UtxoSet> {
        let mut outpoints: Vec<OutPointKey> = self
            .store
            .outpoints()?
            .into_iter()
            .filter(|outpoint| !self.shadowed(outpoint))
            .collect();
        if let Some(frozen) = self.frozen() {
            outpoints.extend(
                frozen
                    .utxos
                    .iter()
                    .filter(|(outpoint, dirty)| {
                        dirty.record.is_some() && !self.utxos.contains_key(outpoint)
                    })
                    .map(|(outpoint, _)| *outpoint),
            );
        }
        outpoints.extend(
            self.utxos
                .iter()
                .filter(|(_, dirty)| dirty.record.is_some())
                .map(|(outpoint, _)| *outpoint),
        );
        outpoints.sort();
        let mut utxos = Vec::with_capacity(outpoints.len());
        for outpoint in &outpoints {
            let utxo = self
                .utxo(outpoint)?
                .ok_or_else(|| StoreError::Corrupt(format!("{outpoint} vanished")))?;
            utxos.push(utxo);
        }
        Ok(wes_utxo::state::utxo_set_snapshot(self.tip, utxos))
    }

    // ---- validation ----

    fn take_read_error(&self) -> Option<StoreError> {
        self.read_error.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Validates `block` on the tip; nothing changes.
    pub fn validate(&self, block: &pb::Block) -> Result<BlockEffects> {
        self.check_usable()?;
        let _ = self.take_read_error();
        // Signatures are checked on every core first (same rules, same errors).
        let result = validate::validate_block_parallel(
            self,
            &self.references,
            self.tip.as_ref(),
            block,
            &self.params,
        );
        // A read fault during validation must not pass for an unknown input.
        if let Some(error) = self.take_read_error() {
            return Err(error);
        }
        Ok(result?)
    }

    // ---- writes ----

    /// Writes `record` (or its removal, `None`) at `outpoint` into the dirty set.
    /// `created`: a new record (a block's output, or one a rollback restores), which the
    /// store cannot hold unless the dirty set shadows it (outpoints are unique while live);
    /// otherwise a change to a record that may be on disk.
    fn put(
        &mut self,
        outpoint: OutPointKey,
        owner: Address,
        category: u8,
        record: Option<StoredRecord>,
        created: bool,
    ) {
        if record.is_some() {
            self.live_by_owner
                .entry(owner)
                .or_default()
                .insert((category, outpoint));
        } else if let Some(live) = self.live_by_owner.get_mut(&owner) {
            live.remove(&(category, outpoint));
            if live.is_empty() {
                self.live_by_owner.remove(&owner);
            }
        }
        // An entry keeps its flag (a tombstone shadows a record on disk; a fresh entry has
        // nothing under it); without one, the store holds what `raw` read.
        let existing = self.utxos.get(&outpoint).map(|dirty| dirty.fresh);
        if record.is_none() && existing == Some(true) {
            self.utxos.remove(&outpoint);
            return;
        }
        let fresh = existing.unwrap_or(created && record.is_some());
        self.utxos.insert(
            outpoint,
            Dirty {
                owner,
                category,
                fresh,
                record: record.map(|mut record| {
                    strip_record(&mut record);
                    Box::new(record)
                }),
            },
        );
    }

    fn add_balance(
        &mut self,
        owner: Address,
        asset: AssetId,
        amount: u64,
        add: bool,
    ) -> Result<()> {
        let current = self.balance(&owner, &asset)?;
        let next = if add {
            current.checked_add(u128::from(amount))
        } else {
            current.checked_sub(u128::from(amount))
        }
        .ok_or_else(|| {
            StoreError::Corrupt(format!("balance of {owner} in {asset} out of range"))
        })?;
        self.balances.insert((owner, asset), next);
        Ok(())
    }

    fn insert_stored(&mut self, record: StoredRecord) -> Result<()> {
        let utxo = stored_utxo(&record)?;
        let outpoint = codec::record_outpoint(utxo)?;
        let owner = owner_of(utxo)?;
        let category = category_byte(utxo.category)?;
        if let Some((asset, amount)) = asset_of(utxo)? {
            self.add_balance(owner, asset, amount, true)?;
        }
        if utxo.status != pb::UtxoLifecycleStatus::Expired as i32 {
            if let Some(constraints) = utxo
                .state_constraints()
                .filter(|c| c.expires_at_timestamp > 0)
            {
                self.expiry
                    .insert((constraints.expires_at_timestamp, outpoint), true);
            }
        }
        debug_assert!(self.raw(&outpoint)?.is_none(), "{outpoint} inserted twice");
        self.put(outpoint, owner, category, Some(record), true);
        Ok(())
    }

    /// Removes the record at `outpoint`. `validated` is the UTXO block validation read there
    /// from this same state, if any: an ASSET record is stored as it is handed out (always
    /// hot, never materialized), so that copy is the stored record and the store is not
    /// read a second time.
    fn remove_stored(
        &mut self,
        outpoint: &OutPointKey,
        validated: Option<pb::Utxo>,
    ) -> Result<Option<StoredRecord>> {
        let found = match validated.filter(|utxo| utxo.category == pb::UtxoCategory::Asset as i32) {
            Some(utxo) => Some((
                owner_of(&utxo)?,
                category_byte(utxo.category)?,
                StoredRecord {
                    utxo: Some(utxo),
                    cold_height: None,
                    cold_tx_index: 0,
                },
            )),
            None => self.raw(outpoint)?,
        };
        let Some((owner, category, record)) = found else {
            return Ok(None);
        };
        let utxo = stored_utxo(&record)?;
        if let Some((asset, amount)) = asset_of(utxo)? {
            self.add_balance(owner, asset, amount, false)?;
        }
        if let Some(constraints) = utxo.state_constraints() {
            self.expiry
                .insert((constraints.expires_at_timestamp, *outpoint), false);
        }
        self.put(*outpoint, owner, category, None, false);
        Ok(Some(record))
    }

    /// The stored form of a new record under the content policy.
    fn store_form(&self, utxo: pb::Utxo, height: u64, tx_index: usize) -> StoredRecord {
        let cold = utxo.category != pb::UtxoCategory::Asset as i32
            && utxo
                .output()
                .is_some_and(|output| output.encoded_len() > self.config.hot_output_max_bytes);
        if !cold {
            return StoredRecord {
                utxo: Some(utxo),
                cold_height: None,
                cold_tx_index: 0,
            };
        }
        let mut utxo = utxo;
        utxo.content_strategy = Some(pb::utxo::ContentStrategy::ReferenceOnly(true));
        StoredRecord {
            utxo: Some(utxo),
            cold_height: Some(height),
            cold_tx_index: tx_index as u32,
        }
    }

    fn expiring_before(&self, before: u64) -> Result<Vec<(u64, OutPointKey)>> {
        let mut entries: BTreeSet<(u64, OutPointKey)> =
            self.store.expiring_before(before)?.into_iter().collect();
        let layers = self.frozen().map(|frozen| &frozen.expiry).into_iter();
        for layer in layers.chain([&self.expiry]) {
            for (entry, present) in layer.range(..(before, OutPointKey::new(TxId::default(), 0))) {
                if *present {
                    entries.insert(*entry);
                } else {
                    entries.remove(entry);
                }
            }
        }
        Ok(entries.into_iter().collect())
    }

    /// Applies a validated block (its effects from [`CoinsCache::validate`]).
    pub fn apply(&mut self, block: &pb::Block, effects: BlockEffects) -> Result<BlockHash> {
        self.check_usable()?;
        self.poll_flush()?;
        debug_assert_eq!(block.header.as_ref(), Some(&effects.header));
        let height = effects.header.height;
        let timestamp = effects.header.timestamp;
        let mut undo = UndoRecord {
            tip_before: self.tip.as_ref().map(TipRecord::from_tip),
            hash: effects.hash.0.to_vec(),
            height,
            ..UndoRecord::default()
        };

        // 1. STATE expiry at block time.
        for (expires_at, outpoint) in self.expiring_before(timestamp)? {
            self.expiry.insert((expires_at, outpoint), false);
            if let Some((owner, category, mut record)) = self.raw(&outpoint)? {
                if let Some(utxo) = record.utxo.as_mut() {
                    utxo.status = pb::UtxoLifecycleStatus::Expired as i32;
                }
                self.put(outpoint, owner, category, Some(record), false);
                undo.expired.push(outpoint.to_bytes().to_vec());
            }
        }

        // 2. Admissions released by expiry, inclusion, conflict.
        for tx_id in &effects.released_admissions {
            if let Some(admission) = self.references.release(tx_id) {
                undo.released
                    .push(AdmissionRecord::from_admission(&admission));
                self.references_dirty = true;
            }
        }

        // 3. Transactions in order.
        let mut created_here = HashSet::new();
        for (tx_index, tx) in effects.transactions.into_iter().enumerate() {
            for consumed in tx.consumed {
                let outpoint = codec::record_outpoint(&consumed)?;
                let Some(record) = self.remove_stored(&outpoint, Some(consumed))? else {
                    continue;
                };
                let total = self.references.forget(&outpoint);
                if total > 0 {
                    self.references_dirty = true;
                }
                if !created_here.remove(&outpoint) {
                    undo.consumed.push(ConsumedRecord {
                        record: Some(record),
                        total,
                    });
                }
            }
            for owner in tx.consuming_owners {
                let nonce = self.compute_account_nonce(&owner)?;
                self.nonces.insert(owner, nonce + 1);
                undo.nonce_bumps.push(owner.0.to_vec());
            }
            for created in tx.created {
                let outpoint = codec::record_outpoint(&created)?;
                let record = self.store_form(created, height, tx_index);
                self.insert_stored(record)?;
                created_here.insert(outpoint);
            }
        }
        let mut created: Vec<OutPointKey> = created_here.into_iter().collect();
        created.sort();
        undo.created = created.iter().map(|o| o.to_bytes().to_vec()).collect();

        self.tip = Some(ChainTip {
            height,
            hash: effects.hash,
            timestamp,
        });
        self.pending_undo.push_back(undo);
        let max_undo_depth = self.params.max_undo_depth as u64;
        self.undo_floor = self
            .undo_floor
            .max((height + 1).saturating_sub(max_undo_depth));
        while self
            .pending_undo
            .front()
            .is_some_and(|undo| undo.height < self.undo_floor)
        {
            self.pending_undo.pop_front();
        }
        self.blocks_since_flush += 1;
        Ok(effects.hash)
    }

    /// Rolls back the tip block from its undo data (in memory or flushed); returns the
    /// rolled-back height and hash.
    pub fn rollback(&mut self) -> Result<(u64, BlockHash)> {
        self.check_usable()?;
        // Undo data may be in the flush being written; rollbacks are rare, so wait for it.
        self.finish_flush()?;
        let nothing = StoreError::NothingToRollback {
            max_undo_depth: self.params.max_undo_depth,
        };
        let Some(tip) = self.tip else {
            return Err(nothing);
        };
        if tip.height < self.undo_floor || self.params.max_undo_depth == 0 {
            return Err(nothing);
        }
        let undo = if self
            .pending_undo
            .back()
            .is_some_and(|undo| undo.height == tip.height)
        {
            self.pending_undo.pop_back().ok_or(nothing)?
        } else {
            let undo = self.store.undo(tip.height)?.ok_or_else(|| {
                StoreError::Corrupt(format!("undo record of height {} missing", tip.height))
            })?;
            self.undo_delete.push(tip.height);
            undo
        };
        if undo.hash != tip.hash.0 || undo.height != tip.height {
            return Err(StoreError::Corrupt(format!(
                "undo record of height {} is for another block",
                tip.height
            )));
        }
        let mut created = HashSet::new();
        for bytes in &undo.created {
            let outpoint = codec::outpoint_from(bytes)?;
            self.remove_stored(&outpoint, None)?;
            self.references.forget(&outpoint);
            created.insert(outpoint);
        }
        for consumed in undo.consumed {
            let record = consumed
                .record
                .ok_or_else(|| StoreError::Corrupt("undo consumed entry empty".to_string()))?;
            let outpoint = codec::record_outpoint(stored_utxo(&record)?)?;
            self.references.set_total(outpoint, consumed.total);
            self.insert_stored(record)?;
        }
        for bytes in &undo.expired {
            let outpoint = codec::outpoint_from(bytes)?;
            if let Some((owner, category, mut record)) = self.raw(&outpoint)? {
                let mut expires_at = None;
                if let Some(utxo) = record.utxo.as_mut() {
                    utxo.status = pb::UtxoLifecycleStatus::Available as i32;
                    expires_at = utxo.state_constraints().map(|c| c.expires_at_timestamp);
                }
                if let Some(expires_at) = expires_at {
                    self.expiry.insert((expires_at, outpoint), true);
                }
                self.put(outpoint, owner, category, Some(record), false);
            }
        }
        for admission in &undo.released {
            self.references.restore(admission.to_admission()?);
        }
        for bytes in &undo.nonce_bumps {
            let owner = Address::from_slice(bytes)?;
            let nonce = self.compute_account_nonce(&owner)?;
            self.nonces.insert(owner, nonce.saturating_sub(1));
        }
        let stale: Vec<TxId> = self
            .references
            .admissions()
            .filter(|a| {
                a.referenced
                    .iter()
                    .chain(&a.consumed)
                    .any(|o| created.contains(o))
            })
            .map(|a| a.tx_id)
            .collect();
        for tx_id in stale {
            self.references.release(&tx_id);
        }
        self.references_dirty = true;
        self.tip = undo
            .tip_before
            .as_ref()
            .map(TipRecord::to_tip)
            .transpose()?;
        self.blocks_since_flush += 1;
        Ok((tip.height, tip.hash))
    }

    /// Admits a referencing transaction (see `UtxoState::admit`).
    pub fn admit(&mut self, transaction: &pb::Transaction) -> Result<TxId> {
        self.check_usable()?;
        let tip = self.tip.ok_or(AdmissionError::NoTip).map_err(state_error)?;
        let tx_id = model::tx_id(transaction);
        if self.references.admission(&tx_id).is_some() {
            return Err(state_error(AdmissionError::AlreadyAdmitted(tx_id)));
        }
        if !transaction
            .inputs
            .iter()
            .any(|input| input.is_reference_only)
        {
            return Err(state_error(AdmissionError::NoReferenceInputs));
        }
        if self.references.len() >= self.params.max_admissions {
            return Err(state_error(AdmissionError::TooManyAdmissions {
                limit: self.params.max_admissions,
            }));
        }
        let context = BlockContext {
            height: tip.height + 1,
            timestamp: tip.timestamp,
        };
        let _ = self.take_read_error();
        let effects = validate::check_transaction(self, &self.references, transaction, context);
        if let Some(error) = self.take_read_error() {
            return Err(error);
        }
        let effects =
            effects.map_err(|error| state_error(AdmissionError::Invalid(Box::new(error))))?;
        let consumed = effects
            .consumed
            .iter()
            .map(codec::record_outpoint)
            .collect::<Result<_>>()?;
        self.references.admit(Admission {
            tx_id,
            referenced: effects.referenced,
            consumed,
            admitted_at_height: tip.height,
            release_after_height: tip.height.saturating_add(self.params.admission_ttl_blocks),
        });
        self.references_dirty = true;
        Ok(tx_id)
    }

    /// Drops an admission; returns whether it was held.
    pub fn drop_admission(&mut self, tx_id: &TxId) -> bool {
        let dropped = self.references.release(tx_id).is_some();
        self.references_dirty |= dropped;
        dropped
    }

    /// Writes everything dirty, the pending undo records and the tip in one transaction,
    /// and returns when it is durable (waits for a background flush first).
    pub fn flush(&mut self) -> Result<()> {
        self.flush_in_background()?;
        self.finish_flush()
    }

    /// Starts writing everything dirty on another thread and returns at once; blocks keep
    /// applying to fresh dirty maps while reads see the frozen layer until the commit is
    /// seen (at the next apply, rollback or flush). A flush still running is waited for
    /// first, so at most one layer is in flight and memory stays bounded by about two
    /// flushes. The flushed state is exactly the tip at this call, which the caller must
    /// have made durable in the block log (the replay source) before.
    pub fn flush_in_background(&mut self) -> Result<()> {
        self.check_usable()?;
        self.finish_flush()?;
        let mut batch = FlushBatch {
            meta: MetaRecord {
                tip: self.tip.as_ref().map(TipRecord::from_tip),
                undo_floor: self.undo_floor,
            },
            ..FlushBatch::default()
        };
        batch.undo_delete = std::mem::take(&mut self.undo_delete);
        batch.undo_put = self.pending_undo.drain(..).collect();
        if self.references_dirty {
            batch.references = Some(ReferencesRecord {
                admissions: self
                    .references
                    .admissions()
                    .map(AdmissionRecord::from_admission)
                    .collect(),
                totals: self
                    .references
                    .totals()
                    .map(|(outpoint, total)| TotalRecord {
                        outpoint: outpoint.to_bytes().to_vec(),
                        total: *total,
                    })
                    .collect(),
            });
        }
        let frozen = Arc::new(Frozen {
            utxos: std::mem::take(&mut self.utxos),
            live_by_owner: std::mem::take(&mut self.live_by_owner),
            expiry: std::mem::take(&mut self.expiry),
            balances: std::mem::take(&mut self.balances),
            nonces: std::mem::take(&mut self.nonces),
        });
        let writer: StoreWriter = self.store.writer();
        let layer = Arc::clone(&frozen);
        let handle = std::thread::Builder::new()
            .name("wes-flush".to_string())
            .spawn(move || {
                let started = std::time::Instant::now();
                layer.fill(&mut batch);
                writer.write(batch)?;
                Ok(started.elapsed())
            })
            .map_err(|error| StoreError::Corrupt(format!("cannot start the flush: {error}")))?;
        self.in_flight = Some(InFlight { frozen, handle });
        self.references_dirty = false;
        self.blocks_since_flush = 0;
        Ok(())
    }

    /// True while a background flush's commit has not been seen yet.
    pub fn flush_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Takes in a background flush that has finished, without waiting.
    fn poll_flush(&mut self) -> Result<()> {
        match &self.in_flight {
            Some(in_flight) if in_flight.handle.is_finished() => self.finish_flush(),
            _ => Ok(()),
        }
    }

    /// Waits for the background flush, if any, and takes its commit in: the store's
    /// snapshot is renewed and the frozen layer dropped. A failed flush makes the cache
    /// refuse further use (reopen to replay the log from the last flush).
    fn finish_flush(&mut self) -> Result<()> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let written = in_flight
            .handle
            .join()
            .unwrap_or_else(|_| Err(StoreError::Corrupt("the flush thread panicked".to_string())));
        let took = match written.and_then(|took| self.store.refresh().map(|()| took)) {
            Ok(took) => took,
            Err(error) => {
                self.failed = true;
                return Err(error);
            }
        };
        let frozen = in_flight.frozen;
        self.flush_totals.flushes += 1;
        self.flush_totals.records += frozen.utxos.len() as u64;
        self.flush_totals.time += took;
        // The written values are now the flushed store's: keep them for later reads.
        keep_clean(&mut self.clean_balances, &frozen.balances, self.clean_limit);
        keep_clean(&mut self.clean_nonces, &frozen.nonces, self.clean_limit);
        // Freeing a few hundred thousand records takes a while; not on this thread.
        std::thread::spawn(move || drop(frozen));
        Ok(())
    }
}

impl Drop for CoinsCache {
    /// A flush in flight is finished before the store closes (a reopen in the same
    /// process needs the database file free).
    fn drop(&mut self) {
        if let Err(error) = self.finish_flush() {
            tracing::warn!(%error, "background flush failed while closing the store");
        }
    }
}

/// Adds a flush's written values to a clean cache, emptied first when they would take it over
/// `limit` (the cache is a bound, not an LRU).
fn keep_clean<'a, K, V, W>(clean: &mut HashMap<K, V>, written: W, limit: usize)
where
    K: Copy + Eq + std::hash::Hash + 'a,
    V: Copy + 'a,
    W: IntoIterator<Item = (&'a K, &'a V)> + Copy,
    W::IntoIter: ExactSizeIterator,
{
    if clean.len() + written.into_iter().len() > limit {
        clean.clear();
    }
    clean.extend(written.into_iter().map(|(k, v)| (*k, *v)).take(limit));
}

fn state_error(error: AdmissionError) -> StoreError {
    StoreError::State(Box::new(error.into()))
}

impl UtxoView for CoinsCache {
    fn get_utxo(&self, outpoint: &OutPointKey) -> Option<Cow<'_, pb::Utxo>> {
        match self.utxo(outpoint) {
            Ok(utxo) => utxo.map(Cow::Owned),
            Err(error) => {
                if let Ok(mut slot) = self.read_error.lock() {
                    slot.get_or_insert(error);
                }
                None
            }
        }
    }
}
