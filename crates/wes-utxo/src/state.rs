//! The in-memory UTXO state: the live set, its indexes, balances, reference admissions,
//! account nonces and the undo data that makes blocks reversible.
//!
//! [`UtxoState::apply_block`] validates the whole block first ([`validate::validate_block`])
//! and only then changes anything, so a rejected block leaves the state exactly as it was
//! (tests compare a clone before and after). [`UtxoState::rollback_block`] undoes the tip
//! block from its undo record; applying a block and rolling it back restores the state,
//! except that admissions which referenced or would consume outputs of the rolled-back block
//! are dropped (they can no longer be valid).
//!
//! Per applied block, in this order:
//! 1. STATE records whose `expires_at_timestamp` is below the block timestamp become
//!    EXPIRED (still readable and referenceable, no longer consumable);
//! 2. admissions are released (expiry, inclusion, conflict: see [`crate::references`]);
//! 3. per transaction in block order: consumed records leave the live set, their owners'
//!    account nonces go up, new records enter it.
//!
//! Indexes: one ordered set of (owner, category, outpoint) answers both "utxos of owner"
//! and "utxos of owner in category" as range scans; balances are kept per (owner, asset)
//! for ASSET records only.
//!
//! **ComputeAccountNonce(address)** ([`UtxoState::compute_account_nonce`]): the number of
//! transactions in the applied chain that consumed at least one input owned by `address`
//! (reference-only inputs do not count; a transaction consuming several of its inputs
//! counts once). It only grows as blocks are applied and shrinks exactly on rollback, so it
//! is a reorg-safe, per-account sequence number derived from the chain alone.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::{AdmissionError, StateError, TxError};
use crate::limits::ChainParams;
use crate::model::{self, asset_amount, Address, AssetId, BlockHash, OutPointKey, TxId};
use crate::pb;
use crate::references::{Admission, ReferenceTable};
use crate::validate::{self, BlockContext, BlockEffects, ChainTip, TxEffects, UtxoView};

/// What rolling back one block needs.
#[derive(Clone, Debug, PartialEq)]
struct BlockUndo {
    tip_before: Option<ChainTip>,
    hash: BlockHash,
    height: u64,
    /// Outputs the block created that were still live after it.
    created: Vec<OutPointKey>,
    /// Records the block consumed (that existed before it), with their reference totals.
    consumed: Vec<(pb::Utxo, u64)>,
    /// STATE records the block marked EXPIRED.
    expired: Vec<OutPointKey>,
    /// Admissions the block released.
    released: Vec<Admission>,
    /// One entry per nonce increment.
    nonce_bumps: Vec<Address>,
}

/// The in-memory UTXO state. `Clone` + `PartialEq` make before/after comparisons easy.
#[derive(Clone, Debug, PartialEq)]
pub struct UtxoState {
    params: ChainParams,
    tip: Option<ChainTip>,
    utxos: BTreeMap<OutPointKey, pb::Utxo>,
    by_owner: BTreeSet<(Address, i32, OutPointKey)>,
    balances: BTreeMap<(Address, AssetId), u128>,
    /// Live STATE records that will expire: (expires_at_timestamp, outpoint).
    expiry: BTreeSet<(u64, OutPointKey)>,
    references: ReferenceTable,
    nonces: BTreeMap<Address, u64>,
    /// Outpoints consumed by blocks still in the undo window, with the consuming height.
    spent: HashMap<OutPointKey, u64>,
    undo: VecDeque<BlockUndo>,
}

fn record_owner(utxo: &pb::Utxo) -> Address {
    Address::from_slice(&utxo.owner_address)
        .expect("owner length is validated before a record is created")
}

fn record_key(utxo: &pb::Utxo) -> OutPointKey {
    utxo.outpoint
        .as_ref()
        .and_then(|outpoint| OutPointKey::from_proto(outpoint).ok())
        .expect("records are created with a well-formed outpoint")
}

fn record_asset(utxo: &pb::Utxo) -> Option<(AssetId, u64)> {
    utxo.output().and_then(|output| {
        asset_amount(output).expect("asset outputs are validated before a record is created")
    })
}

impl UtxoState {
    /// An empty state; the first block applied must be a genesis block (height 0).
    pub fn new(params: ChainParams) -> Self {
        Self {
            params,
            tip: None,
            utxos: BTreeMap::new(),
            by_owner: BTreeSet::new(),
            balances: BTreeMap::new(),
            expiry: BTreeSet::new(),
            references: ReferenceTable::default(),
            nonces: BTreeMap::new(),
            spent: HashMap::new(),
            undo: VecDeque::new(),
        }
    }

    /// The chain parameters.
    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    /// The current tip, if a block was applied.
    pub fn tip(&self) -> Option<ChainTip> {
        self.tip
    }

    /// Number of live records.
    pub fn len(&self) -> usize {
        self.utxos.len()
    }

    /// Whether the live set is empty.
    pub fn is_empty(&self) -> bool {
        self.utxos.is_empty()
    }

    /// The reference table (admissions and counts).
    pub fn references(&self) -> &ReferenceTable {
        &self.references
    }

    /// The record at `outpoint` with its current reference count and status filled in.
    pub fn utxo(&self, outpoint: &OutPointKey) -> Option<pb::Utxo> {
        self.utxos
            .get(outpoint)
            .map(|utxo| self.materialize(utxo).into_owned())
    }

    /// Live records of `owner`, ordered by category then outpoint.
    pub fn utxos_by_owner(&self, owner: &Address) -> Vec<pb::Utxo> {
        let start = (*owner, i32::MIN, OutPointKey::new(TxId::default(), 0));
        self.by_owner
            .range(start..)
            .take_while(|(address, _, _)| address == owner)
            .filter_map(|(_, _, outpoint)| self.utxo(outpoint))
            .collect()
    }

    /// Live records of `owner` in `category`, ordered by outpoint.
    pub fn utxos_by_owner_and_category(
        &self,
        owner: &Address,
        category: pb::UtxoCategory,
    ) -> Vec<pb::Utxo> {
        let category = category as i32;
        let start = (*owner, category, OutPointKey::new(TxId::default(), 0));
        self.by_owner
            .range(start..)
            .take_while(|(address, record_category, _)| {
                address == owner && *record_category == category
            })
            .filter_map(|(_, _, outpoint)| self.utxo(outpoint))
            .collect()
    }

    /// Balance of `owner` in `asset` (sum of live ASSET records).
    pub fn balance(&self, owner: &Address, asset: &AssetId) -> u128 {
        self.balances.get(&(*owner, *asset)).copied().unwrap_or(0)
    }

    /// All nonzero balances of `owner`.
    pub fn balances(&self, owner: &Address) -> BTreeMap<AssetId, u128> {
        self.balances
            .range((*owner, AssetId::Native)..)
            .take_while(|((address, _), _)| address == owner)
            .map(|((_, asset), amount)| (*asset, *amount))
            .collect()
    }

    /// All owners with a nonzero balance, and their balances.
    pub fn all_balances(&self) -> &BTreeMap<(Address, AssetId), u128> {
        &self.balances
    }

    /// ComputeAccountNonce: transactions in the applied chain that consumed at least one
    /// input owned by `address` (see the module docs).
    pub fn compute_account_nonce(&self, address: &Address) -> u64 {
        self.nonces.get(address).copied().unwrap_or(0)
    }

    /// Validates a transaction for the next block (height tip + 1, timestamp of the tip).
    pub fn validate_transaction(
        &self,
        transaction: &pb::Transaction,
    ) -> Result<TxEffects, TxError> {
        let context = self.next_block_context();
        validate::check_transaction(self, &self.references, transaction, context)
    }

    fn next_block_context(&self) -> BlockContext {
        match self.tip {
            Some(tip) => BlockContext {
                height: tip.height + 1,
                timestamp: tip.timestamp,
            },
            None => BlockContext {
                height: 0,
                timestamp: 0,
            },
        }
    }

    /// Admits a referencing transaction for execution: it must be valid for the next block
    /// and every RESOURCE it references must be below its concurrency limit. Its references
    /// are then held until inclusion, drop, conflict or expiry ([`crate::references`]).
    pub fn admit(&mut self, transaction: &pb::Transaction) -> Result<TxId, StateError> {
        let tip = self.tip.ok_or(AdmissionError::NoTip)?;
        let tx_id = model::tx_id(transaction);
        if self.references.admission(&tx_id).is_some() {
            return Err(AdmissionError::AlreadyAdmitted(tx_id).into());
        }
        if !transaction
            .inputs
            .iter()
            .any(|input| input.is_reference_only)
        {
            return Err(AdmissionError::NoReferenceInputs.into());
        }
        if self.references.len() >= self.params.max_admissions {
            return Err(AdmissionError::TooManyAdmissions {
                limit: self.params.max_admissions,
            }
            .into());
        }
        let effects = self
            .validate_transaction(transaction)
            .map_err(|error| AdmissionError::Invalid(Box::new(error)))?;
        let consumed = effects.consumed.iter().map(record_key).collect();
        self.references.admit(Admission {
            tx_id,
            referenced: effects.referenced,
            consumed,
            admitted_at_height: tip.height,
            release_after_height: tip.height.saturating_add(self.params.admission_ttl_blocks),
        });
        Ok(tx_id)
    }

    /// Drops an admission (the transaction left the pool); returns whether it was held.
    pub fn drop_admission(&mut self, tx_id: &TxId) -> bool {
        self.references.release(tx_id).is_some()
    }

    /// Validates and applies a block on the tip, all or nothing; returns its hash.
    pub fn apply_block(&mut self, block: &pb::Block) -> Result<BlockHash, StateError> {
        let effects = validate::validate_block(
            self,
            &self.references,
            self.tip.as_ref(),
            block,
            &self.params,
        )?;
        Ok(self.commit(effects))
    }

    fn commit(&mut self, effects: BlockEffects) -> BlockHash {
        let height = effects.header.height;
        let timestamp = effects.header.timestamp;
        let mut undo = BlockUndo {
            tip_before: self.tip,
            hash: effects.hash,
            height,
            created: Vec::new(),
            consumed: Vec::new(),
            expired: Vec::new(),
            released: Vec::new(),
            nonce_bumps: Vec::new(),
        };

        // 1. STATE expiry at block time: expired when timestamp > expires_at.
        let expiring: Vec<(u64, OutPointKey)> = self
            .expiry
            .range(..(timestamp, OutPointKey::new(TxId::default(), 0)))
            .copied()
            .collect();
        for entry in expiring {
            self.expiry.remove(&entry);
            if let Some(utxo) = self.utxos.get_mut(&entry.1) {
                utxo.status = pb::UtxoLifecycleStatus::Expired as i32;
                undo.expired.push(entry.1);
            }
        }

        // 2. Admissions released by expiry, inclusion, conflict.
        for tx_id in &effects.released_admissions {
            if let Some(admission) = self.references.release(tx_id) {
                undo.released.push(admission);
            }
        }

        // 3. Transactions in order.
        let mut created_here = HashSet::new();
        for tx in effects.transactions {
            for consumed in tx.consumed {
                let outpoint = record_key(&consumed);
                let Some(record) = self.remove_record(&outpoint) else {
                    continue;
                };
                let total = self.references.forget(&outpoint);
                if !created_here.remove(&outpoint) {
                    self.spent.insert(outpoint, height);
                    undo.consumed.push((record, total));
                }
            }
            for owner in tx.consuming_owners {
                *self.nonces.entry(owner).or_insert(0) += 1;
                undo.nonce_bumps.push(owner);
            }
            for created in tx.created {
                let outpoint = record_key(&created);
                self.insert_record(created);
                created_here.insert(outpoint);
            }
        }
        undo.created = created_here.into_iter().collect();
        undo.created.sort();

        self.tip = Some(ChainTip {
            height,
            hash: effects.hash,
            timestamp,
        });
        self.undo.push_back(undo);
        while self.undo.len() > self.params.max_undo_depth {
            if let Some(pruned) = self.undo.pop_front() {
                for (record, _) in &pruned.consumed {
                    self.spent.remove(&record_key(record));
                }
            }
        }
        effects.hash
    }

    /// Rolls back the tip block; returns its hash.
    pub fn rollback_block(&mut self) -> Result<BlockHash, StateError> {
        let undo = self.undo.pop_back().ok_or(StateError::NothingToRollback {
            max_undo_depth: self.params.max_undo_depth,
        })?;
        for outpoint in &undo.created {
            self.remove_record(outpoint);
            self.references.forget(outpoint);
        }
        for (record, total) in undo.consumed {
            let outpoint = record_key(&record);
            self.spent.remove(&outpoint);
            self.references.set_total(outpoint, total);
            self.insert_record(record);
        }
        for outpoint in &undo.expired {
            if let Some(utxo) = self.utxos.get_mut(outpoint) {
                utxo.status = pb::UtxoLifecycleStatus::Available as i32;
                if let Some(expires_at) = utxo.state_constraints().map(|c| c.expires_at_timestamp) {
                    self.expiry.insert((expires_at, *outpoint));
                }
            }
        }
        for admission in undo.released {
            self.references.restore(admission);
        }
        for owner in &undo.nonce_bumps {
            if let Some(nonce) = self.nonces.get_mut(owner) {
                *nonce -= 1;
                if *nonce == 0 {
                    self.nonces.remove(owner);
                }
            }
        }
        // Admissions taken after the block on its outputs can no longer be valid.
        let created: HashSet<OutPointKey> = undo.created.iter().copied().collect();
        let stale: Vec<TxId> = self
            .references
            .admissions()
            .filter(|a| {
                a.referenced
                    .iter()
                    .chain(&a.consumed)
                    .any(|outpoint| created.contains(outpoint))
            })
            .map(|a| a.tx_id)
            .collect();
        for tx_id in stale {
            self.references.release(&tx_id);
        }
        self.tip = undo.tip_before;
        debug_assert_eq!(self.tip.map(|t| t.height + 1).unwrap_or(0), undo.height);
        Ok(undo.hash)
    }

    fn insert_record(&mut self, utxo: pb::Utxo) {
        let outpoint = record_key(&utxo);
        let owner = record_owner(&utxo);
        self.by_owner.insert((owner, utxo.category, outpoint));
        if let Some((asset, amount)) = record_asset(&utxo) {
            *self.balances.entry((owner, asset)).or_insert(0) += u128::from(amount);
        }
        if utxo.status != pb::UtxoLifecycleStatus::Expired as i32 {
            if let Some(constraints) = utxo
                .state_constraints()
                .filter(|c| c.expires_at_timestamp > 0)
            {
                self.expiry
                    .insert((constraints.expires_at_timestamp, outpoint));
            }
        }
        let previous = self.utxos.insert(outpoint, utxo);
        debug_assert!(previous.is_none(), "outpoint {outpoint} inserted twice");
    }

    fn remove_record(&mut self, outpoint: &OutPointKey) -> Option<pb::Utxo> {
        let utxo = self.utxos.remove(outpoint)?;
        let owner = record_owner(&utxo);
        self.by_owner.remove(&(owner, utxo.category, *outpoint));
        if let Some((asset, amount)) = record_asset(&utxo) {
            if let Some(balance) = self.balances.get_mut(&(owner, asset)) {
                *balance -= u128::from(amount);
                if *balance == 0 {
                    self.balances.remove(&(owner, asset));
                }
            }
        }
        if let Some(constraints) = utxo.state_constraints() {
            self.expiry
                .remove(&(constraints.expires_at_timestamp, *outpoint));
        }
        Some(utxo)
    }

    fn materialize<'a>(&self, utxo: &'a pb::Utxo) -> Cow<'a, pb::Utxo> {
        let Some(constraints) = utxo.resource_constraints() else {
            return Cow::Borrowed(utxo);
        };
        let outpoint = record_key(utxo);
        let count = self.references.count(&outpoint);
        let total = self.references.total(&outpoint);
        if count == constraints.reference_count && total == constraints.total_reference_count {
            return Cow::Borrowed(utxo);
        }
        let mut utxo = utxo.clone();
        if let Some(pb::utxo::TypeConstraints::ResourceConstraints(constraints)) =
            &mut utxo.type_constraints
        {
            constraints.reference_count = count;
            constraints.total_reference_count = total;
        }
        if count > 0 {
            utxo.status = pb::UtxoLifecycleStatus::Referenced as i32;
        }
        Cow::Owned(utxo)
    }

    /// A snapshot of the live set (ordered by outpoint) with its integrity hash.
    pub fn utxo_set(&self) -> pb::UtxoSet {
        let utxos: Vec<pb::Utxo> = self
            .utxos
            .values()
            .map(|utxo| self.materialize(utxo).into_owned())
            .collect();
        utxo_set_snapshot(self.tip, utxos)
    }

    /// Checks that indexes, balances and reference counts agree with the live set.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_owner = BTreeSet::new();
        let mut balances: BTreeMap<(Address, AssetId), u128> = BTreeMap::new();
        for (outpoint, utxo) in &self.utxos {
            if record_key(utxo) != *outpoint {
                return Err(format!("record at {outpoint} names another outpoint"));
            }
            let owner = record_owner(utxo);
            by_owner.insert((owner, utxo.category, *outpoint));
            if let Some((asset, amount)) = record_asset(utxo) {
                *balances.entry((owner, asset)).or_insert(0) += u128::from(amount);
            }
        }
        if by_owner != self.by_owner {
            return Err("owner index differs from the live set".to_string());
        }
        if balances != self.balances {
            return Err("balances differ from the live set".to_string());
        }
        for (outpoint, _) in self.references.referenced_outpoints() {
            if !self.utxos.contains_key(outpoint) {
                return Err(format!("reference held on {outpoint}, which is not live"));
            }
        }
        self.references.check_invariants()
    }
}

/// The [`pb::UtxoSet`] snapshot of `utxos` (materialized records ordered by outpoint) at
/// `tip`, with its integrity hash; shared by every store so their snapshots compare equal.
pub fn utxo_set_snapshot(tip: Option<ChainTip>, utxos: Vec<pb::Utxo>) -> pb::UtxoSet {
    let mut hasher = Sha256::new();
    hasher.update(b"WES-UTXO/v1/utxo-set");
    for utxo in &utxos {
        let encoding = utxo.encode_to_vec();
        hasher.update((encoding.len() as u64).to_be_bytes());
        hasher.update(&encoding);
    }
    pb::UtxoSet {
        tip_height: tip.map_or(0, |t| t.height),
        tip_hash: tip.map_or_else(Vec::new, |t| t.hash.0.to_vec()),
        utxos,
        utxo_set_hash: hasher.finalize().to_vec(),
    }
}

impl UtxoView for UtxoState {
    fn get_utxo(&self, outpoint: &OutPointKey) -> Option<Cow<'_, pb::Utxo>> {
        self.utxos.get(outpoint).map(|utxo| self.materialize(utxo))
    }

    fn spent_at_height(&self, outpoint: &OutPointKey) -> Option<u64> {
        self.spent.get(outpoint).copied()
    }
}
