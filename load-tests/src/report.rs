//! Writes `results/<scenario>.json`, `results/<scenario>.svg` and rewrites
//! `results/summary.md` from every result file present.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::stats::{summary_markdown, ScenarioResult};

/// The order of rows in the summary.
pub const ORDER: &[&str] = &["unary", "batch", "stream", "e2e", "priority", "scheduled"];

pub fn write(dir: &Path, r: &ScenarioResult) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join(format!("{}.json", r.scenario)), json + "\n")?;
    chart(&dir.join(format!("{}.svg", r.scenario)), r)?;
    rewrite_summary(dir)
}

pub fn rewrite_summary(dir: &Path) -> Result<()> {
    let mut all = Vec::new();
    for name in ORDER {
        let p = dir.join(format!("{name}.json"));
        if let Ok(s) = std::fs::read_to_string(&p) {
            match serde_json::from_str::<ScenarioResult>(&s) {
                Ok(r) => all.push(r),
                Err(e) => eprintln!("skipping {}: {e}", p.display()),
            }
        }
    }
    std::fs::write(dir.join("summary.md"), summary_markdown(&all))?;
    Ok(())
}

/// Top: throughput per second over the run (and the baseline's rate as a flat line).
/// Bottom: the latency distribution (p50, p90, p99, p99.9, max).
pub fn chart(path: &Path, r: &ScenarioResult) -> Result<()> {
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(340);

    let xmax = r.timeline.iter().map(|p| p.0).fold(1.0, f64::max) + 1.0;
    let ymax_series = r.timeline.iter().map(|p| p.1).fold(0.0, f64::max);
    let ymax = ymax_series
        .max(r.baseline.as_ref().map(|b| b.throughput).unwrap_or(0.0))
        .max(1.0)
        * 1.15;
    let mut c = ChartBuilder::on(&top)
        .caption(
            format!("{} ({}): {} per second", r.scenario, r.mode, r.unit),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(plot_err)?;
    c.configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()
        .map_err(plot_err)?;
    c.draw_series(LineSeries::new(r.timeline.iter().copied(), &BLUE))
        .map_err(plot_err)?
        .label(r.scenario.clone())
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if let Some(b) = &r.baseline {
        c.draw_series(LineSeries::new(
            vec![(0.0, b.throughput), (xmax, b.throughput)],
            &RED,
        ))
        .map_err(plot_err)?
        .label(format!("baseline {}", b.name))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;

    if let Some(p) = &r.latency {
        let pts = [
            (0.0, p.p50_ms),
            (1.0, p.p90_ms),
            (2.0, p.p99_ms),
            (3.0, p.p999_ms),
            (4.0, p.max_ms),
        ];
        let lmax = p.max_ms.max(0.001) * 1.15;
        let mut c = ChartBuilder::on(&bottom)
            .caption(
                format!("latency ({}), ms", r.latency_of),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2f64..4.2f64, 0f64..lmax)
            .map_err(plot_err)?;
        c.configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| {
                match x.round() as i64 {
                    0 => "p50",
                    1 => "p90",
                    2 => "p99",
                    3 => "p99.9",
                    4 => "max",
                    _ => "",
                }
                .to_string()
            })
            .y_desc("ms")
            .draw()
            .map_err(plot_err)?;
        c.draw_series(LineSeries::new(pts, &BLUE))
            .map_err(plot_err)?;
        if let Some(bl) = r.baseline.as_ref().and_then(|b| b.latency) {
            let bpts = [
                (0.0, bl.p50_ms),
                (1.0, bl.p90_ms),
                (2.0, bl.p99_ms),
                (3.0, bl.p999_ms),
                (4.0, bl.max_ms.min(lmax)),
            ];
            c.draw_series(LineSeries::new(bpts, &RED))
                .map_err(plot_err)?;
        }
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("chart: {e}")
}
