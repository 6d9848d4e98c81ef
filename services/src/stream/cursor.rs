//! Where a stream stands in each of its symbols' sequences: it resumes after
//! what the client already has, drops ticks it has sent (a backlog and the
//! live broadcast overlap), and announces the sequences it skips.
//!
//! A resume point ahead of the stream (a client that resumes on another
//! server, or after the data directory was reset) is answered with the
//! newest tick at once, after a [`GapCause::ResumeAhead`] gap, instead of
//! waiting for the sequence to catch up with it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{
    lag::{LagCounter, SlowConsumer},
    ring::{Live, Sequenced},
};

/// Why sequences before a tick were not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// Resuming: the ring no longer holds them.
    NotHeld,
    /// Live: they never reached this process.
    Upstream,
    /// The stream fell behind and skipped to the newest tick.
    SlowConsumer,
    /// The resume point is ahead of the stream: it restarts at its newest
    /// tick. The gap is the range the client claims and the stream does
    /// not have: from the tick after the newest to the resume point.
    ResumeAhead,
}

/// Sequences of one symbol a stream skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first sequence not delivered.
    pub first_missing: u64,
    /// The last sequence not delivered.
    pub last_missing: u64,
    /// Why.
    pub cause: GapCause,
}

/// A tick to send, after announcing the gap before it if there is one.
#[derive(Debug)]
pub struct Delivery<T> {
    /// Skipped sequences, to announce first.
    pub gap: Option<Gap>,
    /// The tick.
    pub tick: Arc<T>,
}

/// The last sequence a stream sent, per symbol.
#[derive(Debug, Clone, Default)]
pub struct StreamCursor {
    // Ordered, so SSE event ids list the symbols in a stable order.
    last_sent: BTreeMap<String, u64>,
    /// Symbols resumed that have not been given a tick since: a first tick
    /// before the resume point shows it is ahead of the stream.
    resumed: BTreeSet<String>,
}

impl StreamCursor {
    /// A cursor that has sent nothing: each symbol starts at the first tick
    /// it is given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues `symbol` after `sequence`, which the client already has.
    /// Feed it the ring's backlog for that resume point first
    /// ([`TickRing::subscribe`](super::TickRing::subscribe)): a first tick
    /// before `after` means the resume point is ahead of the stream, and
    /// that tick is delivered after a [`GapCause::ResumeAhead`] gap.
    pub fn resume(&mut self, symbol: &str, after: u64) {
        self.last_sent.insert(symbol.to_owned(), after);
        self.resumed.insert(symbol.to_owned());
    }

    /// Forgets `symbol` (unsubscribed): it starts afresh if read again.
    pub fn forget(&mut self, symbol: &str) {
        self.last_sent.remove(symbol);
        self.resumed.remove(symbol);
    }

    /// Each symbol's last sent sequence, in symbol order.
    pub fn positions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.last_sent
            .iter()
            .map(|(symbol, seq)| (symbol.as_str(), *seq))
    }

    /// Records `tick` as sent and says what to send: nothing for a tick
    /// already sent (or older), else the tick after any gap, the gap being
    /// blamed on `cause`.
    pub fn advance<T: Sequenced>(&mut self, tick: Arc<T>, cause: GapCause) -> Option<Delivery<T>> {
        let seq = tick.sequence();
        let first_since_resume = self.resumed.remove(tick.symbol());
        let gap = match self.last_sent.get_mut(tick.symbol()) {
            // The client has `*last`: a first tick before it shows the
            // stream is behind the resume point (one at it is a duplicate).
            Some(last) if first_since_resume && seq < *last => {
                let ahead = Gap {
                    first_missing: seq + 1,
                    last_missing: *last,
                    cause: GapCause::ResumeAhead,
                };
                *last = seq;
                Some(ahead)
            }
            Some(last) => {
                if seq <= *last {
                    return None;
                }
                let gap = (seq > *last + 1).then(|| Gap {
                    first_missing: *last + 1,
                    last_missing: seq - 1,
                    cause,
                });
                *last = seq;
                gap
            }
            None => {
                self.last_sent.insert(tick.symbol().to_owned(), seq);
                None
            }
        };
        Some(Delivery { gap, tick })
    }

    /// What a live item delivers: its tick, or after a lag (counted in
    /// `lags`) the newest held tick, the ticks in between announced as
    /// [`GapCause::SlowConsumer`].
    ///
    /// # Errors
    /// [`SlowConsumer`] when the lag reaches the limit: close the stream.
    pub fn live<T: Sequenced>(
        &mut self,
        item: Live<T>,
        lags: &mut LagCounter,
    ) -> Result<Option<Delivery<T>>, SlowConsumer> {
        Ok(match item {
            Live::Tick(tick) => self.advance(tick, GapCause::Upstream),
            Live::Lagged(newest) => {
                lags.lagged()?;
                newest.and_then(|tick| self.advance(tick, GapCause::SlowConsumer))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{
        LagLimit,
        test_tick::{Numbered, tick},
    };

    /// What was sent for one tick: the gap's range, if any, and the sequence.
    type Sent = Option<(Option<(u64, u64)>, u64)>;

    /// The gap of `first..=last`, skipped for `cause`.
    fn gap(first_missing: u64, last_missing: u64, cause: GapCause) -> Option<Gap> {
        Some(Gap {
            first_missing,
            last_missing,
            cause,
        })
    }

    /// What is sent for each tick, `None` where nothing is.
    fn sent(cursor: &mut StreamCursor, ticks: &[(&'static str, u64)]) -> Vec<Sent> {
        ticks
            .iter()
            .map(|&(symbol, seq)| {
                cursor
                    .advance(tick(symbol, seq), GapCause::Upstream)
                    .map(|d| (d.gap.map(|g| (g.first_missing, g.last_missing)), d.tick.1))
            })
            .collect()
    }

    #[test]
    fn the_first_tick_of_a_symbol_starts_it_without_a_gap() {
        let mut cursor = StreamCursor::new();
        assert_eq!(
            sent(&mut cursor, &[("A", 7), ("A", 8), ("B", 3)]),
            [Some((None, 7)), Some((None, 8)), Some((None, 3))]
        );
    }

    #[test]
    fn duplicates_and_older_ticks_are_dropped() {
        let mut cursor = StreamCursor::new();
        assert_eq!(
            sent(&mut cursor, &[("A", 5), ("A", 5), ("A", 4), ("A", 6)]),
            [Some((None, 5)), None, None, Some((None, 6))]
        );
    }

    #[test]
    fn skipped_sequences_are_announced_with_their_cause() {
        let mut cursor = StreamCursor::new();
        cursor.resume("A", 10);
        let delivery = cursor.advance(tick("A", 14), GapCause::NotHeld).unwrap();
        assert_eq!(delivery.gap, gap(11, 13, GapCause::NotHeld));
        assert_eq!(
            sent(&mut cursor, &[("A", 10), ("A", 15), ("A", 17)]),
            [None, Some((None, 15)), Some((Some((16, 16)), 17))]
        );
    }

    #[test]
    fn resuming_drops_what_the_client_has_and_forgetting_starts_afresh() {
        let mut cursor = StreamCursor::new();
        cursor.resume("B", 3);
        cursor.resume("A", 9);
        assert_eq!(cursor.positions().collect::<Vec<_>>(), [("A", 9), ("B", 3)]);
        assert_eq!(
            sent(&mut cursor, &[("A", 9), ("B", 4)]),
            [None, Some((None, 4))]
        );
        cursor.forget("A");
        assert_eq!(sent(&mut cursor, &[("A", 2)]), [Some((None, 2))]);
    }

    #[test]
    fn a_resume_point_ahead_restarts_at_the_first_tick_given_after_a_gap() {
        let mut cursor = StreamCursor::new();
        cursor.resume("A", 1_000);
        cursor.resume("B", 4);
        let delivery = cursor.advance(tick("A", 7), GapCause::NotHeld).unwrap();
        assert_eq!(delivery.gap, gap(8, 1_000, GapCause::ResumeAhead));
        // From then on as any stream: duplicates dropped, gaps announced.
        assert_eq!(
            sent(&mut cursor, &[("A", 7), ("A", 8), ("A", 10)]),
            [None, Some((None, 8)), Some((Some((9, 9)), 10))]
        );
        // A resume point the stream has reached is not ahead.
        assert_eq!(
            sent(&mut cursor, &[("B", 5), ("B", 3)]),
            [Some((None, 5)), None]
        );
        // Forgetting clears the resume point.
        cursor.resume("C", 50);
        cursor.forget("C");
        assert_eq!(sent(&mut cursor, &[("C", 2)]), [Some((None, 2))]);
    }

    #[test]
    fn a_lag_skips_to_the_newest_tick_until_the_limit_closes_the_stream() {
        let mut cursor = StreamCursor::new();
        let mut lags = LagCounter::new(LagLimit {
            max_lags: 2,
            ..LagLimit::default()
        });
        let first = cursor
            .live(Live::Tick(tick("A", 1)), &mut lags)
            .unwrap()
            .unwrap();
        assert_eq!(first.gap, None);
        let conflated = cursor
            .live(Live::Lagged(Some(tick("A", 9))), &mut lags)
            .unwrap()
            .unwrap();
        assert_eq!(conflated.gap, gap(2, 8, GapCause::SlowConsumer));
        assert_eq!(conflated.tick.1, 9);
        // The broadcast then yields what it still buffers: already skipped.
        assert!(
            cursor
                .live(Live::Tick(tick("A", 5)), &mut lags)
                .unwrap()
                .is_none()
        );
        // Within the debounce: the same stall, nothing held to skip to.
        assert!(
            cursor
                .live(Live::<Numbered>::Lagged(None), &mut lags)
                .unwrap()
                .is_none()
        );
    }
}
