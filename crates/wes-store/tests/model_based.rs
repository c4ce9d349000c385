//! The same generated chain, with rollbacks, applied to the in-memory `UtxoState` and to
//! the durable `ChainStore` gives identical answers to every query, before and after
//! flushes, after rollbacks (including of flushed blocks) and after reopening; under both
//! content policies (everything hot, and every RESOURCE/STATE cold).
#![allow(clippy::unwrap_used)]

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wes_store::StoreError;
use wes_utxo::gen::ChainGenerator;
use wes_utxo::UtxoState;

fn check(seed: u64, hot_output_max_bytes: usize) {
    check_with(seed, hot_output_max_bytes, None);
}

/// `clean_limit`: bound of the clean balance/nonce caches (None: the default).
fn check_with(seed: u64, hot_output_max_bytes: usize, clean_limit: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(3, hot_output_max_bytes);
    let mut generator = ChainGenerator::new(seed, 24);
    let mut state = UtxoState::new(common::params());
    let open = |config| {
        let mut store = common::open(dir.path(), config);
        if let Some(limit) = clean_limit {
            store.set_clean_limit(limit);
        }
        store
    };
    let mut store = open(config.clone());
    let mut rng = StdRng::seed_from_u64(seed);
    for step in 0..45 {
        if step > 3 && rng.random_range(0..6) == 0 {
            let depth = rng.random_range(1..=4);
            for _ in 0..depth {
                let expected = state.rollback_block().unwrap();
                assert_eq!(store.rollback_block().unwrap(), expected);
            }
        } else {
            let block = generator.next_block(&state, 8);
            let hash = state.apply_block(&block).unwrap();
            assert_eq!(store.apply_block(&block).unwrap(), hash);
        }
        if step % 5 == 0 {
            common::assert_same(&generator, &state, &store);
        }
        let (n_balances, n_nonces) = store.cache().n_clean();
        let limit = clean_limit.unwrap_or(wes_store::limits::CLEAN_ENTRIES_MAX);
        assert!(n_balances <= limit && n_nonces <= limit);
        if clean_limit.is_none() && (3..10).contains(&step) {
            // Filled when the cache takes in a finished flush (at the next apply).
            assert!(
                n_balances > 0 || store.cache().flush_in_flight(),
                "flushed balances stay cached"
            );
        }
        if step % 11 == 10 {
            drop(store);
            store = open(config.clone());
            common::assert_same(&generator, &state, &store);
        }
    }
    common::assert_same(&generator, &state, &store);
    // The undo window is the reference's: both refuse the same rollback.
    loop {
        match (state.rollback_block(), store.rollback_block()) {
            (Ok(expected), Ok(actual)) => assert_eq!(actual, expected),
            (Err(_), Err(StoreError::NothingToRollback { .. })) => break,
            (expected, actual) => panic!("reference {expected:?}, store {actual:?}"),
        }
    }
    common::assert_same(&generator, &state, &store);
    drop(store);
    let store = common::open(dir.path(), config);
    common::assert_same(&generator, &state, &store);
}

#[test]
fn hot_policy_matches_reference() {
    check(11, usize::MAX);
}

#[test]
fn cold_policy_matches_reference() {
    check(12, 0);
}

#[test]
fn clean_cache_disabled_matches_reference() {
    check_with(13, 1024, Some(0));
}

#[test]
fn clean_cache_evicting_matches_reference() {
    // A bound far below the number of owners: the caches are cleared again and again.
    check_with(14, 1024, Some(5));
}

#[test]
fn invalid_block_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = ChainGenerator::new(5, 8);
    let mut state = UtxoState::new(common::params());
    let mut store = common::open(dir.path(), common::config(2, 1024));
    for _ in 0..4 {
        let block = generator.next_block(&state, 6);
        state.apply_block(&block).unwrap();
        store.apply_block(&block).unwrap();
    }
    let mut block = generator.next_block(&state, 6);
    block.transactions.swap(0, 1);
    assert!(matches!(
        store.apply_block(&block),
        Err(StoreError::InvalidBlock(_))
    ));
    assert_eq!(store.repository().len().unwrap(), 4);
    common::assert_same(&generator, &state, &store);
}
