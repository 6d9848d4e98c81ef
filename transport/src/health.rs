//! What is failing right now, for the network backends.
//!
//! The connection, every subscription and every paced publisher report
//! their own failure under their own key; the transport is [`TransportHealth::Connected`] when no
//! key is failing. One watch channel carries the result, so readiness and
//! gRPC health follow changes without polling.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::TransportHealth;

/// The current failures of one transport. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub(crate) struct HealthBoard {
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
    pub(crate) fn subscribe(&self) -> watch::Receiver<TransportHealth> {
        self.sender.subscribe()
    }

    /// Records that `key` (a subscription, a publisher) is failing.
    pub(crate) fn fail(&self, key: &str, reason: String) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.insert(key.to_owned(), reason);
        self.publish(&failing);
    }

    /// Records that `key` works again.
    pub(crate) fn recover(&self, key: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
