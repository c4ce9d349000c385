//! Bad input is rejected with a precise error and leaves the state unchanged (the whole
//! state is compared with a clone taken before): invalid proofs, double spends inside a
//! block and across blocks, unknown and consumed inputs, value not conserved, consuming a
//! referenced resource, too many concurrent references, expired state, bad headers.
#![allow(clippy::unwrap_used)]

mod common;

use common::{block_with, chain, native_amount, outpoint, signed_tx, single_key_utxo};
use wes_utxo::error::{BlockError, InputError, LockError, StateError, TxError};
use wes_utxo::gen::{self, ChainGenerator};
use wes_utxo::locking::build;
use wes_utxo::model::{self, AssetId, BlockHash, OutPointKey, TokenId, TxId};
use wes_utxo::pb::{self, UtxoCategory};
use wes_utxo::UtxoState;

/// Applying `block` fails with an error for which `expect` holds, and nothing changes.
fn assert_rejected(
    state: &mut UtxoState,
    block: &pb::Block,
    expect: impl Fn(&BlockError) -> bool,
) -> BlockError {
    let before = state.clone();
    let error = match state.apply_block(block) {
        Err(StateError::Block(error)) => error,
        other => panic!("expected a block error, got {other:?}"),
    };
    assert!(expect(&error), "unexpected error: {error}");
    assert_eq!(*state, before, "a rejected block changed the state");
    error
}

fn tx_error(error: &BlockError) -> &TxError {
    match error {
        BlockError::Transaction { source, .. } => source,
        other => panic!("not a transaction error: {other}"),
    }
}

fn input_error(error: &BlockError) -> &InputError {
    match tx_error(error) {
        TxError::Input { source, .. } => source,
        other => panic!("not an input error: {other}"),
    }
}

/// A transfer of a single-key native utxo of `from` to `to`, paying `fee`.
fn transfer(
    generator: &ChainGenerator,
    state: &UtxoState,
    from: usize,
    to: usize,
    fee: u64,
) -> pb::Transaction {
    let coin = single_key_utxo(generator, state, from, UtxoCategory::Asset);
    let coin = if native_amount_opt(&coin).is_some() {
        coin
    } else {
        native_coin(generator, state, from)
    };
    let recipient = &generator.owners()[to];
    let output = gen::native_output(
        &recipient.address,
        native_amount(&coin) - fee,
        build::single_key_lock(&recipient.public_key),
    );
    signed_tx(generator, state, &[(coin, false)], vec![output])
}

fn native_amount_opt(utxo: &pb::Utxo) -> Option<u64> {
    match model::asset_amount(utxo.output()?).ok()? {
        Some((AssetId::Native, amount)) => Some(amount),
        _ => None,
    }
}

fn native_coin(generator: &ChainGenerator, state: &UtxoState, owner: usize) -> pb::Utxo {
    state
        .utxos_by_owner_and_category(&generator.owners()[owner].address, UtxoCategory::Asset)
        .into_iter()
        .find(|utxo| native_amount_opt(utxo).is_some())
        .unwrap()
}

fn native_coins(generator: &ChainGenerator, state: &UtxoState, owner: usize) -> Vec<pb::Utxo> {
    state
        .utxos_by_owner_and_category(&generator.owners()[owner].address, UtxoCategory::Asset)
        .into_iter()
        .filter(|utxo| native_amount_opt(utxo).is_some())
        .collect()
}

#[test]
fn valid_transfer_is_applied() {
    let (generator, mut state) = chain(1, 4, 0);
    let before = state.balance(&generator.owners()[1].address, &AssetId::Native);
    let tx = transfer(&generator, &state, 0, 1, 10);
    state
        .apply_block(&block_with(&generator, &state, vec![tx], 10))
        .unwrap();
    let after = state.balance(&generator.owners()[1].address, &AssetId::Native);
    assert_eq!(after, before + 1_000_000 - 10);
    assert_eq!(
        state.compute_account_nonce(&generator.owners()[0].address),
        1
    );
    assert_eq!(
        state.compute_account_nonce(&generator.owners()[1].address),
        0
    );
    state.check_invariants().unwrap();
}

#[test]
fn invalid_proof_is_rejected() {
    let (generator, mut state) = chain(1, 4, 0);
    let mut tx = transfer(&generator, &state, 0, 1, 0);
    // Re-sign input 0 with owner 1's key.
    let target = wes_utxo::locking::message::Target {
        signing_hash: model::signing_hash(&tx),
        input_index: 0,
        condition_index: 0,
    };
    tx.inputs[0].unlocking_proof = Some(build::unlocking_proof(
        0,
        build::single_key_proof(&generator.owners()[1].signing_key, &target),
    ));
    let block = block_with(&generator, &state, vec![tx], 0);
    assert_rejected(&mut state, &block, |e| {
        *input_error(e) == InputError::Lock(LockError::InvalidSignature)
    });
}

#[test]
fn proof_replayed_on_another_transaction_is_rejected() {
    let (generator, mut state) = chain(1, 4, 0);
    let original = transfer(&generator, &state, 0, 1, 0);
    // Same input, same proof, but the output now pays owner 2.
    let mut replay = original.clone();
    replay.outputs[0].owner = generator.owners()[2].address.0.to_vec();
    let block = block_with(&generator, &state, vec![replay], 0);
    assert_rejected(&mut state, &block, |e| {
        *input_error(e) == InputError::Lock(LockError::InvalidSignature)
    });
    // Missing proof.
    let mut bare = original;
    bare.inputs[0].unlocking_proof = None;
    let block = block_with(&generator, &state, vec![bare], 0);
    assert_rejected(&mut state, &block, |e| {
        *input_error(e) == InputError::Lock(LockError::MissingProof)
    });
}

#[test]
fn double_spend_inside_a_block_is_rejected() {
    let (generator, mut state) = chain(1, 4, 0);
    let first = transfer(&generator, &state, 0, 1, 0);
    let second = transfer(&generator, &state, 0, 2, 0);
    let block = block_with(&generator, &state, vec![first, second], 0);
    assert_rejected(&mut state, &block, |e| {
        matches!(e, BlockError::Transaction { tx_index: 2, .. })
            && *input_error(e) == InputError::DoubleSpendInBlock { first_tx_index: 1 }
    });
}

#[test]
fn double_spend_across_blocks_is_rejected() {
    let (generator, mut state) = chain(1, 4, 0);
    let first = transfer(&generator, &state, 0, 1, 0);
    let second = transfer(&generator, &state, 0, 2, 0);
    state
        .apply_block(&block_with(&generator, &state, vec![first], 0))
        .unwrap();
    let block = block_with(&generator, &state, vec![second], 0);
    let error = assert_rejected(&mut state, &block, |e| {
        *input_error(e) == InputError::Consumed { spent_at_height: 1 }
    });
    assert!(
        error.to_string().contains("already consumed at height 1"),
        "{error}"
    );
}

#[test]
fn unknown_input_is_rejected() {
    let (generator, mut state) = chain(1, 4, 0);
    let mut tx = transfer(&generator, &state, 0, 1, 0);
    tx.inputs[0].previous_output = Some(OutPointKey::new(TxId([42; 32]), 0).to_proto());
    let block = block_with(&generator, &state, vec![tx], 0);
    assert_rejected(&mut state, &block, |e| {
        *input_error(e) == InputError::Unknown
    });
    // A malformed outpoint is a precise model error, not a panic.
    let mut tx = transfer(&generator, &state, 0, 1, 0);
    tx.inputs[0].previous_output = Some(pb::OutPoint {
        tx_id: vec![1, 2, 3],
        output_index: 0,
    });
    let block = block_with(&generator, &state, vec![tx], 0);
    assert_rejected(&mut state, &block, |e| {
        matches!(tx_error(e), TxError::Model(_))
    });
}

#[test]
fn value_not_conserved_is_rejected() {
    let (generator, mut state) = chain(1, 4, 0);
    let coin = native_coin(&generator, &state, 0);
    let owner = &generator.owners()[1];
    let lock = build::single_key_lock(&owner.public_key);
    let too_much = gen::native_output(&owner.address, native_amount(&coin) + 1, lock.clone());
    let tx = signed_tx(&generator, &state, &[(coin.clone(), false)], vec![too_much]);
    let block = block_with(&generator, &state, vec![tx], 0);
    assert_rejected(&mut state, &block, |e| {
        *tx_error(e)
            == TxError::ValueNotConserved {
                asset: AssetId::Native,
                inputs: 1_000_000,
                outputs: 1_000_001,
            }
    });

    // Tokens cannot pay fees.
    let token = generator.genesis_token();
    let token_utxo = state
        .utxos_by_owner_and_category(&generator.owners()[0].address, UtxoCategory::Asset)
        .into_iter()
        .find(|u| native_amount_opt(u).is_none())
        .unwrap();
    let short = gen::asset_output(&owner.address, AssetId::Token(token), 9_999, lock.clone());
    let tx = signed_tx(
        &generator,
        &state,
        &[(token_utxo.clone(), false)],
        vec![short],
    );
    let block = block_with(&generator, &state, vec![tx], 0);
    let error = assert_rejected(&mut state, &block, |e| {
        *tx_error(e)
            == TxError::ValueNotConserved {
                asset: AssetId::Token(token),
                inputs: 10_000,
                outputs: 9_999,
            }
    });
    assert!(error
        .to_string()
        .contains("fees are paid in native coin only"));

    // Minting: only the token derived from the first consumed input.
    let wrong_mint = gen::asset_output(
        &owner.address,
        AssetId::Token(TokenId([5; 32])),
        1,
        lock.clone(),
    );
    let tx = signed_tx(
        &generator,
        &state,
        &[(coin.clone(), false)],
        vec![wrong_mint],
    );
    let block = block_with(&generator, &state, vec![tx], 0);
    assert_rejected(&mut state, &block, |e| {
        matches!(tx_error(e), TxError::ValueNotConserved { .. })
    });
    let minted = TokenId::minted_by(&outpoint(&coin));
    let mint = gen::asset_output(&owner.address, AssetId::Token(minted), 77, lock);
    let tx = signed_tx(&generator, &state, &[(coin, false)], vec![mint]);
    state
        .apply_block(&block_with(&generator, &state, vec![tx], 1_000_000))
        .unwrap();
    assert_eq!(state.balance(&owner.address, &AssetId::Token(minted)), 77);
}

#[test]
fn bad_headers_and_coinbase_are_rejected() {
    let (generator, mut state) = chain(1, 4, 2);
    let tip = state.tip().unwrap();
    let good = block_with(&generator, &state, vec![], 0);

    let mut unknown_parent = good.clone();
    unknown_parent.header.as_mut().unwrap().parent_hash = vec![9; 32];
    assert_rejected(&mut state, &unknown_parent, |e| {
        *e == BlockError::UnknownParent {
            parent_hash: BlockHash([9; 32]),
            tip_hash: Some(tip.hash),
        }
    });

    let mut wrong_height = good.clone();
    wrong_height.header.as_mut().unwrap().height = tip.height + 2;
    assert_rejected(&mut state, &wrong_height, |e| {
        *e == BlockError::WrongHeight {
            expected: tip.height + 1,
            actual: tip.height + 2,
        }
    });

    let mut old = good.clone();
    old.header.as_mut().unwrap().timestamp = tip.timestamp - 1;
    assert_rejected(&mut state, &old, |e| {
        matches!(e, BlockError::TimestampDecreasing { .. })
    });

    let mut tampered = good.clone();
    tampered.transactions[0]
        .coinbase
        .as_mut()
        .unwrap()
        .extra_data = b"x".to_vec();
    assert_rejected(&mut state, &tampered, |e| {
        *e == BlockError::TransactionsRootMismatch
    });

    let greedy = block_with(&generator, &state, vec![], 1);
    assert_rejected(&mut state, &greedy, |e| {
        matches!(e, BlockError::CoinbaseTooLarge { .. })
    });

    let tx = transfer(&generator, &state, 0, 1, 0);
    let mut misplaced = block_with(&generator, &state, vec![tx.clone()], 0);
    misplaced.transactions.swap(0, 1);
    let misplaced = gen::make_block(Some(&tip), tip.timestamp + 10, misplaced.transactions);
    assert_rejected(&mut state, &misplaced, |e| {
        *e == BlockError::CoinbaseNotFirst { tx_index: 1 }
    });

    let duplicated = block_with(&generator, &state, vec![tx.clone(), tx], 0);
    assert_rejected(&mut state, &duplicated, |e| {
        matches!(e, BlockError::DuplicateTransaction { .. })
    });

    let mut genesis_again = ChainGenerator::new(1, 4).genesis();
    assert_rejected(&mut state, &genesis_again, |e| {
        matches!(e, BlockError::UnknownParent { .. })
    });
    genesis_again.header = None;
    assert_rejected(&mut state, &genesis_again, |e| {
        matches!(e, BlockError::Header(_))
    });

    state.apply_block(&good).unwrap();
}

#[test]
fn malformed_outputs_are_rejected() {
    let (generator, mut state) = chain(1, 4, 0);
    let coin = native_coin(&generator, &state, 0);
    let owner = &generator.owners()[1];
    let cases: Vec<(pb::TxOutput, &str)> = vec![
        (
            pb::TxOutput {
                locking_conditions: vec![],
                ..gen::native_output(&owner.address, 1, build::single_key_lock(&owner.public_key))
            },
            "no locking conditions",
        ),
        (
            gen::native_output(&owner.address, 0, build::single_key_lock(&owner.public_key)),
            "zero amount",
        ),
        (
            pb::TxOutput {
                owner: vec![1; 3],
                ..gen::native_output(&owner.address, 1, build::single_key_lock(&owner.public_key))
            },
            "Address must be 20 bytes",
        ),
        (
            gen::native_output(
                &owner.address,
                1,
                build::multi_key_lock(2, &[owner.public_key]),
            ),
            "malformed multi-key m of n",
        ),
    ];
    for (output, message) in cases {
        let tx = signed_tx(&generator, &state, &[(coin.clone(), false)], vec![output]);
        let block = block_with(&generator, &state, vec![tx], 0);
        let error = assert_rejected(&mut state, &block, |e| {
            matches!(
                tx_error(e),
                TxError::Output {
                    output_index: 0,
                    ..
                }
            )
        });
        assert!(
            error.to_string().contains(message),
            "{error} should mention {message}"
        );
    }
}

#[test]
fn expired_state_is_readable_but_not_consumable() {
    let (generator, mut state) = chain(1, 4, 0);
    let owner = &generator.owners()[0];
    let lock = build::single_key_lock(&owner.public_key);
    let coin = native_coin(&generator, &state, 0);
    let output = gen::state_output(&owner.address, b"hello".to_vec(), 15, lock.clone());
    let tx = signed_tx(&generator, &state, &[(coin, false)], vec![output]);
    state
        .apply_block(&block_with(&generator, &state, vec![tx], 1_000_000))
        .unwrap();
    let record = single_key_utxo(&generator, &state, 0, UtxoCategory::State);
    let created = record.created_timestamp;
    assert_eq!(
        record.state_constraints().unwrap().expires_at_timestamp,
        created + 15
    );

    // One block later (t+10) it is live; two blocks later (t+20 > t+15) it is expired.
    state
        .apply_block(&block_with(&generator, &state, vec![], 0))
        .unwrap();
    assert_eq!(
        state.utxo(&outpoint(&record)).unwrap().status,
        pb::UtxoLifecycleStatus::Available as i32
    );
    let consume_late = signed_tx(&generator, &state, &[(record.clone(), false)], vec![]);
    let block = block_with(&generator, &state, vec![consume_late], 0);
    assert_rejected(&mut state, &block, |e| {
        *input_error(e)
            == InputError::StateExpired {
                expires_at_timestamp: created + 15,
                block_timestamp: created + 20,
            }
    });
    state
        .apply_block(&block_with(&generator, &state, vec![], 0))
        .unwrap();
    let expired = state.utxo(&outpoint(&record)).unwrap();
    assert_eq!(expired.status, pb::UtxoLifecycleStatus::Expired as i32);

    // Still referenceable.
    let coin = native_coin(&generator, &state, 1);
    let keep = gen::native_output(
        &generator.owners()[1].address,
        native_amount(&coin),
        build::single_key_lock(&generator.owners()[1].public_key),
    );
    let reader = signed_tx(
        &generator,
        &state,
        &[(coin, false), (expired, true)],
        vec![keep],
    );
    state
        .apply_block(&block_with(&generator, &state, vec![reader], 0))
        .unwrap();

    // Rolling back the block that expired it makes it available again.
    state.rollback_block().unwrap();
    state.rollback_block().unwrap();
    assert_eq!(
        state.utxo(&outpoint(&record)).unwrap().status,
        pb::UtxoLifecycleStatus::Available as i32
    );
    state.check_invariants().unwrap();
}

#[test]
fn referenced_resource_and_concurrency_limit_are_enforced_in_blocks() {
    let (generator, mut state) = chain(1, 4, 0);
    let resource = single_key_utxo(&generator, &state, 0, UtxoCategory::Resource);
    assert_eq!(
        resource
            .resource_constraints()
            .unwrap()
            .max_concurrent_references,
        2
    );
    let coins = [
        native_coins(&generator, &state, 1),
        native_coins(&generator, &state, 2),
    ]
    .concat();
    let referencing: Vec<pb::Transaction> = coins
        .iter()
        .take(3)
        .map(|coin| {
            signed_tx(
                &generator,
                &state,
                &[(coin.clone(), false), (resource.clone(), true)],
                vec![],
            )
        })
        .collect();
    state.admit(&referencing[0]).unwrap();
    state.admit(&referencing[1]).unwrap();

    // Consuming it while referenced: seed 001's exact message.
    let owner = &generator.owners()[3];
    let mut moved = resource.output().unwrap().clone();
    moved.owner = owner.address.0.to_vec();
    let consume = signed_tx(
        &generator,
        &state,
        &[(resource.clone(), false)],
        vec![moved],
    );
    let block = block_with(&generator, &state, vec![consume.clone()], 0);
    let error = assert_rejected(&mut state, &block, |e| {
        *input_error(e) == InputError::ResourceReferenced { count: 2 }
    });
    assert!(
        error
            .to_string()
            .contains("resource is being referenced by 2 transactions"),
        "{error}"
    );

    // A third, unadmitted reference finds no room.
    let block = block_with(&generator, &state, vec![referencing[2].clone()], 1_000_000);
    let error = assert_rejected(&mut state, &block, |e| {
        *input_error(e) == InputError::ConcurrentLimitExceeded { max: 2, current: 2 }
    });
    assert!(error
        .to_string()
        .contains("resource concurrent limit (2) exceeded, current: 2"));

    // Including both admitted transactions releases them; a consumer after them succeeds.
    let block = block_with(
        &generator,
        &state,
        vec![referencing[0].clone(), referencing[1].clone(), consume],
        2_000_000,
    );
    state.apply_block(&block).unwrap();
    assert!(state.references().is_empty());
    assert!(state.utxo(&outpoint(&resource)).is_none());
    state.check_invariants().unwrap();
}
