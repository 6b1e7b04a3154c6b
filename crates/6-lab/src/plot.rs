//! Time-series plots (SVG and PNG) for experiment reports: one line per run, migration phases
//! marked as shaded spans. The font is embedded (DejaVu Sans), so no system fonts are needed.
//!
//! Span labels never overlap: [`label_rows`] stacks them in rows at the top of the chart (a
//! label goes into the first row where it fits, by its estimated width in pixels), the y range
//! grows so the rows sit above the data, and every span also gets a thin line at its start, so
//! phases far shorter than a pixel stay visible.

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

/// Size of the figure in pixels.
const SIZE: (u32, u32) = (1200, 600);
/// Span label font size, and the height of one label row (pixels).
const LABEL_FONT: u32 = 11;
const LABEL_ROW: i32 = 13;
/// Estimated width of one label character (pixels; DejaVu Sans at 11 px averages about 6).
const LABEL_CHAR: f64 = 6.5;

/// Assigns each span label a row so that labels in one row do not overlap: spans in order of
/// start, each into the first row whose last label ends left of it. `width_px` is the plot
/// area's width. Returns the row of every span (in the input order) and the number of rows.
pub fn label_rows(spans: &[Span], x0: f64, x1: f64, width_px: f64) -> (Vec<usize>, usize) {
    let px = |x: f64| (x - x0) / (x1 - x0).max(f64::MIN_POSITIVE) * width_px;
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by(|&a, &b| spans[a].start.total_cmp(&spans[b].start));
    let mut ends: Vec<f64> = Vec::new();
    let mut rows = vec![0; spans.len()];
    for i in order {
        let w = spans[i].label.chars().count() as f64 * LABEL_CHAR + 6.0;
        // Labels near the right edge are shifted left to stay inside the plot.
        let left = px(spans[i].start).min(width_px - w).max(0.0);
        let row = match ends.iter().position(|&e| e <= left) {
            Some(r) => r,
            None => {
                ends.push(0.0);
                ends.len() - 1
            }
        };
        ends[row] = left + w;
        rows[i] = row;
    }
    (rows, ends.len())
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
    y1 = if y1 > 0.0 { y1 * 1.04 } else { 1.0 };
    // Room for the span labels above the data: the plot area is about SIZE minus the caption,
    // margins and axis label areas.
    let (w, h) = root.dim_in_pixel();
    let plot_w = f64::from(w.saturating_sub(64 + 24 + 10));
    let plot_h = f64::from(h.saturating_sub(42 + 24 + 34)).max(100.0);
    let (rows, nrows) = label_rows(&fig.spans, x0, x1, plot_w);
    let headroom = (f64::from(nrows as u32) * f64::from(LABEL_ROW) + 4.0) / plot_h;
    let headroom = headroom.min(0.6);
    if nrows > 0 && !fig.log_y {
        y1 /= 1.0 - headroom;
    }
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
            let (px0, _) = chart.backend_coord(&(x0, hi));
            let (px1, _) = chart.backend_coord(&(x1, hi));
            for (span, row) in fig.spans.iter().zip(&rows) {
                let c = PALETTE[span.series % PALETTE.len()];
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(span.start, lo), (span.end.max(span.start), hi)],
                        c.mix(0.10).filled(),
                    )))
                    .map_err(|e| anyhow!("{e:?}"))?;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(span.start, lo), (span.start, hi)],
                        c.mix(0.35).stroke_width(1),
                    )))
                    .map_err(|e| anyhow!("{e:?}"))?;
                let (sx, _) = chart.backend_coord(&(span.start, hi));
                let w = (span.label.chars().count() as f64 * LABEL_CHAR + 6.0) as i32;
                let dx = (px1 - w - sx).min(0).max(px0 - sx) + 2;
                let dy = 2 + LABEL_ROW * *row as i32;
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((span.start, hi))
                            + Text::new(
                                span.label.to_string(),
                                (dx, dy),
                                ("sans-serif", LABEL_FONT).into_font().color(&c),
                            ),
                    ))
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
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), fig)
        .with_context(|| format!("writing {}", svg.display()))?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), fig)
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_labels_of_short_phases_go_into_separate_rows() {
        let span = |label, start, series| Span {
            label,
            start,
            end: start + 0.5,
            series,
        };
        // Three algorithms' phases within 100 ms of each other on a 10 s axis, and one far away.
        let spans = vec![
            span("idle", 4000.0, 0),
            span("freeze-copy", 4500.0, 0),
            span("drain", 4501.0, 0),
            span("stop-copy", 4000.0, 1),
            span("drain", 4060.0, 1),
            span("idle", 9000.0, 2),
        ];
        let (rows, n) = label_rows(&spans, 0.0, 10_000.0, 1100.0);
        // Labels in one row never overlap.
        for i in 0..spans.len() {
            for j in 0..spans.len() {
                if i != j && rows[i] == rows[j] {
                    let px = |k: usize| spans[k].start / 10_000.0 * 1100.0;
                    let w = |k: usize| spans[k].label.len() as f64 * LABEL_CHAR + 6.0;
                    let (a, b) = if px(i) <= px(j) { (i, j) } else { (j, i) };
                    assert!(
                        px(a) + w(a) <= px(b) + 1e-9,
                        "{i} and {j} overlap in row {}",
                        rows[i]
                    );
                }
            }
        }
        assert!((3..=5).contains(&n), "{n} rows: {rows:?}");
        assert_eq!(rows[5], 0, "a label with room goes into the first row");
        // A label at the right edge is placed as if shifted left (it still gets a row).
        let (r, n) = label_rows(&[span("await-cutover", 9999.0, 0)], 0.0, 10_000.0, 1100.0);
        assert_eq!((r, n), (vec![0], 1));
    }

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
