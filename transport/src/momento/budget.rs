//! The operations-per-second budget of one process.
//!
//! Momento limits the operations an account makes per second and answers
//! `RESOURCE_EXHAUSTED` (`operations_rate_limit_exceeded`) beyond it. With
//! [`MomentoConfig::max_ops_per_second`](super::MomentoConfig) set, every
//! publish, cache call and subscribe waits for its turn instead: a second's
//! worth may go at once, then one every `1/rate` seconds (a generic cell
//! rate algorithm, the same shape as the service's own limit, so a budget at
//! or below the account's limit is never refused).
//!
//! Hand-written rather than taken from `governor`: waiting for a slot is a
//! dozen lines here against eight more crates.

use std::{num::NonZeroU32, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// How much of a second's allowance may be spent at once. Below a full
/// second, so requests that arrive bunched together at the service still
/// fit its window.
const BURST: Duration = Duration::from_millis(900);

/// Paces operations to at most `rate` per second. Shared by every task of
/// a transport.
#[derive(Debug)]
pub(super) struct Budget {
    every: Duration,
    // When the allowance is next full again (the theoretical arrival time);
    // a std mutex, held only to read and move it, never across an `.await`.
    due: Mutex<Option<Instant>>,
}

impl Budget {
    pub(super) fn new(rate: NonZeroU32) -> Self {
        Self {
            every: Duration::from_secs(1) / rate.get(),
            due: Mutex::new(None),
        }
    }

    /// Waits until one more operation fits the budget and claims it. Turns
    /// are claimed in call order.
    pub(super) async fn take(&self) {
        let start_at = {
            let now = Instant::now();
            let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
            let at = due.map_or(now, |at| at.max(now)) + self.every;
            *due = Some(at);
            // Within the burst: go now; beyond it: when it is back within.
            at.checked_sub(BURST).filter(|start| *start > now)
        };
        if let Some(start) = start_at {
            tokio::time::sleep_until(start).await;
        }
    }
}

/// [`Budget::take`] when there is a budget.
pub(super) async fn take(budget: Option<&Budget>) {
    if let Some(budget) = budget {
        budget.take().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_one_per_interval() {
        let budget = Budget::new(NonZeroU32::new(10).unwrap());
        let start = Instant::now();
        // 900 ms of a 100 ms interval: 9 at once.
        for _ in 0..9 {
            budget.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..10 {
            budget.take().await;
        }
        // The 10 more took a second, one every 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
        // Over any second from then on, at most 10.
        let window = Instant::now();
        for _ in 0..20 {
            budget.take().await;
        }
        assert_eq!(window.elapsed(), Duration::from_millis(2000));
    }
}
