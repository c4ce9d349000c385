//! The seven locking conditions of seed 001, their unlocking proofs, and verification with
//! Ed25519 (ed25519-dalek, `verify_strict`, which rejects small-order keys and malleable
//! signatures).
//!
//! An output lists one or more [`pb::LockingCondition`]s as alternatives; an input's
//! [`pb::UnlockingProof`] names one by `condition_index` and carries the matching
//! [`pb::Proof`]. Reference-only inputs need a proof too: a lock controls use as well as
//! consumption (a private resource stays private).
//!
//! Replay protection: every signature signs a digest from [`message`] that binds the
//! spending transaction's [`SigningHash`] (which covers all inputs and outputs), the input
//! index and the condition index, under a per-kind domain tag. A proof copied to another
//! transaction, another input or another alternative no longer verifies.
//!
//! The conditions and what their proofs show:
//! - **SingleKeyLock** / SingleKeyProof: one signature by the lock's key.
//! - **MultiKeyLock** (m of n) / MultiKeyProof: signatures with key indexes; at least m,
//!   all valid, no key twice.
//! - **ContractLock** / ExecutionProof: an executor key named by the lock attests that
//!   `method` of the contract `contract_hash` ran with `input_hash` to `result_hash` for this
//!   input of this transaction; the method must be allowed, and the spending transaction
//!   must reference the contract's RESOURCE (a reference-only input whose content hash is
//!   `contract_hash`), so the contract is live and counted as in use while it runs. A VM or
//!   zk verifier can later replace the executor attestation behind the same message.
//! - **DelegationLock** / DelegationProof: the owner key may always sign; a delegate key
//!   may sign an allowed operation ("consume" or "reference", which must be what the input
//!   does) while the spending block's height is below `expiry_height` (0 = none).
//! - **ThresholdLock** (t of n shares) / ThresholdProof: signature shares by distinct
//!   parties, each verified against that party's share key, at least t. Unlike MultiKey the
//!   chain records which parties took part. (An aggregated scheme such as FROST yields one
//!   plain signature under a group key: express that as a SingleKeyLock.)
//! - **TimeLock** / TimeProof, **HeightLock** / HeightProof: the spending block's timestamp
//!   or height must have reached the lock's; then the wrapped inner proof must unlock the
//!   inner condition. Time is the block's, never the proof's or a wall clock.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::LockError;
use crate::limits::{MAX_KEYS_PER_LOCK, MAX_LOCK_DEPTH, MAX_NAMES_PER_LOCK, MAX_NAME_LEN};
use crate::model::{ContentHash, SigningHash, HASH_LEN};
use crate::pb;
use crate::pb::locking_condition::Condition;
use crate::pb::proof::Proof as ProofKind;

/// The operation of a consuming input, as named in delegation proofs.
pub const OPERATION_CONSUME: &str = "consume";
/// The operation of a reference-only input, as named in delegation proofs.
pub const OPERATION_REFERENCE: &str = "reference";

/// Where a proof is used: the facts of the spending transaction and its block.
#[derive(Clone, Copy, Debug)]
pub struct SpendContext<'a> {
    /// The spending transaction's signing hash.
    pub signing_hash: SigningHash,
    /// Position of the input in the spending transaction.
    pub input_index: u32,
    /// Whether the input only references the output.
    pub is_reference_only: bool,
    /// Height of the block that includes the spending transaction.
    pub block_height: u64,
    /// Timestamp of that block (seconds).
    pub block_timestamp: u64,
    /// Content hashes of the RESOURCEs the spending transaction references.
    pub referenced_contracts: &'a [ContentHash],
}

impl SpendContext<'_> {
    fn operation(&self) -> &'static str {
        if self.is_reference_only {
            OPERATION_REFERENCE
        } else {
            OPERATION_CONSUME
        }
    }

    fn target(&self, condition_index: u32) -> message::Target {
        message::Target {
            signing_hash: self.signing_hash,
            input_index: self.input_index,
            condition_index,
        }
    }
}

/// The digests that proof signatures sign.
pub mod message {
    use sha2::{Digest, Sha256};

    use crate::model::{ContentHash, SigningHash, HASH_LEN};

    /// What every signature binds: the transaction, the input, the chosen alternative.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Target {
        /// The spending transaction's signing hash.
        pub signing_hash: SigningHash,
        /// Position of the input.
        pub input_index: u32,
        /// Index of the condition among the output's alternatives.
        pub condition_index: u32,
    }

    fn digest(kind: &[u8], target: &Target, fields: &[&[u8]]) -> [u8; HASH_LEN] {
        let mut hasher = Sha256::new();
        hasher.update(b"WES-UTXO/v1/");
        hasher.update(kind);
        hasher.update(target.signing_hash.0);
        hasher.update(target.input_index.to_be_bytes());
        hasher.update(target.condition_index.to_be_bytes());
        for field in fields {
            // Length prefixes keep variable fields unambiguous.
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.finalize().into()
    }

    /// SingleKeyProof.signature signs this.
    pub fn single_key(target: &Target) -> [u8; HASH_LEN] {
        digest(b"single-key", target, &[])
    }

    /// Each MultiKeyProof signature signs this.
    pub fn multi_key(target: &Target) -> [u8; HASH_LEN] {
        digest(b"multi-key", target, &[])
    }

    /// Each threshold share signs this.
    pub fn threshold(target: &Target) -> [u8; HASH_LEN] {
        digest(b"threshold", target, &[])
    }

    /// DelegationProof.signature signs this.
    pub fn delegation(target: &Target, operation: &str) -> [u8; HASH_LEN] {
        digest(b"delegation", target, &[operation.as_bytes()])
    }

    /// ExecutionProof.executor_signature signs this.
    pub fn execution(
        target: &Target,
        contract_hash: &ContentHash,
        method: &str,
        input_hash: &[u8],
        result_hash: &[u8],
    ) -> [u8; HASH_LEN] {
        digest(
            b"execution",
            target,
            &[&contract_hash.0, method.as_bytes(), input_hash, result_hash],
        )
    }
}

/// The name of a condition's kind, for errors.
pub fn condition_kind(condition: &Condition) -> &'static str {
    match condition {
        Condition::SingleKeyLock(_) => "single_key_lock",
        Condition::MultiKeyLock(_) => "multi_key_lock",
        Condition::ContractLock(_) => "contract_lock",
        Condition::DelegationLock(_) => "delegation_lock",
        Condition::ThresholdLock(_) => "threshold_lock",
        Condition::TimeLock(_) => "time_lock",
        Condition::HeightLock(_) => "height_lock",
    }
}

/// The name of a proof's kind, for errors.
pub fn proof_kind(proof: &ProofKind) -> &'static str {
    match proof {
        ProofKind::SingleKeyProof(_) => "single_key_proof",
        ProofKind::MultiKeyProof(_) => "multi_key_proof",
        ProofKind::ExecutionProof(_) => "execution_proof",
        ProofKind::DelegationProof(_) => "delegation_proof",
        ProofKind::ThresholdProof(_) => "threshold_proof",
        ProofKind::TimeProof(_) => "time_proof",
        ProofKind::HeightProof(_) => "height_proof",
    }
}

fn parse_key(bytes: &[u8]) -> Result<VerifyingKey, LockError> {
    let array: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| LockError::Malformed("public key"))?;
    VerifyingKey::from_bytes(array).map_err(|_| LockError::Malformed("public key"))
}

/// Bound of [`VALID_KEYS`] (32-byte entries; cleared whole when full).
const VALID_KEYS_MAX: usize = 1 << 20;

/// Public keys already found to be valid Ed25519 points. Decompressing a point costs
/// microseconds and every output's lock is checked when created, while owners' keys
/// repeat; validity is a pure function of the 32 bytes, so a hit answers exactly what
/// [`parse_key`] would. Only successes are kept.
static VALID_KEYS: Mutex<Option<HashSet<[u8; 32]>>> = Mutex::new(None);

/// Whether `bytes` is a valid public key ([`parse_key`] succeeds), through [`VALID_KEYS`].
fn check_key(bytes: &[u8]) -> Result<(), LockError> {
    let array: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| LockError::Malformed("public key"))?;
    if let Ok(known) = VALID_KEYS.lock() {
        if known.as_ref().is_some_and(|known| known.contains(array)) {
            return Ok(());
        }
    }
    parse_key(bytes)?;
    if let Ok(mut known) = VALID_KEYS.lock() {
        let known = known.get_or_insert_with(HashSet::new);
        if known.len() >= VALID_KEYS_MAX {
            known.clear();
        }
        known.insert(*array);
    }
    Ok(())
}

/// One verified signature: public key | digest | signature.
pub(crate) type VerifiedTriple = [u8; 32 + HASH_LEN + 64];

/// How [`verify_signature`] uses the thread's signature memo.
#[derive(Default)]
pub(crate) struct SignatureMemo {
    /// Triples known to pass `verify_strict` (checked on other threads); consulted.
    pub(crate) known: HashSet<VerifiedTriple>,
    /// Whether to record every triple that passes into `known` (speculative pre-pass).
    pub(crate) record: bool,
}

thread_local! {
    /// Set only while `validate::validate_block_parallel` runs on this thread.
    pub(crate) static SIGNATURE_MEMO: RefCell<Option<SignatureMemo>> = const { RefCell::new(None) };
}

fn triple(key: &VerifyingKey, digest: &[u8; HASH_LEN], signature: &[u8]) -> Option<VerifiedTriple> {
    if signature.len() != 64 {
        return None;
    }
    let mut triple = [0u8; 32 + HASH_LEN + 64];
    triple[..32].copy_from_slice(key.as_bytes());
    triple[32..32 + HASH_LEN].copy_from_slice(digest);
    triple[32 + HASH_LEN..].copy_from_slice(signature);
    Some(triple)
}

fn verify_signature(
    key: &VerifyingKey,
    digest: &[u8; HASH_LEN],
    signature: &[u8],
) -> Result<(), LockError> {
    // `verify_strict` is a pure function of (key, digest, signature): a triple that passed
    // once passes again, so a memo hit answers exactly as verifying would.
    let memo_triple = SIGNATURE_MEMO.with(|memo| {
        memo.borrow()
            .as_ref()
            .and_then(|_| triple(key, digest, signature))
    });
    if let Some(memo_triple) = &memo_triple {
        let known = SIGNATURE_MEMO.with(|memo| {
            memo.borrow()
                .as_ref()
                .is_some_and(|memo| memo.known.contains(memo_triple))
        });
        if known {
            return Ok(());
        }
    }
    let signature =
        Signature::from_slice(signature).map_err(|_| LockError::Malformed("signature"))?;
    key.verify_strict(digest, &signature)
        .map_err(|_| LockError::InvalidSignature)?;
    if let Some(memo_triple) = memo_triple {
        SIGNATURE_MEMO.with(|memo| {
            if let Some(memo) = memo.borrow_mut().as_mut().filter(|memo| memo.record) {
                memo.known.insert(memo_triple);
            }
        });
    }
    Ok(())
}

fn check_names(names: &[String]) -> Result<(), LockError> {
    if names.len() > MAX_NAMES_PER_LOCK || names.iter().any(|name| name.len() > MAX_NAME_LEN) {
        return Err(LockError::Malformed("name list"));
    }
    Ok(())
}

fn check_key_set(keys: &[Vec<u8>], what: &'static str) -> Result<(), LockError> {
    if keys.is_empty() || keys.len() > MAX_KEYS_PER_LOCK {
        return Err(LockError::Malformed(what));
    }
    let mut seen = BTreeSet::new();
    for key in keys {
        check_key(key)?;
        if !seen.insert(key.as_slice()) {
            return Err(LockError::Malformed(what));
        }
    }
    Ok(())
}

/// Checks that a condition can ever be satisfied and is within limits: keys are valid
/// Ed25519 points, m and t are between 1 and n, keys are distinct, nesting is bounded.
/// Outputs with malformed conditions are rejected when created, not when spent.
pub fn check_well_formed(condition: &pb::LockingCondition) -> Result<(), LockError> {
    check_well_formed_at(condition, 1)
}

fn check_well_formed_at(condition: &pb::LockingCondition, depth: usize) -> Result<(), LockError> {
    if depth > MAX_LOCK_DEPTH {
        return Err(LockError::TooDeep {
            max: MAX_LOCK_DEPTH,
        });
    }
    match condition
        .condition
        .as_ref()
        .ok_or(LockError::Malformed("empty condition"))?
    {
        Condition::SingleKeyLock(lock) => check_key(&lock.public_key),
        Condition::MultiKeyLock(lock) => {
            check_key_set(&lock.public_keys, "multi-key key set")?;
            let n_keys = lock.public_keys.len();
            if lock.required_signatures == 0 || lock.required_signatures as usize > n_keys {
                return Err(LockError::Malformed("multi-key m of n"));
            }
            Ok(())
        }
        Condition::ContractLock(lock) => {
            ContentHash::from_slice(&lock.contract_hash)
                .map_err(|_| LockError::Malformed("contract hash"))?;
            check_names(&lock.allowed_methods)?;
            check_key(&lock.executor_public_key)
        }
        Condition::DelegationLock(lock) => {
            check_key(&lock.owner_public_key)?;
            if lock.delegate_public_keys.len() > MAX_KEYS_PER_LOCK {
                return Err(LockError::Malformed("delegate key set"));
            }
            for key in &lock.delegate_public_keys {
                check_key(key)?;
            }
            check_names(&lock.allowed_operations)
        }
        Condition::ThresholdLock(lock) => {
            check_key_set(&lock.share_public_keys, "threshold share keys")?;
            if lock.threshold == 0 || lock.threshold as usize > lock.share_public_keys.len() {
                return Err(LockError::Malformed("threshold t of n"));
            }
            Ok(())
        }
        Condition::TimeLock(lock) => check_well_formed_at(
            lock.inner
                .as_deref()
                .ok_or(LockError::Malformed("time lock inner"))?,
            depth + 1,
        ),
        Condition::HeightLock(lock) => check_well_formed_at(
            lock.inner
                .as_deref()
                .ok_or(LockError::Malformed("height lock inner"))?,
            depth + 1,
        ),
    }
}

/// Verifies that `proof` unlocks one of `conditions` for the input described by `context`.
pub fn verify_unlock(
    conditions: &[pb::LockingCondition],
    proof: Option<&pb::UnlockingProof>,
    context: &SpendContext<'_>,
) -> Result<(), LockError> {
    let proof = proof.ok_or(LockError::MissingProof)?;
    let index = proof.condition_index;
    let condition = conditions
        .get(index as usize)
        .ok_or(LockError::ConditionIndexOutOfRange {
            index,
            count: conditions.len(),
        })?;
    let inner_proof = proof.proof.as_ref().ok_or(LockError::MissingProof)?;
    verify_condition(condition, inner_proof, context, index, 1)
}

/// The wrapped condition of a time or height lock, checked one level deeper.
fn verify_inner(
    inner_condition: Option<&pb::LockingCondition>,
    inner_proof: Option<&pb::Proof>,
    what: &'static str,
    context: &SpendContext<'_>,
    condition_index: u32,
    depth: usize,
) -> Result<(), LockError> {
    let inner_condition = inner_condition.ok_or(LockError::Malformed(what))?;
    let inner_proof = inner_proof.ok_or(LockError::MissingProof)?;
    verify_condition(
        inner_condition,
        inner_proof,
        context,
        condition_index,
        depth + 1,
    )
}

fn verify_condition(
    condition: &pb::LockingCondition,
    proof: &pb::Proof,
    context: &SpendContext<'_>,
    condition_index: u32,
    depth: usize,
) -> Result<(), LockError> {
    if depth > MAX_LOCK_DEPTH {
        return Err(LockError::TooDeep {
            max: MAX_LOCK_DEPTH,
        });
    }
    let condition = condition
        .condition
        .as_ref()
        .ok_or(LockError::Malformed("empty condition"))?;
    let proof = proof.proof.as_ref().ok_or(LockError::MissingProof)?;
    let target = context.target(condition_index);
    let mismatch = || LockError::ProofKindMismatch {
        expected: condition_kind(condition),
        actual: proof_kind(proof),
    };
    match (condition, proof) {
        (Condition::SingleKeyLock(lock), ProofKind::SingleKeyProof(proof)) => verify_signature(
            &parse_key(&lock.public_key)?,
            &message::single_key(&target),
            &proof.signature,
        ),
        (Condition::MultiKeyLock(lock), ProofKind::MultiKeyProof(proof)) => {
            let signatures = proof
                .signatures
                .iter()
                .map(|s| (s.key_index, s.signature.as_slice()));
            verify_m_of_n(
                &lock.public_keys,
                lock.required_signatures,
                signatures,
                proof.signatures.len(),
                &message::multi_key(&target),
            )
        }
        (Condition::ThresholdLock(lock), ProofKind::ThresholdProof(proof)) => {
            let shares = proof
                .shares
                .iter()
                .map(|s| (s.party_id, s.signature_share.as_slice()));
            verify_m_of_n(
                &lock.share_public_keys,
                lock.threshold,
                shares,
                proof.shares.len(),
                &message::threshold(&target),
            )
        }
        (Condition::ContractLock(lock), ProofKind::ExecutionProof(proof)) => {
            let expected = ContentHash::from_slice(&lock.contract_hash)
                .map_err(|_| LockError::Malformed("contract hash"))?;
            let actual = ContentHash::from_slice(&proof.contract_hash)
                .map_err(|_| LockError::Malformed("contract hash"))?;
            if expected != actual {
                return Err(LockError::ContractMismatch { expected, actual });
            }
            if !lock.allowed_methods.is_empty() && !lock.allowed_methods.contains(&proof.method) {
                return Err(LockError::MethodNotAllowed {
                    method: proof.method.clone(),
                });
            }
            if proof.input_hash.len() != HASH_LEN || proof.result_hash.len() != HASH_LEN {
                return Err(LockError::Malformed("execution input or result hash"));
            }
            if !context.referenced_contracts.contains(&expected) {
                return Err(LockError::ContractNotReferenced {
                    contract_hash: expected,
                });
            }
            let digest = message::execution(
                &target,
                &expected,
                &proof.method,
                &proof.input_hash,
                &proof.result_hash,
            );
            verify_signature(
                &parse_key(&lock.executor_public_key)?,
                &digest,
                &proof.executor_signature,
            )
        }
        (Condition::DelegationLock(lock), ProofKind::DelegationProof(proof)) => {
            let input_operation = context.operation();
            if proof.operation != input_operation {
                return Err(LockError::OperationMismatch {
                    proof: proof.operation.clone(),
                    input: input_operation,
                });
            }
            let signer = parse_key(&proof.signer_public_key)?;
            if proof.signer_public_key != lock.owner_public_key {
                if !lock.delegate_public_keys.contains(&proof.signer_public_key) {
                    return Err(LockError::NotADelegate);
                }
                if !lock.allowed_operations.contains(&proof.operation) {
                    return Err(LockError::OperationNotAllowed {
                        operation: proof.operation.clone(),
                    });
                }
                if lock.expiry_height != 0 && context.block_height >= lock.expiry_height {
                    return Err(LockError::DelegationExpired {
                        expiry_height: lock.expiry_height,
                        block_height: context.block_height,
                    });
                }
            }
            verify_signature(
                &signer,
                &message::delegation(&target, &proof.operation),
                &proof.signature,
            )
        }
        (Condition::TimeLock(lock), ProofKind::TimeProof(proof)) => {
            if context.block_timestamp < lock.unlock_timestamp {
                return Err(LockError::TimeLockNotReached {
                    unlock_timestamp: lock.unlock_timestamp,
                    block_timestamp: context.block_timestamp,
                });
            }
            verify_inner(
                lock.inner.as_deref(),
                proof.inner.as_deref(),
                "time lock inner",
                context,
                condition_index,
                depth,
            )
        }
        (Condition::HeightLock(lock), ProofKind::HeightProof(proof)) => {
            if context.block_height < lock.unlock_height {
                return Err(LockError::HeightLockNotReached {
                    unlock_height: lock.unlock_height,
                    block_height: context.block_height,
                });
            }
            verify_inner(
                lock.inner.as_deref(),
                proof.inner.as_deref(),
                "height lock inner",
                context,
                condition_index,
                depth,
            )
        }
        _ => Err(mismatch()),
    }
}

/// Shared by MultiKey and Threshold: every supplied signature must be valid, by a distinct
/// key, and there must be at least `required` of them.
fn verify_m_of_n<'a>(
    keys: &[Vec<u8>],
    required: u32,
    signatures: impl Iterator<Item = (u32, &'a [u8])>,
    n_signatures: usize,
    digest: &[u8; HASH_LEN],
) -> Result<(), LockError> {
    if required == 0 || required as usize > keys.len() {
        return Err(LockError::Malformed("m of n"));
    }
    if n_signatures > keys.len() {
        return Err(LockError::Malformed("more signatures than keys"));
    }
    let mut seen_indexes = BTreeSet::new();
    let mut seen_keys = BTreeSet::new();
    for (index, signature) in signatures {
        let key_bytes = keys
            .get(index as usize)
            .ok_or(LockError::SignerIndexOutOfRange {
                index,
                count: keys.len(),
            })?;
        if !seen_indexes.insert(index) || !seen_keys.insert(key_bytes.as_slice()) {
            return Err(LockError::DuplicateSigner { index });
        }
        verify_signature(&parse_key(key_bytes)?, digest, signature)?;
    }
    let valid = seen_indexes.len() as u32;
    if valid < required {
        return Err(LockError::NotEnoughSignatures { required, valid });
    }
    Ok(())
}

/// Builders for locks and proofs: what wallets, tests and the generator use.
pub mod build {
    use super::*;

    fn lock(condition: Condition) -> pb::LockingCondition {
        pb::LockingCondition {
            condition: Some(condition),
        }
    }

    fn proof(kind: ProofKind) -> pb::Proof {
        pb::Proof { proof: Some(kind) }
    }

    fn key_bytes(key: &VerifyingKey) -> Vec<u8> {
        key.to_bytes().to_vec()
    }

    /// A SingleKeyLock.
    pub fn single_key_lock(key: &VerifyingKey) -> pb::LockingCondition {
        lock(Condition::SingleKeyLock(pb::SingleKeyLock {
            public_key: key_bytes(key),
        }))
    }

    /// An m-of-n MultiKeyLock.
    pub fn multi_key_lock(required_signatures: u32, keys: &[VerifyingKey]) -> pb::LockingCondition {
        lock(Condition::MultiKeyLock(pb::MultiKeyLock {
            required_signatures,
            public_keys: keys.iter().map(key_bytes).collect(),
        }))
    }

    /// A t-of-n ThresholdLock.
    pub fn threshold_lock(threshold: u32, share_keys: &[VerifyingKey]) -> pb::LockingCondition {
        lock(Condition::ThresholdLock(pb::ThresholdLock {
            threshold,
            share_public_keys: share_keys.iter().map(key_bytes).collect(),
        }))
    }

    /// A ContractLock.
    pub fn contract_lock(
        contract_hash: &ContentHash,
        allowed_methods: &[&str],
        executor: &VerifyingKey,
    ) -> pb::LockingCondition {
        lock(Condition::ContractLock(pb::ContractLock {
            contract_hash: contract_hash.0.to_vec(),
            allowed_methods: allowed_methods.iter().map(|m| m.to_string()).collect(),
            executor_public_key: key_bytes(executor),
        }))
    }

    /// A DelegationLock.
    pub fn delegation_lock(
        owner: &VerifyingKey,
        delegates: &[VerifyingKey],
        allowed_operations: &[&str],
        expiry_height: u64,
    ) -> pb::LockingCondition {
        lock(Condition::DelegationLock(pb::DelegationLock {
            owner_public_key: key_bytes(owner),
            delegate_public_keys: delegates.iter().map(key_bytes).collect(),
            allowed_operations: allowed_operations.iter().map(|o| o.to_string()).collect(),
            expiry_height,
        }))
    }

    /// A TimeLock around `inner`.
    pub fn time_lock(unlock_timestamp: u64, inner: pb::LockingCondition) -> pb::LockingCondition {
        lock(Condition::TimeLock(Box::new(pb::TimeLock {
            unlock_timestamp,
            inner: Some(Box::new(inner)),
        })))
    }

    /// A HeightLock around `inner`.
    pub fn height_lock(unlock_height: u64, inner: pb::LockingCondition) -> pb::LockingCondition {
        lock(Condition::HeightLock(Box::new(pb::HeightLock {
            unlock_height,
            inner: Some(Box::new(inner)),
        })))
    }

    /// Wraps a proof for the condition at `condition_index`.
    pub fn unlocking_proof(condition_index: u32, inner: pb::Proof) -> pb::UnlockingProof {
        pb::UnlockingProof {
            condition_index,
            proof: Some(inner),
        }
    }

    /// A SingleKeyProof.
    pub fn single_key_proof(key: &SigningKey, target: &message::Target) -> pb::Proof {
        let signature = key.sign(&message::single_key(target)).to_bytes().to_vec();
        proof(ProofKind::SingleKeyProof(pb::SingleKeyProof { signature }))
    }

    /// A MultiKeyProof from (key index, key) pairs.
    pub fn multi_key_proof(signers: &[(u32, &SigningKey)], target: &message::Target) -> pb::Proof {
        let digest = message::multi_key(target);
        let signatures = signers
            .iter()
            .map(|(key_index, key)| pb::KeySignature {
                key_index: *key_index,
                signature: key.sign(&digest).to_bytes().to_vec(),
            })
            .collect();
        proof(ProofKind::MultiKeyProof(pb::MultiKeyProof { signatures }))
    }

    /// A ThresholdProof from (party id, share key) pairs.
    pub fn threshold_proof(parties: &[(u32, &SigningKey)], target: &message::Target) -> pb::Proof {
        let digest = message::threshold(target);
        let shares = parties
            .iter()
            .map(|(party_id, key)| pb::ThresholdSignatureShare {
                party_id: *party_id,
                signature_share: key.sign(&digest).to_bytes().to_vec(),
            })
            .collect();
        proof(ProofKind::ThresholdProof(pb::ThresholdProof { shares }))
    }

    /// A DelegationProof signed by `signer` (the owner or a delegate).
    pub fn delegation_proof(
        signer: &SigningKey,
        operation: &str,
        target: &message::Target,
    ) -> pb::Proof {
        let signature = signer
            .sign(&message::delegation(target, operation))
            .to_bytes()
            .to_vec();
        proof(ProofKind::DelegationProof(pb::DelegationProof {
            signer_public_key: key_bytes(&signer.verifying_key()),
            operation: operation.to_string(),
            signature,
        }))
    }

    /// An ExecutionProof attested by `executor`.
    pub fn execution_proof(
        executor: &SigningKey,
        contract_hash: &ContentHash,
        method: &str,
        input_hash: [u8; HASH_LEN],
        result_hash: [u8; HASH_LEN],
        target: &message::Target,
    ) -> pb::Proof {
        let digest = message::execution(target, contract_hash, method, &input_hash, &result_hash);
        proof(ProofKind::ExecutionProof(pb::ExecutionProof {
            contract_hash: contract_hash.0.to_vec(),
            method: method.to_string(),
            input_hash: input_hash.to_vec(),
            result_hash: result_hash.to_vec(),
            executor_signature: executor.sign(&digest).to_bytes().to_vec(),
        }))
    }

    /// A TimeProof around `inner`.
    pub fn time_proof(inner: pb::Proof) -> pb::Proof {
        proof(ProofKind::TimeProof(Box::new(pb::TimeProof {
            inner: Some(Box::new(inner)),
        })))
    }

    /// A HeightProof around `inner`.
    pub fn height_proof(inner: pb::Proof) -> pb::Proof {
        proof(ProofKind::HeightProof(Box::new(pb::HeightProof {
            inner: Some(Box::new(inner)),
        })))
    }
}

#[cfg(test)]
mod key_cache_tests {
    use super::*;

    #[test]
    fn cached_key_check_answers_as_parse_key() {
        let valid = SigningKey::from_bytes(&[3u8; 32])
            .verifying_key()
            .to_bytes();
        let invalid = (0u8..=255)
            .map(|byte| [byte; 32])
            .find(|bytes| parse_key(bytes).is_err());
        for _ in 0..2 {
            assert!(check_key(&valid).is_ok());
            assert!(check_key(&valid[..31]).is_err());
            if let Some(invalid) = invalid {
                assert_eq!(check_key(&invalid), Err(LockError::Malformed("public key")));
            }
        }
        if let Some(invalid) = invalid {
            let known = VALID_KEYS.lock().ok().and_then(|known| known.clone());
            assert!(known.is_some_and(|known| known.contains(&valid) && !known.contains(&invalid)));
        }
    }
}
