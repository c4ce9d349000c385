//! The health monitor: what the client knows about the UTXO system, turned into a status.
//!
//! - **Unhealthy**: the breaker is open, the system rejected a block the repository holds
//!   (it will not catch up by itself), or the lag exceeds `unhealthy_lag`.
//! - **Degraded**: the breaker is half-open, the last call failed, the lag exceeds
//!   `degraded_lag`, or the queue is more than 3/4 full.
//! - **Healthy** otherwise.
//!
//! Lag is `repository length - UTXO length` in blocks: the pending notifications of the
//! outbox (see [`crate::repository`]).

use parking_lot::Mutex;

use crate::breaker::BreakerState;
use crate::metrics::{names, StatsSnapshot};
use crate::system::{chain_len, Tip};

/// Overall health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// In sync or catching up normally.
    Healthy,
    /// Working, with failures or lag.
    Degraded,
    /// Not catching up without help (or not for now: breaker open).
    Unhealthy,
}

/// GetSyncStatus: the client's view of the two tips and its own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStatus {
    /// Overall health (see the module docs).
    pub health: Health,
    /// The repository tip.
    pub repository_tip: Option<Tip>,
    /// The UTXO tip (as last read or reached).
    pub utxo_tip: Option<Tip>,
    /// Blocks in the repository not yet in the UTXO system.
    pub lag: u64,
    /// Events in the notification queue.
    pub queue_depth: usize,
    /// Capacity of the queue.
    pub queue_capacity: usize,
    /// The breaker's state.
    pub breaker: BreakerState,
    /// The last error of a call or sync, cleared by the next successful sync.
    pub last_error: Option<String>,
    /// The counters.
    pub stats: StatsSnapshot,
}

#[derive(Default)]
struct Known {
    utxo_tip: Option<Tip>,
    last_error: Option<String>,
    rejected: bool,
}

/// Thresholds and the last known facts (see the module docs).
pub struct HealthMonitor {
    known: Mutex<Known>,
    degraded_lag: u64,
    unhealthy_lag: u64,
}

impl HealthMonitor {
    /// A monitor with the lag thresholds.
    pub fn new(degraded_lag: u64, unhealthy_lag: u64) -> Self {
        Self {
            known: Mutex::new(Known::default()),
            degraded_lag,
            unhealthy_lag,
        }
    }

    /// Records the UTXO tip after a successful call.
    pub fn record_utxo_tip(&self, tip: Option<Tip>) {
        self.known.lock().utxo_tip = tip;
        metrics::gauge!(names::UTXO_TIP).set(chain_len(tip) as f64 - 1.0);
    }

    /// Records a successful sync.
    pub fn record_success(&self) {
        let mut known = self.known.lock();
        known.last_error = None;
        known.rejected = false;
    }

    /// Records a failed call (the sync may still succeed on a retry).
    pub fn record_call_error(&self, error: String) {
        self.known.lock().last_error = Some(error);
    }

    /// Records a failed sync (`rejected`: the system refused a block).
    pub fn record_error(&self, error: String, rejected: bool) {
        let mut known = self.known.lock();
        known.last_error = Some(error);
        known.rejected = rejected;
    }

    /// The last known UTXO tip.
    pub fn utxo_tip(&self) -> Option<Tip> {
        self.known.lock().utxo_tip
    }

    /// The status from the current facts.
    pub fn status(
        &self,
        repository_tip: Option<Tip>,
        breaker: BreakerState,
        queue_depth: usize,
        queue_capacity: usize,
        stats: StatsSnapshot,
    ) -> SyncStatus {
        let known = self.known.lock();
        let lag = chain_len(repository_tip).saturating_sub(chain_len(known.utxo_tip));
        metrics::gauge!(names::LAG).set(lag as f64);
        metrics::gauge!(names::REPOSITORY_TIP).set(chain_len(repository_tip) as f64 - 1.0);
        metrics::gauge!(names::QUEUE_DEPTH).set(queue_depth as f64);
        let health = if breaker == BreakerState::Open || known.rejected || lag > self.unhealthy_lag
        {
            Health::Unhealthy
        } else if breaker == BreakerState::HalfOpen
            || known.last_error.is_some()
            || lag > self.degraded_lag
            || queue_depth * 4 > queue_capacity * 3
        {
            Health::Degraded
        } else {
            Health::Healthy
        };
        SyncStatus {
            health,
            repository_tip,
            utxo_tip: known.utxo_tip,
            lag,
            queue_depth,
            queue_capacity,
            breaker,
            last_error: known.last_error.clone(),
            stats,
        }
    }
}
