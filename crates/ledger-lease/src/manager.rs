//! Keeps a lease alive in the background: renews every `renew_interval` (ttl/3 by default),
//! retries a failed renewal a bounded number of times with jittered exponential backoff, and
//! publishes the lease's state on a tokio watch channel so the holder stops writing the
//! moment the lease is lost, taken over, or about to expire unrenewed.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::error::LeaseError;
use crate::limits;
use crate::store::LeaseStore;
use crate::types::{check_ttl, HolderId, Lease, ResourceName};

/// How a [`LeaseManager`] renews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseManagerConfig {
    /// The TTL each renewal asks for.
    pub ttl: Duration,
    /// Time between successful renewals; ttl/3 by default, so two renewals can fail in a row
    /// before the lease is in danger.
    pub renew_interval: Duration,
    /// Retries after a failed renewal attempt before the lease is declared lost.
    pub renew_retries: usize,
    /// First backoff delay between retries; doubles up to `renew_interval`.
    pub retry_delay_min: Duration,
    /// The largest clock skew assumed between nodes. The manager declares the lease lost
    /// this long before `expires_at` if it has not renewed, so a node whose clock runs fast
    /// by less than this cannot take over while the holder still believes it holds.
    pub safety_margin: Duration,
}

impl LeaseManagerConfig {
    /// Defaults for `ttl`: renew at ttl/3, 3 retries from ttl/50, safety margin ttl/10.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_interval: ttl / 3,
            renew_retries: 3,
            retry_delay_min: (ttl / 50).max(Duration::from_millis(1)),
            safety_margin: ttl / 10,
        }
    }

    fn validate(&self) -> Result<(), LeaseError> {
        check_ttl(self.ttl)?;
        let invalid = |why: &str| Err(LeaseError::InvalidArgument(format!("{why}: {self:?}")));
        if self.renew_interval.is_zero() || self.retry_delay_min.is_zero() {
            return invalid("renew interval and retry delay must be positive");
        }
        if self.renew_interval + self.safety_margin >= self.ttl {
            return invalid("renew interval plus safety margin must be less than the ttl");
        }
        if self.renew_retries > limits::RENEW_RETRIES_MAX {
            return invalid("too many renew retries");
        }
        Ok(())
    }
}

/// What the holder may do right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Held, as of the last renewal.
    Held(Lease),
    /// Lost for good; stop writing. Acquire again for a new tenure.
    Lost(LossReason),
}

/// Why a managed lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// A renewal found the token no longer current: another holder took over.
    TakenOver,
    /// Every renewal attempt of a round failed (database errors or timeouts).
    RenewFailed,
    /// The lease came within `safety_margin` of expiry without a successful renewal.
    Expired,
    /// The holder released it.
    Released,
    /// The renewal task ended without reporting (it panicked or was aborted).
    Stopped,
}

/// Starts background renewal of leases.
#[derive(Debug)]
pub struct LeaseManager;

impl LeaseManager {
    /// Acquires `resource` for `holder` and keeps it alive; `None` when another holder has it.
    pub async fn acquire(
        store: Arc<dyn LeaseStore>,
        resource: &ResourceName,
        holder: &HolderId,
        config: LeaseManagerConfig,
    ) -> Result<Option<LeaseGuard>, LeaseError> {
        config.validate()?;
        match store.try_acquire(resource, holder, config.ttl).await? {
            Some(lease) => Self::spawn(store, lease, config).map(Some),
            None => Ok(None),
        }
    }

    /// Keeps an already acquired `lease` alive. Must be called within a tokio runtime.
    pub fn spawn(
        store: Arc<dyn LeaseStore>,
        lease: Lease,
        config: LeaseManagerConfig,
    ) -> Result<LeaseGuard, LeaseError> {
        config.validate()?;
        let (state_tx, state_rx) = watch::channel(LeaseState::Held(lease.clone()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep_alive(
            Arc::clone(&store),
            lease,
            config,
            state_tx,
            stop_rx,
        ));
        Ok(LeaseGuard {
            state: state_rx,
            stop: Some(stop_tx),
            task: Some(task),
            store,
        })
    }
}

/// A lease kept alive in the background. Dropping it stops renewal without releasing: the
/// lease then lapses after its TTL. Call [`LeaseGuard::release`] to hand it over at once.
#[derive(Debug)]
pub struct LeaseGuard {
    state: watch::Receiver<LeaseState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Lease>>,
    store: Arc<dyn LeaseStore>,
}

impl LeaseGuard {
    /// A receiver that sees every state change; writers `select!` on `changed()` to stop.
    pub fn subscribe(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// The state right now.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// The lease while held (its token is what fenced writes carry), `None` once lost.
    pub fn lease(&self) -> Option<Lease> {
        match &*self.state.borrow() {
            LeaseState::Held(lease) => Some(lease.clone()),
            LeaseState::Lost(_) => None,
        }
    }

    /// Waits until the lease is lost and says why.
    pub async fn lost(&self) -> LossReason {
        let mut state = self.state.clone();
        loop {
            if let LeaseState::Lost(reason) = &*state.borrow_and_update() {
                return *reason;
            }
            if state.changed().await.is_err() {
                return match &*state.borrow() {
                    LeaseState::Lost(reason) => *reason,
                    LeaseState::Held(_) => LossReason::Stopped,
                };
            }
        }
    }

    /// Stops renewing, tells subscribers the lease is gone, then releases it in the store.
    /// Returns false when it had already been lost.
    pub async fn release(mut self) -> Result<bool, LeaseError> {
        let last_held = self.lease();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let lease = match self.task.take() {
            Some(task) => task.await.ok().or(last_held),
            None => last_held,
        };
        match lease {
            Some(lease) => self.store.release(&lease).await,
            None => Ok(false),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The renewal task; returns the last lease it held, for release.
async fn keep_alive(
    store: Arc<dyn LeaseStore>,
    mut lease: Lease,
    config: LeaseManagerConfig,
    state: watch::Sender<LeaseState>,
    mut stop: oneshot::Receiver<()>,
) -> Lease {
    let clock = store.clock();
    loop {
        let deadline = lease.expires_at.saturating_sub(config.safety_margin);
        let wait = config.renew_interval.min(clock.now().until(deadline));
        tokio::select! {
            _ = &mut stop => {
                state.send_replace(LeaseState::Lost(LossReason::Released));
                return lease;
            }
            () = tokio::time::sleep(wait) => {}
        }
        match renew_round(&*store, &*clock, &lease, &config, &mut stop).await {
            Round::Renewed(renewed) => {
                debug_assert_eq!(renewed.token, lease.token);
                lease = renewed;
                state.send_replace(LeaseState::Held(lease.clone()));
            }
            Round::Lost(reason) => {
                tracing::warn!(resource = %lease.resource, token = %lease.token, ?reason, "lease lost");
                state.send_replace(LeaseState::Lost(reason));
                return lease;
            }
            Round::Stopped => {
                state.send_replace(LeaseState::Lost(LossReason::Released));
                return lease;
            }
        }
    }
}

enum Round {
    Renewed(Lease),
    Lost(LossReason),
    Stopped,
}

/// One renewal with bounded retries. Each attempt is cut off at the lease's deadline.
async fn renew_round(
    store: &dyn LeaseStore,
    clock: &dyn Clock,
    lease: &Lease,
    config: &LeaseManagerConfig,
    stop: &mut oneshot::Receiver<()>,
) -> Round {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(config.retry_delay_min)
        .with_max_delay(config.renew_interval)
        .with_max_times(config.renew_retries)
        .with_jitter()
        .build();
    let deadline = lease.expires_at.saturating_sub(config.safety_margin);
    loop {
        let now = clock.now();
        if now >= deadline {
            return Round::Lost(LossReason::Expired);
        }
        match tokio::time::timeout(now.until(deadline), store.renew(lease, config.ttl)).await {
            Ok(Ok(renewed)) => return Round::Renewed(renewed),
            Ok(Err(error)) if error.is_lost() => return Round::Lost(LossReason::TakenOver),
            Ok(Err(error)) => {
                tracing::warn!(resource = %lease.resource, %error, "lease renewal failed");
            }
            Err(_elapsed) => {
                tracing::warn!(resource = %lease.resource, "lease renewal timed out");
            }
        }
        let Some(delay) = delays.next() else {
            return Round::Lost(LossReason::RenewFailed);
        };
        tokio::select! {
            _ = &mut *stop => return Round::Stopped,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_renews_at_a_third() {
        let config = LeaseManagerConfig::new(Duration::from_secs(3));
        assert!(config.validate().is_ok());
        assert_eq!(config.renew_interval, Duration::from_secs(1));
    }

    #[test]
    fn config_limits() {
        let mut config = LeaseManagerConfig::new(Duration::from_secs(3));
        config.renew_interval = Duration::from_secs(3);
        assert!(config.validate().is_err());
        let mut config = LeaseManagerConfig::new(Duration::from_secs(3));
        config.renew_retries = limits::RENEW_RETRIES_MAX + 1;
        assert!(config.validate().is_err());
        assert!(LeaseManagerConfig::new(Duration::ZERO).validate().is_err());
    }
}
