//! The store's error type, shaped by what a caller decides: a block the chain rules reject
//! (drop it), a request the state cannot serve (nothing to roll back, a bad admission), or
//! a fault of the disk or the files (stop and let an operator look).

use wes_utxo::{BlockError, StateError};

/// Errors from the block repository, the UTXO store and the coins cache.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The block breaks a chain rule; nothing was written.
    #[error("invalid block: {0}")]
    InvalidBlock(Box<BlockError>),
    /// An admission was refused or a state operation is not possible.
    #[error("state: {0}")]
    State(Box<StateError>),
    /// The tip block is at the edge of the undo window (or there is no block).
    #[error("nothing to roll back (max undo depth {max_undo_depth})")]
    NothingToRollback {
        /// The configured undo depth.
        max_undo_depth: usize,
    },
    /// A block appended to the repository does not extend its tip.
    #[error("block at height {height} does not extend the repository tip ({expected})")]
    NotOnTip {
        /// Height of the offered block.
        height: u64,
        /// What was expected instead.
        expected: String,
    },
    /// A block named by height or hash is not in the repository.
    #[error("block {0} is not in the repository")]
    BlockNotFound(String),
    /// Bytes on disk do not decode or do not agree with each other.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The UTXO store file was written by an older release's file format. The UTXO state is
    /// derived from the block repository, so moving the file away rebuilds it on the next
    /// open (pending admissions are dropped with it).
    #[error(
        "{path} uses an older store file format (redb format {format}); move it away and \
         restart: the UTXO state is rebuilt from the block repository (pending admissions \
         are dropped)"
    )]
    OldFormat {
        /// The store file.
        path: std::path::PathBuf,
        /// The file format version found in it.
        format: u8,
    },
    /// The embedded database failed.
    #[error("database: {0}")]
    Database(Box<redb::Error>),
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Database(Box::new(error.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<BlockError> for StoreError {
    fn from(error: BlockError) -> Self {
        StoreError::InvalidBlock(Box::new(error))
    }
}

impl From<StateError> for StoreError {
    fn from(error: StateError) -> Self {
        StoreError::State(Box::new(error))
    }
}

impl From<prost::DecodeError> for StoreError {
    fn from(error: prost::DecodeError) -> Self {
        StoreError::Corrupt(format!("undecodable record: {error}"))
    }
}

impl From<wes_utxo::error::ModelError> for StoreError {
    fn from(error: wes_utxo::error::ModelError) -> Self {
        StoreError::Corrupt(format!("malformed field: {error}"))
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
