//! A log line for a limit that may trip in a flood: once per interval instead of once per
//! event, with the number of trips not logged in between. Used by the c2s admission caps
//! and the federation limits alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lets a limit that trips in a flood log once per interval rather than once per event:
/// `tick` says whether to log now and how many trips were not logged since.
pub struct LogThrottle {
    interval_ms: u64,
    epoch: std::time::Instant,
    /// Milliseconds since `epoch` of the last line, plus one (0: never logged).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval_ms: interval.as_millis().try_into().unwrap_or(u64::MAX),
            epoch: std::time::Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)`: log now (`suppressed` trips were not logged before this one).
    pub fn tick(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_logs_once_per_interval_and_counts_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(t.tick(), Some(0));
        assert_eq!(t.tick(), None);
        assert_eq!(t.tick(), None);
        let t = LogThrottle::new(Duration::ZERO);
        assert_eq!(t.tick(), Some(0));
        assert_eq!(t.tick(), Some(0));
    }
}
