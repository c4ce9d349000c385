//! The circuit breaker in front of the UTXO system: `failsafe`'s state machine (closed ->
//! open after `failure_threshold` consecutive transient failures; open -> half-open when the
//! cooldown has passed and a call asks for permission; half-open -> closed on a success, ->
//! open again with a doubled cooldown, up to `max_cooldown`, on a failure).
//!
//! **Why failsafe.** It is the established Rust breaker (a port of Finagle's failure
//! accrual), small (parking_lot, rand), with a consecutive-failures policy, exponential
//! cooldowns, and an `Instrument` hook for every transition, which is where the metrics and
//! the observable [`BreakerState`] come from. Its futures wrapper is not used: the client
//! decides which errors count ([`SystemError::is_transient`]: a rejected block is an answer,
//! not an outage) and adds a per-call timeout, so it drives `is_call_permitted` /
//! `on_success` / `on_error` itself. Half-open lets every call through until the first
//! result; the client's writes are serialized, so in practice one probe.
//!
//! The cooldowns are this crate's [`Cooldowns`] iterator, not `failsafe::backoff`, whose
//! constructors require whole seconds (they assert `start >= 1s`): tests and fast local
//! systems want cooldowns of milliseconds.
//!
//! The open -> half-open transition happens lazily, when a call asks for permission, so
//! [`Breaker::state`] reports `Open` until the first call after the cooldown.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};

use crate::config::BreakerConfig;
use crate::error::SystemError;
use crate::metrics::{names, Stats};

/// State of the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// The cooldown has passed; calls go through as probes.
    HalfOpen,
    /// Calls are refused without reaching the system.
    Open,
}

impl BreakerState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

/// Why a guarded call did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The breaker is open; the system was not called.
    Open,
    /// The system failed (or timed out).
    System(SystemError),
}

/// The cooldowns of successive openings: `cooldown`, doubled each time, capped at `max`
/// (failsafe restarts the sequence when the breaker closes).
#[derive(Clone, Debug)]
pub struct Cooldowns {
    next: Duration,
    max: Duration,
}

impl Cooldowns {
    /// Starts at `cooldown`, doubles up to `max`.
    pub fn new(cooldown: Duration, max: Duration) -> Self {
        Self {
            next: cooldown.min(max),
            max,
        }
    }
}

impl Iterator for Cooldowns {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = current.saturating_mul(2).min(self.max);
        Some(current)
    }
}

struct Probe {
    state: Arc<AtomicU8>,
    stats: Arc<Stats>,
}

impl Probe {
    fn set(&self, state: BreakerState, label: &'static str) {
        let code = state as u8;
        if self.state.swap(code, Ordering::SeqCst) == code {
            return;
        }
        let counter = match state {
            BreakerState::Closed => &self.stats.breaker_closed,
            BreakerState::HalfOpen => &self.stats.breaker_half_opened,
            BreakerState::Open => &self.stats.breaker_opened,
        };
        Stats::add(counter, 1);
        metrics::counter!(names::BREAKER_TRANSITIONS, "to" => label).increment(1);
        metrics::gauge!(names::BREAKER_STATE).set(f64::from(code));
        tracing::info!(to = label, "utxo client circuit breaker transition");
    }
}

impl Instrument for Probe {
    fn on_call_rejected(&self) {
        Stats::add(&self.stats.calls_rejected, 1);
        metrics::counter!(names::CALLS_REJECTED).increment(1);
    }

    fn on_open(&self) {
        self.set(BreakerState::Open, "open");
    }

    fn on_half_open(&self) {
        self.set(BreakerState::HalfOpen, "half_open");
    }

    fn on_closed(&self) {
        self.set(BreakerState::Closed, "closed");
    }
}

/// The breaker (see the module docs). Cloning shares the state.
#[derive(Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Cooldowns>, Probe>,
    state: Arc<AtomicU8>,
}

impl Breaker {
    /// A closed breaker with `config`, counting into `stats`.
    pub fn new(config: &BreakerConfig, stats: Arc<Stats>) -> Self {
        let state = Arc::new(AtomicU8::new(BreakerState::Closed as u8));
        let policy = consecutive_failures(
            config.failure_threshold,
            Cooldowns::new(config.cooldown, config.max_cooldown),
        );
        let probe = Probe {
            state: state.clone(),
            stats,
        };
        Self {
            machine: StateMachine::new(policy, probe),
            state,
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Runs `call` if the breaker permits, bounded by `timeout`, and records the outcome.
    pub async fn call<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, SystemError>>,
    ) -> Result<T, CallError> {
        if !self.machine.is_call_permitted() {
            return Err(CallError::Open);
        }
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(SystemError::Timeout(timeout)),
        };
        match &result {
            Err(error) if error.is_transient() => self.machine.on_error(),
            _ => self.machine.on_success(),
        }
        result.map_err(CallError::System)
    }
}
