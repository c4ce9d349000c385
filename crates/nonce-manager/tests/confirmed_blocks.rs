//! The confirmed-block listener: only blocks N deep, each once, in order, each the child
//! of the previous; shallow reorgs never show; a reorg deeper than N is reported and the
//! new chain emitted from the fork. On a scripted chain (every step checked) and on anvil
//! (`anvil_mine`, `anvil_reorg`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_network::Ethereum;
use alloy_primitives::{Address, B256};
use alloy_provider::{Provider, RootProvider};
use async_trait::async_trait;
use common::anvil::Anvil;
use nonce_manager::alloy_chain::AlloyChainClient;
use nonce_manager::blocks::{ConfirmedBlockListener, ListenerConfig, StableBlock, Tracker};
use nonce_manager::chain::{BlockRef, ChainClient, ChainError, ReceiptSummary, TxLookup};
use serde_json::{json, Value};

/// A chain held in memory: block `i` has a hash made of (`i`, the branch it was made on).
#[derive(Debug, Default)]
struct ScriptedChain {
    blocks: Mutex<Vec<BlockRef>>,
}

fn hash(number: u64, branch: u8) -> B256 {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&number.to_be_bytes());
    bytes[8] = branch;
    bytes[9] = 1;
    B256::from(bytes)
}

impl ScriptedChain {
    /// Appends `n` blocks made on `branch`.
    fn mine(&self, n: u64, branch: u8) {
        let mut blocks = self.blocks.lock().unwrap();
        for _ in 0..n {
            let number = blocks.len() as u64;
            let parent_hash = blocks.last().map_or(B256::ZERO, |parent| parent.hash);
            blocks.push(BlockRef {
                number,
                hash: hash(number, branch),
                parent_hash,
            });
        }
    }

    /// Replaces the top `depth` blocks by `depth + extra` blocks of `branch`.
    fn reorg(&self, depth: u64, extra: u64, branch: u8) {
        {
            let mut blocks = self.blocks.lock().unwrap();
            let keep = blocks.len() - depth as usize;
            blocks.truncate(keep);
        }
        self.mine(depth + extra, branch);
    }

    fn canonical(&self) -> Vec<BlockRef> {
        self.blocks.lock().unwrap().clone()
    }
}

fn unused() -> ChainError {
    ChainError::Transport("not scripted".to_owned())
}

#[async_trait]
impl ChainClient for ScriptedChain {
    async fn chain_id(&self) -> Result<u64, ChainError> {
        Err(unused())
    }
    async fn pending_nonce(&self, _address: Address) -> Result<u64, ChainError> {
        Err(unused())
    }
    async fn latest_nonce(&self, _address: Address) -> Result<u64, ChainError> {
        Err(unused())
    }
    async fn base_fee(&self) -> Result<Option<u128>, ChainError> {
        Err(unused())
    }
    async fn send_raw_transaction(&self, _raw: &[u8]) -> Result<B256, ChainError> {
        Err(unused())
    }
    async fn block_number(&self) -> Result<u64, ChainError> {
        let blocks = self.blocks.lock().unwrap();
        Ok(blocks.len().saturating_sub(1) as u64)
    }
    async fn transaction_lookup(&self, _hash: B256) -> Result<TxLookup, ChainError> {
        Err(unused())
    }
    async fn receipt(&self, _hash: B256) -> Result<Option<ReceiptSummary>, ChainError> {
        Err(unused())
    }
    async fn block(&self, number: u64) -> Result<Option<BlockRef>, ChainError> {
        Ok(self.blocks.lock().unwrap().get(number as usize).copied())
    }
}

fn confirmed(events: &[StableBlock]) -> Vec<BlockRef> {
    events
        .iter()
        .filter_map(|event| match event {
            StableBlock::Confirmed(block) => Some(*block),
            StableBlock::DeepReorg { .. } => None,
        })
        .collect()
}

fn config(confirmations: u64) -> ListenerConfig {
    ListenerConfig {
        confirmations,
        start: Some(0),
        history: 64,
        max_per_poll: 1_000,
        ..ListenerConfig::default()
    }
}

#[tokio::test]
async fn emits_only_blocks_n_deep_once_in_order() {
    let chain = ScriptedChain::default();
    let mut tracker = Tracker::new(config(3));
    chain.mine(2, 0); // head 1: nothing is 3 deep
    assert!(tracker.poll(&chain).await.unwrap().is_empty());
    chain.mine(1, 0); // head 2: block 0 is 3 deep
    let events = tracker.poll(&chain).await.unwrap();
    assert_eq!(confirmed(&events), chain.canonical()[..1].to_vec());
    assert!(
        tracker.poll(&chain).await.unwrap().is_empty(),
        "emitted twice"
    );
    chain.mine(5, 0); // head 7: blocks 1..=5
    let events = tracker.poll(&chain).await.unwrap();
    assert_eq!(confirmed(&events), chain.canonical()[1..6].to_vec());
}

#[tokio::test]
async fn a_reorg_shallower_than_n_never_shows() {
    let chain = ScriptedChain::default();
    let mut tracker = Tracker::new(config(4));
    chain.mine(10, 0); // head 9: blocks 0..=6 emitted
    let mut all = confirmed(&tracker.poll(&chain).await.unwrap());
    assert_eq!(all.len(), 7);
    chain.reorg(3, 1, 1); // blocks 7..=9 replaced, head 10
    all.extend(confirmed(&tracker.poll(&chain).await.unwrap()));
    chain.mine(6, 1);
    let events = tracker.poll(&chain).await.unwrap();
    assert!(events
        .iter()
        .all(|event| matches!(event, StableBlock::Confirmed(_))));
    all.extend(confirmed(&events));
    let canonical = chain.canonical();
    assert_eq!(
        all,
        canonical[..all.len()].to_vec(),
        "only canonical blocks"
    );
    assert_eq!(all.len(), canonical.len() - 3);
}

#[tokio::test]
async fn a_reorg_deeper_than_n_is_reported_and_the_new_chain_emitted_from_the_fork() {
    let chain = ScriptedChain::default();
    let mut tracker = Tracker::new(config(2));
    chain.mine(10, 0); // head 9: blocks 0..=8 emitted
    let first = confirmed(&tracker.poll(&chain).await.unwrap());
    assert_eq!(first.len(), 9);
    chain.reorg(5, 2, 1); // blocks 5..=9 replaced: 5..=8 were emitted
    let events = tracker.poll(&chain).await.unwrap();
    let StableBlock::DeepReorg {
        fork_height,
        orphaned,
    } = &events[0]
    else {
        panic!("expected a deep reorg first: {events:?}");
    };
    assert_eq!(*fork_height, 5);
    let mut expected_orphans = first[5..].to_vec();
    expected_orphans.reverse();
    assert_eq!(orphaned, &expected_orphans);
    let canonical = chain.canonical();
    assert_eq!(
        confirmed(&events[1..]),
        canonical[5..canonical.len() - 1].to_vec()
    );
    assert_eq!(tracker.next_height(), Some(canonical.len() as u64 - 1));
}

async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let provider = RootProvider::<Ethereum>::new_http(url.parse().unwrap());
    provider
        .raw_request::<_, Value>(method.to_owned().into(), params)
        .await
        .unwrap_or_else(|error| panic!("{method}: {error}"))
}

async fn next_confirmed(
    receiver: &mut tokio::sync::mpsc::Receiver<StableBlock>,
) -> Option<BlockRef> {
    match tokio::time::timeout(Duration::from_secs(30), receiver.recv()).await {
        Ok(Some(StableBlock::Confirmed(block))) => Some(block),
        Ok(Some(other)) => panic!("unexpected {other:?}"),
        Ok(None) | Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_anvil_a_shallow_reorg_leaves_the_stream_canonical() {
    let Some(anvil) = test_support::skip_unless_required(
        "on_anvil_a_shallow_reorg_leaves_the_stream_canonical",
        Anvil::start(None),
    ) else {
        return;
    };
    let url = anvil.url().to_owned();
    let chain: Arc<dyn ChainClient> = Arc::new(AlloyChainClient::new(&url).unwrap());
    rpc(&url, "anvil_mine", json!([10])).await; // head 10
    let (_listener, mut receiver) = ConfirmedBlockListener::spawn(
        chain.clone(),
        ListenerConfig {
            confirmations: 4,
            poll_interval: Duration::from_millis(20),
            start: Some(0),
            ..ListenerConfig::default()
        },
    );
    let mut stream = Vec::new();
    while stream.len() < 8 {
        stream.push(
            next_confirmed(&mut receiver)
                .await
                .expect("timed out waiting for confirmed blocks 0..=7"),
        );
    }
    // Replace the top 3 blocks (8..=10, not emitted yet), then grow the new chain.
    let before = chain.block(9).await.unwrap().unwrap();
    rpc(&url, "anvil_reorg", json!([3, []])).await;
    let after = chain.block(9).await.unwrap().unwrap();
    assert_ne!(before.hash, after.hash, "anvil_reorg replaced block 9");
    rpc(&url, "anvil_mine", json!([6])).await; // head 16: blocks up to 13 are 4 deep
    while stream.len() < 14 {
        stream.push(
            next_confirmed(&mut receiver)
                .await
                .expect("timed out waiting for confirmed blocks 8..=13"),
        );
    }
    for (height, block) in stream.iter().enumerate() {
        assert_eq!(block.number, height as u64);
        let canonical = chain.block(block.number).await.unwrap().unwrap();
        assert_eq!(block.hash, canonical.hash, "block {height} is canonical");
        if height > 0 {
            assert_eq!(block.parent_hash, stream[height - 1].hash);
        }
    }
}
