//! The confirmed-block listener (seed 003, task 3.4): a stream of the chain's blocks that
//! are at least N confirmations deep, in height order, each once, so consumers never see a
//! block that a reorg of fewer than N blocks can take away.
//!
//! A block at height `h` has `head - h + 1` confirmations; the listener polls the head and
//! emits every height up to `head + 1 - N` it has not emitted yet, reading each block when
//! it emits it (so it is the canonical one at that moment). Each emitted block must be the
//! child of the previous one. When it is not, a reorg deeper than N replaced blocks already
//! emitted: the listener walks back through the blocks it remembers
//! ([`ListenerConfig::history`]) to the last one still canonical, emits
//! [`StableBlock::DeepReorg`] with the orphaned blocks, and continues from the fork on the
//! new chain. A reorg of fewer than N blocks never shows: those blocks were not emitted.
//!
//! Between the listener and its consumer is a bounded channel. When the consumer is slow
//! the listener waits, counting each wait in `nonce_manager_confirmed_blocks_backpressure_total`;
//! it emits at most [`ListenerConfig::max_per_poll`] blocks per poll, so catching up on a
//! long chain does not hold a burst of RPC calls. Chain errors are counted in
//! `nonce_manager_confirmed_block_poll_errors_total` and retried at the next poll.
//! `nonce_manager_confirmed_block_height` is the last emitted height and
//! `nonce_manager_deep_reorgs_total` counts reorgs deeper than N.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::chain::{BlockRef, ChainClient, ChainError};

/// What the listener emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StableBlock {
    /// The next block, N confirmations deep, child of the previous one emitted.
    Confirmed(BlockRef),
    /// A reorg deeper than N replaced blocks already emitted (newest first in `orphaned`);
    /// the blocks from `fork_height` on are emitted again from the new chain.
    DeepReorg {
        /// The lowest orphaned height: emission restarts there.
        fork_height: u64,
        /// The emitted blocks that are no longer canonical, newest first.
        orphaned: Vec<BlockRef>,
    },
}

/// How the listener runs.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Confirmations a block needs before it is emitted (at least 1: the head itself).
    pub confirmations: u64,
    /// How often the head is read.
    pub poll_interval: Duration,
    /// Capacity of the channel to the consumer.
    pub buffer: usize,
    /// First height to emit; `None`: the block that is N deep when the listener starts.
    pub start: Option<u64>,
    /// Emitted blocks remembered to find the fork of a deep reorg.
    pub history: usize,
    /// Blocks emitted per poll at most.
    pub max_per_poll: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            confirmations: 20,
            poll_interval: crate::limits::HEAD_POLL_INTERVAL,
            buffer: 1_024,
            start: None,
            history: 256,
            max_per_poll: 512,
        }
    }
}

/// The listener's state between polls (public so tests can drive it step by step).
#[derive(Debug)]
pub struct Tracker {
    config: ListenerConfig,
    next: Option<u64>,
    emitted: VecDeque<BlockRef>,
}

impl Tracker {
    /// A tracker that has emitted nothing yet.
    pub fn new(config: ListenerConfig) -> Self {
        Self {
            config,
            next: None,
            emitted: VecDeque::new(),
        }
    }

    /// The next height to emit, once known.
    pub fn next_height(&self) -> Option<u64> {
        self.next
    }

    /// One poll: reads the head and returns what became stable since the last poll.
    pub async fn poll(&mut self, chain: &dyn ChainClient) -> Result<Vec<StableBlock>, ChainError> {
        let depth = self.config.confirmations.max(1);
        let head = chain.block_number().await?;
        let Some(stable_tip) = (head + 1).checked_sub(depth) else {
            return Ok(Vec::new());
        };
        let mut height = match self.next {
            Some(next) => next,
            None => self.config.start.unwrap_or(stable_tip),
        };
        let mut events = Vec::new();
        let mut n_confirmed = 0;
        while height <= stable_tip && n_confirmed < self.config.max_per_poll {
            // None: the chain got shorter since the head was read (a reorg); next poll.
            let Some(block) = chain.block(height).await? else {
                break;
            };
            let continues = self.emitted.back().is_none_or(|last| {
                last.number + 1 == block.number && last.hash == block.parent_hash
            });
            if !continues {
                let orphaned = self.unwind(chain).await?;
                let Some(fork_height) = orphaned.last().map(|block| block.number) else {
                    // The last emitted block is still canonical: the chain moved between
                    // the two reads. Read again at the next poll.
                    break;
                };
                metrics::counter!("nonce_manager_deep_reorgs_total").increment(1);
                tracing::error!(
                    fork_height,
                    depth = orphaned.len(),
                    confirmations = depth,
                    "reorg deeper than the confirmation depth replaced emitted blocks"
                );
                events.push(StableBlock::DeepReorg {
                    fork_height,
                    orphaned,
                });
                height = fork_height;
                continue;
            }
            self.emitted.push_back(block);
            while self.emitted.len() > self.config.history.max(1) {
                self.emitted.pop_front();
            }
            events.push(StableBlock::Confirmed(block));
            n_confirmed += 1;
            height += 1;
        }
        self.next = Some(height);
        Ok(events)
    }

    /// Drops the remembered blocks that are no longer canonical; returns them newest first.
    async fn unwind(&mut self, chain: &dyn ChainClient) -> Result<Vec<BlockRef>, ChainError> {
        let mut orphaned = Vec::new();
        while let Some(last) = self.emitted.back().copied() {
            let canonical = chain.block(last.number).await?;
            if canonical.is_some_and(|block| block.hash == last.hash) {
                break;
            }
            orphaned.push(last);
            self.emitted.pop_back();
        }
        Ok(orphaned)
    }
}

/// A running listener; dropping it stops it.
#[derive(Debug)]
pub struct ConfirmedBlockListener {
    task: JoinHandle<()>,
}

impl ConfirmedBlockListener {
    /// Starts polling `chain`; the stable blocks arrive on the returned receiver. The task
    /// ends when the receiver is dropped or the listener is.
    pub fn spawn(
        chain: Arc<dyn ChainClient>,
        config: ListenerConfig,
    ) -> (Self, mpsc::Receiver<StableBlock>) {
        let (sender, receiver) = mpsc::channel(config.buffer.max(1));
        let poll_interval = config.poll_interval;
        let mut tracker = Tracker::new(config);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(poll_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let events = match tracker.poll(&*chain).await {
                    Ok(events) => events,
                    Err(error) => {
                        metrics::counter!("nonce_manager_confirmed_block_poll_errors_total")
                            .increment(1);
                        tracing::warn!(%error, "confirmed-block poll failed; retrying");
                        continue;
                    }
                };
                for event in events {
                    if let StableBlock::Confirmed(block) = &event {
                        metrics::gauge!("nonce_manager_confirmed_block_height")
                            .set(block.number as f64);
                    }
                    let event = match sender.try_send(event) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                        Err(mpsc::error::TrySendError::Full(event)) => event,
                    };
                    metrics::counter!("nonce_manager_confirmed_blocks_backpressure_total")
                        .increment(1);
                    if sender.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        (Self { task }, receiver)
    }
}

impl Drop for ConfirmedBlockListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
