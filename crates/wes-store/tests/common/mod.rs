//! Helpers shared by the integration tests: stores with small flush thresholds, and a
//! comparison of every query between the in-memory reference state and the durable store.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use wes_store::{ChainStore, StoreConfig};
use wes_utxo::gen::ChainGenerator;
use wes_utxo::model::AssetId;
use wes_utxo::{pb, ChainParams, UtxoState};

pub fn params() -> ChainParams {
    ChainParams {
        max_undo_depth: 12,
        ..ChainParams::default()
    }
}

pub fn config(flush_every_blocks: u64, hot_output_max_bytes: usize) -> StoreConfig {
    StoreConfig {
        flush_every_blocks,
        flush_max_dirty: 200,
        sync_repository: true,
        hot_output_max_bytes,
    }
}

pub fn open(dir: &Path, config: StoreConfig) -> ChainStore {
    ChainStore::open(dir, params(), config).unwrap()
}

/// Every query of `store` answers as `state` does.
pub fn assert_same(generator: &ChainGenerator, state: &UtxoState, store: &ChainStore) {
    assert_eq!(store.tip(), state.tip(), "tip");
    let expected = state.utxo_set();
    let actual = store.utxo_set().unwrap();
    assert_eq!(actual.utxos.len(), expected.utxos.len(), "live set size");
    assert_eq!(actual, expected, "utxo set");
    for owner in generator.owners() {
        let address = &owner.address;
        assert_eq!(
            store.utxos_by_owner(address).unwrap(),
            state.utxos_by_owner(address),
            "utxos of {address}"
        );
        for category in [
            pb::UtxoCategory::Asset,
            pb::UtxoCategory::Resource,
            pb::UtxoCategory::State,
        ] {
            assert_eq!(
                store
                    .utxos_by_owner_and_category(address, category)
                    .unwrap(),
                state.utxos_by_owner_and_category(address, category),
            );
        }
        assert_eq!(store.balances(address).unwrap(), state.balances(address));
        assert_eq!(
            store.balance(address, &AssetId::Native).unwrap(),
            state.balance(address, &AssetId::Native)
        );
        assert_eq!(
            store.compute_account_nonce(address).unwrap(),
            state.compute_account_nonce(address)
        );
        for resource in store.resources_by_owner(address).unwrap() {
            let outpoint =
                wes_utxo::OutPointKey::from_proto(resource.utxo.outpoint.as_ref().unwrap())
                    .unwrap();
            assert_eq!(
                resource.reference_count,
                state.references().count(&outpoint)
            );
        }
    }
}
