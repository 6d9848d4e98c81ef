//! Feed health: when each symbol last ticked, which symbols are stale, and
//! the counters of the feed's connection.
//!
//! A symbol is *stale* once its feed has not ticked for `stale_after`. The
//! feed supervisor ([`supervise`]) is the only writer of the stale state: it
//! sits between a feed and the [`RatePublisher`], records every quote's
//! arrival, and when a symbol's deadline passes it re-publishes the symbol's
//! latest rate marked `stale` (with a new sequence, so every stream sees the
//! outage in order). The next quote is published with `stale = false` as
//! usual. Because one task does both, a stale marker can never overtake a
//! fresh quote.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::Quote;
use crate::{LatestRates, RatePublisher};

/// Per-symbol liveness of the running feed and its connection counters.
/// A cheap `Clone` handle shared by the feed, its supervisor, readiness and
/// metrics.
#[derive(Clone)]
pub struct FeedHealth {
    inner: Arc<Inner>,
}

struct Inner {
    stale_after: Duration,
    // std Mutex: held for a few map operations, never across an await.
    state: Mutex<State>,
    connection: AtomicU8,
    counters: [AtomicU64; Counter::COUNT],
    /// Wakes [`watch_arrivals`] when a stale symbol receives a tick again.
    revived: Notify,
}

struct State {
    source: Option<&'static str>,
    symbols: BTreeMap<String, SymbolState>,
}

#[derive(Debug, Clone)]
struct SymbolState {
    /// When tracking began: a symbol that never ticks goes stale from here.
    tracked_since: Option<Instant>,
    last_tick: Option<Instant>,
    stale: bool,
    ticks: u64,
    outages: u64,
    /// Why the upstream refuses the symbol, until its next tick.
    down: Option<String>,
}

const CONNECTION_NONE: u8 = 0;
const CONNECTION_DOWN: u8 = 1;
const CONNECTION_UP: u8 = 2;

/// Events a feed counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// A connection was established.
    Connect,
    /// A connection was lost or closed.
    Disconnect,
    /// A connection attempt failed (refused, TLS, handshake, timeout).
    ConnectFailure,
    /// A data notification arrived.
    Notification,
    /// A message that could not be understood was rejected.
    Malformed,
    /// The upstream answered with a JSON-RPC error.
    RpcError,
    /// A well-formed tick was ignored (market not running, unconfigured
    /// symbol).
    Ignored,
}

impl Counter {
    const COUNT: usize = 7;
}

/// Counters of a feed's connection and messages since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedCounters {
    /// Connections established.
    pub connects: u64,
    /// Connections lost or closed.
    pub disconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Data notifications received.
    pub notifications: u64,
    /// Messages rejected as malformed (the connection stays up).
    pub malformed: u64,
    /// JSON-RPC errors the upstream sent.
    pub rpc_errors: u64,
    /// Well-formed ticks deliberately not published (market not running,
    /// unconfigured symbol).
    pub ignored: u64,
}

/// Health of one symbol's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolHealth {
    /// The symbol.
    pub symbol: String,
    /// No tick for `stale_after` (or none since the feed started).
    pub stale: bool,
    /// Quotes received from the feed.
    pub ticks: u64,
    /// Time since the last quote; `None` before the first.
    pub last_tick_age: Option<Duration>,
    /// How many times the symbol went stale.
    pub outages: u64,
    /// The upstream's reason for refusing the symbol (a FIX
    /// MarketDataRequestReject), until it ticks again.
    pub down: Option<String>,
}

/// A point-in-time copy of [`FeedHealth`], for readiness and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedHealthSnapshot {
    /// The running feed's name (`"bitflyer"`, `"replay"`, ...), `None`
    /// without a feed.
    pub source: Option<&'static str>,
    /// Connection-based feeds: whether a connection is up. `None` for feeds
    /// without a connection.
    pub connected: Option<bool>,
    /// Silence after which a symbol is stale.
    pub stale_after: Duration,
    /// Every symbol, in symbol order.
    pub symbols: Vec<SymbolHealth>,
    /// Connection and message counters.
    pub counters: FeedCounters,
}

impl std::fmt::Debug for FeedHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedHealth")
            .field("stale_after", &self.inner.stale_after)
            .finish_non_exhaustive()
    }
}

impl FeedHealth {
    /// Health of `symbols`, stale after `stale_after` without a tick.
    /// Nothing is stale until a feed is supervised.
    pub fn new<'a>(symbols: impl IntoIterator<Item = &'a str>, stale_after: Duration) -> Self {
        let symbols = symbols
            .into_iter()
            .map(|s| {
                let state = SymbolState {
                    tracked_since: None,
                    last_tick: None,
                    stale: false,
                    ticks: 0,
                    outages: 0,
                    down: None,
                };
                (s.to_owned(), state)
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                stale_after,
                state: Mutex::new(State {
                    source: None,
                    symbols,
                }),
                connection: AtomicU8::new(CONNECTION_NONE),
                counters: Default::default(),
                revived: Notify::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Silence after which a symbol is stale.
    pub fn stale_after(&self) -> Duration {
        self.inner.stale_after
    }

    /// Whether `symbol`'s feed has gone quiet. Always false without a feed.
    pub fn is_stale(&self, symbol: &str) -> bool {
        self.state().symbols.get(symbol).is_some_and(|s| s.stale)
    }

    /// The stale symbols, in symbol order.
    pub fn stale_symbols(&self) -> Vec<String> {
        self.state()
            .symbols
            .iter()
            .filter(|(_, s)| s.stale)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A copy of everything, for readiness and metrics.
    pub fn snapshot(&self) -> FeedHealthSnapshot {
        let now = Instant::now();
        let state = self.state();
        let symbols = state
            .symbols
            .iter()
            .map(|(name, s)| SymbolHealth {
                symbol: name.clone(),
                stale: s.stale,
                ticks: s.ticks,
                last_tick_age: s.last_tick.map(|t| now.saturating_duration_since(t)),
                outages: s.outages,
                down: s.down.clone(),
            })
            .collect();
        let count = |c: Counter| self.inner.counters[c as usize].load(Ordering::Relaxed);
        FeedHealthSnapshot {
            source: state.source,
            connected: match self.inner.connection.load(Ordering::Relaxed) {
                CONNECTION_UP => Some(true),
                CONNECTION_DOWN => Some(false),
                _ => None,
            },
            stale_after: self.inner.stale_after,
            symbols,
            counters: FeedCounters {
                connects: count(Counter::Connect),
                disconnects: count(Counter::Disconnect),
                connect_failures: count(Counter::ConnectFailure),
                notifications: count(Counter::Notification),
                malformed: count(Counter::Malformed),
                rpc_errors: count(Counter::RpcError),
                ignored: count(Counter::Ignored),
            },
        }
    }

    /// Counts one `counter` event.
    pub(crate) fn count(&self, counter: Counter) {
        self.inner.counters[counter as usize].fetch_add(1, Ordering::Relaxed);
        match counter {
            Counter::Connect => self.set_connection(CONNECTION_UP),
            Counter::Disconnect | Counter::ConnectFailure => self.set_connection(CONNECTION_DOWN),
            _ => {}
        }
    }

    /// Records that the upstream refuses `symbol`, and why; cleared by its
    /// next tick. The symbol, receiving nothing, goes stale as usual.
    pub(crate) fn mark_down(&self, symbol: &str, reason: &str) {
        if let Some(s) = self.state().symbols.get_mut(symbol) {
            s.down = Some(reason.to_owned());
        }
    }

    fn set_connection(&self, value: u8) {
        self.inner.connection.store(value, Ordering::Relaxed);
    }

    /// Starts tracking every symbol for `source` from `now`.
    fn track(&self, source: &'static str, now: Instant) {
        let mut state = self.state();
        state.source = Some(source);
        for s in state.symbols.values_mut() {
            s.tracked_since.get_or_insert(now);
        }
    }

    /// Records a quote of `symbol` at `now`. Returns whether the symbol was
    /// stale until now.
    fn record_tick(&self, symbol: &str, now: Instant) -> bool {
        let mut state = self.state();
        let Some(s) = state.symbols.get_mut(symbol) else {
            return false;
        };
        s.last_tick = Some(now);
        s.ticks += 1;
        s.down = None;
        std::mem::replace(&mut s.stale, false)
    }

    /// Records a tick of `symbol` that arrived from the transport at `at`
    /// (a process without a feed of its own, see [`watch_arrivals`]).
    pub(crate) fn record_arrival(&self, symbol: &str, at: std::time::Instant) {
        if self.record_tick(symbol, Instant::from_std(at)) {
            tracing::info!(%symbol, "ticks arrive again from the transport: no longer stale");
            self.inner.revived.notify_one();
        }
    }

    /// When the next tracked symbol goes stale if nothing arrives.
    fn next_deadline(&self) -> Option<Instant> {
        let stale_after = self.inner.stale_after;
        self.state()
            .symbols
            .values()
            .filter(|s| !s.stale)
            .filter_map(|s| s.last_tick.or(s.tracked_since))
            .map(|t| t + stale_after)
            .min()
    }

    /// Marks every tracked symbol silent for `stale_after` at `now` stale.
    /// Returns the symbols that just went stale.
    fn expire(&self, now: Instant) -> Vec<String> {
        let stale_after = self.inner.stale_after;
        let mut state = self.state();
        let mut expired = Vec::new();
        for (name, s) in &mut state.symbols {
            let Some(since) = s.last_tick.or(s.tracked_since) else {
                continue;
            };
            if !s.stale && now.saturating_duration_since(since) >= stale_after {
                s.stale = true;
                s.outages += 1;
                expired.push(name.clone());
            }
        }
        expired
    }

    /// Whether every tracked symbol is stale (nothing left to watch).
    fn all_stale(&self) -> bool {
        self.state()
            .symbols
            .values()
            .all(|s| s.stale || s.tracked_since.is_none())
    }
}

/// Publishes every quote of a feed while watching each symbol's liveness:
/// a symbol silent for `stale_after` has its latest rate re-published marked
/// stale; its next quote is published normally. Ends on `shutdown`, or when
/// the feed has ended and every symbol has been marked stale.
pub(crate) async fn supervise(
    publisher: RatePublisher,
    mut quotes: mpsc::Receiver<Quote>,
    source: &'static str,
    health: FeedHealth,
    shutdown: CancellationToken,
) {
    health.track(source, Instant::now());
    let mut feed_open = true;
    loop {
        let deadline = health.next_deadline();
        tokio::select! {
            // A quote already waiting proves liveness before any deadline
            // is looked at.
            biased;
            () = shutdown.cancelled() => return,
            quote = quotes.recv(), if feed_open => match quote {
                Some(quote) => {
                    let symbol = quote.symbol.clone();
                    if health.record_tick(&symbol, Instant::now()) {
                        tracing::info!(%symbol, feed = source, "feed resumed: no longer stale");
                    }
                    if let Err(err) = publisher.publish(quote, source).await {
                        tracing::warn!(%symbol, error = %err, "could not publish quote");
                    }
                }
                None => feed_open = false,
            },
            () = sleep_until(deadline) => {}
        }
        // Also after a quote: a feed that never pauses (one busy symbol)
        // must not keep another symbol's deadline from being noticed.
        if deadline.is_some_and(|d| d <= Instant::now()) {
            mark_stale(&publisher, source, &health).await;
        }
        if !feed_open && health.all_stale() {
            return;
        }
    }
}

/// Marks every symbol past its deadline stale and publishes its marker.
async fn mark_stale(publisher: &RatePublisher, source: &'static str, health: &FeedHealth) {
    for symbol in health.expire(Instant::now()) {
        tracing::warn!(
            %symbol,
            feed = source,
            stale_after = %humantime::format_duration(health.stale_after()),
            "no tick: marking the symbol stale"
        );
        if let Err(err) = publisher.publish_stale(&symbol).await {
            tracing::warn!(%symbol, error = %err, "could not publish the stale marker");
        }
    }
}

/// The staleness of a process without a feed: its rates come from another
/// process over the transport, and when that process stops (or its feed
/// does) nothing arrives. A symbol that receives no tick for `stale_after`
/// is marked stale here, in the local latest rate (so `GetLatestRate`,
/// REST, readiness and the order check all see it) without publishing
/// anything: the sequences belong to the publisher. The next tick it
/// publishes replaces the marked rate. Ends on `shutdown`.
pub(crate) async fn watch_arrivals(
    latest: LatestRates,
    health: FeedHealth,
    shutdown: CancellationToken,
) {
    health.track("transport", Instant::now());
    loop {
        let deadline = health.next_deadline();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = health.inner.revived.notified() => continue,
            () = sleep_until(deadline) => {}
        }
        for symbol in health.expire(Instant::now()) {
            if latest.mark_stale(&symbol, health.stale_after()) {
                tracing::warn!(
                    %symbol,
                    stale_after = %humantime::format_duration(health.stale_after()),
                    "no tick from the transport: marking the symbol stale"
                );
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_is_stale_before_tracking() {
        let health = FeedHealth::new(["BTC_JPY"], SECOND);
        assert_eq!(health.next_deadline(), None);
        assert!(health.expire(Instant::now() + SECOND * 10).is_empty());
        assert!(!health.is_stale("BTC_JPY"));
        assert_eq!(health.snapshot().source, None);
    }

    #[test]
    fn silent_symbols_go_stale_and_recover_on_the_next_tick() {
        let health = FeedHealth::new(["BTC_JPY", "ETH_JPY"], SECOND);
        let t0 = Instant::now();
        health.track("bitflyer", t0);
        assert_eq!(health.next_deadline(), Some(t0 + SECOND));
        assert!(!health.record_tick("BTC_JPY", t0 + SECOND / 2));
        // ETH_JPY never ticked: stale from when tracking began.
        assert_eq!(health.expire(t0 + SECOND), ["ETH_JPY"]);
        assert_eq!(health.next_deadline(), Some(t0 + SECOND * 3 / 2));
        assert!(
            health
                .expire(t0 + SECOND * 3 / 2 - Duration::from_nanos(1))
                .is_empty()
        );
        assert_eq!(health.expire(t0 + SECOND * 3 / 2), ["BTC_JPY"]);
        // Already stale: not reported again, and nothing left to wait for.
        assert!(health.expire(t0 + SECOND * 5).is_empty());
        assert_eq!(health.next_deadline(), None);
        assert!(health.all_stale());
        assert_eq!(health.stale_symbols(), ["BTC_JPY", "ETH_JPY"]);

        assert!(health.record_tick("BTC_JPY", t0 + SECOND * 6));
        assert!(!health.is_stale("BTC_JPY"));
        assert!(health.is_stale("ETH_JPY"));
        let snapshot = health.snapshot();
        assert_eq!(snapshot.source, Some("bitflyer"));
        let btc = &snapshot.symbols[0];
        assert_eq!(
            (btc.symbol.as_str(), btc.stale, btc.ticks, btc.outages),
            ("BTC_JPY", false, 2, 1)
        );
        assert!(btc.last_tick_age.is_some());
        assert_eq!(snapshot.symbols[1].last_tick_age, None);
    }

    #[test]
    fn counters_track_the_connection() {
        let health = FeedHealth::new(["BTC_JPY"], SECOND);
        assert_eq!(health.snapshot().connected, None);
        health.count(Counter::Connect);
        assert_eq!(health.snapshot().connected, Some(true));
        health.count(Counter::Malformed);
        health.count(Counter::Malformed);
        health.count(Counter::Disconnect);
        health.count(Counter::ConnectFailure);
        let snapshot = health.snapshot();
        assert_eq!(snapshot.connected, Some(false));
        assert_eq!(
            snapshot.counters,
            FeedCounters {
                connects: 1,
                disconnects: 1,
                connect_failures: 1,
                malformed: 2,
                ..Default::default()
            }
        );
    }
}

#[cfg(test)]
mod supervisor_tests {
    use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

    use fxcast_transport::{MemoryTransport, Transport};
    use rust_decimal::Decimal;

    use super::*;
    use crate::{LatestRates, SymbolTable, pricing::Markup};

    fn quote(symbol: &str, bid: i64) -> Quote {
        Quote {
            symbol: symbol.to_owned(),
            bid: Decimal::from(bid),
            ask: Decimal::from(bid + 10),
            source_time: SystemTime::UNIX_EPOCH,
        }
    }

    async fn until(mut done: impl FnMut() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_symbol_does_not_hide_a_silent_one() {
        let names = ["BTC_JPY".to_owned(), "ETH_JPY".to_owned()];
        let symbols = SymbolTable::build(&names, &Markup::None, &BTreeMap::new()).unwrap();
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::default());
        let latest = LatestRates::default();
        let publisher = RatePublisher::new(transport, latest.clone(), symbols.clone(), "t".into());
        let health = FeedHealth::new(symbols.names(), Duration::from_secs(1));
        let (tx, rx) = mpsc::channel(1000);
        let shutdown = CancellationToken::new();
        tokio::spawn(supervise(
            publisher,
            rx,
            "test",
            health.clone(),
            shutdown.clone(),
        ));

        tx.send(quote("ETH_JPY", 500_000)).await.unwrap();
        tx.send(quote("BTC_JPY", 10_000_000)).await.unwrap();
        until(|| latest.get("BTC_JPY").is_some()).await;
        // ETH_JPY falls silent while BTC_JPY quotes keep the channel full.
        for i in 0..500 {
            tx.try_send(quote("BTC_JPY", 10_000_000 + i)).unwrap();
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        until(|| latest.get("ETH_JPY").is_some_and(|t| t.rate.stale)).await;
        assert!(
            tx.capacity() < 1000,
            "ETH_JPY was marked only once the busy feed paused"
        );
        let eth = latest.get("ETH_JPY").unwrap();
        assert_eq!(
            (eth.sequence(), eth.bid, eth.rate.source.as_str()),
            (2, Decimal::from(500_000), "test")
        );
        assert!(health.is_stale("ETH_JPY"));
        until(|| tx.capacity() == 1000 && latest.get("BTC_JPY").unwrap().sequence() == 501).await;
        assert!(!health.is_stale("BTC_JPY"));
        shutdown.cancel();
    }
}
