//! Capped exponential backoff with jitter: the one retry schedule of fxcast.
//!
//! Every loop that retries a connection, a subscription or a write waits
//! [`Backoff::next_delay`] between attempts and calls [`Backoff::reset`] once
//! an attempt succeeds. The steps come from `backon`'s exponential builder:
//! the first is [`BackoffPolicy::initial`], each next one twice the last, up
//! to [`BackoffPolicy::max`]. Each delay is drawn from the upper half of its
//! step, `[step / 2, step]`, so processes that lost the same endpoint do not
//! come back in lockstep, and no delay is ever longer than the cap.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first delay and the cap of a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first step.
    pub initial: Duration,
    /// The step doubles per failure up to this.
    pub max: Duration,
}

impl BackoffPolicy {
    /// Steps from `initial` doubling up to `max`.
    #[must_use]
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// Checks the delays are usable: the first positive, the maximum at
    /// least the first.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig), naming `backend`.
    pub fn validate(&self, backend: &str) -> Result<(), crate::Error> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err(crate::Error::InvalidConfig(format!(
                "{backend}: the reconnect delays must be positive, the maximum at least the first"
            )));
        }
        Ok(())
    }
}

impl Default for BackoffPolicy {
    /// 100 ms, doubling up to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// The delays between the attempts of one retry loop.
#[derive(Debug)]
pub struct Backoff {
    max: Duration,
    schedule: ExponentialBuilder,
    steps: ExponentialBackoff,
}

impl Backoff {
    /// A schedule starting at `policy.initial`.
    #[must_use]
    pub fn new(policy: BackoffPolicy) -> Self {
        // A zero step or cap would retry in a busy loop: at least 1 ms.
        let initial = policy.initial.max(Duration::from_millis(1));
        let policy = BackoffPolicy {
            initial,
            max: policy.max.max(initial),
        };
        let schedule = ExponentialBuilder::new()
            .with_min_delay(policy.initial)
            .with_max_delay(policy.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            max: policy.max,
            schedule,
            steps: schedule.build(),
        }
    }

    /// The delay to wait before the next attempt; the step doubles for the
    /// one after.
    pub fn next_delay(&mut self) -> Duration {
        // backon's jitter adds up to one step, `[step, 2 * step)`: half of
        // that is the upper half of the step. It computes in `f32`, so the
        // result is rounded to whole microseconds (whole steps stay whole).
        let jittered = self.steps.next().unwrap_or(self.max);
        let micros = ((jittered / 2).as_nanos() + 500) / 1_000;
        Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX)).min(self.max)
    }

    /// Starts from the first step again, after a success.
    pub fn reset(&mut self) {
        self.steps = self.schedule.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn delays_double_up_to_the_cap_within_the_upper_half_of_each_step() {
        let policy = BackoffPolicy::new(ms(100), ms(2_000));
        for _ in 0..100 {
            let mut backoff = Backoff::new(policy);
            for step in [100, 200, 400, 800, 1_600, 2_000, 2_000, 2_000].map(ms) {
                let delay = backoff.next_delay();
                assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
            }
        }
    }

    #[test]
    fn no_delay_exceeds_the_cap_however_long_it_fails() {
        let policy = BackoffPolicy::new(ms(250), Duration::from_secs(30));
        let mut backoff = Backoff::new(policy);
        for _ in 0..1_000 {
            assert!(backoff.next_delay() <= policy.max);
        }
    }

    #[test]
    fn delays_are_jittered() {
        let mut backoff = Backoff::new(BackoffPolicy::new(ms(100), ms(100)));
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(spread.len() > 10, "no jitter: {spread:?}");
    }

    #[test]
    fn reset_starts_from_the_first_step_again() {
        let mut backoff = Backoff::new(BackoffPolicy::new(ms(100), ms(800)));
        for _ in 0..6 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() >= ms(400));
        backoff.reset();
        let delay = backoff.next_delay();
        assert!(delay >= ms(50) && delay <= ms(100), "{delay:?}");
    }
}
