//! The result of a run: printed for a person, written as JSON for scripts.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::run::RunResult;
use crate::stats::{ErrorCounts, LatencySummary};

/// `deliveries` → `delivery`, `messages` → `message`.
fn singular(unit: &str) -> String {
    match unit.strip_suffix("ies") {
        Some(stem) => format!("{stem}y"),
        None => unit.trim_end_matches('s').to_string(),
    }
}

/// The server's numbers, when `--server-pid` named it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerReport {
    /// The server's process id.
    pub pid: u32,
    /// CPU time of all its threads in the measured window, in milliseconds.
    pub cpu_ms: f64,
    /// CPU microseconds per counted event (message, delivery, operation).
    pub cpu_us_per_event: Option<f64>,
    /// Resident memory before the clients connected, KiB.
    pub rss_before_kib: u64,
    /// Resident memory with every client ready, KiB.
    pub rss_ready_kib: u64,
    /// Peak resident memory of the process's life up to the end of the run (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// (ready - before) / clients, KiB: what one connection (or client) costs the server.
    pub rss_per_client_kib: Option<f64>,
}

/// Latency summary as written in the JSON file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyReport {
    /// Samples.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest, µs.
    pub max_us: f64,
}

impl From<LatencySummary> for LatencyReport {
    fn from(s: LatencySummary) -> Self {
        Self {
            count: s.count,
            mean_us: s.mean_us,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
        }
    }
}

/// One run, as the JSON result file holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `echo`, `broadcast`, `world`, `login`, `churn` or `idle`.
    pub scenario: String,
    /// Free labels from `--label key=value` (the bench script sets `runtime`, `server`, ...).
    pub labels: BTreeMap<String, String>,
    /// The command line.
    pub command: Vec<String>,
    /// The scenario's parameters.
    pub params: BTreeMap<String, serde_json::Value>,
    /// TLS or plaintext.
    pub tls: bool,
    /// Loadgen threads.
    pub threads: usize,
    /// Cores the loadgen threads were pinned to.
    pub cores: Vec<usize>,
    /// Seconds since the Unix epoch at the end of the run.
    pub finished_unix: u64,
    /// What `count` counts (`messages`, `deliveries`, `operations`, `connections`).
    pub unit: String,
    /// Events counted in the measured window.
    pub count: u64,
    /// The measured window, seconds.
    pub window_secs: f64,
    /// `count / window_secs`.
    pub throughput_per_sec: f64,
    /// Latency summaries by name.
    pub latency: BTreeMap<String, LatencyReport>,
    /// Other counters (`sent`, `clients_complete`, `completion_us`, ...).
    pub counters: BTreeMap<String, u64>,
    /// Errors by kind.
    pub errors: ErrorCounts,
    /// The server's numbers, if sampled.
    pub server: Option<ServerReport>,
    /// CPU time of the loadgen's own threads in the measured window, milliseconds: near
    /// `threads × window` means the load generator, not the server, was the limit.
    #[serde(default)]
    pub loadgen_cpu_ms: f64,
    /// Timeline bucket, milliseconds.
    pub timeline_bucket_ms: u64,
    /// Events per second in each bucket of the window.
    pub timeline_per_sec: Vec<f64>,
    /// (percentile, µs) points of each latency, for plots.
    pub percentiles: BTreeMap<String, Vec<(f64, f64)>>,
}

/// What the scenario adds to the generic result.
#[derive(Debug, Clone)]
pub struct ReportMeta {
    /// Scenario name.
    pub scenario: String,
    /// What is counted.
    pub unit: String,
    /// Parameters.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// TLS on.
    pub tls: bool,
    /// Threads.
    pub threads: usize,
    /// Pinned cores.
    pub cores: Vec<usize>,
    /// Clients the per-client memory is divided by.
    pub clients: u64,
    /// The server pid, if sampled.
    pub server_pid: Option<u32>,
    /// Override of the window (the broadcast's is its completion time).
    pub window_override: Option<std::time::Duration>,
}

impl Report {
    /// Builds the report of a finished run.
    pub fn new(meta: ReportMeta, result: &RunResult) -> Self {
        let o = &result.outcome;
        let window = meta.window_override.unwrap_or(result.elapsed);
        let window_secs = window.as_secs_f64();
        let mut counters = o.counters.clone();
        counters.extend(o.maxima.iter().map(|(k, v)| (k.clone(), *v)));
        let server = match (meta.server_pid, result.server) {
            (Some(pid), Some(s)) => Some(ServerReport {
                pid,
                cpu_ms: s.cpu_ns as f64 / 1e6,
                cpu_us_per_event: (o.count > 0).then(|| s.cpu_ns as f64 / 1e3 / o.count as f64),
                rss_before_kib: s.before.rss_kib,
                rss_ready_kib: s.ready.rss_kib,
                peak_rss_kib: s.end.hwm_kib,
                rss_per_client_kib: (meta.clients > 0).then(|| {
                    (s.ready.rss_kib as f64 - s.before.rss_kib as f64) / meta.clients as f64
                }),
            }),
            _ => None,
        };
        Self {
            scenario: meta.scenario,
            labels: meta.labels,
            command: std::env::args().collect(),
            params: meta.params,
            tls: meta.tls,
            threads: meta.threads,
            cores: meta.cores,
            finished_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            unit: meta.unit,
            count: o.count,
            window_secs,
            throughput_per_sec: if window_secs > 0.0 {
                o.count as f64 / window_secs
            } else {
                0.0
            },
            latency: o
                .latencies
                .iter()
                .filter_map(|(k, h)| h.summary().map(|s| (k.clone(), s.into())))
                .collect(),
            counters,
            errors: o.errors.clone(),
            server,
            loadgen_cpu_ms: result.loadgen_cpu_ns as f64 / 1e6,
            timeline_bucket_ms: o.timeline.bucket().as_millis() as u64,
            timeline_per_sec: {
                // Events booked just after the window would draw a last, nearly empty bucket.
                let buckets = (window_secs / o.timeline.bucket().as_secs_f64()).ceil() as usize;
                let mut rates = o.timeline.rates();
                rates.truncate(buckets.max(1));
                rates
            },
            percentiles: o
                .latencies
                .iter()
                .map(|(k, h)| (k.clone(), h.percentile_curve()))
                .collect(),
        }
    }

    /// The report as a person reads it.
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} ({}): {} {} in {:.3} s = {:.0}/s",
            self.scenario,
            if self.tls { "TLS" } else { "plaintext" },
            self.count,
            self.unit,
            self.window_secs,
            self.throughput_per_sec
        );
        for (name, l) in &self.latency {
            let _ = writeln!(
                s,
                "  {name:<16} p50 {:>10.1} µs  p99 {:>10.1} µs  p99.9 {:>10.1} µs  max {:>10.1} µs  (n={})",
                l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
            );
        }
        if !self.counters.is_empty() {
            let list: Vec<String> = self
                .counters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "  counters: {}", list.join(" "));
        }
        if self.errors.total() > 0 {
            let list: Vec<String> = self
                .errors
                .0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "  errors: {}", list.join(" "));
        }
        let _ = writeln!(
            s,
            "  loadgen CPU {:.1} ms ({:.0}% of {} thread(s) over the window)",
            self.loadgen_cpu_ms,
            100.0 * self.loadgen_cpu_ms / 1e3 / (self.window_secs * self.threads as f64).max(1e-9),
            self.threads
        );
        if let Some(sv) = &self.server {
            let _ = write!(s, "  server pid {}: CPU {:.1} ms", sv.pid, sv.cpu_ms);
            if let Some(per) = sv.cpu_us_per_event {
                let _ = write!(s, " ({per:.2} µs per {})", singular(&self.unit));
            }
            let _ = write!(
                s,
                ", RSS {} → {} KiB, peak {} KiB",
                sv.rss_before_kib, sv.rss_ready_kib, sv.peak_rss_kib
            );
            if let Some(per) = sv.rss_per_client_kib {
                let _ = write!(s, ", {per:.1} KiB per client");
            }
            s.push('\n');
        }
        s
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadgenError> {
        let output = |reason: String| LoadgenError::Output {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| output(e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| output(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| output(e.to_string()))
    }

    /// Reads a report written by [`write_json`](Self::write_json).
    pub fn read_json(path: &Path) -> Result<Self, LoadgenError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadgenError::Output {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| LoadgenError::Output {
            path: path.to_path_buf(),
            reason: format!("not a loadgen result: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_well_in_the_singular() {
        assert_eq!(singular("deliveries"), "delivery");
        assert_eq!(singular("messages"), "message");
        assert_eq!(singular("cycles"), "cycle");
    }
}
