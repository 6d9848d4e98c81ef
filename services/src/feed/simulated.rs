//! A seeded random-walk feed: realistic, reproducible prices with no network.
//!
//! Prices move in whole ticks (integers scaled by the symbol's price scale), so
//! the simulation is exact decimal arithmetic throughout and a seed replays the
//! same prices on every machine.

use std::time::{Duration, SystemTime};

use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use super::{Feed, Quote};
use crate::{BoxFuture, SymbolTable};

/// Settings of [`SimulatedFeed`].
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Time between ticks of one symbol.
    pub tick_interval: Duration,
    /// Random seed; the same seed produces the same prices.
    pub seed: u64,
    /// Stop after this many quotes in total (for tests and benches).
    pub max_quotes: Option<u64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_millis(250),
            seed: 42,
            max_quotes: None,
        }
    }
}

/// Integer state of one simulated symbol, in ticks.
#[derive(Debug, Clone)]
struct Walk {
    symbol: String,
    scale: u32,
    mid: i64,
    base_spread: i64,
    max_step: i64,
    start: i64,
}

/// The built-in simulated feed.
#[derive(Debug)]
pub struct SimulatedFeed {
    walks: Vec<Walk>,
    rng: StdRng,
    config: SimulatorConfig,
}

fn ticks(value: Decimal, scale: u32) -> i64 {
    let mut v = value;
    v.rescale(scale);
    i64::try_from(v.mantissa()).unwrap_or(i64::MAX / 4)
}

impl SimulatedFeed {
    /// Creates a feed for every symbol of `symbols`.
    pub fn new(symbols: &SymbolTable, config: SimulatorConfig) -> Self {
        let walks = symbols
            .iter()
            .map(|spec| {
                let mid = ticks(spec.start_mid, spec.price_scale);
                Walk {
                    symbol: spec.symbol.clone(),
                    scale: spec.price_scale,
                    mid,
                    base_spread: ticks(spec.spread, spec.price_scale).max(1),
                    max_step: ticks(spec.max_step, spec.price_scale).max(1),
                    start: mid,
                }
            })
            .collect();
        Self {
            walks,
            rng: StdRng::seed_from_u64(config.seed),
            config,
        }
    }

    /// The next quote of every symbol, advancing the walk by one step.
    pub fn step(&mut self, now: SystemTime) -> Vec<Quote> {
        let rng = &mut self.rng;
        self.walks
            .iter_mut()
            .map(|walk| {
                // Sum of two uniforms: a triangular step that favours small moves.
                let half = walk.max_step / 2 + 1;
                let mut step = rng.random_range(-half..=half) + rng.random_range(-half..=half);
                // Gentle pull back towards the start keeps a long run realistic.
                let drift = walk.mid - walk.start;
                if drift.abs() > walk.max_step * 200 {
                    step -= drift.signum() * half;
                }
                walk.mid = (walk.mid + step).max(walk.base_spread * 4);
                let spread = walk.base_spread + rng.random_range(0..=walk.base_spread / 4);
                let bid = walk.mid - spread / 2;
                let ask = bid + spread;
                Quote {
                    symbol: walk.symbol.clone(),
                    bid: Decimal::new(bid, walk.scale),
                    ask: Decimal::new(ask, walk.scale),
                    source_time: now,
                }
            })
            .collect()
    }
}

impl Feed for SimulatedFeed {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn run(
        mut self: Box<Self>,
        out: mpsc::Sender<Quote>,
    ) -> BoxFuture<'static, Result<(), crate::Error>> {
        Box::pin(async move {
            let mut interval = tokio::time::interval(self.config.tick_interval);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            loop {
                interval.tick().await;
                for quote in self.step(SystemTime::now()) {
                    if self.config.max_quotes.is_some_and(|max| sent >= max) {
                        return Ok(());
                    }
                    if out.send(quote).await.is_err() {
                        return Ok(());
                    }
                    sent += 1;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pricing::Markup;

    fn table() -> SymbolTable {
        let names = ["USD_JPY".to_owned(), "EUR_USD".to_owned()];
        SymbolTable::build(&names, &Markup::None, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn same_seed_same_prices() {
        let config = SimulatorConfig {
            seed: 7,
            ..Default::default()
        };
        let mut a = SimulatedFeed::new(&table(), config.clone());
        let mut b = SimulatedFeed::new(&table(), config);
        let now = SystemTime::UNIX_EPOCH;
        for _ in 0..100 {
            assert_eq!(a.step(now), b.step(now));
        }
    }

    #[test]
    fn prices_are_sane_and_on_scale() {
        let mut feed = SimulatedFeed::new(&table(), SimulatorConfig::default());
        for _ in 0..10_000 {
            for q in feed.step(SystemTime::UNIX_EPOCH) {
                assert!(q.bid > Decimal::ZERO && q.bid < q.ask, "{q:?}");
                let scale = if q.symbol == "USD_JPY" { 3 } else { 5 };
                assert_eq!(q.bid.scale(), scale);
                if q.symbol == "USD_JPY" {
                    assert!(
                        q.bid > Decimal::from(100) && q.ask < Decimal::from(200),
                        "{q:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn different_seeds_differ() {
        let mut a = SimulatedFeed::new(
            &table(),
            SimulatorConfig {
                seed: 1,
                ..Default::default()
            },
        );
        let mut b = SimulatedFeed::new(
            &table(),
            SimulatorConfig {
                seed: 2,
                ..Default::default()
            },
        );
        let now = SystemTime::UNIX_EPOCH;
        let differ = (0..20).any(|_| a.step(now) != b.step(now));
        assert!(differ);
    }
}
