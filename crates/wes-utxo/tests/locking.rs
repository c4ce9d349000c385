//! Each locking condition: a valid proof is accepted; wrong key, too few signatures,
//! duplicate signer, expired delegation, disallowed operation, time or height not reached,
//! and a proof replayed on another transaction, input or alternative are rejected.
#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use wes_utxo::error::LockError;
use wes_utxo::locking::message::Target;
use wes_utxo::locking::{
    build, check_well_formed, verify_unlock, SpendContext, OPERATION_CONSUME, OPERATION_REFERENCE,
};
use wes_utxo::model::{ContentHash, SigningHash};
use wes_utxo::pb;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

const TX: SigningHash = SigningHash([7; 32]);
const OTHER_TX: SigningHash = SigningHash([8; 32]);
const CONTRACT: ContentHash = ContentHash([9; 32]);

fn target() -> Target {
    Target {
        signing_hash: TX,
        input_index: 0,
        condition_index: 0,
    }
}

/// Verifies `proof` (built for `target()`) against `[condition]` at input 0 of TX, at height
/// 100 and timestamp 1000, consuming, with CONTRACT referenced.
fn check(condition: &pb::LockingCondition, proof: pb::Proof) -> Result<(), LockError> {
    check_at(condition, proof, context(TX, 0))
}

fn context(signing_hash: SigningHash, input_index: u32) -> SpendContext<'static> {
    SpendContext {
        signing_hash,
        input_index,
        is_reference_only: false,
        block_height: 100,
        block_timestamp: 1000,
        referenced_contracts: std::slice::from_ref(&CONTRACT),
    }
}

fn check_at(
    condition: &pb::LockingCondition,
    proof: pb::Proof,
    context: SpendContext<'_>,
) -> Result<(), LockError> {
    check_well_formed(condition).unwrap();
    verify_unlock(
        std::slice::from_ref(condition),
        Some(&build::unlocking_proof(0, proof)),
        &context,
    )
}

#[test]
fn single_key() {
    let lock = build::single_key_lock(&key(1).verifying_key());
    assert_eq!(
        check(&lock, build::single_key_proof(&key(1), &target())),
        Ok(())
    );
    assert_eq!(
        check(&lock, build::single_key_proof(&key(2), &target())),
        Err(LockError::InvalidSignature)
    );
    let mut corrupted = build::single_key_proof(&key(1), &target());
    if let Some(pb::proof::Proof::SingleKeyProof(p)) = &mut corrupted.proof {
        p.signature[0] ^= 1;
    }
    assert_eq!(check(&lock, corrupted), Err(LockError::InvalidSignature));
    assert_eq!(
        check(&lock, build::threshold_proof(&[(0, &key(1))], &target())),
        Err(LockError::ProofKindMismatch {
            expected: "single_key_lock",
            actual: "threshold_proof"
        })
    );
}

#[test]
fn replay_on_another_transaction_input_or_condition_is_rejected() {
    let lock = build::single_key_lock(&key(1).verifying_key());
    let proof = build::single_key_proof(&key(1), &target());
    assert_eq!(
        check_at(&lock, proof.clone(), context(OTHER_TX, 0)),
        Err(LockError::InvalidSignature)
    );
    assert_eq!(
        check_at(&lock, proof.clone(), context(TX, 1)),
        Err(LockError::InvalidSignature)
    );
    // Same key offered as two alternatives: a proof for alternative 0 does not unlock 1.
    let conditions = vec![lock.clone(), lock.clone()];
    let replayed = pb::UnlockingProof {
        condition_index: 1,
        proof: Some(proof.clone()),
    };
    assert_eq!(
        verify_unlock(&conditions, Some(&replayed), &context(TX, 0)),
        Err(LockError::InvalidSignature)
    );
    let out_of_range = pb::UnlockingProof {
        condition_index: 2,
        proof: Some(proof),
    };
    assert_eq!(
        verify_unlock(&conditions, Some(&out_of_range), &context(TX, 0)),
        Err(LockError::ConditionIndexOutOfRange { index: 2, count: 2 })
    );
    assert_eq!(
        verify_unlock(&conditions, None, &context(TX, 0)),
        Err(LockError::MissingProof)
    );
}

#[test]
fn multi_key() {
    let keys = [key(1), key(2), key(3)];
    let public: Vec<_> = keys.iter().map(SigningKey::verifying_key).collect();
    let lock = build::multi_key_lock(2, &public);
    assert_eq!(
        check(
            &lock,
            build::multi_key_proof(&[(0, &keys[0]), (2, &keys[2])], &target())
        ),
        Ok(())
    );
    assert_eq!(
        check(&lock, build::multi_key_proof(&[(1, &keys[1])], &target())),
        Err(LockError::NotEnoughSignatures {
            required: 2,
            valid: 1
        })
    );
    assert_eq!(
        check(
            &lock,
            build::multi_key_proof(&[(1, &keys[1]), (1, &keys[1])], &target())
        ),
        Err(LockError::DuplicateSigner { index: 1 })
    );
    assert_eq!(
        check(
            &lock,
            build::multi_key_proof(&[(0, &keys[0]), (1, &key(9))], &target())
        ),
        Err(LockError::InvalidSignature)
    );
    assert_eq!(
        check(
            &lock,
            build::multi_key_proof(&[(0, &keys[0]), (5, &keys[1])], &target())
        ),
        Err(LockError::SignerIndexOutOfRange { index: 5, count: 3 })
    );
    let replay = build::multi_key_proof(&[(0, &keys[0]), (1, &keys[1])], &target());
    assert_eq!(
        check_at(&lock, replay, context(OTHER_TX, 0)),
        Err(LockError::InvalidSignature)
    );
    // m > n or duplicate keys never make it into an output.
    assert!(check_well_formed(&build::multi_key_lock(4, &public)).is_err());
    assert!(check_well_formed(&build::multi_key_lock(1, &[public[0], public[0]])).is_err());
}

#[test]
fn threshold() {
    let shares = [key(1), key(2), key(3), key(4)];
    let public: Vec<_> = shares.iter().map(SigningKey::verifying_key).collect();
    let lock = build::threshold_lock(3, &public);
    let good = [(0, &shares[0]), (2, &shares[2]), (3, &shares[3])];
    assert_eq!(
        check(&lock, build::threshold_proof(&good, &target())),
        Ok(())
    );
    assert_eq!(
        check(&lock, build::threshold_proof(&good[..2], &target())),
        Err(LockError::NotEnoughSignatures {
            required: 3,
            valid: 2
        })
    );
    assert_eq!(
        check(
            &lock,
            build::threshold_proof(
                &[(0, &shares[0]), (0, &shares[0]), (1, &shares[1])],
                &target()
            )
        ),
        Err(LockError::DuplicateSigner { index: 0 })
    );
    assert_eq!(
        check(
            &lock,
            build::threshold_proof(
                &[(0, &shares[0]), (1, &shares[2]), (2, &shares[2])],
                &target()
            )
        ),
        Err(LockError::InvalidSignature)
    );
    // A multi-key signature is not a threshold share (domain separation).
    let multi = build::multi_key_proof(
        &[(0, &shares[0]), (2, &shares[2]), (3, &shares[3])],
        &target(),
    );
    let pb::proof::Proof::MultiKeyProof(multi) = multi.proof.unwrap() else {
        unreachable!()
    };
    let as_shares = pb::ThresholdProof {
        shares: multi
            .signatures
            .into_iter()
            .map(|s| pb::ThresholdSignatureShare {
                party_id: s.key_index,
                signature_share: s.signature,
            })
            .collect(),
    };
    let proof = pb::Proof {
        proof: Some(pb::proof::Proof::ThresholdProof(as_shares)),
    };
    assert_eq!(check(&lock, proof), Err(LockError::InvalidSignature));
    let replay = build::threshold_proof(
        &good,
        &Target {
            input_index: 1,
            ..target()
        },
    );
    assert_eq!(check(&lock, replay), Err(LockError::InvalidSignature));
}

#[test]
fn contract() {
    let executor = key(5);
    let lock = build::contract_lock(&CONTRACT, &["call"], &executor.verifying_key());
    let proof = |signer: &SigningKey, contract: &ContentHash, method: &str, target: &Target| {
        build::execution_proof(signer, contract, method, [1; 32], [2; 32], target)
    };
    assert_eq!(
        check(&lock, proof(&executor, &CONTRACT, "call", &target())),
        Ok(())
    );
    assert_eq!(
        check(&lock, proof(&key(6), &CONTRACT, "call", &target())),
        Err(LockError::InvalidSignature)
    );
    assert_eq!(
        check(
            &lock,
            proof(&executor, &ContentHash([3; 32]), "call", &target())
        ),
        Err(LockError::ContractMismatch {
            expected: CONTRACT,
            actual: ContentHash([3; 32])
        })
    );
    assert_eq!(
        check(&lock, proof(&executor, &CONTRACT, "drain", &target())),
        Err(LockError::MethodNotAllowed {
            method: "drain".into()
        })
    );
    let unreferenced = SpendContext {
        referenced_contracts: &[],
        ..context(TX, 0)
    };
    assert_eq!(
        check_at(
            &lock,
            proof(&executor, &CONTRACT, "call", &target()),
            unreferenced
        ),
        Err(LockError::ContractNotReferenced {
            contract_hash: CONTRACT
        })
    );
    assert_eq!(
        check_at(
            &lock,
            proof(&executor, &CONTRACT, "call", &target()),
            context(OTHER_TX, 0)
        ),
        Err(LockError::InvalidSignature)
    );
    // The attested result is signed: changing it breaks the proof.
    let mut tampered = proof(&executor, &CONTRACT, "call", &target());
    if let Some(pb::proof::Proof::ExecutionProof(p)) = &mut tampered.proof {
        p.result_hash = vec![3; 32];
    }
    assert_eq!(check(&lock, tampered), Err(LockError::InvalidSignature));
}

#[test]
fn delegation() {
    let (owner, delegate, stranger) = (key(1), key(2), key(3));
    let lock = build::delegation_lock(
        &owner.verifying_key(),
        &[delegate.verifying_key()],
        &[OPERATION_CONSUME],
        150,
    );
    assert_eq!(
        check(
            &lock,
            build::delegation_proof(&delegate, OPERATION_CONSUME, &target())
        ),
        Ok(())
    );
    assert_eq!(
        check(
            &lock,
            build::delegation_proof(&owner, OPERATION_CONSUME, &target())
        ),
        Ok(())
    );
    assert_eq!(
        check(
            &lock,
            build::delegation_proof(&stranger, OPERATION_CONSUME, &target())
        ),
        Err(LockError::NotADelegate)
    );
    // Expired delegation: the delegate is refused from height 150, the owner is not.
    let late = SpendContext {
        block_height: 150,
        ..context(TX, 0)
    };
    assert_eq!(
        check_at(
            &lock,
            build::delegation_proof(&delegate, OPERATION_CONSUME, &target()),
            late
        ),
        Err(LockError::DelegationExpired {
            expiry_height: 150,
            block_height: 150
        })
    );
    assert_eq!(
        check_at(
            &lock,
            build::delegation_proof(&owner, OPERATION_CONSUME, &target()),
            late
        ),
        Ok(())
    );
    // Disallowed operation: the delegate may consume but not reference.
    let referencing = SpendContext {
        is_reference_only: true,
        ..context(TX, 0)
    };
    assert_eq!(
        check_at(
            &lock,
            build::delegation_proof(&delegate, OPERATION_REFERENCE, &target()),
            referencing
        ),
        Err(LockError::OperationNotAllowed {
            operation: OPERATION_REFERENCE.into()
        })
    );
    // The proof's operation must be what the input does.
    assert_eq!(
        check_at(
            &lock,
            build::delegation_proof(&delegate, OPERATION_CONSUME, &target()),
            referencing
        ),
        Err(LockError::OperationMismatch {
            proof: OPERATION_CONSUME.into(),
            input: OPERATION_REFERENCE
        })
    );
    // The operation is signed: relabelling it breaks the signature.
    let mut relabelled = build::delegation_proof(&owner, OPERATION_CONSUME, &target());
    if let Some(pb::proof::Proof::DelegationProof(p)) = &mut relabelled.proof {
        p.operation = OPERATION_REFERENCE.into();
    }
    assert_eq!(
        check_at(&lock, relabelled, referencing),
        Err(LockError::InvalidSignature)
    );
    assert_eq!(
        check_at(
            &lock,
            build::delegation_proof(&delegate, OPERATION_CONSUME, &target()),
            context(TX, 3)
        ),
        Err(LockError::InvalidSignature)
    );
}

#[test]
fn time_lock() {
    let inner = build::single_key_lock(&key(1).verifying_key());
    let open = build::time_lock(1000, inner.clone());
    let closed = build::time_lock(1001, inner);
    let proof = build::time_proof(build::single_key_proof(&key(1), &target()));
    assert_eq!(check(&open, proof.clone()), Ok(()));
    assert_eq!(
        check(&closed, proof),
        Err(LockError::TimeLockNotReached {
            unlock_timestamp: 1001,
            block_timestamp: 1000
        })
    );
    assert_eq!(
        check(
            &open,
            build::time_proof(build::single_key_proof(&key(2), &target()))
        ),
        Err(LockError::InvalidSignature)
    );
    assert_eq!(
        check(&open, build::single_key_proof(&key(1), &target())),
        Err(LockError::ProofKindMismatch {
            expected: "time_lock",
            actual: "single_key_proof"
        })
    );
}

#[test]
fn height_lock() {
    let keys = [key(1), key(2)];
    let inner = build::multi_key_lock(2, &[keys[0].verifying_key(), keys[1].verifying_key()]);
    let open = build::height_lock(100, inner.clone());
    let closed = build::height_lock(101, inner);
    let proof = build::height_proof(build::multi_key_proof(
        &[(0, &keys[0]), (1, &keys[1])],
        &target(),
    ));
    assert_eq!(check(&open, proof.clone()), Ok(()));
    assert_eq!(
        check(&closed, proof),
        Err(LockError::HeightLockNotReached {
            unlock_height: 101,
            block_height: 100
        })
    );
    assert_eq!(
        check(
            &open,
            build::height_proof(build::multi_key_proof(&[(0, &keys[0])], &target()))
        ),
        Err(LockError::NotEnoughSignatures {
            required: 2,
            valid: 1
        })
    );
}

#[test]
fn nesting_is_bounded() {
    let mut lock = build::single_key_lock(&key(1).verifying_key());
    let mut proof = build::single_key_proof(&key(1), &target());
    for _ in 0..3 {
        lock = build::height_lock(0, lock);
        proof = build::height_proof(proof);
    }
    assert_eq!(check(&lock, proof.clone()), Ok(()));
    let deeper = build::time_lock(0, lock);
    assert_eq!(
        check_well_formed(&deeper),
        Err(LockError::TooDeep { max: 4 })
    );
    let context = context(TX, 0);
    let result = verify_unlock(
        &[deeper],
        Some(&build::unlocking_proof(0, build::time_proof(proof))),
        &context,
    );
    assert_eq!(result, Err(LockError::TooDeep { max: 4 }));
}
