//! Latency summaries shared by `doctor` and `bench`.

use std::time::Duration;

use serde::Serialize;

/// The distribution of one operation's latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// How many operations were measured.
    pub count: usize,
    /// The median, in milliseconds.
    pub p50_ms: f64,
    /// The 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// The slowest, in milliseconds.
    pub max_ms: f64,
}

/// Summarizes `samples` (nearest-rank percentiles); all zero when empty.
#[must_use]
pub fn summarize(samples: &[Duration]) -> LatencySummary {
    if samples.is_empty() {
        return LatencySummary::default();
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = |quantile: f64| {
        // Nearest rank: the smallest sample with at least `quantile` of the
        // samples at or below it.
        let index = (quantile * sorted.len() as f64).ceil() as usize;
        sorted[index.clamp(1, sorted.len()) - 1]
    };
    let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
    LatencySummary {
        count: sorted.len(),
        p50_ms: millis(rank(0.50)),
        p99_ms: millis(rank(0.99)),
        max_ms: millis(sorted[sorted.len() - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let summary = summarize(&samples);
        assert_eq!(summary.count, 100);
        assert!((summary.p50_ms - 50.0).abs() < 1e-9, "{summary:?}");
        assert!((summary.p99_ms - 99.0).abs() < 1e-9, "{summary:?}");
        assert!((summary.max_ms - 100.0).abs() < 1e-9, "{summary:?}");
        let one = summarize(&[Duration::from_millis(3)]);
        assert!((one.p50_ms - 3.0).abs() < 1e-9 && (one.p99_ms - 3.0).abs() < 1e-9);
        assert_eq!(summarize(&[]), LatencySummary::default());
    }
}
