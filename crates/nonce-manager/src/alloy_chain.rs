//! [`ChainClient`] over HTTP JSON-RPC with alloy's provider (reqwest). Every call is cut
//! off at [`limits::RPC_TIMEOUT`]; error responses are classified by
//! [`ChainError::from_rpc`].

use std::future::Future;

use alloy_eips::BlockNumberOrTag;
use alloy_network::{Ethereum, ReceiptResponse, TransactionResponse};
use alloy_primitives::{Address, B256};
use alloy_provider::{Provider, RootProvider};
use alloy_transport::TransportError;
use async_trait::async_trait;

use crate::chain::{BlockRef, ChainClient, ChainError, ReceiptSummary, TxLookup};
use crate::error::InvalidArgument;
use crate::limits;

/// A JSON-RPC endpoint over HTTP(S).
#[derive(Debug, Clone)]
pub struct AlloyChainClient {
    provider: RootProvider<Ethereum>,
}

impl AlloyChainClient {
    /// A client for `url` (`http://127.0.0.1:8545`). Connects lazily.
    pub fn new(url: &str) -> Result<Self, InvalidArgument> {
        let url: url::Url = url
            .parse()
            .map_err(|error| InvalidArgument(format!("rpc url {url:?}: {error}")))?;
        Ok(Self {
            provider: RootProvider::new_http(url),
        })
    }
}

fn classify(error: TransportError) -> ChainError {
    if let Some(payload) = error.as_error_resp() {
        return ChainError::from_rpc(payload.code, &payload.message);
    }
    ChainError::Transport(error.to_string())
}

async fn timed<T>(call: impl Future<Output = Result<T, TransportError>>) -> Result<T, ChainError> {
    match tokio::time::timeout(limits::RPC_TIMEOUT, call).await {
        Ok(result) => result.map_err(classify),
        Err(_elapsed) => Err(ChainError::Timeout),
    }
}

#[async_trait]
impl ChainClient for AlloyChainClient {
    async fn chain_id(&self) -> Result<u64, ChainError> {
        timed(async { self.provider.get_chain_id().await }).await
    }

    async fn pending_nonce(&self, address: Address) -> Result<u64, ChainError> {
        timed(async { self.provider.get_transaction_count(address).pending().await }).await
    }

    async fn latest_nonce(&self, address: Address) -> Result<u64, ChainError> {
        timed(async { self.provider.get_transaction_count(address).latest().await }).await
    }

    async fn base_fee(&self) -> Result<Option<u128>, ChainError> {
        let block = timed(async {
            self.provider
                .get_block_by_number(BlockNumberOrTag::Latest)
                .await
        })
        .await?;
        let block = block.ok_or_else(|| ChainError::Transport("no latest block".to_owned()))?;
        Ok(block.header.base_fee_per_gas.map(u128::from))
    }

    async fn send_raw_transaction(&self, raw: &[u8]) -> Result<B256, ChainError> {
        let pending = timed(async { self.provider.send_raw_transaction(raw).await }).await?;
        Ok(*pending.tx_hash())
    }

    async fn block_number(&self) -> Result<u64, ChainError> {
        timed(async { self.provider.get_block_number().await }).await
    }

    async fn transaction_lookup(&self, hash: B256) -> Result<TxLookup, ChainError> {
        let tx = timed(async { self.provider.get_transaction_by_hash(hash).await }).await?;
        Ok(match tx {
            None => TxLookup::Unknown,
            Some(tx) => match tx.block_number() {
                Some(number) => TxLookup::Mined(number),
                None => TxLookup::Pending,
            },
        })
    }

    async fn receipt(&self, hash: B256) -> Result<Option<ReceiptSummary>, ChainError> {
        let receipt = timed(async { self.provider.get_transaction_receipt(hash).await }).await?;
        let Some(receipt) = receipt else {
            return Ok(None);
        };
        let (Some(block_number), Some(block_hash)) = (receipt.block_number(), receipt.block_hash())
        else {
            // A pending receipt (some nodes return one for pool transactions): not mined.
            return Ok(None);
        };
        Ok(Some(ReceiptSummary {
            hash: receipt.transaction_hash(),
            block_number,
            block_hash,
            success: receipt.status(),
        }))
    }

    async fn block(&self, number: u64) -> Result<Option<BlockRef>, ChainError> {
        let block = timed(async {
            self.provider
                .get_block_by_number(BlockNumberOrTag::Number(number))
                .await
        })
        .await?;
        Ok(block.map(|block| BlockRef {
            number: block.header.number,
            hash: block.header.hash,
            parent_hash: block.header.parent_hash,
        }))
    }
}
