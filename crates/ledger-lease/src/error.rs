//! The lease error type, shaped by what the caller must decide: stop acting as holder
//! (`Lost`, `Fenced`), fix its call (`InvalidArgument`), or retry later (`Database`).

use crate::types::{FencingToken, ResourceName};

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease was taken over (or released); the holder must stop writing at once.
    #[error("lease on {resource} with token {token} was lost")]
    Lost {
        /// The leased resource.
        resource: ResourceName,
        /// The token the caller held.
        token: FencingToken,
    },
    /// A fenced write presented a token that is no longer the current one.
    #[error("fencing token {presented} on {resource} is stale (current: {current:?})")]
    Fenced {
        /// The leased resource.
        resource: ResourceName,
        /// The token the writer presented.
        presented: FencingToken,
        /// The current token, or `None` when nobody holds the resource.
        current: Option<FencingToken>,
    },
    /// The caller passed a value outside the limits in [`crate::limits`].
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The per-resource token counter would overflow `i64`.
    #[error("fencing token counter for {0} is exhausted")]
    TokenExhausted(ResourceName),
    /// A stored row breaks an invariant of the schema (edited by hand, or a bug).
    #[error("corrupt lease row: {0}")]
    Corrupt(String),
    /// The database failed; the operation may be retried.
    #[error("lease database error")]
    Database(#[from] sqlx::Error),
}

impl LeaseError {
    /// True when the caller no longer holds the lease and must stop writing.
    pub fn is_lost(&self) -> bool {
        matches!(self, LeaseError::Lost { .. } | LeaseError::Fenced { .. })
    }
}
