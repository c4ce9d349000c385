//! Local signing keys (alloy signer-local) and EIP-1559 transaction building. The hash is
//! computed here, when signing, so it is stored before the transaction is broadcast: a send
//! that times out can still be matched to its receipt.

use std::fmt;
use std::str::FromStr;

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, TxKind, B256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;

use crate::error::InvalidArgument;
use crate::types::TxPayload;

/// A private key held in memory. `Debug` shows only the address.
#[derive(Clone)]
pub struct LocalKey {
    signer: PrivateKeySigner,
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl LocalKey {
    /// From a hex private key, with or without `0x`.
    pub fn from_hex(key: &str) -> Result<Self, InvalidArgument> {
        let signer = PrivateKeySigner::from_str(key.trim())
            .map_err(|_| InvalidArgument("private key is not 32 bytes of hex".to_owned()))?;
        Ok(Self { signer })
    }

    /// From the hex private key in environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, InvalidArgument> {
        let key = std::env::var(name)
            .map_err(|_| InvalidArgument(format!("environment variable {name} is not set")))?;
        Self::from_hex(&key)
    }

    /// The signer's address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// Builds and signs the EIP-1559 transaction for `payload` at `nonce`. Signing is
    /// deterministic (RFC 6979): the same inputs give the same bytes and hash.
    pub fn sign(
        &self,
        chain_id: u64,
        nonce: u64,
        payload: &TxPayload,
    ) -> Result<SignedTx, alloy_signer::Error> {
        let tx = TxEip1559 {
            chain_id,
            nonce,
            gas_limit: payload.gas_limit,
            max_fee_per_gas: payload.max_fee_per_gas,
            max_priority_fee_per_gas: payload.max_priority_fee_per_gas,
            to: TxKind::Call(payload.to),
            value: payload.value,
            access_list: Default::default(),
            input: payload.data.clone(),
        };
        let signature = self.signer.sign_hash_sync(&tx.signature_hash())?;
        let signed = tx.into_signed(signature);
        let hash = *signed.hash();
        let raw = TxEnvelope::from(signed).encoded_2718();
        Ok(SignedTx { hash, raw })
    }
}

/// A signed transaction ready to broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// Its hash, as the chain will report it.
    pub hash: B256,
    /// EIP-2718 bytes for `eth_sendRawTransaction`.
    pub raw: Vec<u8>,
}

/// What a transaction signed elsewhere says about itself ([`decode_signed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedTx {
    /// The address its signature recovers to.
    pub from: Address,
    /// Its EIP-155 chain id.
    pub chain_id: u64,
    /// Its nonce.
    pub nonce: u64,
    /// Its hash, as the chain will report it.
    pub hash: B256,
    /// Fee cap (the gas price of a legacy or EIP-2930 transaction).
    pub max_fee_per_gas: u128,
    /// Tip cap (the gas price of a legacy or EIP-2930 transaction).
    pub max_priority_fee_per_gas: u128,
}

/// Decodes EIP-2718 bytes (as `eth_sendRawTransaction` takes them) and recovers the
/// signer. Refuses trailing bytes and transactions without a chain id (replayable on any
/// chain).
pub fn decode_signed(raw: &[u8]) -> Result<DecodedTx, InvalidArgument> {
    use alloy_consensus::transaction::SignerRecoverable;
    use alloy_consensus::Transaction;
    use alloy_eips::eip2718::Decodable2718;

    if raw.is_empty() {
        return Err(InvalidArgument("raw transaction is empty".to_owned()));
    }
    if raw.len() > crate::limits::RAW_TRANSACTION_BYTES_MAX {
        return Err(InvalidArgument(format!(
            "raw transaction is {} bytes, more than {}",
            raw.len(),
            crate::limits::RAW_TRANSACTION_BYTES_MAX
        )));
    }
    let mut rest = raw;
    let envelope = TxEnvelope::decode_2718(&mut rest).map_err(|error| {
        InvalidArgument(format!(
            "raw transaction is not an EIP-2718 transaction: {error}"
        ))
    })?;
    if !rest.is_empty() {
        return Err(InvalidArgument(format!(
            "raw transaction has {} trailing bytes",
            rest.len()
        )));
    }
    let from = envelope.recover_signer().map_err(|error| {
        InvalidArgument(format!(
            "raw transaction's signature does not recover: {error}"
        ))
    })?;
    let chain_id = envelope.chain_id().ok_or_else(|| {
        InvalidArgument("raw transaction has no chain id (pre-EIP-155, replayable)".to_owned())
    })?;
    let max_fee_per_gas = envelope.max_fee_per_gas();
    Ok(DecodedTx {
        from,
        chain_id,
        nonce: envelope.nonce(),
        hash: *envelope.tx_hash(),
        max_fee_per_gas,
        max_priority_fee_per_gas: envelope
            .max_priority_fee_per_gas()
            .unwrap_or(max_fee_per_gas),
    })
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Bytes, U256};

    use super::*;

    /// Anvil's and hardhat's dev account 0, a published test key.
    const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn signs_deterministically_with_the_known_address() {
        let key = LocalKey::from_hex(DEV_KEY).expect("valid key");
        assert_eq!(
            format!("{:#x}", key.address()),
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        );
        let payload = TxPayload {
            to: Address::repeat_byte(1),
            value: U256::from(1),
            data: Bytes::new(),
            gas_limit: 21_000,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1,
        };
        let first = key.sign(31337, 0, &payload).expect("sign");
        let again = key.sign(31337, 0, &payload).expect("sign");
        assert_eq!(first, again);
        assert_eq!(first.hash, alloy_primitives::keccak256(&first.raw));
        assert_ne!(key.sign(31337, 1, &payload).expect("sign").hash, first.hash);

        let decoded = decode_signed(&first.raw).expect("decodes");
        assert_eq!(
            (decoded.from, decoded.chain_id, decoded.nonce, decoded.hash),
            (key.address(), 31337, 0, first.hash)
        );
        let mut trailing = first.raw.clone();
        trailing.push(0);
        assert!(decode_signed(&trailing).is_err());
        let mut tampered = first.raw.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        // A changed signature fails to recover or recovers to somebody else.
        if let Ok(decoded) = decode_signed(&tampered) {
            assert_ne!(decoded.from, key.address());
        }
        assert!(decode_signed(&[]).is_err());
        assert!(decode_signed(&[0x02, 0xc0]).is_err());
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let error = LocalKey::from_hex("0x1234").expect_err("short key");
        assert!(!error.0.contains("1234"));
        assert!(LocalKey::from_env("TAKHIN_NONCE_TEST_UNSET_KEY").is_err());
    }
}
