//! Clocks read from the kernel's last tick (`CLOCK_MONOTONIC_COARSE`, `CLOCK_REALTIME_COARSE`):
//! up to a tick (1-4 ms) behind, and read in a few nanoseconds where `Instant::now` takes
//! 30-100 on a virtual machine (the TSC, scaled). For times read per request but compared in
//! seconds: a pooled connection's idle time, a kept file's last check, the `Date` header.
//! Durations that are reported (access logs, metrics, Server-Timing) keep `Instant`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// A point on the coarse monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CoarseInstant(Duration);

impl CoarseInstant {
    pub fn now() -> Self {
        Self(read(ClockId::CLOCK_MONOTONIC_COARSE))
    }

    /// Time since `self`, to a tick.
    pub fn elapsed(self) -> Duration {
        Self::now().0.saturating_sub(self.0)
    }
}

/// The wall clock, to a tick.
pub fn system_now() -> SystemTime {
    UNIX_EPOCH + read(ClockId::CLOCK_REALTIME_COARSE)
}

fn read(clock: ClockId) -> Duration {
    // Fails only for a clock the kernel does not have; both exist since Linux 2.6.32.
    clock_gettime(clock).map_or(Duration::ZERO, Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each coarse reading lies between a precise reading taken before it, less a tick, and
    /// one taken after it (preemption in between only widens the window).
    #[test]
    fn coarse_clocks_lag_the_precise_ones_by_at_most_a_tick() {
        // A tick is at most 10 ms (HZ=100); the rest is margin.
        let tick = Duration::from_millis(50);
        for _ in 0..1000 {
            let before = SystemTime::now();
            let coarse = system_now();
            let after = SystemTime::now();
            assert!(
                coarse <= after && coarse + tick >= before,
                "{coarse:?} {before:?}"
            );

            let before = read(ClockId::CLOCK_MONOTONIC);
            let coarse = CoarseInstant::now();
            let after = read(ClockId::CLOCK_MONOTONIC);
            assert!(
                coarse.0 <= after && coarse.0 + tick >= before,
                "{coarse:?} {before:?}"
            );
        }
        let start = CoarseInstant::now();
        std::thread::sleep(Duration::from_millis(100));
        assert!(start.elapsed() >= Duration::from_millis(100) - tick);
        assert!(CoarseInstant::now() >= start);
    }
}
