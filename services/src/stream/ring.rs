//! Per-symbol history rings with a broadcast of new ticks: what every
//! streaming interface reads from (the rate core's hub for gRPC, the
//! gateway's ticker for WebSocket and SSE).
//!
//! A ring holds the newest ticks of one symbol for resumption and hands each
//! new one to its live readers as the same `Arc` (so bytes serialised once
//! are shared by every connection). A reader that falls behind the broadcast
//! buffer is told so together with the newest held tick, to skip to it.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
};

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

/// A tick a ring can hold: one symbol's, numbered per symbol without gaps.
pub trait Sequenced: Send + Sync + 'static {
    /// The symbol it belongs to.
    fn symbol(&self) -> &str;
    /// Its per-symbol sequence.
    fn sequence(&self) -> u64;
}

/// One symbol's held ticks and the broadcast of new ones.
#[derive(Debug)]
pub struct TickRing<T> {
    // Held while pushing history *and* broadcasting, and while a new reader
    // snapshots history and subscribes: so a reader sees every tick exactly
    // once, either in its backlog or live. A std mutex: it is never held
    // across an await, and the critical sections are a few pointer moves.
    history: Mutex<VecDeque<Arc<T>>>,
    sender: broadcast::Sender<Arc<T>>,
    capacity: usize,
}

impl<T: Sequenced> TickRing<T> {
    /// A ring holding the `history` newest ticks, buffering `buffer` ticks
    /// for its slowest live reader before that reader lags (both at least 1).
    pub fn new(history: usize, buffer: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(1));
        Self {
            history: Mutex::new(VecDeque::new()),
            sender,
            capacity: history.max(1),
        }
    }

    fn held(&self) -> MutexGuard<'_, VecDeque<Arc<T>>> {
        // A panic elsewhere cannot leave the deque half-updated.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `tick` and broadcasts it to the live readers, unless the ring
    /// already holds it or a newer one. Returns whether it was new.
    pub fn push(&self, tick: Arc<T>) -> bool {
        let mut history = self.held();
        if history
            .back()
            .is_some_and(|last| last.sequence() >= tick.sequence())
        {
            return false;
        }
        if history.len() == self.capacity {
            history.pop_front();
        }
        history.push_back(Arc::clone(&tick));
        // No receivers is fine: nobody reads this symbol right now.
        let _ = self.sender.send(tick);
        true
    }

    /// The newest held tick.
    pub fn latest(&self) -> Option<Arc<T>> {
        self.held().back().cloned()
    }

    /// The held tick numbered `sequence`.
    pub fn get(&self, sequence: u64) -> Option<Arc<T>> {
        let history = self.held();
        let index = history
            .binary_search_by_key(&sequence, |t| t.sequence())
            .ok()?;
        Some(Arc::clone(&history[index]))
    }

    /// Number of live readers.
    pub fn reader_count(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Starts reading: without `resume_after` the backlog is the newest
    /// tick, with it every held tick after that sequence, or the newest when
    /// `resume_after` is ahead of it (the client's resume point came from
    /// elsewhere: [`StreamCursor`](super::StreamCursor) announces it). (On
    /// an `Arc`, so the live stream can read the newest held tick when it
    /// lags.)
    pub fn subscribe(self: &Arc<Self>, resume_after: Option<u64>) -> RingSubscription<T> {
        let history = self.held();
        let newest = history.back().cloned();
        let backlog = match resume_after {
            Some(after) if newest.as_ref().is_none_or(|t| t.sequence() >= after) => history
                .iter()
                .filter(|t| t.sequence() > after)
                .cloned()
                .collect(),
            _ => newest.into_iter().collect(),
        };
        let receiver = self.sender.subscribe();
        drop(history);
        RingSubscription {
            backlog,
            live: LiveTicks {
                receiver: BroadcastStream::new(receiver),
                ring: Arc::clone(self),
            },
        }
    }
}

/// What a new reader of one symbol starts from.
#[derive(Debug)]
pub struct RingSubscription<T> {
    /// Held ticks to deliver first, oldest first: every one after the resume
    /// point, or without one (or with one ahead of the ring) the newest.
    pub backlog: Vec<Arc<T>>,
    /// Live ticks after the backlog.
    pub live: LiveTicks<T>,
}

/// One item of a live ring subscription.
#[derive(Debug)]
pub enum Live<T> {
    /// The next tick.
    Tick(Arc<T>),
    /// The reader fell behind the broadcast buffer and missed ticks; the
    /// newest held tick, to skip to (conflation).
    Lagged(Option<Arc<T>>),
}

/// The live ticks of one symbol, as a stream of [`Live`] items.
#[derive(Debug)]
pub struct LiveTicks<T> {
    receiver: BroadcastStream<Arc<T>>,
    ring: Arc<TickRing<T>>,
}

impl<T: Sequenced> Stream for LiveTicks<T> {
    type Item = Live<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Live<T>>> {
        let item = ready!(Pin::new(&mut self.receiver).poll_next(cx));
        Poll::Ready(item.map(|item| match item {
            Ok(tick) => Live::Tick(tick),
            Err(BroadcastStreamRecvError::Lagged(_)) => Live::Lagged(self.ring.latest()),
        }))
    }
}

/// The rings of a fixed set of symbols. A cheap `Clone` handle.
#[derive(Debug)]
pub struct SymbolRings<T> {
    rings: Arc<HashMap<String, Arc<TickRing<T>>>>,
}

impl<T> Clone for SymbolRings<T> {
    fn clone(&self) -> Self {
        Self {
            rings: Arc::clone(&self.rings),
        }
    }
}

impl<T: Sequenced> SymbolRings<T> {
    /// One ring per symbol, each holding `history` ticks and buffering
    /// `buffer` for its slowest reader (see [`TickRing::new`]).
    pub fn new<'a>(
        symbols: impl IntoIterator<Item = &'a str>,
        history: usize,
        buffer: usize,
    ) -> Self {
        let rings = symbols
            .into_iter()
            .map(|symbol| (symbol.to_owned(), Arc::new(TickRing::new(history, buffer))))
            .collect();
        Self {
            rings: Arc::new(rings),
        }
    }

    /// The ring of `symbol`.
    pub fn get(&self, symbol: &str) -> Option<&Arc<TickRing<T>>> {
        self.rings.get(symbol)
    }

    /// Every symbol and its ring, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<TickRing<T>>)> {
        self.rings
            .iter()
            .map(|(symbol, ring)| (symbol.as_str(), ring))
    }

    /// The newest held tick of `symbol`.
    pub fn latest(&self, symbol: &str) -> Option<Arc<T>> {
        self.get(symbol)?.latest()
    }

    /// Starts reading `symbol`: as [`TickRing::subscribe`]. `None` for a
    /// symbol without a ring.
    pub fn subscribe(
        &self,
        symbol: &str,
        resume_after: Option<u64>,
    ) -> Option<RingSubscription<T>> {
        Some(self.get(symbol)?.subscribe(resume_after))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::stream::test_tick::{Numbered, tick};

    fn rings(history: usize, buffer: usize) -> SymbolRings<Numbered> {
        SymbolRings::new(["A", "B"], history, buffer)
    }

    fn push(
        rings: &SymbolRings<Numbered>,
        symbol: &'static str,
        sequences: impl IntoIterator<Item = u64>,
    ) {
        let ring = rings.get(symbol).unwrap();
        for sequence in sequences {
            assert!(
                ring.push(tick(symbol, sequence)),
                "{symbol} {sequence} is new"
            );
        }
    }

    fn sequences(ticks: &[Arc<Numbered>]) -> Vec<u64> {
        ticks.iter().map(|t| t.1).collect()
    }

    #[test]
    fn holds_the_newest_ticks_in_order_and_refuses_old_ones() {
        let rings = rings(3, 8);
        push(&rings, "A", 1..=5);
        let ring = rings.get("A").unwrap();
        assert!(!ring.push(tick("A", 5)), "a repeat is not new");
        assert!(!ring.push(tick("A", 2)), "an older one is not new");
        assert!(rings.get("C").is_none(), "no ring for C");
        assert_eq!(ring.latest().unwrap().1, 5);
        assert_eq!(ring.get(3).unwrap().1, 3);
        assert_eq!(ring.get(2), None, "fell out of the ring");
        assert_eq!(rings.latest("B"), None);
    }

    #[test]
    fn the_backlog_is_the_newest_tick_or_everything_after_the_resume_point() {
        let rings = rings(4, 8);
        push(&rings, "A", 1..=6);
        let latest = rings.subscribe("A", None).unwrap();
        assert_eq!(sequences(&latest.backlog), [6]);
        let resumed = rings.subscribe("A", Some(3)).unwrap();
        assert_eq!(sequences(&resumed.backlog), [4, 5, 6]);
        let before_the_ring = rings.subscribe("A", Some(0)).unwrap();
        assert_eq!(sequences(&before_the_ring.backlog), [3, 4, 5, 6]);
        let up_to_date = rings.subscribe("A", Some(6)).unwrap();
        assert_eq!(sequences(&up_to_date.backlog), [] as [u64; 0]);
        let ahead = rings.subscribe("A", Some(1_000_000_000)).unwrap();
        assert_eq!(
            sequences(&ahead.backlog),
            [6],
            "the newest, to restart from"
        );
        assert!(rings.subscribe("B", Some(9)).unwrap().backlog.is_empty());
        assert!(rings.subscribe("C", None).is_none());
    }

    #[tokio::test]
    async fn live_readers_share_each_tick_and_a_lagging_one_is_told_the_newest() {
        let rings = rings(16, 2);
        let mut fast = rings.subscribe("A", None).unwrap().live;
        let mut slow = rings.subscribe("A", None).unwrap().live;
        assert_eq!(rings.get("A").unwrap().reader_count(), 2);
        push(&rings, "A", [1]);
        let (Some(Live::Tick(a)), Some(Live::Tick(b))) = (fast.next().await, slow.next().await)
        else {
            panic!("both read the tick");
        };
        assert!(Arc::ptr_eq(&a, &b), "the same tick, not a copy");
        push(&rings, "A", 2..=6);
        match slow.next().await {
            Some(Live::Lagged(Some(newest))) => assert_eq!(newest.1, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
        drop(fast);
        assert_eq!(rings.get("A").unwrap().reader_count(), 1);
    }
}
