//! A coarse monotonic clock, for bookkeeping measured in seconds: when a pooled connection
//! went idle, when a downstream connection's last stream ended, when a metric series was
//! last used.
//!
//! Why not `Instant::now()` there: it reads the TSC and scales it (18 ns per read on the
//! benchmark's VM), and a routed HTTP/2 request read it 9 times (2.5 % of the agent's
//! samples). `CLOCK_MONOTONIC_COARSE` is the kernel's time at its last tick (3.6 ns per
//! read), up to one tick (1-10 ms) behind. What needs precision (request durations,
//! deadlines, timers) keeps `Instant`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// A point of the coarse clock, in milliseconds since an arbitrary start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Coarse(u64);

impl Coarse {
    pub(crate) fn now() -> Self {
        // The clock exists since Linux 2.6.32 and reading it cannot fail there; a zero
        // would only make things look older.
        clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(Self(0), |t| {
            Self(t.tv_sec() as u64 * 1_000 + t.tv_nsec() as u64 / 1_000_000)
        })
    }

    /// Time since `self`, zero if `self` is later.
    pub(crate) fn elapsed(self) -> Duration {
        Self::now().since(self)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn since(self, earlier: Coarse) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// A [`Coarse`] shared between threads and updated in place.
#[derive(Debug)]
pub(crate) struct AtomicCoarse(AtomicU64);

impl AtomicCoarse {
    pub(crate) fn new(c: Coarse) -> Self {
        Self(AtomicU64::new(c.0))
    }

    pub(crate) fn load(&self) -> Coarse {
        Coarse(self.0.load(Ordering::Relaxed))
    }

    pub(crate) fn store(&self, c: Coarse) {
        self.0.store(c.0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_fine_clock_within_a_tick() {
        let fine = std::time::Instant::now();
        let coarse = Coarse::now();
        std::thread::sleep(Duration::from_millis(50));
        let (c, f) = (coarse.elapsed(), fine.elapsed());
        // Behind by at most a tick at either end (HZ of 100 at worst: 10 ms each).
        assert!(c <= f + Duration::from_millis(10), "{c:?} vs {f:?}");
        assert!(c + Duration::from_millis(20) >= f, "{c:?} vs {f:?}");
        assert_eq!(coarse.since(Coarse::now()), Duration::ZERO);
    }
}
