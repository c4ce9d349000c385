//! Crash safety: a child process (this test binary, re-run with `WES_STORE_CRASH_DIR`)
//! applies a pre-generated chain with a flush every 3 blocks, rolling back and re-applying
//! blocks now and then, and is killed with SIGKILL at random moments. After every kill the
//! store is reopened (replaying the log) and must equal a fresh in-memory replay from
//! genesis to the same height: same `utxo_set()` hash, same account nonces (so no block was
//! applied twice or lost from the state).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wes_utxo::gen::ChainGenerator;
use wes_utxo::{pb, UtxoState};

const ENV_DIR: &str = "WES_STORE_CRASH_DIR";
const N_BLOCKS: usize = 160;
const N_KILLS: usize = 5;

fn blocks_file(dir: &Path) -> PathBuf {
    dir.join("chain.bin")
}

fn read_blocks(dir: &Path) -> Vec<pb::Block> {
    let bytes = std::fs::read(blocks_file(dir)).unwrap();
    let mut slice = &bytes[..];
    let mut blocks = Vec::new();
    while !slice.is_empty() {
        blocks.push(pb::Block::decode_length_delimited(&mut slice).unwrap());
    }
    blocks
}

/// The child: catch up to the end of the chain, with reorgs that re-apply the same blocks.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let blocks = read_blocks(&dir);
    let mut store = common::open(&dir.join("store"), common::config(3, 64));
    let mut next = store.tip().map_or(0, |tip| tip.height as usize + 1);
    let mut n_applied = 0;
    while next < blocks.len() {
        store.apply_block(&blocks[next]).unwrap();
        next += 1;
        n_applied += 1;
        if n_applied % 5 == 0 && next > 4 {
            store.rollback_block().unwrap();
            store.rollback_block().unwrap();
            next -= 2;
        }
    }
    store.flush().unwrap();
}

#[test]
fn killed_at_random_points_recovers_exactly() {
    if std::env::var(ENV_DIR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The chain, and the reference state after every height.
    let mut generator = ChainGenerator::new(21, 16);
    let mut state = UtxoState::new(common::params());
    let mut file = std::fs::File::create(blocks_file(dir.path())).unwrap();
    let mut states = Vec::new();
    for _ in 0..N_BLOCKS {
        let block = generator.next_block(&state, 6);
        state.apply_block(&block).unwrap();
        file.write_all(&block.encode_length_delimited_to_vec())
            .unwrap();
        states.push(state.clone());
    }
    drop(file);

    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(99);
    let mut n_kills = 0;
    for _round in 0..N_KILLS + 1 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(ENV_DIR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = Duration::from_millis(rng.random_range(30..400));
        std::thread::sleep(kill_after);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL on unix
            n_kills += 1;
        }
        let status = child.wait().unwrap();
        let store = common::open(&dir.path().join("store"), common::config(3, 64));
        eprintln!(
            "killed after {kill_after:?}: tip {:?}, {:?}",
            store.tip().map(|tip| tip.height),
            store.recovery()
        );
        let Some(tip) = store.tip() else {
            continue;
        };
        let reference = &states[tip.height as usize];
        common::assert_same(&generator, reference, &store);
        if status.success() {
            assert_eq!(tip.height as usize, N_BLOCKS - 1);
        }
    }
    // Let the last run finish, then everything must be there.
    let status = Command::new(&exe)
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let store = common::open(&dir.path().join("store"), common::config(3, 64));
    assert_eq!(store.tip(), state.tip());
    common::assert_same(&generator, &state, &store);
    assert!(n_kills >= 1, "no child was killed mid-run");
}
