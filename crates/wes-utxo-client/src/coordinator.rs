//! The sync coordinator and the one path every block takes into the UTXO system.
//!
//! [`Applier::sync_to`] brings the UTXO system up to a target height of the repository:
//! 1. read the UTXO tip; while the repository does not hold it (a reorg truncated the
//!    repository), roll the UTXO system back one block (or report, if rollback is disabled);
//! 2. read the missing blocks `utxo tip + 1 ..= target` from the repository and apply them
//!    in order, in batches of at most `max_batch_blocks`.
//!
//! Every call goes through the breaker (with the call timeout) and, when it fails
//! transiently, is retried with `backon`'s exponential backoff with jitter, a bounded number
//! of times; an open breaker fails fast and is not retried (the next run comes soon).
//! Syncs are serialized by a lock, so the batch processor and the coordinator never apply
//! concurrently; and since both start from the UTXO system's own tip and the system skips
//! blocks it already has (same height and hash), a block is never applied twice.
//!
//! [`SyncCoordinator`] runs `sync_to(repository tip)` on start, every `sync_interval`, and
//! when the notifier could not queue an event: it fills every gap the queue left (dropped
//! events, a restart over a repository that grew meanwhile, failures past the retries).

use std::sync::Arc;
use std::time::Instant;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{watch, Notify};
use wes_utxo::pb;

use crate::breaker::{Breaker, CallError};
use crate::config::ClientConfig;
use crate::error::{ClientError, Result, SystemError};
use crate::health::HealthMonitor;
use crate::metrics::{names, Stats};
use crate::repository::BlockSource;
use crate::system::{chain_len, Tip, UtxoSystem};

/// Who asked for a sync (for the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Notifier,
    Coordinator,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Notifier => "notifier",
            Source::Coordinator => "coordinator",
        }
    }
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Blocks rolled back in the UTXO system.
    pub rolled_back: u64,
    /// Blocks sent in batches (the system skips any it already had).
    pub applied: u64,
    /// Batches sent.
    pub batches: u64,
    /// The UTXO tip afterwards.
    pub utxo_tip: Option<Tip>,
}

/// The serialized path into the UTXO system (see the module docs).
pub(crate) struct Applier<S> {
    pub(crate) system: Arc<S>,
    pub(crate) source: BlockSource,
    pub(crate) breaker: Breaker,
    pub(crate) config: ClientConfig,
    pub(crate) stats: Arc<Stats>,
    pub(crate) health: Arc<HealthMonitor>,
    lock: tokio::sync::Mutex<()>,
}

fn call_error(error: CallError) -> ClientError {
    match error {
        CallError::Open => ClientError::BreakerOpen,
        CallError::System(error) => ClientError::System(error),
    }
}

impl<S: UtxoSystem> Applier<S> {
    pub(crate) fn new(
        system: Arc<S>,
        source: BlockSource,
        config: ClientConfig,
        stats: Arc<Stats>,
        health: Arc<HealthMonitor>,
    ) -> Self {
        let breaker = Breaker::new(&config.breaker, stats.clone());
        Self {
            system,
            source,
            breaker,
            config,
            stats,
            health,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        let retry = &self.config.retry;
        let builder = ExponentialBuilder::default()
            .with_min_delay(retry.min_delay)
            .with_max_delay(retry.max_delay)
            .with_max_times(retry.max_retries);
        if retry.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// One guarded call, without retry (queries).
    pub(crate) async fn call_once<T, F>(&self, call: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, SystemError>>,
    {
        let result = self.breaker.call(self.config.call_timeout, call).await;
        if let Err(CallError::System(error)) = &result {
            self.count_error(error);
        }
        result.map_err(call_error)
    }

    fn count_error(&self, error: &SystemError) {
        let kind = match error {
            SystemError::Unavailable(_) => "unavailable",
            SystemError::Timeout(_) => "timeout",
            SystemError::Rejected(_) => "rejected",
        };
        self.health.record_call_error(error.to_string());
        Stats::add(&self.stats.call_errors, 1);
        metrics::counter!(names::CALL_ERRORS, "kind" => kind).increment(1);
    }

    /// A guarded call retried while it fails transiently.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, SystemError>>,
    {
        (|| self.breaker.call(self.config.call_timeout, call()))
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(|error| matches!(error, CallError::System(error) if error.is_transient()))
            .notify(|error, delay| {
                if let CallError::System(error) = error {
                    self.count_error(error);
                }
                Stats::add(&self.stats.retries, 1);
                metrics::counter!(names::RETRIES).increment(1);
                tracing::debug!(?error, ?delay, "retrying utxo system call");
            })
            .await
            .map_err(|error| {
                if let CallError::System(error) = &error {
                    self.count_error(error);
                }
                call_error(error)
            })
    }

    /// Brings the UTXO system up to `target` (capped at the repository tip); see the module
    /// docs. Records the outcome in the health monitor.
    pub(crate) async fn sync_to(&self, target: u64, source: Source) -> Result<SyncReport> {
        let _serial = self.lock.lock().await;
        let result = self.sync_locked(target, source).await;
        match &result {
            Ok(report) => {
                self.health.record_utxo_tip(report.utxo_tip);
                self.health.record_success();
            }
            Err(error) => {
                let rejected = matches!(
                    error,
                    ClientError::System(SystemError::Rejected(_)) | ClientError::Diverged { .. }
                );
                tracing::warn!(%error, "utxo sync failed");
                self.health.record_error(error.to_string(), rejected);
            }
        }
        result
    }

    async fn sync_locked(&self, target: u64, source: Source) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let system = &self.system;
        let mut tip = self.call(|| system.tip()).await?;
        self.health.record_utxo_tip(tip);
        while let Some(utxo_tip) = tip {
            if self.source.holds(utxo_tip)? {
                break;
            }
            if !self.config.rollback_on_divergence {
                return Err(ClientError::Diverged {
                    height: utxo_tip.height,
                    utxo_hash: utxo_tip.hash,
                });
            }
            tip = self.call(|| system.rollback_block()).await?;
            self.health.record_utxo_tip(tip);
            report.rolled_back += 1;
            Stats::add(&self.stats.rollbacks, 1);
            metrics::counter!(names::ROLLBACKS).increment(1);
        }
        let Some(repository_tip) = self.source.tip()? else {
            report.utxo_tip = tip;
            return Ok(report);
        };
        let target = target.min(repository_tip.height);
        let mut next = chain_len(tip);
        let max_batch = self.config.max_batch_blocks as u64;
        while next <= target {
            let end = target.min(next.saturating_add(max_batch - 1));
            let blocks: Arc<[pb::Block]> = self.source.read_range(next, end)?.into();
            let n = blocks.len() as u64;
            let started = Instant::now();
            tip = self.call(|| system.apply_blocks(blocks.clone())).await?;
            metrics::histogram!(names::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(names::BATCH_BLOCKS).record(n as f64);
            metrics::counter!(names::BATCHES, "source" => source.label()).increment(1);
            metrics::counter!(names::BLOCKS_APPLIED).increment(n);
            let (batches, blocks_counter) = match source {
                Source::Notifier => (&self.stats.batches_notifier, &self.stats.blocks_notifier),
                Source::Coordinator => (
                    &self.stats.batches_coordinator,
                    &self.stats.blocks_coordinator,
                ),
            };
            Stats::add(batches, 1);
            Stats::add(blocks_counter, n);
            report.batches += 1;
            report.applied += n;
            self.health.record_utxo_tip(tip);
            if chain_len(tip) <= end {
                return Err(ClientError::NoProgress {
                    expected: end,
                    got: tip.map(|tip| tip.height),
                });
            }
            next = end + 1;
        }
        report.utxo_tip = tip;
        Ok(report)
    }
}

/// The periodic gap check (see the module docs).
pub(crate) struct SyncCoordinator<S> {
    pub(crate) applier: Arc<Applier<S>>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl<S: UtxoSystem> SyncCoordinator<S> {
    pub(crate) async fn run(mut self) {
        let mut interval = tokio::time::interval(self.applier.config.sync_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = interval.tick() => {}
                _ = self.wake.notified() => {}
            }
            if *self.shutdown.borrow() {
                break;
            }
            Stats::add(&self.applier.stats.coordinator_runs, 1);
            metrics::counter!(names::COORDINATOR_RUNS).increment(1);
            // Errors are recorded in the health monitor; the next run tries again.
            let _ = self.applier.sync_to(u64::MAX, Source::Coordinator).await;
        }
    }
}
