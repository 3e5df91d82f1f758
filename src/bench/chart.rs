//! The bench chart: accepted rate and p99 latency against offered load, heartsink and Octavia.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{OctaviaStep, Step};

type Error = Box<dyn std::error::Error>;
type Points = Vec<(f64, f64)>;

/// One log-log panel with a heartsink series and an Octavia series.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    y_desc: &str,
    (xmin, xmax): (f64, f64),
    ymin: f64,
    series: [(&str, RGBColor, &Points); 2],
) -> Result<(), Error> {
    let ymax = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(ymin * 10.0, f64::max) * 1.5;
    let mut c = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())?;
    c.configure_mesh().x_desc("offered heartbeats/s").y_desc(y_desc).draw()?;
    for (name, color, points) in series {
        c.draw_series(LineSeries::new(points.iter().copied(), color))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        c.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}

/// Draws the two panels into an SVG file.
pub fn draw(path: &Path, hs: &[Step], oct: &[OctaviaStep]) -> Result<(), Error> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let offered: Vec<f64> = hs.iter().filter_map(|s| s.offered).collect();
    let x =
        (offered.iter().copied().fold(1000.0, f64::min) * 0.8, offered.iter().copied().fold(1000.0, f64::max) * 1.2);
    let hs_rate: Points = hs.iter().filter_map(|s| Some((s.offered?, s.accepted_rate.max(1.0)))).collect();
    let oct_rate: Points = oct.iter().filter_map(|s| Some((s.offered?, s.rate.max(1.0)))).collect();
    let rates = [("heartsink", BLUE, &hs_rate), ("Octavia check()", RED, &oct_rate)];
    panel(&left, "accepted heartbeats/s vs offered load", "accepted/s", x, 100.0, rates)?;
    let hs_p99: Points = hs.iter().filter_map(|s| Some((s.offered?, s.p99_us?.max(1.0)))).collect();
    let oct_p99: Points = oct.iter().filter_map(|s| Some((s.offered?, s.p99_us?.max(1.0)))).collect();
    let p99 = [("heartsink", BLUE, &hs_p99), ("Octavia check()", RED, &oct_p99)];
    panel(&right, "p99 send-to-applied latency (µs) vs offered load", "p99 µs", x, 1.0, p99)?;
    root.present()?;
    Ok(())
}
