//! What a run reports: the final table, JSON for machines, the HdrHistogram percentile
//! distribution (`.hgrm`), and SVG plots.

use keyward::outln;
use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{json, Value};

use keyward::protocol::Status;

use keyward_loadgen::wire::Tally;

/// What one measured run produced, all threads merged.
#[derive(Clone)]
pub struct Outcome {
    /// The measured window in seconds.
    pub seconds: f64,
    /// Answers that arrived in the measured window.
    pub completed: u64,
    /// Credentials per request (batch size; 0 for PING).
    pub credentials: usize,
    pub histogram: Histogram<u64>,
    pub tally: Tally,
    pub unanswered: u64,
    pub unsent: u64,
    /// Requests answered per thread.
    pub per_thread: Vec<u64>,
    /// Open loop: the rate asked for.
    pub target_rate: Option<f64>,
}

pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
];

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.seconds.max(1e-9)
    }

    pub fn percentile(&self, q: f64) -> u64 {
        self.histogram.value_at_percentile(q)
    }

    /// Requests counted as errors: wrong answers, answers never received, open-loop requests
    /// never sent.
    pub fn errors(&self) -> u64 {
        self.tally.mismatches + self.unanswered
    }

    pub fn print(&self, headline: &str) {
        outln!("{headline}");
        let mut throughput = format!(
            "throughput   {} requests/s ({} requests in {:.1} s)",
            thousands(self.rate() as u64),
            thousands(self.completed),
            self.seconds
        );
        if self.credentials > 1 {
            throughput.push_str(&format!(
                ", {} credentials/s",
                thousands((self.rate() * self.credentials as f64) as u64)
            ));
        }
        if let Some(target) = self.target_rate {
            throughput.push_str(&format!(
                "; target {}/s ({:.0}%)",
                thousands(target as u64),
                100.0 * self.rate() / target
            ));
        }
        outln!("{throughput}");
        let mut latency = String::from("latency     ");
        if self.target_rate.is_some() {
            latency = format!(
                "latency of the {} requests due in the window, from when each was due:\n            ",
                thousands(self.histogram.len())
            );
        }
        for (name, q) in PERCENTILES {
            latency.push_str(&format!(" {name} {}", micros(self.percentile(q))));
        }
        latency.push_str(&format!(" max {}", micros(self.histogram.max())));
        outln!("{latency}");
        if self
            .target_rate
            .is_some_and(|target| self.rate() < 0.95 * target)
        {
            outln!("             the server fell behind the schedule: latencies grow with the backlog, and requests still waiting at the end are counted below, not above");
        }
        let statuses: Vec<String> = Status::ALL
            .iter()
            .zip(self.tally.by_status)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{s} {}", thousands(n)))
            .collect();
        if !statuses.is_empty() {
            outln!("statuses     {}", statuses.join(", "));
        }
        outln!(
            "errors       {} wrong answers, {} unanswered{}",
            thousands(self.tally.mismatches),
            thousands(self.unanswered),
            if self.target_rate.is_some() {
                format!(
                    ", {} due but never sent (client backlog)",
                    thousands(self.unsent)
                )
            } else {
                String::new()
            }
        );
        if self.per_thread.len() > 1 {
            let spread: Vec<String> = self.per_thread.iter().map(|n| thousands(*n)).collect();
            outln!("per thread   {}", spread.join(" / "));
        }
    }

    pub fn json(&self) -> Value {
        let mut latency = serde_json::Map::new();
        for (name, q) in PERCENTILES {
            latency.insert(format!("{name}_us"), json!(self.percentile(q) as f64 / 1e3));
        }
        latency.insert("max_us".into(), json!(self.histogram.max() as f64 / 1e3));
        latency.insert("mean_us".into(), json!(self.histogram.mean() / 1e3));
        let statuses: serde_json::Map<String, Value> = Status::ALL
            .iter()
            .zip(self.tally.by_status)
            .map(|(s, n)| (s.name().to_string(), json!(n)))
            .collect();
        json!({
            "seconds": self.seconds,
            "requests": self.completed,
            "requests_per_sec": self.rate(),
            "credentials_per_sec": self.rate() * self.credentials as f64,
            "target_rate": self.target_rate,
            "latency": latency,
            "latency_samples": self.histogram.len(),
            "statuses": statuses,
            "mismatches": self.tally.mismatches,
            "unanswered": self.unanswered,
            "unsent": self.unsent,
            "per_thread": self.per_thread,
        })
    }
}

/// Writes the HdrHistogram percentile distribution (the `.hgrm` text HdrHistogram's own tools
/// print and plot), values in milliseconds.
pub fn write_hgrm(histogram: &Histogram<u64>, out: &mut impl Write) -> std::io::Result<()> {
    const NS_PER_MS: f64 = 1e6;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let value = histogram.highest_equivalent(step.value_iterated_to()) as f64 / NS_PER_MS;
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:12.3} {quantile:2.12} {total:10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / NS_PER_MS,
        histogram.stdev() / NS_PER_MS
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / NS_PER_MS,
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        2048
    )
}

/// One step of a rate sweep, for the sweep plot.
pub struct SweepPoint {
    pub achieved: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A white 900×540 chart with a caption and room for axis labels, x in 0..x_max, y in 0..y_max.
fn chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    x_max: f64,
    y_max: f64,
) -> Result<Chart<'a, 'b>, String> {
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| e.to_string())
}

/// Latency by percentile, x on the usual 1/(1-p) log scale.
pub fn plot_percentiles(
    path: &Path,
    title: &str,
    histogram: &Histogram<u64>,
) -> Result<(), String> {
    let mut points = Vec::new();
    for step in histogram.iter_quantiles(5) {
        let quantile = step.quantile_iterated_to().min(0.999_999);
        points.push((
            (1.0 / (1.0 - quantile)).log10(),
            histogram.highest_equivalent(step.value_iterated_to()) as f64 / 1e3,
        ));
    }
    let x_max = points.iter().map(|p| p.0).fold(2.0, f64::max).ceil();
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let error = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let area = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let mut chart = chart(&area, title, x_max, y_max).map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(|e| error(&e))?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(|e| error(&e))?;
    area.present().map_err(|e| error(&e))
}

/// Latency against achieved throughput over the steps of a sweep, with the p99 bound.
pub fn plot_sweep(
    path: &Path,
    title: &str,
    steps: &[SweepPoint],
    slo_us: f64,
) -> Result<(), String> {
    let x_max = steps.iter().map(|s| s.achieved).fold(1.0, f64::max) * 1.05;
    let y_max = steps
        .iter()
        .map(|s| s.p99_us)
        .fold(slo_us, f64::max)
        .min(slo_us * 20.0)
        * 1.1;
    let error = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let area = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let mut chart = chart(&area, title, x_max, y_max).map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("achieved throughput (requests/s)")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| thousands(*x as u64))
        .draw()
        .map_err(|e| error(&e))?;
    let clip = |v: f64| v.min(y_max);
    chart
        .draw_series(LineSeries::new(
            steps.iter().map(|s| (s.achieved, clip(s.p50_us))),
            &BLUE,
        ))
        .map_err(|e| error(&e))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(
            steps.iter().map(|s| (s.achieved, clip(s.p99_us))),
            &RED,
        ))
        .map_err(|e| error(&e))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(
            [(0.0, slo_us), (x_max, slo_us)],
            BLACK.mix(0.4),
        ))
        .map_err(|e| error(&e))?
        .label("p99 bound")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    area.present().map_err(|e| error(&e))
}

fn percentile_label(x: f64) -> String {
    // x = log10(1/(1-p)): 0 → 0%, 1 → 90%, 2 → 99%, 3 → 99.9% …
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    match x.round() as i64 {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("{:.*}%", (n - 2).max(0) as usize, p),
    }
}

pub fn micros(nanos: u64) -> String {
    if nanos >= 10_000_000 {
        format!("{:.1}ms", nanos as f64 / 1e6)
    } else {
        format!("{:.1}µs", nanos as f64 / 1e3)
    }
}

pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::new_histogram;

    #[test]
    fn thread_histograms_merge() {
        let mut first = new_histogram();
        let mut second = new_histogram();
        for value in [1_000, 2_000, 3_000] {
            first.record(value).unwrap();
        }
        second.record(1_000_000).unwrap();
        first.add(&second).unwrap();
        assert_eq!(first.len(), 4);
        assert!(first.max() >= 1_000_000 && first.max() < 1_001_000);
        assert_eq!(first.value_at_percentile(50.0), 2_000);
    }

    #[test]
    fn hgrm_output_has_the_hdrhistogram_layout() {
        let mut histogram = new_histogram();
        for micros in 1..=1000u64 {
            histogram.record(micros * 1000).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines[1], "");
        let rows: Vec<Vec<&str>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 20);
        // Values in milliseconds, percentiles and counts rising, the last row at 100%.
        assert_eq!(rows[0][0], "0.001");
        let mut last = (0.0f64, 0.0f64, 0u64);
        for row in &rows {
            let value: f64 = row[0].parse().unwrap();
            let quantile: f64 = row[1].parse().unwrap();
            let count: u64 = row[2].parse().unwrap();
            assert!(
                value >= last.0 && quantile >= last.1 && count >= last.2,
                "{row:?}"
            );
            last = (value, quantile, count);
        }
        let end = rows.last().unwrap();
        assert_eq!((end[1], end[2], end.len()), ("1.000000000000", "1000", 3));
        assert!((last.0 - 1.0).abs() < 0.001, "{last:?}");
        let footer: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("#["))
            .copied()
            .collect();
        assert_eq!(footer.len(), 3);
        assert!(
            footer[0].starts_with("#[Mean    =")
                && footer[1].contains("Total count    =         1000")
        );
    }

    #[test]
    fn plots_are_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("keyward-loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut histogram = new_histogram();
        for value in 1..=10_000u64 {
            histogram.record(value * 100).unwrap();
        }
        let path = dir.join("p.svg");
        plot_percentiles(&path, "test", &histogram).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("99%"),
            "{}",
            &svg[..200.min(svg.len())]
        );
        let steps = [
            SweepPoint {
                achieved: 1000.0,
                p50_us: 40.0,
                p99_us: 90.0,
            },
            SweepPoint {
                achieved: 2000.0,
                p50_us: 60.0,
                p99_us: 900.0,
            },
        ];
        let path = dir.join("s.svg");
        plot_sweep(&path, "sweep", &steps, 500.0).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("p99 bound"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbers_print_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(micros(46_400), "46.4µs");
        assert_eq!(micros(12_500_000), "12.5ms");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(1.0), "90%");
    }
}
