//! Charts of one or more reports: the latency percentile curve (x in
//! "nines": 90%, 99%, 99.9%...) and throughput over time, as PNG or SVG.
//!
//! Text needs a TrueType font, loaded at run time: `$PERF_FONT`, else
//! DejaVu Sans from Debian's `fonts-dejavu-core`.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{PerfError, Result};
use crate::report::Report;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const FAMILY: &str = "sans-serif";

fn load_font(path: &str) -> Result<()> {
    let candidates: Vec<String> = match std::env::var("PERF_FONT") {
        Ok(f) => vec![f],
        Err(_) => FONT_CANDIDATES.iter().map(|s| s.to_string()).collect(),
    };
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(
                |_| PerfError::Plot {
                    path: path.to_string(),
                    reason: format!("{c} is not a usable TrueType font"),
                },
            );
        }
    }
    Err(PerfError::Plot {
        path: path.to_string(),
        reason: format!(
            "no font found (tried {}); install Debian's fonts-dejavu-core or set PERF_FONT",
            candidates.join(", ")
        ),
    })
}

/// One line on the latency chart.
struct Curve {
    name: String,
    /// (nines, ms)
    points: Vec<(f64, f64)>,
}

/// One line on the throughput chart.
struct Rate {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Percentile (0..100) to "nines": 90% -> 1, 99% -> 2, 99.9% -> 3.
fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(1e-7);
    -rest.log10()
}

fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if x < 0.5 {
        format!("{p:.0}%")
    } else {
        let digits = (x.round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    }
}

fn series(reports: &[Report]) -> (Vec<Curve>, Vec<Rate>) {
    let mut curves = Vec::new();
    let mut rates = Vec::new();
    let many = reports.len() > 1;
    let name = |r: &Report, what: &str| {
        if many {
            format!("{} {what}", r.label)
        } else {
            what.to_string()
        }
    };
    let curve = |c: &[(f64, f64)]| -> Vec<(f64, f64)> {
        c.iter()
            .filter(|(p, ms)| *p < 100.0 && *ms > 0.0)
            .map(|&(p, ms)| (nines(p), ms))
            .collect()
    };
    for r in reports {
        if let Some(p) = &r.produce {
            curves.push(Curve {
                name: name(r, "produce"),
                points: curve(&p.latency.curve),
            });
            rates.push(Rate {
                name: name(r, "produce"),
                points: p
                    .timeline
                    .iter()
                    .map(|s| (s.t as f64 - 0.5, s.mb_per_sec))
                    .collect(),
            });
        }
        if let Some(c) = &r.consume {
            if let Some(l) = &c.e2e_latency {
                curves.push(Curve {
                    name: name(r, "end-to-end"),
                    points: curve(&l.curve),
                });
            }
            rates.push(Rate {
                name: name(r, "consume"),
                points: c
                    .timeline
                    .iter()
                    .map(|s| (s.t as f64 - 0.5, s.mb_per_sec))
                    .collect(),
            });
        }
    }
    (curves, rates)
}

/// Draws `reports` into `path` (.png or .svg).
pub fn draw(reports: &[Report], path: &str) -> Result<()> {
    load_font(path)?;
    let size = (1200, 1000);
    let res = if path.ends_with(".svg") {
        draw_on(SVGBackend::new(path, size).into_drawing_area(), reports)
    } else if path.ends_with(".png") {
        draw_on(BitMapBackend::new(path, size).into_drawing_area(), reports)
    } else {
        Err("the plot file must end in .png or .svg".to_string())
    };
    res.map_err(|reason| PerfError::Plot {
        path: path.to_string(),
        reason,
    })
}

fn draw_on<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    reports: &[Report],
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (top, bottom) = root.split_vertically(560);
    let (curves, rates) = series(reports);
    let title = reports
        .iter()
        .map(|r| r.label.as_str())
        .collect::<Vec<_>>()
        .join(" vs ");

    let all = curves.iter().flat_map(|c| c.points.iter());
    let xmax = all
        .clone()
        .map(|p| p.0)
        .fold(2.0f64, f64::max)
        .min(6.0)
        .ceil();
    let ymax = all.clone().map(|p| p.1).fold(0.01f64, f64::max) * 1.5;
    let ymin = all
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .min(ymax / 10.0)
        .max(0.001)
        * 0.8;
    let mut chart = ChartBuilder::on(&top)
        .caption(format!("{title}: latency by percentile"), (FAMILY, 24))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels((xmax as usize) + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style((FAMILY, 15))
        .draw()
        .map_err(e)?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                c.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(c.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;

    let tmax = rates
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let rmax = rates
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.1))
        .fold(0.1f64, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("throughput over time", (FAMILY, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, 0f64..rmax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds after warm-up (each point: one second)")
        .y_desc("MB/s")
        .label_style((FAMILY, 15))
        .draw()
        .map_err(e)?;
    for (i, r) in rates.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(r.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::LatencyHistogram;
    use crate::report::ProduceFigures;
    use crate::throughput::Second;

    fn report(label: &str, scale: u64) -> Report {
        let mut h = LatencyHistogram::default();
        for i in 1..=10_000u64 {
            h.record_ns(i * 100 * scale);
        }
        Report {
            label: label.into(),
            produce: Some(ProduceFigures {
                latency: h.summary(),
                timeline: (1..=5)
                    .map(|t| Second {
                        t,
                        records_per_sec: 1000.0,
                        mb_per_sec: 1.0,
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Needs a font (Debian's fonts-dejavu-core or $PERF_FONT).
    #[test]
    fn draws_two_reports_to_png_and_svg() {
        let dir = std::env::temp_dir();
        for ext in ["png", "svg"] {
            let path = dir.join(format!("perf-plot-test-{}.{ext}", std::process::id()));
            let path = path.to_string_lossy().to_string();
            draw(&[report("a", 1), report("b", 2)], &path).unwrap();
            let size = std::fs::metadata(&path).unwrap().len();
            let _ = std::fs::remove_file(&path);
            assert!(size > 1000, "{ext}: {size} bytes");
        }
        assert!(draw(&[report("a", 1)], "/tmp/x.gif").is_err());
    }

    #[test]
    fn nines_put_each_order_of_tail_one_unit_apart() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(4.0), "99.99%");
    }
}
