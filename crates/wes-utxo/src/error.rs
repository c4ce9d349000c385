//! The error enums, shaped by what a caller decides.
//!
//! - [`LockError`]: a proof does not satisfy a locking condition (or a lock is malformed).
//! - [`InputError`]: one input cannot be spent or referenced here and now.
//! - [`OutputError`]: one output is malformed.
//! - [`TxError`]: a transaction is invalid; it names the input or output at fault.
//! - [`BlockError`]: a block is invalid; it names the transaction at fault.
//! - [`AdmissionError`]: a referencing transaction cannot be admitted.
//! - [`StateError`]: what [`crate::state::UtxoState`] operations return.
//!
//! Every rejection leaves the state unchanged. Messages are lowercase without a period.
//! Two messages are fixed by seed 001 and callers may match them:
//! "resource is being referenced by N transactions" and
//! "resource concurrent limit (MAX) exceeded, current: N".

use thiserror::Error;

use crate::model::{AssetId, BlockHash, ContentHash, OutPointKey, TxId};

/// A malformed value in a generated type (wrong length, missing field).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    /// A byte field has the wrong length.
    #[error("{what} must be {expected} bytes, got {actual}")]
    BadLength {
        /// The field.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// A required message or oneof is absent.
    #[error("missing {0}")]
    MissingField(&'static str),
}

/// A proof that does not unlock its condition, or a malformed condition.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LockError {
    /// The input carries no unlocking proof.
    #[error("missing unlocking proof")]
    MissingProof,
    /// The proof names a condition the output does not have.
    #[error("condition index {index} out of range ({count} conditions)")]
    ConditionIndexOutOfRange {
        /// Index in the proof.
        index: u32,
        /// Conditions on the output.
        count: usize,
    },
    /// The proof's kind differs from the condition's kind.
    #[error("proof kind {actual} does not match condition kind {expected}")]
    ProofKindMismatch {
        /// The condition's kind.
        expected: &'static str,
        /// The proof's kind.
        actual: &'static str,
    },
    /// A lock or proof field is malformed (key length, missing inner condition, bad m/n).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A signature does not verify for its key and this input.
    #[error("invalid signature")]
    InvalidSignature,
    /// Fewer valid signatures or shares than required.
    #[error("not enough signatures: {valid} of {required} required")]
    NotEnoughSignatures {
        /// Required.
        required: u32,
        /// Supplied.
        valid: u32,
    },
    /// The same key or party signed twice.
    #[error("duplicate signer at index {index}")]
    DuplicateSigner {
        /// Key index or party id.
        index: u32,
    },
    /// A key index or party id beyond the lock's keys.
    #[error("signer index {index} out of range ({count} keys)")]
    SignerIndexOutOfRange {
        /// Index in the proof.
        index: u32,
        /// Keys in the lock.
        count: usize,
    },
    /// The execution proof is for another contract.
    #[error("execution proof is for contract {actual}, lock requires {expected}")]
    ContractMismatch {
        /// Lock's contract.
        expected: ContentHash,
        /// Proof's contract.
        actual: ContentHash,
    },
    /// The contract method is not allowed by the lock.
    #[error("contract method {method:?} not allowed")]
    MethodNotAllowed {
        /// Method in the proof.
        method: String,
    },
    /// The spending transaction does not reference the contract resource.
    #[error("contract {contract_hash} is not referenced by the spending transaction")]
    ContractNotReferenced {
        /// Lock's contract.
        contract_hash: ContentHash,
    },
    /// The signer is neither the owner nor a listed delegate.
    #[error("signer is not the owner or a delegate")]
    NotADelegate,
    /// The delegated operation is not in the lock's allowed operations.
    #[error("operation {operation:?} not allowed for delegates")]
    OperationNotAllowed {
        /// Operation in the proof.
        operation: String,
    },
    /// The proof's operation differs from what the input does.
    #[error("proof operation {proof:?} does not match input operation {input:?}")]
    OperationMismatch {
        /// Operation in the proof.
        proof: String,
        /// "consume" or "reference".
        input: &'static str,
    },
    /// The delegation has expired at the spending block's height.
    #[error("delegation expired at height {expiry_height} (block height {block_height})")]
    DelegationExpired {
        /// Lock's expiry.
        expiry_height: u64,
        /// Spending block.
        block_height: u64,
    },
    /// The time lock is not yet open at the spending block's timestamp.
    #[error("time lock opens at {unlock_timestamp}, block timestamp is {block_timestamp}")]
    TimeLockNotReached {
        /// Lock's opening time.
        unlock_timestamp: u64,
        /// Spending block's time.
        block_timestamp: u64,
    },
    /// The height lock is not yet open at the spending block's height.
    #[error("height lock opens at {unlock_height}, block height is {block_height}")]
    HeightLockNotReached {
        /// Lock's opening height.
        unlock_height: u64,
        /// Spending block's height.
        block_height: u64,
    },
    /// Time or height locks nested deeper than the limit.
    #[error("lock nesting deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// One input cannot be spent or referenced.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputError {
    /// No such output was ever created (or it was rolled back).
    #[error("unknown output")]
    Unknown,
    /// The output was consumed by an earlier block.
    #[error("output already consumed at height {spent_at_height}")]
    Consumed {
        /// Height of the consuming block.
        spent_at_height: u64,
    },
    /// An earlier transaction of the same block consumed it.
    #[error("double spend: already consumed by transaction {first_tx_index} of this block")]
    DoubleSpendInBlock {
        /// Index of the first consumer in the block.
        first_tx_index: usize,
    },
    /// Consuming a RESOURCE that admitted transactions reference (seed 001's exact text).
    #[error("resource is being referenced by {count} transactions")]
    ResourceReferenced {
        /// Current reference count.
        count: u64,
    },
    /// Referencing a RESOURCE at its concurrency limit (seed 001's exact text).
    #[error("resource concurrent limit ({max}) exceeded, current: {current}")]
    ConcurrentLimitExceeded {
        /// The resource's max_concurrent_references.
        max: u64,
        /// Current reference count.
        current: u64,
    },
    /// Consuming a STATE past its TTL.
    #[error("state utxo has expired at {expires_at_timestamp} (block timestamp {block_timestamp}), cannot consume")]
    StateExpired {
        /// The state's expiry.
        expires_at_timestamp: u64,
        /// Spending block's time.
        block_timestamp: u64,
    },
    /// ASSET outputs can only be consumed, not referenced.
    #[error("asset utxos cannot be referenced")]
    AssetNotReferenceable,
    /// The record does not cache its output (cold record), so it cannot be validated here.
    #[error("utxo content is not cached")]
    ContentNotCached,
    /// The proof does not unlock the output.
    #[error("unlocking failed: {0}")]
    Lock(#[from] LockError),
}

/// One output is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OutputError {
    /// A field has the wrong length or is missing.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Every output must list at least one locking condition.
    #[error("no locking conditions")]
    NoLockingConditions,
    /// More alternatives than the limit.
    #[error("{count} locking conditions, at most {max}")]
    TooManyConditions {
        /// Conditions listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A locking condition is malformed.
    #[error("locking condition {condition_index}: {source}")]
    Lock {
        /// Which condition.
        condition_index: usize,
        /// Why.
        source: LockError,
    },
    /// Asset amounts must be positive.
    #[error("zero amount")]
    ZeroAmount,
    /// A field exceeds its size limit.
    #[error("{what} is {len} bytes, at most {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A transaction is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxError {
    /// A field has the wrong length or is missing.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// More inputs or outputs than the limit.
    #[error("too many {what}: {count}, at most {max}")]
    TooMany {
        /// "inputs" or "outputs".
        what: &'static str,
        /// Count found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The same outpoint appears twice among the inputs.
    #[error("duplicate input {outpoint}")]
    DuplicateInput {
        /// The outpoint.
        outpoint: OutPointKey,
    },
    /// A non-coinbase transaction must consume at least one input (this keeps txids unique).
    #[error("transaction consumes no input")]
    NoConsumedInput,
    /// A coinbase (no inputs) lacks its coinbase field, or another transaction has one.
    #[error("coinbase field present: {present}, but transaction has {n_inputs} inputs")]
    CoinbaseFieldMismatch {
        /// Whether the field is set.
        present: bool,
        /// Inputs in the transaction.
        n_inputs: usize,
    },
    /// An input cannot be spent or referenced.
    #[error("input {input_index} ({outpoint}): {source}")]
    Input {
        /// Position in the transaction.
        input_index: usize,
        /// The outpoint it names.
        outpoint: OutPointKey,
        /// Why.
        source: InputError,
    },
    /// An output is malformed.
    #[error("output {output_index}: {source}")]
    Output {
        /// Position in the transaction.
        output_index: usize,
        /// Why.
        source: OutputError,
    },
    /// Per asset, inputs must equal outputs plus fee; only the native coin pays fees.
    #[error("value not conserved for {asset}: inputs {inputs}, outputs {outputs} (fees are paid in native coin only)")]
    ValueNotConserved {
        /// The asset.
        asset: AssetId,
        /// Sum of consumed inputs.
        inputs: u128,
        /// Sum of outputs.
        outputs: u128,
    },
}

/// A block is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockError {
    /// The block has no header, or a header field is malformed.
    #[error("malformed header: {0}")]
    Header(ModelError),
    /// The parent is not the current tip.
    #[error("unknown parent {parent_hash} (tip is {tip_hash:?})")]
    UnknownParent {
        /// Block's parent.
        parent_hash: BlockHash,
        /// Current tip, if any.
        tip_hash: Option<BlockHash>,
    },
    /// The height is not tip + 1 (or 0 for genesis).
    #[error("wrong height {actual}, expected {expected}")]
    WrongHeight {
        /// Tip + 1.
        expected: u64,
        /// Block's height.
        actual: u64,
    },
    /// The timestamp is below the parent's.
    #[error("timestamp {actual} is below parent timestamp {parent}")]
    TimestampDecreasing {
        /// Parent's timestamp.
        parent: u64,
        /// Block's timestamp.
        actual: u64,
    },
    /// The header does not commit to these transactions.
    #[error("transactions root does not match the transactions")]
    TransactionsRootMismatch,
    /// Too many transactions.
    #[error("{count} transactions, at most {max}")]
    TooManyTransactions {
        /// Count found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A coinbase anywhere but first.
    #[error("coinbase at index {tx_index}, only the first transaction may be one")]
    CoinbaseNotFirst {
        /// Where it was.
        tx_index: usize,
    },
    /// The coinbase names another height.
    #[error("coinbase height {actual}, block height {expected}")]
    CoinbaseHeightMismatch {
        /// Block height.
        expected: u64,
        /// Coinbase height.
        actual: u64,
    },
    /// The coinbase creates more native coin than reward plus fees.
    #[error("coinbase creates {actual}, reward plus fees allow {allowed}")]
    CoinbaseTooLarge {
        /// Reward plus fees.
        allowed: u128,
        /// Created.
        actual: u128,
    },
    /// Only the genesis coinbase may create tokens.
    #[error("coinbase creates token outputs")]
    CoinbaseMintsToken,
    /// Two transactions with one id.
    #[error("duplicate transaction {tx_id}")]
    DuplicateTransaction {
        /// The id.
        tx_id: TxId,
    },
    /// An output of this transaction already exists in the set.
    #[error("transaction {tx_id} creates outputs that already exist")]
    OutputExists {
        /// The id.
        tx_id: TxId,
    },
    /// A transaction is invalid.
    #[error("transaction {tx_index} ({tx_id}): {source}")]
    Transaction {
        /// Position in the block.
        tx_index: usize,
        /// Its id.
        tx_id: TxId,
        /// Why (boxed: keeps every `Result` small).
        source: Box<TxError>,
    },
}

/// A referencing transaction cannot be admitted for execution.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdmissionError {
    /// No block applied yet.
    #[error("no chain tip yet")]
    NoTip,
    /// The transaction already holds its references.
    #[error("transaction {0} already admitted")]
    AlreadyAdmitted(TxId),
    /// Nothing to admit: the transaction has no reference-only input.
    #[error("transaction has no reference-only input")]
    NoReferenceInputs,
    /// The admission table is full.
    #[error("admission table full ({limit} admissions)")]
    TooManyAdmissions {
        /// The limit.
        limit: usize,
    },
    /// The transaction is not valid on the current tip.
    #[error("invalid transaction: {0}")]
    Invalid(Box<TxError>),
}

/// What [`crate::state::UtxoState`] operations return.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StateError {
    /// The block was rejected; nothing changed.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The admission was rejected; nothing changed.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// No block to roll back, or its undo data was pruned (reorg deeper than the undo depth).
    #[error("no undo data to roll back (undo depth {max_undo_depth})")]
    NothingToRollback {
        /// The configured depth.
        max_undo_depth: usize,
    },
}
