//! SubmitTransaction: allocate, sign, persist, send, idempotently per request id.
//!
//! The order is what makes retries safe: the nonce is committed with the request id before
//! anything is signed; the signed attempt (hash, fees, raw bytes) is committed before it is
//! broadcast. A retry therefore finds the record, never allocates again, and re-broadcasts
//! the same bytes, which a node answers with the same hash or "already known".

use std::sync::Arc;

use alloy_primitives::Address;
use ledger_lease::Clock;

use crate::allocator::Allocator;
use crate::chain::{ChainClient, ChainError};
use crate::error::{AllocateError, InvalidArgument, StoreError, SubmitError};
use crate::signer::{decode_signed, LocalKey};
use crate::store::NonceStore;
use crate::types::{ManagedTransaction, RequestId, TxAttempt, TxPayload, TxStatus};

/// One SubmitTransaction call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    /// The idempotency key.
    pub request_id: RequestId,
    /// Who signs; must be the submitter's key.
    pub signer: Address,
    /// What to send.
    pub payload: TxPayload,
}

/// Submits transactions for one signer on the node holding its lease.
#[derive(Debug)]
pub struct Submitter {
    store: Arc<dyn NonceStore>,
    allocator: Arc<Allocator>,
    chain: Arc<dyn ChainClient>,
    key: LocalKey,
    chain_id: u64,
    clock: Arc<dyn Clock>,
}

impl Submitter {
    /// Reads the chain id once; `key` must be the allocator's signer.
    pub async fn new(
        store: Arc<dyn NonceStore>,
        allocator: Arc<Allocator>,
        chain: Arc<dyn ChainClient>,
        key: LocalKey,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SubmitError> {
        if key.address() != allocator.signer() {
            return Err(InvalidArgument(format!(
                "key is for {:#x}, the allocator for {:#x}",
                key.address(),
                allocator.signer()
            ))
            .into());
        }
        let chain_id = chain.chain_id().await.map_err(SubmitError::Chain)?;
        Ok(Self {
            store,
            allocator,
            chain,
            key,
            chain_id,
            clock,
        })
    }

    /// SubmitTransaction. Returns the record as stored after this call. A retried request id
    /// returns the same record (same nonce, same hash); a record past `Pending` is returned
    /// as is, without sending again.
    pub async fn submit(&self, request: SubmitRequest) -> Result<ManagedTransaction, SubmitError> {
        request.payload.validate()?;
        let signer = self.key.address();
        if request.signer != signer {
            return Err(InvalidArgument(format!(
                "this submitter signs for {signer:#x}, not {:#x}",
                request.signer
            ))
            .into());
        }
        let allocation = self
            .allocator
            .allocate(request.request_id.clone(), request.payload.clone())
            .await?;
        let record = self.load(&request.request_id).await?;
        debug_assert_eq!(record.nonce, allocation.nonce);
        if record.status != TxStatus::Pending {
            return Ok(record);
        }
        let token = self
            .allocator
            .token()
            .ok_or(AllocateError::LeaseLost(signer))?;
        let attempt = match record.attempts.last() {
            Some(attempt) => attempt.clone(),
            None => {
                let signed = self
                    .key
                    .sign(self.chain_id, record.nonce, &record.payload)
                    .map_err(SubmitError::Sign)?;
                let attempt = TxAttempt {
                    hash: signed.hash,
                    max_fee_per_gas: record.payload.max_fee_per_gas,
                    max_priority_fee_per_gas: record.payload.max_priority_fee_per_gas,
                    raw: signed.raw.into(),
                    sent_at: self.clock.now(),
                };
                self.store
                    .record_attempt(signer, token, &record.request_id, &attempt)
                    .await?;
                attempt
            }
        };
        let status = self.send(&record, &attempt).await?;
        self.store
            .set_status(signer, token, &record.request_id, status)
            .await?;
        self.load(&record.request_id).await
    }

    /// ReportSignedTransaction: the caller of AllocateNonce signed `raw` (EIP-2718 bytes)
    /// elsewhere for the nonce allocated under `request_id`. The attempt is checked (it
    /// must recover to this signer, carry the allocated nonce and this chain's id) and
    /// stored, fenced, before anything else; with `broadcast` it is then sent and judged
    /// as SubmitTransaction judges its own, otherwise the caller has sent it. The record
    /// moves to `Tracking`, where finality follows its receipt like any other; the policy
    /// loop may re-broadcast the reported bytes but never re-signs them (the manager
    /// holds no payload for an external allocation).
    ///
    /// Idempotent: the same bytes again change nothing (and are sent again with
    /// `broadcast`). A different transaction for the same nonce (the caller's own fee
    /// bump) is added as a further attempt; finality accepts whichever is mined.
    pub async fn report_signed(
        &self,
        request_id: &RequestId,
        raw: &[u8],
        broadcast: bool,
    ) -> Result<ManagedTransaction, SubmitError> {
        let signer = self.key.address();
        let record = self.load(request_id).await?;
        if record.signer != signer {
            return Err(InvalidArgument(format!(
                "request {request_id} belongs to signer {:#x}, not {signer:#x}",
                record.signer
            ))
            .into());
        }
        if !record.payload.is_external() {
            return Err(SubmitError::Precondition(format!(
                "request {request_id} was submitted with its payload; the manager signs and \
                 resubmits its transactions, so it takes no reported ones"
            )));
        }
        let decoded = decode_signed(raw)?;
        if decoded.from != signer {
            return Err(InvalidArgument(format!(
                "the transaction is signed by {:#x}, not by the request's signer {signer:#x}",
                decoded.from
            ))
            .into());
        }
        if decoded.chain_id != self.chain_id {
            return Err(InvalidArgument(format!(
                "the transaction is for chain {}, this manager's chain is {}",
                decoded.chain_id, self.chain_id
            ))
            .into());
        }
        if decoded.nonce != record.nonce {
            return Err(InvalidArgument(format!(
                "the transaction carries nonce {}, request {request_id} was allocated nonce {}",
                decoded.nonce, record.nonce
            ))
            .into());
        }
        let known = record.attempts.iter().find(|a| a.hash == decoded.hash);
        if !matches!(
            record.status,
            TxStatus::Pending | TxStatus::Tracking | TxStatus::Reconciling
        ) {
            if known.is_some() {
                return Ok(record);
            }
            return Err(SubmitError::Precondition(format!(
                "request {request_id} is {}; signed transactions are taken while it is open",
                record.status
            )));
        }
        let token = self
            .allocator
            .token()
            .ok_or(AllocateError::LeaseLost(signer))?;
        let attempt = match known {
            Some(attempt) => attempt.clone(),
            None => {
                let attempt = TxAttempt {
                    hash: decoded.hash,
                    max_fee_per_gas: decoded.max_fee_per_gas,
                    max_priority_fee_per_gas: decoded.max_priority_fee_per_gas,
                    raw: raw.to_vec().into(),
                    sent_at: self.clock.now(),
                };
                self.store
                    .record_attempt(signer, token, &record.request_id, &attempt)
                    .await?;
                attempt
            }
        };
        let status = if broadcast {
            self.send(&record, &attempt).await?
        } else {
            TxStatus::Tracking
        };
        if status != record.status {
            self.store
                .set_status(signer, token, &record.request_id, status)
                .await?;
        }
        self.load(&record.request_id).await
    }

    /// Broadcasts `attempt` (stored already) and judges the node's answer: the status the
    /// record moves to. "Already known" is ours; "nonce too low" is ours when one of our
    /// hashes has a receipt, otherwise another transaction took the nonce (`Reconciling`).
    async fn send(
        &self,
        record: &ManagedTransaction,
        attempt: &TxAttempt,
    ) -> Result<TxStatus, SubmitError> {
        Ok(match self.chain.send_raw_transaction(&attempt.raw).await {
            Ok(hash) => {
                if hash != attempt.hash {
                    tracing::warn!(request_id = %record.request_id, ours = %attempt.hash, node = %hash, "node reported another hash");
                }
                TxStatus::Tracking
            }
            Err(ChainError::AlreadyKnown) => TxStatus::Tracking,
            Err(ChainError::NonceTooLow) => {
                if self.any_attempt_mined(record, attempt).await? {
                    TxStatus::Tracking
                } else {
                    tracing::warn!(request_id = %record.request_id, nonce = record.nonce, "nonce used by another transaction");
                    TxStatus::Reconciling
                }
            }
            Err(ChainError::ReplacementUnderpriced) => {
                // Our own attempts reuse the stored bytes (that would be "already known"),
                // so another transaction holds this nonce in the pool.
                tracing::warn!(request_id = %record.request_id, nonce = record.nonce, "another transaction holds the nonce");
                TxStatus::Reconciling
            }
            Err(error) => return Err(SubmitError::Chain(error)),
        })
    }

    async fn load(&self, request_id: &RequestId) -> Result<ManagedTransaction, SubmitError> {
        self.store
            .transaction(request_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(request_id.clone()).into())
    }

    /// True when any of our hashes for this nonce has a receipt.
    async fn any_attempt_mined(
        &self,
        record: &ManagedTransaction,
        latest: &TxAttempt,
    ) -> Result<bool, SubmitError> {
        let hashes = record
            .attempts
            .iter()
            .map(|attempt| attempt.hash)
            .chain(std::iter::once(latest.hash));
        for hash in hashes {
            if self
                .chain
                .receipt(hash)
                .await
                .map_err(SubmitError::Chain)?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
