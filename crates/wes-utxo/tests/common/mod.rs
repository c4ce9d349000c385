//! Helpers shared by the integration tests: a chain built with the generator, and small
//! builders for hand-made transactions.
#![allow(dead_code, clippy::unwrap_used)]

use wes_utxo::gen::{self, ChainGenerator};
use wes_utxo::locking::build;
use wes_utxo::model::{self, OutPointKey};
use wes_utxo::pb;
use wes_utxo::{ChainParams, UtxoState};

/// A state with the generator's genesis applied, plus `n_blocks` generated blocks.
pub fn chain(seed: u64, n_owners: usize, n_blocks: usize) -> (ChainGenerator, UtxoState) {
    let mut generator = ChainGenerator::new(seed, n_owners);
    let mut state = UtxoState::new(ChainParams::default());
    state.apply_block(&generator.genesis()).unwrap();
    for _ in 0..n_blocks {
        let block = generator.next_block(&state, 8);
        state.apply_block(&block).unwrap();
    }
    (generator, state)
}

pub fn outpoint(utxo: &pb::Utxo) -> OutPointKey {
    OutPointKey::from_proto(utxo.outpoint.as_ref().unwrap()).unwrap()
}

/// The first live record of `owner_index` in `category` that is plainly single-key locked.
pub fn single_key_utxo(
    generator: &ChainGenerator,
    state: &UtxoState,
    owner_index: usize,
    category: pb::UtxoCategory,
) -> pb::Utxo {
    let owner = &generator.owners()[owner_index];
    let lock = build::single_key_lock(&owner.public_key);
    state
        .utxos_by_owner_and_category(&owner.address, category)
        .into_iter()
        .find(|utxo| utxo.output().unwrap().locking_conditions == vec![lock.clone()])
        .unwrap()
}

/// A signed transaction spending `spent` (inputs in that order, `reference_only` flags) into
/// `outputs`, valid for the block after the tip.
pub fn signed_tx(
    generator: &ChainGenerator,
    state: &UtxoState,
    spent: &[(pb::Utxo, bool)],
    outputs: Vec<pb::TxOutput>,
) -> pb::Transaction {
    let inputs = spent
        .iter()
        .map(|(utxo, reference)| gen::input(&outpoint(utxo), *reference))
        .collect();
    let mut transaction = pb::Transaction {
        version: 1,
        inputs,
        outputs,
        coinbase: None,
    };
    let tip = state.tip().unwrap();
    let records: Vec<pb::Utxo> = spent.iter().map(|(utxo, _)| utxo.clone()).collect();
    generator
        .sign(
            &mut transaction,
            &records,
            tip.height + 1,
            tip.timestamp + gen::BLOCK_INTERVAL_SECONDS,
        )
        .unwrap();
    transaction
}

/// A block on the tip with a coinbase paying the reward and `fees` to owner 0.
pub fn block_with(
    generator: &ChainGenerator,
    state: &UtxoState,
    transactions: Vec<pb::Transaction>,
    fees: u64,
) -> pb::Block {
    let tip = state.tip().unwrap();
    let owner = &generator.owners()[0];
    let reward = gen::native_output(
        &owner.address,
        state.params().block_reward + fees,
        build::single_key_lock(&owner.public_key),
    );
    let mut all = vec![gen::coinbase(tip.height + 1, vec![reward])];
    all.extend(transactions);
    gen::make_block(Some(&tip), tip.timestamp + gen::BLOCK_INTERVAL_SECONDS, all)
}

/// The native amount of an ASSET record.
pub fn native_amount(utxo: &pb::Utxo) -> u64 {
    match model::asset_amount(utxo.output().unwrap()).unwrap() {
        Some((wes_utxo::AssetId::Native, amount)) => amount,
        other => panic!("not native: {other:?}"),
    }
}
