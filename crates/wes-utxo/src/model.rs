//! Ids, newtypes and hashes over the generated protobuf types.
//!
//! The generated types in [`crate::pb`] are the wire and storage form; this module owns the
//! small, typed values the rest of the crate computes with: [`TxId`], [`SigningHash`],
//! [`BlockHash`], [`OutPointKey`] (the ordered key of the UTXO set, also the future store
//! key), [`Address`], [`AssetId`] and [`TokenId`].
//!
//! Hashes are SHA-256 over prost's canonical encoding (fields in tag order, no maps) with a
//! domain prefix, so two hashes of different kinds never collide:
//! - the signing hash and the txid are computed over the transaction with every
//!   `unlocking_proof` removed, so proofs cannot change the id (no malleability) and a
//!   proof can sign the hash it is part of;
//! - the block hash covers the header only; the header commits to the transactions through
//!   [`transactions_root`].

use std::fmt;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::pb;

/// Length of every hash and id in this crate.
pub const HASH_LEN: usize = 32;
/// Length of an [`Address`].
pub const ADDRESS_LEN: usize = 20;

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

fn array32(bytes: &[u8], what: &'static str) -> Result<[u8; HASH_LEN], ModelError> {
    bytes.try_into().map_err(|_| ModelError::BadLength {
        what,
        expected: HASH_LEN,
        actual: bytes.len(),
    })
}

macro_rules! hash_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; HASH_LEN]);

        impl $name {
            /// Parses the 32-byte wire form.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, ModelError> {
                array32(bytes, stringify!($name)).map(Self)
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                write_hex(f, &self.0[..8])?;
                write!(f, "..)")
            }
        }
    };
}

hash_newtype!(
    /// A transaction id: SHA-256 over the transaction without proofs.
    TxId
);
hash_newtype!(
    /// The hash every signature in an unlocking proof commits to.
    SigningHash
);
hash_newtype!(
    /// A block id: SHA-256 over the header.
    BlockHash
);
hash_newtype!(
    /// A token id (32 bytes).
    TokenId
);
hash_newtype!(
    /// SHA-256 of a resource's content; names a contract in a `ContractLock`.
    ContentHash
);

fn domain_hash(domain: &[u8], parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(domain);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// SHA-256 of arbitrary bytes (content hashes, call inputs and results).
pub fn sha256(bytes: &[u8]) -> [u8; HASH_LEN] {
    Sha256::digest(bytes).into()
}

/// The transaction with every unlocking proof removed: what ids and signatures cover.
pub fn strip_proofs(transaction: &pb::Transaction) -> pb::Transaction {
    let mut stripped = transaction.clone();
    for input in &mut stripped.inputs {
        input.unlocking_proof = None;
    }
    stripped
}

fn stripped_encoding(transaction: &pb::Transaction) -> Vec<u8> {
    // Encoding the original with proofs skipped would avoid the clone; the clone keeps the
    // canonical form obviously identical to `strip_proofs`, which signers use too.
    strip_proofs(transaction).encode_to_vec()
}

/// The signing hash of a transaction (what every proof signature commits to).
pub fn signing_hash(transaction: &pb::Transaction) -> SigningHash {
    SigningHash(domain_hash(
        b"WES-UTXO/v1/sighash",
        &[&stripped_encoding(transaction)],
    ))
}

/// The transaction id.
pub fn tx_id(transaction: &pb::Transaction) -> TxId {
    TxId(domain_hash(
        b"WES-UTXO/v1/txid",
        &[&stripped_encoding(transaction)],
    ))
}

/// Both ids with one encoding.
pub fn tx_ids(transaction: &pb::Transaction) -> (TxId, SigningHash) {
    let encoding = stripped_encoding(transaction);
    (
        TxId(domain_hash(b"WES-UTXO/v1/txid", &[&encoding])),
        SigningHash(domain_hash(b"WES-UTXO/v1/sighash", &[&encoding])),
    )
}

/// The block id.
pub fn block_hash(header: &pb::BlockHeader) -> BlockHash {
    BlockHash(domain_hash(
        b"WES-UTXO/v1/block",
        &[&header.encode_to_vec()],
    ))
}

/// The header's commitment to the block's transactions: SHA-256 over the txids in order.
pub fn transactions_root(transactions: &[pb::Transaction]) -> [u8; HASH_LEN] {
    let mut hasher = Sha256::new();
    hasher.update(b"WES-UTXO/v1/txroot");
    for transaction in transactions {
        hasher.update(tx_id(transaction).0);
    }
    hasher.finalize().into()
}

/// The ordered key of one output: the UTXO set, indexes and (later) the store use it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutPointKey {
    /// The creating transaction.
    pub tx_id: TxId,
    /// The output's position in it.
    pub output_index: u32,
}

impl OutPointKey {
    /// Length of [`OutPointKey::to_bytes`].
    pub const ENCODED_LEN: usize = HASH_LEN + 4;

    /// A key from its parts.
    pub fn new(tx_id: TxId, output_index: u32) -> Self {
        Self {
            tx_id,
            output_index,
        }
    }

    /// Parses a protobuf outpoint; the txid must be 32 bytes.
    pub fn from_proto(outpoint: &pb::OutPoint) -> Result<Self, ModelError> {
        Ok(Self {
            tx_id: TxId::from_slice(&outpoint.tx_id)?,
            output_index: outpoint.output_index,
        })
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::OutPoint {
        pb::OutPoint {
            tx_id: self.tx_id.0.to_vec(),
            output_index: self.output_index,
        }
    }

    /// txid || output index (big endian): byte order equals key order, for ordered stores.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut bytes = [0u8; Self::ENCODED_LEN];
        bytes[..HASH_LEN].copy_from_slice(&self.tx_id.0);
        bytes[HASH_LEN..].copy_from_slice(&self.output_index.to_be_bytes());
        bytes
    }

    /// Inverse of [`OutPointKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() != Self::ENCODED_LEN {
            return Err(ModelError::BadLength {
                what: "OutPointKey",
                expected: Self::ENCODED_LEN,
                actual: bytes.len(),
            });
        }
        let tx_id = TxId::from_slice(&bytes[..HASH_LEN])?;
        let mut index = [0u8; 4];
        index.copy_from_slice(&bytes[HASH_LEN..]);
        Ok(Self {
            tx_id,
            output_index: u32::from_be_bytes(index),
        })
    }
}

impl fmt::Display for OutPointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tx_id, self.output_index)
    }
}

impl fmt::Debug for OutPointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:{}", self.tx_id, self.output_index)
    }
}

/// An owner address: the first 20 bytes of SHA-256 of an Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; ADDRESS_LEN]);

impl Address {
    /// The address of an Ed25519 public key.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        let digest = domain_hash(b"WES-UTXO/v1/address", &[public_key]);
        let mut address = [0u8; ADDRESS_LEN];
        address.copy_from_slice(&digest[..ADDRESS_LEN]);
        Self(address)
    }

    /// Parses the 20-byte wire form.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ModelError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| ModelError::BadLength {
                what: "Address",
                expected: ADDRESS_LEN,
                actual: bytes.len(),
            })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl TokenId {
    /// The one token a transaction may mint: derived from its first consumed input, which
    /// no other transaction can ever consume, so the id is unique and minting is a one-off.
    pub fn minted_by(first_consumed_input: &OutPointKey) -> Self {
        Self(domain_hash(
            b"WES-UTXO/v1/token",
            &[&first_consumed_input.to_bytes()],
        ))
    }
}

/// What an asset amount is denominated in. Native coin sorts first.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum AssetId {
    /// The chain's native coin: the only asset fees are paid in.
    Native,
    /// A contract token.
    Token(TokenId),
}

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssetId::Native => write!(f, "native"),
            AssetId::Token(token_id) => write!(f, "token {token_id}"),
        }
    }
}

/// The asset and amount an ASSET output carries, or `None` for other outputs.
pub fn asset_amount(output: &pb::TxOutput) -> Result<Option<(AssetId, u64)>, ModelError> {
    use pb::asset_output::AssetContent;
    let Some(pb::tx_output::OutputContent::Asset(asset)) = &output.output_content else {
        return Ok(None);
    };
    match &asset.asset_content {
        Some(AssetContent::NativeCoin(coin)) => Ok(Some((AssetId::Native, coin.amount))),
        Some(AssetContent::ContractToken(token)) => Ok(Some((
            AssetId::Token(TokenId::from_slice(&token.token_id)?),
            token.amount,
        ))),
        None => Err(ModelError::MissingField("AssetOutput.asset_content")),
    }
}

/// The UTXO category an output becomes.
pub fn category_of(output: &pb::TxOutput) -> Result<pb::UtxoCategory, ModelError> {
    use pb::tx_output::OutputContent;
    match &output.output_content {
        Some(OutputContent::Asset(_)) => Ok(pb::UtxoCategory::Asset),
        Some(OutputContent::Resource(_)) => Ok(pb::UtxoCategory::Resource),
        Some(OutputContent::State(_)) => Ok(pb::UtxoCategory::State),
        None => Err(ModelError::MissingField("TxOutput.output_content")),
    }
}

/// Whether a transaction is a coinbase (no inputs).
pub fn is_coinbase(transaction: &pb::Transaction) -> bool {
    transaction.inputs.is_empty()
}

/// Helpers to read the generated UTXO record.
impl pb::Utxo {
    /// The cached output, if the record holds it.
    pub fn output(&self) -> Option<&pb::TxOutput> {
        match &self.content_strategy {
            Some(pb::utxo::ContentStrategy::CachedOutput(output)) => Some(output),
            _ => None,
        }
    }

    /// The resource constraints, if this is a RESOURCE record.
    pub fn resource_constraints(&self) -> Option<&pb::ResourceUtxoConstraints> {
        match &self.type_constraints {
            Some(pb::utxo::TypeConstraints::ResourceConstraints(constraints)) => Some(constraints),
            _ => None,
        }
    }

    /// The state constraints, if this is a STATE record.
    pub fn state_constraints(&self) -> Option<&pb::StateUtxoConstraints> {
        match &self.type_constraints {
            Some(pb::utxo::TypeConstraints::StateConstraints(constraints)) => Some(constraints),
            _ => None,
        }
    }

    /// Whether a STATE record is past its TTL at `block_timestamp` (seed 001: expired when
    /// the current time exceeds `expires_at_timestamp`; 0 never expires).
    pub fn is_expired_at(&self, block_timestamp: u64) -> bool {
        self.state_constraints()
            .is_some_and(|c| c.expires_at_timestamp > 0 && block_timestamp > c.expires_at_timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outpoint_key_bytes_round_trip_and_keep_order() {
        let a = OutPointKey::new(TxId([1; 32]), 7);
        let b = OutPointKey::new(TxId([1; 32]), 256);
        assert_eq!(OutPointKey::from_bytes(&a.to_bytes()), Ok(a));
        assert!(a < b && a.to_bytes() < b.to_bytes());
        assert!(OutPointKey::from_bytes(&[0; 35]).is_err());
    }

    #[test]
    fn ids_ignore_proofs_but_cover_everything_else() {
        let mut transaction = pb::Transaction {
            version: 1,
            inputs: vec![pb::TxInput {
                previous_output: Some(OutPointKey::new(TxId([2; 32]), 0).to_proto()),
                is_reference_only: false,
                unlocking_proof: None,
            }],
            outputs: vec![],
            coinbase: None,
        };
        let (id, signing_hash) = tx_ids(&transaction);
        assert_ne!(id.0, signing_hash.0, "domain separated");
        transaction.inputs[0].unlocking_proof = Some(pb::UnlockingProof {
            condition_index: 3,
            proof: None,
        });
        assert_eq!(tx_ids(&transaction), (id, signing_hash));
        transaction.inputs[0].is_reference_only = true;
        assert_ne!(tx_id(&transaction), id);
    }
}
