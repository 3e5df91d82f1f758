//! The bench chart: accepted rate and p99 latency against offered load, heartsink and Octavia.

use std::path::Path;

use plotters::prelude::*;

use super::{OctaviaStep, Step};

type Error = Box<dyn std::error::Error>;

/// Draws two panels into an SVG file.
pub fn draw(path: &Path, hs: &[Step], oct: &[OctaviaStep]) -> Result<(), Error> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let offered: Vec<f64> = hs.iter().filter_map(|s| s.offered).collect();
    let xmax = offered.iter().cloned().fold(1000.0, f64::max) * 1.2;
    let xmin = offered.iter().cloned().fold(f64::MAX, f64::min).min(1000.0) * 0.8;

    let hs_rate: Vec<(f64, f64)> = hs.iter().filter_map(|s| Some((s.offered?, s.accepted_rate.max(1.0)))).collect();
    let oct_rate: Vec<(f64, f64)> = oct.iter().filter_map(|s| Some((s.offered?, s.rate.max(1.0)))).collect();
    let ymax = hs_rate.iter().chain(&oct_rate).map(|p| p.1).fold(1000.0, f64::max) * 1.5;
    let mut c = ChartBuilder::on(&left)
        .caption("accepted heartbeats/s vs offered load", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), (100.0..ymax).log_scale())?;
    c.configure_mesh().x_desc("offered heartbeats/s").y_desc("accepted/s").draw()?;
    c.draw_series(LineSeries::new(hs_rate.clone(), &BLUE))?
        .label("heartsink")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    c.draw_series(hs_rate.iter().map(|p| Circle::new(*p, 3, BLUE.filled())))?;
    c.draw_series(LineSeries::new(oct_rate.clone(), &RED))?
        .label("Octavia check()")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    c.draw_series(oct_rate.iter().map(|p| Circle::new(*p, 3, RED.filled())))?;
    c.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;

    let hs_p99: Vec<(f64, f64)> = hs.iter().filter_map(|s| Some((s.offered?, s.p99_us?.max(1.0)))).collect();
    let oct_p99: Vec<(f64, f64)> = oct.iter().filter_map(|s| Some((s.offered?, s.p99_us?.max(1.0)))).collect();
    let lmax = hs_p99.iter().chain(&oct_p99).map(|p| p.1).fold(1000.0, f64::max) * 2.0;
    let mut c = ChartBuilder::on(&right)
        .caption("p99 send-to-applied latency (µs) vs offered load", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), (1.0..lmax).log_scale())?;
    c.configure_mesh().x_desc("offered heartbeats/s").y_desc("p99 µs").draw()?;
    c.draw_series(LineSeries::new(hs_p99.clone(), &BLUE))?
        .label("heartsink")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    c.draw_series(hs_p99.iter().map(|p| Circle::new(*p, 3, BLUE.filled())))?;
    c.draw_series(LineSeries::new(oct_p99.clone(), &RED))?
        .label("Octavia check()")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    c.draw_series(oct_p99.iter().map(|p| Circle::new(*p, 3, RED.filled())))?;
    c.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}
