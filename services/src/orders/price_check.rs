//! The price check: is the live price still close enough to what the client
//! saw?
//!
//! Pure functions over exact decimals, so every boundary is tested without a
//! server. A buy is compared with the live ask, a sell with the live bid; the
//! boundaries are inclusive and the fill is at the live price.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, Instant},
};

use rust_decimal::Decimal;

use super::model::{OrderTerms, RejectReason, Side};
use crate::Tick;

/// How far the live price may be from the order price: a price distance or
/// basis points of the order price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerance {
    /// In price units, e.g. `0.010`.
    Price(Decimal),
    /// In basis points of the order price, e.g. `1.5bp`.
    BasisPoints(Decimal),
}

impl Tolerance {
    /// The tolerance in price units at `price` (exact; basis points are not
    /// rounded).
    pub fn at(&self, price: Decimal) -> Decimal {
        match self {
            Tolerance::Price(d) => *d,
            Tolerance::BasisPoints(bp) => (price * *bp / Decimal::from(10_000)).normalize(),
        }
    }
}

/// A tolerance string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a tolerance: {reason} (use a price like \"0.005\" or basis points like \"0.5bp\")"
)]
pub struct ParseToleranceError {
    input: String,
    reason: &'static str,
}

impl FromStr for Tolerance {
    type Err = ParseToleranceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseToleranceError {
            input: s.to_owned(),
            reason,
        };
        let (number, bp) = match s.strip_suffix("bp") {
            Some(n) => (n, true),
            None => (s, false),
        };
        let value = parse_plain_decimal(number).ok_or_else(|| err("not a plain decimal number"))?;
        Ok(if bp {
            Tolerance::BasisPoints(value)
        } else {
            Tolerance::Price(value)
        })
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Price(d) => write!(f, "{d}"),
            Tolerance::BasisPoints(bp) => write!(f, "{bp}bp"),
        }
    }
}

/// A non-negative decimal in plain notation (`"151.230"`, `"0.5"`): digits
/// with at most one point, no sign, no exponent, at most 28 significant
/// digits.
pub(crate) fn parse_plain_decimal(s: &str) -> Option<Decimal> {
    let plain = !s.is_empty()
        && s.len() <= 40
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().filter(|b| *b == b'.').count() <= 1
        && s.bytes().any(|b| b.is_ascii_digit());
    if !plain {
        return None;
    }
    Decimal::from_str_exact(s).ok()
}

/// How the live price is compared with the order price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PricePolicy {
    /// Reject when the live price is beyond tolerance either way (FX Global
    /// Code style: the client gets no free option on a favourable move).
    #[default]
    Symmetric,
    /// Reject only when the market moved against the client beyond
    /// tolerance; favourable moves always fill (at the better live price).
    AdverseOnly,
}

crate::words::words!(
    PricePolicy,
    "price policy",
    Symmetric => "symmetric",
    AdverseOnly => "adverse-only",
);

/// What the client's `rate_id` named.
#[derive(Debug, Clone, Copy)]
pub(crate) enum QuotedRate {
    /// The client gave none.
    NotGiven,
    /// No held rate of the symbol has that id.
    NotFound,
    /// A rate received this long ago.
    Found {
        /// Its age.
        age: Duration,
    },
}

impl QuotedRate {
    /// Looks `tick` up as the client's quoted rate, at `now`.
    pub(crate) fn of(tick: Option<&Tick>, now: Instant) -> Self {
        match tick {
            Some(t) => QuotedRate::Found {
                age: now.saturating_duration_since(t.received_at),
            },
            None => QuotedRate::NotFound,
        }
    }
}

/// The live rate the order is compared with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveRate<'a> {
    pub(crate) bid: Decimal,
    pub(crate) ask: Decimal,
    pub(crate) rate_id: &'a str,
    pub(crate) stale: bool,
    pub(crate) age: Duration,
}

impl<'a> LiveRate<'a> {
    pub(crate) fn of(tick: &'a Tick, now: Instant) -> Self {
        Self {
            bid: tick.bid,
            ask: tick.ask,
            rate_id: &tick.rate.rate_id,
            stale: tick.rate.stale,
            age: now.saturating_duration_since(tick.received_at),
        }
    }
}

/// The limits one check applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckLimits {
    pub(crate) policy: PricePolicy,
    /// The symbol's (server's) tolerance.
    pub(crate) tolerance: Tolerance,
    pub(crate) max_age: Duration,
}

/// The outcome of the price check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// `None`: go ahead and fill at `market_price`.
    pub(crate) reject: Option<RejectReason>,
    /// What was compared, for the order's message.
    pub(crate) message: String,
    pub(crate) market_price: Option<Decimal>,
    pub(crate) market_rate_id: Option<String>,
    pub(crate) applied_tolerance: Option<Decimal>,
}

impl Verdict {
    fn reject(reason: RejectReason, message: String) -> Self {
        Self {
            reject: Some(reason),
            message,
            market_price: None,
            market_rate_id: None,
            applied_tolerance: None,
        }
    }
}

/// Formats an age as seconds with millisecond precision: `2.503s`.
fn secs(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// Checks `terms` against the latest rate `live` of its symbol.
///
/// In order: a rate exists, is not marked stale and is within the max age
/// (STALE_PRICE); the quoted `rate_id`, if any, names a rate within the max
/// age (UNKNOWN_RATE); the live price is within tolerance (PRICE_MOVED).
pub(crate) fn check(
    terms: &OrderTerms,
    limits: &CheckLimits,
    live: Option<LiveRate<'_>>,
    quoted: QuotedRate,
) -> Verdict {
    let Some(live) = live else {
        return Verdict::reject(
            RejectReason::StalePrice,
            format!("no {} rate has been published yet", terms.symbol),
        );
    };
    stale(&terms.symbol, limits, &live)
        .or_else(|| unknown_quote(terms, limits, quoted))
        .unwrap_or_else(|| compare_prices(terms, limits, &live))
}

/// STALE_PRICE when the live rate is marked stale or older than the max age.
fn stale(symbol: &str, limits: &CheckLimits, live: &LiveRate<'_>) -> Option<Verdict> {
    let message = if live.stale {
        format!(
            "the {symbol} feed is marked down (latest rate {} is stale)",
            live.rate_id
        )
    } else if live.age > limits.max_age {
        format!(
            "the latest {symbol} rate {} is {} old, max age {}",
            live.rate_id,
            secs(live.age),
            humantime::format_duration(limits.max_age)
        )
    } else {
        return None;
    };
    Some(Verdict::reject(RejectReason::StalePrice, message))
}

/// UNKNOWN_RATE when the order quotes a `rate_id` that names no rate within
/// the max age.
fn unknown_quote(terms: &OrderTerms, limits: &CheckLimits, quoted: QuotedRate) -> Option<Verdict> {
    let (symbol, rate_id) = (&terms.symbol, terms.rate_id.as_ref()?);
    let max_age = humantime::format_duration(limits.max_age);
    let message = match quoted {
        QuotedRate::NotGiven | QuotedRate::NotFound => {
            format!("rate_id {rate_id} names no {symbol} rate published within the last {max_age}")
        }
        QuotedRate::Found { age } if age > limits.max_age => format!(
            "rate_id {rate_id} was published {} ago, more than the {symbol} max age {max_age}",
            secs(age)
        ),
        QuotedRate::Found { .. } => return None,
    };
    Some(Verdict::reject(RejectReason::UnknownRate, message))
}

/// Compares the order price with the live price of its side: PRICE_MOVED
/// beyond the tolerance under the policy, else a fill at the live price.
fn compare_prices(terms: &OrderTerms, limits: &CheckLimits, live: &LiveRate<'_>) -> Verdict {
    let tolerance = terms.tolerance.unwrap_or(limits.tolerance);
    let allowed = tolerance.at(terms.price);
    let shown_tolerance = match tolerance {
        Tolerance::Price(_) => allowed.to_string(),
        Tolerance::BasisPoints(bp) => format!("{allowed} ({bp}bp)"),
    };
    let market = match terms.side {
        Side::Buy => live.ask,
        Side::Sell => live.bid,
    };
    let quote = terms.side.quote_side();
    let price = terms.price;
    let distance = (market - price).abs();
    // How far the market moved against the client (negative: in its favour).
    let adverse = match terms.side {
        Side::Buy => market - price,
        Side::Sell => price - market,
    };
    let rejected = match limits.policy {
        PricePolicy::Symmetric => distance > allowed,
        PricePolicy::AdverseOnly => adverse > allowed,
    };
    let message = if rejected && limits.policy == PricePolicy::AdverseOnly {
        let direction = if market > price { "above" } else { "below" };
        format!(
            "{quote} {market} is {distance} {direction} {price}, against the {}er; tolerance {shown_tolerance} (adverse-only)",
            terms.side
        )
    } else {
        format!("{quote} {market} is {distance} from {price}, tolerance {shown_tolerance}")
    };
    Verdict {
        reject: rejected.then_some(RejectReason::PriceMoved),
        message,
        market_price: Some(market),
        market_rate_id: Some(live.rate_id.to_owned()),
        applied_tolerance: Some(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn terms(side: Side, price: &str) -> OrderTerms {
        OrderTerms {
            client_order_id: "c1".into(),
            symbol: "USD_JPY".into(),
            side,
            quantity: d("1000"),
            price: d(price),
            rate_id: None,
            tolerance: None,
        }
    }

    fn live(bid: &str, ask: &str) -> LiveRate<'static> {
        LiveRate {
            bid: d(bid),
            ask: d(ask),
            rate_id: "USD_JPY-r-7",
            stale: false,
            age: Duration::from_millis(10),
        }
    }

    fn limits(policy: PricePolicy) -> CheckLimits {
        CheckLimits {
            policy,
            tolerance: Tolerance::Price(d("0.010")),
            max_age: Duration::from_secs(2),
        }
    }

    /// The price of every order `run` checks.
    const PRICE: &str = "151.230";

    /// Checks an order at [`PRICE`] against the live `bid`/`ask`.
    fn run(policy: PricePolicy, side: Side, bid: &str, ask: &str) -> Verdict {
        against(&terms(side, PRICE), &limits(policy), bid, ask)
    }

    /// Checks `terms`, quoting no rate, against the live `bid`/`ask`.
    fn against(terms: &OrderTerms, limits: &CheckLimits, bid: &str, ask: &str) -> Verdict {
        check(terms, limits, Some(live(bid, ask)), QuotedRate::NotGiven)
    }

    #[test]
    fn symmetric_rejects_moves_beyond_tolerance_either_way() {
        let v = run(PricePolicy::Symmetric, Side::Buy, "151.237", "151.245");
        assert_eq!(v.reject, Some(RejectReason::PriceMoved));
        assert_eq!(
            v.message,
            "ask 151.245 is 0.015 from 151.230, tolerance 0.010"
        );
        assert_eq!(v.market_price, Some(d("151.245")));
        let v = run(PricePolicy::Symmetric, Side::Buy, "151.207", "151.215");
        assert_eq!(
            v.reject,
            Some(RejectReason::PriceMoved),
            "favourable moves count too"
        );
        let v = run(PricePolicy::Symmetric, Side::Sell, "151.219", "151.227");
        assert_eq!(v.reject, Some(RejectReason::PriceMoved));
        assert_eq!(
            v.message,
            "bid 151.219 is 0.011 from 151.230, tolerance 0.010"
        );
    }

    #[test]
    fn boundaries_are_inclusive() {
        for (side, bid, ask) in [
            (Side::Buy, "151.232", "151.240"),
            (Side::Buy, "151.212", "151.220"),
            (Side::Sell, "151.240", "151.248"),
            (Side::Sell, "151.220", "151.228"),
        ] {
            let v = run(PricePolicy::Symmetric, side, bid, ask);
            assert_eq!(v.reject, None, "{side:?} {bid}/{ask}: {}", v.message);
            assert_eq!(v.applied_tolerance, Some(d("0.010")));
        }
        let v = run(PricePolicy::Symmetric, Side::Buy, "151.233", "151.241");
        assert_eq!(v.reject, Some(RejectReason::PriceMoved));
    }

    #[test]
    fn adverse_only_fills_favourable_moves_of_any_size() {
        let v = run(PricePolicy::AdverseOnly, Side::Buy, "151.100", "151.108");
        assert_eq!(v.reject, None, "{}", v.message);
        assert_eq!(v.market_price, Some(d("151.108")));
        let v = run(PricePolicy::AdverseOnly, Side::Sell, "151.400", "151.408");
        assert_eq!(v.reject, None, "{}", v.message);
        let v = run(PricePolicy::AdverseOnly, Side::Buy, "151.233", "151.241");
        assert_eq!(v.reject, Some(RejectReason::PriceMoved));
        assert_eq!(
            v.message,
            "ask 151.241 is 0.011 above 151.230, against the buyer; tolerance 0.010 (adverse-only)"
        );
        let v = run(PricePolicy::AdverseOnly, Side::Sell, "151.219", "151.227");
        assert_eq!(v.reject, Some(RejectReason::PriceMoved));
        assert!(
            v.message.contains("below 151.230, against the seller"),
            "{}",
            v.message
        );
        let v = run(PricePolicy::AdverseOnly, Side::Sell, "151.220", "151.228");
        assert_eq!(v.reject, None, "inclusive: {}", v.message);
    }

    #[test]
    fn basis_point_tolerance_is_exact_at_the_order_price() {
        let mut t = terms(Side::Buy, "100.000");
        let l = CheckLimits {
            tolerance: Tolerance::BasisPoints(d("1")),
            ..limits(PricePolicy::Symmetric)
        };
        let v = against(&t, &l, "99.990", "100.010");
        assert_eq!(v.reject, None, "{}", v.message);
        assert_eq!(v.applied_tolerance, Some(d("0.01")));
        let v = against(&t, &l, "99.990", "100.011");
        assert_eq!(v.reject, Some(RejectReason::PriceMoved));
        assert_eq!(
            v.message,
            "ask 100.011 is 0.011 from 100.000, tolerance 0.01 (1bp)"
        );
        t.tolerance = Some(Tolerance::Price(d("0.005")));
        let v = against(&t, &l, "99.990", "100.006");
        assert_eq!(
            v.reject,
            Some(RejectReason::PriceMoved),
            "client's tighter tolerance wins"
        );
    }

    #[test]
    fn stale_and_missing_rates_are_rejected() {
        let t = terms(Side::Buy, "151.230");
        let l = limits(PricePolicy::Symmetric);
        let v = check(&t, &l, None, QuotedRate::NotGiven);
        assert_eq!(v.reject, Some(RejectReason::StalePrice));
        assert_eq!(v.message, "no USD_JPY rate has been published yet");
        let mut r = live("151.222", "151.230");
        r.age = Duration::from_millis(2001);
        let v = check(&t, &l, Some(r), QuotedRate::NotGiven);
        assert_eq!(v.reject, Some(RejectReason::StalePrice));
        assert_eq!(
            v.message,
            "the latest USD_JPY rate USD_JPY-r-7 is 2.001s old, max age 2s"
        );
        r.age = Duration::from_secs(2);
        assert_eq!(
            check(&t, &l, Some(r), QuotedRate::NotGiven).reject,
            None,
            "inclusive"
        );
        r.stale = true;
        let v = check(&t, &l, Some(r), QuotedRate::NotGiven);
        assert_eq!(v.reject, Some(RejectReason::StalePrice));
        assert!(v.message.contains("marked down"), "{}", v.message);
    }

    #[test]
    fn quoted_rate_ids_must_be_recent() {
        let mut t = terms(Side::Buy, "151.230");
        t.rate_id = Some("USD_JPY-r-3".into());
        let l = limits(PricePolicy::Symmetric);
        let ok = QuotedRate::Found {
            age: Duration::from_secs(2),
        };
        assert_eq!(
            check(&t, &l, Some(live("151.222", "151.230")), ok).reject,
            None
        );
        let old = QuotedRate::Found {
            age: Duration::from_millis(2500),
        };
        let v = check(&t, &l, Some(live("151.222", "151.230")), old);
        assert_eq!(v.reject, Some(RejectReason::UnknownRate));
        assert_eq!(
            v.message,
            "rate_id USD_JPY-r-3 was published 2.500s ago, more than the USD_JPY max age 2s"
        );
        let v = check(
            &t,
            &l,
            Some(live("151.222", "151.230")),
            QuotedRate::NotFound,
        );
        assert_eq!(v.reject, Some(RejectReason::UnknownRate));
    }

    #[test]
    fn tolerances_and_policies_parse() {
        assert_eq!(
            "0.010".parse::<Tolerance>().unwrap(),
            Tolerance::Price(d("0.010"))
        );
        assert_eq!(
            "1.5bp".parse::<Tolerance>().unwrap(),
            Tolerance::BasisPoints(d("1.5"))
        );
        assert_eq!("1.5bp".parse::<Tolerance>().unwrap().to_string(), "1.5bp");
        for bad in ["", "-1", "1e3", "abc", "bp", "1.2.3", " 1", "+1"] {
            assert!(bad.parse::<Tolerance>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "adverse-only".parse::<PricePolicy>().unwrap(),
            PricePolicy::AdverseOnly
        );
        assert!("lenient".parse::<PricePolicy>().is_err());
    }
}
