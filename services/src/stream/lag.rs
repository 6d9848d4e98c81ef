//! When a slow consumer has been conflated too often: it is behind for good
//! and is disconnected, so it reconnects (and resumes) instead of trailing
//! the market forever. One rule for gRPC `StreamRates`, the WebSocket and
//! SSE.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// How often a stream may fall behind (and be conflated) before it is
/// closed as a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimit {
    /// Lags allowed within `window`; the one that reaches this count closes
    /// the stream.
    pub max_lags: usize,
    /// The sliding window the lags are counted in.
    pub window: Duration,
}

impl Default for LagLimit {
    /// Five times a minute.
    fn default() -> Self {
        Self {
            max_lags: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Lags this close after the last one counted are the same stall: a stream
/// of several symbols that stops reading lags on every symbol at once, and
/// that is one reason to conflate, not one per symbol.
pub const LAG_DEBOUNCE: Duration = Duration::from_secs(1);

/// Why a stream is closed: it fell behind too often.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("slow consumer: fell behind {lags} times within {window:?}")]
pub struct SlowConsumer {
    /// Lags counted within the window, the last one included.
    pub lags: usize,
    /// The window they were counted in.
    pub window: Duration,
}

/// One stream's recent lags.
#[derive(Debug)]
pub struct LagCounter {
    limit: LagLimit,
    recent: VecDeque<Instant>,
}

impl LagCounter {
    /// A counter that allows `limit`.
    pub fn new(limit: LagLimit) -> Self {
        Self {
            limit,
            recent: VecDeque::new(),
        }
    }

    /// Records a lag now. Lags within [`LAG_DEBOUNCE`] of the last one
    /// counted are part of the same stall and not counted again.
    ///
    /// # Errors
    /// [`SlowConsumer`] when this lag reaches the limit within the window:
    /// the stream must be closed.
    pub fn lagged(&mut self) -> Result<(), SlowConsumer> {
        self.lagged_at(Instant::now())
    }

    fn lagged_at(&mut self, now: Instant) -> Result<(), SlowConsumer> {
        if self
            .recent
            .back()
            .is_some_and(|last| now.duration_since(*last) < LAG_DEBOUNCE)
        {
            return Ok(());
        }
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > self.limit.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.limit.max_lags {
            return Err(SlowConsumer {
                lags: self.recent.len(),
                window: self.limit.window,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For lags at these milliseconds after a start: `Ok` for each allowed,
    /// `Err(lags counted)` for one that closes the stream.
    fn outcomes(max_lags: usize, at_millis: &[u64]) -> Vec<Result<(), usize>> {
        let mut counter = LagCounter::new(LagLimit {
            max_lags,
            window: Duration::from_secs(60),
        });
        let start = Instant::now();
        at_millis
            .iter()
            .map(|ms| {
                let at = start + Duration::from_millis(*ms);
                counter.lagged_at(at).map_err(|slow| slow.lags)
            })
            .collect()
    }

    #[test]
    fn closes_on_the_lag_that_reaches_the_limit_within_the_window() {
        assert_eq!(outcomes(3, &[0, 1000, 2000]), [Ok(()), Ok(()), Err(3)]);
        assert_eq!(outcomes(1, &[0]), [Err(1)], "a limit of one closes at once");
        let slow = SlowConsumer {
            lags: 3,
            window: Duration::from_secs(60),
        };
        assert_eq!(
            slow.to_string(),
            "slow consumer: fell behind 3 times within 60s"
        );
    }

    #[test]
    fn one_stall_across_many_symbols_counts_once() {
        // Twenty symbols reporting the same stall within a second, then a
        // second stall.
        let mut at: Vec<u64> = (0..20).map(|i| i * 40).collect();
        at.push(1000);
        let mut expected = vec![Ok(()); 20];
        expected.push(Err(2));
        assert_eq!(outcomes(2, &at), expected);
    }

    #[test]
    fn the_debounce_runs_from_the_last_lag_counted() {
        // Each lag within a second of the one before, but the third a
        // second after the first counted: a new stall.
        assert_eq!(outcomes(2, &[0, 500, 1000]), [Ok(()), Ok(()), Err(2)]);
    }

    #[test]
    fn old_lags_fall_out_of_the_window() {
        assert_eq!(outcomes(2, &[0, 61_000, 62_000]), [Ok(()), Ok(()), Err(2)]);
    }
}
