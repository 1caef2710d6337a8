//! Markdown tables of many runs side by side (what `scripts/bench` writes into BENCHMARKS.md):
//! each server (runtime or the echo floor) in its own row, with its ratio to glommio and to
//! the floor. A run's server is its `server` label (`glommio`, `tokio`, `floor`, ...).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::report::Report;

/// The label that names the server a run measured.
pub const SERVER_LABEL: &str = "server";
/// The reference runtime.
pub const BASELINE: &str = "glommio";
/// The echo floor's server label.
pub const FLOOR: &str = "floor";

fn server(r: &Report) -> &str {
    r.labels.get(SERVER_LABEL).map_or("?", String::as_str)
}

fn param_u64(r: &Report, key: &str) -> u64 {
    r.params.get(key).and_then(|v| v.as_u64()).unwrap_or(0)
}

fn latency(r: &Report, name: &str) -> (String, String) {
    match r.latency.get(name) {
        Some(l) => (format!("{:.0}", l.p50_us), format!("{:.0}", l.p99_us)),
        None => ("–".into(), "–".into()),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// How busy the load generator's threads were over the window, in percent.
fn loadgen_busy(r: &Report) -> String {
    let capacity_ms = r.window_secs * 1e3 * r.threads.max(1) as f64;
    if capacity_ms > 0.0 && r.loadgen_cpu_ms > 0.0 {
        format!("{:.0}%", 100.0 * r.loadgen_cpu_ms / capacity_ms)
    } else {
        "–".into()
    }
}

fn cpu_per_event(r: &Report) -> Option<f64> {
    r.server.as_ref().and_then(|s| s.cpu_us_per_event)
}

/// Server order in tables: glommio first, the other runtimes, the floor last.
fn server_rank(name: &str) -> (u8, String) {
    match name {
        BASELINE => (0, String::new()),
        FLOOR => (2, String::new()),
        other => (1, other.to_string()),
    }
}

/// Echo runs: one row per (connections, server).
pub fn echo_table(reports: &[&Report]) -> String {
    let mut by_conns: BTreeMap<u64, Vec<&Report>> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.scenario == "echo") {
        by_conns.entry(param_u64(r, "conns")).or_default().push(r);
    }
    if by_conns.is_empty() {
        return String::new();
    }
    let mut s = String::new();
    s.push_str("| conns | server | msg/s | p50 µs | p99 µs | server CPU µs/msg | CPU s per M msgs | loadgen busy | msg/s vs glommio | msg/s vs floor | CPU/msg vs floor |\n");
    s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (conns, mut runs) in by_conns {
        runs.sort_by_key(|r| server_rank(server(r)));
        let find = |name: &str| runs.iter().find(|r| server(r) == name).copied();
        let base = find(BASELINE);
        let floor = find(FLOOR);
        for r in &runs {
            let (p50, p99) = latency(r, "echo");
            let cpu = cpu_per_event(r);
            let _ = writeln!(
                s,
                "| {conns} | {} | {:.0} | {p50} | {p99} | {} | {} | {} | {} | {} | {} |",
                server(r),
                r.throughput_per_sec,
                opt(cpu, 2),
                opt(cpu, 2), // µs per message = s per million messages
                loadgen_busy(r),
                ratio(
                    Some(r.throughput_per_sec),
                    base.map(|b| b.throughput_per_sec)
                ),
                ratio(
                    Some(r.throughput_per_sec),
                    floor.map(|f| f.throughput_per_sec)
                ),
                ratio(cpu, floor.and_then(cpu_per_event)),
            );
        }
    }
    s
}

/// Broadcast runs: one row per (clients, server).
pub fn broadcast_table(reports: &[&Report]) -> String {
    let mut runs: Vec<&Report> = reports
        .iter()
        .copied()
        .filter(|r| r.scenario == "broadcast")
        .collect();
    if runs.is_empty() {
        return String::new();
    }
    runs.sort_by_key(|r| (param_u64(r, "clients"), server_rank(server(r))));
    let mut s = String::new();
    s.push_str("| clients | server | deliveries | all delivered in s | deliveries/s | delivery p50 ms | delivery p99 ms | server CPU s | CPU ns/delivery | peak RSS MiB | loadgen busy | time vs glommio |\n");
    s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &runs {
        let base = runs
            .iter()
            .find(|b| server(b) == BASELINE && param_u64(b, "clients") == param_u64(r, "clients"));
        let (p50, p99) = match r.latency.get("delivery") {
            Some(l) => (
                format!("{:.1}", l.p50_us / 1e3),
                format!("{:.1}", l.p99_us / 1e3),
            ),
            None => ("–".into(), "–".into()),
        };
        let sv = r.server.as_ref();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.0} | {p50} | {p99} | {} | {} | {} | {} | {} |",
            param_u64(r, "clients"),
            server(r),
            r.count,
            r.window_secs,
            r.throughput_per_sec,
            opt(sv.map(|v| v.cpu_ms / 1e3), 2),
            opt(cpu_per_event(r).map(|us| us * 1e3), 0),
            opt(sv.map(|v| v.peak_rss_kib as f64 / 1024.0), 0),
            loadgen_busy(r),
            ratio(Some(r.window_secs), base.map(|b| b.window_secs)),
        );
    }
    s
}

/// Idle runs: one row per (server, TLS, connections).
pub fn idle_table(reports: &[&Report]) -> String {
    let mut runs: Vec<&Report> = reports
        .iter()
        .copied()
        .filter(|r| r.scenario == "idle")
        .collect();
    if runs.is_empty() {
        return String::new();
    }
    runs.sort_by_key(|r| (server_rank(server(r)), r.tls, param_u64(r, "conns")));
    let mut s = String::new();
    s.push_str("| server | transport | conns held | RSS before MiB | RSS held MiB | KiB per conn | peak RSS MiB |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for r in runs {
        let sv = r.server.as_ref();
        let mib = |kib: Option<u64>| opt(kib.map(|k| k as f64 / 1024.0), 1);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            server(r),
            if r.tls { "TLS" } else { "plaintext" },
            r.counters.get("held").copied().unwrap_or(0),
            mib(sv.map(|v| v.rss_before_kib)),
            mib(sv.map(|v| v.rss_ready_kib)),
            opt(sv.and_then(|v| v.rss_per_client_kib), 1),
            mib(sv.map(|v| v.peak_rss_kib)),
        );
    }
    s
}

/// Every other scenario: one generic row each.
pub fn other_table(reports: &[&Report]) -> String {
    let runs: Vec<&Report> = reports
        .iter()
        .copied()
        .filter(|r| !matches!(r.scenario.as_str(), "echo" | "broadcast" | "idle"))
        .collect();
    if runs.is_empty() {
        return String::new();
    }
    let mut s = String::new();
    s.push_str("| scenario | server | count | per second | latency | p50 µs | p99 µs | server CPU µs/event | errors |\n");
    s.push_str("|---|---|---:|---:|---|---:|---:|---:|---:|\n");
    for r in runs {
        let first = r.latency.iter().next();
        let _ = writeln!(
            s,
            "| {} | {} | {} {} | {:.0} | {} | {} | {} | {} | {} |",
            r.scenario,
            server(r),
            r.count,
            r.unit,
            r.throughput_per_sec,
            first.map_or("–", |(k, _)| k.as_str()),
            first.map_or("–".into(), |(_, l)| format!("{:.0}", l.p50_us)),
            first.map_or("–".into(), |(_, l)| format!("{:.0}", l.p99_us)),
            opt(cpu_per_event(r), 2),
            r.errors.total(),
        );
    }
    s
}

/// Every table that has runs, each under a heading.
pub fn render(reports: &[Report]) -> String {
    let refs: Vec<&Report> = reports.iter().collect();
    let mut s = String::new();
    for (title, table) in [
        ("Echo (closed loop)", echo_table(&refs)),
        ("Broadcast", broadcast_table(&refs)),
        ("Idle connections", idle_table(&refs)),
        ("Other scenarios", other_table(&refs)),
    ] {
        if !table.is_empty() {
            let _ = write!(s, "#### {title}\n\n{table}\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{LatencyReport, ServerReport};
    use crate::stats::ErrorCounts;

    fn report(scenario: &str, server: &str, conns: u64, rate: f64, cpu_us: f64) -> Report {
        Report {
            scenario: scenario.into(),
            labels: [(SERVER_LABEL.to_string(), server.to_string())].into(),
            command: vec![],
            params: [
                ("conns".to_string(), conns.into()),
                ("clients".to_string(), conns.into()),
            ]
            .into(),
            tls: false,
            threads: 1,
            cores: vec![0],
            finished_unix: 0,
            unit: "messages".into(),
            count: (rate * 10.0) as u64,
            window_secs: 10.0,
            throughput_per_sec: rate,
            latency: [(
                "echo".to_string(),
                LatencyReport {
                    count: 1,
                    mean_us: 1.0,
                    p50_us: 90.0,
                    p90_us: 1.0,
                    p99_us: 150.0,
                    p999_us: 1.0,
                    max_us: 1.0,
                },
            )]
            .into(),
            counters: [("held".to_string(), conns)].into(),
            errors: ErrorCounts::default(),
            loadgen_cpu_ms: 0.0,
            server: Some(ServerReport {
                pid: 1,
                cpu_ms: 1.0,
                cpu_us_per_event: Some(cpu_us),
                rss_before_kib: 1024,
                rss_ready_kib: 2048,
                peak_rss_kib: 4096,
                rss_per_client_kib: Some(19.1),
            }),
            timeline_bucket_ms: 250,
            timeline_per_sec: vec![],
            percentiles: BTreeMap::new(),
        }
    }

    #[test]
    fn echo_rows_carry_ratios_to_glommio_and_the_floor() {
        let runs = [
            report("echo", "floor", 10, 200_000.0, 5.0),
            report("echo", "glommio", 10, 100_000.0, 10.0),
        ];
        let table = echo_table(&runs.iter().collect::<Vec<_>>());
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 2);
        assert!(
            rows[0].starts_with("| 10 | glommio | 100000 | 90 | 150 | 10.00 |"),
            "{}",
            rows[0]
        );
        assert!(
            rows[0].ends_with("| 1.00× | 0.50× | 2.00× |"),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("| floor |"), "{}", rows[1]);
        assert!(
            rows[1].ends_with("| 2.00× | 1.00× | 1.00× |"),
            "{}",
            rows[1]
        );
    }

    #[test]
    fn a_missing_baseline_shows_a_dash() {
        let runs = [report("echo", "tokio", 1, 50_000.0, 20.0)];
        let table = echo_table(&runs.iter().collect::<Vec<_>>());
        assert!(
            table.lines().nth(2).unwrap().contains("| – | – | – |"),
            "{table}"
        );
    }

    #[test]
    fn idle_rows_show_memory_per_connection() {
        let runs = [report("idle", "glommio", 10_000, 0.0, 0.0)];
        let table = idle_table(&runs.iter().collect::<Vec<_>>());
        assert!(
            table.contains("| glommio | plaintext | 10000 | 1.0 | 2.0 | 19.1 | 4.0 |"),
            "{table}"
        );
    }

    #[test]
    fn render_skips_scenarios_without_runs() {
        let runs = vec![report("broadcast", "glommio", 5002, 1.0, 0.17)];
        let text = render(&runs);
        assert!(text.contains("#### Broadcast"));
        assert!(!text.contains("#### Echo"));
    }
}
