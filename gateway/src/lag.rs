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

/// Conflations this close together count as one (a stall lags every
/// subscribed symbol at once).
const DEBOUNCE: Duration = Duration::from_secs(1);

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
    /// be closed. Lags within [`DEBOUNCE`] of the last one counted are one
    /// stall: each symbol of a connection reports it separately.
    pub(crate) fn lagged(&mut self) -> Option<String> {
        let now = Instant::now();
        if self
            .recent
            .back()
            .is_some_and(|last| now.duration_since(*last) < DEBOUNCE)
        {
            return None;
        }
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

    fn counter(max_lags: usize) -> LagCounter {
        LagCounter::new(LagLimit {
            max_lags,
            window: Duration::from_secs(60),
        })
    }

    /// Pretends the lags counted so far happened `ago` earlier.
    fn age(counter: &mut LagCounter, ago: Duration) {
        for at in &mut counter.recent {
            *at -= ago;
        }
    }

    #[test]
    fn closes_on_the_lag_that_reaches_the_limit_within_the_window() {
        let mut counter = counter(3);
        assert_eq!(counter.lagged(), None);
        age(&mut counter, DEBOUNCE);
        assert_eq!(counter.lagged(), None);
        age(&mut counter, DEBOUNCE);
        let message = counter.lagged().expect("third lag closes");
        assert!(message.starts_with("slow consumer: fell behind 3 times within 60s"));
    }

    #[test]
    fn one_stall_across_many_symbols_counts_once() {
        let mut counter = counter(2);
        for _ in 0..20 {
            assert_eq!(counter.lagged(), None, "lags of one stall are one");
        }
    }

    #[test]
    fn old_lags_fall_out_of_the_window() {
        let mut counter = counter(2);
        assert_eq!(counter.lagged(), None);
        age(&mut counter, Duration::from_secs(61));
        assert_eq!(counter.lagged(), None, "the first lag is out of the window");
    }
}
