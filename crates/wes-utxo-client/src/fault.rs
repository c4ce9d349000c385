//! [`FaultySystem`]: a fault-injecting wrapper around any [`UtxoSystem`], for tests and
//! benchmarks of the client's reliability. It can fail the next N calls, fail N applies
//! *after* applying them (a lost answer: the retry must not apply twice), stall every call
//! for a duration, be down until recovered, and fail each call with probability `p` drawn
//! from a seeded RNG (reproducible runs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wes_utxo::model::Address;
use wes_utxo::pb;

use crate::error::SystemError;
use crate::system::{Tip, UtxoSystem};

/// A [`UtxoSystem`] with injected faults (see the module docs).
pub struct FaultySystem<S> {
    inner: S,
    fail_next: AtomicU64,
    fail_after_apply: AtomicU64,
    down: AtomicBool,
    stall: Mutex<Option<Duration>>,
    random: Mutex<(f64, StdRng)>,
    n_calls: AtomicU64,
    n_injected: AtomicU64,
}

impl<S: UtxoSystem> FaultySystem<S> {
    /// Wraps `inner` with no fault armed; `seed` seeds the probabilistic failures.
    pub fn new(inner: S, seed: u64) -> Self {
        Self {
            inner,
            fail_next: AtomicU64::new(0),
            fail_after_apply: AtomicU64::new(0),
            down: AtomicBool::new(false),
            stall: Mutex::new(None),
            random: Mutex::new((0.0, StdRng::seed_from_u64(seed))),
            n_calls: AtomicU64::new(0),
            n_injected: AtomicU64::new(0),
        }
    }

    /// The wrapped system.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Fails the next `n` calls (of any kind) with [`SystemError::Unavailable`].
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` `apply_blocks` calls apply their blocks, then report a failure.
    pub fn fail_after_apply(&self, n: u64) {
        self.fail_after_apply.store(n, Ordering::SeqCst);
    }

    /// Every call first sleeps `duration` (None: no stall).
    pub fn stall(&self, duration: Option<Duration>) {
        *self.stall.lock() = duration;
    }

    /// Every call fails until [`FaultySystem::recover`].
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// Each call fails with probability `p` (0 disables).
    pub fn fail_with_probability(&self, p: f64) {
        self.random.lock().0 = p.clamp(0.0, 1.0);
    }

    /// Disarms every fault.
    pub fn recover(&self) {
        self.fail_next.store(0, Ordering::SeqCst);
        self.fail_after_apply.store(0, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
        *self.stall.lock() = None;
        self.random.lock().0 = 0.0;
    }

    /// Calls received.
    pub fn n_calls(&self) -> u64 {
        self.n_calls.load(Ordering::SeqCst)
    }

    /// Failures injected.
    pub fn n_injected(&self) -> u64 {
        self.n_injected.load(Ordering::SeqCst)
    }

    fn take(counter: &AtomicU64) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn injected(&self, what: &str) -> SystemError {
        self.n_injected.fetch_add(1, Ordering::SeqCst);
        SystemError::Unavailable(format!("injected fault: {what}"))
    }

    /// Stall, then decide whether this call fails before reaching the system.
    async fn gate(&self) -> Result<(), SystemError> {
        self.n_calls.fetch_add(1, Ordering::SeqCst);
        let stall = *self.stall.lock();
        if let Some(duration) = stall {
            tokio::time::sleep(duration).await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(self.injected("down"));
        }
        if Self::take(&self.fail_next) {
            return Err(self.injected("fail next"));
        }
        let fails = {
            let mut random = self.random.lock();
            let p = random.0;
            p > 0.0 && random.1.random_bool(p)
        };
        if fails {
            return Err(self.injected("random"));
        }
        Ok(())
    }
}

impl<S: UtxoSystem> UtxoSystem for FaultySystem<S> {
    async fn tip(&self) -> Result<Option<Tip>, SystemError> {
        self.gate().await?;
        self.inner.tip().await
    }

    async fn apply_blocks(&self, blocks: Arc<[pb::Block]>) -> Result<Option<Tip>, SystemError> {
        self.gate().await?;
        let tip = self.inner.apply_blocks(blocks).await?;
        if Self::take(&self.fail_after_apply) {
            return Err(self.injected("answer lost after apply"));
        }
        Ok(tip)
    }

    async fn rollback_block(&self) -> Result<Option<Tip>, SystemError> {
        self.gate().await?;
        self.inner.rollback_block().await
    }

    async fn utxos_by_address(&self, address: Address) -> Result<Vec<pb::Utxo>, SystemError> {
        self.gate().await?;
        self.inner.utxos_by_address(address).await
    }

    async fn account_nonce(&self, address: Address) -> Result<u64, SystemError> {
        self.gate().await?;
        self.inner.account_nonce(address).await
    }
}
