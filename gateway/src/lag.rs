//! When a slow consumer has been conflated too often: it is behind for good
//! and is disconnected, so it reconnects (and resumes) instead of trailing
//! the market forever.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// How often a WebSocket or SSE connection may fall behind (and be
/// conflated) before it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimit {
    /// Conflations allowed within `window`; the one that reaches this count
    /// closes the connection.
    pub max_lags: usize,
    /// The sliding window the conflations are counted in.
    pub window: Duration,
}

impl Default for LagLimit {
    /// Five times a minute, as gRPC `StreamRates`.
    fn default() -> Self {
        Self {
            max_lags: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// One connection's recent conflations.
#[derive(Debug)]
pub(crate) struct LagCounter {
    limit: LagLimit,
    recent: VecDeque<Instant>,
}

impl LagCounter {
    pub(crate) fn new(limit: LagLimit) -> Self {
        Self {
            limit,
            recent: VecDeque::new(),
        }
    }

    /// Records a conflation now; `Some(message)` when the connection must
    /// be closed.
    pub(crate) fn lagged(&mut self) -> Option<String> {
        let now = Instant::now();
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > self.limit.window)
        {
            self.recent.pop_front();
        }
        (self.recent.len() >= self.limit.max_lags).then(|| {
            format!(
                "slow consumer: fell behind {} times within {:?}; reconnect (resuming from the last sequence) to continue",
                self.recent.len(),
                self.limit.window
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_the_lag_that_reaches_the_limit_within_the_window() {
        let mut counter = LagCounter::new(LagLimit {
            max_lags: 3,
            window: Duration::from_secs(60),
        });
        assert_eq!(counter.lagged(), None);
        assert_eq!(counter.lagged(), None);
        let message = counter.lagged().expect("third lag closes");
        assert!(message.starts_with("slow consumer: fell behind 3 times within 60s"));
    }

    #[test]
    fn old_lags_fall_out_of_the_window() {
        let mut counter = LagCounter::new(LagLimit {
            max_lags: 2,
            window: Duration::ZERO,
        });
        // Each earlier lag is already outside a zero-length window.
        counter.lagged();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(counter.lagged(), None);
    }
}
