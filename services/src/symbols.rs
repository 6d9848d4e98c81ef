//! The symbols a server prices and their conventions.

use std::{collections::BTreeMap, fmt, str::FromStr, sync::Arc};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::{Error, orders::OrderConventions, pricing::Markup};

/// Conventions of one symbol and the simulator's starting point for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolSpec {
    /// Symbol name, e.g. `USD_JPY`.
    pub symbol: String,
    /// Decimal places prices are quoted with (3 for JPY pairs, 5 for most others).
    pub price_scale: u32,
    /// Simulator's starting mid price.
    pub start_mid: Decimal,
    /// Simulator's typical raw spread (before markup).
    pub spread: Decimal,
    /// Largest move of the simulated mid in one tick, in price units.
    pub max_step: Decimal,
    /// Markup applied to each side of every published price.
    pub markup: Markup,
    /// Lot size, quantity limits, tolerance and max price age of orders.
    pub orders: OrderConventions,
}

impl SymbolSpec {
    /// The smallest price increment, `10^-price_scale`.
    pub fn tick_size(&self) -> Decimal {
        Decimal::new(1, self.price_scale)
    }

    /// Built-in conventions for common FX and crypto symbols.
    pub fn builtin(symbol: &str) -> Option<Self> {
        // (scale, mid, spread, max step) — realistic as of the mid-2020s.
        let (scale, mid, spread, step) = match symbol {
            "USD_JPY" => (3, "151.500", "0.008", "0.006"),
            "EUR_JPY" => (3, "163.800", "0.012", "0.008"),
            "GBP_JPY" => (3, "191.900", "0.020", "0.010"),
            "EUR_USD" => (5, "1.08500", "0.00008", "0.00006"),
            "GBP_USD" => (5, "1.26700", "0.00012", "0.00008"),
            "AUD_USD" => (5, "0.65800", "0.00010", "0.00005"),
            "USD_CHF" => (5, "0.88200", "0.00012", "0.00005"),
            "USD_CAD" => (5, "1.36100", "0.00015", "0.00006"),
            "BTC_JPY" | "FX_BTC_JPY" => (0, "10000000", "1500", "3000"),
            "ETH_JPY" => (0, "500000", "200", "300"),
            "BTC_USD" => (2, "67000.00", "10.00", "25.00"),
            _ => return None,
        };
        let dec = |s: &str| Decimal::from_str(s).expect("valid built-in decimal");
        Some(Self {
            symbol: symbol.to_owned(),
            price_scale: scale,
            start_mid: dec(mid),
            spread: dec(spread),
            max_step: dec(step),
            markup: Markup::None,
            orders: OrderConventions::builtin(symbol, scale),
        })
    }
}

/// Per-symbol overrides from the configuration file (`[symbol.USD_JPY]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SymbolOverride {
    /// Decimal places; required for symbols without built-in conventions.
    pub price_scale: Option<u32>,
    /// Simulator's starting mid, as a decimal string.
    pub start_mid: Option<String>,
    /// Simulator's raw spread, as a decimal string.
    pub spread: Option<String>,
    /// Simulator's largest step per tick, as a decimal string.
    pub max_step: Option<String>,
    /// Markup per side: a price (`"0.002"`) or basis points (`"1.5bp"`).
    pub markup: Option<String>,
    /// Orders' quantity must be a multiple of this, as a decimal string.
    pub lot_size: Option<String>,
    /// Smallest order quantity, as a decimal string.
    pub min_quantity: Option<String>,
    /// Largest order quantity, as a decimal string.
    pub max_quantity: Option<String>,
    /// Order price tolerance: a price (`"0.010"`) or basis points (`"2bp"`).
    pub tolerance: Option<String>,
    /// Rates older than this are stale for orders, e.g. `"2s"`.
    pub max_price_age: Option<String>,
}

/// The symbols a server prices, in a stable order. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SymbolTable {
    specs: Arc<BTreeMap<String, SymbolSpec>>,
}

impl SymbolTable {
    /// Builds the table for `symbols`, applying built-in conventions, then
    /// `default_markup`, then per-symbol overrides.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty list, a malformed name, a symbol with
    /// neither built-in conventions nor a complete override, or a bad value.
    pub fn build(
        symbols: &[String],
        default_markup: &Markup,
        overrides: &BTreeMap<String, SymbolOverride>,
    ) -> Result<Self, Error> {
        if symbols.is_empty() {
            return Err(Error::Config("no symbols configured".into()));
        }
        for name in overrides.keys() {
            if !symbols.contains(name) {
                return Err(Error::Config(format!(
                    "[symbol.{name}] is configured but {name} is not in the symbol list ({})",
                    symbols.join(",")
                )));
            }
        }
        let mut specs = BTreeMap::new();
        for symbol in symbols {
            validate_symbol_name(symbol)?;
            let over = overrides.get(symbol).cloned().unwrap_or_default();
            let mut spec = match SymbolSpec::builtin(symbol) {
                Some(spec) => spec,
                None => {
                    let (Some(scale), Some(mid)) = (over.price_scale, over.start_mid.as_deref())
                    else {
                        return Err(Error::Config(format!(
                            "no built-in conventions for {symbol}: set price_scale and start_mid in [symbol.{symbol}]"
                        )));
                    };
                    let mid = parse_config_decimal(symbol, "start_mid", mid)?;
                    let tick = Decimal::new(1, scale);
                    SymbolSpec {
                        symbol: symbol.clone(),
                        price_scale: scale,
                        start_mid: mid,
                        spread: tick * Decimal::from(10),
                        max_step: tick * Decimal::from(5),
                        markup: Markup::None,
                        orders: OrderConventions::builtin(symbol, scale),
                    }
                }
            };
            spec.markup = default_markup.clone();
            if let Some(scale) = over.price_scale {
                if scale > 12 {
                    return Err(Error::Config(format!(
                        "[symbol.{symbol}] price_scale {scale} is above 12"
                    )));
                }
                spec.price_scale = scale;
                spec.orders = OrderConventions::builtin(symbol, scale);
            }
            spec.orders.apply(symbol, &over)?;
            if let Some(v) = &over.start_mid {
                spec.start_mid = parse_config_decimal(symbol, "start_mid", v)?;
            }
            if let Some(v) = &over.spread {
                spec.spread = parse_config_decimal(symbol, "spread", v)?;
            }
            if let Some(v) = &over.max_step {
                spec.max_step = parse_config_decimal(symbol, "max_step", v)?;
            }
            if let Some(v) = &over.markup {
                spec.markup = v
                    .parse()
                    .map_err(|e| Error::Config(format!("[symbol.{symbol}] markup: {e}")))?;
            }
            if spec.start_mid <= spec.spread {
                return Err(Error::Config(format!(
                    "[symbol.{symbol}] start_mid {} must be larger than spread {}",
                    spec.start_mid, spec.spread
                )));
            }
            specs.insert(symbol.clone(), spec);
        }
        Ok(Self {
            specs: Arc::new(specs),
        })
    }

    /// Looks a symbol up.
    ///
    /// # Errors
    /// [`Error::UnknownSymbol`] naming it and the known ones.
    pub fn get(&self, symbol: &str) -> Result<&SymbolSpec, Error> {
        self.specs.get(symbol).ok_or_else(|| Error::UnknownSymbol {
            symbol: symbol.to_owned(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })
    }

    /// Symbol names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.keys().map(String::as_str)
    }

    /// Specs in symbol order.
    pub fn iter(&self) -> impl Iterator<Item = &SymbolSpec> {
        self.specs.values()
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Always false: a table has at least one symbol.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

impl fmt::Display for SymbolTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().collect::<Vec<_>>().join(","))
    }
}

/// Whether `code` is spelled like a symbol (and a bitFlyer product code):
/// A-Z, 0-9 and `_`, at least one.
pub(crate) fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn validate_symbol_name(symbol: &str) -> Result<(), Error> {
    if symbol.len() <= 32 && is_code(symbol) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid symbol {symbol:?}: use 1-32 characters of A-Z, 0-9 and _ (e.g. USD_JPY)"
        )))
    }
}

fn parse_config_decimal(symbol: &str, field: &str, value: &str) -> Result<Decimal, Error> {
    match Decimal::from_str_exact(value) {
        Ok(d) if d > Decimal::ZERO => Ok(d),
        Ok(_) => Err(Error::Config(format!(
            "[symbol.{symbol}] {field} must be positive, got {value}"
        ))),
        Err(e) => Err(Error::Config(format!(
            "[symbol.{symbol}] {field} {value:?} is not a decimal: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn builtin_symbols_resolve_with_their_conventions() {
        let table = SymbolTable::build(
            &names(&["USD_JPY", "EUR_USD"]),
            &Markup::None,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            table.get("USD_JPY").unwrap().tick_size().to_string(),
            "0.001"
        );
        assert_eq!(
            table.get("EUR_USD").unwrap().tick_size().to_string(),
            "0.00001"
        );
        assert_eq!(table.names().collect::<Vec<_>>(), ["EUR_USD", "USD_JPY"]);
    }

    #[test]
    fn unknown_symbol_needs_an_override() {
        let err =
            SymbolTable::build(&names(&["XAU_USD"]), &Markup::None, &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("set price_scale and start_mid"),
            "{err}"
        );
        let mut over = BTreeMap::new();
        over.insert(
            "XAU_USD".to_owned(),
            SymbolOverride {
                price_scale: Some(2),
                start_mid: Some("2300.00".into()),
                ..Default::default()
            },
        );
        let table = SymbolTable::build(&names(&["XAU_USD"]), &Markup::None, &over).unwrap();
        assert_eq!(table.get("XAU_USD").unwrap().price_scale, 2);
    }

    #[test]
    fn bad_names_and_values_are_refused() {
        assert!(SymbolTable::build(&names(&["usd_jpy"]), &Markup::None, &BTreeMap::new()).is_err());
        assert!(SymbolTable::build(&[], &Markup::None, &BTreeMap::new()).is_err());
        let mut over = BTreeMap::new();
        over.insert(
            "USD_JPY".to_owned(),
            SymbolOverride {
                spread: Some("-1".into()),
                ..Default::default()
            },
        );
        let err = SymbolTable::build(&names(&["USD_JPY"]), &Markup::None, &over).unwrap_err();
        assert!(err.to_string().contains("must be positive"), "{err}");
    }

    #[test]
    fn unknown_symbol_lookup_names_the_known_ones() {
        let table =
            SymbolTable::build(&names(&["USD_JPY"]), &Markup::None, &BTreeMap::new()).unwrap();
        let err = table.get("EUR_GBP").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown symbol \"EUR_GBP\" (known: USD_JPY)"
        );
    }
}
