//! The HDR histograms the load generators record latencies in (whole
//! microseconds, 1 µs to 60 s at 3 significant digits) and their
//! percentiles.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// An empty latency histogram.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The recorded values of `histogram` as `[value, count]` pairs, one per
/// non-empty bucket (its highest equivalent value): what a load-generator
/// process sends its parent, a few hundred pairs instead of the histogram's
/// counts array.
pub fn buckets(histogram: &Histogram<u64>) -> Vec<[u64; 2]> {
    histogram
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect()
}

/// Adds [`buckets`] to `histogram`: each value lands in the bucket it came
/// from (same bounds and precision), so the merged percentiles are exactly
/// those of one histogram that recorded everything.
///
/// # Errors
/// When a value is outside the histogram's bounds.
pub fn add_buckets(histogram: &mut Histogram<u64>, buckets: &[[u64; 2]]) -> anyhow::Result<()> {
    for &[value, count] in buckets {
        histogram
            .record_n(value, count)
            .map_err(|e| anyhow::anyhow!("latency {value} µs: {e:?}"))?;
    }
    Ok(())
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

    #[test]
    fn buckets_sent_by_several_processes_merge_exactly() {
        let mut direct = new_histogram();
        let mut merged = new_histogram();
        for process in 0..3u64 {
            let mut part = new_histogram();
            for n in 0..5_000u64 {
                // Spread over µs to seconds, so buckets of every width.
                part.record(1 + (n * n * (process + 1)) % 9_000_000)
                    .unwrap();
            }
            direct.add(&part).unwrap();
            let sent: Vec<[u64; 2]> =
                serde_json::from_str(&serde_json::to_string(&buckets(&part)).unwrap()).unwrap();
            add_buckets(&mut merged, &sent).unwrap();
        }
        assert_eq!(merged.len(), direct.len());
        assert_eq!(Percentiles::of(&merged), Percentiles::of(&direct));
    }
}
