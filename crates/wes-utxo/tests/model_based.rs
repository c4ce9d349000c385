//! Model-based test: random block sequences with random rollbacks (reorgs onto different
//! forks) against an obviously correct reference model, a BTreeMap of outpoint -> output
//! rebuilt by replaying the applied blocks from genesis. Balances, utxos by owner, utxos by
//! owner and category, STATE expiry and account nonces must agree at every step.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use wes_utxo::gen::ChainGenerator;
use wes_utxo::model::{self, Address, AssetId, OutPointKey};
use wes_utxo::pb::{self, UtxoCategory};
use wes_utxo::{ChainParams, UtxoState};

/// The reference model: the live outputs and nonces after replaying `blocks`.
struct Model {
    outputs: BTreeMap<OutPointKey, (pb::TxOutput, u64)>,
    nonces: BTreeMap<Address, u64>,
    timestamp: u64,
}

fn replay(blocks: &[pb::Block]) -> Model {
    let mut model = Model {
        outputs: BTreeMap::new(),
        nonces: BTreeMap::new(),
        timestamp: 0,
    };
    for block in blocks {
        let timestamp = block.header.as_ref().unwrap().timestamp;
        model.timestamp = timestamp;
        for transaction in &block.transactions {
            let mut owners = BTreeSet::new();
            for input in transaction.inputs.iter().filter(|i| !i.is_reference_only) {
                let key = OutPointKey::from_proto(input.previous_output.as_ref().unwrap()).unwrap();
                let (output, _) = model.outputs.remove(&key).expect("replayed input exists");
                owners.insert(Address::from_slice(&output.owner).unwrap());
            }
            for owner in owners {
                *model.nonces.entry(owner).or_default() += 1;
            }
            let tx_id = model::tx_id(transaction);
            for (index, output) in transaction.outputs.iter().enumerate() {
                model.outputs.insert(
                    OutPointKey::new(tx_id, index as u32),
                    (output.clone(), timestamp),
                );
            }
        }
    }
    model
}

impl Model {
    fn balances(&self) -> BTreeMap<(Address, AssetId), u128> {
        let mut balances = BTreeMap::new();
        for (output, _) in self.outputs.values() {
            if let Some((asset, amount)) = model::asset_amount(output).unwrap() {
                *balances
                    .entry((Address::from_slice(&output.owner).unwrap(), asset))
                    .or_insert(0) += u128::from(amount);
            }
        }
        balances
    }

    fn by_owner(&self, owner: &Address, category: Option<UtxoCategory>) -> BTreeSet<OutPointKey> {
        self.outputs
            .iter()
            .filter(|(_, (output, _))| output.owner == owner.0)
            .filter(|(_, (output, _))| {
                category.is_none_or(|c| model::category_of(output).unwrap() == c)
            })
            .map(|(key, _)| *key)
            .collect()
    }

    fn expired(&self, key: &OutPointKey) -> bool {
        let (output, created) = &self.outputs[key];
        match &output.output_content {
            Some(pb::tx_output::OutputContent::State(state)) => {
                state.ttl_seconds > 0 && self.timestamp > created + state.ttl_seconds
            }
            _ => false,
        }
    }
}

fn keys(utxos: Vec<pb::Utxo>) -> BTreeSet<OutPointKey> {
    utxos
        .iter()
        .map(|u| OutPointKey::from_proto(u.outpoint.as_ref().unwrap()).unwrap())
        .collect()
}

fn check_agrees(
    state: &UtxoState,
    blocks: &[pb::Block],
    generator: &ChainGenerator,
) -> Result<(), TestCaseError> {
    state.check_invariants().map_err(TestCaseError::fail)?;
    let model = replay(blocks);
    prop_assert_eq!(state.len(), model.outputs.len());
    prop_assert_eq!(state.all_balances(), &model.balances());
    for owner in generator.owners() {
        let address = owner.address;
        prop_assert_eq!(
            keys(state.utxos_by_owner(&address)),
            model.by_owner(&address, None)
        );
        for category in [
            UtxoCategory::Asset,
            UtxoCategory::Resource,
            UtxoCategory::State,
        ] {
            prop_assert_eq!(
                keys(state.utxos_by_owner_and_category(&address, category)),
                model.by_owner(&address, Some(category))
            );
        }
        prop_assert_eq!(
            state.compute_account_nonce(&address),
            model.nonces.get(&address).copied().unwrap_or(0)
        );
    }
    for key in model.outputs.keys() {
        let record = state.utxo(key).unwrap();
        let expired = record.status == pb::UtxoLifecycleStatus::Expired as i32;
        prop_assert_eq!(expired, model.expired(key), "expiry of {}", key);
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    Apply(usize),
    Rollback(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![4 => (0..8usize).prop_map(Op::Apply), 1 => (1..4usize).prop_map(Op::Rollback)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn state_agrees_with_replay_model(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..40)) {
        let mut generator = ChainGenerator::new(seed, 5);
        let mut state = UtxoState::new(ChainParams::default());
        let genesis = generator.genesis();
        state.apply_block(&genesis).unwrap();
        let mut blocks = vec![genesis];
        check_agrees(&state, &blocks, &generator)?;
        for op in ops {
            match op {
                Op::Apply(n_transactions) => {
                    let block = generator.next_block(&state, n_transactions);
                    state.apply_block(&block).unwrap();
                    blocks.push(block);
                }
                Op::Rollback(depth) => {
                    for _ in 0..depth.min(blocks.len() - 1) {
                        let hash = state.rollback_block().unwrap();
                        let block = blocks.pop().unwrap();
                        prop_assert_eq!(hash, model::block_hash(block.header.as_ref().unwrap()));
                    }
                }
            }
            check_agrees(&state, &blocks, &generator)?;
        }
        // Rolling everything back and replaying gives the same snapshot hash.
        let snapshot = state.utxo_set();
        let mut replayed = UtxoState::new(ChainParams::default());
        for block in &blocks {
            replayed.apply_block(block).unwrap();
        }
        prop_assert_eq!(replayed.utxo_set(), snapshot);
    }
}
