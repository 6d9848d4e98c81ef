//! The percentile pass every bench binary runs after criterion.
//!
//! Criterion reports the mean and median *time per iteration* of each
//! benchmark (every sample averages many iterations). That is a good
//! regression signal but not a latency distribution, so every bench binary
//! also runs a percentile pass after criterion: it times
//! [`PercentilePass::samples`] individual iterations with
//! [`std::time::Instant`] and prints p50/p90/p99/p99.9/max ([`LatencySummary`]).
//!
//! The pass runs only under `cargo bench` (criterion's `--bench` flag), not
//! under `cargo test --benches` or with `--list`/`--profile-time`. The sample
//! count comes from `FXCAST_BENCH_PERCENTILE_SAMPLES` (default 10,000; `0`
//! turns the pass off). A criterion name filter given on the command line
//! also selects percentile cases, matched as a plain substring (a leading `^`
//! or trailing `$` anchors it; `--exact` requires equality) rather than as a
//! regex.

use std::{fmt, time::Duration};

/// Default number of individually timed iterations per case.
pub const DEFAULT_PERCENTILE_SAMPLES: usize = 10_000;

/// Distribution of individually measured latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: usize,
    /// Smallest sample.
    pub min: Duration,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 90th percentile (nearest rank).
    pub p90: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// 99.9th percentile (nearest rank).
    pub p999: Duration,
    /// Largest sample.
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

impl LatencySummary {
    /// Summarises `samples` (sorting them in place); `None` when empty.
    pub fn from_samples(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        // Nearest-rank percentile: the smallest sample with at least q of all
        // samples at or below it.
        let rank = |q: f64| {
            let index = (q * n as f64).ceil() as usize;
            samples[index.clamp(1, n) - 1]
        };
        let total: Duration = samples.iter().sum();
        Some(Self {
            samples: n,
            min: samples[0],
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples[n - 1],
            mean: total / u32::try_from(n).unwrap_or(u32::MAX),
        })
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} min={} p50={} p90={} p99={} p99.9={} max={} mean={}",
            self.samples,
            micros(self.min),
            micros(self.p50),
            micros(self.p90),
            micros(self.p99),
            micros(self.p999),
            micros(self.max),
            micros(self.mean),
        )
    }
}

/// `d` in microseconds with two decimals, e.g. `"1.23µs"`.
pub fn micros(d: Duration) -> String {
    format!("{:.2}µs", d.as_secs_f64() * 1e6)
}

/// Criterion options that take a value (so the value is not a name filter).
const VALUE_OPTIONS: &[&str] = &[
    "-c",
    "--color",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--baseline-lenient",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// Settings of the percentile pass that follows criterion in a bench binary.
#[derive(Debug, Clone)]
pub struct PercentilePass {
    /// Individually timed iterations per case.
    pub samples: usize,
    /// Untimed iterations run first, per case.
    pub warmup: usize,
    filter: Option<String>,
    exact: bool,
}

impl PercentilePass {
    /// The pass this process should run, from the command line and
    /// `FXCAST_BENCH_PERCENTILE_SAMPLES`; `None` when it should not run.
    pub fn from_env_and_args() -> Option<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        if !has("--bench") || has("--list") || has("--test") || has("--profile-time") {
            return None;
        }
        let samples = match std::env::var("FXCAST_BENCH_PERCENTILE_SAMPLES") {
            Ok(v) => v
                .trim()
                .parse()
                .expect("FXCAST_BENCH_PERCENTILE_SAMPLES must be a whole number"),
            Err(_) => DEFAULT_PERCENTILE_SAMPLES,
        };
        if samples == 0 {
            return None;
        }
        let mut filter = None;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if arg.starts_with('-') {
                if VALUE_OPTIONS.contains(&arg.as_str()) {
                    iter.next();
                }
            } else {
                filter = Some(arg.clone());
            }
        }
        Some(Self {
            samples,
            warmup: (samples / 10).max(100),
            filter,
            exact: has("--exact"),
        })
    }

    /// Whether the case with full benchmark id `id` (`group/function/param`)
    /// is selected.
    pub fn wants(&self, id: &str) -> bool {
        let Some(filter) = self.filter.as_deref() else {
            return true;
        };
        if self.exact {
            return id == filter;
        }
        match (filter.strip_prefix('^'), filter.strip_suffix('$')) {
            (Some(p), _) if p.ends_with('$') => id == &p[..p.len() - 1],
            (Some(p), _) => id.starts_with(p),
            (None, Some(s)) => id.ends_with(s),
            (None, None) => id.contains(filter),
        }
    }

    /// Prints the heading of the pass.
    pub fn print_heading(&self, what: &str) {
        println!();
        println!(
            "Per-iteration latency percentiles ({what}): {} timed iterations per case after {} warm-up iterations",
            self.samples, self.warmup
        );
    }

    /// Prints one case's result.
    pub fn print(&self, id: &str, summary: &LatencySummary) {
        println!("percentiles {id:<55} {summary}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let s = LatencySummary::from_samples(&mut samples).unwrap();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.min, Duration::from_micros(1));
        assert_eq!(s.p50, Duration::from_micros(500));
        assert_eq!(s.p90, Duration::from_micros(900));
        assert_eq!(s.p99, Duration::from_micros(990));
        assert_eq!(s.p999, Duration::from_micros(999));
        assert_eq!(s.max, Duration::from_micros(1000));
        assert!(LatencySummary::from_samples(&mut []).is_none());
    }

    #[test]
    fn filters_match_like_criterion_names() {
        let pass = |filter: &str, exact| PercentilePass {
            samples: 1,
            warmup: 1,
            filter: Some(filter.to_owned()),
            exact,
        };
        let id = "transport_publish_to_receive/memory/1";
        assert!(pass("memory/1", false).wants(id));
        assert!(pass("^transport", false).wants(id));
        assert!(pass("memory/1$", false).wants(id));
        assert!(!pass("memory/1$", false).wants("transport_publish_to_receive/memory/100"));
        assert!(pass(id, true).wants(id));
        assert!(!pass("memory", true).wants(id));
    }
}
