//! Reconnect delays: exponential with full jitter (AWS architecture blog, "Exponential Backoff
//! And Jitter"), as Envoy's `JitteredExponentialBackOffStrategy` does for xDS streams.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// Reconnect backoff: the n-th retry waits a uniformly random time in
/// `[0, min(max, base * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Ceiling of every delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms base (Envoy's xDS stream uses 500 ms; a node agent should be back quickly after a
    /// control-plane restart), 30 s cap like Envoy.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling of retry `attempt` (0-based): `min(max, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random delay in `[0, ceiling(attempt)]` (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        // `RandomState` is seeded per process and per instance from the OS; good enough to spread
        // reconnecting nodes, and it spares a dependency on `rand`.
        let r = RandomState::new().hash_one(attempt);
        Duration::from_nanos(r % (nanos + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let ceilings: Vec<_> = (0..12).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_under_the_ceiling_and_vary() {
        let b = Backoff::default();
        let delays: Vec<_> = (0..64).map(|_| b.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "full jitter: delays differ"
        );
        let zero = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay(5), Duration::ZERO);
    }
}
