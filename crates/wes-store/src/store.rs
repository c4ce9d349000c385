//! The UTXO store on redb: the flushed state, read through a snapshot that is renewed after
//! every flush, and written only by [`UtxoStore::write`], one atomic transaction per flush.
//!
//! Tables (keys big-endian, see [`crate::codec`]):
//! - `utxos`: owner | category | outpoint -> [`StoredRecord`]. Clustered by owner, so
//!   "utxos of owner" and "utxos of owner in category" are one range scan each, with no
//!   second lookup per record (the owner and owner+category indexes are this key order).
//!   The value omits what the key holds (outpoint, owner address, the cached output's
//!   owner; see `strip_record`), restored on read; unstripped values read unchanged;
//! - `outpoints`: outpoint -> owner | category, the point-lookup index into `utxos`;
//! - `balances`: owner | asset -> u128, ASSET records only;
//! - `nonces`: owner -> account nonce;
//! - `expiry`: expires_at | outpoint -> (), live STATE records that will expire;
//! - `undo`: height -> [`UndoRecord`], heights from the undo floor to the flushed tip;
//! - `meta`: `"tip"` -> [`MetaRecord`] (flushed tip and undo floor), `"references"` ->
//!   [`ReferencesRecord`] (admissions and reference totals).

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};
use wes_utxo::model::{Address, AssetId, OutPointKey, ADDRESS_LEN};
use wes_utxo::pb;

use crate::codec::{
    self, balance_key, expiry_key, owner_key, parse_balance_asset, parse_expiry_key,
    parse_owner_key, MetaRecord, ReferencesRecord, StoredRecord, UndoRecord, OWNER_KEY_LEN,
};
use crate::error::{Result, StoreError};

const UTXOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("utxos");
const OUTPOINTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("outpoints");
const BALANCES: TableDefinition<&[u8], u128> = TableDefinition::new("balances");
const NONCES: TableDefinition<&[u8], u64> = TableDefinition::new("nonces");
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
const UNDO: TableDefinition<u64, &[u8]> = TableDefinition::new("undo");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_TIP: &str = "tip";
const META_REFERENCES: &str = "references";

/// One UTXO change of a flush: the record at `outpoint` becomes the bytes at `record` in
/// [`FlushBatch::records`] (None: removed).
pub struct UtxoWrite {
    /// Outpoint.
    pub outpoint: OutPointKey,
    /// Owner.
    pub owner: Address,
    /// Category byte.
    pub category: u8,
    /// Where the new record's encoding (stripped, see [`strip_record`]) lies in
    /// [`FlushBatch::records`], or None to delete.
    pub record: Option<std::ops::Range<usize>>,
}

/// Everything one flush writes, in one transaction.
#[derive(Default)]
pub struct FlushBatch {
    /// UTXO records.
    pub utxos: Vec<UtxoWrite>,
    /// The encoded records the writes point into, back to back (one allocation, not one
    /// per record).
    pub records: Vec<u8>,
    /// Expiry entries: present (true) or removed (false).
    pub expiry: Vec<((u64, OutPointKey), bool)>,
    /// Absolute balances (0 deletes).
    pub balances: Vec<((Address, AssetId), u128)>,
    /// Absolute nonces (0 deletes).
    pub nonces: Vec<(Address, u64)>,
    /// Undo heights to delete (rolled back since the last flush); applied before puts.
    pub undo_delete: Vec<u64>,
    /// Undo records to write.
    pub undo_put: Vec<UndoRecord>,
    /// The reference table, when it changed.
    pub references: Option<ReferencesRecord>,
    /// The new flushed tip and undo floor; undo below the floor is pruned.
    pub meta: MetaRecord,
}

struct Snapshot {
    utxos: ReadOnlyTable<&'static [u8], &'static [u8]>,
    outpoints: ReadOnlyTable<&'static [u8], &'static [u8]>,
    balances: ReadOnlyTable<&'static [u8], u128>,
    nonces: ReadOnlyTable<&'static [u8], u64>,
    expiry: ReadOnlyTable<&'static [u8], ()>,
    undo: ReadOnlyTable<u64, &'static [u8]>,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    _transaction: ReadTransaction,
}

impl Snapshot {
    fn open(db: &Database) -> Result<Self> {
        let transaction = db.begin_read()?;
        Ok(Self {
            utxos: transaction.open_table(UTXOS)?,
            outpoints: transaction.open_table(OUTPOINTS)?,
            balances: transaction.open_table(BALANCES)?,
            nonces: transaction.open_table(NONCES)?,
            expiry: transaction.open_table(EXPIRY)?,
            undo: transaction.open_table(UNDO)?,
            meta: transaction.open_table(META)?,
            _transaction: transaction,
        })
    }
}

/// Drops what the `utxos` key already holds from a record before it is written: the
/// outpoint, the owner address, and the owner inside a cached output (always the record's
/// owner: `new_utxo` copies it). About 80 of ~190 bytes, so the flush rewrites fewer pages
/// and scans decode less. [`restore_record`] puts them back. The coins cache keeps its dirty
/// records in this form too, so a flush encodes them as they are.
pub(crate) fn strip_record(record: &mut StoredRecord) {
    if let Some(utxo) = record.utxo.as_mut() {
        utxo.outpoint = None;
        if let Some(pb::utxo::ContentStrategy::CachedOutput(output)) = &mut utxo.content_strategy {
            if output.owner == utxo.owner_address {
                output.owner = Vec::new();
            }
        }
        utxo.owner_address = Vec::new();
    }
}

/// Decodes a record of the `utxos` table and restores what [`strip_record`] dropped.
fn decode_record(bytes: &[u8], owner: &Address, outpoint: &OutPointKey) -> Result<StoredRecord> {
    let mut record: StoredRecord = codec::decode(bytes)?;
    restore_record(&mut record, owner, outpoint);
    Ok(record)
}

/// Restores what [`strip_record`] dropped (a valid record never has an empty owner or a
/// missing outpoint, so absent means stripped; an unstripped record stays unchanged).
pub(crate) fn restore_record(record: &mut StoredRecord, owner: &Address, outpoint: &OutPointKey) {
    if let Some(utxo) = record.utxo.as_mut() {
        if utxo.outpoint.is_none() {
            utxo.outpoint = Some(outpoint.to_proto());
        }
        if utxo.owner_address.is_empty() {
            utxo.owner_address = owner.0.to_vec();
        }
        if let Some(pb::utxo::ContentStrategy::CachedOutput(output)) = &mut utxo.content_strategy {
            if output.owner.is_empty() {
                output.owner = owner.0.to_vec();
            }
        }
    }
}

/// The redb-backed flushed state (see the module docs).
pub struct UtxoStore {
    db: Arc<Database>,
    snapshot: Snapshot,
}

/// Writes flushes into a [`UtxoStore`]'s database from any thread (the coins cache's
/// background flush). The store's read snapshot does not see a write until
/// [`UtxoStore::refresh`].
#[derive(Clone)]
pub struct StoreWriter {
    db: Arc<Database>,
}

impl UtxoStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::UpgradeRequired(format)) => {
                return Err(StoreError::OldFormat {
                    path: path.to_path_buf(),
                    format,
                })
            }
            Err(error) => return Err(error.into()),
        };
        let transaction = db.begin_write()?;
        {
            transaction.open_table(UTXOS)?;
            transaction.open_table(OUTPOINTS)?;
            transaction.open_table(BALANCES)?;
            transaction.open_table(NONCES)?;
            transaction.open_table(EXPIRY)?;
            transaction.open_table(UNDO)?;
            transaction.open_table(META)?;
        }
        transaction.commit()?;
        let snapshot = Snapshot::open(&db)?;
        Ok(Self {
            db: Arc::new(db),
            snapshot,
        })
    }

    /// The flushed tip and undo floor (default when nothing was flushed).
    pub fn meta(&self) -> Result<MetaRecord> {
        match self.snapshot.meta.get(META_TIP)? {
            Some(bytes) => codec::decode(bytes.value()),
            None => Ok(MetaRecord::default()),
        }
    }

    /// The flushed reference table.
    pub fn references(&self) -> Result<ReferencesRecord> {
        match self.snapshot.meta.get(META_REFERENCES)? {
            Some(bytes) => codec::decode(bytes.value()),
            None => Ok(ReferencesRecord::default()),
        }
    }

    /// The stored record at `outpoint`, with its owner and category.
    pub fn get(&self, outpoint: &OutPointKey) -> Result<Option<(Address, u8, StoredRecord)>> {
        let Some(owner_category) = self.snapshot.outpoints.get(&outpoint.to_bytes()[..])? else {
            return Ok(None);
        };
        let owner_category = owner_category.value();
        if owner_category.len() != ADDRESS_LEN + 1 {
            return Err(StoreError::Corrupt(format!(
                "outpoint index entry for {outpoint}"
            )));
        }
        let owner = Address::from_slice(&owner_category[..ADDRESS_LEN])?;
        let category = owner_category[ADDRESS_LEN];
        let key = owner_key(&owner, category, outpoint);
        let record = self.snapshot.utxos.get(&key[..])?.ok_or_else(|| {
            StoreError::Corrupt(format!("outpoint {outpoint} indexed, no record"))
        })?;
        Ok(Some((
            owner,
            category,
            decode_record(record.value(), &owner, outpoint)?,
        )))
    }

    /// Records whose key starts with `prefix` (an owner, or owner | category), in key order.
    pub fn scan_owner(&self, prefix: &[u8]) -> Result<Vec<(OutPointKey, u8, StoredRecord)>> {
        let mut records = Vec::new();
        self.scan_owner_each(prefix, None, |outpoint, category, record| {
            records.push((outpoint, category, record));
            Ok(true)
        })?;
        Ok(records)
    }

    /// [`UtxoStore::scan_owner`] without collecting: `visit` gets each record in key order,
    /// starting after the record-table key `after` when given, until it returns `false`.
    pub fn scan_owner_each(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut visit: impl FnMut(OutPointKey, u8, StoredRecord) -> Result<bool>,
    ) -> Result<()> {
        // An open-ended range stopped at the first key past the prefix: redb resolves a
        // closed range's end bound with a second descent of the tree, which cost about a
        // third of a ten-record scan.
        let range = match after {
            Some(after) => self
                .snapshot
                .utxos
                .range::<&[u8]>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?,
            None => self.snapshot.utxos.range(prefix..)?,
        };
        for entry in range {
            let (key, value) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            let (owner, category, outpoint) = parse_owner_key(key.value())?;
            if !visit(
                outpoint,
                category,
                decode_record(value.value(), &owner, &outpoint)?,
            )? {
                break;
            }
        }
        Ok(())
    }

    /// Every outpoint, in outpoint order (for snapshots).
    pub fn outpoints(&self) -> Result<Vec<OutPointKey>> {
        let mut outpoints = Vec::new();
        for entry in self.snapshot.outpoints.iter()? {
            let (key, _) = entry?;
            outpoints.push(codec::outpoint_from(key.value())?);
        }
        Ok(outpoints)
    }

    /// Balance of `owner` in `asset`.
    pub fn balance(&self, owner: &Address, asset: &AssetId) -> Result<u128> {
        Ok(self
            .snapshot
            .balances
            .get(&balance_key(owner, asset)[..])?
            .map_or(0, |amount| amount.value()))
    }

    /// All balances of `owner`.
    pub fn balances(&self, owner: &Address) -> Result<Vec<(AssetId, u128)>> {
        let start = balance_key(owner, &AssetId::Native);
        let mut end = [0xffu8; codec::BALANCE_KEY_LEN];
        end[..ADDRESS_LEN].copy_from_slice(&owner.0);
        let mut balances = Vec::new();
        for entry in self.snapshot.balances.range(&start[..]..=&end[..])? {
            let (key, amount) = entry?;
            balances.push((parse_balance_asset(key.value())?, amount.value()));
        }
        Ok(balances)
    }

    /// Account nonce of `owner`.
    pub fn nonce(&self, owner: &Address) -> Result<u64> {
        Ok(self
            .snapshot
            .nonces
            .get(&owner.0[..])?
            .map_or(0, |nonce| nonce.value()))
    }

    /// Expiry entries with `expires_at < before`.
    pub fn expiring_before(&self, before: u64) -> Result<Vec<(u64, OutPointKey)>> {
        let end = expiry_key(before, &OutPointKey::new(Default::default(), 0));
        let mut entries = Vec::new();
        for entry in self.snapshot.expiry.range(..&end[..])? {
            let (key, _) = entry?;
            entries.push(parse_expiry_key(key.value())?);
        }
        Ok(entries)
    }

    /// The undo record of the block at `height`.
    pub fn undo(&self, height: u64) -> Result<Option<UndoRecord>> {
        match self.snapshot.undo.get(height)? {
            Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Writes a flush in one durable transaction and renews the read snapshot.
    pub fn write(&mut self, batch: FlushBatch) -> Result<()> {
        self.writer().write(batch)?;
        self.refresh()
    }

    /// A handle that writes flushes from another thread.
    pub fn writer(&self) -> StoreWriter {
        StoreWriter {
            db: Arc::clone(&self.db),
        }
    }

    /// Renews the read snapshot, so reads see every committed write.
    pub fn refresh(&mut self) -> Result<()> {
        self.snapshot = Snapshot::open(&self.db)?;
        Ok(())
    }
}

/// Writes the `outpoints` index part of a flush, in key order (sorted writes touch each B-tree
/// page once).
fn write_index(transaction: &WriteTransaction, writes: &[UtxoWrite]) -> Result<()> {
    let mut entries: Vec<(
        [u8; OutPointKey::ENCODED_LEN],
        Option<[u8; ADDRESS_LEN + 1]>,
    )> = writes
        .iter()
        .map(|write| {
            let value = write.record.as_ref().map(|_| {
                let mut value = [0u8; ADDRESS_LEN + 1];
                value[..ADDRESS_LEN].copy_from_slice(&write.owner.0);
                value[ADDRESS_LEN] = write.category;
                value
            });
            (write.outpoint.to_bytes(), value)
        })
        .collect();
    entries.sort_unstable_by_key(|(key, _)| *key);
    let mut outpoints = transaction.open_table(OUTPOINTS)?;
    for (key, value) in &entries {
        match value {
            Some(value) => {
                outpoints.insert(&key[..], &value[..])?;
            }
            None => {
                outpoints.remove(&key[..])?;
            }
        }
    }
    Ok(())
}

/// Writes the `utxos` table part of a flush, in key order.
fn write_records(transaction: &WriteTransaction, batch: &FlushBatch) -> Result<()> {
    // Keys computed once (not per comparison), then sorted.
    let mut order: Vec<([u8; OWNER_KEY_LEN], usize)> = batch
        .utxos
        .iter()
        .enumerate()
        .map(|(index, write)| {
            (
                owner_key(&write.owner, write.category, &write.outpoint),
                index,
            )
        })
        .collect();
    order.sort_unstable();
    let mut utxos = transaction.open_table(UTXOS)?;
    for (key, index) in &order {
        match &batch.utxos[*index].record {
            Some(range) => {
                let bytes = batch
                    .records
                    .get(range.clone())
                    .ok_or_else(|| StoreError::Corrupt("flush record out of range".to_string()))?;
                utxos.insert(&key[..], bytes)?;
            }
            None => {
                utxos.remove(&key[..])?;
            }
        }
    }
    Ok(())
}

impl StoreWriter {
    /// Writes a flush in one durable transaction (the store's snapshot is not renewed).
    pub fn write(&self, batch: FlushBatch) -> Result<()> {
        let mut transaction = self.db.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        {
            // The point-lookup index and the record table are written at the same time, the
            // index on a second thread: redb lets the tables of one write transaction be
            // written concurrently, and the closing flush of a run has a core to spare.
            let transaction = &transaction;
            let batch = &batch;
            std::thread::scope(|scope| -> Result<()> {
                let index = std::thread::Builder::new()
                    .name("wes-flush-index".to_string())
                    .spawn_scoped(scope, move || write_index(transaction, &batch.utxos))
                    .map_err(|error| {
                        StoreError::Corrupt(format!("cannot start the index writer: {error}"))
                    })?;
                let records = write_records(transaction, batch);
                let index = index
                    .join()
                    .unwrap_or_else(|_| Err(StoreError::Corrupt("index writer panicked".into())));
                records.and(index)
            })?;
            let mut expiry = transaction.open_table(EXPIRY)?;
            for ((expires_at, outpoint), present) in &batch.expiry {
                let key = expiry_key(*expires_at, outpoint);
                if *present {
                    expiry.insert(&key[..], ())?;
                } else {
                    expiry.remove(&key[..])?;
                }
            }
            drop(expiry);
            let mut balances = transaction.open_table(BALANCES)?;
            for ((owner, asset), amount) in &batch.balances {
                let key = balance_key(owner, asset);
                if *amount == 0 {
                    balances.remove(&key[..])?;
                } else {
                    balances.insert(&key[..], *amount)?;
                }
            }
            drop(balances);
            let mut nonces = transaction.open_table(NONCES)?;
            for (owner, nonce) in &batch.nonces {
                if *nonce == 0 {
                    nonces.remove(&owner.0[..])?;
                } else {
                    nonces.insert(&owner.0[..], *nonce)?;
                }
            }
            drop(nonces);
            let mut undo = transaction.open_table(UNDO)?;
            for height in &batch.undo_delete {
                undo.remove(*height)?;
            }
            for record in &batch.undo_put {
                if record.height >= batch.meta.undo_floor {
                    undo.insert(record.height, &record.encode_to_vec()[..])?;
                }
            }
            // Keep exactly the window: heights below the floor can never be rolled back.
            let pruned: Vec<u64> = undo
                .range(..batch.meta.undo_floor)?
                .map(|entry| entry.map(|(height, _)| height.value()))
                .collect::<Result<_, _>>()?;
            for height in pruned {
                undo.remove(height)?;
            }
            drop(undo);
            let mut meta = transaction.open_table(META)?;
            if let Some(references) = &batch.references {
                meta.insert(META_REFERENCES, &references.encode_to_vec()[..])?;
            }
            meta.insert(META_TIP, &batch.meta.encode_to_vec()[..])?;
        }
        transaction.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;
    use wes_utxo::model::TxId;
    use wes_utxo::validate::{new_utxo, BlockContext};

    fn record() -> (Address, OutPointKey, StoredRecord) {
        let owner = Address([7u8; ADDRESS_LEN]);
        let outpoint = OutPointKey::new(TxId([9u8; 32]), 3);
        let output = wes_utxo::gen::native_output(&owner, 5, pb::LockingCondition::default());
        let context = BlockContext {
            height: 5,
            timestamp: 60,
        };
        let utxo = new_utxo(outpoint, &output, context).unwrap();
        let record = StoredRecord {
            utxo: Some(utxo),
            cold_height: None,
            cold_tx_index: 0,
        };
        (owner, outpoint, record)
    }

    #[test]
    fn stripped_record_decodes_to_the_original_and_is_smaller() {
        let (owner, outpoint, original) = record();
        let mut stripped = original.clone();
        strip_record(&mut stripped);
        let bytes = stripped.encode_to_vec();
        assert!(bytes.len() + 70 < original.encoded_len());
        assert_eq!(decode_record(&bytes, &owner, &outpoint).unwrap(), original);
    }

    #[test]
    fn a_file_of_the_older_format_is_refused_with_what_to_do_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("utxo.redb");
        {
            const TABLE: redb2::TableDefinition<&str, u64> = redb2::TableDefinition::new("t");
            let db = redb2::Database::create(&path).unwrap();
            let transaction = db.begin_write().unwrap();
            transaction
                .open_table(TABLE)
                .unwrap()
                .insert("k", 7)
                .unwrap();
            transaction.commit().unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let error = UtxoStore::open(&path).err().unwrap();
        assert!(
            matches!(error, StoreError::OldFormat { format: 2, .. }),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains("rebuilt from the block repository"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn unstripped_record_decodes_unchanged() {
        let (owner, outpoint, original) = record();
        let bytes = original.encode_to_vec();
        assert_eq!(decode_record(&bytes, &owner, &outpoint).unwrap(), original);
    }
}
