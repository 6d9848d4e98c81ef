//! Markup: what the desk adds to each side of the feed price.
//!
//! The published bid is the feed bid minus the markup and the published ask is
//! the feed ask plus it, each rounded *away* from the mid to the symbol's
//! price scale so rounding never narrows the desk's spread.

use std::{fmt, str::FromStr};

use rust_decimal::{Decimal, RoundingStrategy};

/// Markup applied to each side of a price.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Markup {
    /// No markup: the feed price is published as is (rounded to scale).
    #[default]
    None,
    /// A fixed amount in price units, e.g. `0.002`.
    Absolute(Decimal),
    /// A fraction of the side's price in basis points, e.g. `1.5bp`.
    BasisPoints(Decimal),
}

/// A markup string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid markup {input:?}: {reason} (use a price like \"0.002\" or basis points like \"1.5bp\")"
)]
pub struct ParseMarkupError {
    input: String,
    reason: &'static str,
}

impl FromStr for Markup {
    type Err = ParseMarkupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseMarkupError {
            input: s.to_owned(),
            reason,
        };
        let trimmed = s.trim();
        let (number, bp) = match trimmed.strip_suffix("bp") {
            Some(n) => (n.trim(), true),
            None => (trimmed, false),
        };
        let value = Decimal::from_str_exact(number).map_err(|_| err("not a decimal number"))?;
        if value.is_sign_negative() {
            return Err(err("markup cannot be negative"));
        }
        Ok(match (value.is_zero(), bp) {
            (true, _) => Markup::None,
            (false, true) => Markup::BasisPoints(value),
            (false, false) => Markup::Absolute(value),
        })
    }
}

impl fmt::Display for Markup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Markup::None => f.write_str("0"),
            Markup::Absolute(v) => write!(f, "{v}"),
            Markup::BasisPoints(v) => write!(f, "{v}bp"),
        }
    }
}

impl Markup {
    fn amount(&self, price: Decimal) -> Decimal {
        match self {
            Markup::None => Decimal::ZERO,
            Markup::Absolute(v) => *v,
            Markup::BasisPoints(bp) => price * *bp / Decimal::from(10_000),
        }
    }

    /// Applies the markup to a feed bid/ask and rounds both to `scale`
    /// decimal places, away from the mid.
    pub fn apply(&self, bid: Decimal, ask: Decimal, scale: u32) -> (Decimal, Decimal) {
        let mut bid = (bid - self.amount(bid))
            .round_dp_with_strategy(scale, RoundingStrategy::ToNegativeInfinity);
        let mut ask = (ask + self.amount(ask))
            .round_dp_with_strategy(scale, RoundingStrategy::ToPositiveInfinity);
        bid.rescale(scale);
        ask.rescale(scale);
        (bid, ask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn parses_absolute_and_basis_points() {
        assert_eq!(
            "0.002".parse::<Markup>().unwrap(),
            Markup::Absolute(d("0.002"))
        );
        assert_eq!(
            "1.5bp".parse::<Markup>().unwrap(),
            Markup::BasisPoints(d("1.5"))
        );
        assert_eq!(
            " 2 bp".parse::<Markup>().unwrap(),
            Markup::BasisPoints(d("2"))
        );
        assert_eq!("0".parse::<Markup>().unwrap(), Markup::None);
        assert!("-1".parse::<Markup>().is_err());
        assert!("abc".parse::<Markup>().is_err());
        assert!("1e3".parse::<Markup>().is_err());
    }

    #[test]
    fn absolute_markup_widens_each_side() {
        let (bid, ask) = Markup::Absolute(d("0.002")).apply(d("151.230"), d("151.238"), 3);
        assert_eq!(
            (bid.to_string(), ask.to_string()),
            ("151.228".into(), "151.240".into())
        );
    }

    #[test]
    fn basis_points_round_away_from_the_mid() {
        // 1bp of 151.230 is 0.015123 -> bid 151.214877 rounds down to 151.214.
        let (bid, ask) = Markup::BasisPoints(d("1")).apply(d("151.230"), d("151.238"), 3);
        assert_eq!(
            (bid.to_string(), ask.to_string()),
            ("151.214".into(), "151.254".into())
        );
    }

    #[test]
    fn no_markup_keeps_scale_with_trailing_zeros() {
        let (bid, ask) = Markup::None.apply(d("1.085"), d("1.0851"), 5);
        assert_eq!(
            (bid.to_string(), ask.to_string()),
            ("1.08500".into(), "1.08510".into())
        );
    }
}
