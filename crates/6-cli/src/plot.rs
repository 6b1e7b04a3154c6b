//! Time-series plots (SVG and PNG) for experiment reports: one line per run, migration phases
//! marked as shaded spans. The font is embedded (DejaVu Sans), so no system fonts are needed.

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// One line on the figure.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// (x, y) points in plot units.
    pub points: &'a [(f64, f64)],
}

/// A shaded interval (a migration phase) on the x axis.
pub struct Span<'a> {
    /// Label drawn at the top of the span.
    pub label: &'a str,
    /// Start, in x units.
    pub start: f64,
    /// End, in x units.
    pub end: f64,
    /// Index of the series it belongs to (for its colour).
    pub series: usize,
}

/// A figure.
pub struct Figure<'a> {
    /// Title.
    pub title: &'a str,
    /// X axis label.
    pub x_label: &'a str,
    /// Y axis label.
    pub y_label: &'a str,
    /// Lines.
    pub series: Vec<Series<'a>>,
    /// Shaded spans.
    pub spans: Vec<Span<'a>>,
    /// Log-scale y axis.
    pub log_y: bool,
    /// Log-scale x axis (only together with `log_y`).
    pub log_x: bool,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration fails only for a corrupt font file, which the crate does not ship.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, fig: &Figure) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let all = fig.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    let mut y0 = f64::MAX;
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
        if y > 0.0 {
            y0 = y0.min(y);
        }
    }
    if x0 >= x1 {
        x0 = 0.0;
        x1 = x1.max(1.0);
    }
    y1 = if y1 > 0.0 { y1 * 1.08 } else { 1.0 };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(fig.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(fig.x_label)
                .y_desc(fig.y_label)
                .label_style(("sans-serif", 14))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(|e| anyhow!("{e:?}"))?;
            let (lo, hi) = (chart.y_range().start, chart.y_range().end);
            for span in &fig.spans {
                let c = PALETTE[span.series % PALETTE.len()];
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(span.start, lo), (span.end.max(span.start), hi)],
                        c.mix(0.10).filled(),
                    )))
                    .map_err(|e| anyhow!("{e:?}"))?;
                chart
                    .draw_series(std::iter::once(Text::new(
                        span.label.to_string(),
                        (span.start, hi),
                        ("sans-serif", 11).into_font().color(&c),
                    )))
                    .map_err(|e| anyhow!("{e:?}"))?;
            }
            for (i, s) in fig.series.iter().enumerate() {
                let c = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
                    .map_err(|e| anyhow!("{e:?}"))?
                    .label(s.label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| anyhow!("{e:?}"))?;
        }};
    }
    if fig.log_y && fig.log_x {
        let y0 = if y0 == f64::MAX { 1e-3 } else { y0 / 2.0 };
        let x0 = if x0 <= 0.0 { 1.0 } else { x0 };
        finish!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(|e| anyhow!("{e:?}"))?
        );
    } else if fig.log_y {
        let y0 = if y0 == f64::MAX { 1e-3 } else { y0 / 2.0 };
        finish!(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| anyhow!("{e:?}"))?
        );
    } else {
        finish!(
            builder
                .build_cartesian_2d(x0..x1, 0f64..y1)
                .map_err(|e| anyhow!("{e:?}"))?
        );
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// Writes the figure as `<stem>.svg` and `<stem>.png` (1200x600).
pub fn write(fig: &Figure, stem: &Path) -> Result<()> {
    register_fonts();
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    draw(SVGBackend::new(&svg, (1200, 600)).into_drawing_area(), fig)
        .with_context(|| format!("writing {}", svg.display()))?;
    draw(
        BitMapBackend::new(&png, (1200, 600)).into_drawing_area(),
        fig,
    )
    .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_svg_and_png_with_the_series_label() {
        let dir = std::env::temp_dir().join(format!("flowshift-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pts: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64 * 10.0, 900.0 + (i % 7) as f64))
            .collect();
        let fig = Figure {
            title: "test",
            x_label: "time (ms)",
            y_label: "goodput (Mbit/s)",
            series: vec![Series {
                label: "freeze-copy",
                points: &pts,
            }],
            spans: vec![Span {
                label: "idle",
                start: 100.0,
                end: 300.0,
                series: 0,
            }],
            log_y: false,
            log_x: false,
        };
        write(&fig, &dir.join("fig")).unwrap();
        let svg = std::fs::read_to_string(dir.join("fig.svg")).unwrap();
        assert!(
            svg.contains("freeze-copy"),
            "legend label missing from the SVG"
        );
        let png = std::fs::read(dir.join("fig.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        if std::env::var_os("FLOWSHIFT_KEEP_PLOT").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
