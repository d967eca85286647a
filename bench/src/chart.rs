//! The chart: for each workload, committed txn/s and p99 latency against
//! the number of clients, one line per system, both on log scales (the
//! systems lie orders of magnitude apart). Plain SVG written by hand.

use std::fmt::Write as _;

use crate::report::{Report, Row};
use crate::systems::SystemKind;

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 260.0;
/// Room for axis labels around a panel's plot area.
const MARGIN_L: f64 = 70.0;
const MARGIN_B: f64 = 40.0;
const MARGIN_T: f64 = 30.0;
const LEGEND_H: f64 = 40.0;

/// What a panel plots of a row.
type Measure = fn(&Row) -> Option<f64>;

fn color(system: SystemKind) -> &'static str {
    match system {
        SystemKind::Redstage => "#d62728",
        SystemKind::RedstageLocking => "#9467bd",
        SystemKind::RedstageHttp => "#ff7f0e",
        SystemKind::Lua => "#1f77b4",
        SystemKind::Watch => "#2ca02c",
        SystemKind::Naive => "#7f7f7f",
        SystemKind::TwoPhase => "#8c564b",
    }
}

pub fn svg(report: &Report) -> String {
    let mut workloads = Vec::new();
    let mut clients: Vec<usize> = Vec::new();
    let mut systems = Vec::new();
    for r in &report.rows {
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload);
        }
        if !clients.contains(&r.concurrency) {
            clients.push(r.concurrency);
        }
        if !systems.contains(&r.system) {
            systems.push(r.system);
        }
    }
    clients.sort_unstable();
    let width = 2.0 * (PANEL_W + MARGIN_L) + 20.0;
    let height = LEGEND_H + workloads.len() as f64 * (PANEL_H + MARGIN_T + MARGIN_B);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, system) in systems.iter().enumerate() {
        let x = MARGIN_L + i as f64 * 140.0;
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"20\" x2=\"{}\" y2=\"20\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"24\">{system}</text>",
            x + 24.0,
            color(*system),
            x + 30.0
        );
    }
    for (row, workload) in workloads.iter().enumerate() {
        let top = LEGEND_H + row as f64 * (PANEL_H + MARGIN_T + MARGIN_B) + MARGIN_T;
        let rows: Vec<&Row> = report
            .rows
            .iter()
            .filter(|r| r.workload == *workload)
            .collect();
        let panels: [(&str, Measure); 2] = [
            ("committed txn/s (log)", |r| Some(r.txn_per_s)),
            ("p99 latency, ms (log)", |r| r.p99_ms),
        ];
        for (col, (title, value)) in panels.into_iter().enumerate() {
            let panel = Panel {
                left: MARGIN_L + col as f64 * (PANEL_W + MARGIN_L),
                top,
                clients: &clients,
            };
            let title = format!("{workload}: {title}");
            panel.draw(&mut out, &title, &rows, &systems, value);
        }
    }
    out += "</svg>\n";
    out
}

/// One plot area.
struct Panel<'a> {
    left: f64,
    top: f64,
    clients: &'a [usize],
}

impl Panel<'_> {
    fn draw(
        &self,
        out: &mut String,
        title: &str,
        rows: &[&Row],
        systems: &[SystemKind],
        value: Measure,
    ) {
        let values: Vec<f64> = rows
            .iter()
            .filter_map(|r| value(r))
            .filter(|v| *v > 0.0)
            .collect();
        let ticks = log_ticks(&values);
        let (lo, hi) = (ticks[0], *ticks.last().expect("ticks"));
        let y = |v: f64| {
            let f = (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10());
            self.top + PANEL_H * (1.0 - f)
        };
        let x = |i: usize| {
            let n = self.clients.len().max(2) - 1;
            self.left + 20.0 + (PANEL_W - 40.0) * i as f64 / n as f64
        };
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{title}</text>\
             <rect x=\"{}\" y=\"{}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#999\"/>",
            self.left,
            self.top - 8.0,
            self.left,
            self.top
        );
        for t in &ticks {
            let _ = writeln!(
                out,
                "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                self.left,
                self.left + PANEL_W,
                self.left - 6.0,
                y(*t) + 4.0,
                label(*t),
                y = y(*t),
            );
        }
        for (i, c) in self.clients.iter().enumerate() {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
                x(i),
                self.top + PANEL_H + 16.0
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">clients</text>",
            self.left + PANEL_W / 2.0,
            self.top + PANEL_H + 32.0
        );
        for system in systems {
            let points: Vec<String> = self
                .clients
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let row = rows
                        .iter()
                        .find(|r| r.system == *system && r.concurrency == *c)?;
                    let v = value(row).filter(|v| *v > 0.0)?;
                    Some(format!("{:.1},{:.1}", x(i), y(v)))
                })
                .collect();
            let stroke = color(*system);
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"2\"/>",
                points.join(" ")
            );
            for p in &points {
                let (px, py) = p.split_once(',').expect("x,y");
                let _ = writeln!(
                    out,
                    "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{stroke}\"/>"
                );
            }
        }
    }
}

/// Powers of ten around every value.
fn log_ticks(values: &[f64]) -> Vec<f64> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return vec![0.1, 1.0, 10.0];
    }
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    (a..=b.max(a + 1)).map(|e| 10f64.powi(e)).collect()
}

fn label(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1000.0 => format!("{}k", v / 1000.0),
        v if v >= 1.0 || v == 0.0 => format!("{v}"),
        v => format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_span_whole_decades() {
        assert_eq!(log_ticks(&[0.3, 42.0]), [0.1, 1.0, 10.0, 100.0]);
        assert_eq!(log_ticks(&[]), [0.1, 1.0, 10.0]);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(label(20000.0), "20k");
        assert_eq!(label(1e6), "1M");
        assert_eq!(label(0.1), "0.1");
        assert_eq!(label(5.0), "5");
    }
}
