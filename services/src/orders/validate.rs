//! Request validation. Every message names the field and the problem; an
//! invalid request is answered with `INVALID_ARGUMENT` and never journalled.

use fxcast_proto::v1::{PlaceOrderRequest, Side as PbSide};
use rust_decimal::Decimal;

use super::{
    model::{OrderTerms, Side},
    price_check::{Tolerance, parse_plain_decimal},
};
use crate::{Error, SymbolSpec, SymbolTable, quote::quoted};

/// Longest accepted `rate_id`.
const MAX_RATE_ID_LEN: usize = 128;

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// Checks `client_order_id`: 1–64 characters of `[A-Za-z0-9._-]`.
///
/// # Errors
/// [`Error::InvalidArgument`] saying what is wrong.
pub(crate) fn client_order_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(invalid(
            "client_order_id is required (1-64 characters of A-Z, a-z, 0-9, '.', '_', '-')".into(),
        ));
    }
    if id.len() > 64 {
        return Err(invalid(format!(
            "client_order_id is {} characters long, at most 64 are allowed",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "client_order_id {} contains {c:?}: use only A-Z, a-z, 0-9, '.', '_', '-'",
            quoted(id)
        )));
    }
    Ok(())
}

/// Checks a `PlaceOrder` request against the symbol conventions and returns
/// its terms.
///
/// # Errors
/// [`Error::InvalidArgument`] (or [`Error::UnknownSymbol`]) for the first
/// invalid field, naming it.
pub(crate) fn place_order(
    request: &PlaceOrderRequest,
    symbols: &SymbolTable,
) -> Result<OrderTerms, Error> {
    client_order_id(&request.client_order_id)?;
    let spec = symbol(&request.symbol, symbols)?;
    let side = side(request.side)?;
    let quantity = quantity(&request.quantity, spec)?;
    let price = price(&request.price, spec)?;
    let tolerance = tolerance(&request.tolerance, price, spec)?;
    let rate_id = rate_id(&request.rate_id, &spec.symbol)?;
    Ok(OrderTerms {
        client_order_id: request.client_order_id.clone(),
        symbol: spec.symbol.clone(),
        side,
        quantity,
        price,
        rate_id,
        tolerance,
    })
}

/// The conventions of `symbol`, which must be one this server prices.
fn symbol<'a>(symbol: &str, symbols: &'a SymbolTable) -> Result<&'a SymbolSpec, Error> {
    if symbol.is_empty() {
        return Err(invalid("symbol is required, e.g. \"USD_JPY\"".into()));
    }
    symbols.get(symbol)
}

fn side(side: i32) -> Result<Side, Error> {
    match PbSide::try_from(side) {
        Ok(PbSide::Buy) => Ok(Side::Buy),
        Ok(PbSide::Sell) => Ok(Side::Sell),
        Ok(PbSide::Unspecified) => Err(invalid("side is required: SIDE_BUY or SIDE_SELL".into())),
        Err(_) => Err(invalid(format!(
            "side {side} is not a valid side: use SIDE_BUY or SIDE_SELL"
        ))),
    }
}

/// A positive decimal in plain notation.
fn decimal_field(field: &str, value: &str, example: &str) -> Result<Decimal, Error> {
    if value.is_empty() {
        return Err(invalid(format!(
            "{field} is required (a decimal string such as \"{example}\")"
        )));
    }
    let number = parse_plain_decimal(value).ok_or_else(|| {
        invalid(format!(
            "{field} {} is not a plain decimal number such as \"{example}\"",
            quoted(value)
        ))
    })?;
    if number <= Decimal::ZERO {
        return Err(invalid(format!("{field} must be positive, got {value}")));
    }
    Ok(number)
}

/// A quantity on the symbol's lot size, within its minimum and maximum.
fn quantity(value: &str, spec: &SymbolSpec) -> Result<Decimal, Error> {
    let quantity = decimal_field("quantity", value, "1000")?;
    let conventions = &spec.orders;
    let symbol = &spec.symbol;
    if !(quantity % conventions.lot_size).is_zero() {
        return Err(invalid(format!(
            "quantity {quantity} is not a multiple of the {symbol} lot size {}",
            conventions.lot_size
        )));
    }
    if quantity < conventions.min_quantity {
        return Err(invalid(format!(
            "quantity {quantity} is below the {symbol} minimum {}",
            conventions.min_quantity
        )));
    }
    if quantity > conventions.max_quantity {
        return Err(invalid(format!(
            "quantity {quantity} is above the {symbol} maximum {}",
            conventions.max_quantity
        )));
    }
    Ok(quantity)
}

/// A price on the symbol's tick size.
fn price(value: &str, spec: &SymbolSpec) -> Result<Decimal, Error> {
    let price = decimal_field("price", value, "151.230")?;
    let tick = spec.tick_size();
    if !(price % tick).is_zero() {
        return Err(invalid(format!(
            "price {price} is not on the {} tick size {tick}",
            spec.symbol
        )));
    }
    Ok(price)
}

/// The client's own tolerance, if it asked for one: never looser than the
/// symbol's at `price`.
fn tolerance(text: &str, price: Decimal, spec: &SymbolSpec) -> Result<Option<Tolerance>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    let requested: Tolerance = text.parse().map_err(|_| {
        invalid(format!(
            "tolerance {} is not a tolerance: not a plain decimal number (use a price like \"0.005\" or basis points like \"0.5bp\")",
            quoted(text)
        ))
    })?;
    let server = spec.orders.tolerance;
    let (asked, max) = (requested.at(price), server.at(price));
    if asked > max {
        let shown = |t: Tolerance, at: Decimal| match t {
            Tolerance::Price(_) => at.to_string(),
            Tolerance::BasisPoints(bp) => format!("{bp}bp ({at} at price {price})"),
        };
        return Err(invalid(format!(
            "tolerance {} is above the {} maximum {}: a client may ask for a tighter tolerance, never a looser one",
            shown(requested, asked),
            spec.symbol,
            shown(server, max)
        )));
    }
    Ok(Some(requested))
}

/// The `rate_id` the client quoted, if any: a printable id of a `symbol` rate.
fn rate_id(id: &str, symbol: &str) -> Result<Option<String>, Error> {
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > MAX_RATE_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "rate_id {} is not a rate id (at most {MAX_RATE_ID_LEN} printable characters, e.g. \"{symbol}-1a2b3c4d-42\")",
            quoted(id)
        )));
    }
    if !id
        .strip_prefix(symbol)
        .is_some_and(|rest| rest.starts_with('-'))
    {
        return Err(invalid(format!(
            "rate_id {} is not a {symbol} rate (it should start with \"{symbol}-\")",
            quoted(id)
        )));
    }
    Ok(Some(id.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pricing::Markup;

    fn table() -> SymbolTable {
        SymbolTable::build(
            &["USD_JPY".into(), "BTC_JPY".into()],
            &Markup::None,
            &BTreeMap::new(),
        )
        .unwrap()
    }

    fn request() -> PlaceOrderRequest {
        PlaceOrderRequest {
            client_order_id: "c-1".into(),
            symbol: "USD_JPY".into(),
            side: PbSide::Buy as i32,
            quantity: "1000".into(),
            price: "151.230".into(),
            rate_id: String::new(),
            tolerance: String::new(),
        }
    }

    fn error(change: impl FnOnce(&mut PlaceOrderRequest)) -> String {
        let mut r = request();
        change(&mut r);
        place_order(&r, &table()).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_request_becomes_terms() {
        let terms = place_order(&request(), &table()).unwrap();
        assert_eq!(
            (terms.side, terms.quantity, terms.price.to_string()),
            (Side::Buy, Decimal::from(1000), "151.230".into())
        );
        let mut r = request();
        r.symbol = "BTC_JPY".into();
        r.quantity = "0.015".into();
        r.price = "10000123".into();
        r.tolerance = "5bp".into();
        r.rate_id = "BTC_JPY-abc-9".into();
        let terms = place_order(&r, &table()).unwrap();
        assert_eq!(
            terms.tolerance,
            Some(Tolerance::BasisPoints(Decimal::from(5)))
        );
    }

    #[test]
    fn every_field_is_checked_with_a_precise_message() {
        type Change = Box<dyn FnOnce(&mut PlaceOrderRequest)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|r| r.client_order_id.clear()),
                "client_order_id is required",
            ),
            (
                Box::new(|r| r.client_order_id = "x".repeat(65)),
                "client_order_id is 65 characters long, at most 64",
            ),
            (
                Box::new(|r| r.client_order_id = "a b".into()),
                "client_order_id \"a b\" contains ' '",
            ),
            (Box::new(|r| r.symbol.clear()), "symbol is required"),
            (
                Box::new(|r| r.symbol = "EUR_GBP".into()),
                "unknown symbol \"EUR_GBP\"",
            ),
            (Box::new(|r| r.side = 0), "side is required"),
            (Box::new(|r| r.side = 9), "side 9 is not a valid side"),
            (Box::new(|r| r.quantity.clear()), "quantity is required"),
            (
                Box::new(|r| r.quantity = "1e3".into()),
                "quantity \"1e3\" is not a plain decimal",
            ),
            (
                Box::new(|r| r.quantity = "0".into()),
                "quantity must be positive, got 0",
            ),
            (
                Box::new(|r| r.quantity = "-5".into()),
                "quantity \"-5\" is not a plain decimal",
            ),
            (
                Box::new(|r| r.quantity = "1000.5".into()),
                "quantity 1000.5 is not a multiple of the USD_JPY lot size 1",
            ),
            (
                Box::new(|r| r.quantity = "10000001".into()),
                "quantity 10000001 is above the USD_JPY maximum 10000000",
            ),
            (Box::new(|r| r.price.clear()), "price is required"),
            (
                Box::new(|r| r.price = "0.000".into()),
                "price must be positive, got 0.000",
            ),
            (
                Box::new(|r| r.price = "151.2345".into()),
                "price 151.2345 is not on the USD_JPY tick size 0.001",
            ),
            (
                Box::new(|r| r.tolerance = "wide".into()),
                "tolerance \"wide\" is not a tolerance",
            ),
            (
                Box::new(|r| r.tolerance = "0.011".into()),
                "tolerance 0.011 is above the USD_JPY maximum 0.010",
            ),
            (
                Box::new(|r| r.tolerance = "1bp".into()),
                "tolerance 1bp (0.015123 at price 151.230) is above the USD_JPY maximum 0.010",
            ),
            (
                Box::new(|r| r.rate_id = "EUR_USD-x-1".into()),
                "rate_id \"EUR_USD-x-1\" is not a USD_JPY rate",
            ),
            (
                Box::new(|r| r.rate_id = "USD_JPY x".into()),
                "rate_id \"USD_JPY x\" is not a rate id",
            ),
        ];
        for (change, expected) in cases {
            let err = error(change);
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
        let err = error(|r| {
            r.symbol = "BTC_JPY".into();
            r.price = "10000000".into();
            r.quantity = "0.0005".into();
        });
        assert!(
            err.contains("quantity 0.0005 is not a multiple of the BTC_JPY lot size 0.001"),
            "{err}"
        );
    }

    #[test]
    fn tighter_or_equal_tolerances_are_accepted() {
        for ok in ["0.010", "0.01", "0", "0.5bp"] {
            let mut r = request();
            r.tolerance = ok.into();
            assert!(place_order(&r, &table()).is_ok(), "{ok}");
        }
    }
}
