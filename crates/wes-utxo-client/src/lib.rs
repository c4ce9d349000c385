//! The WES UTXO client (seed 000): the reliable bridge from the block repository to the UTXO
//! system. The repository appends a block and notifies; the client delivers the block to the
//! UTXO system asynchronously, in batches, through retry and a circuit breaker, and a sync
//! coordinator guarantees that every block in the repository reaches the UTXO system exactly
//! once, in order, whatever was lost on the way.
//!
//! **Outbox.** The repository's tip is the outbox: a block appended to the repository is a
//! pending notification until the UTXO tip reaches it, so the block write and its
//! notification are committed together in one append (see [`repository`]). The queue is
//! only a fast path; a full queue, a crash or a restart leaves a gap that the coordinator
//! replays from the repository, idempotently by height and hash.
//!
//! Module map:
//! - [`service`]: [`UtxoClientService`] (NotifyBlockAdded, ComputeAccountNonce,
//!   GetUTXOsByAddress, GetSyncStatus) and [`UtxoClient`], which runs the tasks.
//! - [`notifier`]: the bounded queue and the producers' timeout (backpressure).
//! - [`batch`]: the batch processor (coalescing consecutive blocks).
//! - [`coordinator`]: the serialized apply path and the gap-filling sync coordinator.
//! - [`breaker`]: the circuit breaker (failsafe) with observable state.
//! - [`health`]: the health monitor and [`SyncStatus`].
//! - [`system`]: the [`UtxoSystem`] trait and the in-process systems ([`StoreSystem`] on
//!   wes-store, [`MemorySystem`] on `wes_utxo::UtxoState`).
//! - [`fault`]: [`FaultySystem`], injected failures, stalls and recovery for tests.
//! - [`repository`]: [`BlockSource`] over `wes_store::BlockRepository`.
//! - [`metrics`]: metric names and the in-process counters.
//! - [`config`], [`error`].
//!
//! **Architecture Invariant:** one path applies blocks ([`coordinator`]'s applier, behind a
//! lock), it always starts from the UTXO system's own tip, and the system skips blocks it
//! has; so a block is applied at most once, and every repository block is eventually applied
//! while the system is up.

pub mod batch;
pub mod breaker;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod fault;
pub mod health;
pub mod metrics;
pub mod notifier;
pub mod repository;
pub mod service;
pub mod system;

pub use breaker::{Breaker, BreakerState, CallError, Cooldowns};
pub use config::{BreakerConfig, ClientConfig, RetryConfig};
pub use coordinator::SyncReport;
pub use error::{ClientError, Result, SystemError};
pub use fault::FaultySystem;
pub use health::{Health, HealthMonitor, SyncStatus};
pub use metrics::{Stats, StatsSnapshot};
pub use notifier::{Notifier, NotifyOutcome};
pub use repository::BlockSource;
pub use service::{UtxoClient, UtxoClientService};
pub use system::{MemorySystem, StoreSystem, Tip, UtxoSystem};
