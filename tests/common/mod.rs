//! Helpers shared by the integration tests under `tests/`; a test file
//! includes this module with `mod common;` and uses what it needs.

use fxcast_proto::v1::{PlaceOrderRequest, Side};

/// A buy of 1000 USD_JPY at `price` on the rate `rate_id`, with no
/// tolerance.
pub(crate) fn buy_usd_jpy(client_order_id: &str, price: &str, rate_id: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        client_order_id: client_order_id.into(),
        symbol: "USD_JPY".into(),
        side: Side::Buy as i32,
        quantity: "1000".into(),
        price: price.into(),
        rate_id: rate_id.into(),
        tolerance: String::new(),
    }
}
