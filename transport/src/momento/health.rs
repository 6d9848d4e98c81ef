//! What is failing right now, and backoff for retrying it.
//!
//! Every subscription and every paced publisher reports its own failure
//! under its own key; the transport is [`TransportHealth::Connected`] when no
//! key is failing. One watch channel carries the result, so readiness and
//! gRPC health follow changes without polling.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::watch;

use crate::TransportHealth;

/// The current failures of one transport. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub(super) struct HealthBoard {
    // A std mutex: held for a map update, never across an `.await`.
    failing: Arc<Mutex<BTreeMap<String, String>>>,
    sender: Arc<watch::Sender<TransportHealth>>,
}

impl Default for HealthBoard {
    fn default() -> Self {
        Self {
            failing: Arc::default(),
            sender: Arc::new(watch::channel(TransportHealth::Connected).0),
        }
    }
}

impl HealthBoard {
    pub(super) fn subscribe(&self) -> watch::Receiver<TransportHealth> {
        self.sender.subscribe()
    }

    /// Records that `key` (a subscription, a publisher) is failing.
    pub(super) fn fail(&self, key: &str, reason: String) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.insert(key.to_owned(), reason);
        self.publish(&failing);
    }

    /// Records that `key` works again.
    pub(super) fn recover(&self, key: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing.remove(key).is_some() {
            self.publish(&failing);
        }
    }

    fn publish(&self, failing: &BTreeMap<String, String>) {
        let health = match failing.iter().next() {
            None => TransportHealth::Connected,
            Some((key, reason)) => {
                let more = match failing.len() - 1 {
                    0 => String::new(),
                    n => format!(" (and {n} more)"),
                };
                TransportHealth::Reconnecting {
                    reason: format!("{key}: {reason}{more}"),
                }
            }
        };
        self.sender.send_if_modified(|current| {
            let changed = *current != health;
            if changed {
                *current = health;
            }
            changed
        });
    }
}

/// How failed subscriptions and publishes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The delay doubles per failure up to this.
    pub max: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from the upper
/// half of the current step, so processes that lost the same endpoint do not
/// come back in lockstep.
#[derive(Debug)]
pub(super) struct Backoff {
    policy: ReconnectPolicy,
    step: Duration,
    rng: StdRng,
}

impl Backoff {
    pub(super) fn new(policy: ReconnectPolicy) -> Self {
        Self {
            policy,
            step: policy.initial,
            rng: StdRng::from_os_rng(),
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.policy.max);
        let half = step / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }

    pub(super) fn reset(&mut self) {
        self.step = self.policy.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = ReconnectPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let mut backoff = Backoff::new(policy);
        for step_ms in [100u64, 200, 400, 800, 800, 800] {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step_ms);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn health_is_connected_once_nothing_fails() {
        let board = HealthBoard::default();
        let health = board.subscribe();
        board.fail("subscription to a", "refused".into());
        board.fail("subscription to b", "refused".into());
        assert_eq!(
            *health.borrow(),
            TransportHealth::Reconnecting {
                reason: "subscription to a: refused (and 1 more)".into()
            }
        );
        board.recover("subscription to a");
        assert!(!health.borrow().is_connected());
        board.recover("subscription to b");
        assert!(health.borrow().is_connected());
    }
}
