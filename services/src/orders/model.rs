//! Orders as the domain sees them, and their wire (protobuf) forms.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fxcast_proto::v1 as pb;
use rust_decimal::Decimal;

use super::price_check::Tolerance;

/// Direction of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Buy the base currency: compared with the ask.
    Buy,
    /// Sell the base currency: compared with the bid.
    Sell,
}

impl Side {
    /// `"BUY"` or `"SELL"`: the journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "BUY" => Some(Side::Buy),
            "SELL" => Some(Side::Sell),
            _ => None,
        }
    }

    /// The side of the quote this order deals on: `"ask"` or `"bid"`.
    pub fn quote_side(self) -> &'static str {
        match self {
            Side::Buy => "ask",
            Side::Sell => "bid",
        }
    }

    fn to_proto(self) -> pb::Side {
        match self {
            Side::Buy => pb::Side::Buy,
            Side::Sell => pb::Side::Sell,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        })
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Sent to an LP that needs a durable intent record; outcome not known yet.
    Pending,
    /// Filled.
    Filled,
    /// Not filled.
    Rejected,
}

impl OrderStatus {
    /// The journal's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Filled => "FILLED",
            OrderStatus::Rejected => "REJECTED",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(OrderStatus::Pending),
            "FILLED" => Some(OrderStatus::Filled),
            "REJECTED" => Some(OrderStatus::Rejected),
            _ => None,
        }
    }

    pub(crate) fn from_proto(status: pb::OrderStatus) -> Option<Self> {
        match status {
            pb::OrderStatus::Unspecified => None,
            pb::OrderStatus::Pending => Some(OrderStatus::Pending),
            pb::OrderStatus::Filled => Some(OrderStatus::Filled),
            pb::OrderStatus::Rejected => Some(OrderStatus::Rejected),
        }
    }

    fn to_proto(self) -> pb::OrderStatus {
        match self {
            OrderStatus::Pending => pb::OrderStatus::Pending,
            OrderStatus::Filled => pb::OrderStatus::Filled,
            OrderStatus::Rejected => pb::OrderStatus::Rejected,
        }
    }
}

/// Why an order was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The live price is further from the order price than the tolerance.
    PriceMoved,
    /// The live price is too old, its feed is down, or there is none.
    StalePrice,
    /// `rate_id` names no rate of the symbol within its max age.
    UnknownRate,
    /// The liquidity provider declined.
    LpRejected,
    /// The client_order_id was used for different content.
    DuplicateOrderId,
}

impl RejectReason {
    /// The journal's spelling (the enum name without prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::PriceMoved => "PRICE_MOVED",
            RejectReason::StalePrice => "STALE_PRICE",
            RejectReason::UnknownRate => "UNKNOWN_RATE",
            RejectReason::LpRejected => "LP_REJECTED",
            RejectReason::DuplicateOrderId => "DUPLICATE_ORDER_ID",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "PRICE_MOVED" => Some(RejectReason::PriceMoved),
            "STALE_PRICE" => Some(RejectReason::StalePrice),
            "UNKNOWN_RATE" => Some(RejectReason::UnknownRate),
            "LP_REJECTED" => Some(RejectReason::LpRejected),
            "DUPLICATE_ORDER_ID" => Some(RejectReason::DuplicateOrderId),
            _ => None,
        }
    }

    /// The FIX `OrdRejReason` (tag 103) a FIX gateway reports for this
    /// reason; docs/ORDERS.md explains the choices.
    pub fn fix_ord_rej_reason(self) -> u32 {
        match self {
            RejectReason::PriceMoved => 16,  // Price exceeds current price band
            RejectReason::StalePrice => 19,  // Reference price not available
            RejectReason::UnknownRate => 99, // Other (Text names the rate_id)
            RejectReason::LpRejected => 0,   // Broker / exchange option
            RejectReason::DuplicateOrderId => 6, // Duplicate order
        }
    }

    fn to_proto(self) -> pb::RejectReason {
        match self {
            RejectReason::PriceMoved => pb::RejectReason::PriceMoved,
            RejectReason::StalePrice => pb::RejectReason::StalePrice,
            RejectReason::UnknownRate => pb::RejectReason::UnknownRate,
            RejectReason::LpRejected => pb::RejectReason::LpRejected,
            RejectReason::DuplicateOrderId => pb::RejectReason::DuplicateOrderId,
        }
    }
}

/// What the client asked for: the content that makes two requests with one
/// `client_order_id` "the same order".
#[derive(Debug, Clone)]
pub struct OrderTerms {
    /// The client's id of the order.
    pub client_order_id: String,
    /// Symbol.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Quantity of the base currency.
    pub quantity: Decimal,
    /// The price the client saw.
    pub price: Decimal,
    /// The rate the price came from, if the client said.
    pub rate_id: Option<String>,
    /// A tighter tolerance than the symbol's, if the client asked for one.
    pub tolerance: Option<Tolerance>,
}

impl OrderTerms {
    /// The first field in which `other` differs from these terms, as
    /// `"quantity 1000 (now 2000)"`; `None` when they are the same order.
    /// Decimals compare by value, so `"1000"` and `"1000.0"` are the same.
    pub fn difference(&self, other: &OrderTerms) -> Option<String> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let tol = |v: &Option<Tolerance>| v.map_or_else(|| "(none)".into(), |t| t.to_string());
        if self.symbol != other.symbol {
            Some(format!("symbol {} (now {})", self.symbol, other.symbol))
        } else if self.side != other.side {
            Some(format!("side {} (now {})", self.side, other.side))
        } else if self.quantity != other.quantity {
            Some(format!(
                "quantity {} (now {})",
                self.quantity, other.quantity
            ))
        } else if self.price != other.price {
            Some(format!("price {} (now {})", self.price, other.price))
        } else if self.rate_id != other.rate_id {
            Some(format!(
                "rate_id {} (now {})",
                opt(&self.rate_id),
                opt(&other.rate_id)
            ))
        } else if self.tolerance != other.tolerance {
            Some(format!(
                "tolerance {} (now {})",
                tol(&self.tolerance),
                tol(&other.tolerance)
            ))
        } else {
            None
        }
    }
}

/// One order as journalled: the request, its outcome and what it was
/// compared with.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    /// Server-assigned id; empty only on a DUPLICATE_ORDER_ID answer, which
    /// is not an order of its own.
    pub order_id: String,
    /// Whose order it is.
    pub subject: String,
    /// What was asked for.
    pub terms: OrderTerms,
    /// Where it stands.
    pub status: OrderStatus,
    /// Why it was rejected.
    pub reject_reason: Option<RejectReason>,
    /// What happened, with the numbers.
    pub message: String,
    /// The live price compared with (ask for a buy, bid for a sell).
    pub market_price: Option<Decimal>,
    /// The `rate_id` of that live price.
    pub market_rate_id: Option<String>,
    /// The tolerance applied, in price units.
    pub applied_tolerance: Option<Decimal>,
    /// The fill price.
    pub fill_price: Option<Decimal>,
    /// The liquidity provider that handled it (empty when it never got there).
    pub liquidity_provider: String,
    /// The LP's execution id.
    pub lp_execution_id: Option<String>,
    /// When the server received it.
    pub created_at: SystemTime,
    /// When it reached its current status.
    pub updated_at: SystemTime,
}

impl OrderRecord {
    /// Whether the order has its final status.
    pub fn is_final(&self) -> bool {
        self.status != OrderStatus::Pending
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Order {
        let dec = |v: &Option<Decimal>| v.map(|d| d.to_string()).unwrap_or_default();
        pb::Order {
            order_id: self.order_id.clone(),
            client_order_id: self.terms.client_order_id.clone(),
            subject: self.subject.clone(),
            symbol: self.terms.symbol.clone(),
            side: self.terms.side.to_proto() as i32,
            quantity: self.terms.quantity.to_string(),
            price: self.terms.price.to_string(),
            rate_id: self.terms.rate_id.clone().unwrap_or_default(),
            tolerance: self
                .terms
                .tolerance
                .map(|t| t.to_string())
                .unwrap_or_default(),
            status: self.status.to_proto() as i32,
            reject_reason: self
                .reject_reason
                .map_or(pb::RejectReason::Unspecified, RejectReason::to_proto)
                as i32,
            message: self.message.clone(),
            fill_price: dec(&self.fill_price),
            liquidity_provider: self.liquidity_provider.clone(),
            lp_execution_id: self.lp_execution_id.clone().unwrap_or_default(),
            market_price: dec(&self.market_price),
            market_rate_id: self.market_rate_id.clone().unwrap_or_default(),
            applied_tolerance: dec(&self.applied_tolerance),
            created_at: Some(self.created_at.into()),
            updated_at: Some(self.updated_at.into()),
        }
    }
}

/// Microseconds since the Unix epoch: how the journal stores times.
pub(crate) fn unix_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Now, at the journal's precision (whole microseconds), so an order reads
/// back exactly as it was answered.
pub(crate) fn now() -> SystemTime {
    from_unix_micros(unix_micros(SystemTime::now()))
}

/// Inverse of [`unix_micros`].
pub(crate) fn from_unix_micros(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new order id: a ULID (48-bit millisecond time, 80 random bits, Crockford
/// base32), so ids sort by creation time and never repeat across restarts.
pub(crate) fn new_order_id(now: SystemTime, random: u128) -> String {
    let millis = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) & ((1 << 48) - 1);
    let value = (millis << 80) | (random & ((1 << 80) - 1));
    (0..26)
        .map(|i| CROCKFORD[((value >> (125 - i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> OrderTerms {
        OrderTerms {
            client_order_id: "a".into(),
            symbol: "USD_JPY".into(),
            side: Side::Buy,
            quantity: Decimal::from(1000),
            price: "151.230".parse().unwrap(),
            rate_id: None,
            tolerance: None,
        }
    }

    #[test]
    fn same_values_in_other_spellings_are_the_same_order() {
        let mut other = terms();
        other.quantity = "1000.00".parse().unwrap();
        other.price = "151.23".parse().unwrap();
        assert_eq!(terms().difference(&other), None);
        other.quantity = Decimal::from(2000);
        assert_eq!(
            terms().difference(&other).unwrap(),
            "quantity 1000 (now 2000)"
        );
        let mut other = terms();
        other.tolerance = Some("0.5bp".parse().unwrap());
        assert_eq!(
            terms().difference(&other).unwrap(),
            "tolerance (none) (now 0.5bp)"
        );
    }

    #[test]
    fn order_ids_are_ulids_sorted_by_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let a = new_order_id(t, u128::MAX);
        let b = new_order_id(t + Duration::from_millis(1), 0);
        assert_eq!(a.len(), 26);
        assert!(a < b, "{a} !< {b}");
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)));
        assert_ne!(new_order_id(t, 1), new_order_id(t, 2));
    }

    #[test]
    fn micros_round_trip() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(from_unix_micros(unix_micros(t)), t);
    }

    #[test]
    fn journal_spellings_round_trip() {
        for r in [
            RejectReason::PriceMoved,
            RejectReason::StalePrice,
            RejectReason::UnknownRate,
            RejectReason::LpRejected,
            RejectReason::DuplicateOrderId,
        ] {
            assert_eq!(RejectReason::parse(r.as_str()), Some(r));
        }
        for s in [
            OrderStatus::Pending,
            OrderStatus::Filled,
            OrderStatus::Rejected,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        for s in [Side::Buy, Side::Sell] {
            assert_eq!(Side::parse(s.as_str()), Some(s));
        }
    }
}
