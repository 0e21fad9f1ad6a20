//! The two charts of BENCHMARKS.md, as SVG: p99 latency against deliveries per second, and RSS
//! against open connections, one line per server.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::scenarios::deliver::Delivery;
use crate::target::Kind;

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Palisade | Kind::PalisadeOpen => RGBColor(0x1f, 0x6f, 0xd1),
        Kind::Bare => RGBColor(0x7a, 0x7a, 0x7a),
        Kind::Node => RGBColor(0x2e, 0x9e, 0x4a),
        Kind::Floor => RGBColor(0xc0, 0x39, 0x2b),
    }
}

/// Draws one line per series of (x, y) points.
fn lines(
    path: &Path,
    caption: &str,
    (x_label, y_label): (&str, &str),
    series: &[(Kind, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let max = |f: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|(_, points)| points.iter().map(f))
            .fold(0.0_f64, f64::max)
            * 1.1
    };
    let (x_max, y_max) = (max(|p| p.0).max(1.0), max(|p| p.1).max(1.0));
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (kind, points) in series {
        let style = color(*kind);
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                style.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{kind:?}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// p99 latency against deliveries/s: the paced runs, then the unpaced maximum.
pub fn latency(path: &Path, runs: &[(Kind, &[Delivery], &Delivery)]) -> anyhow::Result<()> {
    let series: Vec<_> = runs
        .iter()
        .map(|(kind, paced, max)| {
            let points = paced
                .iter()
                .chain(std::iter::once(*max))
                .map(|d| (d.deliveries_per_second, d.p99_ms))
                .collect();
            (*kind, points)
        })
        .collect();
    lines(
        path,
        "p99 publish→deliver latency against throughput",
        ("deliveries per second", "p99 latency (ms)"),
        &series,
    )
}

/// RSS (MiB) against open idle subscribed connections.
pub fn memory(path: &Path, runs: &[(Kind, &[(usize, u64)])]) -> anyhow::Result<()> {
    let series: Vec<_> = runs
        .iter()
        .map(|(kind, points)| {
            let points = points
                .iter()
                .map(|&(n, rss)| (n as f64, rss as f64 / 1_048_576.0))
                .collect();
            (*kind, points)
        })
        .collect();
    lines(
        path,
        "Resident memory against idle subscribed connections",
        ("connections", "RSS (MiB)"),
        &series,
    )
}
