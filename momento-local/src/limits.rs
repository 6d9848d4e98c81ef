//! The hosted service's quotas that are not about one message: streams per
//! connection and operations per second per cache.
//!
//! Both answer as Momento does when exceeded: `RESOURCE_EXHAUSTED` with the
//! `err` trailer the SDKs map to their "limit exceeded" messages
//! (`topic_subscriptions_limit_exceeded`, `operations_rate_limit_exceeded`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::Status;

use crate::cache::limit_exceeded;

/// Open subscriptions per client connection, each connection known by its
/// peer address.
#[derive(Debug)]
pub(super) struct StreamCounts {
    limit: usize,
    // A std mutex: held only for a map operation, never across an `.await`.
    open: Mutex<HashMap<SocketAddr, usize>>,
}

/// One subscription's place in [`StreamCounts`], given back when dropped.
#[derive(Debug)]
pub(super) struct StreamSlot {
    counts: Arc<StreamCounts>,
    peer: SocketAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

impl StreamCounts {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Mutex::default(),
        }
    }

    /// A slot for one more subscription on `peer`'s connection; `None` for
    /// in-process connections, which have no peer address and no cap.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when the connection already holds the limit, as
    /// the hosted service refuses a stream beyond its per-connection cap.
    pub(super) fn claim(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
    ) -> Result<Option<StreamSlot>, Status> {
        let Some(peer) = peer else { return Ok(None) };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer).or_default();
        if *count >= self.limit {
            return Err(limit_exceeded(
                "topic_subscriptions_limit_exceeded",
                format!(
                    "Too many subscribers (limit: {}) on this connection: \
                     subscribe over another connection",
                    self.limit
                ),
            ));
        }
        *count += 1;
        Ok(Some(StreamSlot {
            counts: Arc::clone(self),
            peer,
        }))
    }
}

/// Operations per second per cache, a generic cell rate algorithm: a cache
/// may spend a second's worth at once, then one every `1/rate` seconds.
///
/// Hand-written rather than taken from `governor`: refusing is all the
/// server needs, and it is a dozen lines against eight more crates.
#[derive(Debug)]
pub(super) struct OpsLimit {
    rate: NonZeroU32,
    every: Duration,
    // When each cache's allowance is next full again (the theoretical
    // arrival time); a std mutex, held only for a map operation.
    due: Mutex<HashMap<String, Instant>>,
}

impl OpsLimit {
    pub(super) fn new(rate: NonZeroU32) -> Self {
        Self {
            rate,
            every: Duration::from_secs(1) / rate.get(),
            due: Mutex::default(),
        }
    }

    /// Counts one operation on `cache`.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` (`operations_rate_limit_exceeded`) when the cache
    /// spent its operations of the last second; nothing is counted then.
    pub(super) fn charge(&self, cache: &str) -> Result<(), Status> {
        let now = Instant::now();
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let at = due.get(cache).map_or(now, |at| (*at).max(now)) + self.every;
        if at.duration_since(now) > Duration::from_secs(1) {
            return Err(limit_exceeded(
                "operations_rate_limit_exceeded",
                format!(
                    "Request rate limit exceeded: cache {cache:?} allows {} operations per second",
                    self.rate
                ),
            ));
        }
        match due.get_mut(cache) {
            Some(slot) => *slot = at,
            None => {
                due.insert(cache.to_owned(), at);
            }
        }
        Ok(())
    }

    /// Forgets caches whose allowance is full again.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| *at > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_connection_holds_up_to_the_limit_and_gets_a_slot_back_when_one_ends() {
        let counts = Arc::new(StreamCounts::new(2));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let first = counts.claim(Some(peer)).unwrap();
        let _second = counts.claim(Some(peer)).unwrap();
        let refused = counts.claim(Some(peer)).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(
            refused.metadata().get("err").unwrap(),
            "topic_subscriptions_limit_exceeded"
        );
        assert!(refused.message().contains("limit: 2"), "{refused:?}");
        assert!(counts.claim(Some(other)).unwrap().is_some());
        drop(first);
        assert!(counts.claim(Some(peer)).unwrap().is_some());
        assert!(counts.claim(None).unwrap().is_none());
    }

    #[test]
    fn a_cache_spends_a_second_of_operations_then_is_refused_other_caches_are_not() {
        let limit = OpsLimit::new(NonZeroU32::new(10).unwrap());
        for _ in 0..10 {
            limit.charge("a").unwrap();
        }
        let refused = limit.charge("a").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(
            refused.metadata().get("err").unwrap(),
            "operations_rate_limit_exceeded"
        );
        limit.charge("b").unwrap();
    }
}
