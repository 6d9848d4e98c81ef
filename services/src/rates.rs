//! Published ticks and the latest-rate cache.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, OnceLock, RwLock},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use fxcast_proto::{frame::StreamRatesFrame, v1::Rate};
use fxcast_transport::Transport;
use prost::Message;
use rust_decimal::Decimal;

use crate::{Error, quote::quoted};

/// Topic on which a symbol's rates are published.
pub fn rates_topic(symbol: &str) -> String {
    format!("rates.{symbol}")
}

/// One published rate: the wire message, its parsed prices and the exact
/// bytes that went over the transport (shared by every subscriber).
#[derive(Debug, Clone)]
pub struct Tick {
    /// The rate as clients see it.
    pub rate: Rate,
    /// Parsed bid.
    pub bid: Decimal,
    /// Parsed ask.
    pub ask: Decimal,
    /// `rate` encoded as protobuf: the transport payload.
    pub payload: Bytes,
    /// When this process received (or published) it, on the monotonic clock.
    pub received_at: Instant,
    /// The `StreamRates` response carrying it, encoded on first use and
    /// then sent as is by every gRPC stream.
    pub frame: OnceLock<StreamRatesFrame>,
}

impl Tick {
    /// Decodes a transport payload.
    ///
    /// # Errors
    /// [`Error::Decode`] for bytes that are not a `Rate`, and
    /// [`Error::InvalidArgument`] for a rate whose prices are not decimals.
    pub fn decode(topic: &str, payload: Bytes) -> Result<Self, Error> {
        let rate = Rate::decode(payload.clone()).map_err(|source| Error::Decode {
            topic: topic.to_owned(),
            source,
        })?;
        let bid = parse_price("bid", &rate.bid)?;
        let ask = parse_price("ask", &rate.ask)?;
        Ok(Self {
            rate,
            bid,
            ask,
            payload,
            received_at: Instant::now(),
            frame: OnceLock::new(),
        })
    }

    /// The `StreamRates` response of this rate, encoded once.
    pub fn frame(&self) -> &StreamRatesFrame {
        self.frame
            .get_or_init(|| StreamRatesFrame::rate(&self.payload))
    }

    /// Decodes a payload read from the transport's shared storage
    /// ([`Transport::retained`]): its age counts from its `publish_time`,
    /// not from now, so a rate that waited there is as old as it really is
    /// (to the precision of the two machines' clocks).
    ///
    /// # Errors
    /// As [`Tick::decode`].
    pub fn decode_retained(topic: &str, payload: Bytes) -> Result<Self, Error> {
        let mut tick = Self::decode(topic, payload)?;
        let waited = tick
            .rate
            .publish_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .and_then(|published| SystemTime::now().duration_since(published).ok())
            .unwrap_or_default();
        // Past the monotonic clock's origin (a machine up for less than the
        // rate's age), a minute is older than any price check accepts.
        tick.received_at = tick
            .received_at
            .checked_sub(waited)
            .or_else(|| tick.received_at.checked_sub(Duration::from_secs(60)))
            .unwrap_or(tick.received_at);
        Ok(tick)
    }

    /// Symbol of the rate.
    pub fn symbol(&self) -> &str {
        &self.rate.symbol
    }

    /// Sequence of the rate.
    pub fn sequence(&self) -> u64 {
        self.rate.sequence
    }
}

impl crate::stream::Sequenced for Tick {
    fn symbol(&self) -> &str {
        Tick::symbol(self)
    }

    fn sequence(&self) -> u64 {
        Tick::sequence(self)
    }
}

/// Parses a decimal price string: positive, plain notation, at most 28 digits.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `field` and what is wrong.
pub fn parse_price(field: &str, value: &str) -> Result<Decimal, Error> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{field} is required (a decimal string such as \"151.234\")"
        )));
    }
    let price = Decimal::from_str(value)
        .ok()
        .filter(|_| {
            value
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+')
        })
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{field} {} is not a decimal number", quoted(value)))
        })?;
    if price <= Decimal::ZERO {
        return Err(Error::InvalidArgument(format!(
            "{field} must be positive, got {}",
            quoted(value)
        )));
    }
    Ok(price)
}

/// The most recent tick of every symbol. A cheap `Clone` handle.
///
/// Written by the rate publisher and by the transport ingest (so a process
/// without a feed still knows the latest rates); read by `GetLatestRate` and
/// the order price check.
///
/// With a transport that keeps the latest payloads in shared storage (the
/// Momento cache), [`LatestRates::fresh`] reads that storage when the local
/// copy is missing or older than `fresh_for`: a process that just started
/// on another machine can price orders at once.
#[derive(Debug, Clone, Default)]
pub struct LatestRates {
    // std RwLock: reads vastly outnumber writes and no lock is held across
    // an await.
    inner: Arc<RwLock<HashMap<String, Arc<Tick>>>>,
    shared: Option<SharedLatest>,
}

/// Where [`LatestRates::fresh`] looks when the local copy is not fresh.
#[derive(Debug, Clone)]
struct SharedLatest {
    transport: Arc<dyn Transport>,
    fresh_for: Duration,
    /// When shared storage was last read per symbol: a quiet symbol costs
    /// one read per `fresh_for` however often it is asked for (each read is
    /// a metered Momento operation).
    checked: Arc<std::sync::Mutex<HashMap<String, Instant>>>,
}

impl LatestRates {
    /// A cache that falls back on `transport`'s retained payloads when its
    /// own copy of a symbol is missing or older than `fresh_for`.
    pub fn with_shared(transport: Arc<dyn Transport>, fresh_for: Duration) -> Self {
        Self {
            inner: Arc::default(),
            shared: Some(SharedLatest {
                transport,
                fresh_for,
                checked: Arc::default(),
            }),
        }
    }

    /// The latest tick of `symbol`: the local copy when it is fresh,
    /// otherwise whichever is newer of it and the one in shared storage
    /// (which is then kept locally). Shared storage that cannot be read
    /// leaves the local copy.
    pub async fn fresh(&self, symbol: &str) -> Option<Arc<Tick>> {
        let local = self.get(symbol);
        let Some(shared) = &self.shared else {
            return local;
        };
        if local
            .as_ref()
            .is_some_and(|t| t.received_at.elapsed() <= shared.fresh_for)
        {
            return local;
        }
        {
            let mut checked = shared.checked.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match checked.get_mut(symbol) {
                Some(at) if now.duration_since(*at) < shared.fresh_for => return local,
                Some(at) => *at = now,
                None => {
                    checked.insert(symbol.to_owned(), now);
                }
            }
        }
        let topic = rates_topic(symbol);
        match shared.transport.retained(&topic).await {
            Ok(Some(payload)) => match Tick::decode_retained(&topic, payload) {
                Ok(tick) if tick.symbol() == symbol => {
                    self.update(Arc::new(tick));
                    self.get(symbol)
                }
                Ok(tick) => {
                    tracing::warn!(%topic, found = tick.symbol(), "retained rate of another symbol; ignored");
                    local
                }
                Err(err) => {
                    tracing::warn!(%topic, error = %err, "undecodable retained rate; ignored");
                    local
                }
            },
            Ok(None) => local,
            Err(err) => {
                tracing::warn!(%topic, error = %err, "cannot read the retained rate; using the local copy");
                local
            }
        }
    }

    /// Records `tick` unless a newer one of its symbol is already known.
    /// Returns whether it was recorded.
    pub fn update(&self, tick: Arc<Tick>) -> bool {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match map.get(tick.symbol()) {
            Some(current) if current.sequence() >= tick.sequence() => false,
            _ => {
                map.insert(tick.symbol().to_owned(), tick);
                true
            }
        }
    }

    /// Marks the latest rate of `symbol` stale in place (same sequence)
    /// when it arrived at least `silent_for` ago: no tick has arrived since,
    /// and this process has no feed to publish a stale marker with. The
    /// next newer tick replaces it. Returns whether a rate was marked.
    pub fn mark_stale(&self, symbol: &str, silent_for: Duration) -> bool {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        // Under the lock: a tick that arrived since the caller looked is
        // fresh, and stays so.
        let Some(current) = map
            .get_mut(symbol)
            .filter(|t| !t.rate.stale && t.received_at.elapsed() >= silent_for)
        else {
            return false;
        };
        let mut tick = Tick::clone(current);
        tick.rate.stale = true;
        tick.payload = Bytes::from(tick.rate.encode_to_vec());
        tick.frame = OnceLock::new();
        *current = Arc::new(tick);
        true
    }

    /// The latest tick of `symbol`, if any.
    pub fn get(&self, symbol: &str) -> Option<Arc<Tick>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(symbol)
            .cloned()
    }

    /// Every symbol's latest tick, in symbol order.
    pub fn all(&self) -> Vec<Arc<Tick>> {
        let mut all: Vec<_> = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.symbol().cmp(b.symbol()));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_must_be_plain_positive_decimals() {
        assert_eq!(
            parse_price("bid", "151.234").unwrap().to_string(),
            "151.234"
        );
        for bad in ["", "abc", "1e3", "-1", "0", "0.000", "NaN", "1,5"] {
            let err = parse_price("bid", bad).unwrap_err();
            assert!(err.to_string().starts_with("bid"), "{bad}: {err}");
        }
    }

    #[test]
    fn latest_keeps_the_newest_sequence() {
        let latest = LatestRates::default();
        let tick = |seq| {
            let rate = Rate {
                symbol: "USD_JPY".into(),
                bid: "1".into(),
                ask: "2".into(),
                sequence: seq,
                ..Default::default()
            };
            Arc::new(Tick::decode("t", Bytes::from(rate.encode_to_vec())).unwrap())
        };
        assert!(latest.update(tick(2)));
        assert!(!latest.update(tick(1)));
        assert_eq!(latest.get("USD_JPY").unwrap().sequence(), 2);
        assert!(latest.get("EUR_USD").is_none());
    }

    /// A transport whose shared storage holds one payload and counts reads.
    #[derive(Debug)]
    struct Stored {
        payload: Bytes,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl Transport for Stored {
        fn name(&self) -> &'static str {
            "stored"
        }

        fn publish<'a>(
            &'a self,
            _: &'a str,
            _: Bytes,
        ) -> fxcast_transport::BoxFuture<'a, Result<(), fxcast_transport::Error>> {
            unreachable!("not published to")
        }

        fn subscribe<'a>(
            &'a self,
            _: &'a str,
        ) -> fxcast_transport::BoxFuture<
            'a,
            Result<fxcast_transport::Subscription, fxcast_transport::Error>,
        > {
            unreachable!("not subscribed to")
        }

        fn local_subscribers(&self, _: &str) -> usize {
            0
        }

        fn retained<'a>(
            &'a self,
            topic: &'a str,
        ) -> fxcast_transport::BoxFuture<'a, Result<Option<Bytes>, fxcast_transport::Error>>
        {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let found = (topic == "rates.USD_JPY").then(|| self.payload.clone());
            Box::pin(std::future::ready(Ok(found)))
        }
    }

    fn encoded(sequence: u64, published: SystemTime) -> Bytes {
        let rate = Rate {
            symbol: "USD_JPY".into(),
            bid: "151.230".into(),
            ask: "151.238".into(),
            sequence,
            publish_time: Some(published.into()),
            ..Default::default()
        };
        Bytes::from(rate.encode_to_vec())
    }

    #[tokio::test]
    async fn a_rate_that_is_not_fresh_is_read_from_shared_storage() {
        let stored = Arc::new(Stored {
            payload: encoded(5, SystemTime::now() - Duration::from_secs(3)),
            reads: Default::default(),
        });
        let reads = || stored.reads.load(std::sync::atomic::Ordering::SeqCst);
        let latest = LatestRates::with_shared(stored.clone(), Duration::from_secs(1));

        // Nothing local: the stored rate, as old as it really is.
        let tick = latest.fresh("USD_JPY").await.expect("the stored rate");
        assert_eq!(tick.sequence(), 5);
        assert!(tick.received_at.elapsed() >= Duration::from_millis(2900));
        assert_eq!(latest.get("USD_JPY").unwrap().sequence(), 5);
        assert_eq!(reads(), 1);
        // Still not fresh, but read once per `fresh_for` at most.
        assert_eq!(latest.fresh("USD_JPY").await.unwrap().sequence(), 5);
        assert_eq!(reads(), 1);
        // A fresh local rate is used as is.
        let local = Tick::decode("rates.USD_JPY", encoded(6, SystemTime::now())).unwrap();
        latest.update(Arc::new(local));
        assert_eq!(latest.fresh("USD_JPY").await.unwrap().sequence(), 6);
        assert_eq!(reads(), 1);
        // Nothing stored: nothing.
        assert!(latest.fresh("EUR_USD").await.is_none());
        assert_eq!(reads(), 2);
        // Without shared storage, only the local copy.
        assert!(LatestRates::default().fresh("USD_JPY").await.is_none());
    }
}
