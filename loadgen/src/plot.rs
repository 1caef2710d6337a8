//! The picture of a run (SVG): the latency distribution as a percentile curve (how long the
//! slowest 1 in 10, 100, 1000... waited) and the throughput over time.

use std::path::Path;

use plotters::prelude::*;

use crate::error::LoadgenError;
use crate::report::Report;

/// Highest percentile shown: 99.999 (five nines).
const MAX_NINES: f64 = 5.0;

/// How many nines a percentile has: 90 → 1, 99 → 2, 99.9 → 3 (the plot's x axis).
pub fn nines(percentile: f64) -> f64 {
    let rest = (100.0 - percentile).max(0.0) / 100.0;
    if rest <= 0.0 {
        MAX_NINES
    } else {
        (-rest.log10()).clamp(0.0, MAX_NINES)
    }
}

/// A latency axis label: `250 µs`, `4 ms`, `1.5 s`.
pub fn micros_label(us: &f64) -> String {
    if *us >= 1e6 {
        format!("{} s", trim(us / 1e6))
    } else if *us >= 1e3 {
        format!("{} ms", trim(us / 1e3))
    } else {
        format!("{} µs", trim(*us))
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.strip_suffix(".0").map(str::to_string).unwrap_or(text)
}

fn nines_label(x: &f64) -> String {
    match x.round() as i64 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        3 => "99.9%".into(),
        4 => "99.99%".into(),
        _ => "99.999%".into(),
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// Draws `report` into an SVG file at `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), LoadgenError> {
    let fail = |e: String| LoadgenError::Output {
        path: path.to_path_buf(),
        reason: e,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let root = SVGBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let title = format!(
        "{} ({}) — {} {} at {:.0}/s",
        report.scenario,
        if report.tls { "TLS" } else { "plaintext" },
        report.count,
        report.unit,
        report.throughput_per_sec
    );
    let root = root
        .titled(&title, ("sans-serif", 20))
        .map_err(|e| fail(e.to_string()))?;
    let (left, right) = root.split_horizontally(600);
    latency_panel(report, &left).map_err(|e| fail(e.to_string()))?;
    throughput_panel(report, &right).map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error + 'static>>;

fn latency_panel(report: &Report, area: &Area<'_>) -> DrawResult {
    let max_us = report
        .percentiles
        .values()
        .flat_map(|c| c.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let min_us = report
        .percentiles
        .values()
        .flat_map(|c| c.iter().map(|p| p.1))
        .filter(|v| *v > 0.0)
        .fold(max_us, f64::min)
        .max(0.1);
    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..MAX_NINES, (min_us * 0.9..max_us * 1.1).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&nines_label)
        .x_desc("percentile")
        .y_desc("latency")
        .y_label_formatter(&micros_label)
        .draw()?;
    for (i, (name, curve)) in report.percentiles.iter().enumerate() {
        if curve.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                curve.iter().map(|(p, us)| (nines(*p), us.max(min_us))),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

fn throughput_panel(report: &Report, area: &Area<'_>) -> DrawResult {
    let bucket = report.timeline_bucket_ms.max(1) as f64 / 1000.0;
    let points: Vec<(f64, f64)> = report
        .timeline_per_sec
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64 * bucket, *v))
        .collect();
    let max_x = (points.len() as f64 * bucket).max(bucket);
    let max_y = points.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} per second", report.unit), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the window")
        .y_desc("per second")
        .y_label_formatter(&|v| {
            if *v >= 1e6 {
                format!("{:.1}M", v / 1e6)
            } else if *v >= 1e3 {
                format!("{:.0}k", v / 1e3)
            } else {
                format!("{v:.0}")
            }
        })
        .draw()?;
    chart.draw_series(LineSeries::new(points, COLORS[0].stroke_width(2)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_labels_pick_their_unit() {
        assert_eq!(micros_label(&250.0), "250 µs");
        assert_eq!(micros_label(&4000.0), "4 ms");
        assert_eq!(micros_label(&1_500_000.0), "1.5 s");
    }

    #[test]
    fn percentiles_map_to_nines() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
    }
}
