//! Published ticks and the latest-rate cache.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, RwLock},
    time::Instant,
};

use bytes::Bytes;
use fxcast_proto::v1::Rate;
use prost::Message;
use rust_decimal::Decimal;

use crate::Error;

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
        })
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
            Error::InvalidArgument(format!("{field} {value:?} is not a decimal number"))
        })?;
    if price <= Decimal::ZERO {
        return Err(Error::InvalidArgument(format!(
            "{field} must be positive, got {value}"
        )));
    }
    Ok(price)
}

/// The most recent tick of every symbol. A cheap `Clone` handle.
///
/// Written by the rate publisher and by the transport ingest (so a process
/// without a feed still knows the latest rates); read by `GetLatestRate` and
/// the order price check.
#[derive(Debug, Clone, Default)]
pub struct LatestRates {
    // std RwLock: reads vastly outnumber writes and no lock is held across
    // an await.
    inner: Arc<RwLock<HashMap<String, Arc<Tick>>>>,
}

impl LatestRates {
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
}
