//! Reference counting: admission takes references, inclusion, drop, conflict and expiry
//! release them, limits hold, rollback restores them, and random sequences never leak.
#![allow(clippy::unwrap_used)]

mod common;

use common::{block_with, chain, outpoint, signed_tx, single_key_utxo};
use proptest::prelude::*;
use wes_utxo::error::{AdmissionError, InputError, StateError, TxError};
use wes_utxo::gen::ChainGenerator;
use wes_utxo::pb::{self, UtxoCategory};
use wes_utxo::{ChainParams, UtxoState};

fn coins(generator: &ChainGenerator, state: &UtxoState, owner: usize) -> Vec<pb::Utxo> {
    state
        .utxos_by_owner_and_category(&generator.owners()[owner].address, UtxoCategory::Asset)
        .into_iter()
        .filter(|u| u.output().unwrap().locking_conditions.len() == 1)
        .collect()
}

fn referencing_tx(
    generator: &ChainGenerator,
    state: &UtxoState,
    coin: &pb::Utxo,
    resource: &pb::Utxo,
) -> pb::Transaction {
    signed_tx(
        generator,
        state,
        &[(coin.clone(), false), (resource.clone(), true)],
        vec![],
    )
}

fn count(state: &UtxoState, resource: &pb::Utxo) -> u64 {
    state
        .utxo(&outpoint(resource))
        .unwrap()
        .resource_constraints()
        .unwrap()
        .reference_count
}

#[test]
fn admission_takes_and_drop_releases() {
    let (generator, mut state) = chain(3, 4, 0);
    let resource = single_key_utxo(&generator, &state, 0, UtxoCategory::Resource);
    let coin = &coins(&generator, &state, 1)[0];
    let tx = referencing_tx(&generator, &state, coin, &resource);
    let tx_id = state.admit(&tx).unwrap();
    assert_eq!(count(&state, &resource), 1);
    let record = state.utxo(&outpoint(&resource)).unwrap();
    assert_eq!(record.status, pb::UtxoLifecycleStatus::Referenced as i32);
    assert_eq!(
        record.resource_constraints().unwrap().total_reference_count,
        1
    );
    assert_eq!(
        state.admit(&tx),
        Err(StateError::Admission(AdmissionError::AlreadyAdmitted(
            tx_id
        )))
    );
    assert!(state.drop_admission(&tx_id));
    assert!(!state.drop_admission(&tx_id));
    assert_eq!(count(&state, &resource), 0);
    let record = state.utxo(&outpoint(&resource)).unwrap();
    assert_eq!(record.status, pb::UtxoLifecycleStatus::Available as i32);
    assert_eq!(
        record.resource_constraints().unwrap().total_reference_count,
        1
    );
    state.check_invariants().unwrap();
}

#[test]
fn admission_enforces_max_concurrent_and_validity() {
    let (generator, mut state) = chain(3, 4, 0);
    let resource = single_key_utxo(&generator, &state, 0, UtxoCategory::Resource);
    let all: Vec<pb::Utxo> = [coins(&generator, &state, 1), coins(&generator, &state, 2)].concat();
    state
        .admit(&referencing_tx(&generator, &state, &all[0], &resource))
        .unwrap();
    // A transaction with a broken proof is never admitted.
    let before = state.clone();
    let mut forged = referencing_tx(&generator, &state, &all[3], &resource);
    forged.inputs[1].unlocking_proof = forged.inputs[0].unlocking_proof.clone();
    let Err(StateError::Admission(AdmissionError::Invalid(error))) = state.admit(&forged) else {
        panic!("forged proof admitted");
    };
    assert!(matches!(
        *error,
        TxError::Input {
            input_index: 1,
            source: InputError::Lock(_),
            ..
        }
    ));
    assert_eq!(state, before);
    state
        .admit(&referencing_tx(&generator, &state, &all[1], &resource))
        .unwrap();
    let before = state.clone();
    let third = referencing_tx(&generator, &state, &all[2], &resource);
    let error = state.admit(&third).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("resource concurrent limit (2) exceeded, current: 2"),
        "{error}"
    );
    assert_eq!(state, before);
    let plain = signed_tx(&generator, &state, &[(all[3].clone(), false)], vec![]);
    assert_eq!(
        state.admit(&plain),
        Err(StateError::Admission(AdmissionError::NoReferenceInputs))
    );
}

#[test]
fn inclusion_releases_and_rollback_restores() {
    let (generator, mut state) = chain(3, 4, 0);
    let resource = single_key_utxo(&generator, &state, 0, UtxoCategory::Resource);
    let coin = &coins(&generator, &state, 1)[0];
    let tx = referencing_tx(&generator, &state, coin, &resource);
    state.admit(&tx).unwrap();
    let admitted = state.clone();
    state
        .apply_block(&block_with(&generator, &state, vec![tx], 1_000_000))
        .unwrap();
    assert_eq!(count(&state, &resource), 0);
    assert!(state.references().is_empty());
    state.rollback_block().unwrap();
    assert_eq!(state, admitted, "rollback restores the admission exactly");
    assert_eq!(count(&state, &resource), 1);
}

#[test]
fn conflict_releases() {
    let (generator, mut state) = chain(3, 4, 0);
    let resource = single_key_utxo(&generator, &state, 0, UtxoCategory::Resource);
    let coin = &coins(&generator, &state, 1)[0];
    state
        .admit(&referencing_tx(&generator, &state, coin, &resource))
        .unwrap();
    // Another transaction spends the admitted transaction's coin.
    let rival = signed_tx(&generator, &state, &[(coin.clone(), false)], vec![]);
    state
        .apply_block(&block_with(&generator, &state, vec![rival], 1_000_000))
        .unwrap();
    assert!(state.references().is_empty());
    assert_eq!(count(&state, &resource), 0);
}

#[test]
fn expiry_releases_after_the_configured_blocks() {
    let (generator, mut state) = chain(3, 4, 0);
    let ttl = state.params().admission_ttl_blocks;
    let resource = single_key_utxo(&generator, &state, 0, UtxoCategory::Resource);
    let coin = &coins(&generator, &state, 1)[0];
    state
        .admit(&referencing_tx(&generator, &state, coin, &resource))
        .unwrap();
    let admitted_at = state.tip().unwrap().height;
    for _ in 0..ttl {
        state
            .apply_block(&block_with(&generator, &state, vec![], 0))
            .unwrap();
        assert_eq!(
            count(&state, &resource),
            1,
            "held through height {}",
            admitted_at + ttl
        );
    }
    state
        .apply_block(&block_with(&generator, &state, vec![], 0))
        .unwrap();
    assert_eq!(state.tip().unwrap().height, admitted_at + ttl + 1);
    assert_eq!(count(&state, &resource), 0);
    // Now the owner can consume it.
    let consume = signed_tx(&generator, &state, &[(resource.clone(), false)], vec![]);
    state
        .apply_block(&block_with(&generator, &state, vec![consume], 0))
        .unwrap();
    state.check_invariants().unwrap();
}

#[test]
fn rollback_drops_admissions_on_outputs_of_the_rolled_back_block() {
    let (generator, mut state) = chain(3, 4, 0);
    let coin = &coins(&generator, &state, 0)[0];
    let owner = &generator.owners()[0];
    let lock = wes_utxo::locking::build::single_key_lock(&owner.public_key);
    let new_resource = wes_utxo::gen::resource_output(
        &owner.address,
        wes_utxo::model::ContentHash([4; 32]),
        0,
        lock,
    );
    let create = signed_tx(
        &generator,
        &state,
        &[(coin.clone(), false)],
        vec![new_resource],
    );
    state
        .apply_block(&block_with(&generator, &state, vec![create], 1_000_000))
        .unwrap();
    let resource = state
        .utxos_by_owner_and_category(&owner.address, UtxoCategory::Resource)
        .into_iter()
        .find(|u| u.block_height == 1)
        .unwrap();
    let reader_coin = &coins(&generator, &state, 2)[0];
    state
        .admit(&referencing_tx(&generator, &state, reader_coin, &resource))
        .unwrap();
    state.rollback_block().unwrap();
    assert!(state.references().is_empty());
    state.check_invariants().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Admit { owner: usize, resource_owner: usize },
    Drop(usize),
    Block,
    IncludeAdmitted,
    Rollback,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..4usize).prop_map(|(owner, resource_owner)| Op::Admit { owner, resource_owner }),
        2 => (0..8usize).prop_map(Op::Drop),
        3 => Just(Op::Block),
        2 => Just(Op::IncludeAdmitted),
        1 => Just(Op::Rollback),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// After any sequence, counts equal live admissions, and once every admission is
    /// dropped (or expired) every count is zero: references never leak.
    #[test]
    fn references_never_leak(ops in proptest::collection::vec(op(), 1..30)) {
        let mut generator = ChainGenerator::new(5, 4);
        let mut state = UtxoState::new(ChainParams { admission_ttl_blocks: 3, ..ChainParams::default() });
        state.apply_block(&generator.genesis()).unwrap();
        let mut admitted = Vec::new();
        for op in ops {
            match op {
                Op::Admit { owner, resource_owner } => {
                    let resources = state.utxos_by_owner_and_category(&generator.owners()[resource_owner].address, UtxoCategory::Resource);
                    let coins = coins(&generator, &state, owner);
                    let (Some(resource), Some(coin)) = (resources.first(), coins.iter().find(|c| {
                        let key = outpoint(c);
                        !state.references().admissions().any(|a| a.consumed.contains(&key))
                    })) else { continue };
                    let spendable = c_spendable(&generator, &state, coin, resource);
                    if let Some(tx) = spendable {
                        if let Ok(tx_id) = state.admit(&tx) {
                            admitted.push((tx_id, tx));
                        }
                    }
                }
                Op::Drop(index) => {
                    if !admitted.is_empty() {
                        let (tx_id, _) = admitted.remove(index % admitted.len());
                        state.drop_admission(&tx_id);
                    }
                }
                Op::Block => {
                    let block = generator.next_block(&state, 4);
                    state.apply_block(&block).unwrap();
                }
                Op::IncludeAdmitted => {
                    let live: Vec<pb::Transaction> = admitted
                        .iter()
                        .filter(|(tx_id, _)| state.references().admission(tx_id).is_some())
                        .map(|(_, tx)| tx.clone())
                        .take(1)
                        .collect();
                    let block = block_with(&generator, &state, live, 1_000_000);
                    // May fail if a lock is no longer open; then nothing changes.
                    let before = state.clone();
                    if state.apply_block(&block).is_err() {
                        prop_assert_eq!(&state, &before);
                    }
                }
                Op::Rollback => {
                    if state.tip().unwrap().height > 0 {
                        state.rollback_block().unwrap();
                    }
                }
            }
            state.check_invariants().map_err(TestCaseError::fail)?;
            for admission in state.references().admissions() {
                prop_assert!(admission.release_after_height >= state.tip().unwrap().height);
            }
        }
        let held: Vec<_> = state.references().admissions().map(|a| a.tx_id).collect();
        for tx_id in held {
            state.drop_admission(&tx_id);
        }
        prop_assert_eq!(state.references().referenced_outpoints().count(), 0);
        state.check_invariants().map_err(TestCaseError::fail)?;
    }
}

fn c_spendable(
    generator: &ChainGenerator,
    state: &UtxoState,
    coin: &pb::Utxo,
    resource: &pb::Utxo,
) -> Option<pb::Transaction> {
    let inputs = vec![
        wes_utxo::gen::input(&outpoint(coin), false),
        wes_utxo::gen::input(&outpoint(resource), true),
    ];
    let mut tx = pb::Transaction {
        version: 1,
        inputs,
        outputs: vec![],
        coinbase: None,
    };
    let tip = state.tip()?;
    generator.sign(
        &mut tx,
        &[coin.clone(), resource.clone()],
        tip.height + 1,
        tip.timestamp,
    )?;
    Some(tx)
}
