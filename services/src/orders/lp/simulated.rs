//! The default liquidity provider: an in-process simulation with a
//! configurable latency and a seeded last-look reject rate.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use fxcast_transport::BoxFuture;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::{Decimal, prelude::ToPrimitive};

use super::{LiquidityProvider, LpError, LpOrder, LpOutcome};
use crate::Error;

/// Outcomes remembered for idempotent re-submission and `recover`.
const REMEMBERED: usize = 100_000;

/// Settings of [`SimulatedLp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedLpConfig {
    /// How long the LP takes to answer.
    pub latency: Duration,
    /// Fraction of orders declined on last look, from 0 to 1 (exact decimal,
    /// resolved to millionths).
    pub reject_rate: Decimal,
    /// Seed of the reject decisions: the same seed and order sequence give
    /// the same decisions.
    pub seed: u64,
}

impl Default for SimulatedLpConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            reject_rate: Decimal::ZERO,
            seed: 42,
        }
    }
}

impl SimulatedLpConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] for a reject rate outside 0..=1.
    pub fn validate(&self) -> Result<(), Error> {
        if self.reject_rate < Decimal::ZERO || self.reject_rate > Decimal::ONE {
            return Err(Error::Config(format!(
                "LP reject rate {} is outside 0..=1",
                self.reject_rate
            )));
        }
        Ok(())
    }
}

struct State {
    rng: StdRng,
    outcomes: HashMap<String, LpOutcome>,
    // Keys in insertion order, to forget the oldest outcomes first.
    order: VecDeque<String>,
}

/// An in-process liquidity provider: fills at the requested price after
/// `latency`, or declines with probability `reject_rate`.
///
/// Its deals live in memory and die with the process, so it needs no intent
/// record: after a crash nobody holds a fill that fxcast did not journal.
pub struct SimulatedLp {
    latency: Duration,
    reject_rate: Decimal,
    // Rolls below this (out of 1,000,000) are rejected.
    threshold: u32,
    // A std mutex: held only for a map lookup and one random draw.
    state: Mutex<State>,
}

impl std::fmt::Debug for SimulatedLp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedLp")
            .field("latency", &self.latency)
            .field("reject_rate", &self.reject_rate)
            .finish_non_exhaustive()
    }
}

impl SimulatedLp {
    /// Creates the simulator. A reject rate outside 0..=1 is clamped (see
    /// [`SimulatedLpConfig::validate`]).
    pub fn new(config: SimulatedLpConfig) -> Self {
        let rate = config.reject_rate.clamp(Decimal::ZERO, Decimal::ONE);
        let threshold = (rate * Decimal::from(1_000_000))
            .trunc()
            .to_u32()
            .unwrap_or(1_000_000);
        Self {
            latency: config.latency,
            reject_rate: rate,
            threshold,
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(config.seed),
                outcomes: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn decide(&self, order: &LpOrder) -> LpOutcome {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(outcome) = state.outcomes.get(&order.key) {
            return outcome.clone();
        }
        let roll = state.rng.random_range(0..1_000_000u32);
        let outcome = if roll < self.threshold {
            LpOutcome::Rejected {
                message: format!(
                    "the simulated LP declined on last look (reject rate {})",
                    self.reject_rate
                ),
            }
        } else {
            LpOutcome::Filled {
                price: order.price,
                execution_id: format!("SIM-{}", order.order_id),
            }
        };
        state.outcomes.insert(order.key.clone(), outcome.clone());
        state.order.push_back(order.key.clone());
        if state.order.len() > REMEMBERED
            && let Some(oldest) = state.order.pop_front()
        {
            state.outcomes.remove(&oldest);
        }
        outcome
    }
}

impl LiquidityProvider for SimulatedLp {
    fn name(&self) -> &str {
        "simulated"
    }

    fn needs_intent_record(&self) -> bool {
        false
    }

    fn execute<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            Ok(self.decide(order))
        })
    }

    fn recover<'a>(&'a self, order: &'a LpOrder) -> BoxFuture<'a, Result<LpOutcome, LpError>> {
        Box::pin(async move {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            Ok(state
                .outcomes
                .get(&order.key)
                .cloned()
                .unwrap_or_else(|| LpOutcome::Rejected {
                    message:
                        "the simulated LP has no execution for this order: it runs inside fxcast, \
                          so an order in flight when fxcast stopped was never dealt"
                            .into(),
                }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::Side;

    fn order(key: &str) -> LpOrder {
        LpOrder {
            key: key.into(),
            order_id: format!("ID{key}"),
            symbol: "USD_JPY".into(),
            side: Side::Buy,
            quantity: Decimal::from(1000),
            price: "151.230".parse().unwrap(),
        }
    }

    fn lp(rate: &str, seed: u64) -> SimulatedLp {
        SimulatedLp::new(SimulatedLpConfig {
            reject_rate: rate.parse().unwrap(),
            seed,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn fills_at_the_requested_price_and_is_idempotent_per_key() {
        let lp = lp("0", 1);
        let first = lp.execute(&order("a")).await.unwrap();
        assert_eq!(
            first,
            LpOutcome::Filled {
                price: "151.230".parse().unwrap(),
                execution_id: "SIM-IDa".into()
            }
        );
        assert_eq!(lp.execute(&order("a")).await.unwrap(), first);
        assert_eq!(lp.recover(&order("a")).await.unwrap(), first);
        assert!(matches!(
            lp.recover(&order("b")).await.unwrap(),
            LpOutcome::Rejected { .. }
        ));
    }

    #[tokio::test]
    async fn reject_rate_is_seeded_and_roughly_honoured() {
        let decisions = |seed| async move {
            let lp = lp("0.25", seed);
            let mut out = Vec::new();
            for i in 0..2000 {
                out.push(matches!(
                    lp.execute(&order(&i.to_string())).await.unwrap(),
                    LpOutcome::Rejected { .. }
                ));
            }
            out
        };
        let a = decisions(7).await;
        assert_eq!(a, decisions(7).await, "same seed, same decisions");
        assert_ne!(a, decisions(8).await);
        let rejected = a.iter().filter(|r| **r).count();
        assert!(
            (400..600).contains(&rejected),
            "{rejected} of 2000 rejected at 25%"
        );
        let all = lp("1", 1);
        assert!(matches!(
            all.execute(&order("x")).await.unwrap(),
            LpOutcome::Rejected { .. }
        ));
    }

    #[test]
    fn reject_rate_must_be_a_fraction() {
        let config = SimulatedLpConfig {
            reject_rate: "1.5".parse().unwrap(),
            ..Default::default()
        };
        assert!(config.validate().is_err());
        assert!(SimulatedLpConfig::default().validate().is_ok());
    }
}
