//! What a token allows.

use std::{collections::BTreeSet, fmt, str::FromStr};

/// Symbols a subscribe scope covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolSet {
    /// Every symbol (`rates:subscribe` or `rates:subscribe=*`).
    All,
    /// Only these symbols (`rates:subscribe=USD_JPY,EUR_USD`).
    Only(BTreeSet<String>),
}

impl SymbolSet {
    /// Whether `symbol` is covered.
    pub fn contains(&self, symbol: &str) -> bool {
        match self {
            SymbolSet::All => true,
            SymbolSet::Only(set) => set.contains(symbol),
        }
    }
}

/// One permission carried by a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Stream and read rates of some symbols.
    RatesSubscribe(SymbolSet),
    /// Publish rates (`PublishRate`).
    RatesPublish,
    /// Place orders as the token's subject.
    OrdersPlace,
    /// Read the subject's own orders.
    OrdersRead,
    /// Issue tokens (like the admin API key).
    TokensIssue,
}

/// A scope string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid scope {}: expected rates:subscribe[=SYMBOLS|*], rates:publish, orders:place, orders:read or tokens:issue",
    crate::quote::quoted(.0)
)]
pub struct ParseScopeError(pub String);

impl FromStr for Scope {
    type Err = ParseScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseScopeError(s.to_owned());
        let (name, arg) = match s.split_once('=') {
            Some((name, arg)) => (name, Some(arg)),
            None => (s, None),
        };
        match (name, arg) {
            ("rates:subscribe", None | Some("*")) => Ok(Scope::RatesSubscribe(SymbolSet::All)),
            ("rates:subscribe", Some(list)) => {
                let symbols: BTreeSet<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                let valid = !symbols.is_empty()
                    && symbols.iter().all(|s| {
                        s.len() <= 32
                            && s.bytes()
                                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    });
                if valid {
                    Ok(Scope::RatesSubscribe(SymbolSet::Only(symbols)))
                } else {
                    Err(err())
                }
            }
            ("rates:publish", None) => Ok(Scope::RatesPublish),
            ("orders:place", None) => Ok(Scope::OrdersPlace),
            ("orders:read", None) => Ok(Scope::OrdersRead),
            ("tokens:issue", None) => Ok(Scope::TokensIssue),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::RatesSubscribe(SymbolSet::All) => f.write_str("rates:subscribe=*"),
            Scope::RatesSubscribe(SymbolSet::Only(set)) => {
                write!(
                    f,
                    "rates:subscribe={}",
                    set.iter().cloned().collect::<Vec<_>>().join(",")
                )
            }
            Scope::RatesPublish => f.write_str("rates:publish"),
            Scope::OrdersPlace => f.write_str("orders:place"),
            Scope::OrdersRead => f.write_str("orders:read"),
            Scope::TokensIssue => f.write_str("tokens:issue"),
        }
    }
}

/// The set of scopes of one token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub Vec<Scope>);

impl Scopes {
    /// Every scope: what the admin API key may do.
    pub fn admin() -> Self {
        Scopes(vec![
            Scope::RatesSubscribe(SymbolSet::All),
            Scope::RatesPublish,
            Scope::OrdersPlace,
            Scope::OrdersRead,
            Scope::TokensIssue,
        ])
    }

    /// Whether the exact (argument-less) scope is present.
    pub fn has(&self, scope: &Scope) -> bool {
        self.0.iter().any(|s| s == scope)
    }

    /// Whether rates of `symbol` may be read.
    pub fn may_subscribe(&self, symbol: &str) -> bool {
        self.0
            .iter()
            .any(|s| matches!(s, Scope::RatesSubscribe(set) if set.contains(symbol)))
    }

    /// Whether `other` grants nothing beyond these scopes (tokens can only
    /// hand out what their issuer has).
    pub fn covers(&self, other: &Scopes) -> bool {
        other.0.iter().all(|scope| match scope {
            Scope::RatesSubscribe(SymbolSet::All) => self
                .0
                .iter()
                .any(|s| matches!(s, Scope::RatesSubscribe(SymbolSet::All))),
            Scope::RatesSubscribe(SymbolSet::Only(set)) => {
                set.iter().all(|sym| self.may_subscribe(sym))
            }
            other => self.has(other),
        })
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(" "))
    }
}

impl FromStr for Scopes {
    type Err = ParseScopeError;

    /// Space-separated scopes, as in the OAuth `scope` claim.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Scopes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        let text = "rates:subscribe=EUR_USD,USD_JPY rates:subscribe=* rates:publish orders:place orders:read tokens:issue";
        let scopes: Scopes = text.parse().unwrap();
        assert_eq!(scopes.to_string(), text);
        assert_eq!(
            "rates:subscribe".parse::<Scope>().unwrap(),
            Scope::RatesSubscribe(SymbolSet::All)
        );
    }

    #[test]
    fn bad_scopes_are_refused() {
        for bad in [
            "rates:sub",
            "orders:place=x",
            "rates:subscribe=",
            "rates:subscribe=usd jpy",
            "admin",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subscribe_scope_limits_symbols() {
        let scopes: Scopes = "rates:subscribe=USD_JPY orders:place".parse().unwrap();
        assert!(scopes.may_subscribe("USD_JPY"));
        assert!(!scopes.may_subscribe("EUR_USD"));
        assert!(scopes.has(&Scope::OrdersPlace));
        assert!(!scopes.has(&Scope::OrdersRead));
        assert!(Scopes::admin().covers(&scopes));
        assert!(!scopes.covers(&"rates:subscribe=*".parse().unwrap()));
        assert!(scopes.covers(&"rates:subscribe=USD_JPY".parse().unwrap()));
    }
}
