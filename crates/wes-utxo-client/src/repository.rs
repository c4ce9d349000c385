//! The block repository side: [`BlockSource`] wraps `wes_store::BlockRepository` with what the
//! client needs (tip as a [`Tip`], range reads) without changing it.
//!
//! **The repository is the outbox.** A block appended to the repository (synced, when the
//! repository is opened with `sync`) is a pending notification until the UTXO system's tip
//! reaches it: the pending set is exactly the heights between the UTXO tip and the
//! repository tip. So the block write and its notification are committed together by
//! construction, in one append, with no second table to keep in step. The queued event is
//! only a low-latency hint; if it is dropped (queue full, crash, restart) the sync
//! coordinator finds the gap and replays it from the repository.

use std::sync::Arc;

use wes_store::BlockRepository;
use wes_utxo::pb;

use crate::error::{ClientError, Result};
use crate::system::Tip;

/// The client's view of the block repository.
#[derive(Clone)]
pub struct BlockSource {
    repository: Arc<BlockRepository>,
}

impl BlockSource {
    /// Wraps `repository`.
    pub fn new(repository: Arc<BlockRepository>) -> Self {
        Self { repository }
    }

    /// The wrapped repository.
    pub fn repository(&self) -> &Arc<BlockRepository> {
        &self.repository
    }

    /// The repository tip.
    pub fn tip(&self) -> Result<Option<Tip>> {
        Ok(self
            .repository
            .tip()?
            .map(|(height, hash)| Tip { height, hash }))
    }

    /// Whether the repository holds `tip` (same hash at that height).
    pub fn holds(&self, tip: Tip) -> Result<bool> {
        Ok(self.repository.hash_at(tip.height)? == Some(tip.hash))
    }

    /// The blocks of heights `from..=to`, in order.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<pb::Block>> {
        (from..=to)
            .map(|height| self.repository.block_at(height).map_err(ClientError::from))
            .collect()
    }

    /// Appends `block` (durable on return when the repository syncs); its position.
    pub fn append(&self, block: &pb::Block) -> Result<Tip> {
        let height = block
            .header
            .as_ref()
            .map(|header| header.height)
            .ok_or_else(|| ClientError::Block("block without a header".to_string()))?;
        let hash = self.repository.append(block)?;
        Ok(Tip { height, hash })
    }
}
