//! `validate_block_parallel` (signatures checked on every core first, then the sequential
//! rules with a memo of passed signatures) answers exactly as `validate_block`: the same
//! effects for valid blocks and the same first error for tampered ones.
#![allow(clippy::unwrap_used)]

use wes_utxo::gen::{self, ChainGenerator};
use wes_utxo::pb;
use wes_utxo::validate::{validate_block, validate_block_parallel};
use wes_utxo::{ChainParams, UtxoState};

fn both(state: &UtxoState, block: &pb::Block) {
    let tip = state.tip();
    let sequential = validate_block(
        state,
        state.references(),
        tip.as_ref(),
        block,
        state.params(),
    );
    let parallel = validate_block_parallel(
        state,
        state.references(),
        tip.as_ref(),
        block,
        state.params(),
    );
    assert_eq!(parallel, sequential);
}

/// Flips one byte of every `stride`-th proof's encoding, from `from` on.
fn tamper(block: &mut pb::Block, from: usize, stride: usize) -> usize {
    let mut n = 0;
    for transaction in block.transactions.iter_mut().skip(from).step_by(stride) {
        for input in &mut transaction.inputs {
            if let Some(proof) = input.unlocking_proof.as_mut() {
                proof.condition_index ^= u32::from(n % 3 == 2);
                if let Some(inner) = proof.proof.as_mut() {
                    let mut bytes = prost::Message::encode_to_vec(inner);
                    if let Some(last) = bytes.last_mut() {
                        *last ^= 1;
                    }
                    if let Ok(changed) = prost::Message::decode(&bytes[..]) {
                        *inner = changed;
                    }
                }
                n += 1;
            }
        }
    }
    n
}

#[test]
fn parallel_validation_answers_as_sequential() {
    let mut generator = ChainGenerator::new(21, 24);
    let mut state = UtxoState::new(ChainParams::default());
    let mut n_rejected = 0;
    let mut n_lock_errors = 0;
    for step in 0..12 {
        let block = generator.next_block(&state, 60);
        both(&state, &block);
        for (from, stride) in [(1, 1), (5, 7), (30, 100)] {
            let mut tampered = block.clone();
            if tamper(&mut tampered, from, stride) > 0 {
                // Same header rules: re-seal the tampered transactions.
                let timestamp = block.header.as_ref().unwrap().timestamp;
                let tampered =
                    gen::make_block(state.tip().as_ref(), timestamp, tampered.transactions);
                both(&state, &tampered);
                let result = validate_block_parallel(
                    &state,
                    state.references(),
                    state.tip().as_ref(),
                    &tampered,
                    state.params(),
                );
                if let Err(error) = result {
                    n_rejected += 1;
                    n_lock_errors += usize::from(format!("{error:?}").contains("Lock"));
                }
            }
        }
        state
            .apply_block(&block)
            .unwrap_or_else(|error| panic!("step {step}: {error}"));
    }
    assert!(n_rejected > 0, "tampering produced no rejected block");
    assert!(n_lock_errors > 0, "tampering produced no unlock error");
}
