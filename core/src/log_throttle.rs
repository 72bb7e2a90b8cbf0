//! Repeated warnings written at most once per interval, so a fault that fails every request
//! (a full disk, a backend outage) leaves a readable log rather than one line per request.
//! Every occurrence is still counted in a metric by the caller; the line says how many were
//! not written since the last one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning is written at most.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One warning's throttle.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_written: Option<Instant>,
    suppressed: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// Whether to write the line now; if so, how many occurrences were not written since the
    /// last line. The first occurrence is always written.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.last_written {
            Some(last) if now.duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last_written = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_first_then_once_per_interval_with_the_count_in_between() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow_at(start), Some(0));
        assert_eq!(throttle.allow_at(start + Duration::from_secs(1)), None);
        assert_eq!(throttle.allow_at(start + Duration::from_secs(9)), None);
        assert_eq!(throttle.allow_at(start + Duration::from_secs(10)), Some(2));
        assert_eq!(throttle.allow_at(start + Duration::from_secs(11)), None);
        assert_eq!(throttle.allow_at(start + Duration::from_secs(25)), Some(1));
    }
}
