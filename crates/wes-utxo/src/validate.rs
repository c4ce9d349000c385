//! Transaction and block validation: stateless checks, then stateful checks against a
//! [`UtxoView`] (the live set) and the [`ReferenceTable`] (admitted references).
//!
//! Validation computes everything a block changes ([`BlockEffects`]) without changing
//! anything; the state applies those effects only when the whole block is valid, so a
//! rejected block leaves the state exactly as it was.
//!
//! Rules, in the order they are checked:
//! - header: parent is the tip (all-zero for genesis), height is tip + 1 (0 for genesis),
//!   timestamp not below the parent's, transactions root matches;
//! - per transaction, stateless: limits, coinbase field iff no inputs, at least one
//!   consumed input (keeps txids unique), no duplicate input, outputs well formed (20-byte
//!   owner, 1..=8 well-formed locking conditions, positive amounts, sizes);
//! - per input, stateful: the output exists (else unknown, consumed at height H, or double
//!   spent earlier in this block); consuming a RESOURCE needs reference count 0;
//!   referencing one needs room below `max_concurrent_references`; an expired STATE cannot
//!   be consumed; ASSETs cannot be referenced; the proof unlocks one condition;
//! - value: per asset, consumed inputs = outputs + fee, the fee only in native coin; a
//!   transaction may mint the token `TokenId::minted_by(first consumed input)`;
//! - coinbase: first, names the block height, creates at most reward + fees in native coin
//!   and no tokens (the genesis coinbase is the initial allocation and is unrestricted).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::error::{BlockError, InputError, ModelError, OutputError, TxError};
use crate::limits::{
    ChainParams, MAX_CONDITIONS_PER_OUTPUT, MAX_INPUTS_PER_TX, MAX_NAME_LEN, MAX_OUTPUTS_PER_TX,
    MAX_SMALL_BYTES_LEN, MAX_STATE_PAYLOAD_LEN, MAX_TXS_PER_BLOCK,
};
use crate::locking::{self, SpendContext};
use crate::model::{
    self, asset_amount, category_of, Address, AssetId, BlockHash, ContentHash, OutPointKey,
    SigningHash, TokenId, TxId,
};
use crate::pb;
use crate::references::ReferenceTable;

/// Read access to the live UTXO set: what validation needs from a state or a store.
pub trait UtxoView {
    /// The live (unspent) record at `outpoint`.
    fn get_utxo(&self, outpoint: &OutPointKey) -> Option<Cow<'_, pb::Utxo>>;

    /// The height of the block that consumed `outpoint`, if known (for precise errors).
    fn spent_at_height(&self, _outpoint: &OutPointKey) -> Option<u64> {
        None
    }
}

/// The block a transaction is validated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockContext {
    /// Its height.
    pub height: u64,
    /// Its timestamp (seconds).
    pub timestamp: u64,
}

/// The current chain tip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainTip {
    /// Tip height.
    pub height: u64,
    /// Tip hash.
    pub hash: BlockHash,
    /// Tip timestamp.
    pub timestamp: u64,
}

/// What one valid transaction does.
#[derive(Clone, Debug, PartialEq)]
pub struct TxEffects {
    /// Its id.
    pub tx_id: TxId,
    /// Consumed outpoints with their records as they were.
    pub consumed: Vec<pb::Utxo>,
    /// Referenced outpoints.
    pub referenced: Vec<OutPointKey>,
    /// New records.
    pub created: Vec<pb::Utxo>,
    /// Native coin left over (0 for a coinbase).
    pub fee: u128,
    /// Distinct owners of consumed inputs (their account nonce goes up).
    pub consuming_owners: Vec<Address>,
}

/// What one valid block does.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockEffects {
    /// Its hash.
    pub hash: BlockHash,
    /// Its header.
    pub header: pb::BlockHeader,
    /// Per transaction, in block order.
    pub transactions: Vec<TxEffects>,
    /// Admissions released by this block (expiry, inclusion, conflict), in that order.
    pub released_admissions: Vec<TxId>,
}

/// Checks what can be checked without the UTXO set.
pub fn check_transaction_stateless(transaction: &pb::Transaction) -> Result<(), TxError> {
    let n_inputs = transaction.inputs.len();
    if n_inputs > MAX_INPUTS_PER_TX {
        return Err(TxError::TooMany {
            what: "inputs",
            count: n_inputs,
            max: MAX_INPUTS_PER_TX,
        });
    }
    if transaction.outputs.len() > MAX_OUTPUTS_PER_TX {
        return Err(TxError::TooMany {
            what: "outputs",
            count: transaction.outputs.len(),
            max: MAX_OUTPUTS_PER_TX,
        });
    }
    if transaction.coinbase.is_some() != (n_inputs == 0) {
        return Err(TxError::CoinbaseFieldMismatch {
            present: transaction.coinbase.is_some(),
            n_inputs,
        });
    }
    if let Some(coinbase) = &transaction.coinbase {
        if coinbase.extra_data.len() > MAX_SMALL_BYTES_LEN {
            return Err(TxError::Output {
                output_index: 0,
                source: OutputError::TooLong {
                    what: "coinbase extra data",
                    len: coinbase.extra_data.len(),
                    max: MAX_SMALL_BYTES_LEN,
                },
            });
        }
    } else if transaction
        .inputs
        .iter()
        .all(|input| input.is_reference_only)
    {
        return Err(TxError::NoConsumedInput);
    }
    let mut seen = HashSet::with_capacity(n_inputs);
    for input in &transaction.inputs {
        let outpoint = input_outpoint(input)?;
        if !seen.insert(outpoint) {
            return Err(TxError::DuplicateInput { outpoint });
        }
    }
    for (output_index, output) in transaction.outputs.iter().enumerate() {
        check_output(output).map_err(|source| TxError::Output {
            output_index,
            source,
        })?;
    }
    Ok(())
}

fn input_outpoint(input: &pb::TxInput) -> Result<OutPointKey, ModelError> {
    OutPointKey::from_proto(
        input
            .previous_output
            .as_ref()
            .ok_or(ModelError::MissingField("TxInput.previous_output"))?,
    )
}

fn too_long(what: &'static str, len: usize, max: usize) -> Result<(), OutputError> {
    if len > max {
        return Err(OutputError::TooLong { what, len, max });
    }
    Ok(())
}

fn check_output(output: &pb::TxOutput) -> Result<(), OutputError> {
    use pb::tx_output::OutputContent;
    Address::from_slice(&output.owner)?;
    let n_conditions = output.locking_conditions.len();
    if n_conditions == 0 {
        return Err(OutputError::NoLockingConditions);
    }
    if n_conditions > MAX_CONDITIONS_PER_OUTPUT {
        return Err(OutputError::TooManyConditions {
            count: n_conditions,
            max: MAX_CONDITIONS_PER_OUTPUT,
        });
    }
    for (condition_index, condition) in output.locking_conditions.iter().enumerate() {
        locking::check_well_formed(condition).map_err(|source| OutputError::Lock {
            condition_index,
            source,
        })?;
    }
    match output
        .output_content
        .as_ref()
        .ok_or(ModelError::MissingField("TxOutput.output_content"))?
    {
        OutputContent::Asset(_) => {
            if let Some((_, 0)) = asset_amount(output)? {
                return Err(OutputError::ZeroAmount);
            }
        }
        OutputContent::Resource(resource) => {
            ContentHash::from_slice(&resource.content_hash)?;
            too_long("resource name", resource.name.len(), MAX_NAME_LEN)?;
        }
        OutputContent::State(state) => {
            too_long("state id", state.state_id.len(), MAX_SMALL_BYTES_LEN)?;
            too_long("state payload", state.payload.len(), MAX_STATE_PAYLOAD_LEN)?;
        }
    }
    Ok(())
}

/// Builds the record a new output becomes.
pub fn new_utxo(
    outpoint: OutPointKey,
    output: &pb::TxOutput,
    block: BlockContext,
) -> Result<pb::Utxo, ModelError> {
    use pb::tx_output::OutputContent;
    use pb::utxo::TypeConstraints;
    let category = category_of(output)?;
    let type_constraints = match &output.output_content {
        Some(OutputContent::Asset(_)) => {
            TypeConstraints::AssetConstraints(pb::AssetUtxoConstraints {})
        }
        Some(OutputContent::Resource(resource)) => {
            TypeConstraints::ResourceConstraints(pb::ResourceUtxoConstraints {
                reference_count: 0,
                max_concurrent_references: resource.max_concurrent_references,
                total_reference_count: 0,
            })
        }
        Some(OutputContent::State(state)) => {
            TypeConstraints::StateConstraints(pb::StateUtxoConstraints {
                ttl_seconds: state.ttl_seconds,
                expires_at_timestamp: if state.ttl_seconds == 0 {
                    0
                } else {
                    block.timestamp.saturating_add(state.ttl_seconds)
                },
                retention_policy: state.retention_policy,
            })
        }
        None => return Err(ModelError::MissingField("TxOutput.output_content")),
    };
    Ok(pb::Utxo {
        outpoint: Some(outpoint.to_proto()),
        category: category as i32,
        owner_address: output.owner.clone(),
        status: pb::UtxoLifecycleStatus::Available as i32,
        block_height: block.height,
        created_timestamp: block.timestamp,
        content_strategy: Some(pb::utxo::ContentStrategy::CachedOutput(output.clone())),
        type_constraints: Some(type_constraints),
    })
}

/// Block-local view: outputs created and consumed so far in the block, references released
/// so far, over the base view and reference table.
struct Overlay<'a, V: UtxoView + ?Sized> {
    base: &'a V,
    references: &'a ReferenceTable,
    created: HashMap<OutPointKey, pb::Utxo>,
    spent: HashMap<OutPointKey, usize>,
    released: HashSet<TxId>,
    released_counts: HashMap<OutPointKey, u64>,
}

impl<'a, V: UtxoView + ?Sized> Overlay<'a, V> {
    fn new(base: &'a V, references: &'a ReferenceTable) -> Self {
        Self {
            base,
            references,
            created: HashMap::new(),
            spent: HashMap::new(),
            released: HashSet::new(),
            released_counts: HashMap::new(),
        }
    }

    fn lookup(&self, outpoint: &OutPointKey) -> Result<Cow<'_, pb::Utxo>, InputError> {
        if let Some(first_tx_index) = self.spent.get(outpoint) {
            return Err(InputError::DoubleSpendInBlock {
                first_tx_index: *first_tx_index,
            });
        }
        if let Some(utxo) = self.created.get(outpoint) {
            return Ok(Cow::Borrowed(utxo));
        }
        if let Some(utxo) = self.base.get_utxo(outpoint) {
            return Ok(utxo);
        }
        match self.base.spent_at_height(outpoint) {
            Some(spent_at_height) => Err(InputError::Consumed { spent_at_height }),
            None => Err(InputError::Unknown),
        }
    }

    fn exists(&self, outpoint: &OutPointKey) -> bool {
        self.created.contains_key(outpoint)
            || (!self.spent.contains_key(outpoint) && self.base.get_utxo(outpoint).is_some())
    }

    fn reference_count(&self, outpoint: &OutPointKey) -> u64 {
        let released = self.released_counts.get(outpoint).copied().unwrap_or(0);
        self.references.count(outpoint).saturating_sub(released)
    }

    fn release(&mut self, tx_id: &TxId) -> bool {
        if self.released.contains(tx_id) {
            return false;
        }
        let Some(admission) = self.references.admission(tx_id) else {
            return false;
        };
        for outpoint in &admission.referenced {
            *self.released_counts.entry(*outpoint).or_insert(0) += 1;
        }
        self.released.insert(*tx_id);
        true
    }

    fn commit(&mut self, tx_index: usize, effects: &TxEffects) {
        for utxo in &effects.consumed {
            if let Some(outpoint) = utxo
                .outpoint
                .as_ref()
                .and_then(|o| OutPointKey::from_proto(o).ok())
            {
                self.created.remove(&outpoint);
                self.spent.insert(outpoint, tx_index);
            }
        }
        for utxo in &effects.created {
            if let Some(outpoint) = utxo
                .outpoint
                .as_ref()
                .and_then(|o| OutPointKey::from_proto(o).ok())
            {
                self.created.insert(outpoint, utxo.clone());
            }
        }
    }
}

fn resource_content(output: &pb::TxOutput) -> Option<&pb::ResourceOutput> {
    match &output.output_content {
        Some(pb::tx_output::OutputContent::Resource(resource)) => Some(resource),
        _ => None,
    }
}

fn add_amount(sums: &mut BTreeMap<AssetId, u128>, asset: AssetId, amount: u64) {
    // u128 sums of at most 256 u64 amounts cannot overflow.
    *sums.entry(asset).or_insert(0) += u128::from(amount);
}

/// Stateful checks of one transaction (already checked stateless) in a block context.
fn check_transaction_with<V: UtxoView + ?Sized>(
    overlay: &Overlay<'_, V>,
    transaction: &pb::Transaction,
    tx_id: TxId,
    signing_hash: SigningHash,
    block: BlockContext,
) -> Result<TxEffects, TxError> {
    let mut resolved = Vec::with_capacity(transaction.inputs.len());
    for (input_index, input) in transaction.inputs.iter().enumerate() {
        let outpoint = input_outpoint(input)?;
        let utxo = overlay.lookup(&outpoint).map_err(|source| TxError::Input {
            input_index,
            outpoint,
            source,
        })?;
        resolved.push((outpoint, utxo));
    }
    let referenced_contracts: Vec<ContentHash> = transaction
        .inputs
        .iter()
        .zip(&resolved)
        .filter(|(input, _)| input.is_reference_only)
        .filter_map(|(_, (_, utxo))| utxo.output().and_then(resource_content))
        .filter_map(|resource| ContentHash::from_slice(&resource.content_hash).ok())
        .collect();

    let mut consumed = Vec::new();
    let mut referenced = Vec::new();
    let mut consuming_owners = BTreeSet::new();
    let mut inputs_by_asset = BTreeMap::new();
    for (input_index, (input, (outpoint, utxo))) in
        transaction.inputs.iter().zip(&resolved).enumerate()
    {
        let outpoint = *outpoint;
        let fail = |source: InputError| TxError::Input {
            input_index,
            outpoint,
            source,
        };
        let output = utxo
            .output()
            .ok_or_else(|| fail(InputError::ContentNotCached))?;
        let category = category_of(output)?;
        if input.is_reference_only {
            match category {
                pb::UtxoCategory::Asset | pb::UtxoCategory::Unspecified => {
                    return Err(fail(InputError::AssetNotReferenceable))
                }
                pb::UtxoCategory::Resource => {
                    let max = resource_content(output).map_or(0, |r| r.max_concurrent_references);
                    let current = overlay.reference_count(&outpoint);
                    if max > 0 && current >= max {
                        return Err(fail(InputError::ConcurrentLimitExceeded { max, current }));
                    }
                }
                pb::UtxoCategory::State => {}
            }
        } else {
            match category {
                pb::UtxoCategory::Resource => {
                    let count = overlay.reference_count(&outpoint);
                    if count > 0 {
                        return Err(fail(InputError::ResourceReferenced { count }));
                    }
                }
                pb::UtxoCategory::State if utxo.is_expired_at(block.timestamp) => {
                    let expires_at_timestamp = utxo
                        .state_constraints()
                        .map_or(0, |c| c.expires_at_timestamp);
                    return Err(fail(InputError::StateExpired {
                        expires_at_timestamp,
                        block_timestamp: block.timestamp,
                    }));
                }
                _ => {}
            }
        }
        let context = SpendContext {
            signing_hash,
            input_index: input_index as u32,
            is_reference_only: input.is_reference_only,
            block_height: block.height,
            block_timestamp: block.timestamp,
            referenced_contracts: &referenced_contracts,
        };
        locking::verify_unlock(
            &output.locking_conditions,
            input.unlocking_proof.as_ref(),
            &context,
        )
        .map_err(|source| fail(InputError::Lock(source)))?;
        if input.is_reference_only {
            if category == pb::UtxoCategory::Resource {
                referenced.push(outpoint);
            }
        } else {
            if let Some((asset, amount)) = asset_amount(output)? {
                add_amount(&mut inputs_by_asset, asset, amount);
            }
            consuming_owners.insert(Address::from_slice(&utxo.owner_address)?);
            consumed.push(utxo.clone().into_owned());
        }
    }

    let mut outputs_by_asset = BTreeMap::new();
    let mut created = Vec::with_capacity(transaction.outputs.len());
    for (output_index, output) in transaction.outputs.iter().enumerate() {
        if let Some((asset, amount)) = asset_amount(output)? {
            add_amount(&mut outputs_by_asset, asset, amount);
        }
        created.push(new_utxo(
            OutPointKey::new(tx_id, output_index as u32),
            output,
            block,
        )?);
    }

    let mut fee = 0;
    if !model::is_coinbase(transaction) {
        let minted = transaction
            .inputs
            .iter()
            .find(|input| !input.is_reference_only)
            .map(input_outpoint)
            .transpose()?
            .map(|first| AssetId::Token(TokenId::minted_by(&first)));
        let assets: BTreeSet<AssetId> = inputs_by_asset
            .keys()
            .chain(outputs_by_asset.keys())
            .copied()
            .collect();
        for asset in assets {
            let inputs = inputs_by_asset.get(&asset).copied().unwrap_or(0);
            let outputs = outputs_by_asset.get(&asset).copied().unwrap_or(0);
            let conserved = match asset {
                AssetId::Native => inputs >= outputs,
                AssetId::Token(_) => inputs == outputs || Some(asset) == minted,
            };
            if !conserved {
                return Err(TxError::ValueNotConserved {
                    asset,
                    inputs,
                    outputs,
                });
            }
            if asset == AssetId::Native {
                fee = inputs - outputs;
            }
        }
    }
    Ok(TxEffects {
        tx_id,
        consumed,
        referenced,
        created,
        fee,
        consuming_owners: consuming_owners.into_iter().collect(),
    })
}

/// Validates one transaction for the block after the current tip (admission, API checks):
/// stateless checks, then inputs against `view` and reference counts from `references`.
/// Admitted references of this transaction do not count against it.
pub fn check_transaction<V: UtxoView + ?Sized>(
    view: &V,
    references: &ReferenceTable,
    transaction: &pb::Transaction,
    block: BlockContext,
) -> Result<TxEffects, TxError> {
    check_transaction_stateless(transaction)?;
    let (tx_id, signing_hash) = model::tx_ids(transaction);
    let mut overlay = Overlay::new(view, references);
    overlay.release(&tx_id);
    check_transaction_with(&overlay, transaction, tx_id, signing_hash, block)
}

fn check_header(header: &pb::BlockHeader, tip: Option<&ChainTip>) -> Result<BlockHash, BlockError> {
    let parent_hash = BlockHash::from_slice(&header.parent_hash).map_err(BlockError::Header)?;
    match tip {
        None => {
            if parent_hash != BlockHash::default() {
                return Err(BlockError::UnknownParent {
                    parent_hash,
                    tip_hash: None,
                });
            }
            if header.height != 0 {
                return Err(BlockError::WrongHeight {
                    expected: 0,
                    actual: header.height,
                });
            }
        }
        Some(tip) => {
            if parent_hash != tip.hash {
                return Err(BlockError::UnknownParent {
                    parent_hash,
                    tip_hash: Some(tip.hash),
                });
            }
            let expected = tip.height.saturating_add(1);
            if header.height != expected {
                return Err(BlockError::WrongHeight {
                    expected,
                    actual: header.height,
                });
            }
            if header.timestamp < tip.timestamp {
                return Err(BlockError::TimestampDecreasing {
                    parent: tip.timestamp,
                    actual: header.timestamp,
                });
            }
        }
    }
    Ok(model::block_hash(header))
}

/// [`validate_block`] with the block's signatures checked on every core first: each
/// worker resolves inputs through `view` (outputs created earlier in the block are
/// skipped) and runs the unlock checks speculatively, keeping the (key, digest,
/// signature) triples that pass `verify_strict`; the sequential validation then runs
/// unchanged, answering those signature checks from the memo. Every rule, its order and
/// the error reported are `validate_block`'s (a memo hit is a check that would pass).
pub fn validate_block_parallel<V: UtxoView + Sync + ?Sized>(
    view: &V,
    references: &ReferenceTable,
    tip: Option<&ChainTip>,
    block: &pb::Block,
    params: &ChainParams,
) -> Result<BlockEffects, BlockError> {
    let n_threads = worker_threads();
    let Some(header) = block.header.as_ref() else {
        return validate_block(view, references, tip, block, params);
    };
    let n_inputs: usize = block.transactions.iter().map(|tx| tx.inputs.len()).sum();
    if n_threads < 2 || n_inputs < PARALLEL_PRECHECK_MIN_TXS {
        return validate_block(view, references, tip, block, params);
    }
    let context = BlockContext {
        height: header.height,
        timestamp: header.timestamp,
    };
    let chunk = block.transactions.len().div_ceil(n_threads).max(1);
    let known = std::thread::scope(|scope| {
        let handles: Vec<_> = block
            .transactions
            .chunks(chunk)
            .map(|part| scope.spawn(move || preverify(view, part, context)))
            .collect();
        let mut known = HashSet::new();
        for handle in handles {
            match handle.join() {
                Ok(part) => known.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        known
    });
    locking::SIGNATURE_MEMO.with(|memo| {
        *memo.borrow_mut() = Some(locking::SignatureMemo {
            known,
            record: false,
        });
    });
    let result = validate_block(view, references, tip, block, params);
    locking::SIGNATURE_MEMO.with(|memo| memo.borrow_mut().take());
    result
}

/// The speculative unlock checks of `transactions` (see [`validate_block_parallel`]);
/// returns the signature triples that verified. Errors are ignored: only passes count.
fn preverify<V: UtxoView + ?Sized>(
    view: &V,
    transactions: &[pb::Transaction],
    block: BlockContext,
) -> HashSet<locking::VerifiedTriple> {
    locking::SIGNATURE_MEMO.with(|memo| {
        *memo.borrow_mut() = Some(locking::SignatureMemo {
            known: HashSet::new(),
            record: true,
        });
    });
    for transaction in transactions {
        if model::is_coinbase(transaction) {
            continue;
        }
        let (_, signing_hash) = model::tx_ids(transaction);
        let resolved: Vec<Option<Cow<'_, pb::Utxo>>> = transaction
            .inputs
            .iter()
            .map(|input| {
                input_outpoint(input)
                    .ok()
                    .and_then(|outpoint| view.get_utxo(&outpoint))
            })
            .collect();
        let referenced_contracts: Vec<ContentHash> = transaction
            .inputs
            .iter()
            .zip(&resolved)
            .filter(|(input, _)| input.is_reference_only)
            .filter_map(|(_, utxo)| utxo.as_ref()?.output().and_then(resource_content))
            .filter_map(|resource| ContentHash::from_slice(&resource.content_hash).ok())
            .collect();
        for (input_index, (input, utxo)) in transaction.inputs.iter().zip(&resolved).enumerate() {
            let Some(output) = utxo.as_ref().and_then(|utxo| utxo.output()) else {
                continue;
            };
            let context = SpendContext {
                signing_hash,
                input_index: input_index as u32,
                is_reference_only: input.is_reference_only,
                block_height: block.height,
                block_timestamp: block.timestamp,
                referenced_contracts: &referenced_contracts,
            };
            let _ = locking::verify_unlock(
                &output.locking_conditions,
                input.unlocking_proof.as_ref(),
                &context,
            );
        }
    }
    locking::SIGNATURE_MEMO
        .with(|memo| memo.borrow_mut().take())
        .map(|memo| memo.known)
        .unwrap_or_default()
}

type Prechecked = (TxId, SigningHash, Result<(), TxError>);

/// Blocks with fewer transactions are prechecked on the calling thread.
const PARALLEL_PRECHECK_MIN_TXS: usize = 32;

fn precheck_one(transaction: &pb::Transaction) -> Prechecked {
    let (tx_id, signing_hash) = model::tx_ids(transaction);
    (
        tx_id,
        signing_hash,
        check_transaction_stateless(transaction),
    )
}

/// `tx_ids` and [`check_transaction_stateless`] of every transaction, in block order,
/// spread over the available cores (both are pure functions of the transaction).
/// Threads for the parallel checks: the machine's parallelism, at most 8. Asked once:
/// `available_parallelism` reads cgroup files on Linux, which cost more than validating a
/// small block.
fn worker_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

fn precheck_transactions(transactions: &[pb::Transaction]) -> Vec<Prechecked> {
    let n_threads = worker_threads();
    if n_threads < 2 || transactions.len() < PARALLEL_PRECHECK_MIN_TXS {
        return transactions.iter().map(precheck_one).collect();
    }
    let chunk = transactions.len().div_ceil(n_threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = transactions
            .chunks(chunk)
            .skip(1)
            .map(|part| scope.spawn(move || part.iter().map(precheck_one).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<Prechecked> = Vec::with_capacity(transactions.len());
        all.extend(transactions[..chunk].iter().map(precheck_one));
        for handle in handles {
            match handle.join() {
                Ok(part) => all.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    })
}

/// Validates a block on top of `tip` (None: the genesis block) and returns its effects.
/// Nothing is changed; see the module docs for the rules.
pub fn validate_block<V: UtxoView + ?Sized>(
    view: &V,
    references: &ReferenceTable,
    tip: Option<&ChainTip>,
    block: &pb::Block,
    params: &ChainParams,
) -> Result<BlockEffects, BlockError> {
    let header = block
        .header
        .as_ref()
        .ok_or(BlockError::Header(ModelError::MissingField("Block.header")))?;
    let hash = check_header(header, tip)?;
    let n_transactions = block.transactions.len();
    if n_transactions > MAX_TXS_PER_BLOCK {
        return Err(BlockError::TooManyTransactions {
            count: n_transactions,
            max: MAX_TXS_PER_BLOCK,
        });
    }
    if header.transactions_root != model::transactions_root(&block.transactions) {
        return Err(BlockError::TransactionsRootMismatch);
    }
    let context = BlockContext {
        height: header.height,
        timestamp: header.timestamp,
    };

    let mut overlay = Overlay::new(view, references);
    let mut released_admissions = Vec::new();
    for tx_id in references.expiring_at(header.height) {
        if overlay.release(&tx_id) {
            released_admissions.push(tx_id);
        }
    }

    let mut seen_tx_ids = HashSet::with_capacity(n_transactions);
    let mut effects = Vec::with_capacity(n_transactions);
    // The ids and stateless checks of all transactions, computed on every core; their
    // results are consulted below in block order, so the first error reported is the same.
    let prechecked = precheck_transactions(&block.transactions);
    for ((tx_index, transaction), (tx_id, signing_hash, stateless)) in
        block.transactions.iter().enumerate().zip(prechecked)
    {
        let fail = |source: TxError| BlockError::Transaction {
            tx_index,
            tx_id,
            source: Box::new(source),
        };
        stateless.map_err(fail)?;
        if model::is_coinbase(transaction) && tx_index != 0 {
            return Err(BlockError::CoinbaseNotFirst { tx_index });
        }
        if !seen_tx_ids.insert(tx_id) {
            return Err(BlockError::DuplicateTransaction { tx_id });
        }
        if (0..transaction.outputs.len())
            .any(|index| overlay.exists(&OutPointKey::new(tx_id, index as u32)))
        {
            return Err(BlockError::OutputExists { tx_id });
        }
        // Inclusion releases the transaction's admitted references before its inputs are
        // checked, so an admitted transaction is never blocked by its own references.
        if overlay.release(&tx_id) {
            released_admissions.push(tx_id);
        }
        let tx_effects =
            check_transaction_with(&overlay, transaction, tx_id, signing_hash, context)
                .map_err(fail)?;
        overlay.commit(tx_index, &tx_effects);
        effects.push(tx_effects);
    }

    if let Some(coinbase) = block
        .transactions
        .first()
        .filter(|tx| model::is_coinbase(tx))
    {
        check_coinbase(coinbase, header.height, &effects, params)?;
    }

    // Admitted transactions whose consumed inputs this block spent can never be included.
    for admission in references.admissions() {
        if !overlay.released.contains(&admission.tx_id)
            && admission
                .consumed
                .iter()
                .any(|outpoint| overlay.spent.contains_key(outpoint))
        {
            released_admissions.push(admission.tx_id);
        }
    }

    Ok(BlockEffects {
        hash,
        header: header.clone(),
        transactions: effects,
        released_admissions,
    })
}

fn check_coinbase(
    coinbase: &pb::Transaction,
    height: u64,
    effects: &[TxEffects],
    params: &ChainParams,
) -> Result<(), BlockError> {
    let coinbase_height = coinbase.coinbase.as_ref().map_or(0, |c| c.height);
    if coinbase_height != height {
        return Err(BlockError::CoinbaseHeightMismatch {
            expected: height,
            actual: coinbase_height,
        });
    }
    if height == 0 {
        return Ok(());
    }
    let mut created = 0u128;
    for output in &coinbase.outputs {
        match asset_amount(output) {
            Ok(Some((AssetId::Native, amount))) => created += u128::from(amount),
            Ok(Some((AssetId::Token(_), _))) => return Err(BlockError::CoinbaseMintsToken),
            Ok(None) => {}
            Err(error) => return Err(BlockError::Header(error)),
        }
    }
    let fees: u128 = effects.iter().map(|e| e.fee).sum();
    let allowed = u128::from(params.block_reward) + fees;
    if created > allowed {
        return Err(BlockError::CoinbaseTooLarge {
            allowed,
            actual: created,
        });
    }
    Ok(())
}

#[cfg(test)]
mod precheck_tests {
    use super::*;

    #[test]
    fn parallel_precheck_matches_sequential_in_order() {
        // Valid-looking and invalid transactions mixed, more than the parallel threshold.
        let transactions: Vec<pb::Transaction> = (0..(PARALLEL_PRECHECK_MIN_TXS * 3 + 5))
            .map(|index| {
                let mut transaction = pb::Transaction {
                    version: index as u32,
                    ..pb::Transaction::default()
                };
                if index % 7 == 0 {
                    transaction.coinbase = Some(pb::Coinbase {
                        height: index as u64,
                        extra_data: vec![
                            0;
                            if index % 14 == 0 {
                                MAX_SMALL_BYTES_LEN + 1
                            } else {
                                1
                            }
                        ],
                    });
                }
                transaction
            })
            .collect();
        let parallel = precheck_transactions(&transactions);
        let sequential: Vec<Prechecked> = transactions.iter().map(precheck_one).collect();
        assert_eq!(parallel, sequential);
        assert!(parallel.iter().any(|(_, _, result)| result.is_ok()));
        assert!(parallel.iter().any(|(_, _, result)| result.is_err()));
    }
}
