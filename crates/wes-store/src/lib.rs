//! WES chain state, durable: the block repository (an append-only, CRC-checked log of
//! blocks), a UTXO store on redb, and a coins cache over it that applies blocks in memory
//! and flushes them in large atomic batches; after a crash the log is replayed from the
//! last flushed height. The chain rules are `wes_utxo`'s; this crate adds only storage.
//!
//! Module map:
//! - [`repository`]: [`BlockRepository`], blocks by height and hash, the log.
//! - [`store`]: [`UtxoStore`], the redb tables and the one-transaction flush.
//! - [`cache`]: [`CoinsCache`], the dirty map, apply/rollback, queries, content policy.
//! - [`chain`]: [`ChainStore`], the apply/rollback/open protocol over all three.
//! - [`codec`]: keys and records on disk.
//! - [`limits`]: bounds and the [`StoreConfig`].
//! - [`error`]: the [`StoreError`] enum.
//!
//! **Architecture Invariant:** the flushed state is always the state after exactly one
//! block of the log (or empty), and a block is in the log before any flush includes it.

pub mod cache;
pub mod chain;
pub mod codec;
pub mod error;
pub mod limits;
pub mod repository;
pub mod store;

pub use cache::{CoinsCache, FlushTotals, ResourceInfo, UtxoPage, UtxoPosition};
pub use chain::{ChainStore, Recovery};
pub use error::StoreError;
pub use limits::StoreConfig;
pub use repository::BlockRepository;
pub use store::UtxoStore;
