//! The HDR histograms the load generators record latencies in (whole
//! microseconds, 1 µs to 60 s at 3 significant digits) and their
//! percentiles.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// An empty latency histogram.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The reported percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest recorded.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let q = |quantile: f64| histogram.value_at_quantile(quantile);
        Self {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: histogram.max(),
        }
    }
}

/// `12.345ms` from microseconds, without floating point.
pub fn ms(us: u64) -> String {
    format!("{}.{:03}ms", us / 1000, us % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_printed_exactly() {
        assert_eq!(ms(12_345), "12.345ms");
        assert_eq!(ms(7), "0.007ms");
    }

    #[test]
    fn histograms_merge_into_one_distribution() {
        let mut total = new_histogram();
        for worker in 0..4u64 {
            let mut part = new_histogram();
            for n in 1..=250 {
                part.record(worker * 250 + n).unwrap();
            }
            total.add(&part).unwrap();
        }
        assert_eq!(total.len(), 1000);
        let p = Percentiles::of(&total);
        assert_eq!((p.p50, p.max), (500, 1000));
    }
}
