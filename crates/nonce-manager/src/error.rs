//! Error types, shaped by what the caller must decide: stop acting for the signer
//! (`Fenced`, `LeaseLost`), fix its request (`InvalidArgument`, `RequestConflict`), or retry
//! later (`Database`, chain transport errors).

use alloy_primitives::Address;
use ledger_lease::{FencingToken, LeaseError, ResourceName};

use crate::chain::ChainError;
use crate::types::{RequestId, TxStatus};

/// The caller passed a value outside the limits in [`crate::limits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid argument: {0}")]
pub struct InvalidArgument(pub String);

/// Why a [`crate::store::NonceStore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write carried a fencing token that is no longer the signer's current one: another
    /// node took the signer over. Nothing was written; stop writing for this signer.
    #[error("fencing token {presented} on {resource} is stale (current: {current:?})")]
    Fenced {
        /// The leased resource (`signer:0x...`).
        resource: ResourceName,
        /// The token the writer presented.
        presented: FencingToken,
        /// The current token, or `None` when nobody holds the signer.
        current: Option<FencingToken>,
    },
    /// A status write asked for a transition the status machine forbids.
    #[error("request {request_id}: status {from} cannot move to {to}")]
    InvalidTransition {
        /// The request.
        request_id: RequestId,
        /// Its stored status.
        from: TxStatus,
        /// The status asked for.
        to: TxStatus,
    },
    /// The request id is not stored.
    #[error("request {0} not found")]
    NotFound(RequestId),
    /// A stored row breaks an invariant (edited by hand, or a bug).
    #[error("corrupt nonce store row: {0}")]
    Corrupt(String),
    /// A lease-layer error other than fencing (bad argument, exhausted counter).
    #[error("lease layer")]
    Lease(#[source] LeaseError),
    /// The database failed; the operation may be retried.
    #[error("nonce store database error")]
    Database(#[from] sqlx::Error),
}

impl From<LeaseError> for StoreError {
    fn from(error: LeaseError) -> Self {
        match error {
            LeaseError::Fenced {
                resource,
                presented,
                current,
            } => StoreError::Fenced {
                resource,
                presented,
                current,
            },
            LeaseError::Database(error) => StoreError::Database(error),
            other => StoreError::Lease(other),
        }
    }
}

impl StoreError {
    /// True when this node no longer holds the signer and must stop writing for it.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    /// This node does not hold the signer's lease (never had it, lost it, or was fenced);
    /// the allocator has stopped. Route the request to the holder or acquire anew.
    #[error("this node does not hold the lease on signer {0}")]
    LeaseLost(Address),
    /// The request id is stored for another signer or with another payload.
    #[error("request {0} was already used for a different transaction")]
    RequestConflict(RequestId),
    /// The chain's pending nonce could not be read at the start of a tenure.
    #[error("chain pending nonce unavailable")]
    Chain(#[source] ChainError),
    /// The store failed; retry.
    #[error("nonce store")]
    Store(#[source] std::sync::Arc<StoreError>),
}

/// Why a submission failed. A failed submission can be retried with the same request id:
/// it never allocates a second nonce.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is malformed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),
    /// Allocation failed.
    #[error("allocate")]
    Allocate(#[from] AllocateError),
    /// The request id's stored record changed under us, or a write was refused.
    #[error("nonce store")]
    Store(#[from] StoreError),
    /// The stored record cannot take this call in its current state (for example a
    /// signed transaction reported for a request that was submitted with its payload, or
    /// for a record already final). Retrying the same call will not help.
    #[error("{0}")]
    Precondition(String),
    /// Signing failed.
    #[error("sign transaction")]
    Sign(#[source] alloy_signer::Error),
    /// The broadcast failed for a reason that may pass (timeout, transport); the signed
    /// attempt is stored, so a retry re-broadcasts the same bytes and hash.
    #[error("broadcast")]
    Chain(#[source] ChainError),
}
