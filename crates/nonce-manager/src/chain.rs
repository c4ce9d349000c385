//! The [`ChainClient`] boundary: the few JSON-RPC calls the nonce manager makes, and the
//! typed classification of a node's send errors, so the submit path decides on variants
//! rather than on message strings. The alloy HTTP implementation is in
//! [`crate::alloy_chain`].

use std::fmt;

use alloy_primitives::{Address, B256};
use async_trait::async_trait;

/// Why a chain call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The node already has this exact transaction ("already known", "known transaction",
    /// "transaction already imported"): the send succeeded before.
    #[error("transaction already known")]
    AlreadyKnown,
    /// The sender's nonce on chain is past this transaction's: it, or another with the same
    /// nonce, was mined.
    #[error("nonce too low")]
    NonceTooLow,
    /// Another transaction with this nonce is in the pool and this one does not bump its
    /// fees enough.
    #[error("replacement transaction underpriced")]
    ReplacementUnderpriced,
    /// Any other JSON-RPC error response.
    #[error("rpc error {code}: {message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// The node's message.
        message: String,
    },
    /// The call did not complete in time; whether a send reached the node is unknown.
    #[error("rpc call timed out")]
    Timeout,
    /// Connection, HTTP or decoding failure; whether a send reached the node is unknown.
    #[error("rpc transport: {0}")]
    Transport(String),
}

impl ChainError {
    /// Classifies a JSON-RPC error response by the messages geth, anvil, hardhat, erigon,
    /// nethermind and besu use.
    pub fn from_rpc(code: i64, message: &str) -> Self {
        let lower = message.to_ascii_lowercase();
        let has = |needle: &str| lower.contains(needle);
        if has("already known")
            || has("known transaction")
            || has("already imported")
            || has("alreadyknown")
            || has("already in the pool")
        {
            ChainError::AlreadyKnown
        } else if has("nonce too low") || has("oldnonce") || has("nonce is too low") {
            ChainError::NonceTooLow
        } else if has("replacement transaction underpriced")
            || has("replacement underpriced")
            || has("replacementnotallowed")
        {
            ChainError::ReplacementUnderpriced
        } else {
            ChainError::Rpc {
                code,
                message: message.to_owned(),
            }
        }
    }
}

/// A transaction receipt, reduced to what the lifecycle needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptSummary {
    /// The mined transaction.
    pub hash: B256,
    /// The block it was mined in.
    pub block_number: u64,
    /// That block's hash (to detect a reorg later).
    pub block_hash: B256,
    /// False when the transaction reverted.
    pub success: bool,
}

/// A block's number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Height.
    pub number: u64,
    /// Hash.
    pub hash: B256,
    /// Parent hash, to walk back on a reorg.
    pub parent_hash: B256,
}

/// What a node knows of a transaction hash (`eth_getTransactionByHash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxLookup {
    /// Neither in the pool nor mined: never seen, or dropped.
    Unknown,
    /// In the node's pool.
    Pending,
    /// Mined, at this height.
    Mined(u64),
}

/// The chain, as the nonce manager sees it. One implementation over JSON-RPC
/// ([`crate::alloy_chain::AlloyChainClient`]); tests use fakes.
#[async_trait]
pub trait ChainClient: Send + Sync + fmt::Debug {
    /// `eth_chainId`.
    async fn chain_id(&self) -> Result<u64, ChainError>;

    /// `eth_getTransactionCount(address, "pending")`: the next nonce counting the pool.
    async fn pending_nonce(&self, address: Address) -> Result<u64, ChainError>;

    /// `eth_getTransactionCount(address, "latest")`: the next nonce counting mined only.
    async fn latest_nonce(&self, address: Address) -> Result<u64, ChainError>;

    /// The latest block's base fee, `None` before London.
    async fn base_fee(&self) -> Result<Option<u128>, ChainError>;

    /// `eth_sendRawTransaction`; returns the hash the node computed. Send errors come back
    /// classified ([`ChainError::AlreadyKnown`], ...).
    async fn send_raw_transaction(&self, raw: &[u8]) -> Result<B256, ChainError>;

    /// `eth_blockNumber`: the head's height.
    async fn block_number(&self) -> Result<u64, ChainError>;

    /// `eth_getTransactionByHash`, reduced to pool / mined / unknown.
    async fn transaction_lookup(&self, hash: B256) -> Result<TxLookup, ChainError>;

    /// `eth_getTransactionReceipt`; `None` while not mined.
    async fn receipt(&self, hash: B256) -> Result<Option<ReceiptSummary>, ChainError>;

    /// `eth_getBlockByNumber(number, false)`; `None` past the head.
    async fn block(&self, number: u64) -> Result<Option<BlockRef>, ChainError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(message: &str, expect: ChainError) {
        assert_eq!(ChainError::from_rpc(-32000, message), expect, "{message}");
    }

    #[test]
    fn send_errors_are_classified() {
        use ChainError::*;
        check("already known", AlreadyKnown);
        check("Known transaction: 0xabc", AlreadyKnown);
        check("transaction already imported", AlreadyKnown);
        check("AlreadyKnown", AlreadyKnown);
        check("nonce too low", NonceTooLow);
        check("nonce too low: next nonce 5, tx nonce 3", NonceTooLow);
        check(
            "Nonce too low. Expected nonce to be 5 but got 3.",
            NonceTooLow,
        );
        check("OldNonce", NonceTooLow);
        check(
            "replacement transaction underpriced",
            ReplacementUnderpriced,
        );
        check(
            "Replacement transaction underpriced. A gasPrice/maxFeePerGas of at least 2 is necessary",
            ReplacementUnderpriced,
        );
        check(
            "insufficient funds for gas * price + value",
            Rpc {
                code: -32000,
                message: "insufficient funds for gas * price + value".to_owned(),
            },
        );
    }
}
