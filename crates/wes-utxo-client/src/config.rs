//! Every tunable of the client in one place, with the defaults and why.

use std::time::Duration;

use crate::error::{ClientError, Result};

/// Retry of transient UTXO system failures: exponential backoff with jitter, bounded.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Retries after the first attempt (so `max_retries + 1` attempts in all).
    pub max_retries: usize,
    /// Full jitter on every delay (spreads clients that failed together).
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
            max_retries: 5,
            jitter: true,
        }
    }
}

/// The circuit breaker in front of the UTXO system.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open the first time before it lets a probe through.
    pub cooldown: Duration,
    /// Cooldowns double while probes keep failing, up to this.
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(30),
        }
    }
}

/// The client's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// Capacity of the notification queue (events of (height, hash)).
    pub queue_capacity: usize,
    /// Longest a producer waits for room in a full queue before the notification is left to
    /// the sync coordinator (it is never lost: the block is in the repository).
    pub notify_timeout: Duration,
    /// Most blocks in one `apply_blocks` call.
    pub max_batch_blocks: usize,
    /// Longest the batch processor waits for more notifications to fill a batch.
    pub max_batch_delay: Duration,
    /// Timeout of one call to the UTXO system.
    pub call_timeout: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Breaker policy.
    pub breaker: BreakerConfig,
    /// Period of the sync coordinator's gap check (it also runs on start and when a
    /// notification could not be queued).
    pub sync_interval: Duration,
    /// Lag (blocks) above which the client reports itself degraded.
    pub degraded_lag: u64,
    /// Lag (blocks) above which the client reports itself unhealthy.
    pub unhealthy_lag: u64,
    /// Roll the UTXO system back when its tip is not in the repository (a reorg); when
    /// false, the divergence is only reported.
    pub rollback_on_divergence: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            notify_timeout: Duration::from_millis(10),
            max_batch_blocks: 256,
            max_batch_delay: Duration::from_millis(2),
            call_timeout: Duration::from_secs(5),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            sync_interval: Duration::from_secs(1),
            degraded_lag: 16,
            unhealthy_lag: 1_000,
            rollback_on_divergence: true,
        }
    }
}

impl ClientConfig {
    /// Checks the bounds the client relies on.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: &str| Err(ClientError::Config(what.to_string()));
        if self.queue_capacity == 0 {
            return fail("queue_capacity must be at least 1");
        }
        if self.max_batch_blocks == 0 {
            return fail("max_batch_blocks must be at least 1");
        }
        if self.call_timeout.is_zero() || self.sync_interval.is_zero() {
            return fail("call_timeout and sync_interval must be positive");
        }
        if self.breaker.failure_threshold == 0 {
            return fail("breaker.failure_threshold must be at least 1");
        }
        if self.breaker.cooldown > self.breaker.max_cooldown {
            return fail("breaker.cooldown must not exceed breaker.max_cooldown");
        }
        if self.retry.min_delay > self.retry.max_delay {
            return fail("retry.min_delay must not exceed retry.max_delay");
        }
        Ok(())
    }
}
