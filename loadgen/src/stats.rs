//! What each worker records (latency histograms, a throughput timeline, counted errors) and how
//! the workers' records are merged into one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency a histogram holds exactly (longer ones are clamped to it): 5 minutes.
const MAX_LATENCY_NS: u64 = 300_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // 1 ns .. 5 min at 3 significant digits are valid bounds, so this cannot fail.
        Self(Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds"))
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns.max(1));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// p50, p90, p99, p99.9, max and mean in microseconds; `None` when empty.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(LatencySummary {
            count: self.0.len(),
            mean_us: self.0.mean() / 1000.0,
            p50_us: us(self.0.value_at_quantile(0.50)),
            p90_us: us(self.0.value_at_quantile(0.90)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
        })
    }

    /// (percentile, microseconds) points for a percentile plot, from 0 up to the max.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mut points: Vec<(f64, f64)> = self
            .0
            .iter_quantiles(5)
            .map(|v| (v.percentile(), v.value_iterated_to() as f64 / 1000.0))
            .collect();
        points.dedup_by(|a, b| a.0 == b.0);
        points
    }
}

/// A latency histogram's headline numbers, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// Events counted per time bucket since the start of the measured window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    bucket: Duration,
    counts: Vec<u64>,
}

impl Timeline {
    /// An empty timeline of `bucket`-long buckets.
    pub fn new(bucket: Duration) -> Self {
        Self {
            bucket: bucket.max(Duration::from_millis(1)),
            counts: Vec::new(),
        }
    }

    /// Counts `n` events at `since_start` into the window.
    pub fn add(&mut self, since_start: Duration, n: u64) {
        let index = (since_start.as_nanos() / self.bucket.as_nanos()) as usize;
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += n;
    }

    /// Adds another timeline's counts bucket by bucket (same bucket length).
    pub fn merge(&mut self, other: &Timeline) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// The bucket length.
    pub fn bucket(&self) -> Duration {
        self.bucket
    }

    /// Events per second in each bucket.
    pub fn rates(&self) -> Vec<f64> {
        let secs = self.bucket.as_secs_f64();
        self.counts.iter().map(|c| *c as f64 / secs).collect()
    }
}

/// Errors counted by kind (`closed`, `disconnected_rate_limited`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorCounts(pub BTreeMap<String, u64>);

impl ErrorCounts {
    /// Counts one error of `kind`.
    pub fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_insert(0) += 1;
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (kind, n) in &other.0 {
            *self.0.entry(kind.clone()).or_insert(0) += n;
        }
    }

    /// All errors counted.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Counters the progress bar reads while workers run (relaxed atomics, never per-message locks).
#[derive(Debug, Default)]
pub struct Live {
    /// Connections (or clients) ready for the measured phase.
    pub ready: AtomicU64,
    /// Messages (or operations) completed so far.
    pub done: AtomicU64,
    /// Clients that finished their measured phase (done or given up).
    pub finished: AtomicU64,
    /// Set when a client failed during set-up: the coordinator then aborts the run.
    pub failed: std::sync::atomic::AtomicBool,
}

impl Live {
    /// Marks the run as failed in set-up.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Adds `n` to the completed count.
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_hold_every_sample() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=99 {
            a.record(Duration::from_micros(us));
        }
        b.record(Duration::from_millis(10));
        a.merge(&b);
        let s = a.summary().unwrap();
        assert_eq!(s.count, 100);
        assert!((s.p50_us - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.max_us - 10_000.0).abs() < 10.0, "{s:?}");
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert_eq!(Latency::new().summary(), None);
        assert!(Latency::new().percentile_curve().is_empty());
    }

    #[test]
    fn percentile_curve_rises_to_the_max() {
        let mut h = Latency::new();
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let curve = h.percentile_curve();
        assert!(curve
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let last = curve.last().unwrap();
        assert_eq!(last.0, 100.0);
        assert!((last.1 - 1000.0).abs() < 1.0);
    }

    #[test]
    fn timeline_buckets_and_merges() {
        let mut a = Timeline::new(Duration::from_millis(500));
        a.add(Duration::from_millis(100), 2);
        a.add(Duration::from_millis(1200), 1);
        let mut b = Timeline::new(Duration::from_millis(500));
        b.add(Duration::from_millis(499), 3);
        b.add(Duration::from_millis(2000), 5);
        a.merge(&b);
        assert_eq!(a.rates(), vec![10.0, 0.0, 2.0, 0.0, 10.0]);
    }

    #[test]
    fn error_counts_merge_by_kind() {
        let mut a = ErrorCounts::default();
        a.add("closed");
        let mut b = ErrorCounts::default();
        b.add("closed");
        b.add("io");
        a.merge(&b);
        assert_eq!(a.0.get("closed"), Some(&2));
        assert_eq!(a.total(), 3);
    }
}
