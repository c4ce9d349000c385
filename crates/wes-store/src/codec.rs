//! On-disk encodings: table keys (big-endian, so byte order is the order queries need) and
//! the protobuf records (prost-derived, so fields can be added compatibly) the store
//! writes for UTXO records, undo data, admissions and the flushed tip.

use wes_utxo::model::{Address, AssetId, BlockHash, OutPointKey, TokenId, TxId, ADDRESS_LEN};
use wes_utxo::pb;
use wes_utxo::references::Admission;
use wes_utxo::validate::ChainTip;

use crate::error::{Result, StoreError};

/// Owner (20) | category (1) | outpoint (36): the key of the record table.
pub const OWNER_KEY_LEN: usize = ADDRESS_LEN + 1 + OutPointKey::ENCODED_LEN;
/// Owner (20) | asset tag (1) | token id (32, zero for native): the balance key.
pub const BALANCE_KEY_LEN: usize = ADDRESS_LEN + 33;

/// A category as its one-byte key part (categories are 1..=3, checked on creation).
pub fn category_byte(category: i32) -> Result<u8> {
    u8::try_from(category)
        .map_err(|_| StoreError::Corrupt(format!("category {category} out of range")))
}

/// The record-table key of a UTXO.
pub fn owner_key(owner: &Address, category: u8, outpoint: &OutPointKey) -> [u8; OWNER_KEY_LEN] {
    let mut key = [0u8; OWNER_KEY_LEN];
    key[..ADDRESS_LEN].copy_from_slice(&owner.0);
    key[ADDRESS_LEN] = category;
    key[ADDRESS_LEN + 1..].copy_from_slice(&outpoint.to_bytes());
    key
}

/// Splits a record-table key.
pub fn parse_owner_key(key: &[u8]) -> Result<(Address, u8, OutPointKey)> {
    if key.len() != OWNER_KEY_LEN {
        return Err(StoreError::Corrupt(format!(
            "owner key of {} bytes",
            key.len()
        )));
    }
    Ok((
        Address::from_slice(&key[..ADDRESS_LEN])?,
        key[ADDRESS_LEN],
        OutPointKey::from_bytes(&key[ADDRESS_LEN + 1..])?,
    ))
}

/// The balance key.
pub fn balance_key(owner: &Address, asset: &AssetId) -> [u8; BALANCE_KEY_LEN] {
    let mut key = [0u8; BALANCE_KEY_LEN];
    key[..ADDRESS_LEN].copy_from_slice(&owner.0);
    if let AssetId::Token(token) = asset {
        key[ADDRESS_LEN] = 1;
        key[ADDRESS_LEN + 1..].copy_from_slice(&token.0);
    }
    key
}

/// The asset of a balance key.
pub fn parse_balance_asset(key: &[u8]) -> Result<AssetId> {
    if key.len() != BALANCE_KEY_LEN {
        return Err(StoreError::Corrupt(format!(
            "balance key of {} bytes",
            key.len()
        )));
    }
    match key[ADDRESS_LEN] {
        0 => Ok(AssetId::Native),
        1 => Ok(AssetId::Token(TokenId::from_slice(
            &key[ADDRESS_LEN + 1..],
        )?)),
        tag => Err(StoreError::Corrupt(format!("balance key asset tag {tag}"))),
    }
}

/// Expiry timestamp (8) | outpoint (36).
pub fn expiry_key(expires_at: u64, outpoint: &OutPointKey) -> [u8; 44] {
    let mut key = [0u8; 44];
    key[..8].copy_from_slice(&expires_at.to_be_bytes());
    key[8..].copy_from_slice(&outpoint.to_bytes());
    key
}

/// Splits an expiry key.
pub fn parse_expiry_key(key: &[u8]) -> Result<(u64, OutPointKey)> {
    if key.len() != 44 {
        return Err(StoreError::Corrupt(format!(
            "expiry key of {} bytes",
            key.len()
        )));
    }
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&key[..8]);
    Ok((
        u64::from_be_bytes(timestamp),
        OutPointKey::from_bytes(&key[8..])?,
    ))
}

/// A UTXO record as stored: hot (the full record) or cold (`content_strategy` is
/// `reference_only`, and the output is read back from the block at `cold_height`,
/// transaction `cold_tx_index`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRecord {
    /// The record (cold: without its output).
    #[prost(message, optional, tag = "1")]
    pub utxo: Option<pb::Utxo>,
    /// Height of the creating block, for cold records.
    #[prost(uint64, optional, tag = "2")]
    pub cold_height: Option<u64>,
    /// Index of the creating transaction in its block, for cold records.
    #[prost(uint32, tag = "3")]
    pub cold_tx_index: u32,
}

/// A chain tip.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TipRecord {
    /// Height.
    #[prost(uint64, tag = "1")]
    pub height: u64,
    /// Block hash (32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
    /// Block timestamp.
    #[prost(uint64, tag = "3")]
    pub timestamp: u64,
}

impl TipRecord {
    /// From the validation type.
    pub fn from_tip(tip: &ChainTip) -> Self {
        Self {
            height: tip.height,
            hash: tip.hash.0.to_vec(),
            timestamp: tip.timestamp,
        }
    }

    /// To the validation type.
    pub fn to_tip(&self) -> Result<ChainTip> {
        Ok(ChainTip {
            height: self.height,
            hash: BlockHash::from_slice(&self.hash)?,
            timestamp: self.timestamp,
        })
    }
}

/// The `meta` row: what the last flush covered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaRecord {
    /// The tip the flushed state is at (absent: nothing applied).
    #[prost(message, optional, tag = "1")]
    pub tip: Option<TipRecord>,
    /// Lowest height whose block can still be rolled back.
    #[prost(uint64, tag = "2")]
    pub undo_floor: u64,
}

/// One admission.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdmissionRecord {
    /// Transaction id.
    #[prost(bytes = "vec", tag = "1")]
    pub tx_id: Vec<u8>,
    /// Referenced outpoints (36 bytes each).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub referenced: Vec<Vec<u8>>,
    /// Outpoints it would consume.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub consumed: Vec<Vec<u8>>,
    /// Tip height when admitted.
    #[prost(uint64, tag = "4")]
    pub admitted_at_height: u64,
    /// Released when a block above this height is applied.
    #[prost(uint64, tag = "5")]
    pub release_after_height: u64,
}

fn outpoints_to_bytes(outpoints: &[OutPointKey]) -> Vec<Vec<u8>> {
    outpoints.iter().map(|o| o.to_bytes().to_vec()).collect()
}

fn outpoints_from_bytes(bytes: &[Vec<u8>]) -> Result<Vec<OutPointKey>> {
    bytes
        .iter()
        .map(|b| OutPointKey::from_bytes(b).map_err(StoreError::from))
        .collect()
}

impl AdmissionRecord {
    /// From the reference-table type.
    pub fn from_admission(admission: &Admission) -> Self {
        Self {
            tx_id: admission.tx_id.0.to_vec(),
            referenced: outpoints_to_bytes(&admission.referenced),
            consumed: outpoints_to_bytes(&admission.consumed),
            admitted_at_height: admission.admitted_at_height,
            release_after_height: admission.release_after_height,
        }
    }

    /// To the reference-table type.
    pub fn to_admission(&self) -> Result<Admission> {
        Ok(Admission {
            tx_id: TxId::from_slice(&self.tx_id)?,
            referenced: outpoints_from_bytes(&self.referenced)?,
            consumed: outpoints_from_bytes(&self.consumed)?,
            admitted_at_height: self.admitted_at_height,
            release_after_height: self.release_after_height,
        })
    }
}

/// A reference total of one outpoint.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TotalRecord {
    /// Outpoint (36 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub outpoint: Vec<u8>,
    /// References ever admitted on it while live.
    #[prost(uint64, tag = "2")]
    pub total: u64,
}

/// The `references` row: the whole reference table (bounded by `max_admissions`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReferencesRecord {
    /// Admissions held.
    #[prost(message, repeated, tag = "1")]
    pub admissions: Vec<AdmissionRecord>,
    /// Reference totals.
    #[prost(message, repeated, tag = "2")]
    pub totals: Vec<TotalRecord>,
}

/// A record a block consumed, as it was stored, with its reference total.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConsumedRecord {
    /// The stored record.
    #[prost(message, optional, tag = "1")]
    pub record: Option<StoredRecord>,
    /// Its reference total.
    #[prost(uint64, tag = "2")]
    pub total: u64,
}

/// What rolling back one block needs (the `undo` table, keyed by height).
#[derive(Clone, PartialEq, prost::Message)]
pub struct UndoRecord {
    /// The tip before the block (absent for genesis).
    #[prost(message, optional, tag = "1")]
    pub tip_before: Option<TipRecord>,
    /// The block's hash.
    #[prost(bytes = "vec", tag = "2")]
    pub hash: Vec<u8>,
    /// The block's height.
    #[prost(uint64, tag = "3")]
    pub height: u64,
    /// Outputs the block created that were still live after it.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub created: Vec<Vec<u8>>,
    /// Records the block consumed that existed before it.
    #[prost(message, repeated, tag = "5")]
    pub consumed: Vec<ConsumedRecord>,
    /// STATE records the block marked EXPIRED.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub expired: Vec<Vec<u8>>,
    /// Admissions the block released.
    #[prost(message, repeated, tag = "7")]
    pub released: Vec<AdmissionRecord>,
    /// One address per nonce increment.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub nonce_bumps: Vec<Vec<u8>>,
}

/// Decodes a protobuf value read from disk.
pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M> {
    Ok(M::decode(bytes)?)
}

/// The outpoint a record names.
pub fn record_outpoint(utxo: &pb::Utxo) -> Result<OutPointKey> {
    let outpoint = utxo
        .outpoint
        .as_ref()
        .ok_or_else(|| StoreError::Corrupt("record without outpoint".to_string()))?;
    Ok(OutPointKey::from_proto(outpoint)?)
}

/// Parses outpoint bytes from undo data.
pub fn outpoint_from(bytes: &[u8]) -> Result<OutPointKey> {
    Ok(OutPointKey::from_bytes(bytes)?)
}
