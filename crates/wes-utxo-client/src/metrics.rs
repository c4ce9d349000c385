//! Metrics of every component, twice: through the `metrics` facade (names below, exported by
//! whatever recorder the process installs, e.g. Prometheus) and as in-process atomic counters
//! ([`Stats`]) that [`crate::SyncStatus`] carries and tests assert on.
//!
//! Names (all prefixed `wes_utxo_client_`):
//! - `notifications_total` (counter), `notifications_deferred_total` (counter: queue full past
//!   the notify timeout, left to the coordinator), `queue_backpressure_total` (counter: a
//!   producer found the queue full and waited), `queue_depth` (gauge);
//! - `batches_total{source=notifier|coordinator}`, `batch_blocks` (histogram),
//!   `blocks_applied_total`, `apply_seconds` (histogram, one `apply_blocks` call),
//!   `stale_notifications_total` (an event whose hash the repository no longer holds);
//! - `retries_total`, `call_errors_total{kind}`, `calls_rejected_total` (breaker open),
//!   `breaker_transitions_total{to}`, `breaker_state` (gauge: 0 closed, 1 half-open, 2 open);
//! - `rollbacks_total`, `coordinator_runs_total`, `lag_blocks` (gauge), `repository_tip`,
//!   `utxo_tip` (gauges).

use std::sync::atomic::{AtomicU64, Ordering};

/// Metric names.
pub mod names {
    /// Notifications accepted.
    pub const NOTIFICATIONS: &str = "wes_utxo_client_notifications_total";
    /// Notifications left to the coordinator.
    pub const DEFERRED: &str = "wes_utxo_client_notifications_deferred_total";
    /// Producers that waited on a full queue.
    pub const BACKPRESSURE: &str = "wes_utxo_client_queue_backpressure_total";
    /// Events in the queue.
    pub const QUEUE_DEPTH: &str = "wes_utxo_client_queue_depth";
    /// Batches applied.
    pub const BATCHES: &str = "wes_utxo_client_batches_total";
    /// Blocks per batch.
    pub const BATCH_BLOCKS: &str = "wes_utxo_client_batch_blocks";
    /// Blocks applied.
    pub const BLOCKS_APPLIED: &str = "wes_utxo_client_blocks_applied_total";
    /// Latency of one apply call.
    pub const APPLY_SECONDS: &str = "wes_utxo_client_apply_seconds";
    /// Events whose block left the repository.
    pub const STALE: &str = "wes_utxo_client_stale_notifications_total";
    /// Retries.
    pub const RETRIES: &str = "wes_utxo_client_retries_total";
    /// Failed calls by kind.
    pub const CALL_ERRORS: &str = "wes_utxo_client_call_errors_total";
    /// Calls refused by the open breaker.
    pub const CALLS_REJECTED: &str = "wes_utxo_client_calls_rejected_total";
    /// Breaker transitions by target state.
    pub const BREAKER_TRANSITIONS: &str = "wes_utxo_client_breaker_transitions_total";
    /// Breaker state.
    pub const BREAKER_STATE: &str = "wes_utxo_client_breaker_state";
    /// Blocks rolled back in the UTXO system.
    pub const ROLLBACKS: &str = "wes_utxo_client_rollbacks_total";
    /// Coordinator runs.
    pub const COORDINATOR_RUNS: &str = "wes_utxo_client_coordinator_runs_total";
    /// Repository tip height minus UTXO tip height.
    pub const LAG: &str = "wes_utxo_client_lag_blocks";
    /// Repository tip height.
    pub const REPOSITORY_TIP: &str = "wes_utxo_client_repository_tip";
    /// UTXO tip height.
    pub const UTXO_TIP: &str = "wes_utxo_client_utxo_tip";
}

/// In-process counters (see the module docs).
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) notifications: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) backpressure: AtomicU64,
    pub(crate) batches_notifier: AtomicU64,
    pub(crate) batches_coordinator: AtomicU64,
    pub(crate) blocks_notifier: AtomicU64,
    pub(crate) blocks_coordinator: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) call_errors: AtomicU64,
    pub(crate) calls_rejected: AtomicU64,
    pub(crate) breaker_opened: AtomicU64,
    pub(crate) breaker_half_opened: AtomicU64,
    pub(crate) breaker_closed: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
    pub(crate) coordinator_runs: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Notifications accepted into the queue.
    pub notifications: u64,
    /// Notifications not queued (queue full past the timeout); the coordinator covers them.
    pub deferred: u64,
    /// Producers that found the queue full and waited.
    pub backpressure: u64,
    /// Batches applied for notifications.
    pub batches_notifier: u64,
    /// Batches applied by the sync coordinator (gap fill).
    pub batches_coordinator: u64,
    /// Blocks applied for notifications.
    pub blocks_notifier: u64,
    /// Blocks applied by the sync coordinator.
    pub blocks_coordinator: u64,
    /// Notifications of blocks the repository no longer holds.
    pub stale: u64,
    /// Retries of failed calls.
    pub retries: u64,
    /// Calls that failed (any kind).
    pub call_errors: u64,
    /// Calls refused by the open breaker.
    pub calls_rejected: u64,
    /// Transitions to open.
    pub breaker_opened: u64,
    /// Transitions to half-open.
    pub breaker_half_opened: u64,
    /// Transitions back to closed.
    pub breaker_closed: u64,
    /// Blocks rolled back in the UTXO system (reorgs).
    pub rollbacks: u64,
    /// Sync coordinator runs.
    pub coordinator_runs: u64,
}

impl Stats {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            notifications: get(&self.notifications),
            deferred: get(&self.deferred),
            backpressure: get(&self.backpressure),
            batches_notifier: get(&self.batches_notifier),
            batches_coordinator: get(&self.batches_coordinator),
            blocks_notifier: get(&self.blocks_notifier),
            blocks_coordinator: get(&self.blocks_coordinator),
            stale: get(&self.stale),
            retries: get(&self.retries),
            call_errors: get(&self.call_errors),
            calls_rejected: get(&self.calls_rejected),
            breaker_opened: get(&self.breaker_opened),
            breaker_half_opened: get(&self.breaker_half_opened),
            breaker_closed: get(&self.breaker_closed),
            rollbacks: get(&self.rollbacks),
            coordinator_runs: get(&self.coordinator_runs),
        }
    }
}
