//! Where the rate subscribers record delivery latencies: a few sharded
//! histograms, each subscriber buffering a few latencies before taking its
//! shard's lock.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;

use super::histogram::new_histogram;

/// Histogram shards: subscribers record into one of these (a few at a time,
/// see [`Recorder`]), so 10,000 connections neither hold 10,000 histograms
/// (hundreds of KiB each) nor contend on one lock.
const SHARDS: usize = 64;
/// Latencies a subscriber buffers before taking its shard's lock.
const PENDING: usize = 64;

/// What every subscriber of a run records into.
pub(super) struct Shared {
    shards: Vec<Mutex<Histogram<u64>>>,
    next_shard: AtomicUsize,
    pub(super) messages: AtomicU64,
    pub(super) disconnects: AtomicU64,
    pub(super) measuring: AtomicBool,
    /// Why the first subscriber that could not open failed.
    pub(super) first_failure: Mutex<Option<String>>,
    /// Why the first open stream broke.
    pub(super) first_disconnect: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            next_shard: AtomicUsize::new(0),
            messages: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            first_failure: Mutex::new(None),
            first_disconnect: Mutex::new(None),
        }
    }

    /// A subscriber could not open its stream.
    pub(super) fn failed(&self, err: &anyhow::Error) {
        keep_first(&self.first_failure, err);
    }

    /// An open stream broke before the end.
    pub(super) fn disconnected(&self, err: &anyhow::Error) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        keep_first(&self.first_disconnect, err);
    }

    /// A recorder for one subscriber.
    pub(super) fn recorder(&self) -> Recorder<'_> {
        Recorder {
            shared: self,
            shard: self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS,
            pending: Vec::with_capacity(PENDING),
        }
    }

    /// Every shard merged.
    pub(super) fn histogram(&self) -> Histogram<u64> {
        let mut total = new_histogram();
        for shard in &self.shards {
            let _ = total.add(&*shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

fn keep_first(slot: &Mutex<Option<String>>, err: &anyhow::Error) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(format!("{err:#}"));
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Microseconds since the epoch of an RFC 3339 time.
fn parse_time_us(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_micros() as u64)
}

/// One subscriber's latencies on their way to its shard; flushed when
/// dropped.
pub(super) struct Recorder<'a> {
    shared: &'a Shared,
    shard: usize,
    pending: Vec<u64>,
}

impl Recorder<'_> {
    /// Records a message published at `publish_us` (while measuring).
    pub(super) fn record(&mut self, publish_us: u64) {
        if !self.shared.measuring.load(Ordering::Relaxed) {
            return;
        }
        self.pending
            .push(now_us().saturating_sub(publish_us).max(1));
        if self.pending.len() >= PENDING {
            self.flush();
        }
    }

    /// Records the rate in a JSON message (WebSocket frame or SSE event),
    /// found by a cheap scan for its publish time instead of a full parse.
    pub(super) fn record_json(&mut self, text: &str) {
        const KEY: &str = "\"publish_time\":\"";
        if let Some(at) = text.find(KEY)
            && let Some(publish) = text[at + KEY.len()..]
                .split('"')
                .next()
                .and_then(parse_time_us)
        {
            self.record(publish);
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let count = self.pending.len() as u64;
        let mut histogram = self.shared.shards[self.shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for latency in self.pending.drain(..) {
            let _ = histogram.record(latency);
        }
        drop(histogram);
        self.shared.messages.fetch_add(count, Ordering::Relaxed);
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}
