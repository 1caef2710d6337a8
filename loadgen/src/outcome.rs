//! What a worker hands back at the end of a scenario, and the merge of all workers' outcomes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::LoadgenError;
use crate::stats::{ErrorCounts, Latency, Timeline};

/// Bucket of the throughput timeline.
pub const TIMELINE_BUCKET: Duration = Duration::from_millis(250);

/// One worker's (or, merged, the whole run's) numbers.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latency histograms by name (`echo`, `move`, `chat`, `delivery`, `login`, ...).
    pub latencies: BTreeMap<String, Latency>,
    /// The headline count: messages, deliveries or operations completed in the window.
    pub count: u64,
    /// When each counted event happened, from the start of the window.
    pub timeline: Timeline,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// Other counters, summed over workers (`sent`, `clients_done`, ...).
    pub counters: BTreeMap<String, u64>,
    /// Other values, of which the merge keeps the largest (`completion_us`, ...).
    pub maxima: BTreeMap<String, u64>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            latencies: BTreeMap::new(),
            count: 0,
            timeline: Timeline::new(TIMELINE_BUCKET),
            errors: ErrorCounts::default(),
            counters: BTreeMap::new(),
            maxima: BTreeMap::new(),
        }
    }
}

impl Outcome {
    /// The histogram called `name`, created empty on first use.
    pub fn latency(&mut self, name: &str) -> &mut Latency {
        self.latencies.entry(name.to_string()).or_default()
    }

    /// Counts one event at `since_start` into the window.
    pub fn count_at(&mut self, since_start: Duration) {
        self.count += 1;
        self.timeline.add(since_start, 1);
    }

    /// Adds `n` to counter `name`.
    pub fn bump(&mut self, name: &str, n: u64) {
        *self.counters.entry(name.to_string()).or_insert(0) += n;
    }

    /// Keeps `value` for `name` if it is the largest so far.
    pub fn keep_max(&mut self, name: &str, value: u64) {
        let slot = self.maxima.entry(name.to_string()).or_insert(0);
        *slot = (*slot).max(value);
    }

    /// Counts an error by its kind.
    pub fn error(&mut self, e: &LoadgenError) {
        self.errors.add(e.kind());
    }

    /// Adds another outcome into this one.
    pub fn merge(&mut self, other: &Outcome) {
        for (name, h) in &other.latencies {
            self.latency(name).merge(h);
        }
        self.count += other.count;
        self.timeline.merge(&other.timeline);
        self.errors.merge(&other.errors);
        for (name, n) in &other.counters {
            self.bump(name, *n);
        }
        for (name, v) in &other.maxima {
            self.keep_max(name, *v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_counts_and_keeps_maxima() {
        let mut a = Outcome::default();
        a.count_at(Duration::from_millis(10));
        a.bump("sent", 2);
        a.keep_max("completion_us", 50);
        a.latency("echo").record(Duration::from_micros(10));
        let mut b = Outcome::default();
        b.count_at(Duration::from_millis(300));
        b.count_at(Duration::from_millis(310));
        b.bump("sent", 3);
        b.keep_max("completion_us", 70);
        b.latency("echo").record(Duration::from_micros(20));
        b.error(&LoadgenError::Closed);
        a.merge(&b);
        assert_eq!(a.count, 3);
        assert_eq!(a.counters["sent"], 5);
        assert_eq!(a.maxima["completion_us"], 70);
        assert_eq!(a.latencies["echo"].summary().unwrap().count, 2);
        assert_eq!(a.errors.total(), 1);
        assert_eq!(a.timeline.rates(), vec![4.0, 8.0]);
    }
}
