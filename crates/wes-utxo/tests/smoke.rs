//! The generator produces valid chains that exercise every lock kind, and apply/rollback
//! round-trips to the empty state.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use wes_utxo::gen::ChainGenerator;
use wes_utxo::locking::proof_kind;
use wes_utxo::{ChainParams, UtxoState};

#[test]
fn generated_chain_applies_and_rolls_back() {
    let (_generator, mut state) = common::chain(7, 6, 30);
    state.check_invariants().unwrap();
    assert_eq!(state.tip().unwrap().height, 30);
    for _ in 0..31 {
        state.rollback_block().unwrap();
        state.check_invariants().unwrap();
    }
    assert!(state.is_empty());
    assert!(state.rollback_block().is_err());
}

#[test]
fn generator_is_deterministic_and_uses_every_proof_kind() {
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut n_references = 0;
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let mut generator = ChainGenerator::new(11, 5);
        let mut state = UtxoState::new(ChainParams::default());
        state.apply_block(&generator.genesis()).unwrap();
        let mut run = Vec::new();
        for _ in 0..60 {
            let block = generator.next_block(&state, 10);
            for transaction in &block.transactions {
                for input in &transaction.inputs {
                    n_references += usize::from(input.is_reference_only);
                    let mut proof = input
                        .unlocking_proof
                        .as_ref()
                        .unwrap()
                        .proof
                        .clone()
                        .unwrap();
                    loop {
                        let kind = proof.proof.clone().unwrap();
                        *kinds.entry(proof_kind(&kind)).or_default() += 1;
                        match kind {
                            wes_utxo::pb::proof::Proof::TimeProof(p) => proof = *p.inner.unwrap(),
                            wes_utxo::pb::proof::Proof::HeightProof(p) => proof = *p.inner.unwrap(),
                            _ => break,
                        }
                    }
                }
            }
            run.push(state.apply_block(&block).unwrap());
        }
        hashes.push(run);
    }
    assert_eq!(hashes[0], hashes[1], "same seed, same chain");
    assert_eq!(kinds.len(), 7, "every proof kind is exercised: {kinds:?}");
    assert!(n_references > 0);
}
