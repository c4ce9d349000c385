//! Errors, and the one place where domain errors become gRPC status codes.
//!
//! | error | code |
//! |---|---|
//! | malformed request field, block without header, block breaking a chain rule | `INVALID_ARGUMENT` (the validation error's text) |
//! | block not on the repository tip (unknown parent, wrong height), admission refused, query that does not fit the record | `FAILED_PRECONDITION` |
//! | outpoint or block not found | `NOT_FOUND` |
//! | breaker open, UTXO system down or not catching up in time, client shut down | `UNAVAILABLE` |
//! | a UTXO system call timed out | `DEADLINE_EXCEEDED` |
//! | the store's bytes do not agree with themselves | `DATA_LOSS` |
//! | IO or database failure, the UTXO system diverged from the repository | `INTERNAL` |

use std::net::SocketAddr;

use tonic::Status;
use wes_store::StoreError;
use wes_utxo_client::{ClientError, SystemError};

/// Errors of starting or stopping the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The chain store or the block repository could not be opened or reconciled.
    #[error("chain store: {0}")]
    Store(#[from] StoreError),
    /// The UTXO client did not start.
    #[error("utxo client: {0}")]
    Client(#[from] ClientError),
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The status for a store error.
pub fn store_status(error: StoreError) -> Status {
    let message = error.to_string();
    match error {
        StoreError::InvalidBlock(_) => Status::invalid_argument(message),
        StoreError::State(_)
        | StoreError::NotOnTip { .. }
        | StoreError::NothingToRollback { .. } => Status::failed_precondition(message),
        StoreError::BlockNotFound(_) => Status::not_found(message),
        StoreError::Corrupt(_) => Status::data_loss(message),
        StoreError::Io(_) | StoreError::OldFormat { .. } | StoreError::Database(_) => {
            Status::internal(message)
        }
    }
}

/// The status for a UTXO client error.
pub fn client_status(error: ClientError) -> Status {
    let message = error.to_string();
    match error {
        ClientError::Repository(error) => store_status(error),
        ClientError::System(SystemError::Unavailable(_)) => Status::unavailable(message),
        ClientError::System(SystemError::Timeout(_)) => Status::deadline_exceeded(message),
        ClientError::System(SystemError::Rejected(_)) => Status::failed_precondition(message),
        ClientError::BreakerOpen | ClientError::Closed => Status::unavailable(message),
        ClientError::Block(_) => Status::invalid_argument(message),
        ClientError::Diverged { .. } | ClientError::NoProgress { .. } | ClientError::Config(_) => {
            Status::internal(message)
        }
    }
}
