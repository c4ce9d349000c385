//! The clock boundary: every expiry decision reads time through [`Clock`], so the system clock
//! runs in production and a [`ManualClock`] in tests.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::types::UnixMillis;

/// Wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> UnixMillis;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        // A clock before 1970 or after year 292 million is a broken host; clamp, don't panic.
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        UnixMillis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to; share it as `Arc<ManualClock>`.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: UnixMillis) -> Self {
        Self {
            now_ms: AtomicI64::new(start.0),
        }
    }

    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now_ms| {
                Some(now_ms.saturating_add(by_ms))
            });
    }

    /// Sets the clock to `now`, forwards or backwards.
    pub fn set(&self, now: UnixMillis) {
        self.now_ms.store(now.0, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// Starts at 2025-01-01T00:00:00Z, a fixed point so test output is reproducible.
    fn default() -> Self {
        Self::new(UnixMillis(1_735_689_600_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.now_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(UnixMillis(1_000));
        assert_eq!(clock.now(), UnixMillis(1_000));
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now(), UnixMillis(1_250));
        clock.set(UnixMillis(10));
        assert_eq!(clock.now(), UnixMillis(10));
        clock.set(UnixMillis(i64::MAX - 1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), UnixMillis(i64::MAX));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > UnixMillis(1_577_836_800_000));
    }
}
