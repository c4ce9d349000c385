//! Error types. [`SystemError`] is what a UTXO system answers, classified by what the client
//! does next: retry it (unavailable, timed out) or stop and report it (rejected).
//! [`ClientError`] is what the client's own operations return.

use std::time::Duration;

use wes_store::StoreError;
use wes_utxo::BlockHash;

/// An error of one call to the UTXO system.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SystemError {
    /// The system could not serve the call now (down, IO fault, overloaded): transient.
    #[error("utxo system unavailable: {0}")]
    Unavailable(String),
    /// The call did not answer within the configured call timeout: transient.
    #[error("utxo system call timed out after {0:?}")]
    Timeout(Duration),
    /// The system answered and refused the request (an invalid or conflicting block): a
    /// retry would get the same answer, so it is not retried and does not trip the breaker.
    #[error("utxo system rejected the request: {0}")]
    Rejected(String),
}

impl SystemError {
    /// Whether a retry may succeed (and whether the failure counts against the breaker).
    pub fn is_transient(&self) -> bool {
        !matches!(self, SystemError::Rejected(_))
    }
}

/// Errors of the client's operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The block repository failed (IO, corruption, a block not on its tip).
    #[error("block repository: {0}")]
    Repository(#[from] StoreError),
    /// The UTXO system failed after the retries allowed.
    #[error(transparent)]
    System(#[from] SystemError),
    /// The circuit breaker is open: the call was not made.
    #[error("circuit breaker open: utxo system calls are suspended")]
    BreakerOpen,
    /// The client was shut down.
    #[error("utxo client is shut down")]
    Closed,
    /// The UTXO system holds a block the repository does not, and rollback is disabled.
    #[error("utxo system diverges from the repository at height {height} (utxo {utxo_hash})")]
    Diverged {
        /// Height of the UTXO tip that is not in the repository.
        height: u64,
        /// Its hash.
        utxo_hash: BlockHash,
    },
    /// The UTXO system acknowledged a batch without reaching its last block.
    #[error("utxo system stopped at height {got:?}, expected {expected}")]
    NoProgress {
        /// Height the batch should have reached.
        expected: u64,
        /// Height the system reported.
        got: Option<u64>,
    },
    /// A block offered to the client is malformed (no header).
    #[error("malformed block: {0}")]
    Block(String),
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
