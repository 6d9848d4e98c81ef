//! Per-symbol order conventions: lot size, quantity limits, tolerance and
//! the max age of a price an order may deal on.

use std::time::Duration;

use rust_decimal::Decimal;

use super::price_check::{Tolerance, parse_plain_decimal};
use crate::{Error, symbols::SymbolOverride};

/// How orders of one symbol are sized and price-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderConventions {
    /// Quantities must be a multiple of this (1 for FX, 0.001 for BTC).
    pub lot_size: Decimal,
    /// Smallest quantity of one order.
    pub min_quantity: Decimal,
    /// Largest quantity of one order.
    pub max_quantity: Decimal,
    /// The server's tolerance: the loosest a client may ask for.
    pub tolerance: Tolerance,
    /// A rate older than this is stale; `None`: the server-wide max age.
    pub max_price_age: Option<Duration>,
}

impl OrderConventions {
    /// Built-in conventions: FX pairs trade in units of 1 up to 10,000,000
    /// with a tolerance of 10 ticks (one pip: `0.010` for JPY pairs,
    /// `0.00010` for the others); crypto in thousandths of a coin (hundredths
    /// for ETH) up to 100 (1,000 ETH) with a tolerance of 10bp.
    pub fn builtin(symbol: &str, price_scale: u32) -> Self {
        let dec = |mantissa: i64, scale: u32| Decimal::new(mantissa, scale);
        let crypto = |lot: Decimal, max: i64| Self {
            lot_size: lot,
            min_quantity: lot,
            max_quantity: Decimal::from(max),
            tolerance: Tolerance::BasisPoints(Decimal::from(10)),
            max_price_age: None,
        };
        match symbol {
            "BTC_JPY" | "FX_BTC_JPY" | "BTC_USD" => crypto(dec(1, 3), 100),
            "ETH_JPY" => crypto(dec(1, 2), 1_000),
            _ => Self {
                lot_size: Decimal::ONE,
                min_quantity: Decimal::ONE,
                max_quantity: Decimal::from(10_000_000),
                tolerance: Tolerance::Price(dec(10, price_scale)),
                max_price_age: None,
            },
        }
    }

    /// Applies the order keys of `[symbol.<symbol>]`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key and the problem.
    pub(crate) fn apply(&mut self, symbol: &str, over: &SymbolOverride) -> Result<(), Error> {
        let bad = |key: &str, problem: String| {
            Error::Config(format!("[symbol.{symbol}] {key}: {problem}"))
        };
        let positive = |key: &str, value: &Option<String>| -> Result<Option<Decimal>, Error> {
            value
                .as_deref()
                .map(|v| match parse_plain_decimal(v) {
                    Some(d) if d > Decimal::ZERO => Ok(d),
                    _ => Err(bad(key, format!("{v:?} is not a positive decimal"))),
                })
                .transpose()
        };
        if let Some(v) = positive("lot_size", &over.lot_size)? {
            self.lot_size = v;
            // Limits that no longer fit the lot follow it unless set too.
            self.min_quantity = v;
        }
        if let Some(v) = positive("min_quantity", &over.min_quantity)? {
            self.min_quantity = v;
        }
        if let Some(v) = positive("max_quantity", &over.max_quantity)? {
            self.max_quantity = v;
        }
        if let Some(v) = &over.tolerance {
            self.tolerance = v.parse().map_err(|e| bad("tolerance", format!("{e}")))?;
        }
        if let Some(v) = &over.max_price_age {
            let age = humantime::parse_duration(v)
                .map_err(|e| bad("max_price_age", format!("{v:?}: {e}")))?;
            if age.is_zero() {
                return Err(bad("max_price_age", "must be positive".into()));
            }
            self.max_price_age = Some(age);
        }
        if !(self.min_quantity % self.lot_size).is_zero() {
            return Err(bad(
                "min_quantity",
                format!(
                    "{} is not a multiple of the lot size {}",
                    self.min_quantity, self.lot_size
                ),
            ));
        }
        if self.max_quantity < self.min_quantity {
            return Err(bad(
                "max_quantity",
                format!(
                    "{} is below the minimum quantity {}",
                    self.max_quantity, self.min_quantity
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_conventions_follow_the_market() {
        let usd_jpy = OrderConventions::builtin("USD_JPY", 3);
        assert_eq!(usd_jpy.tolerance.to_string(), "0.010");
        assert_eq!(
            (usd_jpy.lot_size, usd_jpy.max_quantity),
            (Decimal::ONE, Decimal::from(10_000_000))
        );
        assert_eq!(
            OrderConventions::builtin("EUR_USD", 5)
                .tolerance
                .to_string(),
            "0.00010"
        );
        let btc = OrderConventions::builtin("BTC_JPY", 0);
        assert_eq!(
            (btc.lot_size.to_string(), btc.tolerance.to_string()),
            ("0.001".into(), "10bp".into())
        );
    }

    #[test]
    fn overrides_are_checked() {
        let mut c = OrderConventions::builtin("XAU_USD", 2);
        let over = SymbolOverride {
            lot_size: Some("0.1".into()),
            max_quantity: Some("500".into()),
            tolerance: Some("1.5bp".into()),
            max_price_age: Some("500ms".into()),
            ..Default::default()
        };
        c.apply("XAU_USD", &over).unwrap();
        assert_eq!(c.min_quantity.to_string(), "0.1");
        assert_eq!(c.max_price_age, Some(Duration::from_millis(500)));
        let over = SymbolOverride {
            min_quantity: Some("0.15".into()),
            ..Default::default()
        };
        let err = c.apply("XAU_USD", &over).unwrap_err().to_string();
        assert!(
            err.contains("min_quantity: 0.15 is not a multiple of the lot size 0.1"),
            "{err}"
        );
        let over = SymbolOverride {
            tolerance: Some("-1".into()),
            ..Default::default()
        };
        assert!(
            c.clone()
                .apply("XAU_USD", &over)
                .unwrap_err()
                .to_string()
                .contains("[symbol.XAU_USD] tolerance")
        );
        let over = SymbolOverride {
            lot_size: Some("0".into()),
            ..Default::default()
        };
        assert!(c.clone().apply("XAU_USD", &over).is_err());
    }
}
