//! Per-topic pacing with conflation.
//!
//! Momento meters every publish and every delivery, and its default account
//! limits are a few operations per second. A [`Pacer`] keeps, per key (a
//! topic, or a cache key), one slot holding the newest payload not yet sent,
//! and one task that sends what the slot holds at most once per interval.
//! A payload offered while an older one still waits replaces it (counted as
//! conflated): the latest value wins, and because one task sends a key's
//! payloads in offer order, nothing older is ever sent after something newer.
//!
//! A send that fails is retried with backoff, unless a newer payload arrived
//! meanwhile, which is then sent instead; while a key keeps failing the
//! transport's health says so. A key's task ends after a quiet minute, so
//! keys used once (an `orders.<subject>` topic) cost nothing for long.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::ReconnectPolicy;
use crate::health::HealthBoard;
use crate::{Backoff, Call, Error};

/// Sends one payload for one key.
pub(super) type SendFn = Arc<dyn Fn(String, Bytes) -> Call<'static, ()> + Send + Sync>;

/// A key's task ends after this long without a payload.
const IDLE: Duration = Duration::from_secs(60);

/// Paced, conflating sends per key. A cheap `Clone` handle.
#[derive(Clone)]
pub(super) struct Pacer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("what", &self.inner.what)
            .field("interval", &self.inner.interval)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// What is sent, for logs and health: `publish`, `retain`.
    what: &'static str,
    /// Least time between two sends of one key (zero: as fast as they go,
    /// still one at a time).
    interval: Duration,
    send: SendFn,
    // A std mutex: held for a map lookup or insert, never across an `.await`.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    conflated: AtomicU64,
    failed: AtomicU64,
    health: HealthBoard,
    reconnect: ReconnectPolicy,
    stop: CancellationToken,
}

#[derive(Default)]
struct Slot {
    pending: Mutex<Option<Bytes>>,
    wake: Notify,
}

impl Slot {
    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Bytes>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Settings of a [`Pacer`].
pub(super) struct PacerConfig {
    pub(super) what: &'static str,
    pub(super) interval: Duration,
    pub(super) reconnect: ReconnectPolicy,
}

impl Pacer {
    /// A pacer whose tasks end when `stop` is cancelled.
    pub(super) fn new(
        config: PacerConfig,
        send: SendFn,
        health: HealthBoard,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                what: config.what,
                interval: config.interval,
                send,
                slots: Mutex::new(HashMap::new()),
                conflated: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                health,
                reconnect: config.reconnect,
                stop,
            }),
        }
    }

    /// Queues `payload` as the newest of `key`, replacing one still waiting.
    pub(super) fn offer(&self, key: &str, payload: Bytes) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(key) {
            if slot.pending().replace(payload).is_some() {
                self.inner.conflated.fetch_add(1, Ordering::Relaxed);
            }
            slot.wake.notify_one();
            return;
        }
        let slot = Arc::new(Slot {
            pending: Mutex::new(Some(payload)),
            wake: Notify::new(),
        });
        slots.insert(key.to_owned(), Arc::clone(&slot));
        tokio::spawn(run(Arc::clone(&self.inner), key.to_owned(), slot));
    }

    /// Payloads replaced by newer ones before they were sent.
    pub(super) fn conflated(&self) -> u64 {
        self.inner.conflated.load(Ordering::Relaxed)
    }

    /// Sends that failed (and were retried or dropped).
    pub(super) fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Forgets `key` if nothing is waiting; the check and the removal happen
    /// under the map lock that [`Pacer::offer`] takes, so no payload is lost.
    fn retire(&self, key: &str, slot: &Arc<Slot>) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slot.pending().is_some() {
            return false;
        }
        if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(key);
        }
        true
    }
}

/// Whether retrying can help.
fn permanent(err: &Error) -> bool {
    matches!(
        err,
        Error::PayloadTooLarge { .. } | Error::InvalidTopic { .. } | Error::InvalidConfig(_)
    )
}

async fn run(inner: Arc<Inner>, key: String, slot: Arc<Slot>) {
    let health_key = format!("{} {key}", inner.what);
    let mut backoff = Backoff::new(inner.reconnect);
    let mut failing = false;
    let mut next_send = Instant::now();
    loop {
        // Wait until something is pending.
        while slot.pending().is_none() {
            tokio::select! {
                biased;
                () = inner.stop.cancelled() => return,
                () = slot.wake.notified() => {}
                () = tokio::time::sleep(IDLE) => {
                    if inner.retire(&key, &slot) {
                        return;
                    }
                }
            }
        }
        // Pace: newer payloads keep replacing the pending one meanwhile.
        tokio::select! {
            biased;
            () = inner.stop.cancelled() => return,
            () = tokio::time::sleep_until(next_send) => {}
        }
        let Some(payload) = slot.pending().take() else {
            continue;
        };
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            () = inner.stop.cancelled() => return,
            result = (inner.send)(key.clone(), payload.clone()) => result,
        };
        match result {
            Ok(()) => {
                if failing {
                    failing = false;
                    inner.health.recover(&health_key);
                    tracing::info!(what = inner.what, %key, "momento {} works again", inner.what);
                }
                backoff.reset();
                next_send = started + inner.interval;
            }
            Err(err) if permanent(&err) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(what = inner.what, %key, error = %err, "momento refused a payload; dropped");
                next_send = started + inner.interval;
            }
            Err(err) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(what = inner.what, %key, error = %err, "momento {} failed; retrying with backoff", inner.what);
                }
                failing = true;
                inner.health.fail(&health_key, err.to_string());
                // Retry this one unless something newer is waiting.
                slot.pending().get_or_insert(payload);
                next_send = Instant::now() + backoff.next_delay();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn recorder(
        fail_first: usize,
    ) -> (
        SendFn,
        mpsc::UnboundedReceiver<(String, Bytes)>,
        Arc<AtomicU64>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        let send: SendFn = Arc::new(move |key, payload| {
            let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
            let tx = tx.clone();
            Box::pin(async move {
                if n < fail_first {
                    return Err(Error::Unavailable {
                        backend: "momento",
                        message: "down".into(),
                    });
                }
                let _ = tx.send((key, payload));
                Ok(())
            })
        });
        (send, rx, calls)
    }

    fn pacer(send: SendFn, interval: Duration, health: HealthBoard) -> Pacer {
        Pacer::new(
            PacerConfig {
                what: "publish",
                interval,
                reconnect: ReconnectPolicy {
                    initial: Duration::from_millis(10),
                    max: Duration::from_millis(40),
                },
            },
            send,
            health,
            CancellationToken::new(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_payload_wins_and_order_is_kept() {
        let (send, mut sent, _) = recorder(0);
        let pacer = pacer(send, Duration::from_millis(100), HealthBoard::default());
        for n in 0..10u8 {
            pacer.offer("rates.A", Bytes::from(vec![n]));
        }
        pacer.offer("rates.B", Bytes::from_static(b"b"));
        // Offered faster than sent: only the newest goes out.
        let mut a = Vec::new();
        let mut b = Vec::new();
        while a.last() != Some(&9) || b.is_empty() {
            let (key, payload) = sent.recv().await.unwrap();
            match key.as_str() {
                "rates.A" => a.push(payload[0]),
                _ => b.push(payload),
            }
        }
        assert_eq!(a, [9]);
        assert_eq!(pacer.conflated(), 9);
        // Later payloads follow, in order.
        pacer.offer("rates.A", Bytes::from_static(&[10]));
        pacer.offer("rates.A", Bytes::from_static(&[11]));
        let (_, payload) = sent.recv().await.unwrap();
        assert_eq!(payload[0], 11);
        assert_eq!(pacer.conflated(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn sends_are_paced_per_key() {
        let (send, mut sent, _) = recorder(0);
        let pacer = pacer(send, Duration::from_millis(100), HealthBoard::default());
        let start = Instant::now();
        let mut times = Vec::new();
        for n in 0..5u8 {
            pacer.offer("k", Bytes::from(vec![n]));
            sent.recv().await.unwrap();
            times.push(start.elapsed());
        }
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(100), "{times:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_backoff_and_reported() {
        let (send, mut sent, calls) = recorder(3);
        let health = HealthBoard::default();
        let status = health.subscribe();
        let pacer = pacer(send, Duration::ZERO, health);
        pacer.offer("k", Bytes::from_static(b"x"));
        let (_, payload) = sent.recv().await.unwrap();
        assert_eq!(payload, Bytes::from_static(b"x"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(pacer.failed(), 3);
        assert!(status.borrow().is_connected());
    }
}
