//! fxcast symbols <-> the LP's symbols (`[fix.symbols]`).

use std::collections::BTreeMap;

/// The LP's name of each fxcast symbol; a symbol not listed has the same
/// name at the LP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolMap {
    to_lp: BTreeMap<String, String>,
    to_fxcast: BTreeMap<String, String>,
}

impl SymbolMap {
    /// A map from `fxcast symbol -> LP symbol` pairs.
    ///
    /// # Errors
    /// A message when two fxcast symbols map to one LP symbol (its quotes
    /// could not be told apart).
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut map = Self::default();
        for (ours, theirs) in pairs {
            if let Some(other) = map.to_fxcast.insert(theirs.clone(), ours.clone()) {
                return Err(format!(
                    "[fix.symbols] maps both {other} and {ours} to the LP symbol {theirs}"
                ));
            }
            map.to_lp.insert(ours, theirs);
        }
        Ok(map)
    }

    /// The LP's name of `symbol`.
    pub fn to_lp<'a>(&'a self, symbol: &'a str) -> &'a str {
        self.to_lp.get(symbol).map_or(symbol, String::as_str)
    }

    /// The fxcast symbol of the LP's `lp_symbol`.
    pub fn to_fxcast<'a>(&'a self, lp_symbol: &'a str) -> &'a str {
        match self.to_fxcast.get(lp_symbol) {
            Some(ours) => ours,
            None => lp_symbol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways_with_identity_by_default() {
        let map = SymbolMap::new([("USD_JPY".to_owned(), "USD/JPY".to_owned())]).unwrap();
        assert_eq!(map.to_lp("USD_JPY"), "USD/JPY");
        assert_eq!(map.to_lp("EUR_USD"), "EUR_USD");
        assert_eq!(map.to_fxcast("USD/JPY"), "USD_JPY");
        assert_eq!(map.to_fxcast("EUR_USD"), "EUR_USD");
        assert!(SymbolMap::new([("A".into(), "X".into()), ("B".into(), "X".into())]).is_err());
    }
}
